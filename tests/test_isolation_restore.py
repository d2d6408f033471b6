"""Each seed's isolation total is part of the training state: a resume or rollback takes back the restored step's.

Kasmina charges a seed what its total rose by since the last packet it planned on, and rebuilds that figure from its
journal cut at the restored step. A trainer that counted from 0 again after a restore left the next violations of a
seed that had some uncharged (its isolation breaker, the gate's evidence and Tamiyo's veto never saw them).
"""

from __future__ import annotations

import math
import types
from typing import TYPE_CHECKING

import msgspec
import pytest

from actors.tolaria.build import load_data
from actors.tolaria.checkpoint_codec import checkpoint_counters
from actors.tolaria.checkpoints import read_manifest
from actors.tolaria.isolation_monitor import LAST_PROBE
from actors.tolaria.loop import TrainingLoop
from actors.tolaria.loop_options import LoopOptions
from actors.tolaria.plans import PlanInbox
from actors.tolaria.snapshots import SnapshotStore
from esper.nn.data import TensorPair
from esper.nn.slots import SlotMode
from schemas.boundary import TrainingRestored
from schemas.config import TolariaConfig
from schemas.enums import SeedLifecycleStage as Stage
from tests._kasmina_harness import RUN, running_kasmina, seed_report
from tests.test_isolation_total import trainee
from tests.test_kasmina_lifecycle import attach_seed
from tests.test_tolaria_loop import TINY, Box, config, make_loop

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from actors.tolaria.build import Trainee
    from esper.nn.data import DataSplits
    from esper.runtime.clock import ManualClock
    from esper.runtime.events import RecordingSink

pytestmark = pytest.mark.timeout(90)


@pytest.fixture(scope="module")
def data() -> DataSplits:
    return load_data(TolariaConfig(**TINY))  # type: ignore[arg-type]


def _violate(loop: TrainingLoop, seed_id: str, count: int) -> None:
    # What the isolation monitor does with a probe's result (no shipped blueprint leaks gradient).
    totals = loop.trainee.isolation_violations
    totals[seed_id] = totals.get(seed_id, 0) + count


def test_a_resumed_run_carries_on_each_seeds_total_from_its_checkpoint(data: DataSplits, tmp_path: Path) -> None:
    inbox = PlanInbox()

    def leak_then_stop(attempt: int, batch: TensorPair) -> TensorPair:
        if attempt == 5:
            _violate(first, "seed-1", 3)
        if attempt == 27:  # in epoch 3 of 3 (13 batches an epoch)
            inbox.request_stop("test")
        return batch

    first_box = Box()
    first = make_loop(config(), data, tmp_path, hook=leak_then_stop, inbox=inbox, box=first_box)
    assert first.run().status == "stopped"
    step = read_manifest(tmp_path)[-1].global_step
    stopped = (tmp_path / f"step-{step}.pt").read_bytes()
    assert first_box.packets[-1].isolation_violations == 3

    seen: list[dict[str, int]] = []

    def leak_again(attempt: int, batch: TensorPair) -> TensorPair:
        if attempt == 0:
            seen.append(dict(resumed.trainee.isolation_violations))
            _violate(resumed, "seed-1", 2)
        return batch

    box = Box()
    resumed = make_loop(config(), data, tmp_path, resume=True, hook=leak_again, box=box)
    assert resumed.run().status == "completed"
    assert seen == [{"seed-1": 3}], "the checkpoint's totals, before the resumed session's first step"
    # The seed's total goes on from the checkpoint's, as the uninterrupted run's would (Kasmina charges the 2 new).
    assert resumed.trainee.isolation_violations == {"seed-1": 5}
    # The packet's own total counts the session (a counter on /metrics; Nissa's alert reads its increase).
    assert {p.isolation_violations for p in box.packets} == {2}
    assert msgspec.json.decode(str(checkpoint_counters(stopped)["isolation_violations"])) == {"seed-1": 3}


def test_a_rollback_takes_back_the_snapshots_totals_and_the_session_total_never_falls(data: DataSplits) -> None:
    seen: dict[int, dict[str, int]] = {}

    def leak_then_poison(attempt: int, batch: TensorPair) -> TensorPair:
        if attempt == 5:
            _violate(loop, "seed-1", 2)  # before epoch 1's end (step 13): in its snapshot
        if attempt == 16:
            _violate(loop, "seed-1", 3)  # after it: rolled away
            _violate(loop, "seed-2", 1)
        if attempt == 23:
            seen[attempt] = dict(loop.trainee.isolation_violations)  # the first step after the rollback
        if attempt in (20, 21, 22):
            return TensorPair(x=batch.x.new_full(batch.x.shape, math.nan), y=batch.y)
        return batch

    box = Box()
    loop = make_loop(config(), data, hook=leak_then_poison, box=box)
    result = loop.run()
    assert result.status == "completed"
    assert result.figures.rollbacks == 1
    assert [tier for tier, _ in loop.restore_ms_history] == ["fast"]
    # The snapshot's step is where Kasmina's journal is cut: its packet reported seed-1 at 2, seed-2 at nothing.
    assert seen == {23: {"seed-1": 2}}
    restored = [e.step for e in box.events if isinstance(e, TrainingRestored)]
    assert restored == [13]
    # The session's total counts every violation the monitor found, the rolled-away ones too: it never falls.
    totals = [p.isolation_violations for p in box.packets]
    assert totals == sorted(totals)
    assert totals[-1] == 6


async def test_kasmina_culls_a_seed_leaking_on_after_a_restore_fed_the_restored_totals(
    clock: ManualClock, sink: RecordingSink
) -> None:
    """The contract the trainer keeps: Kasmina's journal, cut at the restored step, holds each seed's charged count
    of that step's packet, and a later packet is charged only what its total adds to it. A trainer that counted
    from 0 again (reporting 1, then 2 below) would have had both new violations uncharged, and the seed kept."""
    async with running_kasmina(clock, sink) as h:
        await attach_seed(h)
        # No gradient norms: G2 keeps waiting, so the only way out of TRAINING here is the breaker.
        await h.boundary(10, seeds=(seed_report(violations=1, grad=None),))
        await h.boundary(11, seeds=(seed_report(violations=2, grad=None),))
        await h.ref.tell(TrainingRestored(run_id=RUN, step=10, tier="fast"))
        assert (await h.states())["a"].isolation_violations == 1, "the journal cut at 10 charged the seed once"
        while not h.plans.empty():
            h.plans.get_nowait()  # the plans in flight at step 10, sent again
        # The restored trainer's totals: the snapshot's 1, then a new violation at each packet.
        await h.boundary(11, seeds=(seed_report(violations=2, grad=None),))
        culled = await h.boundary(12, seeds=(seed_report(violations=3, grad=None),))
        assert [(op.kind, op.reason) for op in culled.ops] == [("detach", "isolation_breaker")]
        assert (await h.stage("a")) is Stage.CULLED


def test_a_state_written_before_the_totals_were_saved_restores_none_and_keeps_the_session_total() -> None:
    # Imported here, so the tests above run (and fail) on a tree without the totals' counter.
    from actors.tolaria.isolation_monitor import COUNTER, restore_totals

    model = trainee()
    model.isolation_violations.update({"seed-1": 4})
    restore_totals(model, {"rollbacks": 0})  # an earlier version's counters: no COUNTER
    assert model.isolation_violations == {}
    assert model.session_violations() == 4, "what this session counted stays counted"
    restore_totals(model, {COUNTER: '{"seed-1":1,"seed-2":2}'})
    assert model.isolation_violations == {"seed-1": 1, "seed-2": 2}
    assert model.session_violations() == 4
    model.isolation_violations["seed-2"] += 1  # the monitor counts one more
    assert model.session_violations() == 5


def _probing_loop(
    data: DataSplits,
    directory: Path,
    *,
    resume: bool,
    hook: Callable[[int, TensorPair], TensorPair] | None = None,
    inbox: PlanInbox | None = None,
) -> TrainingLoop:
    options = LoopOptions(
        run_id="t",
        checkpoint_dir=directory,
        resume=resume,
        resumed_run=resume,
        batch_hook=hook,
        isolation_probe_every_steps=10,
    )
    cfg = config()
    snapshots = SnapshotStore(int(cfg.snapshot_memory_cap_mb * 2**20))
    return TrainingLoop(cfg, options, inbox=inbox or PlanInbox(), outbox=Box(), snapshots=snapshots, data=data)


def _last_probes(directory: Path) -> dict[int, object]:
    return {
        info.global_step: checkpoint_counters((directory / info.file).read_bytes()).get(LAST_PROBE)
        for info in read_manifest(directory)
    }


def test_a_resumed_run_probes_at_the_steps_the_uninterrupted_one_does(data: DataSplits, tmp_path: Path) -> None:
    """The monitor probes at most once every 10 steps since its last probe (a packet every 4 steps and at each
    epoch's end, 13 steps an epoch): the uninterrupted run at 4, 16, 26 and 36. Stopped in epoch 3 and resumed, it
    had forgotten its last probe and probed at the resumed session's first packet, then at 39: a leaking seed's
    violations were counted at other steps than the uninterrupted run's."""
    straight = _probing_loop(data, tmp_path / "straight", resume=False)
    assert straight.run().status == "completed"
    assert _last_probes(tmp_path / "straight") == {13: 4, 26: 26, 39: 36}
    stopping = PlanInbox()

    def stop_in_epoch_3(attempt: int, batch: TensorPair) -> TensorPair:
        if attempt == 27:
            stopping.request_stop("test")
        return batch

    options = LoopOptions(
        run_id="t", checkpoint_dir=tmp_path / "resumed", batch_hook=stop_in_epoch_3, isolation_probe_every_steps=10
    )
    cfg = config()
    first = TrainingLoop(
        cfg,
        options,
        inbox=stopping,
        outbox=Box(),
        snapshots=SnapshotStore(int(cfg.snapshot_memory_cap_mb * 2**20)),
        data=data,
    )
    assert first.run().status == "stopped"
    assert _last_probes(tmp_path / "resumed")[26] == 26
    resumed = _probing_loop(data, tmp_path / "resumed", resume=True)
    assert resumed.run().status == "completed"
    assert _last_probes(tmp_path / "resumed")[39] == 36


def test_a_run_stopped_between_a_probe_and_its_sketch_resumes_to_sketch_that_step(
    data: DataSplits, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A probe with a live seed schedules a gradient sketch of the next step; a stop right after it (its checkpoint
    the probe's step) resumed with no sketch scheduled: the uninterrupted run's isolation_sketch of that step was
    never taken."""
    from actors.tolaria import isolation_monitor

    monkeypatch.setattr(isolation_monitor, "MONITORED_MODES", tuple(SlotMode))  # every slot counts as a live seed
    isolated = types.SimpleNamespace(isolated=True, seed_id="seed-1")
    monkeypatch.setattr(isolation_monitor, "probe_isolation", lambda model, forward, modes: [isolated])
    armed: list[int] = []
    arm = isolation_monitor.IsolationMonitor.arm

    def noting(monitor: isolation_monitor.IsolationMonitor, trainee: Trainee, step: int) -> None:
        armed.append(step)
        arm(monitor, trainee, step)

    monkeypatch.setattr(isolation_monitor.IsolationMonitor, "arm", noting)
    assert _probing_loop(data, tmp_path / "straight", resume=False).run().status == "completed"
    straight, armed[:] = list(armed), []
    stopping = PlanInbox()

    def stop_after_the_probe_at_16(attempt: int, batch: TensorPair) -> TensorPair:
        if attempt == 15:
            stopping.request_stop("test")
        return batch

    first = _probing_loop(data, tmp_path / "resumed", resume=False, hook=stop_after_the_probe_at_16, inbox=stopping)
    assert first.run().status == "stopped"
    assert _probing_loop(data, tmp_path / "resumed", resume=True).run().status == "completed"
    assert armed == straight == [4, 16, 26, 36]
