"""Tolaria's isolation monitor: every N steps, probe each live seed for gradient leaking into host parameters.

Runs on the train lane at a state packet (never inside a step). The probe (esper.nn.isolation) runs one forward pass on
a fixed micro-batch of validation data with the model in eval mode, so it consumes no RNG, moves no BatchNorm
statistic and accumulates nothing into ``.grad``: training is bitwise the same with the monitor on or off. Violations
are added to per-seed running totals, which the packet reports in each SeedState's ``isolation_violations``; Kasmina
charges every increase to the seed's isolation breaker. Each probe also reports the overlap of the last step's host
and seed gradients (dot, norms, cosine through a fixed count sketch) as an ``isolation_sketch`` event.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, final

import structlog

from esper.nn.isolation import gradient_sketch, probe_isolation
from schemas.domain_enums import TelemetryLevel
from schemas.telemetry import TelemetryEvent

if TYPE_CHECKING:
    from collections.abc import Callable

    import torch

    from actors.tolaria.build import Trainee
    from esper.nn.isolation import IsolationResult
    from schemas.base import Message, Record

_log = structlog.get_logger("actors.tolaria")

MICRO_BATCH = 8
EVENT = "isolation_violation"
SKETCH_EVENT = "isolation_sketch"


@final
class IsolationMonitor:
    """Probes at most once every ``every_steps`` optimizer steps; ``every_steps`` 0 turns it off."""

    def __init__(self, every_steps: int, micro_batch: torch.Tensor | None) -> None:
        if every_steps < 0:
            raise ValueError(f"every_steps must be >= 0, got {every_steps}")
        self._every = every_steps
        self._x = micro_batch
        self._last_probe_step: int | None = None
        self.probes = 0

    def maybe_probe(self, trainee: Trainee, step: int, emit: Callable[[Message | Record], None]) -> None:
        """Probe if the interval has passed since the last probe; record and report any violation."""
        if self._every == 0 or self._x is None:
            return
        if self._last_probe_step is not None and step - self._last_probe_step < self._every:
            return
        self._last_probe_step = step
        model = trainee.model
        was_training = model.training
        x = self._x
        model.eval()
        try:
            results = probe_isolation(model, lambda: model(x))
        finally:
            model.train(was_training)
        self.probes += 1
        for result in results:
            self._record(trainee, result, step, emit)
            self._sketch(trainee, result, step, emit)

    @staticmethod
    def _sketch(trainee: Trainee, result: IsolationResult, step: int, emit: Callable[[Message | Record], None]) -> None:
        # The last step's gradients, host against this seed, through one fixed count sketch (telemetry, no verdict).
        seed = trainee.slots[result.slot].seed_module
        if seed is None or result.seed_id is None:
            return
        seed_ids = {id(p) for p in seed.parameters()}
        host = [p.grad for p in trainee.model.parameters() if id(p) not in seed_ids]
        sketch = gradient_sketch(host, [p.grad for p in seed.parameters()])
        emit(
            TelemetryEvent(
                name=SKETCH_EVENT,
                level=TelemetryLevel.INFO,
                attributes={
                    "slot": result.slot,
                    "seed_id": result.seed_id,
                    "step": float(step),
                    "dot": sketch.dot,
                    "host_norm": sketch.host_norm,
                    "seed_norm": sketch.seed_norm,
                    "cosine": sketch.cosine,
                },
            )
        )

    @staticmethod
    def _record(trainee: Trainee, result: IsolationResult, step: int, emit: Callable[[Message | Record], None]) -> None:
        if result.isolated or result.seed_id is None:
            return
        totals = trainee.isolation_violations
        totals[result.seed_id] = totals.get(result.seed_id, 0) + result.violations
        _log.critical(EVENT, slot=result.slot, seed_id=result.seed_id, step=step, offenders=list(result.offenders))
        emit(
            TelemetryEvent(
                name=EVENT,
                level=TelemetryLevel.CRITICAL,
                description=f"seed {result.seed_id} in slot {result.slot} put gradient on {result.violations} host "
                f"parameter(s) at step {step}",
                attributes={
                    "slot": result.slot,
                    "seed_id": result.seed_id,
                    "violations": float(result.violations),
                    "max_abs_host_grad": result.max_abs_host_grad,
                },
            )
        )


def micro_batch(x: torch.Tensor, device: torch.device) -> torch.Tensor | None:
    """The first MICRO_BATCH rows of ``x`` on ``device`` (None for an empty split)."""
    if x.shape[0] == 0:
        return None
    return x[:MICRO_BATCH].to(device)
