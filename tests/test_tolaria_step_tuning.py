"""Tolaria's learning-rate schedule and gradient clipping in real training.

Each group's rate at a step is its own base rate (as boundary ops set it) times the schedule's factor, clipping bounds
each group by its own norm (a seed's gradient never scales the host's update), the defaults change nothing, and a
stopped run resumes bitwise."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

from actors.tolaria.boundary import BoundaryApplier
from actors.tolaria.build import batch_plan, build_trainee, load_data
from actors.tolaria.checkpoints import read_manifest
from actors.tolaria.emergencies import Action, EmergencyPolicy
from actors.tolaria.loop import TrainingLoop
from actors.tolaria.loop_options import LoopOptions
from actors.tolaria.plans import PlanInbox
from actors.tolaria.snapshots import SnapshotStore
from actors.tolaria.step_tuning import LrSchedule, StepTuner
from actors.tolaria.stepper import Stepper
from actors.tolaria.telemetry import IntervalStats
from esper.nn.data import TensorPair
from esper.nn.data_batches import iter_batches
from esper.runtime.clock import MonotonicClock
from esper.runtime.events import RecordingSink
from esper.runtime.handoff import Handoff
from schemas.boundary import BoundaryPlan, SeedOp
from schemas.config import TolariaConfig
from schemas.enums import SeedLifecycleStage
from tests.test_tolaria_loop import Box, assert_bitwise, weights
from tests.test_tolaria_protocol import seed_module

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

    from torch import nn

    from esper.nn.data import DataSplits

pytestmark = pytest.mark.timeout(90)

CPU = torch.device("cpu")
TINY = {"epochs": 2, "dataset_samples": 1000, "batch_size": 50, "state_every_steps": 4}
STEPS_PER_EPOCH = 13  # 640 training samples in batches of 50


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
    inbox: PlanInbox | None = None,
    handoff: Handoff[nn.Module] | None = None,
    hook: Callable[[int, TensorPair], TensorPair] | None = None,
    outbox: Box | None = None,
) -> TrainingLoop:
    return TrainingLoop(
        cfg,
        LoopOptions(run_id="t", checkpoint_dir=directory, resume=resume, resumed_run=resume, batch_hook=hook),
        inbox=inbox or PlanInbox(),
        outbox=outbox or Box(),
        snapshots=SnapshotStore(int(cfg.snapshot_memory_cap_mb * 2**20)),
        handoff=handoff,
        data=data,
    )


def cosine(step: int, *, warmup: int, total: int, floor: float) -> float:
    """The formula the README gives, written out independently of LrSchedule."""
    if step < warmup:
        return (step + 1) / warmup
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))


def linear(step: int, *, warmup: int, total: int, floor: float) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return floor + (1 - floor) * (1 - (step - warmup) / (total - warmup))


def constant(step: int, *, warmup: int, total: int, floor: float) -> float:
    return (step + 1) / warmup if step < warmup else 1.0


FORMULAS = {"cosine": cosine, "linear": linear, "constant": constant}


def test_each_schedule_gives_its_formulas_factor_at_chosen_steps() -> None:
    total = 100
    linear = LrSchedule("linear", warmup_steps=10, total_steps=total, min_factor=0.1)
    assert [linear.factor(s) for s in (0, 4, 9)] == [0.1, 0.5, 1.0]  # warm-up: the first step already learns
    assert linear.factor(10) == 1.0
    assert linear.factor(55) == pytest.approx(0.1 + 0.9 * 0.5)
    assert linear.factor(99) == pytest.approx(0.1 + 0.9 / 90)
    assert linear.factor(total) == pytest.approx(0.1)  # the floor, just after the run's last step
    cos = LrSchedule("cosine", warmup_steps=10, total_steps=total, min_factor=0.1)
    for step in (0, 5, 9, 10, 40, 55, 99):
        assert cos.factor(step) == pytest.approx(cosine(step, warmup=10, total=total, floor=0.1), abs=1e-15)
    assert cos.factor(55) == pytest.approx(0.55)  # half-way down
    flat = LrSchedule("constant", warmup_steps=4, total_steps=total)
    assert [flat.factor(s) for s in (0, 1, 3, 4, 99)] == [0.25, 0.5, 1.0, 1.0, 1.0]
    # A warm-up as long as the run never reaches the full rate (the run starts with a warning) and divides by nothing.
    assert LrSchedule("cosine", warmup_steps=100, total_steps=total).factor(99) == 1.0
    assert LrSchedule("cosine", warmup_steps=200, total_steps=total).factor(99) == 0.5


def record_rates(into: list[dict[str, float]]) -> Callable[[torch.optim.Optimizer, object, object], None]:
    """An optimizer pre-step hook: each group's rate as the optimizer steps with it, in step order."""

    def hook(optimizer: torch.optim.Optimizer, _args: object, _kwargs: object) -> None:
        into.append({str(g["name"]): float(g["lr"]) for g in optimizer.param_groups})

    return hook


@pytest.mark.parametrize("kind", ["cosine", "linear", "constant"])
def test_every_groups_rate_at_a_step_is_its_own_base_rate_times_the_schedules_factor(
    data: DataSplits, kind: str
) -> None:
    """The host's rate, and a seed's scaled by tolaria.seed_lr_scale and the incubation scale, then back to its own
    when it blends, then a controller's scale_lr on all: each composes with the schedule's factor at each step, and
    between steps (packets, snapshots, boundary ops) each group holds its base rate."""
    floor = 0.0 if kind == "constant" else 0.1
    cfg = config(
        lr_schedule=kind,
        warmup_steps=6,
        lr_min_factor=floor,
        seed_lr_scale=0.5,
        incubation_lr_scale=0.2,
        optimizer="sgd",
    )
    total = cfg.epochs * STEPS_PER_EPOCH
    assert batch_plan(cfg, data).num_batches == STEPS_PER_EPOCH
    handoff: Handoff[nn.Module] = Handoff()
    inbox = PlanInbox()
    ops = {
        3: SeedOp(kind="attach", slot="blocks.1", seed_id="s", handle=handoff.put(seed_module()), blueprint_id="x"),
        12: SeedOp(kind="set_stage", slot="blocks.1", stage=SeedLifecycleStage.BLENDING),
        20: SeedOp(kind="scale_lr", lr_scale=0.5),
    }
    for effect, op in ops.items():
        inbox.expect(effect - 1, effect)
        assert inbox.put(BoundaryPlan(run_id="t", decided_on_step=effect - 1, effect_step=effect, ops=(op,)))
    seen: list[dict[str, float]] = []
    box = Box()
    loop = make_loop(cfg, data, inbox=inbox, handoff=handoff, outbox=box)
    handle = register_optimizer_step_pre_hook(record_rates(seen))
    try:
        assert loop.run().status == "completed"
    finally:
        handle.remove()
    assert len(seen) == total  # no step skipped: the k-th optimizer step is global step k
    lr = cfg.lr
    for step, rates in enumerate(seen):
        factor = FORMULAS[kind](step, warmup=6, total=total, floor=floor)
        host = lr if step < 20 else lr * 0.5
        expected = {"host": host * factor}
        if 3 <= step < 12:
            expected["seed:s"] = lr * 0.5 * 0.2 * factor  # the seed's rate, incubating
        elif step >= 12:
            expected["seed:s"] = lr * 0.5 * (1.0 if step < 20 else 0.5) * factor  # its own, blending
        assert rates == pytest.approx(expected, rel=1e-12), f"step {step}"
    assert seen[0]["host"] == pytest.approx(lr / 6)  # warm-up starts at 1/warmup_steps of the rate
    assert seen[5]["host"] == pytest.approx(lr)
    # After the run the groups hold their base rates, as boundary ops and checkpoints know them.
    final = {str(g["name"]): g["lr"] for g in loop.trainee.optimizer.param_groups}
    assert final == pytest.approx({"host": lr * 0.5, "seed:s": lr * 0.5 * 0.5}, rel=1e-12)
    # An epoch end's packet (metrics.csv's row) carries the base rate and the rate its epoch's last step used (it showed
    # the next epoch's first step's, and before that the base rate at every epoch).
    ends = [p for p in box.packets if p.validation_loss is not None]
    assert [p.global_step for p in ends] == [STEPS_PER_EPOCH, total]
    assert ends[0].effective_learning_rate == pytest.approx(seen[STEPS_PER_EPOCH - 1]["host"], rel=1e-12)
    last = lr * 0.5 * FORMULAS[kind](total - 1, warmup=6, total=total, floor=floor)
    assert last == pytest.approx(seen[total - 1]["host"], rel=1e-12)
    assert ends[1].effective_learning_rate == pytest.approx(last, rel=1e-12)
    assert [p.learning_rate for p in ends] == [lr, lr * 0.5]


def stepper_run(
    data: DataSplits,
    cfg: TolariaConfig,
    tuner: StepTuner | None,
    *,
    steps: int = 8,
    seed_grad_scale: float | None = None,
    seed_lr: float | None = None,
    poison_at: int | None = None,
) -> tuple[dict[str, torch.Tensor], list[dict[str, float]], EmergencyPolicy]:
    """``steps`` steps of a trainee (with a blending seed in blocks.1 when ``seed_grad_scale`` is given, its gradient
    multiplied by it, learning at ``seed_lr`` when given); the final weights, each step's per-group gradient norms as
    the optimizer saw them, the policy."""
    trainee = build_trainee(cfg, data, (), CPU)
    if seed_grad_scale is not None:
        module = seed_module()
        for p in module.parameters():
            p.register_hook(lambda g, scale=seed_grad_scale: g * scale)  # type: ignore[no-untyped-call]  # torch leaves it unannotated
        op = SeedOp(
            kind="attach", slot="blocks.1", seed_id="s", stage=SeedLifecycleStage.BLENDING, learning_rate=seed_lr
        )
        assert BoundaryApplier(trainee).apply(op, step=0, take_module=lambda _: module).applied
    policy = EmergencyPolicy(cfg, run_id="t", clock=MonotonicClock(), sink=RecordingSink())
    stepper = Stepper(compile=False, batch_hook=None, policy=policy)
    stepper.bind(trainee, data.train, tuner, classes=data.num_classes)
    norms: list[dict[str, float]] = []

    def hook(optimizer: torch.optim.Optimizer, _args: object, _kwargs: object) -> None:
        norms.append(
            {
                str(g["name"]): torch.linalg.vector_norm(
                    torch.stack([p.grad.norm() for p in g["params"] if p.grad is not None])
                ).item()
                for g in optimizer.param_groups
            }
        )

    stats = IntervalStats()
    batches: Iterator[tuple[int, TensorPair]] = iter_batches(data.train, batch_plan(cfg, data), 0, 0)
    handle = register_optimizer_step_pre_hook(hook)
    try:
        for step in range(steps):
            _, batch = next(batches)
            if step == poison_at:
                batch = TensorPair(x=torch.full_like(batch.x, math.nan), y=batch.y)
            assert stepper.step(batch, 0.0, stats, step) is Action.CONTINUE
    finally:
        handle.remove()
    return weights_of(trainee.model), norms, policy


def weights_of(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)}


def test_clipping_bounds_each_groups_norm_on_its_own(data: DataSplits) -> None:
    cfg = config(grad_clip_norm=0.05)
    tuner = StepTuner.for_config(cfg, 32)
    assert tuner is not None
    assert tuner.schedule is None  # clipping alone: no rate is written
    _, norms, _ = stepper_run(data, cfg, tuner, seed_grad_scale=100.0)
    assert len(norms) == 8
    assert all(n <= 0.05 * (1 + 1e-5) for step in norms for n in step.values())
    # Clipping was active for each group (at the bound), not merely below it.
    for group in ("host", "seed:s"):
        assert any(step[group] == pytest.approx(0.05, rel=1e-4) for step in norms), group


def test_a_seeds_gradient_size_leaves_the_hosts_clipped_update_unchanged(data: DataSplits) -> None:
    """One norm over host and seed together would scale the host's step down with a seed's large gradient: each
    group is clipped by its own norm, so the host trains exactly as with a tame seed. (The seed learns at rate 0 in
    both runs, so its output, and through it the host's gradient, is the same: only its gradient's size differs.)"""
    cfg = config(grad_clip_norm=0.05, optimizer="sgd", momentum=0.0)
    tuner = StepTuner.for_config(cfg, 32)
    tame, tame_norms, _ = stepper_run(data, cfg, tuner, seed_grad_scale=1.0, seed_lr=0.0)
    wild, wild_norms, _ = stepper_run(data, cfg, tuner, seed_grad_scale=1000.0, seed_lr=0.0)
    host = [k for k in tame if ".seed." not in k]
    assert host
    for key in host:
        assert torch.equal(tame[key], wild[key]), key
    # The host group was clipped in both runs (a shared norm, 1000 times larger in the wild run, would have cut its
    # step 1000-fold), and the seed's own update stayed bounded.
    assert any(step["host"] == pytest.approx(0.05, rel=1e-4) for step in tame_norms)
    assert [s["host"] for s in tame_norms] == [s["host"] for s in wild_norms]
    assert all(s["seed:s"] <= 0.05 * (1 + 1e-5) for s in wild_norms)


def test_a_non_finite_gradient_skips_the_step_under_clipping_as_without_it(data: DataSplits) -> None:
    cfg = config(grad_clip_norm=0.05, lr_schedule="linear")
    tuner = StepTuner.for_config(cfg, 32)
    poisoned, norms, policy = stepper_run(data, cfg, tuner, steps=3, poison_at=2)
    clean, _, _ = stepper_run(data, cfg, tuner, steps=2)
    assert policy.skipped_steps == 1
    assert len(norms) == 2  # the optimizer never stepped on the NaN gradients
    assert_bitwise(poisoned, clean)  # weights and buffers (BatchNorm's statistics) as before the skipped step


def test_the_defaults_take_the_plain_step_with_no_norm_and_no_rate_written(
    data: DataSplits, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert StepTuner.for_config(config(), 32) is None
    assert StepTuner.for_config(config(lr_schedule="constant", warmup_steps=0), 32) is None

    def forbidden(*_args: object, **_kwargs: object) -> torch.Tensor:
        raise AssertionError("the default step computed a gradient norm")

    monkeypatch.setattr(torch.nn.utils, "get_total_norm", forbidden)
    writes: list[object] = []

    class Watched(dict[str, object]):
        def __setitem__(self, key: str, value: object) -> None:
            writes.append((key, value))
            super().__setitem__(key, value)

    loop: TrainingLoop

    def watch(attempt: int, batch: TensorPair) -> TensorPair:
        if attempt == 0:
            optimizer = loop.trainee.optimizer
            optimizer.param_groups[:] = [Watched(g) for g in optimizer.param_groups]
        return batch

    loop = make_loop(config(epochs=1), data, hook=watch)
    assert loop.run().status == "completed"
    assert writes == []


def test_a_tuned_step_with_nothing_to_do_trains_bitwise_as_the_plain_step(data: DataSplits) -> None:
    """Clipping at a bound no gradient reaches and a factor of 1: the tuned path changes no bit of any figure."""
    plain = make_loop(config(), data)
    plain_result = plain.run()
    neutral = make_loop(config(grad_clip_norm=1e30), data)
    neutral_result = neutral.run()
    assert_bitwise(weights(plain), weights(neutral))
    assert neutral_result.figures == plain_result.figures


def test_a_stopped_run_with_schedule_warmup_and_clipping_resumes_bitwise(data: DataSplits, tmp_path: Path) -> None:
    cfg = config(epochs=3, lr_schedule="cosine", warmup_steps=10, grad_clip_norm=0.05, lr_min_factor=0.05)
    straight = make_loop(cfg, data, tmp_path / "a")
    assert straight.run().status == "completed"
    inbox = PlanInbox()

    def stop_mid_epoch(attempt: int, batch: TensorPair) -> TensorPair:
        if attempt == 27:  # in epoch 3 of 3 (13 batches an epoch)
            inbox.request_stop("test")
        return batch

    first = make_loop(cfg, data, tmp_path / "b", inbox=inbox, hook=stop_mid_epoch)
    assert first.run().status == "stopped"
    assert read_manifest(tmp_path / "b")[-1].global_step == 28
    resumed = make_loop(cfg, data, tmp_path / "b", resume=True)
    result = resumed.run()
    assert result.status == "completed"
    assert result.figures.resumed_from_step == 28
    assert_bitwise(weights(straight), weights(resumed))
    # The schedule did change training (else this test would prove nothing about it).
    plain = make_loop(config(epochs=3), data)
    plain.run()
    assert not all(torch.equal(a, b) for a, b in zip(weights(plain).values(), weights(straight).values(), strict=True))
