"""A compiled forward follows every slot's lifecycle: a mode change in any slot is traced anew.

Any slot, not only the first, so compiled training matches eager training step by step (dynamo alone guarded only
blocks.0's mode and silently reused a graph traced with blocks.1 still in TRAINING). The compile uses dynamo's "eager"
backend: the stale graph is dynamo's guards' doing, not the backend's, and inductor would take seconds per recompile on
a CPU."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import pytest
import structlog
import torch
from torch import nn

from actors.tolaria.build import batch_plan, build_trainee, load_data
from actors.tolaria.emergencies import Action, EmergencyPolicy
from actors.tolaria.stepper import Stepper
from actors.tolaria.telemetry import IntervalStats
from esper.nn.data_batches import iter_batches
from esper.nn.slots import SlotMode
from esper.runtime.clock import MonotonicClock
from esper.runtime.events import RecordingSink
from schemas.config import TolariaConfig

if TYPE_CHECKING:
    from actors.tolaria.build import Trainee
    from esper.nn.data import DataSplits

pytestmark = pytest.mark.timeout(120)

CONFIG = TolariaConfig(epochs=1, dataset_samples=600, batch_size=25)


class Scale(nn.Module):
    """A seed that maps a block's output to its own shape: a learnt per-element gain."""

    def __init__(self) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.tensor(1.5))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h * self.gain


def change(trainee: Trainee, step: int) -> None:
    """The lifecycle changes the loop would apply at step boundaries: blocks.0 grows and blends, then blocks.1 does
    the same while blocks.0 stays BLENDING (the change dynamo missed), then blocks.2 trains."""
    slots = trainee.slots
    if step == 1:
        slots["blocks.0"].attach(Scale(), seed_id="s0")
    elif step == 3:
        slots["blocks.0"].set_mode(SlotMode.BLENDING)
    elif step == 5:
        slots["blocks.1"].attach(Scale(), seed_id="s1")
    elif step == 7:
        slots["blocks.1"].set_mode(SlotMode.BLENDING)
    elif step == 9:
        slots["blocks.2"].attach(Scale(), seed_id="s2")


def train(data: DataSplits, *, compile: bool, steps: int = 11) -> list[torch.Tensor]:
    """``steps`` steps with the lifecycle changes above; the model's logits on a fixed batch after every step."""
    torch.manual_seed(0)
    trainee = build_trainee(CONFIG, data, (), torch.device("cpu"))
    assert {"blocks.0", "blocks.1", "blocks.2"} <= set(trainee.slots)
    policy = EmergencyPolicy(CONFIG, run_id="t", clock=MonotonicClock(), sink=RecordingSink())
    stepper = Stepper(compile=compile, batch_hook=None, policy=policy)
    stepper.bind(trainee, data.train, classes=data.num_classes)
    stats = IntervalStats()
    batches = iter_batches(data.train, batch_plan(CONFIG, data), 0, 0)
    probe = data.train.x[:16]
    logits: list[torch.Tensor] = []
    for step in range(steps):
        change(trainee, step)
        # Seeds join the optimizer as the loop's graft would add them.
        known = {id(p) for group in trainee.optimizer.param_groups for p in group["params"]}
        fresh = [(n, p) for n, p in trainee.model.named_parameters() if id(p) not in known]
        if fresh:
            trainee.optimizer.add_param_group({"params": [p for _, p in fresh], "param_names": [n for n, _ in fresh]})
        _, batch = next(batches)
        assert stepper.step(batch, 0.0, stats, step) is Action.CONTINUE
        with torch.no_grad():
            logits.append(trainee.model(probe).clone())
    return logits


@pytest.fixture(scope="module")
def data() -> DataSplits:
    return load_data(CONFIG)


@pytest.mark.slow
def test_compiled_training_follows_every_slots_mode_changes_as_eager_does(
    data: DataSplits, monkeypatch: pytest.MonkeyPatch
) -> None:
    eager = train(data, compile=False)
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))
    torch.compiler.reset()
    with structlog.testing.capture_logs() as logs:
        compiled = train(data, compile=True)
    for step, (a, b) in enumerate(zip(eager, compiled, strict=True)):
        assert (a - b).abs().max().item() <= 1e-5, f"step {step}"
    # One info line per compile, each with its seconds: the first trace and one per lifecycle change.
    compiles = [e for e in logs if e["event"] == "tolaria.compiled"]
    assert len(compiles) >= 6
    assert all(isinstance(e["seconds"], float) and e["seconds"] >= 0 for e in compiles)


def test_a_missing_cxx_compiler_is_reported_in_one_line_with_its_remedy(
    data: DataSplits, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_cxx(model: nn.Module) -> object:
        def forward(x: torch.Tensor) -> torch.Tensor:
            raise RuntimeError(
                "InvalidCxxCompiler: No working C++ compiler found in torch._inductor.config.cpp.cxx: (None, 'g++')"
                "\n\nSet TORCHDYNAMO_VERBOSE=1 for the internal stack trace (please do this especially if you're "
                "reporting a bug to PyTorch)."
            )

        return forward

    monkeypatch.setattr(torch, "compile", no_cxx)
    with structlog.testing.capture_logs() as logs:
        train(data, compile=True, steps=2)
    (fallback,) = [e for e in logs if e["event"] == "tolaria.compile_runtime_fallback"]
    assert fallback["error"] == (
        "RuntimeError: InvalidCxxCompiler: No working C++ compiler found in torch._inductor.config.cpp.cxx: "
        "(None, 'g++') (install g++ or set CXX)"
    )
