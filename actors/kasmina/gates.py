"""Gates G0-G5: pure functions that judge a seed's evidence against thresholds and return a GateOutcome."""

from __future__ import annotations

import enum
import math
from typing import TYPE_CHECKING

import msgspec

from schemas.base import Record
from schemas.enums import BreakerState, SeedLifecycleGate, SeedLifecycleStage

if TYPE_CHECKING:
    from actors.kasmina.evidence import AttachmentEvidence, EvidenceSnapshot, GerminationRequest, ResetEvidence

_MiB = 1 << 20


class GateVerdict(enum.Enum):
    """What a gate decided: advance, keep waiting for evidence, or fail (which culls a seed that can be culled)."""

    PASSED = "passed"
    PENDING = "pending"
    FAILED = "failed"


class GateOutcome(Record, frozen=True):
    """One evaluation of one gate. ``reason`` is a short token (``embargoed``, ``loss_unstable``, ...).

    Attributes:
        attributes: the figures the gate looked at, as floats (flags as 0.0 / 1.0), for telemetry.
    """

    gate: SeedLifecycleGate
    verdict: GateVerdict
    reason: str
    attributes: dict[str, float] = msgspec.field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.verdict is GateVerdict.PASSED


class GateSettings(Record, frozen=True):
    """Gate thresholds; defaults follow REFERENCE.md sections 1 and 2 where it gives a figure.

    Attributes:
        max_seed_grad_norm: bound on any seed gradient norm (G1 probe, G2 window).
        stability_window_steps: size of the G2 loss / gradient / latency windows, in optimizer steps.
        max_loss_variance: G2 passes only when the windowed seed-loss variance is at most this.
        kernel_latency_budget_ms: G2 fails when the windowed mean kernel latency exceeds this, in milliseconds.
        clamp_window_steps / max_clamped_fraction: G3 fails when a full window's mean clamped fraction exceeds this.
        validation_window_batches / min_validation_batches: G4 judges up to this many batches, and needs at least
            the minimum before it passes.
        benefit_noise_sigmas: G4 needs mean contribution > sigmas x standard error of the mean.
        min_benefit: G4 needs mean contribution > this (in loss units).
        max_step_latency_growth: G4 fails when the step time grows by more than this fraction.
        max_memory_growth_bytes: G4 fails when the seed adds more device memory than this.
        max_active_seeds / seed_memory_budget_bytes: G0's seed-count and memory budgets.
        allow_high_risk: G0 admits HIGH_RISK blueprints only when set.
    """

    max_seed_grad_norm: float = 1000.0
    stability_window_steps: int = 10
    max_loss_variance: float = 0.1
    kernel_latency_budget_ms: float = 10.0
    clamp_window_steps: int = 10
    max_clamped_fraction: float = 0.5
    validation_window_batches: int = 32
    min_validation_batches: int = 8
    benefit_noise_sigmas: float = 2.0
    min_benefit: float = 0.0
    max_step_latency_growth: float = 0.10
    max_memory_growth_bytes: int = 256 * _MiB
    max_active_seeds: int = 4
    seed_memory_budget_bytes: int = 1024 * _MiB
    allow_high_risk: bool = False

    def __post_init__(self) -> None:
        for name in ("stability_window_steps", "clamp_window_steps", "validation_window_batches"):
            if getattr(self, name) < 1:
                raise ValueError(f"GateSettings.{name} must be >= 1, got {getattr(self, name)}")
        if not 1 <= self.min_validation_batches <= self.validation_window_batches:
            raise ValueError(
                f"GateSettings.min_validation_batches must be in [1, validation_window_batches="
                f"{self.validation_window_batches}], got {self.min_validation_batches}"
            )
        if self.max_active_seeds < 0:
            raise ValueError(f"GateSettings.max_active_seeds must be >= 0, got {self.max_active_seeds}")


class G0Context(Record, frozen=True):
    """The slot and budget facts G0 needs besides the request, taken by the lifecycle when the command arrives.

    Attributes:
        epoch: the current epoch; the slot is embargoed while epoch < embargo_until_epoch.
        active_seeds: seeds in GERMINATED..PROBATIONARY plus pending germinations, excluding this request.
        memory_in_use_bytes: estimated memory of those seeds.
    """

    slot_stage: SeedLifecycleStage
    germination_pending: bool
    retire_pending: bool
    embargo_until_epoch: int | None
    epoch: int
    active_seeds: int
    memory_in_use_bytes: int
    seed_ids_in_use: frozenset[str] = frozenset()


def _outcome(gate: SeedLifecycleGate, verdict: GateVerdict, reason: str, attrs: dict[str, float]) -> GateOutcome:
    return GateOutcome(gate=gate, verdict=verdict, reason=reason, attributes=attrs)


def evaluate_g0(request: GerminationRequest, context: G0Context, settings: GateSettings) -> GateOutcome:
    """G0_SANITY, guarding DORMANT -> GERMINATED: judged when the GERMINATE command arrives. Never PENDING."""
    gate = SeedLifecycleGate.G0_SANITY
    bp = request.blueprint
    attrs: dict[str, float] = {
        "epoch": float(context.epoch),
        "active_seeds": float(context.active_seeds),
        "memory_in_use_bytes": float(context.memory_in_use_bytes),
        "estimated_memory_bytes": float(bp.estimated_memory_bytes),
    }

    def fail(reason: str) -> GateOutcome:
        return _outcome(gate, GateVerdict.FAILED, reason, attrs)

    if context.embargo_until_epoch is not None:
        attrs["embargo_until_epoch"] = float(context.embargo_until_epoch)
        if context.epoch < context.embargo_until_epoch:
            return fail("embargoed")
    if context.germination_pending:
        return fail("germination_pending")
    if context.retire_pending:
        return fail("slot_retiring")
    if context.slot_stage is not SeedLifecycleStage.DORMANT:
        return fail("slot_occupied")
    if not request.seed_id:
        return fail("invalid_seed_id")
    if request.seed_id in context.seed_ids_in_use:
        return fail("duplicate_seed_id")
    if not bp.known:
        return fail("unknown_blueprint")
    if not bp.stored:
        return fail("blueprint_not_stored")
    if bp.quarantine_only:
        return fail("quarantine_only")
    if bp.high_risk and not settings.allow_high_risk:
        return fail("high_risk_disabled")
    if bp.approval_required and not request.approval_recorded:
        return fail("approval_missing")
    bounds = {b.name: b for b in bp.parameter_bounds}
    unknown = sorted(set(request.parameters) - set(bounds))
    if unknown:
        return fail(f"parameter_unknown:{unknown[0]}")
    for name, bound in bounds.items():
        if name not in request.parameters:
            return fail(f"parameter_missing:{name}")
        value = request.parameters[name]
        if not math.isfinite(value):
            return fail(f"parameter_not_finite:{name}")
        if not bound.min_value <= value <= bound.max_value:
            return fail(f"parameter_out_of_range:{name}")
    if context.active_seeds + 1 > settings.max_active_seeds:
        return fail("seed_budget")
    if context.memory_in_use_bytes + bp.estimated_memory_bytes > settings.seed_memory_budget_bytes:
        return fail("memory_budget")
    return _outcome(gate, GateVerdict.PASSED, "sane", attrs)


def evaluate_g1(attachment: AttachmentEvidence | None, settings: GateSettings) -> GateOutcome:
    """G1_GRADIENT_HEALTH, guarding GERMINATED -> TRAINING (and resume): judges the attachment probe."""
    gate = SeedLifecycleGate.G1_GRADIENT_HEALTH
    if attachment is None:
        return _outcome(gate, GateVerdict.PENDING, "awaiting_attachment", {})
    a = attachment
    attrs = {
        "artifact_verified": float(a.artifact_verified),
        "fallback": float(a.fallback),
        "probe_seed_grad_norm": a.probe_seed_grad_norm,
        "probe_host_grad_max_abs": a.probe_host_grad_max_abs,
        "breaker_closed": float(a.isolation_breaker is BreakerState.CLOSED),
        "params_in_optimizer": float(a.params_in_optimizer),
    }
    checks = (
        (a.fallback, "fallback"),
        (not a.artifact_verified, "unverified_artifact"),
        (not a.interface_matches, "interface_mismatch"),
        (not math.isfinite(a.probe_seed_grad_norm), "probe_grad_not_finite"),
        (a.probe_seed_grad_norm > settings.max_seed_grad_norm, "probe_grad_exceeded"),
        (a.probe_seed_grad_norm == 0.0, "probe_no_seed_grad"),
        # Any non-zero (or NaN) gradient on a host parameter breaks isolation.
        (not a.probe_host_grad_max_abs == 0.0, "host_grad_leak"),
        (a.isolation_breaker is not BreakerState.CLOSED, "isolation_breaker_open"),
        (not a.params_in_optimizer, "params_not_in_optimizer"),
    )
    for failed, reason in checks:
        if failed:
            return _outcome(gate, GateVerdict.FAILED, reason, attrs)
    return _outcome(gate, GateVerdict.PASSED, "healthy", attrs)


def evaluate_g2(evidence: EvidenceSnapshot, settings: GateSettings) -> GateOutcome:
    """G2_STABILITY, guarding TRAINING -> BLENDING: windowed seed loss, gradient norms and kernel latency.

    Hard failures (fallback, non-finite values, a gradient norm or latency over budget) fail at once; otherwise the
    gate waits until both windows are full and the loss variance is under the threshold.
    """
    gate = SeedLifecycleGate.G2_STABILITY
    loss, grad, lat = evidence.loss, evidence.grad_norm, evidence.kernel_latency_ms
    attrs = {
        "loss_samples": float(loss.count),
        "loss_variance": loss.variance,
        "grad_samples": float(grad.count),
        "grad_norm_max": grad.maximum,
        "latency_samples": float(lat.count),
        "latency_mean_ms": lat.mean,
        "window_steps": float(settings.stability_window_steps),
    }
    checks = (
        (evidence.fallback, "fallback"),
        (loss.nonfinite > 0, "loss_not_finite"),
        (grad.nonfinite > 0, "grad_not_finite"),
        (grad.maximum > settings.max_seed_grad_norm, "grad_norm_exceeded"),
        (lat.nonfinite > 0 or lat.mean > settings.kernel_latency_budget_ms, "latency_over_budget"),
    )
    for failed, reason in checks:
        if failed:
            return _outcome(gate, GateVerdict.FAILED, reason, attrs)
    if min(loss.count, grad.count) < settings.stability_window_steps:
        return _outcome(gate, GateVerdict.PENDING, "insufficient_evidence", attrs)
    if loss.variance > settings.max_loss_variance:
        return _outcome(gate, GateVerdict.PENDING, "loss_unstable", attrs)
    return _outcome(gate, GateVerdict.PASSED, "stable", attrs)


def evaluate_g3(evidence: EvidenceSnapshot, settings: GateSettings) -> GateOutcome:
    """G3_INTERFACE, guarding BLENDING -> SHADOWING: alpha at 1, no isolation or contract violation, no clamping."""
    gate = SeedLifecycleGate.G3_INTERFACE
    clamped = evidence.clamped_fraction
    alpha = evidence.alpha
    attrs = {
        "alpha": -1.0 if alpha is None else alpha,
        "isolation_violations": float(evidence.isolation_violations_in_stage),
        "output_contract_violations": float(evidence.output_contract_violations_in_stage),
        "clamped_samples": float(clamped.count),
        "clamped_fraction_mean": clamped.mean,
    }
    persistent_clamping = clamped.count >= settings.clamp_window_steps and (
        clamped.nonfinite > 0 or clamped.mean > settings.max_clamped_fraction
    )
    checks = (
        (evidence.fallback, "fallback"),
        (evidence.isolation_violations_in_stage > 0, "isolation_violation"),
        (evidence.output_contract_violations_in_stage > 0, "output_contract"),
        (persistent_clamping, "persistent_clamping"),
    )
    for failed, reason in checks:
        if failed:
            return _outcome(gate, GateVerdict.FAILED, reason, attrs)
    if alpha is None or alpha < 1.0:
        return _outcome(gate, GateVerdict.PENDING, "alpha_below_one", attrs)
    return _outcome(gate, GateVerdict.PASSED, "interface_ok", attrs)


def evaluate_g4(evidence: EvidenceSnapshot, settings: GateSettings, *, fossilize: bool = False) -> GateOutcome:
    """G4_SYSTEM_IMPACT, guarding SHADOWING -> PROBATIONARY and (``fossilize=True``) PROBATIONARY -> FOSSILIZED.

    The benefit is the counterfactual contribution (validation loss at alpha=0 minus with the seed) over the stage's
    window. It passes once at least ``min_validation_batches`` show a mean above both ``min_benefit`` and
    ``benefit_noise_sigmas`` standard errors; it fails for want of benefit only once the window is full.
    """
    gate = SeedLifecycleGate.G4_SYSTEM_IMPACT
    contrib = evidence.contribution
    finite = contrib.count - contrib.nonfinite
    # Standard error of the mean from the sample (n - 1) variance; one sample says nothing about noise.
    sem = math.sqrt(contrib.variance / (finite - 1)) if finite > 1 else math.inf
    growth, memory = evidence.step_latency_growth, evidence.memory_growth_bytes
    attrs = {
        "validation_batches": float(contrib.count),
        "benefit_mean": contrib.mean,
        "benefit_sem": sem,
        "critical_events": float(evidence.critical_events_total),
        "step_latency_growth": 0.0 if growth is None else growth,
        "memory_growth_bytes": 0.0 if memory is None else float(memory),
    }
    checks = (
        (evidence.fallback, "fallback"),
        (evidence.critical_events_total > 0, "critical_event"),
        (growth is not None and not growth <= settings.max_step_latency_growth, "latency_growth"),
        (memory is not None and memory > settings.max_memory_growth_bytes, "memory_growth"),
        (contrib.nonfinite > 0, "validation_not_finite"),
    )
    for failed, reason in checks:
        if failed:
            return _outcome(gate, GateVerdict.FAILED, reason, attrs)
    if contrib.count < settings.min_validation_batches:
        return _outcome(gate, GateVerdict.PENDING, "insufficient_validation", attrs)
    if contrib.mean > settings.min_benefit and contrib.mean > settings.benefit_noise_sigmas * sem:
        return _outcome(gate, GateVerdict.PASSED, "fossilize" if fossilize else "benefit", attrs)
    if contrib.count < settings.validation_window_batches:
        return _outcome(gate, GateVerdict.PENDING, "benefit_within_noise", attrs)
    return _outcome(gate, GateVerdict.FAILED, "no_benefit", attrs)


def evaluate_g5(reset: ResetEvidence | None, evidence: EvidenceSnapshot) -> GateOutcome:
    """G5_RESET, guarding RESETTING -> DORMANT: nothing of the old seed is left and its counters are cleared."""
    gate = SeedLifecycleGate.G5_RESET
    if reset is None:
        return _outcome(gate, GateVerdict.PENDING, "awaiting_reset_report", {})
    attrs = {
        "kernel_attached": float(reset.kernel_attached),
        "parameters_held": float(reset.parameters_held),
        "optimizer_state_held": float(reset.optimizer_state_held),
        "prefetch_pending": float(reset.prefetch_pending),
        "cache_references": float(reset.cache_references),
        "counters_cleared": float(evidence.cleared),
    }
    checks = (
        (reset.kernel_attached, "kernel_attached"),
        (reset.parameters_held, "parameters_held"),
        (reset.optimizer_state_held, "optimizer_state_held"),
        (reset.prefetch_pending, "prefetch_pending"),
        (reset.cache_references > 0, "cache_references_held"),
        (not evidence.cleared, "counters_not_cleared"),
    )
    for failed, reason in checks:
        if failed:
            return _outcome(gate, GateVerdict.FAILED, reason, attrs)
    return _outcome(gate, GateVerdict.PASSED, "clean", attrs)
