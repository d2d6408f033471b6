"""Tolaria's step loop on the calling thread: determinism, resume, checkpoints, emergencies, user models, SeedOps."""

from __future__ import annotations

import json
import math
import re
import resource
import time
from typing import TYPE_CHECKING

import msgspec
import pytest
import structlog.testing
import torch
from torch import nn

from actors.kasmina.admission import blend_problem
from actors.tolaria.boundary import BoundaryApplier
from actors.tolaria.build import build_optimizer, build_trainee, check_config, load_data
from actors.tolaria.capture_pool import CapturePool
from actors.tolaria.checkpoint_codec import checkpoint_counters, decode_state
from actors.tolaria.checkpoint_verify import latest_good_step, load_latest
from actors.tolaria.checkpoints import MANIFEST, CheckpointError, read_manifest
from actors.tolaria.epoch_end import ModelOutputError
from actors.tolaria.host_model import TolariaConfigError, build_host
from actors.tolaria.loop import TrainingLoop
from actors.tolaria.loop_exchange import PlanExchange
from actors.tolaria.loop_options import LoopOptions, LoopResult
from actors.tolaria.loop_state import LoopState
from actors.tolaria.plans import PlanInbox
from actors.tolaria.snapshots import SnapshotStore
from esper.nn.blueprints import SlotShape
from esper.nn.data import TensorPair
from schemas.boundary import SeedOp
from schemas.config import BreakerConfig, TolariaConfig
from schemas.control import BlendConfig
from schemas.domain_enums import BlendMode
from schemas.enums import EmergencyLevel, SeedLifecycleStage
from schemas.runtime import EmergencySignal
from tests.tolaria_factories import Hidden

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from actors.tolaria.snapshots import TrainState
    from esper.nn.data import DataSplits
    from schemas.base import Message, Record
    from schemas.boundary import BoundaryApplied
    from schemas.state import SystemStatePacket

# real training runs: a slow, loaded machine may need more than the default 30 s hang guard.
pytestmark = pytest.mark.timeout(90)


CPU = torch.device("cpu")
TINY = {"epochs": 3, "dataset_samples": 1000, "batch_size": 50, "state_every_steps": 4}


class Box:
    """An Outbox that keeps everything, by kind and in arrival order (the loop runs on the test's thread)."""

    def __init__(self) -> None:
        self.packets: list[SystemStatePacket] = []
        self.receipts: list[BoundaryApplied] = []
        self.events: list[Message | Record] = []
        self.arrived: list[object] = []

    def packet(self, packet: SystemStatePacket) -> None:
        self.packets.append(packet)
        self.arrived.append(packet)

    def applied(self, receipt: BoundaryApplied) -> None:
        self.receipts.append(receipt)
        self.arrived.append(receipt)

    def event(self, event: Message | Record) -> None:
        self.events.append(event)
        self.arrived.append(event)


@pytest.fixture(scope="module")
def data() -> DataSplits:
    return load_data(TolariaConfig(**TINY))  # type: ignore[arg-type]


def config(**overrides: object) -> TolariaConfig:
    return TolariaConfig(**{**TINY, **overrides})  # type: ignore[arg-type]


def make_loop(
    cfg: TolariaConfig,
    data: DataSplits,
    directory: Path | None = None,
    *,
    resume: bool = False,
    hook: Callable[[int, TensorPair], TensorPair] | None = None,
    inbox: PlanInbox | None = None,
    box: Box | None = None,
) -> TrainingLoop:
    return TrainingLoop(
        cfg,
        LoopOptions(run_id="t", checkpoint_dir=directory, resume=resume, resumed_run=resume, batch_hook=hook),
        inbox=inbox or PlanInbox(),
        outbox=box or Box(),
        snapshots=SnapshotStore(int(cfg.snapshot_memory_cap_mb * 2**20)),
        data=data,
    )


def weights(loop: TrainingLoop) -> dict[str, torch.Tensor]:
    return {k: v for k, v in loop.trainee.model.state_dict().items() if isinstance(v, torch.Tensor)}


def assert_bitwise(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs"


def test_two_runs_of_one_config_end_with_bitwise_identical_weights(data: DataSplits) -> None:
    first = make_loop(config(), data)
    second = make_loop(config(), data)
    assert first.run().status == "completed"
    assert second.run().status == "completed"
    assert_bitwise(weights(first), weights(second))


def test_a_stopped_run_resumed_from_its_checkpoint_ends_bitwise_equal(data: DataSplits, tmp_path: Path) -> None:
    straight = make_loop(config(), data, tmp_path / "a")
    straight.run()
    inbox = PlanInbox()

    def stop_mid_epoch(attempt: int, batch: TensorPair) -> TensorPair:
        if attempt == 27:  # in epoch 3 of 3 (13 batches an epoch)
            inbox.request_stop("test")
        return batch

    first = make_loop(config(), data, tmp_path / "b", hook=stop_mid_epoch, inbox=inbox)
    assert first.run().status == "stopped"
    assert read_manifest(tmp_path / "b")[-1].global_step == 28
    resumed = make_loop(config(), data, tmp_path / "b", resume=True)
    result = resumed.run()
    assert result.status == "completed"
    assert result.figures.resumed_from_step == 28
    assert_bitwise(weights(straight), weights(resumed))


def test_a_resume_stopped_before_its_first_epoch_end_reports_the_checkpoints_epoch_figures(
    data: DataSplits, tmp_path: Path
) -> None:
    """The summary's last-epoch figures came only from an epoch ended in this session: a resume stopped at once
    reported them all as None (with the growth figures of the same summary filled in)."""
    inbox = PlanInbox()

    def stop_in_epoch_3(attempt: int, batch: TensorPair) -> TensorPair:
        if attempt == 27:
            inbox.request_stop("test")
        return batch

    first = make_loop(config(), data, tmp_path, hook=stop_in_epoch_3, inbox=inbox).run()
    assert (first.status, first.figures.completed) == ("stopped", False)
    assert first.figures.val_accuracy is not None
    again = PlanInbox()

    def stop_at_once(attempt: int, batch: TensorPair) -> TensorPair:
        again.request_stop("test")
        return batch

    resumed = make_loop(config(), data, tmp_path, resume=True, hook=stop_at_once, inbox=again).run()
    assert resumed.status == "stopped"
    assert resumed.figures.epochs == first.figures.epochs
    mine = (resumed.figures.train_loss, resumed.figures.train_accuracy, resumed.figures.val_loss)
    assert mine == (first.figures.train_loss, first.figures.train_accuracy, first.figures.val_loss)
    assert resumed.figures.val_accuracy == first.figures.val_accuracy
    assert make_loop(config(), data).run().figures.completed


def _epoch_figures(result: LoopResult) -> tuple[float | None, ...]:
    f = result.figures
    return (f.epochs, f.train_loss, f.train_accuracy, f.val_loss, f.val_accuracy)


def test_a_resume_from_an_epoch_end_checkpoint_with_no_step_to_train_reports_that_epochs_figures(
    data: DataSplits, tmp_path: Path
) -> None:
    """An epoch end's state was captured before that epoch's figures were set: a run killed in epoch 3, resumed with
    tolaria.epochs=2 (nothing left to train), reported epoch 1's figures (after epoch 1: None)."""
    straight = make_loop(config(epochs=2), data).run()

    def crash_in_epoch_3(attempt: int, batch: TensorPair) -> TensorPair:
        if attempt == 27:
            raise RuntimeError("killed")
        return batch

    with pytest.raises(RuntimeError, match="killed"):
        make_loop(config(), data, tmp_path, hook=crash_in_epoch_3).run()
    assert read_manifest(tmp_path)[-1].global_step == 26
    resumed = make_loop(config(epochs=2), data, tmp_path, resume=True).run()
    assert (resumed.status, resumed.figures.resumed_from_step) == ("completed", 26)
    assert straight.figures.val_accuracy is not None
    assert _epoch_figures(resumed) == _epoch_figures(straight)


def test_a_restart_after_the_test_split_failed_reports_the_last_epochs_figures(data: DataSplits) -> None:
    """A trainer that failed scoring the test split restarts from the last epoch end's fast snapshot, with no step to
    train: it reported the epoch before's figures."""
    straight = make_loop(config(), data).run()
    snapshots = SnapshotStore(int(config().snapshot_memory_cap_mb * 2**20))

    def incarnation() -> TrainingLoop:
        return TrainingLoop(
            config(),
            LoopOptions(run_id="t", checkpoint_dir=None, resume=True),
            inbox=PlanInbox(),
            outbox=Box(),
            snapshots=snapshots,
            data=data,
        )

    failing = incarnation()

    def fail_on_test(split: TensorPair) -> tuple[float, float]:
        raise RuntimeError("user fault in the test split")

    failing.evaluate = fail_on_test  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match="test split"):
        failing.run()
    restarted = incarnation().run()
    assert restarted.status == "completed"
    assert straight.figures.val_accuracy is not None
    assert _epoch_figures(restarted) == _epoch_figures(straight)
    assert restarted.figures.test_accuracy == straight.figures.test_accuracy


def test_a_resumed_runs_stalls_count_the_sessions_before_it(data: DataSplits, tmp_path: Path) -> None:
    """The summary's stalls counted only the last session's, while events.jsonl had every session's."""
    cfg = config(decision_deadline_ms=1.0)
    inbox = PlanInbox()

    def late_plan_then_stop(attempt: int, batch: TensorPair) -> TensorPair:
        if attempt == 2:
            inbox.expect(2, 4)  # a decision whose plan never comes: the loop stalls at step 4, then gives it up
        if attempt == 27:
            inbox.request_stop("test")
        return batch

    first = make_loop(cfg, data, tmp_path, hook=late_plan_then_stop, inbox=inbox).run()
    assert first.figures.stalls == 1
    resumed = make_loop(cfg, data, tmp_path, resume=True).run()
    assert resumed.status == "completed"
    assert resumed.figures.stalls == 1
    assert resumed.figures.stall_ms == first.figures.stall_ms


def test_a_channels_last_model_resumed_mid_run_ends_bitwise_equal(data: DataSplits, tmp_path: Path) -> None:
    """The optimizer's moments came back contiguous beside channels_last weights, and the fused kernel, walking both
    through the weights' strides, updated the wrong elements from the resume on (about a step's worth of error)."""
    cfg = config(host_model="tests.tolaria_factories:conv2d_net")
    straight = make_loop(cfg, data, tmp_path / "a")
    straight.run()
    conv = straight.trainee.model.get_submodule("body.0")
    assert isinstance(conv, nn.Conv2d)
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    inbox = PlanInbox()

    def stop_mid_epoch(attempt: int, batch: TensorPair) -> TensorPair:
        if attempt == 27:
            inbox.request_stop("test")
        return batch

    assert make_loop(cfg, data, tmp_path / "b", hook=stop_mid_epoch, inbox=inbox).run().status == "stopped"
    resumed = make_loop(cfg, data, tmp_path / "b", resume=True)
    assert resumed.run().status == "completed"
    assert_bitwise(weights(straight), weights(resumed))


def test_a_run_stopped_between_packets_resumes_with_the_same_packets_and_epoch_figures(
    data: DataSplits, tmp_path: Path
) -> None:
    straight_box = Box()
    straight = make_loop(config(), data, tmp_path / "a", box=straight_box)
    straight_result = straight.run()
    inbox = PlanInbox()

    def stop_between_packets(attempt: int, batch: TensorPair) -> TensorPair:
        if attempt == 29:  # step 30: two steps into an interval, four into epoch 3
            inbox.request_stop("test")
        return batch

    make_loop(config(), data, tmp_path / "b", hook=stop_between_packets, inbox=inbox).run()
    assert read_manifest(tmp_path / "b")[-1].global_step == 30
    resumed_box = Box()
    resumed_result = make_loop(config(), data, tmp_path / "b", resume=True, box=resumed_box).run()

    def figures(box: Box) -> list[tuple[int, float, float, float | None, float | None]]:
        return [
            (p.global_step, p.training_loss, p.training_accuracy, p.epoch_training_loss, p.epoch_training_accuracy)
            for p in box.packets
            if p.global_step > 30
        ]

    # The interval and the epoch the stop cut through report all their steps, to the bit, as if never stopped.
    assert figures(resumed_box) == figures(straight_box)
    assert figures(straight_box)[-1][3] is not None  # the epoch-end packet's whole-epoch figures are compared
    assert resumed_result.figures.train_loss == straight_result.figures.train_loss
    assert resumed_result.figures.train_accuracy == straight_result.figures.train_accuracy


def test_a_stop_on_an_epochs_last_step_ends_the_epoch_first_and_resumes_with_the_same_packets(
    data: DataSplits, tmp_path: Path
) -> None:
    """A stop that came with an epoch's last step left before the epoch end; the resume then ran that epoch end with
    no gradients (they are not in a checkpoint), so its packet's gradient norms and the controller's decision on it
    differed from an uninterrupted run's."""
    straight_box = Box()
    make_loop(config(), data, tmp_path / "a", box=straight_box).run()
    inbox = PlanInbox()

    def stop_on_the_last_step(attempt: int, batch: TensorPair) -> TensorPair:
        if attempt == 25:  # step 26: the last of epoch 2 (13 batches an epoch)
            inbox.request_stop("test")
        return batch

    first_box = Box()
    assert (
        make_loop(config(), data, tmp_path / "b", hook=stop_on_the_last_step, inbox=inbox, box=first_box).run().status
        == "stopped"
    )
    assert read_manifest(tmp_path / "b")[-1].global_step == 26
    resumed_box = Box()
    make_loop(config(), data, tmp_path / "b", resume=True, box=resumed_box).run()

    def norms(packets: list[SystemStatePacket]) -> list[tuple[int, float, float | None, dict[str, float]]]:
        return [
            (p.global_step, p.epoch_progress, p.gradient_norm, p.layer_gradient_norms)
            for p in packets
            if p.global_step >= 26
        ]

    stopped = norms(first_box.packets) + norms(resumed_box.packets)
    assert stopped == norms(straight_box.packets)
    assert stopped[0][:2] == (26, 1.0)  # the epoch end's packet
    assert stopped[0][3]  # with its layers' norms


def test_the_epoch_end_packet_carries_its_own_epochs_hook_time_and_emergency_level(data: DataSplits) -> None:
    box = Box()
    loop = make_loop(config(epoch_hook_budget_ms=1e-6), data, box=box)
    loop.run()
    ends = [p for p in box.packets if p.epoch_progress == 1.0]
    assert [p.hook_latency_ms for p in ends] == pytest.approx(loop.hook_ms_history)
    assert ends[0].hook_latency_ms > 0.0
    # Every epoch end blows the budget: the level each packet carries is the one its own epoch end reached, up to
    # the halt of the last (the log line of the same epoch end says the same); the third opened the breaker and
    # rolled back (L3), and the halt came at its epoch trained again.
    assert [p.emergency_level for p in ends] == [
        EmergencyLevel.L2_ELEVATED,
        EmergencyLevel.L2_ELEVATED,
        EmergencyLevel.L3_CONSERVATIVE,
        EmergencyLevel.L4_HALT,
    ]
    # Each signal says where the run was (the epoch end's step and the epochs completed): a resumed run that trains
    # those steps again makes the same moves, and the summary counts each once.
    signals = [e for e in box.events if isinstance(e, EmergencySignal)]
    assert [(s.step, s.epoch, s.level) for s in signals] == [
        (ends[0].global_step, 1, EmergencyLevel.L2_ELEVATED),
        (ends[2].global_step, 3, EmergencyLevel.L3_CONSERVATIVE),
        (ends[3].global_step, 3, EmergencyLevel.L4_HALT),
    ]


def _resident_bytes() -> int:
    with open("/proc/self/statm", encoding="ascii") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize()


def _capture_growth(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The resident memory each pooled epoch-end capture adds, in bytes (what its first touch of buffers maps, in
    pages of any size: a count of faults said nothing with huge pages)."""
    growth: list[int] = []
    unpooled = LoopState.capture

    def measuring(state: LoopState, *, keep_modules: bool, pooled: bool = True) -> TrainState:
        before = _resident_bytes()
        captured = unpooled(state, keep_modules=keep_modules, pooled=pooled)
        if pooled:
            growth.append(_resident_bytes() - before)
        return captured

    monkeypatch.setattr(LoopState, "capture", measuring)
    return growth


_BALLAST_BYTES = 10_000_000 * 4  # tests.tolaria_factories.ballast_mlp's unused buffer


def test_no_epoch_end_capture_pays_the_first_touch_of_its_pooled_buffers(monkeypatch: pytest.MonkeyPatch) -> None:
    """A capture's buffers are mapped by their first write: the pool reserved them (allocated, never written) after
    the first step, so the first two epoch ends of any process (one per buffer set) paid the page faults of a copy of
    the whole state inside the hook time. On a 10.7M-parameter model that put them over the 50 ms budget, and a
    resume (the streak of 2 restored plus the new process's warm-up) halted where the uninterrupted run recovered.
    Measured in resident bytes, not milliseconds: the machine's load does not move them."""
    cfg = config(host_model="tests.tolaria_factories:ballast_mlp", epochs=3, snapshot_memory_cap_mb=256.0)
    loop = make_loop(cfg, load_data(cfg))
    growth = _capture_growth(monkeypatch)
    assert loop.run().status == "completed"
    assert len(growth) == 3  # one capture per epoch end serves the snapshot and the checkpoint
    # Without the reservation's write each of the first two mapped about the whole ballast.
    assert max(growth) < _BALLAST_BYTES // 10, growth


def test_a_layout_change_at_an_epochs_last_step_reserves_before_the_epoch_end(monkeypatch: pytest.MonkeyPatch) -> None:
    """A graft applied at an epoch's last step (its plan due there) left the pool without buffers for the new layout,
    and no step followed to reserve them: that epoch end's capture paid their first touch in its hook time."""
    cfg = config(host_model="tests.tolaria_factories:ballast_mlp", epochs=3, snapshot_memory_cap_mb=256.0)
    loop = make_loop(cfg, load_data(cfg))
    growth = _capture_growth(monkeypatch)
    last_step_of_epoch_2 = 2 * 13
    due = PlanInbox.has_due
    applied = PlanExchange.apply_due

    def due_there(inbox: PlanInbox, step: int) -> bool:
        return step == last_step_of_epoch_2 or due(inbox, step)

    def grafting(exchange: PlanExchange, *, stoppable: bool) -> None:
        applied(exchange, stoppable=stoppable)
        if loop._s.pos.global_step == last_step_of_epoch_2:  # what a graft's new layout does to the pool
            loop._s.capture_pool = CapturePool()
            loop._s.planned_capture.forget()
            loop._s.pool_reserved = False

    monkeypatch.setattr(PlanInbox, "has_due", due_there)
    monkeypatch.setattr(PlanExchange, "apply_due", grafting)
    assert loop.run().status == "completed"
    assert len(growth) == 3
    assert max(growth) < _BALLAST_BYTES // 10, growth


def test_the_epoch_end_packet_carries_the_whole_epochs_timings_and_throughput(data: DataSplits) -> None:
    """metrics.csv's per-epoch timing columns came from the epoch's last interval (4 of its steps): five slow steps
    earlier in the epoch did not show, and slow last steps read as five times the epoch's mean."""
    box = Box()
    make_loop(config(), data, box=box).run()
    first_epoch = [p for p in box.packets if p.epoch == 0]
    *intervals, end = first_epoch
    assert end.epoch_progress == 1.0
    assert end.epoch_timings is not None
    assert end.epoch_samples_per_s is not None
    assert end.epoch_samples_per_s > 0.0
    # The epoch's mean step time is the step-weighted mean of its intervals' (each packet's own interval).
    steps = [
        p.global_step - before for p, before in zip(first_epoch, [0] + [q.global_step for q in intervals], strict=True)
    ]
    weighted = sum(p.timings.step_ms * n for p, n in zip(first_epoch, steps, strict=True)) / end.global_step
    assert end.epoch_timings.step_ms == pytest.approx(weighted)
    assert end.epoch_timings.forward_ms < end.epoch_timings.step_ms
    assert [p.epoch_timings for p in intervals] == [None] * len(intervals)


def test_a_corrupted_checkpoint_falls_back_to_the_previous_one(data: DataSplits, tmp_path: Path) -> None:
    make_loop(config(), data, tmp_path).run()
    entries = read_manifest(tmp_path)
    assert [e.global_step for e in entries] == [13, 26, 39]
    newest = tmp_path / entries[-1].file
    newest.write_bytes(newest.read_bytes()[:100])  # truncated
    found = load_latest(tmp_path)
    assert found is not None
    assert found[2].global_step == 26
    assert "graft_log" in (tmp_path / MANIFEST).read_text()


def test_a_checkpoint_corrupted_without_a_size_change_is_caught_by_its_checksum(
    data: DataSplits, tmp_path: Path
) -> None:
    """One flipped bit in the newest checkpoint's tensor data: its size is the manifest's and it still decodes (to
    the wrong weights), so only the SHA-256 tells; the previous checkpoint is used, with a warning."""
    make_loop(config(), data, tmp_path).run()
    entries = read_manifest(tmp_path)
    newest = tmp_path / entries[-1].file
    raw = bytearray(newest.read_bytes())
    raw[-5] ^= 0x40
    newest.write_bytes(bytes(raw))
    assert newest.stat().st_size == entries[-1].size_bytes
    assert decode_state(bytes(raw))[0].global_step == 39, "the flip must be one that only the checksum catches"
    with structlog.testing.capture_logs() as logs:
        found = load_latest(tmp_path)
        assert latest_good_step(tmp_path) == 26
    assert found is not None
    assert (found[0].global_step, found[2].global_step) == (26, 26)
    corrupt = [entry for entry in logs if entry["event"] == "checkpoint_corrupt"]
    assert [(entry["file"], entry["log_level"]) for entry in corrupt] == [(str(newest), "warning")] * 2
    assert all(entry["error"].startswith("sha256 ") for entry in corrupt)
    assert all(entry["error"].endswith(f"does not match the manifest's {entries[-1].sha256[:12]}") for entry in corrupt)


@pytest.mark.parametrize("name", ["../../victim.txt", "/tmp/victim.txt", "step-13.pt.bak", "/dev/zero"])
def test_a_manifest_entry_naming_anything_but_its_own_checkpoint_file_is_refused(
    data: DataSplits, tmp_path: Path, name: str
) -> None:
    """Rotation deletes, and a resume reads, what the manifest names: an entry must be step-<its step>.pt here."""
    run = tmp_path / "run"
    make_loop(config(), data, run).run()
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me", encoding="utf-8")
    manifest = json.loads((run / MANIFEST).read_text())
    manifest["checkpoints"][0]["file"] = name
    (run / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError) as raised:
        read_manifest(run)
    text = str(raised.value)
    assert text.startswith(f"{run / MANIFEST}: entry {name!r}: a checkpoint's file is step-<global_step>.pt")
    assert "\n" not in text
    with pytest.raises(CheckpointError):
        load_latest(run)  # a resume is refused (at start, in one line: tests/test_resume_check.py)
    # The writer neither reads nor rotates out what the refused manifest names: it starts a manifest of its own.
    assert make_loop(config(), data, run).run().status == "completed"
    assert victim.read_text(encoding="utf-8") == "keep me"
    assert [e.file for e in read_manifest(run)] == ["step-13.pt", "step-26.pt", "step-39.pt"]


def test_a_checkpoint_holding_another_step_than_its_entry_falls_back_to_the_previous_one(
    data: DataSplits, tmp_path: Path
) -> None:
    make_loop(config(), data, tmp_path).run()
    entries = read_manifest(tmp_path)
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    # The newest entry points at the step-26 file's bytes under the step-39 name: checksum and size match.
    (tmp_path / "step-39.pt").write_bytes((tmp_path / "step-26.pt").read_bytes())
    manifest["checkpoints"][-1] |= {"sha256": entries[-2].sha256, "size_bytes": entries[-2].size_bytes}
    (tmp_path / MANIFEST).write_text(json.dumps(manifest))
    found = load_latest(tmp_path)
    assert found is not None
    assert (found[0].global_step, found[2].global_step) == (26, 26)
    # Nothing of a step at or before at_most: none, not an error (a restart then looks no further back).
    assert load_latest(tmp_path, at_most=12) is None
    assert load_latest(tmp_path, at_most=13) is not None


def test_a_nan_batch_skips_the_step_and_three_roll_back_to_the_fast_snapshot(data: DataSplits) -> None:
    # What the model and the optimizer hold before the first poisoned step (attempt 20) and after it (seen at 21).
    seen: dict[int, dict[str, torch.Tensor]] = {}

    def poison(attempt: int, batch: TensorPair) -> TensorPair:
        if attempt in (20, 21):
            optimizer = loop.trainee.optimizer
            moments = {
                f"{i}.{k}": v
                for i, p in enumerate(optimizer.param_groups[0]["params"])
                for k, v in optimizer.state[p].items()
            }
            seen[attempt] = {k: v.clone() for k, v in (weights(loop) | moments).items()}
        if attempt in (20, 21, 22):
            return TensorPair(x=torch.full_like(batch.x, math.nan), y=batch.y)
        return batch

    box = Box()
    loop = make_loop(config(), data, hook=poison, box=box)
    result = loop.run()
    assert seen.keys() == {20, 21}
    assert any(k.endswith(".exp_avg") for k in seen[20]), "the optimizer's moments are compared too"
    assert_bitwise(seen[21], seen[20])  # the skipped step changed no weight, buffer or moment
    assert result.status == "completed"
    assert result.figures.skipped_steps == 3
    assert result.figures.rollbacks == 1
    assert [tier for tier, _ in loop.restore_ms_history] == ["fast"]
    levels = [e.level for e in box.events if isinstance(e, EmergencySignal)]
    assert EmergencyLevel.L3_CONSERVATIVE in levels
    assert all(torch.isfinite(w).all() for w in weights(loop).values())


def test_an_epoch_replayed_after_a_mid_epoch_rollback_is_timed_from_the_rollback(
    data: DataSplits, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The replayed epoch's epoch_ms counted from the epoch's first start: the time before the rollback could trip
    epoch_budget. The clock jumps 1000 s in epoch 2 before its rollback; the budget is 500 s."""
    offset = [0.0]
    real = time.perf_counter
    monkeypatch.setattr(time, "perf_counter", lambda: real() + offset[0])

    def slow_then_nan(attempt: int, batch: TensorPair) -> TensorPair:
        if attempt == 14:
            offset[0] += 1000.0
        if attempt in (18, 19, 20):  # epoch 2 of 3 (13 batches an epoch)
            return TensorPair(x=torch.full_like(batch.x, math.nan), y=batch.y)
        return batch

    loop = make_loop(config(epoch_budget_ms=500_000.0), data, hook=slow_then_nan)
    result = loop.run()
    assert result.status == "completed"
    assert [tier for tier, _ in loop.restore_ms_history] == ["fast"]
    assert loop.policy.failed_epochs == 0
    assert loop.epoch_train_s_history[1] < 500.0


def test_a_decision_missed_before_a_mid_epoch_rollback_does_not_fail_the_replayed_epoch(data: DataSplits) -> None:
    """The missed decisions of the epoch rolled away were still counted at the replayed epoch's end (decision_timeout);
    the rollback drops that plan, and the replay misses none."""
    inbox = PlanInbox()

    def missed_then_nan(attempt: int, batch: TensorPair) -> TensorPair:
        if attempt == 14:
            inbox.expect(15, 16)  # never comes: missed at step 16, before the rollback
        if attempt in (18, 19, 20):
            return TensorPair(x=torch.full_like(batch.x, math.nan), y=batch.y)
        return batch

    with structlog.testing.capture_logs() as logs:
        result = make_loop(config(decision_deadline_ms=1.0), data, hook=missed_then_nan, inbox=inbox).run()
    assert [entry["decided_on_steps"] for entry in logs if entry["event"] == "plan_missed"] == [[15]]
    assert result.status == "completed"
    assert result.figures.rollbacks == 1
    assert not [entry for entry in logs if entry["event"] == "epoch_failed"]


def test_the_loss_delta_after_a_rollback_is_against_the_restored_states_validation(
    data: DataSplits, tmp_path: Path
) -> None:
    """A rollback kept the last validation loss of the epoch rolled away: the replayed epoch's loss_delta was against a
    loss the restored model never had. Here the rollback goes back to the epoch-2 checkpoint from epoch 4, and the
    replayed epoch 3's delta is against epoch 2's validation (it was about 0: epoch 3's against itself)."""

    def nan_in_epoch_4(attempt: int, batch: TensorPair) -> TensorPair:
        if attempt in (41, 42, 43):  # epoch 4 of 4 (13 batches an epoch)
            return TensorPair(x=torch.full_like(batch.x, math.nan), y=batch.y)
        return batch

    box = Box()
    cfg = config(epochs=4, snapshot_memory_cap_mb=0.0, checkpoint_every_epochs=2)
    loop = make_loop(cfg, data, tmp_path, hook=nan_in_epoch_4, box=box)
    assert loop.run().status == "completed"
    assert [tier for tier, _ in loop.restore_ms_history] == ["full"]
    ends = [(p.epoch, p.validation_loss, p.loss_delta) for p in box.packets if p.epoch_progress == 1.0]
    assert [epoch for epoch, _, _ in ends] == [0, 1, 2, 2, 3]
    val_2, (_, val_3, delta_3) = ends[1][1], ends[3]
    assert val_2 is not None
    assert val_3 is not None
    assert delta_3 is not None
    assert delta_3 == pytest.approx(val_3 - val_2)
    assert abs(delta_3) > 1e-6


def test_an_epoch_budget_breach_is_l2_and_refuses_new_grafts(data: DataSplits) -> None:
    box = Box()
    loop = make_loop(config(epochs=2, epoch_budget_ms=1e-6, failed_epochs_to_halt=10), data, box=box)
    result = loop.run()
    assert result.status == "completed"
    assert loop.policy.level >= EmergencyLevel.L2_ELEVATED
    assert not loop.policy.ladder.growth_allowed
    assert box.packets[-1].emergency_level >= EmergencyLevel.L2_ELEVATED


def test_an_open_breaker_is_l3_and_rolls_back(data: DataSplits) -> None:
    cfg = config(epoch_hook_budget_ms=1e-6, failed_epochs_to_halt=10, breaker=BreakerConfig(failure_threshold=2))
    box = Box()
    loop = make_loop(cfg, data, box=box)
    result = loop.run()
    assert result.figures.rollbacks >= 1
    levels = [e.level for e in box.events if isinstance(e, EmergencySignal)]
    assert EmergencyLevel.L3_CONSERVATIVE in levels


def test_epochs_failed_on_an_open_breaker_are_no_rollback_loop(data: DataSplits) -> None:
    """An epoch failed only because the breaker is still open rolls back to the same snapshot by design, until the
    breaker half-opens: the rollback-loop guard halted such a run (it had recovered) after three. Failed epochs end
    by their streak."""
    cfg = config(epoch_hook_budget_ms=1e-6, failed_epochs_to_halt=8, breaker=BreakerConfig(failure_threshold=2))
    result = make_loop(cfg, data).run()
    assert result.status == "halted"
    assert result.halt_reason is not None
    assert result.halt_reason.startswith("8 failed epochs in a row")
    assert result.figures.rollbacks >= 4


def test_epochs_that_keep_failing_climb_l2_l3_l4_with_the_default_ladder(data: DataSplits, tmp_path: Path) -> None:
    """With the defaults (a breaker opening after 3 failures, a halt after 3 failed epochs in a row) the streak's halt
    was checked first: the ladder went from L2 to L4 and never rolled back at L3. The epoch that opens the breaker
    rolls back; the next failed one halts."""
    box = Box()
    cfg = config(epochs=6, epoch_budget_ms=1e-6)
    assert (cfg.breaker.failure_threshold, cfg.failed_epochs_to_halt) == (3, 3)  # the defaults under test
    loop = make_loop(cfg, data, tmp_path, box=box)
    result = loop.run()
    assert result.status == "halted"
    moves = [(e.previous, e.level, e.reason) for e in box.events if isinstance(e, EmergencySignal)]
    assert moves == [
        (EmergencyLevel.L1_NOTICE, EmergencyLevel.L2_ELEVATED, "failed epoch: epoch_budget"),
        (EmergencyLevel.L2_ELEVATED, EmergencyLevel.L3_CONSERVATIVE, "breaker_open after epoch_budget"),
        (EmergencyLevel.L3_CONSERVATIVE, EmergencyLevel.L4_HALT, "failed_epochs_streak: 4 failed epochs in a row"),
    ]
    assert result.figures.rollbacks == 1
    # The halt names the budget failure that opened the breaker, its figure and its setting (it said only
    # "(the last: breaker_open)").
    assert result.halt_reason is not None
    assert re.fullmatch(
        r"4 failed epochs in a row \(the last: breaker_open; the latest before it: epoch_budget, "
        r"epoch_ms \d+\.\d over tolaria\.epoch_budget_ms 1e-06\)",
        result.halt_reason,
    ), result.halt_reason
    # The rollback went back to epoch 2's end and the halt came at the end of epoch 3 trained again.
    ends = [p.epoch for p in box.packets if p.epoch_progress == 1.0]
    assert ends == [0, 1, 2, 2]


def test_failed_epochs_in_a_row_halt_at_l4_with_a_checkpoint(data: DataSplits, tmp_path: Path) -> None:
    loop = make_loop(config(epoch_budget_ms=1e-6, failed_epochs_to_halt=2), data, tmp_path)
    result: LoopResult = loop.run()
    assert result.status == "halted"
    assert result.figures.halted
    # The halt's reason is the streak (it said only "epoch_budget", the last epoch's failure), with the last
    # epoch's figure and the setting it broke.
    assert result.halt_reason is not None
    assert re.fullmatch(
        r"2 failed epochs in a row \(the last: epoch_budget, epoch_ms \d+\.\d over tolaria\.epoch_budget_ms 1e-06\)",
        result.halt_reason,
    ), result.halt_reason
    assert loop.policy.level is EmergencyLevel.L4_HALT
    last = read_manifest(tmp_path)[-1]
    assert last.global_step == result.figures.global_step
    # The halt's checkpoint keeps that reason: a resume that finishes the run killed before training_finished was
    # logged reads it there (the L4 signal words it otherwise).
    assert checkpoint_counters((tmp_path / last.file).read_bytes())["halt_reason"] == result.halt_reason


def test_an_epoch_over_its_hook_budget_names_its_hook_time_the_budget_and_the_setting(data: DataSplits) -> None:
    """The epoch_failed line and the halt's reason said only "hook_budget": not by how much, nor what to raise."""
    cfg = config(epoch_hook_budget_ms=0.001, failed_epochs_to_halt=2)
    loop = make_loop(cfg, data)
    with structlog.testing.capture_logs() as logs:
        result = loop.run()
    assert result.status == "halted"
    # The figure is the budgeted part: the epoch end without its state copy (tests/test_tolaria_hook_copy.py).
    budgeted = [h - c for h, c in zip(loop.hook_ms_history, loop.capture_ms_history, strict=True)]
    hooks = [f"hook_ms {ms:.1f} over tolaria.epoch_hook_budget_ms 0.001" for ms in budgeted]
    failed = [(e["epoch"], e["reason"], e["action"], e["detail"]) for e in logs if e["event"] == "epoch_failed"]
    assert failed == [(1, "hook_budget", "continue", hooks[0]), (2, "hook_budget", "halt", hooks[1])]
    assert result.halt_reason == f"2 failed epochs in a row (the last: hook_budget, {hooks[1]})"


def test_a_full_rollback_that_misses_its_deadline_halts_at_l4_with_a_checkpoint(
    data: DataSplits, tmp_path: Path
) -> None:
    """A full-tier rollback slower than tolaria.rollback_full_deadline_s escalated to L4, but the loop trained on to
    "completed" (exit 0) at L4. The rollback is done (only slow): the run halts on the restored state and its halt
    checkpoint holds it."""

    def nan_in_epoch_2(attempt: int, batch: TensorPair) -> TensorPair:
        if attempt in (15, 16, 17):  # epoch 2 of 3 (13 batches an epoch): the epoch-1 checkpoint exists
            return TensorPair(x=torch.full_like(batch.x, math.nan), y=batch.y)
        return batch

    cfg = config(snapshot_memory_cap_mb=0.0, rollback_full_deadline_s=1e-6)
    loop = make_loop(cfg, data, tmp_path, hook=nan_in_epoch_2)
    result = loop.run()
    assert [tier for tier, _ in loop.restore_ms_history] == ["full"]
    assert result.status == "halted"
    assert result.figures.halted
    assert not result.figures.completed
    assert result.halt_reason is not None
    assert result.halt_reason.startswith("deadline_exceeded: full restore took ")
    assert loop.policy.level is EmergencyLevel.L4_HALT
    assert (result.figures.rollbacks, result.figures.global_step) == (1, 13)
    assert read_manifest(tmp_path)[-1].global_step == 13
    assert all(torch.isfinite(w).all() for w in weights(loop).values())


def test_a_full_rollback_reads_the_checkpoints_submitted_before_it_even_when_the_writer_is_behind(
    data: DataSplits, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The full tier goes back to the newest checkpoint the loop has submitted, written or not: a writer thread still
    behind (a loaded machine) made a rollback in the next epoch "impossible" and halted the run at L4. The writer is
    held until the rollback waits for it (or, without that wait, until the rollback has read the disk)."""
    import threading

    from actors.tolaria.checkpoints import CheckpointWriter

    release = threading.Event()
    real_write = CheckpointWriter._write
    real_wait = CheckpointWriter.wait_written
    real_load = load_latest

    def held_write(self: CheckpointWriter, state: object) -> None:
        assert release.wait(timeout=60), "nothing released the checkpoint writer"
        real_write(self, state)  # type: ignore[arg-type]  # the TrainState submitted

    def releasing_wait(self: CheckpointWriter) -> None:
        release.set()
        real_wait(self)

    def releasing_load(directory: Path) -> object:
        found = real_load(directory)
        release.set()
        return found

    monkeypatch.setattr(CheckpointWriter, "_write", held_write)
    monkeypatch.setattr(CheckpointWriter, "wait_written", releasing_wait)
    monkeypatch.setattr("actors.tolaria.loop_restore.load_latest", releasing_load)

    def nan_in_epoch_2(attempt: int, batch: TensorPair) -> TensorPair:
        if attempt in (15, 16, 17):  # epoch 2 of 3 (13 batches an epoch), after the epoch-1 checkpoint's submit
            return TensorPair(x=torch.full_like(batch.x, math.nan), y=batch.y)
        return batch

    loop = make_loop(config(snapshot_memory_cap_mb=0.0), data, tmp_path, hook=nan_in_epoch_2)
    result = loop.run()
    assert [tier for tier, _ in loop.restore_ms_history] == ["full"]
    assert result.status == "completed", result.halt_reason
    assert result.figures.rollbacks == 1
    assert read_manifest(tmp_path)[0].global_step == 13


def test_a_full_restore_at_start_that_misses_its_deadline_halts_before_training(
    data: DataSplits, tmp_path: Path
) -> None:
    """A resume whose checkpoint load missed the deadline escalated to L4 and trained on, to "completed"."""
    inbox = PlanInbox()

    def stop_in_epoch_2(attempt: int, batch: TensorPair) -> TensorPair:
        if attempt == 20:
            inbox.request_stop("test")
        return batch

    assert make_loop(config(), data, tmp_path, hook=stop_in_epoch_2, inbox=inbox).run().status == "stopped"
    resumed = make_loop(config(rollback_full_deadline_s=1e-6), data, tmp_path, resume=True)
    result = resumed.run()
    assert [tier for tier, _ in resumed.restore_ms_history] == ["full"]
    assert result.status == "halted"
    assert result.halt_reason is not None
    assert result.halt_reason.startswith("deadline_exceeded: ")
    assert resumed.policy.level is EmergencyLevel.L4_HALT
    assert result.figures.global_step == 21  # not one step trained
    assert resumed.epoch_train_s_history == []
    # The halt's checkpoint is the restored state, now at L4: a resume from it continues at L2.
    last = read_manifest(tmp_path)[-1]
    assert last.global_step == 21
    assert checkpoint_counters((tmp_path / last.file).read_bytes())["emergency_level"] == int(EmergencyLevel.L4_HALT)


def test_an_exception_in_training_is_not_hidden_by_a_failed_checkpoint_write(data: DataSplits, tmp_path: Path) -> None:
    """The writer's close() in a finally re-raised its pending write error, hiding the exception that ended training;
    now that one propagates and the write's failure is logged."""
    (tmp_path / "blocker").write_text("a file where the checkpoint directory's parent should be")

    def boom_in_epoch_2(attempt: int, batch: TensorPair) -> TensorPair:
        if attempt == 16:  # the epoch-1 checkpoint's write has been submitted (and fails)
            raise RuntimeError("boom")
        return batch

    loop = make_loop(config(), data, tmp_path / "blocker" / "checkpoints", hook=boom_in_epoch_2)
    with structlog.testing.capture_logs() as logs, pytest.raises(RuntimeError, match=r"^boom$"):
        loop.run()
    [failed] = [entry for entry in logs if entry["event"] == "checkpoint_write_failed_too"]
    assert failed["raising"] == "RuntimeError: boom"
    assert failed["error"].startswith(("NotADirectoryError", "FileExistsError"))


def test_an_epoch_end_checkpoint_holds_the_emergency_state_its_verdict_left(data: DataSplits, tmp_path: Path) -> None:
    """The epoch end's capture comes before its verdict: the checkpoint held the level, failure streak and clean dwell
    from before, so a run resumed from it judged that epoch's end again (a failed epoch's streak short by one, a clean
    epoch's tick lost, the step down later than in the uninterrupted run)."""
    make_loop(config(epoch_budget_ms=1e-6, failed_epochs_to_halt=5), data, tmp_path).run()
    [first] = [info for info in read_manifest(tmp_path) if info.epoch == 1]  # written at epoch 1's end
    counters = checkpoint_counters((tmp_path / first.file).read_bytes())
    assert (counters["failed_epochs"], counters["failed_streak"]) == (1, 1)
    assert counters["emergency_level"] == int(EmergencyLevel.L2_ELEVATED)


def test_a_user_model_from_module_factory_trains(data: DataSplits) -> None:
    cfg = config(host_model="tests.tolaria_factories:tiny_mlp", epochs=1)
    native = load_data(cfg)
    loop = make_loop(cfg, native)
    assert loop.run().status == "completed"
    assert list(loop.trainee.slots) == ["1"]


@pytest.mark.parametrize("optimizer", ["adamw", "adam", "sgd"])
def test_the_optimizer_runs_fused_kernels_on_the_cpu(optimizer: str) -> None:
    cfg = config(optimizer=optimizer)
    model = build_host(cfg, (40,), 10)
    built = build_optimizer(cfg, model, torch.device("cpu"))
    assert built.defaults["fused"] is True
    assert not built.defaults["foreach"]
    loss = torch.nn.functional.cross_entropy(model(torch.randn(4, 40)), torch.tensor([0, 1, 2, 3]))
    loss.backward()  # type: ignore[no-untyped-call]  # torch leaves Tensor.backward unannotated
    before = [p.detach().clone() for p in model.parameters()]
    built.step()  # torch checks on the first step that fused kernels exist for the parameters' device
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True))


def test_a_slotless_user_model_grows_where_kasmina_slot_targets_say() -> None:
    cfg = config(host_model="tests.tolaria_factories:slotless_mlp", epochs=1)
    trainee = build_trainee(cfg, load_data(cfg), ("1", "3"), torch.device("cpu"))
    assert list(trainee.slots) == ["1", "3"]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("tests.tolaria_factories:not_a_module", "returned dict, not an nn.Module"),
        ("tests.tolaria_factories:broken", "the factory raised RuntimeError: out of widgets"),
        ("tests.no_such_module:f", "cannot import 'tests.no_such_module'"),
        ("tests.tolaria_factories:frozen_mlp", "the model has no trainable parameter (none requires grad)"),
        ("tests.tolaria_factories:exiting", "the factory called exit(3)"),
        # User code, not a Ctrl-C (this runs on a worker thread): it ended the run with exit 130 and no word.
        ("tests.tolaria_factories:interrupting_factory", "the factory raised KeyboardInterrupt"),
    ],
)
def test_a_bad_user_model_is_a_one_line_config_error(spec: str, message: str) -> None:
    with pytest.raises(TolariaConfigError) as info:
        build_host(config(host_model=spec), (40,), 10)
    text = str(info.value)
    assert text.startswith(f"tolaria.host_model = {spec!r}: ")
    assert message in text
    assert "\n" not in text


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("aux_tuple_in_training", "AttributeError: 'tuple' object has no attribute 'float'"),
        ("detached_output", "RuntimeError: element 0 of tensors does not require grad"),
        (
            "flat_batchnorm",
            "cannot train on a batch of 1 (the last batch of an epoch; tolaria.drop_last = true skips it): ValueError",
        ),
        # User code, not a Ctrl-C: it ended the run as interrupted (exit 130, no word), or stopped a notebook's loop.
        ("interrupt_in_training", "KeyboardInterrupt: boom from user forward (at "),
    ],
)
def test_a_model_that_cannot_train_is_refused_before_the_first_step(data: DataSplits, spec: str, message: str) -> None:
    """It passed the eval-mode check, failed at the first step and in each of the trainer's restarts (exit 1, and a
    run directory the corrected model could not reuse)."""
    # Batches one short of the training set: the last batch of each epoch holds a single sample.
    cfg = config(host_model=f"tests.tolaria_factories:{spec}", batch_size=data.train.num_samples - 1)
    with pytest.raises(TolariaConfigError) as info:
        check_config(cfg)  # the start's checks, before the run directory is claimed
    assert str(info.value).startswith(f"tolaria.host_model = {cfg.host_model!r}: the model cannot train on a batch of")
    assert message in str(info.value)
    assert "\n" not in str(info.value)
    if spec == "flat_batchnorm":  # as the error says
        dropped = msgspec.structs.replace(cfg, drop_last=True)
        build_trainee(dropped, check_config(dropped), (), torch.device("cpu"))


@pytest.mark.parametrize(
    ("host", "shape", "classes", "message"),
    [
        ("cnn1d", (3,), 4, "the npz data set (3 features a sample, 4 classes): CNN1dHost: need length >= 4"),
    ],
)
def test_a_built_in_host_the_data_does_not_suit_is_a_one_line_config_error(
    host: str, shape: tuple[int, ...], classes: int, message: str
) -> None:
    with pytest.raises(TolariaConfigError) as info:
        build_host(config(host_model=host, dataset="npz", npz_path="x.npz"), shape, classes)
    assert str(info.value).startswith(f"tolaria.host_model = {host!r}: cannot be built for {message}")


def test_a_slot_declared_a_sequence_grows_seeds_over_its_features_not_its_steps(data: DataSplits) -> None:
    """[batch, seq, hidden] activations (a GRU, an embedding, a transformer block) read as conv1d with the sequence
    length as channels, so seeds mixed along the sequence; ``slot_kinds`` declares them."""
    plain = build_trainee(config(host_model="tests.tolaria_factories:undeclared_sequence_model"), data, (), CPU)
    assert plain.slot_shapes["mid"] == SlotShape("conv1d", 40)
    cfg = config(host_model="tests.tolaria_factories:sequence_model", initial_seeds=("mid=BP007",), epochs=1)
    trainee = build_trainee(cfg, data, (), CPU)
    assert trainee.slot_shapes["mid"] == SlotShape("sequence", 16)
    assert trainee.slots["mid"].seed_id is not None  # BP007 fits a sequence slot, not a conv1d one
    assert make_loop(cfg, data).run().status == "completed"
    with pytest.raises(TolariaConfigError, match=r"slot_kinds names 'head', which is not a slot target$"):
        build_trainee(config(host_model="tests.tolaria_factories:misdeclared_sequence_model"), data, (), CPU)


def test_a_channel_blend_kasmina_admits_on_a_sequence_slot_weighs_its_features(data: DataSplits) -> None:
    """Kasmina admits one CHANNEL entry per feature (dim 2 of [batch, seq, features]); the slot weighed dim 1, the
    sequence, and refused the vector at every forward."""
    trainee = build_trainee(config(host_model="tests.tolaria_factories:sequence_model"), data, (), CPU)
    shape = trainee.slot_shapes["mid"]
    blend = BlendConfig(mode=BlendMode.CHANNEL, channel_alpha=(1.0,) * 4 + (0.0,) * 12)
    assert blend_problem(blend, shape) is None
    torch.manual_seed(0)
    seed = nn.Linear(16, 16)
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    seed.register_forward_hook(lambda _m, i, out: seen.append((i[0], out)))
    op = SeedOp(kind="attach", slot="mid", seed_id="a", stage=SeedLifecycleStage.PROBATIONARY, blend=blend)
    assert BoundaryApplier(trainee).apply(op, step=0, take_module=lambda _: seed).applied
    outputs: list[torch.Tensor] = []
    trainee.model.get_submodule("mid").register_forward_hook(lambda _m, _i, out: outputs.append(out))
    trainee.model(data.train.x[:2])
    ((h, s),), (out,) = seen, outputs
    assert out.shape == (2, 40, 16)  # [batch, seq, features]: 16 channel entries, 40 steps
    assert torch.equal(out[..., :4], s[..., :4])
    assert torch.equal(out[..., 4:], h[..., 4:])


@pytest.mark.parametrize(
    ("factory", "target", "why"),
    [
        ("uncalled_slot_model", "spare", "the model's forward never calls it"),
        # The probe's eval mode is said: a layer called only when self.training seemed called, and was refused.
        ("training_only_slot_model", "spare", "the model's forward never calls it (probed in eval mode, model.eval())"),
        ("dict_slot_model", "inner", "it returns a dict, not a tensor"),
        ("rank1_slot_model", "inner", "it returns a tensor of rank 1 (a slot takes [batch, features]"),
        ("float64_slot_model", "inner", "it returns torch.float64 activations, and seeds are built in torch.float32"),
        (
            "shared_activation_model",
            "act",
            "the forward calls it more than once, with outputs of shape [batch, 16] and [batch, 8], and its slot's seed"
            " takes one shape",
        ),
        (
            "unrebuildable_tuple_slot_model",
            "enc",
            "it returns a _Pair, which a live slot cannot rebuild with the seed's output as its first element"
            " (TypeError: ",
        ),
    ],
)
def test_a_slot_target_whose_output_cannot_hold_a_seed_is_a_one_line_config_error(
    factory: str, target: str, why: str
) -> None:
    host = f"tests.tolaria_factories:{factory}"
    cfg = config(host_model=host, epochs=1)
    with pytest.raises(TolariaConfigError) as info:
        build_trainee(cfg, load_data(cfg), (), torch.device("cpu"))
    expected = f"tolaria.host_model = {host!r}: slot target {target!r} cannot hold a seed: {why}"
    assert str(info.value).startswith(expected)


def test_a_slot_target_called_twice_with_one_shape_holds_a_seed(data: DataSplits) -> None:
    """Only outputs of two shapes are refused: a module the forward reuses at one width takes a seed as any other."""
    cfg = config(host_model="tests.tolaria_factories:twice_called_slot_model", initial_seeds=("act=BP002",))
    trainee = build_trainee(cfg, check_config(cfg), (), CPU)
    assert trainee.slot_shapes["act"] == SlotShape("flat", 16)
    assert trainee.slots["act"].seed_id is not None
    assert trainee.model(data.train.x[:2]).shape == (2, 10)


def test_a_slot_target_returning_a_namedtuple_keeps_it_once_a_seed_is_live(data: DataSplits) -> None:
    """The slot rebuilt the output as a plain tuple, so a model reading ``out.hidden`` failed at every step once a
    seed was grafted (and in every restart after)."""
    cfg = config(host_model="tests.tolaria_factories:namedtuple_slot_model", initial_seeds=("enc=BP002",))
    trainee = build_trainee(cfg, check_config(cfg), (), CPU)
    assert trainee.slots["enc"].seed_id is not None
    out = trainee.model.get_submodule("enc")(data.train.x[:2])
    assert type(out) is Hidden
    assert trainee.model(data.train.x[:2]).shape == (2, 10)


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        ("empty_slot_name_mlp", "the model's slot_targets: expected non-empty module names, got ['']"),
        (
            "string_slot_targets_mlp",
            "the model's slot_targets = '1': expected a list or tuple of module names, got a str",
        ),
        (
            "set_slot_targets_mlp",
            "the model's slot_targets: expected a list or tuple of module names, got a set",
        ),
    ],
)
def test_a_user_models_malformed_slot_targets_are_a_one_line_config_error(factory: str, message: str) -> None:
    """Each names the config key the model came from; a set was ignored, and the run then asked for a slot_targets
    attribute the model had."""
    host = f"tests.tolaria_factories:{factory}"
    cfg = config(host_model=host, epochs=1)
    with pytest.raises(TolariaConfigError) as info:
        build_trainee(cfg, load_data(cfg), (), torch.device("cpu"))
    assert str(info.value) == f"tolaria.host_model = {host!r}: {message}"


def test_a_model_that_stays_nan_halts_after_three_rollbacks_to_one_state(data: DataSplits) -> None:
    """A model that turned NaN for good was rolled back to the same snapshot thousands of times and never ended
    (every replay met the NaN again): the fourth rollback to one state halts the run with its reason."""

    def poison_from_step_20(attempt: int, batch: TensorPair) -> TensorPair:
        if attempt >= 20:
            return TensorPair(x=torch.full_like(batch.x, math.nan), y=batch.y)
        return batch

    loop = make_loop(config(), data, hook=poison_from_step_20)
    result = loop.run()
    assert result.status == "halted"
    assert result.halt_reason == "rolled back to step 13 3 times without getting past it (non-finite steps)"
    assert result.figures.rollbacks == 3
    assert loop.policy.level is EmergencyLevel.L4_HALT


def test_non_finite_steps_in_the_first_epoch_roll_back_to_the_runs_start(data: DataSplits) -> None:
    """Three non-finite steps before the first epoch end had no snapshot to go back to: the run halted (rollback
    impossible). The start is the first fast snapshot."""

    def poison(attempt: int, batch: TensorPair) -> TensorPair:
        if attempt in (3, 5, 7):
            return TensorPair(x=torch.full_like(batch.x, math.nan), y=batch.y)
        return batch

    loop = make_loop(config(), data, hook=poison)
    result = loop.run()
    assert result.status == "completed"
    assert result.figures.rollbacks == 1
    assert [tier for tier, _ in loop.restore_ms_history] == ["fast"]
    assert result.figures.global_step == 3 * 13


def test_a_validation_loss_that_is_not_finite_is_said_once(data: DataSplits) -> None:
    """A model that gives NaN only in eval mode trained on silently (val loss nan in every row, no warning)."""
    loop = make_loop(config(host_model="tests.tolaria_factories:nan_in_eval", epochs=3), data)
    with structlog.testing.capture_logs() as logs:
        result = loop.run()
    assert result.status == "completed"
    said = [entry for entry in logs if entry["event"] == "validation_not_finite"]
    assert len(said) == 1
    assert (said[0]["epoch"], said[0]["val_loss"]) == (1, "nan")


@pytest.mark.parametrize(
    ("factory", "got"), [("wide_from_third_step", "[50, 20]"), ("narrow_from_third_step", "[50, 5]")]
)
def test_a_model_output_of_the_wrong_shape_mid_run_is_one_clear_error(data: DataSplits, factory: str, got: str) -> None:
    """[batch, 20] for 10 classes trained on silently (a 20-way softmax); [batch, 5] failed in the loss with
    "IndexError: Target 9 is out of bounds", naming neither the shape nor the model."""
    loop = make_loop(config(host_model=f"tests.tolaria_factories:{factory}"), data)
    with pytest.raises(ModelOutputError) as info:
        loop.run()
    text = str(info.value)
    assert f"returned shape {got} at step 2: expected [batch, classes] = [50, 10]" in text
    assert "(ReshapesLater.forward at " in text
    assert text.count("\n") == 0
    assert loop.global_step == 2  # the wrong output trained nothing


def test_a_model_output_of_the_wrong_shape_in_eval_mode_is_the_same_error(data: DataSplits) -> None:
    loop = make_loop(config(host_model="tests.tolaria_factories:narrow_in_eval"), data)
    with pytest.raises(ModelOutputError, match=r"returned shape \[\d+, 5\] in an evaluation pass \(eval mode\)"):
        loop.run()


def test_a_forward_raising_systemexit_is_a_one_line_config_error() -> None:
    cfg = config(host_model="tests.tolaria_factories:exit_in_forward")
    with pytest.raises(TolariaConfigError) as info:
        check_config(cfg)
    assert "the model's forward raised when probed with a batch of 2 of the mnist1d data set's samples" in str(
        info.value
    )
    # Where in the user's code, as a failure mid-run says it: the message alone named no line of theirs.
    assert re.search(
        r"SystemExit: boom from user forward \(at (.*/)?tests/tolaria_factories\.py:\d+ in forward\)$", str(info.value)
    )


def test_a_checkpoint_no_manifest_names_is_removed_by_the_next_write(data: DataSplits, tmp_path: Path) -> None:
    """A kill -9 between the manifest's write and the deletion of the checkpoints it dropped left that file for good
    (nothing reads or removes a checkpoint the manifest does not name): the run kept one more than keep_last."""
    make_loop(config(checkpoint_keep_last=2), data, tmp_path).run()
    orphan = tmp_path / "step-1.pt"
    orphan.write_bytes(b"left by a kill -9")
    make_loop(config(checkpoint_keep_last=2, epochs=4), data, tmp_path, resume=True).run()
    assert not orphan.exists()
    assert sorted(p.name for p in tmp_path.glob("step-*.pt")) == sorted(e.file for e in read_manifest(tmp_path))
