"""End to end: a lag-0 run killed after an epoch end's checkpoint resumes as the uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from typing import TYPE_CHECKING, Any

import msgspec
import pytest

from actors.kasmina.journal import JOURNAL_FILENAME, JournalReceipt, read_journal
from esper.run import start
from schemas.run import RunSummary
from tests.test_e2e_run import assert_same_grown_weights, run_esper, tiny_config
from tests.tolaria_factories import NanForThreeSteps

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

EPOCHS = 8
STEPS_PER_EPOCH = 16  # tiny_config's
KILL_STEP = 32  # the epoch end whose plan (decided on its own packet, lag 0) attaches the run's first seed

# The built-in host, with the process killed (SIGKILL, as kill -9) once the trainer has written its checkpoint of
# step KILL_STEP and Kasmina has journaled the receipt of the plan decided on that step's packet (barriers on the
# threads that write them, no sleep). Without KILL_STEP it is the plain host, for the resume; the reference run trains
# the same CNN as the built-in host, in the test's process (importing this module there would patch the classes for
# every later test).
_KILL_HOST = """
import os
import signal
import threading

from actors.kasmina.journal import BoundaryJournal, JournalReceipt
from actors.tolaria.checkpoints import CheckpointWriter
from esper.nn.hosts import CNN1dHost

_STEP = int(os.environ.get("KILL_STEP", "-1"))
_checkpointed = threading.Event()
_receipt = threading.Event()
_append = BoundaryJournal.append
_write_pending = BoundaryJournal.write_pending
_write_checkpoint = CheckpointWriter._write


def _append_and_note(self, entry):
    _append(self, entry)
    if isinstance(entry, JournalReceipt) and entry.receipt.decided_on_step == _STEP:
        _receipt.set()


def _write_then_kill(self):
    _write_pending(self)
    if _receipt.is_set():
        if not _checkpointed.wait(60):
            raise RuntimeError("the checkpoint never came")
        os.kill(os.getpid(), signal.SIGKILL)


def _checkpoint_then_tell(self, state):
    _write_checkpoint(self, state)
    if state.global_step == _STEP:
        _checkpointed.set()


if _STEP >= 0:
    BoundaryJournal.append = _append_and_note
    BoundaryJournal.write_pending = _write_then_kill
    CheckpointWriter._write = _checkpoint_then_tell


def factory():
    return CNN1dHost()
"""


async def test_a_lag_0_run_killed_after_applying_its_epoch_ends_plan_resumes_as_an_uninterrupted_run(
    tmp_path: Path,
) -> None:
    """With command_lag_steps = 0 an epoch end's checkpoint is captured before the plan decided on its own packet is
    applied (at the same step, as the next epoch starts). Killed after that, the journal holds a receipt applied at
    the checkpoint's step for a plan the checkpoint still waits for: the resume took it for the checkpoint's, never
    sent the plan again, missed it and went on in an emergency. It now sends it again (the killed session's receipt
    dropped from the journal): the same grafts at the same steps and bitwise-equal weights."""
    (tmp_path / "killhost.py").write_text(_KILL_HOST, encoding="utf-8")
    config = tiny_config(tmp_path, epochs=EPOCHS)
    text = config.read_text(encoding="utf-8")
    assert "command_lag_steps = 4" in text
    config.write_text(text.replace("command_lag_steps = 4", "command_lag_steps = 0"), encoding="utf-8")
    paths = [str(tmp_path), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": os.pathsep.join(paths)}
    sets = ("--set", 'tolaria.host_model="killhost:factory"')
    reference_dir, run_dir = tmp_path / "uninterrupted", tmp_path / "run"
    uninterrupted = await (await start(config, reference_dir)).wait()
    assert uninterrupted.status == "completed", uninterrupted.error

    killed = _killed(config, run_dir, sets, {**env, "KILL_STEP": str(KILL_STEP)})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    journal = run_dir / "checkpoints" / JOURNAL_FILENAME
    at_step = [
        (e.receipt.decided_on_step, e.receipt.effect_step, [o.kind for o in e.receipt.outcomes if o.applied])
        for e in read_journal(journal)
        if isinstance(e, JournalReceipt) and e.receipt.applied_step == KILL_STEP
    ]
    assert at_step == [(KILL_STEP, KILL_STEP, ["attach"])], "the killed session must have applied the attach"
    before = len(_events(run_dir))
    run_esper(config, env, "--resume", str(run_dir), *sets)

    events = _events(run_dir)[before:]
    assert not [e for e in events if e["event"] in {"plan_missed", "emergency_signal", "epoch_failed"}]
    summary = msgspec.json.decode((run_dir / "summary.json").read_bytes(), type=RunSummary)
    assert summary.status == "completed"
    assert summary.training is not None
    assert summary.training.resumed_from_step == KILL_STEP
    assert_same_grown_weights(run_dir / "checkpoints", reference_dir / "checkpoints", steps=EPOCHS * STEPS_PER_EPOCH)
    # Each plan applied once in the journal, as in the uninterrupted run's.
    receipts = [e.receipt.decided_on_step for e in read_journal(journal) if isinstance(e, JournalReceipt)]
    reference = [
        e.receipt.decided_on_step
        for e in read_journal(reference_dir / "checkpoints" / JOURNAL_FILENAME)
        if isinstance(e, JournalReceipt)
    ]
    assert receipts == reference


def _killed(
    config: Path, run_dir: Path, sets: tuple[str, ...], env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    """``python -m esper.run CONFIG --run-dir RUN_DIR SETS`` on ``env`` (KILL_STEP names where it is killed)."""
    return subprocess.run(
        [sys.executable, "-m", "esper.run", str(config), "--run-dir", str(run_dir), *sets],
        capture_output=True,
        text=True,
        env=env,
        timeout=90,
        check=False,
    )


def _events(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "events.jsonl").read_text(encoding="utf-8").splitlines()]


async def test_a_lag_0_rollback_to_an_epoch_end_sends_its_own_plan_again(tmp_path: Path) -> None:
    """The fast snapshot of an epoch end (step 32) is captured before the plan decided on its packet (lag 0) is
    applied at step 32: rolled back there by non-finite steps (from 40 on), the trainer waits for that plan again.
    Kasmina took the receipt of its first application for the snapshot's and never sent it: plan_missed."""
    NanForThreeSteps.calls, NanForThreeSteps.first = 0, 40
    config = tiny_config(tmp_path, epochs=4)
    text = config.read_text(encoding="utf-8")
    config.write_text(text.replace("command_lag_steps = 4", "command_lag_steps = 0"), encoding="utf-8")
    run_dir = tmp_path / "run"
    host = 'tolaria.host_model="tests.tolaria_factories:nan_for_three_steps"'
    summary = await (await start(config, run_dir, [host])).wait()
    assert summary.status == "completed", summary.error
    assert summary.training is not None
    assert summary.training.rollbacks == 1
    events = _events(run_dir)
    [rolled_back] = [e for e in events if e["event"] == "tolaria_rolled_back"]
    assert rolled_back["step"] == KILL_STEP
    assert not [e for e in events if e["event"] in {"plan_missed", "epoch_failed"}]
    journal = read_journal(run_dir / "checkpoints" / JOURNAL_FILENAME)
    receipts = [e.receipt.decided_on_step for e in journal if isinstance(e, JournalReceipt)]
    assert receipts.count(KILL_STEP) == 1
