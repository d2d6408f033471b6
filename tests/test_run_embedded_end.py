"""How an embedded run ends and what it gives back to the process: the summary only once the end is written."""

from __future__ import annotations

import asyncio
import io
import json
import random
import subprocess
import sys
import threading
from typing import TYPE_CHECKING

import msgspec
import numpy as np
import pytest
import structlog
import structlog.testing
import torch

import esper
from esper import run as esper_run
from esper.log_file import LogFileInUse, check_log_file_free
from esper.runtime.errors import ConfigError
from esper.session import EsperSystem
from tests.test_run_embedded import quiet_config

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from pathlib import Path

    from structlog.typing import Processor

    from schemas.run import RunSummary


def _log_free() -> bool:
    try:
        check_log_file_free()
    except LogFileInUse:
        return False
    return True


async def test_no_caller_gets_the_summary_before_the_runs_end_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The summary was kept for later callers before the report, summary.json and the log's close: a wait() again
    after a cancelled one, or a stop() joining a wait(), returned it at once, and the next esper.start() in the
    process raised LogFileInUse (summary.json not written yet either)."""
    run_dir = tmp_path / "run"
    system = await esper.start(quiet_config(tmp_path), run_dir=run_dir)
    first = asyncio.create_task(system.wait())
    seen: list[tuple[str, bool, bool]] = []
    summaries: list[RunSummary] = []
    later: list[asyncio.Task[None]] = []

    async def check(name: str, end: Awaitable[RunSummary]) -> None:
        summaries.append(await end)
        seen.append((name, (run_dir / "summary.json").is_file(), _log_free()))

    async def rendering(_last_step: int | None) -> None:
        # The end is being written now (the summary built, not yet on disk): a notebook's wait_for times out on the
        # first wait(), then waits again, while another task stops the run.
        first.cancel()
        later.append(asyncio.create_task(check("wait", system.wait())))
        later.append(asyncio.create_task(check("stop", system.stop())))

    monkeypatch.setattr(system, "_render_report", rendering)
    with pytest.raises(asyncio.CancelledError):
        await first
    await asyncio.gather(*later)
    assert sorted(seen) == [("stop", True, True), ("wait", True, True)]
    assert summaries[0] is summaries[1]
    assert summaries[0].status == "completed"
    following = await esper.start(quiet_config(tmp_path), run_dir=tmp_path / "next")
    assert (await following.stop()).status == "stopped"


def _cancels_its_start(real: Callable[..., object], start: list[asyncio.Task[EsperSystem]]) -> Callable[..., object]:
    """``real`` (run on a worker thread by the start) with the start cancelled as it runs: a Ctrl-C at that point."""
    loop = asyncio.get_running_loop()

    def cancelling(*args: object) -> object:
        loop.call_soon_threadsafe(start[0].cancel)
        return real(*args)

    return cancelling


def _fails(*_args: object) -> object:
    raise OSError("a disk error, by a test")


def _lane_threads() -> int:
    return sum(1 for thread in threading.enumerate() if thread.name.startswith("esper-lane"))


@pytest.mark.parametrize(
    ("where", "how", "resume"),
    [
        ("earlier_tally", "cancelled", True),
        ("sweep_partial_writes", "failed", True),
        ("read_gpus_once", "cancelled", False),  # the tree already started
        ("read_gpus_once", "failed", False),
    ],
)
async def test_a_start_that_fails_or_is_cancelled_after_logging_began_leaves_the_process_free(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str, how: str, *, resume: bool
) -> None:
    """A resume's start cancelled (or failing) before its bus or its tree left events.jsonl open and the process's
    logging pointed at it, and the bus open: every later esper.start() in the process raised LogFileInUse."""
    config = quiet_config(tmp_path)
    run_dir = tmp_path / "run"
    longer = msgspec.structs.replace(config, tolaria=msgspec.structs.replace(config.tolaria, epochs=2))
    if resume:
        await (await esper.start(config, run_dir=run_dir)).wait()
    lanes_before = _lane_threads()
    start: list[asyncio.Task[EsperSystem]] = []
    real = getattr(esper_run, where)
    monkeypatch.setattr(esper_run, where, _cancels_its_start(real, start) if how == "cancelled" else _fails)
    start.append(
        asyncio.create_task(esper.start(longer, resume=run_dir) if resume else esper.start(config, run_dir=run_dir))
    )
    with pytest.raises(asyncio.CancelledError if how == "cancelled" else OSError):
        await start[0]
    assert _log_free()
    assert _lane_threads() == lanes_before
    last = json.loads((run_dir / "events.jsonl").read_text().splitlines()[-1])
    assert (last["event"], last["status"]) == ("run_finished", "interrupted" if how == "cancelled" else "failed")
    monkeypatch.undo()
    again = await esper.start(longer, resume=run_dir) if resume else await esper.start(config, run_dir=tmp_path / "b")
    assert (await again.wait()).status == "completed"


@pytest.mark.parametrize(
    ("progress", "error", "message"),
    [
        (5, TypeError, "progress: expected a text stream (sys.stderr, a file opened for text) or None, got 5"),
        (io.BytesIO(), TypeError, "progress: expected a text stream"),
        ("closed", ValueError, "progress: <_io.TextIOWrapper name="),
    ],
)
async def test_a_progress_that_cannot_take_the_lines_is_refused_before_anything_is_set_up(
    tmp_path: Path, progress: object, error: type[Exception], message: str
) -> None:
    """progress= a closed file or an int failed after the log was set up, and left it in use: every later start in
    the process raised LogFileInUse."""
    if progress == "closed":
        with (tmp_path / "progress.txt").open("w") as progress:
            pass
    with pytest.raises(error) as refused:
        await esper.start(quiet_config(tmp_path), run_dir=tmp_path / "run", progress=progress)  # type: ignore[arg-type]
    assert str(refused.value).startswith(message)
    assert not (tmp_path / "run").exists()
    assert _log_free()


def _draws() -> tuple[float, float, float]:
    return random.random(), float(np.random.rand()), float(torch.rand(1))


@pytest.mark.parametrize("end", ["completed", "resumed", "stopped", "failed start"])
async def test_the_callers_global_random_streams_go_on_after_a_run_as_if_it_had_not_happened(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, end: str
) -> None:
    """The start seeded Python's, NumPy's and torch's global RNGs (and a resume put its checkpoint's states in them)
    and never gave them back: a notebook's own random stream was replaced by the run's."""
    config = quiet_config(tmp_path)
    run_dir = tmp_path / "run"
    if end == "resumed":
        await (await esper.start(config, run_dir=run_dir)).wait()
        config = msgspec.structs.replace(config, tolaria=msgspec.structs.replace(config.tolaria, epochs=2))
    if end == "failed start":
        monkeypatch.setattr(esper_run, "read_gpus_once", _fails)  # after the tree started: the trainer seeded
    random.seed(123)
    np.random.seed(123)
    torch.manual_seed(123)
    expected = _draws()
    random.seed(123)
    np.random.seed(123)
    torch.manual_seed(123)
    if end == "failed start":
        with pytest.raises(OSError, match="by a test"):
            await esper.start(config, run_dir=run_dir)
    else:
        system = (
            await esper.start(config, resume=run_dir)
            if end == "resumed"
            else await esper.start(config, run_dir=run_dir)
        )
        summary = await (system.stop() if end == "stopped" else system.wait())
        assert summary.status == ("stopped" if end == "stopped" else "completed")
    assert _draws() == expected


@pytest.mark.parametrize(("name", "module"), [("start", "esper.run"), ("load_model", "esper.trained_model")])
def test_the_first_esper_start_of_a_process_leaves_the_callers_random_stream_alone(name: str, module: str) -> None:
    """esper.start imports the run's modules on first use, and one of them (rich, under structlog) draws from Python's
    random at its import, before the run saved the caller's state: the first run of a process moved the stream.
    esper.load_model's first use imports them too."""
    code = (
        "import random\n"
        "random.seed(1)\n"
        "expected = random.random()\n"
        "random.seed(1)\n"
        "import esper\n"
        f"esper.{name}\n"
        f"assert {module!r} in __import__('sys').modules\n"
        "print(random.random() == expected)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert done.stdout == "True\n", done.stderr


@pytest.mark.parametrize("end", ["completed", "failed start"])
async def test_the_callers_structlog_configuration_is_given_back_when_the_run_ends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, end: str
) -> None:
    """The start replaced the process's structlog configuration and never put it back: a notebook's own loggers
    wrote through Esper's pipeline (to its console, or nowhere) after the run."""
    capture = structlog.testing.LogCapture()
    structlog.configure(processors=[capture], logger_factory=structlog.ReturnLoggerFactory())
    mine = structlog.get_config()
    if end == "failed start":
        monkeypatch.setattr(esper_run, "read_gpus_once", _fails)
        with pytest.raises(OSError, match="by a test"):
            await esper.start(quiet_config(tmp_path), run_dir=tmp_path / "run")
    else:
        system = await esper.start(quiet_config(tmp_path), run_dir=tmp_path / "run")
        assert structlog.get_config()["processors"] is not mine["processors"], "the run's while it is live"
        assert (await system.wait()).status == "completed"
    assert structlog.get_config() == mine
    structlog.get_logger("user").info("after_the_run", x=1)
    assert capture.entries[-1] == {"event": "after_the_run", "x": 1, "log_level": "info"}
    assert not [entry for entry in capture.entries if entry["event"] == "run_finished"]


async def test_a_structlog_configuration_made_while_the_run_was_live_stays(tmp_path: Path) -> None:
    system = await esper.start(quiet_config(tmp_path), run_dir=tmp_path / "run")
    capture = structlog.testing.LogCapture()
    structlog.configure(processors=[capture])
    newer = structlog.get_config()
    assert (await system.wait()).status == "completed"
    assert structlog.get_config() == newer


async def test_an_unconfigured_structlog_is_left_unconfigured(tmp_path: Path) -> None:
    structlog.reset_defaults()
    await (await esper.start(quiet_config(tmp_path), run_dir=tmp_path / "run")).wait()
    assert not structlog.is_configured()


async def test_a_stop_cannot_record_a_run_as_completed(tmp_path: Path) -> None:
    """stop(status="completed") mid-run recorded a completed run (exit 0) although training had not completed."""
    config = quiet_config(tmp_path)
    config = msgspec.structs.replace(config, tolaria=msgspec.structs.replace(config.tolaria, epochs=30))
    system = await esper.start(config, run_dir=tmp_path / "run")
    with pytest.raises(ValueError, match=r"^status: a stop is recorded as 'stopped', 'interrupted' or 'failed', got"):
        await system.stop(status="completed")
    # A signal names what interrupted the run: with another status, or a name no signal has, it was stored as given.
    with pytest.raises(ValueError, match=r"^signal: a signal's name \(such as 'SIGTERM'\) with status 'interrupted'"):
        await system.stop(signal="SIGTERM")
    with pytest.raises(ValueError, match=r"^signal: .* got 'banana' with status 'interrupted'"):
        await system.stop(status="interrupted", signal="banana")
    summary = await system.stop()  # the refused stops left the run going: this one ends it
    assert (summary.status, summary.exit_code) == ("stopped", 0)
    assert summary.training is not None
    assert not summary.training.completed


def test_a_loop_that_ends_while_the_runs_end_is_written_lets_go_of_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Ctrl-C (asyncio.run cancelling every task) while the end was written left events.jsonl without its
    run_finished line, the log file open and structlog Esper's: every later start in the process raised
    LogFileInUse. The guard did not abandon a run being finished, and the cancelled finish never released the log."""
    config = quiet_config(tmp_path)
    run_dir = tmp_path / "run"
    capture = structlog.testing.LogCapture()
    structlog.configure(processors=[capture], logger_factory=structlog.ReturnLoggerFactory())
    mine = structlog.get_config()

    async def interrupted() -> None:
        reached = asyncio.Event()

        async def held(_system: EsperSystem, _last_step: int | None) -> None:
            reached.set()
            await asyncio.Event().wait()  # the end held here (the report rendering) until the loop goes away

        monkeypatch.setattr(EsperSystem, "_render_report", held)
        system = await esper.start(config, run_dir=run_dir)
        asyncio.get_running_loop().create_task(system.wait())
        await reached.wait()
        # Returning now ends asyncio.run, which cancels every task left: the end being written among them.

    asyncio.run(interrupted())
    monkeypatch.undo()
    assert _log_free()
    assert structlog.get_config() == mine
    assert not (run_dir / "summary.json").exists()
    events = (run_dir / "events.jsonl").read_text().splitlines()
    assert json.loads(events[-2])["event"] == "run_abandoned"
    last = json.loads(events[-1])
    assert (last["event"], last["status"]) == ("run_finished", "interrupted")

    async def resume() -> RunSummary:
        return await (await esper.start(config, resume=run_dir)).wait()

    summary = asyncio.run(resume())  # the claim was released too, and --resume finishes the run
    assert summary.status == "completed"
    assert (run_dir / "summary.json").is_file()


def test_esper_start_rewinds_no_random_stream_once_the_run_module_is_imported(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every access to esper.start saved and restored Python's random state around the import, so a draw another
    thread made meanwhile was rewound; only the first import (which draws itself) needs it."""
    assert esper.start is esper_run.start  # imported by now
    restored: list[object] = []
    monkeypatch.setattr(random, "setstate", restored.append)
    assert esper.start is esper_run.start
    assert restored == []


async def test_two_starts_awaited_at_once_start_one_run_and_the_other_leaves_no_directory(tmp_path: Path) -> None:
    """Two starts awaited together (a notebook's gather) both passed the log-file check before either had logged:
    the second was refused only at its logging, with its run directory already made, and left it behind."""
    first_dir, second_dir = tmp_path / "first", tmp_path / "second"
    outcomes = await asyncio.gather(
        esper.start(quiet_config(tmp_path), run_dir=first_dir),
        esper.start(quiet_config(tmp_path), run_dir=second_dir),
        return_exceptions=True,
    )
    started = [o for o in outcomes if isinstance(o, EsperSystem)]
    refused = [o for o in outcomes if isinstance(o, LogFileInUse)]
    assert (len(started), len(refused)) == (1, 1), outcomes
    assert "another run in this process is still starting" in str(refused[0])
    assert isinstance(outcomes[0], EsperSystem)  # the first to be awaited is the first to take the place
    assert not second_dir.exists()
    assert (await started[0].stop()).status == "stopped"
    # The place is given back at the run's end, and after a start refused in its checks.
    with pytest.raises(ConfigError):
        await esper.start(quiet_config(tmp_path), run_dir=tmp_path / "bad", overrides=["tolaria.epochs=0"])
    assert _log_free()
    following = await esper.start(quiet_config(tmp_path), run_dir=second_dir)
    assert (await following.stop()).status == "stopped"


async def test_a_callers_own_structlog_configuration_comes_back_as_the_same_list(tmp_path: Path) -> None:
    """The start's reservation of the log file's place came off as a copy of the caller's processor list: equal, but
    not the list the caller configured, so a LoggingHandle that checks by identity no longer restored its own."""
    processors: list[Processor] = [structlog.processors.add_log_level, structlog.processors.JSONRenderer()]
    structlog.configure(processors=processors)
    system = await esper.start(quiet_config(tmp_path), run_dir=tmp_path / "run")
    assert (await system.stop()).status == "stopped"
    assert structlog.get_config()["processors"] is processors
    with pytest.raises(ConfigError):
        await esper.start(quiet_config(tmp_path), run_dir=tmp_path / "bad", overrides=["tolaria.epochs=0"])
    assert structlog.get_config()["processors"] is processors
