"""A run directory's file names come from its config.toml; the run id of a directory survives an aborted attempt."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import msgspec

import esper
from esper.config import apply_overrides, dump_config
from esper.logs import reset_logging
from esper.run_files import RunFiles, run_files
from esper.run_history import previous_run_id
from schemas.config import RunConfig

if TYPE_CHECKING:
    from pathlib import Path


def test_the_names_come_from_the_runs_config_and_default_without_one(tmp_path: Path) -> None:
    assert run_files(tmp_path) == RunFiles("events.jsonl", "metrics.csv", "summary.json")
    config = apply_overrides(RunConfig(), ['logging.json_file="log.jsonl"', 'nissa.metrics_csv="m.csv"'])
    (tmp_path / "config.toml").write_text(dump_config(config), encoding="utf-8")
    assert run_files(tmp_path) == RunFiles("log.jsonl", "m.csv", "summary.json")
    (tmp_path / "config.toml").write_text("[logging\n", encoding="utf-8")  # unreadable: the defaults
    assert run_files(tmp_path) == RunFiles()


def test_the_run_id_is_the_started_runs_not_an_aborted_attempts(tmp_path: Path) -> None:
    """An attempt stopped while starting logged only run_starting; the run that then started in the same directory
    is the one a --resume continues (it took the attempt's id, which no checkpoint carries)."""
    lines = [
        {"event": "run_starting", "run_id": "aborted"},
        {"event": "run_starting", "run_id": "real"},
        {"event": "run_started", "run_id": "real"},
        {"event": "run_starting", "run_id": "real"},
    ]
    (tmp_path / "events.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    assert previous_run_id(tmp_path) == "real"
    (tmp_path / "events.jsonl").write_text(json.dumps(lines[0]) + "\n", encoding="utf-8")
    assert previous_run_id(tmp_path) == "aborted"
    (tmp_path / "events.jsonl").unlink()
    assert previous_run_id(tmp_path) == tmp_path.name


async def test_a_run_logging_to_another_file_still_renders_its_report(tmp_path: Path) -> None:
    """With logging.json_file set, the report was not rendered (it looked for events.jsonl)."""
    reset_logging()
    config = msgspec.convert(
        {"logging": {"console": False, "json_file": "log.jsonl"}, "tolaria": {"epochs": 1, "dataset_samples": 500}},
        RunConfig,
    )
    summary = await (await esper.start(config, run_dir=tmp_path / "run")).wait()
    assert summary.status == "completed"
    assert (tmp_path / "run" / "report.png").is_file()
    assert not (tmp_path / "run" / "events.jsonl").exists()
    assert previous_run_id(tmp_path / "run") == summary.run_id
