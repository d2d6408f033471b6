"""End to end: a kill -9 after an epoch's checkpoint, before Nissa wrote that epoch's metrics.csv row, loses no row."""

from __future__ import annotations

import csv
import json
import os
import signal
from typing import TYPE_CHECKING

import msgspec
import pytest

from esper.report_inputs import read_run_events
from esper.resume_checkpoints import resume_point
from esper.run import main
from schemas.run import RunSummary
from tests.test_e2e_finish import esper_with_host
from tests.test_e2e_run import tiny_config

if TYPE_CHECKING:
    import subprocess
    from pathlib import Path

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

EPOCHS = 4
STEPS_PER_EPOCH = 16  # tiny_config's
# The columns a run measures on its machine (two runs never write the same): every other column of the killed and
# resumed run's metrics.csv is the uninterrupted run's.
MEASURED = (
    "data_wait_ms",
    "host_to_device_ms",
    "forward_ms",
    "backward_ms",
    "optimizer_ms",
    "step_ms",
    "hook_latency_ms",
    "samples_per_s",
    "wall_time_s",
)

# The built-in host, with a kill -9 in the window: with HOLD_ROW_AT_STEP set, Nissa never handles that step's
# epoch-end packet (its metrics.csv row is never written), and the first forward (on the train lane) after the trainer
# handed that step's checkpoint to its writer (the next epoch's first step, or the test split's scoring after the last
# epoch) waits until the checkpoint is written and Kasmina's journal holds the step's boundary (else the resume would
# go back to the checkpoint before, and train the epoch again), then sends the process SIGKILL: no later epoch can end
# first, however slowly the writer runs. Barriers, no sleeps. Without the variable it is the plain CNN, the built-in
# host's model: the resume trains it, and the uninterrupted reference run (in the test process, which must not import
# this module) the built-in host itself.
_HOLDING_HOST = """
import asyncio
import os
import signal
import threading

from actors.kasmina.journal import BoundaryJournal, last_boundary_step
from actors.nissa.actor import Nissa
from actors.tolaria.checkpoints import CheckpointWriter
from esper.nn.hosts import CNN1dHost
from schemas.state import SystemStatePacket

STEP = int(os.environ.get("HOLD_ROW_AT_STEP", "0"))
journaled = threading.Event()
submitted = []

if STEP:
    write_pending = BoundaryJournal.write_pending

    def journal_then_tell(self):
        write_pending(self)
        if self.path is not None and (last_boundary_step(self.path) or -1) >= STEP:
            journaled.set()

    submit = CheckpointWriter.submit

    def submit_then_tell(self, state):
        submit(self, state)
        if state.global_step == STEP:
            submitted.append(self)

    handle = Nissa.handle

    async def hold_the_row(self, msg):
        if isinstance(msg, SystemStatePacket) and msg.global_step == STEP and msg.epoch_progress >= 1.0:
            await asyncio.Event().wait()
        return await handle(self, msg)

    BoundaryJournal.write_pending = journal_then_tell
    CheckpointWriter.submit = submit_then_tell
    Nissa.handle = hold_the_row


def kill_once_checkpointed(module, args):
    if submitted:
        submitted[0].wait_written()
        journaled.wait(60)
        os.kill(os.getpid(), signal.SIGKILL)


def factory():
    host = CNN1dHost()
    if STEP:
        host.register_forward_pre_hook(kill_once_checkpointed)
    return host
"""


def _esper(config: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return esper_with_host("holdinghost", config, env, *args)


def _rows(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "metrics.csv").open(encoding="utf-8", newline="") as file:
        return list(csv.DictReader(file))


def _unmeasured(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    return [{column: value for column, value in row.items() if column not in MEASURED} for row in rows]


def _events(run_dir: Path) -> list[dict[str, object]]:
    lines = (run_dir / "events.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


class _Setup:
    def __init__(self, base: Path) -> None:
        self.base = base
        (base / "holdinghost.py").write_text(_HOLDING_HOST, encoding="utf-8")
        self.config = tiny_config(base, epochs=EPOCHS)
        paths = [str(base), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": os.pathsep.join(paths)}
        self.reference = base / "uninterrupted"


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> _Setup:
    """The host module, the config and the uninterrupted run both kill points compare with (the command line in the
    test process, with the built-in host the test host module is without its variables)."""
    made = _Setup(tmp_path_factory.mktemp("resume_rows"))
    assert main([str(made.config), "--run-dir", str(made.reference)]) == 0
    return made


@pytest.mark.parametrize("epoch", [2, EPOCHS], ids=["mid_run", "last_epoch"])
def test_a_row_the_checkpoint_covers_is_written_by_the_resume(setup: _Setup, epoch: int) -> None:
    """A kill -9 after epoch E's checkpoint, while its packet still waited in Nissa's mailbox, left metrics.csv
    without row E for good: --resume continued from epoch E + 1 (or, after the last epoch, only finished the run,
    whose summary's final validation accuracy and report.png then came from epoch E - 1). The resume now writes the
    row from the epoch-end packet Kasmina's journal holds: metrics.csv and the summary's growth figures are the
    uninterrupted run's (but for the measured columns), and the killed session's own timings stand in the row."""
    step = epoch * STEPS_PER_EPOCH
    killed_dir = setup.base / f"killed-{epoch}"
    held = {**setup.env, "HOLD_ROW_AT_STEP": str(step)}

    killed = _esper(setup.config, held, "--run-dir", str(killed_dir))
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    # The window: the checkpoint of epoch E is where a resume continues, and metrics.csv stops at epoch E - 1.
    assert resume_point(killed_dir / "checkpoints") == step
    assert [row["epoch"] for row in _rows(killed_dir)] == [str(e) for e in range(1, epoch)]
    ended = [e for e in _events(killed_dir) if e["event"] == "epoch_end" and e["epoch"] == epoch]
    assert len(ended) == 1, "the epoch_end line is written before the checkpoint"

    resumed = _esper(setup.config, setup.env, "--resume", str(killed_dir))
    assert resumed.returncode == 0, resumed.stderr[-2000:]

    rows, want = _rows(killed_dir), _rows(setup.reference)
    assert [row["epoch"] for row in rows] == [str(e) for e in range(1, EPOCHS + 1)]
    assert _unmeasured(rows) == _unmeasured(want)
    # The rebuilt row's timings are the killed session's measurements of that epoch, not blanks or zeros.
    rebuilt = rows[epoch - 1]
    assert round(float(rebuilt["hook_latency_ms"]), 3) == ended[0]["hook_ms"]
    assert all(float(rebuilt[column]) > 0 for column in ("forward_ms", "step_ms", "samples_per_s"))
    assert float(rebuilt["wall_time_s"]) >= float(rows[epoch - 2]["wall_time_s"])

    summary = msgspec.json.decode((killed_dir / "summary.json").read_bytes(), type=RunSummary)
    reference = msgspec.json.decode((setup.reference / "summary.json").read_bytes(), type=RunSummary)
    assert summary.status == "completed", summary.error
    assert summary.growth is not None
    assert reference.growth is not None
    assert reference.growth.final_val_accuracy == float(want[-1]["val_accuracy"])
    latencies = {"decision_p50_ms": None, "decision_p95_ms": None}
    assert msgspec.structs.replace(summary.growth, **latencies) == msgspec.structs.replace(
        reference.growth, **latencies
    )
    assert (killed_dir / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # The other records of the epoch: every epoch_end line once, and the lifecycle events that stand are the
    # uninterrupted run's.
    ends = sorted(int(str(e["epoch"])) for e in _events(killed_dir) if e["event"] == "epoch_end")
    assert ends == list(range(1, EPOCHS + 1))
    stages = [(e.slot, e.to_stage, e.step) for e in read_run_events(killed_dir / "events.jsonl").stages]
    assert stages == [(e.slot, e.to_stage, e.step) for e in read_run_events(setup.reference / "events.jsonl").stages]
