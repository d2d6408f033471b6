"""A resume given the run's own config.toml reads it as the run directory's file.

A key an earlier version wrote there and this one does not act on is kept (as README promises), not refused; any other
file with it still is."""

from __future__ import annotations

import asyncio
import shutil
from typing import TYPE_CHECKING

import pytest

from esper.run import main, start
from esper.run_parser import EXIT_CONFIG_ERROR, EXIT_OK
from esper.runtime.errors import ConfigError
from tests.test_e2e_run import tiny_config

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.timeout(120)


def _finished_run(tmp_path: Path, section: str, setting: str) -> Path:
    """A finished one-epoch run whose config.toml sets ``setting`` in ``[section]``, as an earlier version wrote it."""
    run_dir = tmp_path / "run"
    assert main([str(tiny_config(tmp_path, epochs=1)), "--run-dir", str(run_dir)]) == EXIT_OK
    config = run_dir / "config.toml"
    key = setting.partition(" = ")[0]
    lines, current = [], ""
    for line in config.read_text(encoding="utf-8").splitlines():
        if line.startswith("["):
            current = line.strip("[]")
        lines.append(setting if current == section and line.startswith(f"{key} = ") else line)
    config.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert setting in config.read_text(encoding="utf-8")
    return run_dir


@pytest.mark.parametrize(
    ("section", "setting"),
    [("simic", "enabled = true"), ("kasmina", "g4_min_improvement = -0.1")],
    ids=["simic_enabled", "negative_g4_minimum"],
)
def test_the_runs_own_config_toml_resumes_with_a_key_this_version_does_not_act_on(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], section: str, setting: str
) -> None:
    run_dir = _finished_run(tmp_path, section, setting)
    config = run_dir / "config.toml"
    capsys.readouterr()

    # The run trained its epoch and wrote its summary: the notice, not a refusal of the key.
    assert main([str(config), "--resume", str(run_dir)]) == EXIT_OK
    assert "already trained 1 of tolaria.epochs = 1 epochs" in capsys.readouterr().err
    # With a --set, as the run's end prints it: the override is validated with the file's values as acted on.
    for override in ("simic.enabled=false", "tolaria.epochs=1"):
        assert main([str(config), "--resume", str(run_dir), "--set", override]) == EXIT_OK
        assert "already trained" in capsys.readouterr().err
    # A copy is not the run's file: the key is refused there as in any config file.
    shutil.copy(config, tmp_path / "copy.toml")
    assert main([str(tmp_path / "copy.toml"), "--resume", str(run_dir)]) == EXIT_CONFIG_ERROR
    key = setting.partition(" = ")[0]
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"{tmp_path / 'copy.toml'}: {section}.{key}: ")


def test_the_api_reads_the_runs_own_config_toml_as_the_run_directorys(tmp_path: Path) -> None:
    run_dir = _finished_run(tmp_path, "simic", "enabled = true")
    with pytest.raises(ConfigError, match=r"already trained 1 of tolaria\.epochs = 1 epochs"):
        asyncio.run(start(run_dir / "config.toml", resume=run_dir))
