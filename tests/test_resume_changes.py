"""A --resume with another config says, one line per key, every setting it changes from the run's config.toml."""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING

from esper.config import apply_overrides, dump_config
from esper.config_paths import absolute_paths
from esper.console import Console
from esper.resume_changes import RESUME_SETTING_CHANGED, resume_changes
from schemas.config import NissaConfig, RunConfig, UrzaConfig

if TYPE_CHECKING:
    import pytest


def _run_dir(tmp_path: Path, config: RunConfig) -> Path:
    directory = tmp_path / "run"
    directory.mkdir()
    (directory / "config.toml").write_text(dump_config(config), encoding="utf-8")
    return directory


def test_each_changed_setting_is_one_warning_naming_the_key_and_both_values(tmp_path: Path) -> None:
    """Resumed with the shipped config.toml, a 400-epoch run silently trained 50 epochs and moved its artifact store;
    its config.toml then said 50."""
    run = apply_overrides(RunConfig(), ["tolaria.epochs=400", "urza.root='/data/urza'"])
    directory = _run_dir(tmp_path, run)
    now = apply_overrides(RunConfig(), ["tolaria.epochs=50", "kasmina.breaker.failure_threshold=7"])
    changes = resume_changes(directory, now)
    assert [(event.name, event.level.name) for event in changes] == [(RESUME_SETTING_CHANGED, "WARNING")] * 3
    assert sorted(event.description for event in changes) == [
        f"kasmina.breaker.failure_threshold: {RunConfig().kasmina.breaker.failure_threshold} in the run, 7 now",
        "tolaria.epochs: 400 in the run, 50 now",
        f'urza.root: "/data/urza" in the run, "{Path(RunConfig().urza.root).absolute()}" now',
    ]
    epochs = next(event for event in changes if event.attributes["key"] == "tolaria.epochs")
    assert (epochs.attributes["in_run"], epochs.attributes["now"]) == ("400", "50")


def test_the_same_settings_say_nothing(tmp_path: Path) -> None:
    config = apply_overrides(RunConfig(), ["tolaria.epochs=7"])
    assert resume_changes(_run_dir(tmp_path, config), config) == []


def test_a_run_id_the_resumed_config_leaves_unset_is_no_change(tmp_path: Path) -> None:
    """Every --resume with the shipped config.toml said `changed run_id: "ck2k" in the run, unset now`, though the
    run keeps its id."""
    directory = _run_dir(tmp_path, apply_overrides(RunConfig(), ["run_id='ck2k'"]))
    assert resume_changes(directory, RunConfig()) == []


def test_the_console_shows_each_change_on_its_own_line(tmp_path: Path) -> None:
    directory = _run_dir(tmp_path, apply_overrides(RunConfig(), ["tolaria.epochs=400"]))
    stream = io.StringIO()
    console = Console(stream, epochs=50, interactive=False)
    for change in resume_changes(directory, RunConfig()):
        console.emit(change)
    assert stream.getvalue() == f"  changed      tolaria.epochs: 400 in the run, {RunConfig().tolaria.epochs} now\n"


def test_a_relative_path_an_earlier_version_wrote_is_no_change_from_where_the_run_started(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """This version makes the path keys absolute at the start; an earlier one wrote them as given, relative to the
    directory the run started in. Resumed from there, the same paths are the same settings (a `changed` line for each
    one's absolute form was noise), and a path that does differ is still said, absolute."""
    run = RunConfig(urza=UrzaConfig(root="store"), nissa=NissaConfig(baseline_run="host"))
    directory = _run_dir(tmp_path, run)
    monkeypatch.chdir(tmp_path)
    assert resume_changes(directory, absolute_paths(run)) == []
    assert resume_changes(directory, run) == []
    [moved] = resume_changes(directory, absolute_paths(RunConfig(urza=UrzaConfig(root="other"), nissa=run.nissa)))
    assert moved.description == f'urza.root: "{tmp_path / "store"}" in the run, "{tmp_path / "other"}" now'
