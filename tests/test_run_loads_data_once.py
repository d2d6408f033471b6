"""A run reads its data set once: the start's checks load it and the run trains on what they loaded."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import msgspec

import esper
from esper.nn.data import load_dataset
from tests.test_run_embedded import quiet_config

if TYPE_CHECKING:
    from pathlib import Path

    import pytest

    from esper.nn.data import DataSplits


async def test_a_run_and_its_resume_each_load_the_data_set_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The checks before the run directory is claimed loaded the data, then the run loaded it again: a user's large
    npz file was read (and held) twice at every start."""
    loaded: list[DataSplits] = []

    def counting(*args: object, **options: object) -> DataSplits:
        splits = load_dataset(*args, **options)  # type: ignore[arg-type]
        loaded.append(splits)
        return splits

    monkeypatch.setattr("actors.tolaria.build.load_dataset", counting)
    config = quiet_config(tmp_path)
    run_dir = tmp_path / "run"
    summary = await (await esper.start(config, run_dir=run_dir)).wait()
    assert summary.status == "completed"
    assert len(loaded) == 1
    longer = msgspec.structs.replace(config, tolaria=msgspec.structs.replace(config.tolaria, epochs=2))
    resumed = await (await esper.start(longer, resume=run_dir)).wait()
    assert resumed.status == "completed"
    assert resumed.training is not None
    assert resumed.training.epochs == 2
    assert len(loaded) == 2


async def test_the_data_cache_written_line_reaches_the_runs_log_not_the_callers_stdout(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The start's checks load (and cache) the data before the run's log is configured: data_cache_written went to
    the caller's stdout in structlog's default format, and never reached events.jsonl."""
    config = quiet_config(tmp_path)
    cache = tmp_path / "cache"
    config = msgspec.structs.replace(config, tolaria=msgspec.structs.replace(config.tolaria, data_cache_dir=str(cache)))
    await (await esper.start(config, run_dir=tmp_path / "run")).stop()
    assert capsys.readouterr().out == ""
    events = [json.loads(line) for line in (tmp_path / "run" / "events.jsonl").read_text().splitlines()]
    [written] = [event for event in events if event["event"] == "data_cache_written"]
    [stored] = cache.glob("*.npz")
    assert written["file"] == str(stored)
    assert written["size_bytes"] == stored.stat().st_size
    names = [event["event"] for event in events]
    assert names.index("run_starting") < names.index("data_cache_written")


async def test_a_corrupt_data_cache_is_said_in_the_runs_log_not_on_the_callers_stdout(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Only data_cache_written waited for the run's log: data_cache_corrupt (and data_cache_unwritable), logged during
    the start's checks, went to the caller's stdout in structlog's default format and never reached events.jsonl."""
    config = quiet_config(tmp_path)
    cache = tmp_path / "cache"
    config = msgspec.structs.replace(config, tolaria=msgspec.structs.replace(config.tolaria, data_cache_dir=str(cache)))
    await (await esper.start(config, run_dir=tmp_path / "first")).stop()
    [stored] = cache.glob("*.npz")
    stored.write_bytes(b"not an npz file")
    capsys.readouterr()
    await (await esper.start(config, run_dir=tmp_path / "run")).stop()
    assert capsys.readouterr().out == ""
    events = [json.loads(line) for line in (tmp_path / "run" / "events.jsonl").read_text().splitlines()]
    [corrupt] = [event for event in events if event["event"] == "data_cache_corrupt"]
    assert corrupt["file"] == str(stored)
    assert corrupt["error"].startswith("unreadable: ")
    names = [event["event"] for event in events]
    assert names.index("run_starting") < names.index("data_cache_corrupt") < names.index("data_cache_written")
