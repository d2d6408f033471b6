"""Evidence the lifecycle gates judge: input records from the actor, bounded windows of steps, and frozen snapshots."""

from __future__ import annotations

import math
from collections import deque
from typing import final

import msgspec

from schemas.base import Record
from schemas.enums import BreakerState

# ---------------------------------------------------------------- inputs (built by the Kasmina actor)


class ParameterBound(Record, frozen=True):
    """The inclusive range Karn allows for one blueprint parameter."""

    name: str
    min_value: float
    max_value: float


class BlueprintFacts(Record, frozen=True):
    """What Karn and Urza say about a blueprint, as G0 needs it.

    Attributes:
        known: Karn's catalogue has the blueprint.
        stored: Urza holds a verified artifact for it.
        estimated_memory_bytes: device memory the seed is expected to add.
    """

    blueprint_id: str
    known: bool
    stored: bool
    high_risk: bool = False
    quarantine_only: bool = False
    approval_required: bool = False
    parameter_bounds: tuple[ParameterBound, ...] = ()
    estimated_memory_bytes: int = 0


class GerminationRequest(Record, frozen=True):
    """A GERMINATE command reduced to what G0 judges: the seed, its blueprint and the requested parameters.

    Attributes:
        blend_ramp_steps: the steps of the seed's alpha ramp (its BlendConfig), which G3's patience waits out.
    """

    seed_id: str
    blueprint: BlueprintFacts
    parameters: dict[str, float] = msgspec.field(default_factory=dict)
    approval_recorded: bool = False
    blend_ramp_steps: int = 0


class StepEvidence(Record, frozen=True):
    """What one optimizer step showed about one seed; every measurement is optional.

    Attributes:
        step: the optimizer step the measurements come from (steps completed, counted from 0).
        seed_grad_norm: L2 norm of the seed's parameter gradients at this step.
        seed_loss: the loss the seed was trained on at this step.
        kernel_latency_ms: time spent in the seed's kernel at this step, in milliseconds.
        alpha: the blend weight after this step's advance, in [0, 1].
        clamped_fraction: fraction of blend weights that were clamped at this step, in [0, 1].
        isolation_violations: new isolation violations the monitor counted at this step.
        output_contract_violations: new violations of the slot's output contract (shape, dtype, device).
        critical_events: new CRITICAL events attributed to this seed.
        fallback: the seed is running a fallback kernel rather than its verified artifact.
        step_latency_growth: (step time with the seed / host-only step time) - 1, as a fraction.
        memory_growth_bytes: device memory added by the seed so far.
    """

    seed_id: str
    step: int
    seed_grad_norm: float | None = None
    seed_loss: float | None = None
    kernel_latency_ms: float | None = None
    alpha: float | None = None
    clamped_fraction: float | None = None
    isolation_violations: int = 0
    output_contract_violations: int = 0
    critical_events: int = 0
    fallback: bool = False
    step_latency_growth: float | None = None
    memory_growth_bytes: int | None = None


class ValidationEvidence(Record, frozen=True):
    """One validation batch measured twice: with the slot at alpha=0 (host only) and with the seed.

    The counterfactual contribution is ``loss_without_seed - loss_with_seed``: positive when the seed helps.
    """

    seed_id: str
    step: int
    loss_without_seed: float
    loss_with_seed: float


class AttachmentEvidence(Record, frozen=True):
    """The result of attaching a seed's kernel and probing it once, as G1 judges it.

    Attributes:
        artifact_verified: the module was loaded from an artifact whose SHA-256 Urza verified, or built from Karn's
            catalogue by the blueprint's own builder.
        artifact_sha256: the artifact's SHA-256; None when the module was built from the catalogue.
        fallback: the module is a fallback, not the requested blueprint.
        interface_matches: shape, dtype and device of the seed's output match the slot.
        probe_seed_grad_norm: L2 norm of the seed's gradients from the probe forward/backward.
        probe_host_grad_max_abs: largest absolute gradient the probe put on host parameters (must be 0).
        isolation_breaker: state of the seed's isolation breaker.
        params_in_optimizer: the seed's parameters are registered in their own optimizer param group.
    """

    seed_id: str
    artifact_verified: bool
    fallback: bool
    interface_matches: bool
    probe_seed_grad_norm: float
    probe_host_grad_max_abs: float
    isolation_breaker: BreakerState
    params_in_optimizer: bool
    artifact_sha256: str | None = None


class ResetEvidence(Record, frozen=True):
    """What the actor found when it cleared a slot, as G5 judges it."""

    kernel_attached: bool
    parameters_held: bool
    optimizer_state_held: bool
    prefetch_pending: bool
    cache_references: int


# ---------------------------------------------------------------- windows and snapshots


class WindowStats(Record, frozen=True):
    """Summary of a window of scalar samples; mean, variance, minimum and maximum cover the finite samples only.

    Attributes:
        count: samples in the window, finite or not.
        nonfinite: samples that were NaN or infinite.
        variance: population variance of the finite samples.
        last_step: step of the newest sample, or None for an empty window.
    """

    count: int = 0
    nonfinite: int = 0
    mean: float = 0.0
    variance: float = 0.0
    minimum: float = 0.0
    maximum: float = 0.0
    last_step: int | None = None


@final
class ScalarWindow:
    """The newest ``capacity`` samples of one scalar, each tagged with its step. Not thread-safe; pure Python."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be a positive number of samples, got {capacity}")
        self._values: deque[float] = deque(maxlen=capacity)
        self._last_step: int | None = None

    @property
    def capacity(self) -> int:
        maxlen = self._values.maxlen
        assert maxlen is not None  # set in __init__
        return maxlen

    def __len__(self) -> int:
        return len(self._values)

    def append(self, step: int, value: float) -> None:
        self._values.append(float(value))
        self._last_step = step

    def clear(self) -> None:
        self._values.clear()
        self._last_step = None

    def stats(self) -> WindowStats:
        finite = [v for v in self._values if math.isfinite(v)]
        if not finite:
            return WindowStats(count=len(self._values), nonfinite=len(self._values), last_step=self._last_step)
        # fsum keeps the figures independent of summation order, so replays compare bit for bit.
        mean = math.fsum(finite) / len(finite)
        variance = math.fsum((v - mean) ** 2 for v in finite) / len(finite)
        return WindowStats(
            count=len(self._values),
            nonfinite=len(self._values) - len(finite),
            mean=mean,
            variance=variance,
            minimum=min(finite),
            maximum=max(finite),
            last_step=self._last_step,
        )


class EvidenceSnapshot(Record, frozen=True):
    """A frozen view of one seed's evidence: windows over its current stage plus lifetime counters.

    Attributes:
        steps_recorded: StepEvidence records accepted in the current stage.
        contribution: counterfactual validation contributions (loss without seed - loss with seed).
        alpha: the newest alpha reported in the current stage, or None.
        isolation_violations_in_stage / output_contract_violations_in_stage: counted since the stage began.
        isolation_violations_total / critical_events_total: counted since germination.
        fallback: a fallback kernel was reported at any time since germination.
        step_latency_growth / memory_growth_bytes: the newest values reported in the current stage.
        attachment: the attachment probe, once reported.
    """

    steps_recorded: int = 0
    grad_norm: WindowStats = msgspec.field(default_factory=WindowStats)
    loss: WindowStats = msgspec.field(default_factory=WindowStats)
    kernel_latency_ms: WindowStats = msgspec.field(default_factory=WindowStats)
    clamped_fraction: WindowStats = msgspec.field(default_factory=WindowStats)
    contribution: WindowStats = msgspec.field(default_factory=WindowStats)
    alpha: float | None = None
    isolation_violations_in_stage: int = 0
    output_contract_violations_in_stage: int = 0
    isolation_violations_total: int = 0
    critical_events_total: int = 0
    fallback: bool = False
    step_latency_growth: float | None = None
    memory_growth_bytes: int | None = None
    attachment: AttachmentEvidence | None = None

    @property
    def cleared(self) -> bool:
        """True when nothing at all has been recorded: every window empty, every counter zero, no flags."""
        return self == EvidenceSnapshot()


@final
class SeedEvidence:
    """Mutable evidence for one seed: per-stage windows (restarted by ``enter_stage``) and lifetime counters.

    Runs on whatever thread owns the lifecycle (the Kasmina actor's loop); never blocks, not thread-safe.
    """

    def __init__(self, *, stability_window_steps: int, clamp_window_steps: int, validation_window_batches: int) -> None:
        self._grad_norm = ScalarWindow(stability_window_steps)
        self._loss = ScalarWindow(stability_window_steps)
        self._kernel_latency_ms = ScalarWindow(stability_window_steps)
        self._clamped = ScalarWindow(clamp_window_steps)
        self._contribution = ScalarWindow(validation_window_batches)
        self._steps_recorded = 0
        self._alpha: float | None = None
        self._isolation_in_stage = 0
        self._contract_in_stage = 0
        self._step_latency_growth: float | None = None
        self._memory_growth_bytes: int | None = None
        self._isolation_total = 0
        self._critical_total = 0
        self._fallback = False
        self._attachment: AttachmentEvidence | None = None

    def enter_stage(self) -> None:
        """Start fresh windows for a new stage; lifetime counters, the fallback flag and the attachment stay."""
        for window in (self._grad_norm, self._loss, self._kernel_latency_ms, self._clamped, self._contribution):
            window.clear()
        self._steps_recorded = 0
        self._alpha = None
        self._isolation_in_stage = 0
        self._contract_in_stage = 0
        self._step_latency_growth = None
        self._memory_growth_bytes = None

    def add_step(self, evidence: StepEvidence) -> None:
        step = evidence.step
        self._steps_recorded += 1
        if evidence.seed_grad_norm is not None:
            self._grad_norm.append(step, evidence.seed_grad_norm)
        if evidence.seed_loss is not None:
            self._loss.append(step, evidence.seed_loss)
        if evidence.kernel_latency_ms is not None:
            self._kernel_latency_ms.append(step, evidence.kernel_latency_ms)
        if evidence.clamped_fraction is not None:
            self._clamped.append(step, evidence.clamped_fraction)
        if evidence.alpha is not None:
            self._alpha = evidence.alpha
        if evidence.step_latency_growth is not None:
            self._step_latency_growth = evidence.step_latency_growth
        if evidence.memory_growth_bytes is not None:
            self._memory_growth_bytes = evidence.memory_growth_bytes
        self._isolation_in_stage += evidence.isolation_violations
        self._isolation_total += evidence.isolation_violations
        self._contract_in_stage += evidence.output_contract_violations
        self._critical_total += evidence.critical_events
        self._fallback = self._fallback or evidence.fallback

    def add_validation(self, evidence: ValidationEvidence) -> None:
        self._contribution.append(evidence.step, evidence.loss_without_seed - evidence.loss_with_seed)

    def set_attachment(self, evidence: AttachmentEvidence) -> None:
        self._attachment = evidence
        self._fallback = self._fallback or evidence.fallback

    def snapshot(self) -> EvidenceSnapshot:
        return EvidenceSnapshot(
            steps_recorded=self._steps_recorded,
            grad_norm=self._grad_norm.stats(),
            loss=self._loss.stats(),
            kernel_latency_ms=self._kernel_latency_ms.stats(),
            clamped_fraction=self._clamped.stats(),
            contribution=self._contribution.stats(),
            alpha=self._alpha,
            isolation_violations_in_stage=self._isolation_in_stage,
            output_contract_violations_in_stage=self._contract_in_stage,
            isolation_violations_total=self._isolation_total,
            critical_events_total=self._critical_total,
            fallback=self._fallback,
            step_latency_growth=self._step_latency_growth,
            memory_growth_bytes=self._memory_growth_bytes,
            attachment=self._attachment,
        )
