"""A --resume with another config says, one line per key, every setting it changes from the run's config.toml."""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

from esper.config import apply_overrides, dump_config
from esper.console import Console
from esper.resume_changes import RESUME_SETTING_CHANGED, resume_changes
from schemas.config import RunConfig

if TYPE_CHECKING:
    from pathlib import Path


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
        f'urza.root: "/data/urza" in the run, "{RunConfig().urza.root}" now',
    ]
    epochs = next(event for event in changes if event.attributes["key"] == "tolaria.epochs")
    assert (epochs.attributes["in_run"], epochs.attributes["now"]) == ("400", "50")


def test_the_same_settings_say_nothing(tmp_path: Path) -> None:
    config = apply_overrides(RunConfig(), ["tolaria.epochs=7"])
    assert resume_changes(_run_dir(tmp_path, config), config) == []


def test_the_console_shows_each_change_on_its_own_line(tmp_path: Path) -> None:
    directory = _run_dir(tmp_path, apply_overrides(RunConfig(), ["tolaria.epochs=400"]))
    stream = io.StringIO()
    console = Console(stream, epochs=50, interactive=False)
    for change in resume_changes(directory, RunConfig()):
        console.emit(change)
    assert stream.getvalue() == f"  changed      tolaria.epochs: 400 in the run, {RunConfig().tolaria.epochs} now\n"
