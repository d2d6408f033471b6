"""The step-boundary protocol through the real Tolaria actors.

Plans take effect at exactly effect_step, late plans stall the loop (counted) rather than shift, and SeedOps migrate
optimizer groups as esper.nn.optim_migration says."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import pytest
import torch

from actors.tolaria.actor import TolariaControl, TolariaWiring, tolaria_spec
from actors.tolaria.boundary import INCUBATION_LR_KEY, RECIPE_ATTR, BoundaryApplier, replay
from actors.tolaria.build import build_trainee, load_data
from actors.tolaria.cell import new_cell
from actors.tolaria.checkpoint_codec import decode_state, encode_state
from actors.tolaria.snapshots import capture, load_into
from esper.nn.blueprints import SlotShape, build_blueprint, default_catalogue
from esper.nn.optim_migration import check_param_groups
from esper.nn.slots import SlotMode
from esper.runtime.clock import MonotonicClock
from esper.runtime.events import RecordingSink
from esper.runtime.handoff import Handoff
from esper.runtime.lanes import Lane
from esper.runtime.system import ActorSystem
from schemas.boundary import BoundaryApplied, BoundaryPlan, SeedOp
from schemas.config import TolariaConfig
from schemas.enums import SeedLifecycleStage

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

    from torch import nn

    from actors.tolaria.build import Trainee
    from actors.tolaria.plans import PlanInboxStatistics
    from esper.nn.data import DataSplits
    from schemas.state import SystemStatePacket

TINY = {"epochs": 2, "dataset_samples": 1000, "batch_size": 50, "state_every_steps": 4, "command_lag_steps": 8}


@pytest.fixture(scope="module")
def data() -> DataSplits:
    return load_data(TolariaConfig(**TINY))  # type: ignore[arg-type]


@pytest.fixture
async def lane() -> AsyncIterator[Lane]:
    async with Lane("train", "cpu", num_threads=1) as train:
        yield train


def seed_module(features: int = 12) -> nn.Module:
    descriptor = next(d for d in default_catalogue() if d.family == "low_rank_adapter")
    params = descriptor.defaults()
    module = build_blueprint(descriptor, SlotShape("conv1d", features), params, seed=1, fill_defaults=True)
    setattr(module, RECIPE_ATTR, params)
    module.blueprint_id = descriptor.blueprint_id  # type: ignore[assignment]
    return module


def two_seed_applier(
    config: TolariaConfig, data: DataSplits
) -> tuple[Trainee, BoundaryApplier, dict[str, nn.Module], Callable[[SeedOp], nn.Module]]:
    """A trainee, its applier, and prepared seeds "a" and "b" handed out by seed id."""
    trainee = build_trainee(config, data, (), torch.device("cpu"))
    modules = {"a": seed_module(), "b": seed_module()}

    def take(op: SeedOp) -> nn.Module:
        return modules[op.seed_id or ""]

    return trainee, BoundaryApplier(trainee), modules, take


class FakePlanner:
    """Answers each packet with one plan (ops chosen by the test); holds back the plans named in ``hold`` until the
    step loop is seen stalling on them, and never sends those named in ``drop``."""

    def __init__(
        self, system: ActorSystem, lag: int, handoff: Handoff[nn.Module], hold: set[int], drop: frozenset[int]
    ) -> None:
        self._system = system
        self._lag = lag
        self._handoff = handoff
        self.hold = hold
        self.drop = drop
        self.held: list[BoundaryPlan] = []
        self.packets: list[int] = []
        self.ops: dict[int, tuple[SeedOp, ...]] = {}
        self.stalled = asyncio.Event()
        self.packets_at_stall: list[int] = []

    def on_packet(self, packet: SystemStatePacket) -> None:
        step = packet.global_step
        self.packets.append(step)
        plan = BoundaryPlan(run_id="t", decided_on_step=step, effect_step=step + self._lag, ops=self.ops.get(step, ()))
        if step in self.drop:
            return
        if step in self.hold:
            self.held.append(plan)
        else:
            self._send(plan)

    def on_wait(self) -> None:
        # The step loop is blocked at an effect step: now (and only now) release what was held.
        self.packets_at_stall = list(self.packets)
        self.stalled.set()
        for plan in self.held:
            self._send(plan)
        self.held.clear()
        self.hold.clear()

    def _send(self, plan: BoundaryPlan) -> None:
        self._system.ref("tolaria/control", TolariaControl).tell_nowait(plan)


async def run_tolaria(
    data: DataSplits,
    lane: Lane,
    hold: set[int],
    ops: dict[int, tuple[SeedOp, ...]],
    handoff: Handoff[nn.Module],
    *,
    drop: frozenset[int] = frozenset(),
    **overrides: object,
) -> tuple[FakePlanner, list[BoundaryApplied], TolariaConfig, PlanInboxStatistics]:
    config = TolariaConfig(**{**TINY, **overrides})  # type: ignore[arg-type]
    loop = asyncio.get_running_loop()
    system = ActorSystem(clock=_clock(), sink=RecordingSink())
    planner = FakePlanner(system, config.command_lag_steps, handoff, hold, drop)
    planner.ops = ops

    def on_wait(_step: int, _missing: tuple[int, ...]) -> None:
        loop.call_soon_threadsafe(planner.on_wait)

    cell = new_cell(config, on_wait=on_wait)
    receipts: list[BoundaryApplied] = []
    wiring = TolariaWiring(
        run_id="t",
        run_dir=None,
        lane=lane,
        cell=cell,
        sink=RecordingSink(),
        handoff=handoff,
        subscribers=(planner.on_packet,),
        expects_plans=True,
        on_applied=receipts.append,
        data=data,
    )
    await system.start(tolaria_spec(config, wiring))
    try:
        async with asyncio.timeout(60):
            await cell.wait_finished()
            await system.stop()
    except TimeoutError:
        cell.inbox.request_stop()  # a loop waiting for a plan forever would hold the lane, and the test, for good
        raise
    return planner, receipts, config, cell.inbox.statistics()


def _clock() -> MonotonicClock:
    return MonotonicClock()


async def test_plans_take_effect_at_exactly_their_effect_step_and_are_acknowledged(
    data: DataSplits, lane: Lane
) -> None:
    handoff: Handoff[nn.Module] = Handoff()
    first = handoff.put(seed_module())
    ops: dict[int, tuple[SeedOp, ...]] = {
        4: (SeedOp(kind="attach", slot="blocks.1", seed_id="s1", handle=first, blueprint_id="x"),),
        12: (SeedOp(kind="set_stage", slot="blocks.1", stage=SeedLifecycleStage.BLENDING),),
        16: (SeedOp(kind="fossilize", slot="blocks.1"),),
    }
    planner, receipts, _, _ = await run_tolaria(data, lane, set(), ops, handoff)
    assert [r.decided_on_step for r in receipts] == [s for s in planner.packets if s + 8 <= receipts[-1].applied_step]
    assert all(r.applied_step == r.effect_step == r.decided_on_step + 8 for r in receipts)
    applied = {r.decided_on_step: r for r in receipts}
    assert [o.applied for o in applied[4].outcomes] == [True]
    assert applied[4].seed_parameters["s1"] > 0
    assert [o.applied for o in applied[12].outcomes] == [True]
    assert [o.applied for o in applied[16].outcomes] == [True]


async def test_a_late_plan_stalls_the_loop_and_still_takes_effect_at_its_effect_step(
    data: DataSplits, lane: Lane
) -> None:
    _planner, receipts, _, stats = await run_tolaria(data, lane, {8}, {}, Handoff())
    late = next(r for r in receipts if r.decided_on_step == 8)
    assert late.applied_step == late.effect_step == 16
    assert late.stall_ms > 0
    assert stats.stalls == 1
    assert all(r.applied_step == r.effect_step for r in receipts)


async def test_training_continues_while_the_controller_is_slow(data: DataSplits, lane: Lane) -> None:
    # The planner answers nothing until the loop blocks at the first effect step (4 + 8 = 12).
    planner, receipts, _, stats = await run_tolaria(data, lane, {4, 8, 12}, {}, Handoff())
    assert planner.stalled.is_set()
    assert planner.packets_at_stall == [4, 8, 12], "steps kept advancing while the first decision was pending"
    assert receipts[0].applied_step == 12
    assert stats.stalls == 1


async def test_a_decision_that_never_comes_is_given_up_at_the_deadline_and_training_goes_on(
    data: DataSplits, lane: Lane
) -> None:
    """The controller never answers the packet of step 8: the trainer waits for its plan up to
    tolaria.decision_deadline_ms at step 16, gives it up (missed), and applies every later plan at its effect step."""
    planner, receipts, config, stats = await run_tolaria(
        data, lane, set(), {}, Handoff(), drop=frozenset({8}), decision_deadline_ms=50.0
    )
    assert 8 in planner.packets
    assert 8 not in [r.decided_on_step for r in receipts]
    assert [r.decided_on_step for r in receipts] == [
        s for s in planner.packets if s != 8 and s + 8 <= receipts[-1].applied_step
    ]
    assert all(r.applied_step == r.effect_step for r in receipts)
    assert (stats.missed, stats.stalls, stats.late) == (1, 1, 0)
    assert stats.stall_ms_total >= config.decision_deadline_ms


def test_a_seed_learns_at_the_scaled_host_rate_unless_its_command_names_one(data: DataSplits) -> None:
    config = TolariaConfig(**{**TINY, "seed_lr_scale": 0.25})  # type: ignore[arg-type]
    trainee, applier, _, take = two_seed_applier(config, data)

    assert applier.apply(SeedOp(kind="attach", slot="blocks.0", seed_id="a"), step=1, take_module=take).applied
    named = SeedOp(kind="attach", slot="blocks.1", seed_id="b", learning_rate=0.07)
    assert applier.apply(named, step=1, take_module=take).applied
    lr = {str(g.get("name")): g["lr"] for g in trainee.optimizer.param_groups}
    assert lr == {"host": config.lr, "seed:a": config.lr * 0.25, "seed:b": 0.07}


def test_an_incubating_seed_learns_at_the_incubation_rate_and_gets_its_own_back_when_it_blends(
    data: DataSplits,
) -> None:
    config = TolariaConfig(**{**TINY, "incubation_lr_scale": 0.1})  # type: ignore[arg-type]
    trainee, applier, _, take = two_seed_applier(config, data)

    def rates() -> dict[str, float]:
        return {str(g.get("name")): float(g["lr"]) for g in trainee.optimizer.param_groups}

    assert applier.apply(SeedOp(kind="attach", slot="blocks.0", seed_id="a"), step=1, take_module=take).applied
    blending = SeedOp(kind="attach", slot="blocks.1", seed_id="b", stage=SeedLifecycleStage.BLENDING)
    assert applier.apply(blending, step=1, take_module=take).applied
    assert rates() == pytest.approx({"host": config.lr, "seed:a": config.lr * 0.1, "seed:b": config.lr})
    # The optimizer state (what snapshots and checkpoints save) carries the rate to return to, scaled with the rest.
    assert applier.apply(SeedOp(kind="scale_lr", lr_scale=0.5), step=2, take_module=take).applied
    captured = capture(
        trainee, global_step=2, epoch=0, batch_index=2, graft_log=applier.log, counters={}, keep_modules=False
    )
    checkpoint, _ = decode_state(encode_state(captured))
    assert applier.apply(
        SeedOp(kind="set_stage", slot="blocks.0", stage=SeedLifecycleStage.BLENDING), step=3, take_module=take
    ).applied
    assert rates() == pytest.approx({"host": config.lr * 0.5, "seed:a": config.lr * 0.5, "seed:b": config.lr * 0.5})
    assert all(INCUBATION_LR_KEY not in g for g in trainee.optimizer.param_groups)
    # A restore from that checkpoint brings back both the low rate and the one to return to.
    load_into(trainee, checkpoint)
    assert rates()["seed:a"] == pytest.approx(config.lr * 0.05)
    assert applier.apply(
        SeedOp(kind="set_stage", slot="blocks.0", stage=SeedLifecycleStage.PROBATIONARY), step=4, take_module=take
    ).applied
    assert rates()["seed:a"] == pytest.approx(config.lr * 0.5)
    # The graft log records the seed's own rate, so a replay reapplies the incubation scale exactly once.
    assert applier.log[0].learning_rate == pytest.approx(config.lr)


def test_a_paused_seed_can_be_culled_but_not_moved_on_until_resumed(data: DataSplits) -> None:
    config = TolariaConfig(**TINY)  # type: ignore[arg-type]
    trainee, applier, _, take = two_seed_applier(config, data)
    blending = SeedOp(kind="attach", slot="blocks.0", seed_id="a", stage=SeedLifecycleStage.BLENDING)
    assert applier.apply(blending, step=1, take_module=take).applied
    assert applier.apply(SeedOp(kind="pause", slot="blocks.0", seed_id="a"), step=2, take_module=take).applied
    slot = trainee.slots["blocks.0"]
    assert slot.mode is SlotMode.DORMANT  # the identity path
    assert trainee.paused == {"blocks.0": SlotMode.BLENDING.value}
    refused = applier.apply(
        SeedOp(kind="set_stage", slot="blocks.0", stage=SeedLifecycleStage.SHADOWING), step=3, take_module=take
    )
    assert not refused.applied
    assert refused.error == "set_stage: seed 'a' is paused; resume it first"
    # A cull (the risk engine paused it, the policy gave up on it) removes it: module, optimizer group and pause.
    assert applier.apply(SeedOp(kind="detach", slot="blocks.0", seed_id="a"), step=4, take_module=take).applied
    assert slot.seed_module is None
    assert slot.mode is SlotMode.DORMANT
    assert trainee.paused == {}
    assert [str(g.get("name")) for g in trainee.optimizer.param_groups] == ["host"]
    assert not any(".seed." in name for name, _ in trainee.model.named_parameters())
    assert [e.kind for e in applier.log] == ["attach", "pause", "detach"]
    # A resume replays that log onto a fresh trainee and ends in the same place.
    fresh = build_trainee(config, data, (), torch.device("cpu"))
    replay(BoundaryApplier(fresh), list(applier.log), {"a": seed_module()})
    assert fresh.slots["blocks.0"].seed_module is None
    assert fresh.paused == {}
    # The slot takes a new seed afterwards.
    assert applier.apply(SeedOp(kind="attach", slot="blocks.0", seed_id="b"), step=5, take_module=take).applied


def test_a_paused_seed_on_a_module_with_two_names_survives_a_snapshot_restore(data: DataSplits) -> None:
    """state_dict saves the slot under both names of its host; capture recorded the paused mode under the first only,
    so loading the second (DORMANT with a seed attached) refused the snapshot."""
    config = TolariaConfig(**{**TINY, "host_model": "tests.tolaria_factories:shared_block_model"})  # type: ignore[arg-type]
    trainee = build_trainee(config, data, (), torch.device("cpu"))
    descriptor = next(d for d in default_catalogue() if d.family == "low_rank_adapter")
    module = build_blueprint(descriptor, trainee.slot_shapes["mid"], {}, seed=1, fill_defaults=True)
    applier = BoundaryApplier(trainee)
    blending = SeedOp(kind="attach", slot="mid", seed_id="a", stage=SeedLifecycleStage.BLENDING)
    assert applier.apply(blending, step=1, take_module=lambda _: module).applied
    assert applier.apply(SeedOp(kind="pause", slot="mid", seed_id="a"), step=2, take_module=lambda _: module).applied
    captured = capture(
        trainee, global_step=2, epoch=0, batch_index=2, graft_log=applier.log, counters={}, keep_modules=False
    )
    assert {k: v["mode"] for k, v in captured.model.items() if k.endswith("_extra_state")} == {  # type: ignore[index]
        "mid.esper_slot._extra_state": "blending",
        "again.esper_slot._extra_state": "blending",
    }
    checkpoint, _ = decode_state(encode_state(captured))
    load_into(trainee, checkpoint)
    assert trainee.paused == {"mid": SlotMode.BLENDING.value}
    modes = [trainee.slots["mid"].mode]
    assert applier.apply(SeedOp(kind="resume", slot="mid", seed_id="a"), step=3, take_module=lambda _: module).applied
    modes.append(trainee.slots["mid"].mode)
    assert modes == [SlotMode.DORMANT, SlotMode.BLENDING]


def test_seed_ops_migrate_optimizer_groups_and_no_parameter_trains_twice(data: DataSplits) -> None:
    config = TolariaConfig(**TINY)  # type: ignore[arg-type]
    trainee, applier, modules, take = two_seed_applier(config, data)

    def groups() -> list[str]:
        return [str(g.get("name")) for g in trainee.optimizer.param_groups]

    refused = applier.apply(
        SeedOp(kind="attach", slot="blocks.0", seed_id="a"), step=1, take_module=take, conservative=True
    )
    assert not refused.applied
    assert "conservative" in (refused.error or "")
    assert refused.level_refused  # the level's refusal, told apart from a failed op without reading its text
    assert applier.apply(SeedOp(kind="attach", slot="blocks.0", seed_id="a"), step=1, take_module=take).applied
    assert applier.apply(SeedOp(kind="attach", slot="blocks.1", seed_id="b"), step=1, take_module=take).applied
    assert groups() == ["host", "seed:a", "seed:b"]
    seed_a = list(modules["a"].parameters())
    x = data.train.x[:8]
    trainee.model(x).sum().backward()
    trainee.optimizer.step()
    moments = {id(p): trainee.optimizer.state[p]["exp_avg"].clone() for p in seed_a}
    assert applier.apply(SeedOp(kind="fossilize", slot="blocks.0"), step=2, take_module=take).applied
    assert groups() == ["host", "seed:b"]
    host = trainee.optimizer.param_groups[0]["params"]
    assert all(any(p is q for q in host) for p in seed_a)
    assert all(torch.equal(trainee.optimizer.state[p]["exp_avg"], moments[id(p)]) for p in seed_a)
    seed_b = list(modules["b"].parameters())
    assert applier.apply(SeedOp(kind="detach", slot="blocks.1"), step=3, take_module=take).applied
    assert groups() == ["host"]
    assert all(p not in trainee.optimizer.state for p in seed_b)
    check_param_groups(trainee.optimizer, trainee.model.named_parameters())
    assert [e.kind for e in applier.log] == ["attach", "attach", "fossilize", "detach"]
