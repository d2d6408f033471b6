"""A value problem an override made names that override and the key the user set, in the API's words too."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

import esper
from esper.config import load_config
from esper.runtime.errors import ConfigError
from schemas.config import RunConfig
from schemas.config_platform import LoggingConfig

if TYPE_CHECKING:
    from pathlib import Path

_TAKEN = "logging.json_file: 'metrics.csv' is also the name of another of the run's files; choose another name"


def test_a_run_file_moved_onto_anothers_name_blames_the_key_set_and_its_override() -> None:
    """logging.json_file = "metrics.csv" said '--set: nissa.metrics_csv: ...': the key left at its default, and a
    bare --set."""
    with pytest.raises(ConfigError) as refused:
        load_config(None, ['logging.json_file="metrics.csv"'])
    assert str(refused.value) == f'--set logging.json_file="metrics.csv": {_TAKEN}'


async def test_the_api_names_the_overrides_and_a_run_config_its_own_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as refused:
        await esper.start(RunConfig(), run_dir=tmp_path / "run", overrides=['logging.json_file="metrics.csv"'])
    assert str(refused.value) == f'overrides: logging.json_file="metrics.csv": {_TAKEN}'
    with pytest.raises(ConfigError) as refused:
        await esper.start(RunConfig(logging=LoggingConfig(json_file="metrics.csv")), run_dir=tmp_path / "run")
    assert str(refused.value) == f"RunConfig: {_TAKEN}"
    assert not (tmp_path / "run").exists()


def test_a_problem_on_a_key_no_override_set_is_charged_to_the_overrides_that_made_it(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[tolaria]\nlr_schedule = "cosine"\nlr_min_factor = 0.1\n')  # the file alone is fine
    with pytest.raises(ConfigError) as refused:
        load_config(path, ['tolaria.lr_schedule="constant"', "tolaria.epochs=2"])
    assert str(refused.value).startswith(
        '--set tolaria.lr_schedule="constant" tolaria.epochs=2: tolaria.lr_min_factor: is read only with lr_schedule'
    )
