"""A run whose caller let go of its handle (a sweep's timeout cancelled its wait) can still be reached and stopped."""

from __future__ import annotations

import asyncio
import gc
import json
import weakref
from typing import TYPE_CHECKING

import msgspec
import pytest

import esper
from esper.log_file import LogFileInUse
from esper.logs import configure_logging, reset_logging
from tests.test_run_embedded import quiet_config

if TYPE_CHECKING:
    from pathlib import Path

    from schemas.config import RunConfig


@pytest.fixture(autouse=True)
def _fresh_logging() -> None:
    reset_logging()


def _long(tmp_path: Path) -> RunConfig:
    config = quiet_config(tmp_path)
    return msgspec.structs.replace(config, tolaria=msgspec.structs.replace(config.tolaria, epochs=500))


async def _orphan(config: RunConfig, run_dir: Path) -> tuple[str, weakref.ref[object]]:
    """Start a run, let a timeout cancel the wait on it, and drop the handle."""
    system = await esper.start(config, run_dir=run_dir)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(system.wait(), timeout=0)  # the sweep's pattern, timed out at once
    return system.run_id, weakref.ref(system)


async def test_a_start_refused_by_an_orphaned_run_hands_over_its_handle(tmp_path: Path) -> None:
    """A sweep whose per-trial timeout cancelled ``await system.wait()`` left a run nobody could stop: its guard kept it
    going, and every later esper.start raised LogFileInUse telling the user to stop a run they held no handle to."""
    config = _long(tmp_path)
    first_id, first = await _orphan(config, tmp_path / "first")
    gc.collect()
    assert first() is not None, "the run goes on without its caller's handle (a cancelled wait does not end it)"
    with pytest.raises(LogFileInUse) as refused:
        await esper.start(config, run_dir=tmp_path / "second")
    running = refused.value.running
    assert running is not None
    assert running.run_id == first_id
    assert running.run_dir == tmp_path / "first"
    assert "err.running.stop()" in str(refused.value)
    assert first_id in str(refused.value)
    summary = await running.stop()
    assert summary.run_id == first_id
    assert json.loads((tmp_path / "first" / "summary.json").read_text())["run_id"] == first_id
    del running, refused
    third = await esper.start(config, run_dir=tmp_path / "third")
    assert (await third.stop()).status == "stopped"
    assert not (tmp_path / "second").exists()


async def test_a_configuration_without_a_run_names_none(tmp_path: Path) -> None:
    """The writer names its run only once the handle exists: a bare configure_logging has none to hand over."""
    handle = configure_logging(tmp_path, console=False)
    try:
        with pytest.raises(LogFileInUse) as refused:
            await esper.start(quiet_config(tmp_path), run_dir=tmp_path / "run")
        assert refused.value.running is None
        assert "err.running" not in str(refused.value)  # no handle to name: the advice must not point at one
        assert "let its start finish" in str(refused.value)
    finally:
        handle.release()
