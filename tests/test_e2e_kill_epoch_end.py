"""End to end: a kill -9 at either side of Tamiyo's send of an epoch end's Decision resumes as the uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from typing import TYPE_CHECKING, Any

import msgspec
import pytest

from actors.kasmina.journal import JOURNAL_FILENAME, JournalBoundary, read_journal
from actors.tamiyo.field_reports import WAL_FILENAME, scan_frames
from esper.run import start
from schemas.run import RunSummary
from tests.test_e2e_run import assert_same_grown_weights, run_esper, tiny_config

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from schemas.reports import FieldReport

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

EPOCHS = 8
STEPS_PER_EPOCH = 16  # tiny_config's

# The built-in host, with a process killed (SIGKILL, as kill -9) in Tamiyo's handling of the epoch-end packet of
# step KILL_STEP, once the trainer's checkpoint of that step is written (barriers on the threads that write it and
# Kasmina's journal, no sleep): KILL_AT=sent right after Tamiyo's Decision has gone to Kasmina and Kasmina has
# journaled its boundary; KILL_AT=journaled right after Tamiyo's state for that packet is in tamiyo_states.jsonl.
# Without the variables it is the plain host, the same CNN as the built-in one that trains the reference run (in the
# test's process: importing this module there would patch the classes for every later test), and it trains the resume.
_RACE_HOST = """
import asyncio
import os
import signal
import threading

from actors.kasmina.journal import BoundaryJournal, last_boundary_step
from actors.tamiyo.state_journal import TamiyoStateJournal
from actors.tolaria.checkpoints import CheckpointWriter
from esper.nn.hosts import CNN1dHost
from esper.wiring import Routes

_AT = os.environ.get("KILL_AT", "")
_STEP = int(os.environ.get("KILL_STEP", "0"))
_journaled = threading.Event()
_checkpointed = threading.Event()

_write_pending = BoundaryJournal.write_pending
_write_checkpoint = CheckpointWriter._write
_decision = Routes.decision
_append_state = TamiyoStateJournal.append


def _journal_then_tell(self):
    _write_pending(self)
    if self.path is not None and (last_boundary_step(self.path) or -1) >= _STEP:
        _journaled.set()


def _checkpoint_then_tell(self, state):
    _write_checkpoint(self, state)
    if state.global_step >= _STEP:
        _checkpointed.set()


def _kill(*events):
    for event in events:
        if not event.wait(60):
            raise RuntimeError("the barrier never came")
    os.kill(os.getpid(), signal.SIGKILL)


async def _decision_then_kill(self, decision):
    await _decision(self, decision)
    if _AT == "sent" and decision.decided_on_step == _STEP:
        await asyncio.to_thread(_kill, _journaled, _checkpointed)


async def _state_then_kill(self, step, state):
    await _append_state(self, step, state)
    if _AT == "journaled" and step == _STEP:
        await asyncio.to_thread(_kill, _checkpointed)


if _AT:
    BoundaryJournal.write_pending = _journal_then_tell
    CheckpointWriter._write = _checkpoint_then_tell
    Routes.decision = _decision_then_kill
    TamiyoStateJournal.append = _state_then_kill


def factory():
    return CNN1dHost()
"""

# every_k grafts at every other epoch end (32, 64, ...); the heuristic with a 3-epoch cooldown and no constraint
# grafts at the first plateau (32), then waits. Resumed from their state of the epoch before, both grafted again an
# epoch early (every_k at 80, the heuristic at 48, its cooldown forgotten).
EVERY_K = ('tamiyo.policy="every_k"', "tamiyo.every_k_epochs=2")
HEURISTIC = ("tamiyo.germinate_cooldown_epochs=3", "tamiyo.germinate_min_constraint=0.0")


@pytest.mark.parametrize(
    ("policy", "step", "kill_points"),
    [(EVERY_K, 64, ("sent", "journaled")), (HEURISTIC, 32, ("sent",))],
    ids=["every_k", "heuristic"],
)
async def test_a_kill_9_around_an_epoch_ends_decision_resumes_as_an_uninterrupted_run(
    tmp_path: Path, policy: tuple[str, ...], step: int, kill_points: tuple[str, ...]
) -> None:
    """Killed once Kasmina journaled the command of the epoch end of ``step`` (and the trainer its checkpoint), the
    run resumes from that checkpoint with Tamiyo's state of that very packet: Tamiyo journals it before the Decision
    leaves (sent first, the controller came back from the epoch before and grafted again an epoch early). Killed
    between the journal and the send, Kasmina lacks that boundary, so the resume goes back a checkpoint. Either way
    the same grafts at the same steps, bitwise-equal weights and the same field reports, none twice."""
    config, env, sets = _setup(tmp_path, policy)
    reference_dir = tmp_path / "uninterrupted"
    reference = await _uninterrupted(config, reference_dir, policy)
    assert (step, "germinate") in _commands_at(reference_dir), "the epoch end killed at must graft to be a real test"
    for at in kill_points:
        run_dir = tmp_path / at
        events = _kill_and_resume(config, env, sets, run_dir, at, step)
        resumed_from = step if at == "sent" else step - STEPS_PER_EPOCH
        summary = _summary(run_dir)
        assert summary.status == "completed"
        assert summary.training is not None
        assert summary.training.resumed_from_step == resumed_from, at
        assert _commands_at(run_dir) == _commands_at(reference_dir), at
        assert_same_grown_weights(
            run_dir / "checkpoints", reference_dir / "checkpoints", steps=EPOCHS * STEPS_PER_EPOCH
        )
        assembled = [e for e in events if e["event"] == "run_assembled"]
        assert [(e["tamiyo_state"], e["tamiyo_state_step"]) for e in assembled] == [("journal", resumed_from)]
        assert not [e for e in events if e["event"] == "tamiyo_state_behind"]
        assert summary.growth is not None
        assert reference.growth is not None
        assert summary.growth.decisions == reference.growth.decisions
        assert summary.growth.parameters_added == reference.growth.parameters_added
        reports = _field_reports(run_dir)
        assert len({r.report_id for r in reports}) == len(reports)
        assert [_report_key(r) for r in reports] == [_report_key(r) for r in _field_reports(reference_dir)]


async def test_a_run_whose_journal_an_earlier_version_wrote_without_macs_resumes_as_an_uninterrupted_run(
    tmp_path: Path,
) -> None:
    """Killed after the every_k graft at step 64 was journaled, its journal's verdict MACs removed (as an earlier
    version wrote it), the run resumes from step 64 and ends as the uninterrupted run, bitwise, its journal still
    without a MAC (a mixed one is refused)."""
    config, env, sets = _setup(tmp_path, EVERY_K)
    reference_dir = tmp_path / "uninterrupted"
    await _uninterrupted(config, reference_dir, EVERY_K)
    run_dir = tmp_path / "earlier"
    journal = run_dir / "checkpoints" / JOURNAL_FILENAME

    def strip_macs(_: Path) -> None:
        lines = [msgspec.json.decode(raw) for raw in journal.read_bytes().splitlines()]
        stripped = [line.pop("verdict_mac", None) for line in lines]
        assert any(mac is not None for mac in stripped), "the journal must hold a command's MAC to be a real test"
        journal.write_bytes(b"".join(msgspec.json.encode(line) + b"\n" for line in lines))

    _kill_and_resume(config, env, sets, run_dir, "sent", 64, between=strip_macs)
    summary = _summary(run_dir)
    assert summary.status == "completed"
    assert summary.training is not None
    assert summary.training.resumed_from_step == 64
    assert _commands_at(run_dir) == _commands_at(reference_dir)
    assert_same_grown_weights(run_dir / "checkpoints", reference_dir / "checkpoints", steps=EPOCHS * STEPS_PER_EPOCH)
    commands = [e for e in read_journal(journal) if isinstance(e, JournalBoundary) and e.command is not None]
    assert all(e.verdict_mac is None for e in commands)


def _setup(tmp_path: Path, policy: tuple[str, ...]) -> tuple[Path, dict[str, str], tuple[str, ...]]:
    (tmp_path / "racehost.py").write_text(_RACE_HOST, encoding="utf-8")
    config = tiny_config(tmp_path, epochs=EPOCHS)
    paths = [str(tmp_path), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": os.pathsep.join(paths)}
    sets = ("--set", 'tolaria.host_model="racehost:factory"')
    return config, env, sets + tuple(arg for override in policy for arg in ("--set", override))


async def _uninterrupted(config: Path, run_dir: Path, policy: tuple[str, ...]) -> RunSummary:
    """The run uninterrupted, in this process on the built-in host: it must complete. Returns its summary.json."""
    summary = await (await start(config, run_dir, policy)).wait()
    assert summary.status == "completed", summary.error
    return _summary(run_dir)


def _kill_and_resume(
    config: Path,
    env: dict[str, str],
    sets: tuple[str, ...],
    run_dir: Path,
    at: str,
    step: int,
    between: Callable[[Path], None] | None = None,
) -> list[dict[str, Any]]:
    """A run into ``run_dir`` killed at ``at`` of the epoch end of ``step``, then (after ``between`` is given the run
    directory) resumed to its end; returns the resumed session's events."""
    killed = subprocess.run(
        [sys.executable, "-m", "esper.run", str(config), "--run-dir", str(run_dir), *sets],
        capture_output=True,
        text=True,
        env={**env, "KILL_AT": at, "KILL_STEP": str(step)},
        timeout=120,
        check=False,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert not (run_dir / "summary.json").exists()
    if between is not None:
        between(run_dir)
    before = len(_events(run_dir))
    run_esper(config, env, "--resume", str(run_dir), *sets)
    return _events(run_dir)[before:]


def _events(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "events.jsonl").read_text(encoding="utf-8").splitlines()]


def _commands_at(run_dir: Path) -> list[tuple[int, str]]:
    """The steps and actions of the run's commands, each decided step's latest decision (a resume decides again)."""
    latest = {e["step"]: e for e in _events(run_dir) if e["event"] == "tamiyo_decision"}
    return [(s, e["action"]) for s, e in sorted(latest.items()) if e["command"]]


def _summary(run_dir: Path) -> RunSummary:
    return msgspec.json.decode((run_dir / "summary.json").read_bytes(), type=RunSummary)


def _field_reports(run_dir: Path) -> tuple[FieldReport, ...]:
    return scan_frames((run_dir / WAL_FILENAME).read_bytes()).reports


def _report_key(report: FieldReport) -> tuple[object, ...]:
    """What a report says but its ids, times and latencies (the run id and the machine's timing differ)."""
    return (report.start_epoch, report.action, report.seed_id, report.blueprint_id, report.outcome, report.notes)
