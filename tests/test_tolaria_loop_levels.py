"""What each emergency level does to the step loop's plans.

L1 (a skipped non-finite step) restarts the clean dwell, L2 refuses new grafts while other ops apply, L3 refuses every
op but detach."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import pytest
import torch
from torch import nn

from actors.tolaria.build import load_data
from actors.tolaria.checkpoint_codec import decode_state
from actors.tolaria.loop import TrainingLoop
from actors.tolaria.loop_options import LoopOptions
from actors.tolaria.plans import PlanInbox
from actors.tolaria.snapshots import SnapshotStore
from esper.nn.data import TensorPair
from esper.nn.slots import SlotMode
from esper.runtime.handoff import Handoff
from schemas.boundary import BoundaryPlan, SeedOp
from schemas.enums import EmergencyLevel, SeedLifecycleStage
from tests.test_tolaria_loop import Box, config
from tests.test_tolaria_protocol import seed_module

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from esper.nn.data import DataSplits
    from schemas.boundary import BoundaryApplied
    from schemas.state import SystemStatePacket

pytestmark = pytest.mark.timeout(90)

LAG = 2


class Planner(Box):
    """A planner on the loop's thread: answers each packet at once with a plan of the ops chosen for its step, except
    the steps in ``silent`` (those plans are missed); resends a plan the loop expects again after a rollback, as
    Kasmina does."""

    def __init__(self, ops: dict[int, tuple[SeedOp, ...]], silent: frozenset[int] = frozenset()) -> None:
        super().__init__()
        self.inbox = PlanInbox(on_wait=self._resend)
        self.ops = ops
        self.silent = silent
        self.sent: dict[int, BoundaryPlan] = {}

    def packet(self, packet: SystemStatePacket) -> None:
        super().packet(packet)
        step = packet.global_step
        if step in self.silent:
            return
        plan = BoundaryPlan(run_id="t", decided_on_step=step, effect_step=step + LAG, ops=self.ops.get(step, ()))
        self.sent[step] = plan
        self.inbox.put(plan)

    def _resend(self, _effect_step: int, missing: tuple[int, ...]) -> None:
        for step in missing:
            if step in self.sent:
                self.inbox.put(self.sent[step])

    def receipt(self, decided_on_step: int) -> BoundaryApplied:
        """The last receipt of that decision (a rollback applies a plan again)."""
        return [r for r in self.receipts if r.decided_on_step == decided_on_step][-1]

    def level_at(self, step: int) -> EmergencyLevel:
        """The level the last packet of ``step`` carried."""
        return [p.emergency_level for p in self.packets if p.global_step == step][-1]


@pytest.fixture(scope="module")
def data() -> DataSplits:
    return load_data(config())


def build(
    data: DataSplits,
    planner: Planner,
    handoff: Handoff[nn.Module],
    hook: Callable[[int, TensorPair], TensorPair] | None = None,
    **overrides: object,
) -> TrainingLoop:
    # A plan not sent is given up after 1 ms: a failed epoch (decision_timeout), L2.
    cfg = config(command_lag_steps=LAG, decision_deadline_ms=1.0, **overrides)
    return TrainingLoop(
        cfg,
        LoopOptions(run_id="t", checkpoint_dir=None, expects_plans=True, batch_hook=hook),
        inbox=planner.inbox,
        outbox=planner,
        snapshots=SnapshotStore(int(cfg.snapshot_memory_cap_mb * 2**20)),
        handoff=handoff,
        data=data,
    )


def train(
    data: DataSplits,
    planner: Planner,
    handoff: Handoff[nn.Module],
    hook: Callable[[int, TensorPair], TensorPair] | None = None,
    **overrides: object,
) -> TrainingLoop:
    loop = build(data, planner, handoff, hook, **overrides)
    assert loop.run().status == "completed"
    return loop


def nan_at(*attempts: int) -> Callable[[int, TensorPair], TensorPair]:
    def poison(attempt: int, batch: TensorPair) -> TensorPair:
        if attempt in attempts:
            return TensorPair(x=torch.full_like(batch.x, math.nan), y=batch.y)
        return batch

    return poison


def test_at_l2_an_attach_is_refused_while_the_plans_other_ops_apply(data: DataSplits) -> None:
    handoff: Handoff[nn.Module] = Handoff()
    a, b = handoff.put(seed_module()), handoff.put(seed_module())
    ops = {
        8: (SeedOp(kind="attach", slot="blocks.0", seed_id="a", handle=a, blueprint_id="x"),),  # epoch 0: L1
        16: (  # epoch 1: L2 (epoch 0 missed its step-4 decision)
            SeedOp(kind="attach", slot="blocks.1", seed_id="b", handle=b, blueprint_id="x"),
            SeedOp(kind="set_stage", slot="blocks.0", seed_id="a", stage=SeedLifecycleStage.BLENDING),
        ),
    }
    planner = Planner(ops, silent=frozenset({4}))
    loop = train(data, planner, handoff, epochs=2, failed_epochs_to_halt=10)

    assert planner.level_at(8) is EmergencyLevel.L1_NOTICE
    assert planner.level_at(16) is EmergencyLevel.L2_ELEVATED
    assert [o.applied for o in planner.receipt(8).outcomes] == [True]
    refused, blended = planner.receipt(16).outcomes
    assert (refused.kind, refused.applied, refused.level_refused) == ("attach", False, True)
    assert refused.error == "attach: conservative mode (emergency level L2 or above) allows no new grafts"
    assert (blended.kind, blended.applied) == ("set_stage", True)
    slots = loop.trainee.slots
    assert slots["blocks.1"].seed_module is None
    assert slots["blocks.0"].mode is SlotMode.BLENDING
    assert [str(g.get("name")) for g in loop.trainee.optimizer.param_groups] == ["host", "seed:a"]
    assert len(handoff) == 0, "the refused attach's module is let go: nobody takes it later"


def test_at_l3_every_op_but_detach_is_refused(data: DataSplits) -> None:
    """Three non-finite steps (20-22) roll back to step 13 at L3; the replayed epoch and the next are at L3 (two
    clean epoch ends step it down to L2 at step 39)."""
    handoff: Handoff[nn.Module] = Handoff()
    a, b = handoff.put(seed_module()), handoff.put(seed_module())
    ops = {
        4: (SeedOp(kind="attach", slot="blocks.0", seed_id="a", handle=a, blueprint_id="x"),),
        24: (
            SeedOp(kind="attach", slot="blocks.1", seed_id="b", handle=b, blueprint_id="x"),
            SeedOp(kind="set_stage", slot="blocks.0", seed_id="a", stage=SeedLifecycleStage.BLENDING),
            SeedOp(kind="scale_lr", lr_scale=0.5),
        ),
        28: (SeedOp(kind="detach", slot="blocks.0", seed_id="a"),),
    }
    planner = Planner(ops)
    loop = train(data, planner, handoff, hook=nan_at(20, 21, 22))

    assert [planner.level_at(step) for step in (4, 24, 28)] == [
        EmergencyLevel.L1_NOTICE,
        EmergencyLevel.L3_CONSERVATIVE,
        EmergencyLevel.L3_CONSERVATIVE,
    ]
    assert [o.applied for o in planner.receipt(4).outcomes] == [True]
    paused = planner.receipt(24).outcomes
    assert [(o.kind, o.applied, o.level_refused) for o in paused] == [
        ("attach", False, True),
        ("set_stage", False, True),
        ("scale_lr", False, True),
    ]
    assert {o.error for o in paused} == {"adaptation paused (emergency level L3 or above)"}
    assert [(o.kind, o.applied) for o in planner.receipt(28).outcomes] == [("detach", True)]
    assert all(slot.seed_module is None for slot in loop.trainee.slots.values())
    assert [g["lr"] for g in loop.trainee.optimizer.param_groups] == [config().lr]
    assert len(handoff) == 0, "the refused attach's module is let go: nobody takes it later"


def test_a_skipped_non_finite_step_is_an_l1_notice_that_restarts_the_clean_dwell(data: DataSplits) -> None:
    """L1 is the baseline: a non-finite step does not raise the level, it restarts the dwell towards stepping down.
    Epoch 0 fails (a missed decision): L2. Two clean epochs step it down at epoch 2's end (step 39); one skipped step
    in epoch 2 keeps it at L2 until epoch 3's end."""
    dwell: dict[int, int] = {}

    def poison_30(attempt: int, batch: TensorPair) -> TensorPair:
        if attempt in (30, 31):
            dwell[attempt] = loop.policy.ladder.statistics().clean_ticks
        return nan_at(30)(attempt, batch)

    quiet = Planner({}, silent=frozenset({4}))
    train(data, quiet, Handoff(), epochs=4)
    assert [quiet.level_at(step) for step in (13, 26, 39)] == [EmergencyLevel.L2_ELEVATED] * 2 + [
        EmergencyLevel.L1_NOTICE
    ]

    planner = Planner({}, silent=frozenset({4}))
    loop = build(data, planner, Handoff(), poison_30, epochs=4)
    assert loop.run().status == "completed"
    assert loop.policy.skipped_steps == 1
    assert dwell == {30: 1, 31: 0}, "the skipped step 30 restarts the clean dwell"
    assert [planner.level_at(step) for step in (39, 52)] == [EmergencyLevel.L2_ELEVATED, EmergencyLevel.L1_NOTICE]


def test_a_checkpoint_does_not_depend_on_which_plans_had_arrived_when_it_was_written(
    data: DataSplits, tmp_path: Path
) -> None:
    """The final checkpoint listed the plan decided at the last step when it happened to arrive before the capture
    (a kill/resume fuzz found two identical runs writing different bytes); no plan body is written now."""

    def run(name: str, silent: frozenset[int]) -> tuple[Planner, bytes]:
        planner = Planner({}, silent=silent)
        cfg = config(command_lag_steps=LAG, decision_deadline_ms=1.0)
        TrainingLoop(
            cfg,
            LoopOptions(run_id="t", checkpoint_dir=tmp_path / name, expects_plans=True),
            inbox=planner.inbox,
            outbox=planner,
            snapshots=SnapshotStore(int(cfg.snapshot_memory_cap_mb * 2**20)),
            handoff=Handoff(capacity=4),
            data=data,
        ).run()
        last = planner.packets[-1].global_step
        return planner, (tmp_path / name / f"step-{last}.pt").read_bytes()

    answered, first = run("answered", frozenset())
    last = answered.packets[-1].global_step
    assert last in answered.sent  # its plan (due past the run's end) had arrived before the final capture
    unanswered, second = run("unanswered", frozenset({last}))
    assert last not in unanswered.sent  # never sent: the run does not wait for a plan due after its last step
    state, pending = decode_state(first)
    assert state.global_step == last
    assert pending == ()
    assert first == second
