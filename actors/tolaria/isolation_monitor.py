"""Tolaria's isolation monitor: every N steps, probe each TRAINING or BLENDING seed for gradient leaking into the host.

Runs on the train lane at a state packet (never inside a step). The probe (esper.nn.isolation) runs one forward pass on
a fixed micro-batch of validation data with the model in eval mode, so it consumes no RNG, moves no BatchNorm
statistic and accumulates nothing into ``.grad``: training is bitwise the same with the monitor on or off. Violations
are added to per-seed running totals, which the packet reports in each SeedState's ``isolation_violations`` (and
the session's total in the packet's own); Kasmina charges every increase to the seed's isolation breaker. The totals
are part of the training state (``COUNTER`` in a capture's counters): a resume or rollback to a state takes back the
totals the packet of its step reported, which Kasmina's journal, cut at that step, holds as each seed's charged count.

The overlap of host and seed gradients is measured inside training itself: after each probe the monitor schedules
the next step (``sketch_step``); the loop arms backward hooks on the host and live-seed parameters for that one step
(``arm``/``disarm``), the hooks fold the step's gradients into preallocated count-sketch buffers without reading the
device, and the next packet reads them (one device read) into an ``isolation_sketch`` event per seed (dot, norms,
cosine).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Annotated, final

import msgspec
import structlog

from esper.nn.grad_sketch import GradientSketcher
from esper.nn.isolation import MONITORED_MODES, host_parameters_of, live_seed_slots, probe_isolation
from schemas.domain_enums import TelemetryLevel
from schemas.telemetry import TelemetryEvent

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    import torch

    from actors.tolaria.build import Trainee
    from esper.nn.isolation import IsolationResult
    from schemas.base import Message, Record

_log = structlog.get_logger("actors.tolaria")

MICRO_BATCH = 8
EVENT = "isolation_violation"
SKETCH_EVENT = "isolation_sketch"
COUNTER = "isolation_violations"
"""The capture counter holding each seed's total, as a JSON object of seed id -> violations."""

SavedTotals = dict[str, Annotated[int, msgspec.Meta(ge=0)]]

LAST_PROBE = "isolation_last_probe"
"""The capture counter holding the step of the monitor's last probe (absent: none yet). The monitor probes at most
once every N steps since its last probe: a restored monitor that forgot it probed at the first packet, so a resumed
run probed (and counted a leaking seed's violations) at other steps than the uninterrupted one."""

SKETCH_STEP = "isolation_sketch_step"
"""The capture counter holding the step a probe scheduled its gradient sketch for (-1: none): a state captured
between a probe and the step it sketches resumes with that sketch still to take."""


@final
class IsolationMonitor:
    """Probes at most once every ``every_steps`` optimizer steps; ``every_steps`` 0 turns it off."""

    def __init__(self, every_steps: int, micro_batch: torch.Tensor | None) -> None:
        if every_steps < 0:
            raise ValueError(f"every_steps must be >= 0, got {every_steps}")
        self._every = every_steps
        self._x = micro_batch
        self._last_probe_step: int | None = None
        self.sketch_step = -1  # the global step whose backward is sketched next (-1: none scheduled)
        self._sketcher = GradientSketcher()
        self._sketched: tuple[int, dict[str, str]] | None = None  # (step, slot -> seed id) awaiting a read

    @property
    def last_probe_step(self) -> int | None:
        """The step of the last probe (or of the last packet the interval let probe with nothing to probe)."""
        return self._last_probe_step

    def restore_schedule(self, counters: Mapping[str, object]) -> None:
        """Take the last probe's step and the scheduled sketch's back from a restored state's ``counters``
        (LAST_PROBE, SKETCH_STEP; absent in a state an earlier version wrote: the next packet probes, as it did)."""
        saved = counters.get(LAST_PROBE)
        self._last_probe_step = saved if isinstance(saved, int) and not isinstance(saved, bool) else None
        sketch = counters.get(SKETCH_STEP)
        self.sketch_step = sketch if isinstance(sketch, int) and not isinstance(sketch, bool) else -1

    def arm(self, trainee: Trainee, step: int) -> None:
        """Hook the host's and each live seed's parameters for the step about to run (called between steps)."""
        self.sketch_step = -1
        live = live_seed_slots(trainee.model)
        seeds: dict[str, list[torch.Tensor]] = {}
        seed_ids: dict[str, str] = {}
        for name, slot in live.items():
            module = slot.seed_module
            if module is not None and slot.seed_id is not None and slot.mode in MONITORED_MODES:
                seeds[name] = list(module.parameters())
                seed_ids[name] = slot.seed_id
        if not seeds:
            return
        host = [param for _, param in host_parameters_of(trainee.model, live.values())]
        self._sketcher.arm(host, seeds)
        self._sketched = (step, seed_ids)

    def disarm(self) -> None:
        self._sketcher.disarm()

    def maybe_probe(self, trainee: Trainee, step: int, emit: Callable[[Message | Record], None]) -> None:
        """Report a filled gradient sketch; probe if the interval has passed since the last probe."""
        if self._every == 0 or self._x is None:
            return
        self._report_sketch(emit)
        if self._last_probe_step is not None and step - self._last_probe_step < self._every:
            return
        self._last_probe_step = step
        if not any(slot.mode in MONITORED_MODES for slot in trainee.slots.values()):
            # Nothing to probe; skipping here saves two walks of the module tree (eval, train) per packet.
            return
        model = trainee.model
        was_training = model.training
        x = self._x
        model.eval()
        try:
            results = probe_isolation(model, lambda: model(x), modes=MONITORED_MODES)
        finally:
            model.train(was_training)
        for result in results:
            self._record(trainee, result, step, emit)
        if results:
            self.sketch_step = step

    def _report_sketch(self, emit: Callable[[Message | Record], None]) -> None:
        # Telemetry, no verdict: the sketched step's host gradient against each seed's, through one count sketch.
        if self._sketched is None or self._sketcher.armed or not self._sketcher.filled:
            return
        step, seed_ids = self._sketched
        self._sketched = None
        for slot, sketch in self._sketcher.read().items():
            figures = (sketch.dot, sketch.host_norm, sketch.seed_norm)
            if not all(math.isfinite(f) for f in figures):
                continue  # a skipped non-finite step: nothing worth reporting
            emit(
                TelemetryEvent(
                    name=SKETCH_EVENT,
                    level=TelemetryLevel.INFO,
                    attributes={
                        "slot": slot,
                        "seed_id": seed_ids[slot],
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


def export_totals(trainee: Trainee) -> str:
    """Each seed's total, as ``COUNTER`` holds it."""
    return msgspec.json.encode(dict(sorted(trainee.isolation_violations.items()))).decode()


def restore_totals(trainee: Trainee, counters: Mapping[str, object]) -> None:
    """Take each seed's total back from a restored state's ``counters`` (a state written before they were saved has
    none: every seed starts again at 0), keeping the session's total where it was: it counts what the monitor found
    in this session, the rolled-away steps' violations included, and never falls.

    Raises:
        msgspec.ValidationError / msgspec.DecodeError: the counter is malformed (checkpoint_check refuses such a file).
    """
    saved = counters.get(COUNTER)
    totals = msgspec.json.decode(saved, type=SavedTotals) if isinstance(saved, str) else {}
    trainee.violations_offset += sum(totals.values()) - sum(trainee.isolation_violations.values())
    trainee.isolation_violations = totals


def micro_batch(x: torch.Tensor, device: torch.device) -> torch.Tensor | None:
    """The first MICRO_BATCH rows of ``x`` on ``device`` (None for an empty split)."""
    if x.shape[0] == 0:
        return None
    return x[:MICRO_BATCH].to(device)
