"""End to end: the whole supervision tree on a tiny config, a crash and restart mid-run, and Ctrl-C then --resume."""

from __future__ import annotations

import asyncio
import csv
import hashlib
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
from typing import IO, TYPE_CHECKING, Any

import msgspec
import pytest
import structlog
import torch
from torch import nn

from actors.kasmina.actor import KasminaActor
from actors.kasmina.journal import JOURNAL_FILENAME, entry_step, read_journal
from actors.kasmina.preparation import SeedSource
from actors.tamiyo.actor import TamiyoActor
from actors.tamiyo.state_journal import STATE_JOURNAL_FILENAME, state_at
from actors.tolaria.checkpoint_verify import latest_good_step, load_latest
from actors.tolaria.checkpoints import read_manifest
from esper.nn.blueprints import SourcedModule
from esper.resume_checkpoints import resume_point
from esper.run import start
from esper.runtime.emergency import RESTORED
from esper.runtime.errors import ConfigError
from esper.wiring import RunHooks
from schemas.run import RunSummary
from schemas.state import SystemStatePacket
from tests.far_budgets import far_budgets
from tests.test_nissa_prometheus import http_get

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from pathlib import Path

    from esper.nn.blueprints import BlueprintDescriptor, SlotShape

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

RUN_FILES = ("config.toml", "events.jsonl", "metrics.csv", "field_reports.wal", "summary.json", "report.png")


def tiny_config(tmp_path: Path, *, epochs: int = 14) -> Path:
    """A few hundred steps: 16 steps an epoch, a plateau every epoch (min_delta is huge), short dwells; its wall-clock
    budgets are far above any real time (tests/far_budgets.py), so two runs of it end the same on a loaded machine."""
    path = tmp_path / "tiny.toml"
    path.write_text(
        f"""
[tolaria]
epochs = {epochs}
dataset_samples = 1600
batch_size = 64
lr = 0.003
state_every_steps = 4
command_lag_steps = 4
{far_budgets("tolaria")}

[kasmina]
stage_min_dwell_steps = 8
g2_window_steps = 4
blend_ramp_steps = 8
probation_epochs = 1
embargo_epochs = 1
{far_budgets("kasmina")}

[tamiyo]
plateau_patience_epochs = 1
plateau_min_delta = 10.0
germinate_cooldown_epochs = 1
{far_budgets("tamiyo")}

[urza]
root = "{tmp_path / "urza"}"

[logging]
console = false
state_interval_s = 60.0
""",
        encoding="utf-8",
    )
    return path


class _Inert(nn.Module):
    """A seed that cannot help: its output ignores its only parameter, so the attach probe sees no gradient."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h * 0 + self.weight.detach()


class ReplaceNthFetch(SeedSource):
    """Hands out the real module for every fetch but the ``nth`` (1-based), which ``replace`` turns into another."""

    def __init__(self, inner: SeedSource, nth: int, replace: Callable[[nn.Module], nn.Module]) -> None:
        self._inner = inner
        self._nth = nth
        self._replace = replace
        self.fetches = 0

    def describe(self, blueprint_id: str) -> BlueprintDescriptor | None:
        return self._inner.describe(blueprint_id)

    def fetch(self, blueprint_id: str, slot_shape: SlotShape, params: Mapping[str, float], seed: int) -> SourcedModule:
        self.fetches += 1
        fetched = self._inner.fetch(blueprint_id, slot_shape, params, seed)
        return SourcedModule(self._replace(fetched.module)) if self.fetches == self._nth else fetched


def second_seed_inert(inner: SeedSource) -> SeedSource:
    """The second seed fetched is inert (a deterministic cull)."""
    return ReplaceNthFetch(inner, 2, lambda _: _Inert())


def stage_events(run_dir: Path) -> list[dict[str, object]]:
    lines = (run_dir / "events.jsonl").read_text(encoding="utf-8").splitlines()
    return [e for e in map(json.loads, lines) if e.get("event") in ("seed_stage", "seed_stage_changed")]


async def test_a_tiny_run_grows_the_host_culls_a_seed_that_cannot_help_and_writes_every_file(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    system = await start(tiny_config(tmp_path), run_dir, hooks=RunHooks(wrap_source=second_seed_inert))
    summary = await system.wait()

    assert summary.status == "completed", summary.error
    assert summary.exit_code == 0
    for name in RUN_FILES:
        assert (run_dir / name).is_file(), f"{name} missing"
    checkpoints = run_dir / "checkpoints"
    assert (checkpoints / "manifest.json").is_file()
    assert list(checkpoints.glob("step-*.pt"))
    assert (checkpoints / "kasmina_journal.jsonl").stat().st_size > 0
    assert (run_dir / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    on_disk = msgspec.json.decode((run_dir / "summary.json").read_bytes(), type=RunSummary)
    assert on_disk.growth == summary.growth

    stages = [(e["seed_id"], e["to_stage"]) for e in stage_events(run_dir) if e.get("seed_id")]
    reached = {stage for _, stage in stages}
    assert {2, 3, 4, 7, 8} <= reached, f"germinated, training, blending, fossilized and culled expected: {stages}"
    growth = summary.growth
    assert growth is not None
    assert growth.seeds.get("fossilized", 0) >= 1
    assert growth.seeds.get("culled", 0) >= 1
    assert growth.parameters_added > 0
    assert growth.baseline_val_accuracy is not None
    assert growth.decisions > 0
    assert growth.decision_p95_ms is not None
    assert summary.training is not None
    assert summary.training.epochs == 14
    assert summary.training.seed_parameters == growth.parameters_added
    # Of them, the fossilized seeds' (the run has no initial seed): the summary line splits the figure.
    fossilized = growth.parameters_fossilized
    assert fossilized is not None
    assert summary.training.fossilized_parameters == fossilized
    assert 0 < fossilized <= growth.parameters_added
    # metrics.csv's per-epoch training figures are the whole epoch's, as the trainer's epoch_end record says (they
    # were the epoch's last packet interval's: 4 of 16 steps).
    with (run_dir / "metrics.csv").open(encoding="utf-8") as file:
        rows = list(csv.DictReader(file))
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text(encoding="utf-8").splitlines()]
    ends = [e for e in events if e["event"] == "epoch_end"]
    assert len(rows) == len(ends) == 14
    for row, end in zip(rows, ends, strict=True):
        assert int(row["epoch"]) == end["epoch"]  # both count from 1, as the console does
        assert round(float(row["train_loss"]), 4) == end["train_loss"]
        assert round(float(row["train_accuracy"]), 4) == end["train_acc"]
    # Its seed columns are the lifecycle's stages: a fossilized seed keeps its slot, so the last row counts them all.
    assert int(rows[-1]["seeds_fossilized"]) == growth.seeds["fossilized"]
    assert any(int(row["seeds_germinated"]) or int(row["seeds_probationary"]) for row in rows)
    assert {"urza", "nissa", "tezzeret", "kasmina", "tamiyo", "tolaria"} <= {a.actor for a in summary.actors}


async def test_tamiyo_crashes_mid_run_is_restarted_and_training_still_completes(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    system = await start(tiny_config(tmp_path, epochs=8), run_dir, hooks=RunHooks(crash_tamiyo_at_step=40))
    summary = await system.wait()

    assert summary.status == "completed", summary.error
    restarts = {a.actor: a.restarts for a in summary.actors}
    assert restarts["tamiyo"] >= 1
    assert summary.training is not None
    assert summary.training.epochs == 8
    assert summary.training.global_step == 8 * 16
    events = (run_dir / "events.jsonl").read_text(encoding="utf-8")
    assert '"fault_injected"' in events
    assert '"training_restored"' in events


def _user_host(on_training_step: str) -> str:
    """The source of a small user host model module (``factory``) whose training forward first counts the call in
    ``CALLS`` and then runs ``on_training_step`` (one line)."""
    return f"""
import os
import sys
import threading
from torch import nn

CALLS = [0]

class Host(nn.Module):
    slot_targets = ("body",)

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(40, 16), nn.ReLU())
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        if self.training:
            CALLS[0] += 1
            {on_training_step}
        return self.head(self.body(x))

def factory() -> nn.Module:
    return Host()
"""


# Raises once per process, with INJECT_FAULT set: the restarted trainer's model gets past it; without it, the same
# host trains the uninterrupted reference run.
_FAILING_ONCE_HOST = _user_host(
    'if CALLS[0] == 10 and os.environ.get("INJECT_FAULT"): raise RuntimeError("injected fault in the forward")'
)


def test_a_trainer_crash_before_any_snapshot_restarts_training_and_the_lifecycle_from_step_0(tmp_path: Path) -> None:
    """The trainer crashes in its first epoch, before any snapshot or checkpoint: the restarted trainer trains again
    from step 0 and says so, so Kasmina starts over with it (it stayed at its last boundary and refused the new
    packets, whose plans then never came: timeouts, then a halt) and the run ends as an uninterrupted one does."""
    (tmp_path / "failsonce.py").write_text(_FAILING_ONCE_HOST, encoding="utf-8")
    config = tiny_config(tmp_path, epochs=3)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(tmp_path)}
    host = ["--set", 'tolaria.host_model="failsonce:factory"']
    crashed_dir = tmp_path / "crashed"
    run_esper(config, {**env, "INJECT_FAULT": "1"}, "--run-dir", str(crashed_dir), *host)
    summary = msgspec.json.decode((crashed_dir / "summary.json").read_bytes(), type=RunSummary)
    assert summary.status == "completed", summary.error
    assert {a.actor: a.restarts for a in summary.actors}["tolaria/trainer"] >= 1
    assert summary.growth is not None
    assert summary.growth.emergency_events == 0
    events = [json.loads(line) for line in (crashed_dir / "events.jsonl").read_text(encoding="utf-8").splitlines()]
    restored = [(e["step"], e["tier"]) for e in events if e["event"] == "training_restored"]
    assert restored == [(0, "fast")]  # the run's start is its first fast snapshot
    assert not [e for e in events if e["event"] == "plan_missed"]
    reference_dir = tmp_path / "uninterrupted"
    run_esper(config, env, "--run-dir", str(reference_dir), *host)
    want = msgspec.json.decode((reference_dir / "summary.json").read_bytes(), type=RunSummary)
    assert {a.actor: a.restarts for a in want.actors}["tolaria/trainer"] == 0
    grafts, tensors = _final_weights(crashed_dir)
    reference_grafts, reference_tensors = _final_weights(reference_dir)
    assert grafts == reference_grafts
    assert all(torch.equal(tensors[k], reference_tensors[k]) for k in reference_tensors)


async def test_a_trainer_crash_mid_run_resumes_from_its_snapshot_and_ends_as_an_uninterrupted_run(
    tmp_path: Path,
) -> None:
    """The trainer crashes in epoch 5, after plans it had applied since epoch 4's snapshot: the restarted trainer goes
    back to the snapshot and applies them again when Kasmina resends them (they were swallowed as duplicates of the
    applied ones: a decision timeout and an emergency), ending bitwise equal to an uninterrupted run."""
    crash_at = 4 * 16 + 9
    fired: list[int] = []

    def crash_once(step: int, model: nn.Module, batch: object) -> None:
        if step == crash_at and not fired:
            fired.append(step)
            raise RuntimeError("injected trainer fault")

    crashed_dir, reference_dir = tmp_path / "crashed", tmp_path / "uninterrupted"
    config = tiny_config(tmp_path, epochs=7)
    summary = await (await start(config, crashed_dir, hooks=RunHooks(step_probe=crash_once))).wait()
    assert fired == [crash_at]
    assert summary.status == "completed", summary.error
    assert {a.actor: a.restarts for a in summary.actors}["tolaria/trainer"] == 1
    assert summary.growth is not None
    assert summary.growth.emergency_events == 0
    assert summary.training is not None
    assert summary.training.resumed_from_step is None, "a restart is not a resume: the run is fresh"
    events = [json.loads(line) for line in (crashed_dir / "events.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [(e["step"], e["tier"]) for e in events if e["event"] == "training_restored"] == [(4 * 16, "fast")]
    assert not [e for e in events if e["event"] == "plan_missed"]
    # A plan the crashed trainer's packets asked for may still arrive after the restart: dropped, as it is decided
    # again from the restored trainer's packet of the same step.
    dropped = [e["decided_on_step"] for e in events if e["event"] == "boundary_plan_dropped"]
    assert all(4 * 16 < step <= crash_at for step in dropped), dropped
    reference = await (await start(config, reference_dir)).wait()
    assert reference.status == "completed"
    grafts, tensors = _final_weights(crashed_dir)
    reference_grafts, reference_tensors = _final_weights(reference_dir)
    assert any(4 * 16 < step <= crash_at for _, step in grafts), "a plan should apply between snapshot and crash"
    assert grafts == reference_grafts
    assert all(torch.equal(tensors[k], reference_tensors[k]) for k in reference_tensors)


def read_until(stream: IO[str], prefix: str) -> None:
    """Read a child's output up to and including the first line that starts with ``prefix`` (it must come)."""
    for line in stream:
        if line.startswith(prefix):
            return
    raise AssertionError(f"the output ended without a line starting with {prefix!r}")


def kill_when_said(command: list[str], env: dict[str, str], prefix: str) -> None:
    """Run ``command`` until its stderr has a line starting with ``prefix`` (it must come), then kill it (SIGKILL: no
    graceful stop, no tamiyo_state.json)."""
    with subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env) as first:
        assert first.stderr is not None
        read_until(first.stderr, prefix)
        first.kill()
        first.communicate(timeout=60)


def assert_same_grown_weights(got_dir: Path, want_dir: Path, *, steps: int) -> None:
    """The newest checkpoints of two runs: both at ``steps``, the same grafts (the reference grew), every model
    tensor bitwise equal."""
    resumed = load_latest(got_dir)
    reference = load_latest(want_dir)
    assert resumed is not None
    assert reference is not None
    got, want = resumed[0], reference[0]
    assert got.global_step == want.global_step == steps
    assert [(e.kind, e.step) for e in got.graft_log] == [(e.kind, e.step) for e in want.graft_log]
    assert any(e.kind == "attach" for e in want.graft_log), "the run should grow to be a real test"
    assert got.model.keys() == want.model.keys()
    for key, value in want.model.items():
        if isinstance(value, torch.Tensor):
            saved = got.model[key]
            assert isinstance(saved, torch.Tensor)
            assert torch.equal(saved, value), key


def run_esper(config: Path, env: dict[str, str], *args: str) -> str:
    """``python -m esper.run CONFIG ARGS`` in a subprocess; it must exit 0. Returns its stderr."""
    done = subprocess.run(
        [sys.executable, "-m", "esper.run", str(config), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=90,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stderr


async def resume_in_process(config: Path, run_dir: Path, overrides: tuple[str, ...] = ()) -> RunSummary:
    """``--resume RUN_DIR`` in the test process, for a test that asserts nothing of the resuming process itself; it
    must complete, as must the summary.json it writes. Returns that summary."""
    finished = await (await start(config, overrides=overrides, resume=run_dir)).wait()
    assert finished.status == "completed", finished.error
    summary = msgspec.json.decode((run_dir / "summary.json").read_bytes(), type=RunSummary)
    assert summary.status == "completed"
    return summary


async def test_resuming_a_completed_run_says_so_and_more_epochs_train_on(tmp_path: Path) -> None:
    """--resume of a run that trained every epoch touches nothing and says how to train further; with more epochs
    it continues from the last checkpoint, and no actor fails on the way (Kasmina used to crash sending rebuilt plans
    to a Tolaria that had already stopped)."""
    config = tiny_config(tmp_path, epochs=2)
    run_dir = tmp_path / "run"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # The run to resume, in the test process: the command line's resumes below are what the test checks.
    assert (await (await start(config, run_dir)).wait()).status == "completed"
    files = {path: path.read_bytes() for path in run_dir.rglob("*") if path.is_file()}
    notice = run_esper(config, env, "--resume", str(run_dir))
    assert "already trained 2 of tolaria.epochs = 2 epochs" in notice
    assert "nothing to resume" in notice
    assert "its summary was never written" not in notice
    # Every file as it was (a run killed before its summary is finished instead: tests/test_e2e_finish.py).
    assert {path: path.read_bytes() for path in run_dir.rglob("*") if path.is_file()} == files
    resumed = run_esper(config, env, "--resume", str(run_dir), "--set", "tolaria.epochs=3")
    # The console names where it continues (it said only which run it resumed).
    assert "resuming     continuing from step 32 (the start of epoch 3, step-32.pt)" in resumed
    summary = msgspec.json.decode((run_dir / "summary.json").read_bytes(), type=RunSummary)
    assert summary.status == "completed"
    assert summary.training is not None
    assert (summary.training.resumed_from_step, summary.training.global_step) == (2 * 16, 3 * 16)
    assert {a.actor: a.restarts for a in summary.actors if a.restarts} == {}
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text(encoding="utf-8").splitlines()]
    assert not [e for e in events if e["event"] == "child_failed"]


async def test_a_halted_runs_resume_counts_every_sessions_emergencies(tmp_path: Path) -> None:
    """The summary of a run resumed after an L4 halt counted only the resumed session's emergency signals (its own
    L2 on resuming), though the halt and the failed epochs before it are the reason the user resumed."""
    config, run_dir = tiny_config(tmp_path, epochs=5), tmp_path / "run"
    system = await start(config, run_dir, ["tolaria.epoch_budget_ms=0.001"])  # every epoch fails its budget
    halted = await system.wait()
    assert (halted.status, halted.exit_code) == ("failed", 1), halted.error
    assert "emergency halt" in str(halted.error)
    assert halted.growth is not None
    assert halted.growth.emergency_events >= 2  # L2 at the first failed epoch, L4 at the streak's halt
    system = await start(config, resume=run_dir)
    resumed = await system.wait()
    assert resumed.status == "completed", resumed.error
    signals = [
        json.loads(line)
        for line in (run_dir / "events.jsonl").read_text(encoding="utf-8").splitlines()
        if '"emergency_signal"' in line
    ]
    # The resume takes the halt's L4 back at L2: a restore from L4 (it said "previous 1"), and no new emergency (the
    # summary counted it as one, against README's "the level a resume takes back from its checkpoint is no event").
    [resuming] = [s for s in signals if s["reason"].startswith(RESTORED)]
    assert (resuming["previous"], resuming["msg_level"]) == (4, 2)
    assert resuming["reason"] == f"{RESTORED}: resumed after an L4 halt, conservative until clean epochs"
    assert resumed.growth is not None
    assert resumed.growth.emergency_events == len(signals) - 1 > halted.growth.emergency_events


async def test_a_finished_run_trained_further_ends_bitwise_equal_to_a_longer_run(tmp_path: Path) -> None:
    """The decisions on a finished run's last packets stay in flight (Kasmina's journal resends them): trained further
    with --resume, the run applies them at the same steps as a run that was this long from the start."""
    # Long enough to grow: the controller grows nothing it could not keep before the run ends (here, after the
    # end of its third epoch), and the 8-epoch run decides its last epochs as the 11-epoch run does (a NO_OP).
    config = tiny_config(tmp_path, epochs=8)
    extended, longer = tmp_path / "extended", tmp_path / "longer"
    assert (await (await start(config, extended)).wait()).status == "completed"
    await resume_in_process(config, extended, ("tolaria.epochs=11",))
    assert (await (await start(config, longer, ["tolaria.epochs=11"])).wait()).status == "completed"
    grafts, tensors = _final_weights(extended)
    reference_grafts, reference = _final_weights(longer)
    assert grafts == reference_grafts
    assert any(kind == "attach" for kind, _ in reference_grafts), "the run should grow to be a real test"
    assert tensors.keys() == reference.keys()
    assert all(torch.equal(tensors[k], reference[k]) for k in reference)


async def test_a_resume_after_the_store_marked_its_blueprints_failed_rebuilds_the_seeds_it_grew(
    tmp_path: Path,
) -> None:
    """Another run on the shared store marked the blueprints this run grew failed (its compile timed out): the
    resume's replay lost those seeds from the lifecycle (a fossilized slot seen as dormant), and every later graft
    into their slots failed. The replay rebuilds them as they were (from the catalogue); what the resumed run grows
    next is offered from the store's standings at its start, as for any run."""
    config = tiny_config(tmp_path, epochs=8)  # long enough to grow what it could keep
    run_dir = tmp_path / "run"
    assert (await (await start(config, run_dir)).wait()).status == "completed"
    found = load_latest(run_dir / "checkpoints")
    assert found is not None
    before = [(e.kind, e.step, e.seed_id) for e in found[0].graft_log]
    grown = {e.blueprint_id for e in found[0].graft_log if e.blueprint_id is not None}
    assert grown, "the run should grow to be a real test"
    # Each graft names the verified artifact its seed came from (the store's blob, named by its SHA-256).
    for attach in (e for e in found[0].graft_log if e.kind == "attach"):
        assert attach.artifact_sha256 is not None, attach
        assert (tmp_path / "urza" / "blobs" / attach.artifact_sha256).is_file()
    with sqlite3.connect(tmp_path / "urza" / "catalog.sqlite") as catalog:
        catalog.executemany(
            "INSERT OR REPLACE INTO blueprints VALUES (?, 'failed', 'compile took 2.0 s, over its 1.0 s', 0)",
            [(blueprint,) for blueprint in grown],
        )
    await resume_in_process(config, run_dir, ("tolaria.epochs=12", "tezzeret.compile_at_start=false"))
    found = load_latest(run_dir / "checkpoints")
    assert found is not None
    assert [(e.kind, e.step, e.seed_id) for e in found[0].graft_log][: len(before)] == before
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [e for e in events if e["event"] == "telemetry_event" and e.get("name") == "seed_op_failed"] == []
    assert any("the store marks it unavailable" in str(e.get("description")) for e in events)
    # The resumed session offers the controller what the run offered at its first start (it left the marked
    # blueprints out, and could decide differently from an uninterrupted run).
    first, resumed = [e["blueprints"] for e in events if e["event"] == "run_assembled"]
    assert resumed == first
    assert grown <= set(resumed)


async def test_ctrl_c_writes_a_checkpoint_and_resume_completes_the_run(tmp_path: Path) -> None:
    config = tiny_config(tmp_path, epochs=10)
    run_dir = tmp_path / "run"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "esper.run", str(config), "--run-dir", str(run_dir)]

    def interrupt_after_epoch_3() -> tuple[int, str, str]:
        with subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env) as first:
            assert first.stderr is not None
            # Wait on a fact: the console's line for the end of epoch 3 (after its checkpoint was handed over).
            read_until(first.stderr, "epoch   3/")
            first.send_signal(signal.SIGINT)
            out, err = first.communicate(timeout=60)
        return first.returncode, out, err

    returncode, out, err = await asyncio.to_thread(interrupt_after_epoch_3)
    assert returncode == 130, out
    assert "interrupted by SIGINT: finishing the step, writing a checkpoint" in err
    assert "interrupted by SIGINT in " in out.splitlines()[0]
    assert out.splitlines()[0].endswith("(exit 130)")
    assert out.splitlines()[-1] == f"continue it with: python -m esper.run {run_dir}/config.toml --resume {run_dir}"
    interrupted = msgspec.json.decode((run_dir / "summary.json").read_bytes(), type=RunSummary)
    assert interrupted.status == "interrupted"
    assert interrupted.signal == "SIGINT"
    assert interrupted.exit_code == 130
    assert interrupted.training is not None
    stopped_at = interrupted.training.global_step
    assert 0 < stopped_at < 10 * 16
    assert (run_dir / "checkpoints" / "tamiyo_state.json").is_file()

    summary = await resume_in_process(config, run_dir)
    assert summary.run_id == interrupted.run_id
    assert summary.training is not None
    assert summary.training.resumed_from_step == stopped_at
    assert summary.training.global_step == 10 * 16
    events = (run_dir / "events.jsonl").read_text(encoding="utf-8")
    # One replay of the journal: at start, up to the checkpoint's step; the trainer's restore then only resends.
    assert events.count('"kasmina_rebuilt"') == 1
    assert events.count('"kasmina_restore_ready"') == 1


# A long training step, so the stop a Ctrl-C starts has a step to finish.
# With HOST_BLOCK_AT set, the training step of that call never ends: a stop that waits for the step cannot finish.
_BLOCKING_HOST = _user_host(
    'if CALLS[0] == int(os.environ.get("HOST_BLOCK_AT", "0")): '
    'print("host: blocked", file=sys.stderr, flush=True); threading.Event().wait()'
)


def test_a_second_ctrl_c_exits_at_once_and_resume_continues_from_the_last_checkpoint(tmp_path: Path) -> None:
    (tmp_path / "blockinghost.py").write_text(_BLOCKING_HOST, encoding="utf-8")
    config = tiny_config(tmp_path, epochs=40)
    run_dir = tmp_path / "run"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(tmp_path)}
    settings = ["--set", 'tolaria.host_model="blockinghost:factory"', "--set", "tolaria.dataset_samples=200"]
    command = [sys.executable, "-m", "esper.run", str(config), "--run-dir", str(run_dir), *settings]
    blocking = {**env, "HOST_BLOCK_AT": "12"}  # a few epochs in, after their checkpoints
    with subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=blocking) as first:
        assert first.stderr is not None
        read_until(first.stderr, "host: blocked")
        first.send_signal(signal.SIGINT)
        # The first Ctrl-C was handled: the stop is under way, waiting for a step that never ends.
        read_until(first.stderr, "interrupted by SIGINT: finishing the step")
        first.send_signal(signal.SIGINT)
        out, err = first.communicate(timeout=60)
    assert first.returncode == 130, err[-2000:]
    assert "interrupted again: exiting at once; --resume continues from the last checkpoint" in err
    assert out == ""  # no summary: it did not wait for the stop
    assert not (run_dir / "summary.json").exists()
    assert '"run_finished"' not in (run_dir / "events.jsonl").read_text(encoding="utf-8")
    assert latest_good_step(run_dir / "checkpoints") is not None  # an epoch's checkpoint before the blocked step
    run_esper(config, env, "--resume", str(run_dir), *settings)
    summary = msgspec.json.decode((run_dir / "summary.json").read_bytes(), type=RunSummary)
    assert summary.status == "completed"


async def test_a_terminal_ctrl_c_stops_a_gnn_run_cleanly_and_it_resumes(tmp_path: Path) -> None:
    """A terminal's Ctrl-C signals the whole process group, the GNN worker included: the run still stops in order
    (Tamiyo decides on what is queued, through its worker), with no traceback and no failed worker, and resumes."""
    config = tiny_config(tmp_path, epochs=6)
    config.write_text(config.read_text(encoding="utf-8").replace("[tamiyo]\n", '[tamiyo]\npolicy = "gnn"\n'))
    run_dir = tmp_path / "run"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "esper.run", str(config), "--run-dir", str(run_dir)]

    def interrupted_from_the_terminal() -> tuple[int, str, str]:
        with subprocess.Popen(
            command, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, start_new_session=True
        ) as first:
            assert first.stderr is not None
            read_until(first.stderr, "epoch   2/")
            os.killpg(first.pid, signal.SIGINT)
            out, err = first.communicate(timeout=60)
        return first.returncode, out, err

    returncode, out, err = await asyncio.to_thread(interrupted_from_the_terminal)
    assert returncode == 130, out + err
    assert "Traceback" not in err
    events = (run_dir / "events.jsonl").read_text(encoding="utf-8")
    assert '"tamiyo_gnn_worker_failed"' not in events
    assert '"child_failed"' not in events
    assert (run_dir / "checkpoints" / "tamiyo_state.json").is_file()
    summary = await resume_in_process(config, run_dir)
    assert summary.training is not None
    assert summary.training.global_step == 6 * 16


def test_a_ctrl_c_while_the_actors_start_stops_them_before_their_lanes_close(tmp_path: Path) -> None:
    """Ctrl-C while the tree starts (Tamiyo waits for its GNN worker, seconds): the tree is stopped before the
    lanes close, so no actor fails on a closed lane and none is restarted."""
    config = tiny_config(tmp_path, epochs=6)
    config.write_text(config.read_text(encoding="utf-8").replace("[tamiyo]\n", '[tamiyo]\npolicy = "gnn"\n'))
    run_dir = tmp_path / "run"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    command = [
        *(sys.executable, "-m", "esper.run", str(config), "--run-dir", str(run_dir)),
        *("--set", "logging.console=true", "--set", "logging.console_level=info"),
    ]
    with subprocess.Popen(
        command, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, start_new_session=True
    ) as first:
        assert first.stderr is not None
        for line in first.stderr:
            if "kernel_catalog_update" in line:  # tezzeret is up: the tree is starting, Tamiyo's worker loading
                break
        os.killpg(first.pid, signal.SIGINT)
        out, err = first.communicate(timeout=60)
    assert first.returncode == 130, out + err
    events = (run_dir / "events.jsonl").read_text(encoding="utf-8")
    assert '"run_started"' not in events  # the signal came while the tree was starting
    # The events file still ends with run_finished, so `esper.tail --follow` stops (it followed forever).
    last = json.loads(events.splitlines()[-1])
    assert (last["event"], last["status"], last["started"]) == ("run_finished", "interrupted", False)
    assert '"child_failed"' not in events
    assert '"tolaria_restarted"' not in events


async def test_kill_9_then_resume_ends_bitwise_equal_to_an_uninterrupted_growing_run(tmp_path: Path) -> None:
    """The whole system (controller, lifecycle, trainer) after kill -9 mid-run: Tamiyo starts from its journaled
    state at the checkpoint, and the run ends with the same grafts at the same steps and bitwise-equal weights."""
    config = tiny_config(tmp_path, epochs=8)
    run_dir = tmp_path / "run"
    checkpoints = run_dir / "checkpoints"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "esper.run", str(config), "--run-dir", str(run_dir)]

    await asyncio.to_thread(kill_when_said, command, env, "epoch   5/")
    assert not (checkpoints / "tamiyo_state.json").exists()
    # The newest checkpoint whose plans in flight the lifecycle journal holds (the kill may land before Kasmina has
    # journaled the boundary of the newest one, on a loaded machine): the rule the resume itself follows.
    step = resume_point(checkpoints)
    assert step is not None
    expected = state_at(checkpoints / STATE_JOURNAL_FILENAME, step)
    assert expected is not None  # epochs 1-4 ended long before the kill

    summary = await resume_in_process(config, run_dir)
    assert summary.training is not None
    assert summary.training.resumed_from_step == step
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text(encoding="utf-8").splitlines()]
    assembled = [e for e in events if e.get("event") == "run_assembled"]
    assert assembled[-1]["tamiyo_state"] == "journal"
    assert assembled[-1]["tamiyo_state_step"] == expected.step
    # The lifecycle was rebuilt from the journal's planner views of the packets (no dormant slot's state in them).
    journal = (checkpoints / "kasmina_journal.jsonl").read_text(encoding="utf-8").splitlines()
    boundaries = [json.loads(line)["packet"] for line in journal if '"JournalBoundary"' in line]
    assert boundaries
    assert all(state["seed_id"] is not None for packet in boundaries for state in packet["seed_states"])
    behind = [e for e in events if e.get("event") == "tamiyo_state_behind"]
    assert bool(behind) == (expected.step != step)

    reference_dir = tmp_path / "uninterrupted"
    assert (await (await start(config, reference_dir)).wait()).status == "completed"
    assert_same_grown_weights(checkpoints, reference_dir / "checkpoints", steps=8 * 16)
    # The summary counts every decision of the run once: the killed session's up to the checkpoint (from its
    # tamiyo_decision lines), the resumed session's from there on.
    reference = msgspec.json.decode((reference_dir / "summary.json").read_bytes(), type=RunSummary)
    assert summary.growth is not None
    assert reference.growth is not None
    assert summary.growth.decisions == reference.growth.decisions
    assert summary.growth.no_op_reasons == reference.growth.no_op_reasons
    # The host-only baseline (the last epoch before the first germination) is the same epoch with the same figure.
    assert (summary.growth.baseline_epoch, summary.growth.baseline_val_accuracy) == (
        reference.growth.baseline_epoch,
        reference.growth.baseline_val_accuracy,
    )


async def test_a_run_that_died_before_its_first_checkpoint_resumes_from_step_0_with_its_controller(
    tmp_path: Path,
) -> None:
    """A run killed before its first checkpoint leaves the controller's journals and no checkpoint: --resume trains
    again from step 0 and the controller starts over with it, ending as an uninterrupted run. (Kasmina replayed the
    dead session's journal, stood at its last boundary, refused every new packet, and the run halted on timeouts.)"""
    config = tiny_config(tmp_path, epochs=8)  # long enough to grow what it could keep
    run_dir = tmp_path / "run"
    sets = ("tolaria.checkpoint_every_epochs=0",)
    assert (await (await start(config, run_dir, sets)).wait()).status == "completed"
    reference_grafts, reference = _final_weights(run_dir)
    assert any(kind == "attach" for kind, _ in reference_grafts), "the run should grow to be a real test"
    checkpoints = run_dir / "checkpoints"
    # What a kill -9 late in the run leaves when the only checkpoint comes at the end: the journals, nothing else.
    for path in (*checkpoints.glob("step-*.pt"), checkpoints / "manifest.json", checkpoints / "tamiyo_state.json"):
        path.unlink(missing_ok=True)
    (run_dir / "summary.json").unlink()
    assert (checkpoints / "kasmina_journal.jsonl").stat().st_size > 0
    summary = await resume_in_process(config, run_dir, sets)
    assert summary.growth is not None
    assert summary.growth.emergency_events == 0
    grafts, tensors = _final_weights(run_dir)
    assert grafts == reference_grafts
    assert tensors.keys() == reference.keys()
    assert all(torch.equal(tensors[k], reference[k]) for k in reference)
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [e["event"] for e in events if e["event"] in ("resume_starts_over", "plan_missed")] == ["resume_starts_over"]


def _final_weights(run_dir: Path) -> tuple[list[tuple[str, int]], dict[str, torch.Tensor]]:
    found = load_latest(run_dir / "checkpoints")
    assert found is not None
    state = found[0]
    tensors = {k: v for k, v in state.model.items() if isinstance(v, torch.Tensor)}
    return [(e.kind, e.step) for e in state.graft_log], tensors


async def test_a_run_ends_the_same_whatever_other_seeds_compiled_into_the_shared_store(tmp_path: Path) -> None:
    """Runs share the artifact store (config.toml's urza.root). A run of seed 1 after a run of seed 2 must grow
    the same seed modules, and so end with the same weights, as a run of seed 1 on a store only it has used."""
    config = tiny_config(tmp_path, epochs=11)  # seed 1 strains no slot enough before epoch 5: grows at 5 and 6
    finals = []
    for seed, name in ((1, "first"), (2, "other"), (1, "again")):
        # BP005's weights are random at birth (BP001, the cheapest pick, starts at zero whatever the seed). The first
        # run meets a cold store: tiny_config's far budgets keep a slow minute from failing its germination.
        overrides = [f"tolaria.seed={seed}", 'karn.include=["BP005"]']
        system = await start(config, tmp_path / name, overrides=overrides)
        summary = await system.wait()
        assert summary.status == "completed", summary.error
        finals.append(_final_weights(tmp_path / name))
    (log, want), _, (log_again, got) = finals
    assert any(kind == "attach" for kind, _ in log), "the run should grow to be a real test"
    assert log_again == log
    assert got.keys() == want.keys()
    for key, value in want.items():
        assert torch.equal(got[key], value), key


async def stop_after_step(
    config: Path, run_dir: Path, step: int, *, plans: int = 0, overrides: tuple[str, ...] = ()
) -> None:
    """Start a run and stop it right after ``step``, once Tolaria has received ``plans`` plans: the trainer waits
    after that step until the stop is asked for, so the stop's checkpoint is at exactly that step."""
    reached, release = threading.Event(), threading.Event()

    def hold(done: int, model: nn.Module, batch: object) -> None:
        if done == step:
            reached.set()
            release.wait(timeout=60)

    system = await start(config, run_dir, overrides, hooks=RunHooks(step_probe=hold))

    def plans_delivered() -> int:
        return next(s.handled for s in system.snapshot() if s.actor == "tolaria/control")

    assert await asyncio.to_thread(reached.wait, 60), f"the trainer never finished step {step}"
    async with asyncio.timeout(60):
        while plans_delivered() < plans:  # noqa: ASYNC110  # one plan per packet; the count is a fact
            await asyncio.sleep(0)
    stopping = asyncio.create_task(system.stop())
    await asyncio.sleep(0)  # stop() asks the trainer to stop before its first await
    release.set()
    stopped = await stopping
    assert stopped.training is not None
    assert stopped.training.global_step == step


async def test_a_stop_with_many_packets_in_the_pipeline_plans_them_all_and_resumes_as_an_uninterrupted_run(
    tmp_path: Path,
) -> None:
    """A packet every step: at the stop several packets wait in the pipeline, each for the decision on the one before.
    The drain went one round, so Kasmina never planned the rest; the resumed trainer waited for their plans, missed
    them, raised an emergency and ended differently."""
    config = tiny_config(tmp_path, epochs=5)
    # The GNN decides slower than the trainer steps, so packets queue up in Kasmina.
    every_step = ("tolaria.state_every_steps=1", 'tamiyo.policy="gnn"')
    reference_dir, run_dir = tmp_path / "uninterrupted", tmp_path / "run"
    assert (await (await start(config, reference_dir, every_step)).wait()).status == "completed"
    await stop_after_step(config, run_dir, 2 * 16 + 7, overrides=every_step)
    resumed = await (await start(config, overrides=every_step, resume=run_dir)).wait()
    assert resumed.status == "completed", resumed.error
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text(encoding="utf-8").splitlines()]
    assert not [e for e in events if e["event"] in ("plan_missed", "pipeline_drain_incomplete")]
    grafts, tensors = _final_weights(run_dir)
    reference_grafts, reference_tensors = _final_weights(reference_dir)
    assert grafts == reference_grafts
    assert all(torch.equal(tensors[k], reference_tensors[k]) for k in reference_tensors)


async def test_a_stop_in_the_first_steps_before_any_packet_resumes_as_an_uninterrupted_run(tmp_path: Path) -> None:
    """Stopped at step 2, before the first packet: the checkpoint needs its (empty) Kasmina journal beside it, or
    neither --resume nor a new run could use the directory."""
    config = tiny_config(tmp_path, epochs=2)
    reference_dir, run_dir = tmp_path / "uninterrupted", tmp_path / "run"
    assert (await (await start(config, reference_dir)).wait()).status == "completed"
    await stop_after_step(config, run_dir, 2)
    assert (run_dir / "checkpoints" / "kasmina_journal.jsonl").read_bytes() == b""
    resumed = await (await start(config, resume=run_dir)).wait()
    assert resumed.status == "completed", resumed.error
    # Nothing was decided before the checkpoint, so the controller starting fresh is not behind it.
    assert '"tamiyo_state_behind"' not in (run_dir / "events.jsonl").read_text(encoding="utf-8")
    grafts, tensors = _final_weights(run_dir)
    reference_grafts, reference_tensors = _final_weights(reference_dir)
    assert grafts == reference_grafts
    assert all(torch.equal(tensors[k], reference_tensors[k]) for k in reference_tensors)


async def test_a_stop_with_an_attach_in_flight_resumes_as_an_uninterrupted_run(tmp_path: Path) -> None:
    """Stopped between a germination's decision and its effect step, the run has the attach plan in flight, whose
    handle named a module prepared in the stopped process. The resumed run must take the plan Kasmina prepares and
    sends again, not a stale one (the attach failed, the seed was culled, the run diverged)."""
    config = tiny_config(tmp_path, epochs=8)  # long enough to grow what it could keep
    reference_dir, run_dir = tmp_path / "uninterrupted", tmp_path / "run"
    reference = await (await start(config, reference_dir)).wait()
    assert reference.status == "completed"
    reference_grafts, reference_tensors = _final_weights(reference_dir)
    attach = next(step for kind, step in reference_grafts if kind == "attach")
    decided = attach - 4  # tiny_config: command_lag_steps = 4, a packet every 4 steps
    await stop_after_step(config, run_dir, attach - 1, plans=decided // 4)
    found = load_latest(run_dir / "checkpoints")
    assert found is not None
    # The checkpoint names the plans in flight (decided by its step, due after it); their bodies are Kasmina's to send.
    expected = found[0].counters.get("expected_plans")
    assert isinstance(expected, str)
    in_flight = [tuple(pair) for pair in msgspec.json.decode(expected, type=list[tuple[int, int]])]
    assert (decided, attach) in in_flight, "the attach should be in flight"

    resumed = await (await start(config, resume=run_dir)).wait()
    assert resumed.status == "completed", resumed.error
    events = (run_dir / "events.jsonl").read_text(encoding="utf-8")
    assert "attach_failed" not in events
    grafts, tensors = _final_weights(run_dir)
    assert grafts == reference_grafts
    assert all(torch.equal(tensors[k], reference_tensors[k]) for k in reference_tensors)


async def test_nissa_serves_the_decision_and_kernel_fetch_slos_of_a_real_run(tmp_path: Path) -> None:
    """The 45 ms decision and 10 ms kernel-fetch objectives had no samples: nothing reported either latency."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = tiny_config(tmp_path, epochs=7)  # long enough to grow what it could keep
    system = await start(config, tmp_path / "run", [f"nissa.prometheus_port={port}"])
    training = system._training  # the trainer's watch: read the endpoint after training, before the run stops
    assert training is not None
    async with asyncio.timeout(60):
        figures = await training.wait_finished()
    _, _, body = await http_get(port, "/metrics/summary")
    served = json.loads(body)
    slos = {slo["name"]: slo for slo in served["slos"]}
    summary = await system.wait()
    assert served["run_id"] == summary.run_id != ""  # the endpoint names its run (the composition root passes it)
    assert summary.growth is not None
    assert slos["tamiyo_decision_latency"]["samples"] == summary.growth.decisions > 0
    assert figures.seed_parameters > 0 or summary.growth.seeds, "the run should germinate to fetch a kernel"
    assert slos["kernel_fetch_latency"]["samples"] >= 1


async def test_a_journal_that_ends_before_the_checkpoint_resumes_from_one_it_covers(tmp_path: Path) -> None:
    """A kill -9 (or a machine crash: the journal is not fsynced) can land after a checkpoint was written and before
    Kasmina journaled the boundaries whose plans it waits for. The resume stalled on plans nobody could send, missed
    them and went on in an emergency; it now continues from the newest checkpoint the journal covers, exactly."""
    more = tmp_path / "more"
    more.mkdir()
    first, longer = tiny_config(tmp_path, epochs=8), tiny_config(more, epochs=11)
    run_dir, reference_dir = tmp_path / "run", tmp_path / "uninterrupted"
    assert (await (await start(first, run_dir)).wait()).status == "completed"
    checkpoints = run_dir / "checkpoints"
    steps = [e.global_step for e in read_manifest(checkpoints)]
    previous = steps[-2]
    journal = checkpoints / JOURNAL_FILENAME
    kept = [entry for entry in read_journal(journal) if entry_step(entry) <= previous]
    journal.write_bytes(b"".join(msgspec.json.encode(entry) + b"\n" for entry in kept))

    resumed = await (await start(longer, resume=run_dir)).wait()
    assert resumed.status == "completed", resumed.error
    assert resumed.training is not None
    assert resumed.training.resumed_from_step == previous
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text(encoding="utf-8").splitlines()]
    [behind] = [e for e in events if e["event"] == "resume_point_behind"]
    assert (behind["newest_checkpoint"], behind["resume_from"]) == (steps[-1], previous)
    assert behind["detail"] == "the newest checkpoint's plans in flight were decided past the lifecycle journal's end"
    assert not [e for e in events if e["event"] in {"plan_missed", "emergency_signal"}]
    reference = await (await start(longer, reference_dir)).wait()
    assert reference.status == "completed"
    grafts, tensors = _final_weights(run_dir)
    reference_grafts, reference_tensors = _final_weights(reference_dir)
    assert grafts == reference_grafts
    assert all(torch.equal(tensors[k], reference_tensors[k]) for k in reference_tensors)


async def test_a_newest_checkpoint_that_passes_its_checksum_but_does_not_load_is_named_as_the_reason(
    tmp_path: Path,
) -> None:
    """The resume passed over a newest checkpoint that did not decode (its manifest entry matched its bytes) and said
    its plans in flight were past the lifecycle journal's end, which the journal contradicted."""
    run_dir = tmp_path / "run"
    assert (await (await start(tiny_config(tmp_path, epochs=3), run_dir)).wait()).status == "completed"
    checkpoints = run_dir / "checkpoints"
    manifest = json.loads((checkpoints / "manifest.json").read_text(encoding="utf-8"))
    newest = manifest["checkpoints"][-1]
    garbage = b"not a checkpoint"
    (checkpoints / newest["file"]).write_bytes(garbage)
    newest |= {"sha256": hashlib.sha256(garbage).hexdigest(), "size_bytes": len(garbage)}
    (checkpoints / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    assert resume_point(checkpoints) == manifest["checkpoints"][-2]["global_step"]
    with structlog.testing.capture_logs() as logs:
        resume_point(checkpoints)
    [behind] = [e for e in logs if e["event"] == "resume_point_behind"]
    assert behind["detail"] == f"the newest checkpoint ({newest['file']}) did not load"


async def test_a_resume_refuses_checkpoints_another_run_wrote(tmp_path: Path) -> None:
    """Another run's checkpoints (and journal) copied into a run directory were resumed without a word: its weights
    went on under this run's history and figures."""
    config = tiny_config(tmp_path, epochs=2)
    mine, other = tmp_path / "mine", tmp_path / "other"
    for directory in (mine, other):
        assert (await (await start(config, directory)).wait()).status == "completed"
    shutil.rmtree(mine / "checkpoints")
    shutil.copytree(other / "checkpoints", mine / "checkpoints")
    with pytest.raises(ConfigError, match=r"step-32\.pt was written by run '[^']+', not by this directory's run"):
        await start(tiny_config(tmp_path, epochs=3), resume=mine)
    # Already trained as far as asked: the notice said so (exit 0) of another run's checkpoints.
    with pytest.raises(ConfigError, match=r"step-32\.pt was written by run '[^']+', not by this directory's run"):
        await start(tiny_config(tmp_path, epochs=2), resume=mine)
    # A damaged newest copy let the trainer fall back to another run's older checkpoint.
    (mine / "checkpoints" / "step-32.pt").write_bytes(b"damaged")
    with pytest.raises(ConfigError, match=r"step-16\.pt was written by run '[^']+', not by this directory's run"):
        await start(tiny_config(tmp_path, epochs=3), resume=mine)


async def test_a_journal_that_covers_no_checkpoint_starts_the_resume_over(tmp_path: Path) -> None:
    """A kill -9 right after the first checkpoint, before Kasmina journaled its boundary: no checkpoint can be
    continued exactly, so the run starts over (deterministically) instead of stalling into another run (the resume
    used to fail: "no usable checkpoint")."""
    more = tmp_path / "more"
    more.mkdir()
    first, longer = tiny_config(tmp_path, epochs=2), tiny_config(more, epochs=4)
    run_dir, reference_dir = tmp_path / "run", tmp_path / "uninterrupted"
    assert (await (await start(first, run_dir)).wait()).status == "completed"
    (run_dir / "checkpoints" / JOURNAL_FILENAME).write_bytes(b"")
    resumed = await (await start(longer, resume=run_dir)).wait()
    assert resumed.status == "completed", resumed.error
    assert resumed.training is not None
    assert resumed.training.resumed_from_step is None
    events = (run_dir / "events.jsonl").read_text(encoding="utf-8")
    assert '"resume_point_uncovered"' in events
    assert '"plan_missed"' not in events
    assert (await (await start(longer, reference_dir)).wait()).status == "completed"
    grafts, tensors = _final_weights(run_dir)
    reference_grafts, reference_tensors = _final_weights(reference_dir)
    assert grafts == reference_grafts
    assert all(torch.equal(tensors[k], reference_tensors[k]) for k in reference_tensors)


async def test_a_run_killed_between_its_first_checkpoint_and_its_manifest_starts_over(tmp_path: Path) -> None:
    """A kill -9 after the first checkpoint's file was written but before the manifest listing it: --resume refused
    the unverifiable file and a new run refused the directory, each sending the user to the other. The resume now
    starts the run over, as one that died before its first checkpoint, and ends as the uninterrupted run."""
    more = tmp_path / "more"
    more.mkdir()
    first, longer = tiny_config(tmp_path, epochs=1), tiny_config(more, epochs=3)
    run_dir, reference_dir = tmp_path / "run", tmp_path / "uninterrupted"
    assert (await (await start(first, run_dir)).wait()).status == "completed"
    # What the kill leaves: the first step file, no manifest (and no summary: the run was not over).
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("step-*.pt")) == ["step-16.pt"]
    (run_dir / "checkpoints" / "manifest.json").unlink()
    (run_dir / "summary.json").unlink()
    resumed = await (await start(longer, resume=run_dir)).wait()
    assert resumed.status == "completed", resumed.error
    assert resumed.training is not None
    assert resumed.training.resumed_from_step is None
    assert '"resume_starts_over"' in (run_dir / "events.jsonl").read_text(encoding="utf-8")
    assert (await (await start(longer, reference_dir)).wait()).status == "completed"
    grafts, tensors = _final_weights(run_dir)
    reference_grafts, reference_tensors = _final_weights(reference_dir)
    assert grafts == reference_grafts
    assert all(torch.equal(tensors[k], reference_tensors[k]) for k in reference_tensors)


@pytest.mark.parametrize(
    ("actor", "crash_at"),
    [("kasmina", 3 * 16 + 4), ("tamiyo", 3 * 16 + 4), ("kasmina", 8), ("tamiyo", 8)],
    ids=["kasmina mid-run", "tamiyo mid-run", "kasmina in the first epoch", "tamiyo in the first epoch"],
)
async def test_a_planner_or_controller_crash_on_a_packet_restarts_and_ends_as_an_uninterrupted_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, actor: str, crash_at: int
) -> None:
    """Kasmina (or Tamiyo) fails on a state packet: its restart restarts the trainer, whose stop checkpoint waited for
    that packet's plan, which nobody could send again (a 12 s stall, a missed plan, an L2 emergency, another run).
    The trainer now continues from the newest state the planner's journal covers, and the run ends bitwise equal."""
    config = tiny_config(tmp_path, epochs=6)
    reference = await (await start(config, tmp_path / "uninterrupted")).wait()
    assert reference.status == "completed"
    # Mid-run: a mid-epoch packet of epoch 4. In the first epoch nothing saved is covered: training starts over.
    owner = KasminaActor if actor == "kasmina" else TamiyoActor
    original = owner.handle
    fired: list[int] = []

    async def failing(self: Any, msg: Any) -> Any:  # stands in for either actor's handle
        if not fired and isinstance(msg, SystemStatePacket) and msg.global_step == crash_at:
            fired.append(msg.global_step)
            raise RuntimeError(f"injected {actor} fault")
        return await original(self, msg)

    monkeypatch.setattr(owner, "handle", failing)
    run_dir = tmp_path / "crashed"
    summary = await (await start(config, run_dir)).wait()
    assert fired == [crash_at]
    assert summary.status == "completed", summary.error
    assert {a.actor: a.restarts for a in summary.actors}[actor] == 1
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text(encoding="utf-8").splitlines()]
    assert not [e for e in events if e["event"] in {"plan_missed", "emergency_signal"}]
    assert [e["step"] for e in events if e["event"] == "restore_point_skipped"], "the stop checkpoint is skipped"
    grafts, tensors = _final_weights(run_dir)
    reference_grafts, reference_tensors = _final_weights(tmp_path / "uninterrupted")
    assert grafts == reference_grafts
    assert all(torch.equal(tensors[k], reference_tensors[k]) for k in reference_tensors)


async def test_nissa_counts_the_restarts_the_supervisor_reports(tmp_path: Path) -> None:
    """Only Kasmina's and Tolaria's events reached Nissa: a restart (the supervisor's event), and the breakers of
    Tamiyo and Oona, never showed on /metrics or /healthz. Every actor's events now go through the run's sink."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = tiny_config(tmp_path, epochs=8)
    hooks = RunHooks(crash_tamiyo_at_step=40)
    system = await start(config, tmp_path / "run", [f"nissa.prometheus_port={port}"], hooks=hooks)
    training = system._training
    assert training is not None
    async with asyncio.timeout(60):
        await training.wait_finished()
    _, _, body = await http_get(port, "/metrics")
    summary = await system.wait()
    restarts = {a.actor: a.restarts for a in summary.actors}
    assert restarts["tamiyo"] >= 1
    assert b'esper_weatherlight_restarts_total{child="tamiyo"}' in body
