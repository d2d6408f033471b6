"""Tolaria's step: a failed compile falls back to eager; a skipped non-finite step keeps the buffers.

With torch.compile on, a compile that fails at once or at run time falls back to eager and trains exactly as an eager
step would (torch.compile itself is replaced here: its real failures depend on the toolchain); a skipped non-finite step
leaves the model's buffers as they were."""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

import pytest
import structlog
import torch

from actors.tolaria.build import batch_plan, build_trainee, load_data
from actors.tolaria.emergencies import Action, EmergencyPolicy
from actors.tolaria.stepper import Stepper
from actors.tolaria.telemetry import IntervalStats
from esper.nn.data_batches import iter_batches
from esper.runtime.clock import MonotonicClock
from esper.runtime.events import RecordingSink
from schemas.config import TolariaConfig

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from actors.tolaria.build import Trainee
    from esper.nn.data import DataSplits, TensorPair

CONFIG = TolariaConfig(epochs=1, dataset_samples=600, batch_size=50)
STEPS = 6


@pytest.fixture(scope="module")
def data() -> DataSplits:
    return load_data(CONFIG)


def bound_stepper(
    data: DataSplits,
) -> tuple[Trainee, EmergencyPolicy, Stepper, IntervalStats, Iterator[tuple[int, TensorPair]]]:
    """An eager stepper bound to a fresh trainee, with its policy, statistics and the epoch's batches."""
    trainee = build_trainee(CONFIG, data, (), torch.device("cpu"))
    policy = EmergencyPolicy(CONFIG, run_id="t", clock=MonotonicClock(), sink=RecordingSink())
    stepper = Stepper(compile=False, batch_hook=None, policy=policy)
    stepper.bind(trainee, data.train, classes=data.num_classes)
    return trainee, policy, stepper, IntervalStats(), iter_batches(data.train, batch_plan(CONFIG, data), 0, 0)


def train(data: DataSplits, *, compile: bool) -> list[torch.Tensor]:
    """STEPS steps from the seeded start; the weights afterwards."""
    trainee = build_trainee(CONFIG, data, (), torch.device("cpu"))
    policy = EmergencyPolicy(CONFIG, run_id="t", clock=MonotonicClock(), sink=RecordingSink())
    stepper = Stepper(compile=compile, batch_hook=None, policy=policy)
    stepper.bind(trainee, data.train, classes=data.num_classes)
    stats = IntervalStats()
    batches = iter_batches(data.train, batch_plan(CONFIG, data), 0, 0)
    for step in range(STEPS):
        _, batch = next(batches)
        assert stepper.step(batch, 0.0, stats, step) is Action.CONTINUE
    return [p.detach().clone() for p in trainee.model.parameters()]


def failing_at_run_time(model: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    def forward(x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("inductor: no C++ compiler")

    return forward


def failing_at_once(model: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    raise RuntimeError("torch.compile is not supported here")


@pytest.mark.parametrize("compile_", [failing_at_run_time, failing_at_once], ids=["at run time", "at once"])
def test_a_failing_compile_trains_eagerly_exactly_as_eager_and_says_so(
    data: DataSplits, monkeypatch: pytest.MonkeyPatch, compile_: Callable[[torch.nn.Module], object]
) -> None:
    eager = train(data, compile=False)
    monkeypatch.setattr(torch, "compile", compile_)
    with structlog.testing.capture_logs() as logs:
        compiled = train(data, compile=True)
    fallbacks = [e for e in logs if e["event"] == "tolaria.compile_runtime_fallback"]
    assert len(fallbacks) == 1  # once: eager for the rest of the run
    assert "RuntimeError" in fallbacks[0]["error"]
    assert all(torch.equal(a, b) for a, b in zip(eager, compiled, strict=True))


def test_a_working_compiled_forward_is_used(data: DataSplits, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []

    def counting(model: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
        def forward(x: torch.Tensor) -> torch.Tensor:
            calls.append(x.shape[0])
            return model(x)  # type: ignore[no-any-return]

        return forward

    eager = train(data, compile=False)
    monkeypatch.setattr(torch, "compile", counting)
    compiled = train(data, compile=True)
    assert calls == [CONFIG.batch_size] * STEPS
    assert all(torch.equal(a, b) for a, b in zip(eager, compiled, strict=True))


def test_a_skipped_non_finite_step_leaves_the_batchnorm_statistics_as_they_were(data: DataSplits) -> None:
    """The forward of a step that is then skipped had already updated BatchNorm's running statistics from the NaN
    batch: every later validation loss was NaN, for the rest of the run, while the run ended with exit 0."""
    trainee, policy, stepper, stats, batches = bound_stepper(data)
    _, batch = next(batches)
    assert stepper.step(batch, 0.0, stats, 0) is Action.CONTINUE
    before = {name: b.clone() for name, b in trainee.model.named_buffers() if "norm" in name}
    assert {n.rsplit(".", 1)[1] for n in before} == {"running_mean", "running_var", "num_batches_tracked"}
    _, batch = next(batches)
    poisoned = type(batch)(x=torch.full_like(batch.x, float("nan")), y=batch.y)
    assert stepper.step(poisoned, 0.0, stats, 1) is Action.CONTINUE  # skipped: an L1 notice
    assert policy.skipped_steps == 1
    after = dict(trainee.model.named_buffers())
    for name, value in before.items():
        assert torch.equal(after[name], value), name
    _, batch = next(batches)
    assert stepper.step(batch, 0.0, stats, 2) is Action.CONTINUE
    trainee.model.eval()
    with torch.no_grad():
        assert torch.isfinite(trainee.model(data.val.x)).all()


def test_the_live_model_stays_saveable_while_the_buffers_are_guarded(data: DataSplits) -> None:
    """The guard moves the norm layers' statistics into flat tensors; one byte storage aliased as float and int64
    made ``torch.save`` of the live model's state (a user's hook, a host's own code) refuse it."""
    trainee, _, stepper, stats, batches = bound_stepper(data)
    _, batch = next(batches)
    assert stepper.step(batch, 0.0, stats, 0) is Action.CONTINUE
    buffer = io.BytesIO()
    torch.save(trainee.model.state_dict(), buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)
    for name, value in trainee.model.state_dict().items():
        assert torch.equal(loaded[name], value) if isinstance(value, torch.Tensor) else loaded[name] == value, name
