"""Gates G0-G5 on crafted evidence: each passes on good evidence and fails (or waits) with a named reason."""

from __future__ import annotations

import math

import msgspec
import pytest

from actors.kasmina.evidence import (
    AttachmentEvidence,
    BlueprintFacts,
    EvidenceSnapshot,
    GerminationRequest,
    ParameterBound,
    ResetEvidence,
    SeedEvidence,
    StepEvidence,
    ValidationEvidence,
)
from actors.kasmina.gates import (
    G0Context,
    GateSettings,
    GateVerdict,
    evaluate_g0,
    evaluate_g1,
    evaluate_g2,
    evaluate_g3,
    evaluate_g4,
    evaluate_g5,
)
from schemas.enums import BreakerState, SeedLifecycleGate
from schemas.enums import SeedLifecycleStage as Stage

SETTINGS = GateSettings(
    stability_window_steps=4, clamp_window_steps=3, validation_window_batches=6, min_validation_batches=3
)
SEED = "seed-a"

# ---------------------------------------------------------------- builders


def blueprint(**changes: object) -> BlueprintFacts:
    base = BlueprintFacts(
        blueprint_id="bp-mlp",
        known=True,
        stored=True,
        parameter_bounds=(ParameterBound(name="width", min_value=8.0, max_value=64.0),),
        estimated_memory_bytes=1000,
    )
    return msgspec.structs.replace(base, **changes)


def request(**changes: object) -> GerminationRequest:
    base = GerminationRequest(seed_id=SEED, blueprint=blueprint(), parameters={"width": 16.0})
    return msgspec.structs.replace(base, **changes)


def context(**changes: object) -> G0Context:
    base = G0Context(
        slot_stage=Stage.DORMANT,
        germination_pending=False,
        retire_pending=False,
        embargo_until_epoch=None,
        epoch=3,
        active_seeds=0,
        memory_in_use_bytes=0,
    )
    return msgspec.structs.replace(base, **changes)


def attachment(**changes: object) -> AttachmentEvidence:
    base = AttachmentEvidence(
        seed_id=SEED,
        artifact_verified=True,
        fallback=False,
        interface_matches=True,
        probe_seed_grad_norm=0.7,
        probe_host_grad_max_abs=0.0,
        isolation_breaker=BreakerState.CLOSED,
        params_in_optimizer=True,
    )
    return msgspec.structs.replace(base, **changes)


def fresh_evidence() -> SeedEvidence:
    return SeedEvidence(
        stability_window_steps=SETTINGS.stability_window_steps,
        clamp_window_steps=SETTINGS.clamp_window_steps,
        validation_window_batches=SETTINGS.validation_window_batches,
    )


def steps(count: int, *, losses: list[float] | None = None, first_step: int = 1, **fields: object) -> EvidenceSnapshot:
    """Evidence from ``count`` steps; each step reports a grad norm of 1.0, a loss and 2 ms of kernel time."""
    evidence = fresh_evidence()
    for i in range(count):
        loss = losses[i] if losses is not None else 1.0 + 0.01 * (i % 2)
        base = StepEvidence(
            seed_id=SEED, step=first_step + i, seed_grad_norm=1.0, seed_loss=loss, kernel_latency_ms=2.0
        )
        evidence.add_step(msgspec.structs.replace(base, **fields))
    return evidence.snapshot()


def validation(contributions: list[float], **step_fields: object) -> EvidenceSnapshot:
    """Evidence holding one validation batch per contribution (loss without seed - loss with seed)."""
    evidence = fresh_evidence()
    evidence.add_step(msgspec.structs.replace(StepEvidence(seed_id=SEED, step=1), **step_fields))
    for i, c in enumerate(contributions):
        evidence.add_validation(
            ValidationEvidence(seed_id=SEED, step=i + 1, loss_without_seed=2.0, loss_with_seed=2.0 - c)
        )
    return evidence.snapshot()


# ---------------------------------------------------------------- G0


def test_g0_passes_a_sane_request() -> None:
    outcome = evaluate_g0(request(), context(), SETTINGS)
    assert outcome.gate is SeedLifecycleGate.G0_SANITY
    assert outcome.passed
    assert outcome.reason == "sane"


@pytest.mark.parametrize(
    ("req", "ctx", "reason"),
    [
        (request(), context(embargo_until_epoch=4, epoch=3, slot_stage=Stage.EMBARGOED), "embargoed"),
        (request(), context(embargo_until_epoch=5, epoch=3), "embargoed"),
        (request(), context(germination_pending=True), "germination_pending"),
        (request(), context(retire_pending=True), "slot_retiring"),
        (request(), context(slot_stage=Stage.TRAINING), "slot_occupied"),
        (request(), context(slot_stage=Stage.RESETTING, embargo_until_epoch=3), "slot_occupied"),
        (request(seed_id=""), context(), "invalid_seed_id"),
        (request(), context(seed_ids_in_use=frozenset({SEED})), "duplicate_seed_id"),
        (request(blueprint=blueprint(known=False)), context(), "unknown_blueprint"),
        (request(blueprint=blueprint(stored=False)), context(), "blueprint_not_stored"),
        (request(blueprint=blueprint(quarantine_only=True)), context(), "quarantine_only"),
        (request(blueprint=blueprint(high_risk=True)), context(), "high_risk_disabled"),
        (request(blueprint=blueprint(approval_required=True)), context(), "approval_missing"),
        (request(parameters={"width": 16.0, "depth": 2.0}), context(), "parameter_unknown:depth"),
        (request(parameters={}), context(), "parameter_missing:width"),
        (request(parameters={"width": math.nan}), context(), "parameter_not_finite:width"),
        (request(parameters={"width": 65.0}), context(), "parameter_out_of_range:width"),
        (request(), context(active_seeds=SETTINGS.max_active_seeds), "seed_budget"),
        (request(), context(memory_in_use_bytes=SETTINGS.seed_memory_budget_bytes), "memory_budget"),
    ],
)
def test_g0_refuses_with_reason(req: GerminationRequest, ctx: G0Context, reason: str) -> None:
    outcome = evaluate_g0(req, ctx, SETTINGS)
    assert outcome.verdict is GateVerdict.FAILED
    assert outcome.reason == reason


def test_g0_admits_a_slot_whose_embargo_has_expired_and_approved_high_risk() -> None:
    settings = msgspec.structs.replace(SETTINGS, allow_high_risk=True)
    req = request(blueprint=blueprint(high_risk=True, approval_required=True), approval_recorded=True)
    assert evaluate_g0(req, context(embargo_until_epoch=3, epoch=3), settings).passed


# ---------------------------------------------------------------- G1


def test_g1_passes_a_healthy_attachment() -> None:
    outcome = evaluate_g1(attachment(), SETTINGS)
    assert (outcome.gate, outcome.verdict, outcome.reason) == (
        SeedLifecycleGate.G1_GRADIENT_HEALTH,
        GateVerdict.PASSED,
        "healthy",
    )
    assert outcome.attributes["probe_seed_grad_norm"] == 0.7


def test_g1_waits_for_the_attachment() -> None:
    outcome = evaluate_g1(None, SETTINGS)
    assert (outcome.verdict, outcome.reason) == (GateVerdict.PENDING, "awaiting_attachment")


@pytest.mark.parametrize(
    ("att", "reason"),
    [
        (attachment(fallback=True), "fallback"),
        (attachment(artifact_verified=False), "unverified_artifact"),
        (attachment(interface_matches=False), "interface_mismatch"),
        (attachment(probe_seed_grad_norm=math.inf), "probe_grad_not_finite"),
        (attachment(probe_seed_grad_norm=1e6), "probe_grad_exceeded"),
        (attachment(probe_seed_grad_norm=0.0), "probe_no_seed_grad"),
        (attachment(probe_host_grad_max_abs=1e-9), "host_grad_leak"),
        (attachment(probe_host_grad_max_abs=math.nan), "host_grad_leak"),
        (attachment(isolation_breaker=BreakerState.OPEN), "isolation_breaker_open"),
        (attachment(isolation_breaker=BreakerState.HALF_OPEN), "isolation_breaker_open"),
        (attachment(params_in_optimizer=False), "params_not_in_optimizer"),
    ],
)
def test_g1_fails_with_reason(att: AttachmentEvidence, reason: str) -> None:
    outcome = evaluate_g1(att, SETTINGS)
    assert outcome.verdict is GateVerdict.FAILED
    assert outcome.reason == reason


# ---------------------------------------------------------------- G2


def test_g2_passes_on_a_full_stable_window() -> None:
    outcome = evaluate_g2(steps(SETTINGS.stability_window_steps), SETTINGS)
    assert (outcome.gate, outcome.verdict, outcome.reason) == (
        SeedLifecycleGate.G2_STABILITY,
        GateVerdict.PASSED,
        "stable",
    )
    assert outcome.attributes["loss_samples"] == SETTINGS.stability_window_steps


def test_g2_waits_while_the_window_fills() -> None:
    outcome = evaluate_g2(steps(SETTINGS.stability_window_steps - 1), SETTINGS)
    assert (outcome.verdict, outcome.reason) == (GateVerdict.PENDING, "insufficient_evidence")


def test_g2_waits_while_the_loss_variance_is_over_threshold() -> None:
    outcome = evaluate_g2(steps(4, losses=[0.1, 3.0, 0.1, 3.0]), SETTINGS)
    assert (outcome.verdict, outcome.reason) == (GateVerdict.PENDING, "loss_unstable")
    assert outcome.attributes["loss_variance"] > SETTINGS.max_loss_variance


def test_g2_judges_only_the_newest_window() -> None:
    """Early instability slides out of the window: the same seed passes once it has settled."""
    outcome = evaluate_g2(steps(8, losses=[0.1, 3.0, 0.1, 3.0, 1.0, 1.0, 1.0, 1.0]), SETTINGS)
    assert outcome.passed


@pytest.mark.parametrize(
    ("snapshot", "reason"),
    [
        (steps(4, fallback=True), "fallback"),
        (steps(2, losses=[1.0, math.nan]), "loss_not_finite"),
        (steps(2, seed_grad_norm=math.inf), "grad_not_finite"),
        (steps(2, seed_grad_norm=5e3), "grad_norm_exceeded"),
        (steps(4, kernel_latency_ms=50.0), "latency_over_budget"),
    ],
)
def test_g2_fails_with_reason(snapshot: EvidenceSnapshot, reason: str) -> None:
    outcome = evaluate_g2(snapshot, SETTINGS)
    assert outcome.verdict is GateVerdict.FAILED
    assert outcome.reason == reason


# ---------------------------------------------------------------- G3


def test_g3_passes_once_alpha_reached_one() -> None:
    outcome = evaluate_g3(steps(3, alpha=1.0, clamped_fraction=0.1), SETTINGS)
    assert (outcome.gate, outcome.verdict, outcome.reason) == (
        SeedLifecycleGate.G3_INTERFACE,
        GateVerdict.PASSED,
        "interface_ok",
    )


def test_g3_waits_while_alpha_is_below_one() -> None:
    outcome = evaluate_g3(steps(3, alpha=0.5), SETTINGS)
    assert (outcome.verdict, outcome.reason) == (GateVerdict.PENDING, "alpha_below_one")
    assert outcome.attributes["alpha"] == 0.5


@pytest.mark.parametrize(
    ("snapshot", "reason"),
    [
        (steps(3, alpha=1.0, fallback=True), "fallback"),
        (steps(3, alpha=1.0, isolation_violations=1), "isolation_violation"),
        (steps(3, alpha=1.0, output_contract_violations=1), "output_contract"),
        (steps(3, alpha=1.0, clamped_fraction=0.9), "persistent_clamping"),
    ],
)
def test_g3_fails_with_reason(snapshot: EvidenceSnapshot, reason: str) -> None:
    outcome = evaluate_g3(snapshot, SETTINGS)
    assert outcome.verdict is GateVerdict.FAILED
    assert outcome.reason == reason


def test_g3_tolerates_brief_clamping() -> None:
    """Clamping counts as persistent only over a full window."""
    assert evaluate_g3(steps(2, alpha=1.0, clamped_fraction=0.9), SETTINGS).passed


# ---------------------------------------------------------------- G4


def test_g4_passes_on_benefit_beyond_noise() -> None:
    outcome = evaluate_g4(validation([0.10, 0.12, 0.11]), SETTINGS)
    assert (outcome.gate, outcome.verdict, outcome.reason) == (
        SeedLifecycleGate.G4_SYSTEM_IMPACT,
        GateVerdict.PASSED,
        "benefit",
    )
    assert outcome.attributes["benefit_mean"] == pytest.approx(0.11)


def test_g4_rerun_before_fossilize_passes_with_reason_fossilize() -> None:
    outcome = evaluate_g4(validation([0.10, 0.12, 0.11]), SETTINGS, fossilize=True)
    assert (outcome.verdict, outcome.reason) == (GateVerdict.PASSED, "fossilize")


def test_g4_waits_for_enough_validation_batches() -> None:
    outcome = evaluate_g4(validation([0.1, 0.1]), SETTINGS)
    assert (outcome.verdict, outcome.reason) == (GateVerdict.PENDING, "insufficient_validation")


def test_g4_waits_while_the_benefit_is_within_noise_and_the_window_is_not_full() -> None:
    outcome = evaluate_g4(validation([0.3, -0.3, 0.05]), SETTINGS)
    assert (outcome.verdict, outcome.reason) == (GateVerdict.PENDING, "benefit_within_noise")


@pytest.mark.parametrize(
    ("snapshot", "reason"),
    [
        (validation([0.1] * 3, fallback=True), "fallback"),
        (validation([0.1] * 3, critical_events=1), "critical_event"),
        (validation([0.1] * 3, step_latency_growth=0.5), "latency_growth"),
        (validation([0.1] * 3, memory_growth_bytes=SETTINGS.max_memory_growth_bytes + 1), "memory_growth"),
        (validation([0.1, math.nan, 0.1]), "validation_not_finite"),
        (validation([0.3, -0.3, 0.05, -0.1, 0.02, -0.02]), "no_benefit"),
        (validation([-0.1] * 6), "no_benefit"),
    ],
)
def test_g4_fails_with_reason(snapshot: EvidenceSnapshot, reason: str) -> None:
    outcome = evaluate_g4(snapshot, SETTINGS)
    assert outcome.verdict is GateVerdict.FAILED
    assert outcome.reason == reason


# ---------------------------------------------------------------- G5

CLEAN = ResetEvidence(
    kernel_attached=False, parameters_held=False, optimizer_state_held=False, prefetch_pending=False, cache_references=0
)


def test_g5_passes_a_clean_slot() -> None:
    outcome = evaluate_g5(CLEAN, EvidenceSnapshot())
    assert (outcome.gate, outcome.verdict, outcome.reason) == (SeedLifecycleGate.G5_RESET, GateVerdict.PASSED, "clean")


def test_g5_waits_for_the_reset_report() -> None:
    outcome = evaluate_g5(None, EvidenceSnapshot())
    assert (outcome.verdict, outcome.reason) == (GateVerdict.PENDING, "awaiting_reset_report")


@pytest.mark.parametrize(
    ("reset", "snapshot", "reason"),
    [
        (msgspec.structs.replace(CLEAN, kernel_attached=True), EvidenceSnapshot(), "kernel_attached"),
        (msgspec.structs.replace(CLEAN, parameters_held=True), EvidenceSnapshot(), "parameters_held"),
        (msgspec.structs.replace(CLEAN, optimizer_state_held=True), EvidenceSnapshot(), "optimizer_state_held"),
        (msgspec.structs.replace(CLEAN, prefetch_pending=True), EvidenceSnapshot(), "prefetch_pending"),
        (msgspec.structs.replace(CLEAN, cache_references=2), EvidenceSnapshot(), "cache_references_held"),
        (CLEAN, steps(1), "counters_not_cleared"),
        (CLEAN, EvidenceSnapshot(isolation_violations_total=1), "counters_not_cleared"),
    ],
)
def test_g5_fails_with_reason(reset: ResetEvidence, snapshot: EvidenceSnapshot, reason: str) -> None:
    outcome = evaluate_g5(reset, snapshot)
    assert outcome.verdict is GateVerdict.FAILED
    assert outcome.reason == reason


# ---------------------------------------------------------------- settings


def test_gate_settings_reject_a_minimum_larger_than_the_window() -> None:
    with pytest.raises(ValueError, match=r"GateSettings\.min_validation_batches"):
        GateSettings(validation_window_batches=4, min_validation_batches=5)
