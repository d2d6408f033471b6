"""SeedLifecycle end to end: seeds advance one stage per boundary, after the dwell, on evidence that fills over time."""

from __future__ import annotations

import math

import msgspec
import pytest

from actors.kasmina.evidence import (
    AttachmentEvidence,
    BlueprintFacts,
    GerminationRequest,
    ResetEvidence,
    StepEvidence,
    ValidationEvidence,
)
from actors.kasmina.gates import GateSettings, GateVerdict
from actors.kasmina.lifecycle import SeedLifecycle
from actors.kasmina.lifecycle_settings import LifecycleSettings, StageDwell
from actors.kasmina.lifecycle_table import BoundaryReport, IllegalTransition, TransitionOrderError, UnknownSlot
from schemas.enums import BreakerState, SeedLifecycleGate
from schemas.enums import SeedLifecycleStage as Stage

SLOT = "blocks.0"
SEED = "seed-a"
SETTINGS = LifecycleSettings(
    dwell=StageDwell(germinated=1, training=3, blending=1, shadowing=2, probationary=4),
    gates=GateSettings(stability_window_steps=5, validation_window_batches=6, min_validation_batches=3),
    embargo_epochs=2,
    gate_patience_steps=50,
)
BLEND_STEPS = 6
CLEAN = ResetEvidence(
    kernel_attached=False, parameters_held=False, optimizer_state_held=False, prefetch_pending=False, cache_references=0
)


def germination(seed_id: str = SEED) -> GerminationRequest:
    bp = BlueprintFacts(blueprint_id="bp-mlp", known=True, stored=True, estimated_memory_bytes=4096)
    return GerminationRequest(seed_id=seed_id, blueprint=bp)


def healthy_attachment(seed_id: str = SEED) -> AttachmentEvidence:
    return AttachmentEvidence(
        seed_id=seed_id,
        artifact_verified=True,
        fallback=False,
        interface_matches=True,
        probe_seed_grad_norm=0.5,
        probe_host_grad_max_abs=0.0,
        isolation_breaker=BreakerState.CLOSED,
        params_in_optimizer=True,
    )


class Driver:
    """Plays the Kasmina actor's part: after each optimizer step, report what the step showed, then the boundary."""

    def __init__(self, lifecycle: SeedLifecycle, slot: str = SLOT) -> None:
        self.lifecycle = lifecycle
        self.slot = slot
        self.step = 0
        self.epoch = 0
        self.blend_start: int | None = None
        self.reports: list[BoundaryReport] = []
        self.benefit = 0.1
        self.validate = True

    def run_step(self, **overrides: object) -> BoundaryReport:
        """One optimizer step: evidence fitting the slot's stage, then the step boundary."""
        self.step += 1
        record = self.lifecycle.record(self.slot)
        seed = record.seed_id
        if record.stage is Stage.GERMINATED and seed is not None:
            self.lifecycle.record_attachment(self.slot, healthy_attachment(seed))
        if record.stage in (Stage.TRAINING, Stage.BLENDING, Stage.SHADOWING, Stage.PROBATIONARY) and seed is not None:
            alpha = 0.0
            if record.stage is Stage.BLENDING:
                self.blend_start = self.blend_start if self.blend_start is not None else self.step
                alpha = min(1.0, (self.step - self.blend_start + 1) / BLEND_STEPS)
            elif record.stage in (Stage.SHADOWING, Stage.PROBATIONARY):
                alpha = 1.0
            evidence = StepEvidence(
                seed_id=seed,
                step=self.step,
                seed_grad_norm=1.0,
                seed_loss=0.5 + 0.001 * (self.step % 3),
                kernel_latency_ms=1.0,
                alpha=alpha,
                clamped_fraction=0.0,
            )
            assert self.lifecycle.record_step_evidence(self.slot, msgspec.structs.replace(evidence, **overrides))
            if self.validate and record.stage in (Stage.SHADOWING, Stage.PROBATIONARY):
                # Benefit wobbles around its mean so the noise estimate is not zero.
                benefit = self.benefit + 0.01 * (self.step % 2)
                batch = ValidationEvidence(
                    seed_id=seed, step=self.step, loss_without_seed=1.0, loss_with_seed=1.0 - benefit
                )
                assert self.lifecycle.record_validation(self.slot, batch)
        report = self.lifecycle.step_boundary(self.step, self.epoch)
        self.reports.append(report)
        return report

    def run_until(self, stage: Stage, *, limit: int = 200) -> None:
        for _ in range(limit):
            if self.lifecycle.record(self.slot).stage is stage:
                return
            self.run_step()
        raise AssertionError(
            f"{self.slot} did not reach {stage.name} in {limit} steps: {self.lifecycle.record(self.slot)}"
        )

    def outcomes(self, gate: SeedLifecycleGate) -> list[tuple[GateVerdict, str]]:
        return [
            (e.outcome.verdict, e.outcome.reason) for r in self.reports for e in r.evaluations if e.outcome.gate is gate
        ]


def test_a_full_life_from_dormant_to_fossilized_one_stage_per_boundary() -> None:
    lifecycle = SeedLifecycle([SLOT, "blocks.1"], SETTINGS)
    driver = Driver(lifecycle)
    assert lifecycle.germinate(SLOT, germination(), epoch=0).passed
    driver.run_until(Stage.PROBATIONARY)
    for _ in range(3):
        driver.run_step()
    assert lifecycle.record(SLOT).stage is Stage.PROBATIONARY, "no fossilization without a request"
    lifecycle.request_fossilize(SLOT)
    driver.run_until(Stage.FOSSILIZED)

    record = lifecycle.record(SLOT)
    path = [(e.from_stage, e.to_stage, e.reason) for e in record.history]
    assert path == [
        (Stage.UNKNOWN, Stage.DORMANT, "boot"),
        (Stage.DORMANT, Stage.GERMINATED, "germinate"),
        (Stage.GERMINATED, Stage.TRAINING, "healthy"),
        (Stage.TRAINING, Stage.BLENDING, "stable"),
        (Stage.BLENDING, Stage.SHADOWING, "interface_ok"),
        (Stage.SHADOWING, Stage.PROBATIONARY, "benefit"),
        (Stage.PROBATIONARY, Stage.FOSSILIZED, "fossilize"),
    ]
    steps = [e.step for e in record.history]
    assert steps == sorted(set(steps)), "one transition per boundary"
    for report in driver.reports:
        assert len(report.transitions) <= 1
        assert len(report.evaluations) <= 1, "never more than one gate per seed per boundary"
    # Each stage lasted at least its dwell.
    dwell = SETTINGS.dwell
    for entry, following in zip(record.history[1:], record.history[2:], strict=False):
        assert following.step - entry.step >= max(1, dwell.steps(entry.to_stage))
    # The gates judged evidence that accumulated: each of G2, G3 and G4 waited before it passed.
    assert driver.outcomes(SeedLifecycleGate.G2_STABILITY)[0] == (GateVerdict.PENDING, "insufficient_evidence")
    assert driver.outcomes(SeedLifecycleGate.G2_STABILITY)[-1] == (GateVerdict.PASSED, "stable")
    assert (GateVerdict.PENDING, "alpha_below_one") in driver.outcomes(SeedLifecycleGate.G3_INTERFACE)
    g4 = driver.outcomes(SeedLifecycleGate.G4_SYSTEM_IMPACT)
    assert g4[0] == (GateVerdict.PENDING, "insufficient_validation")
    assert g4[-1] == (GateVerdict.PASSED, "fossilize")
    assert (GateVerdict.PASSED, "benefit") in g4
    # The other slot never moved, and the fossilized seed no longer counts against the seed budget.
    assert lifecycle.record("blocks.1").stage is Stage.DORMANT
    assert lifecycle.active_seeds() == 0
    assert record.seed_id == SEED
    assert record.blueprint_id == "bp-mlp"


def test_runs_are_deterministic() -> None:
    def run() -> bytes:
        lifecycle = SeedLifecycle([SLOT], SETTINGS)
        driver = Driver(lifecycle)
        lifecycle.germinate(SLOT, germination(), epoch=0)
        driver.run_until(Stage.PROBATIONARY)
        return msgspec.json.encode(driver.reports)

    assert run() == run()


def test_dwell_delays_the_exit_gate() -> None:
    settings = msgspec.structs.replace(SETTINGS, dwell=StageDwell(germinated=4))
    lifecycle = SeedLifecycle([SLOT], settings)
    driver = Driver(lifecycle)
    lifecycle.germinate(SLOT, germination(), epoch=0)
    driver.run_step()  # step 1: DORMANT -> GERMINATED; the attachment arrives at step 2
    assert lifecycle.record(SLOT).stage is Stage.GERMINATED
    for _ in range(3):  # steps 2-4: evidence is complete, but the dwell of 4 steps has not passed
        assert driver.run_step().evaluations == ()
    report = driver.run_step()  # step 5: 4 steps after entering GERMINATED
    assert [e.outcome.reason for e in report.evaluations] == ["healthy"]
    assert lifecycle.record(SLOT).stage is Stage.TRAINING


def test_a_boundary_at_the_same_step_twice_raises() -> None:
    lifecycle = SeedLifecycle([SLOT], SETTINGS)
    lifecycle.step_boundary(1, 0)
    with pytest.raises(TransitionOrderError):
        lifecycle.step_boundary(1, 0)
    with pytest.raises(TransitionOrderError):
        lifecycle.step_boundary(2, -1)


def test_a_failing_gate_culls_at_the_boundary_with_the_gate_and_reason() -> None:
    lifecycle = SeedLifecycle([SLOT], SETTINGS)
    driver = Driver(lifecycle)
    lifecycle.germinate(SLOT, germination(), epoch=0)
    driver.run_until(Stage.TRAINING)
    report = driver.run_step(seed_loss=math.nan)
    assert [e.outcome.reason for e in report.evaluations] == []  # TRAINING dwell (3 steps) not passed yet
    while lifecycle.record(SLOT).stage is Stage.TRAINING:
        report = driver.run_step()
    assert [(e.outcome.gate, e.outcome.reason) for e in report.evaluations] == [
        (SeedLifecycleGate.G2_STABILITY, "loss_not_finite")
    ]
    record = lifecycle.record(SLOT)
    assert record.stage is Stage.CULLED
    assert [c.reason for c in report.culls] == ["G2_STABILITY:loss_not_finite"]
    assert record.last_cull == report.culls[0]
    assert (record.last_cull.seed_id, record.last_cull.stage) == (SEED, Stage.TRAINING)


def test_a_gate_pending_past_its_patience_times_out_and_culls() -> None:
    settings = msgspec.structs.replace(SETTINGS, gate_patience_steps=3)
    lifecycle = SeedLifecycle([SLOT], settings)
    lifecycle.germinate(SLOT, germination(), epoch=0)
    lifecycle.step_boundary(1, 0)  # GERMINATED; no attachment ever arrives
    reasons = [[e.outcome.reason for e in lifecycle.step_boundary(s, 0).evaluations] for s in range(2, 7)]
    # Dwell 1, then one step for the attach's receipt (a packet every step, no lag), then the patience of 3.
    assert reasons == [
        ["awaiting_attachment"],
        ["awaiting_attachment"],
        ["awaiting_attachment"],
        ["awaiting_attachment"],
        ["timeout:awaiting_attachment"],
    ]
    assert lifecycle.record(SLOT).stage is Stage.CULLED
    assert lifecycle.record(SLOT).last_cull is not None


def test_cull_embargo_reset_and_back_to_dormant() -> None:
    lifecycle = SeedLifecycle([SLOT], SETTINGS)
    driver = Driver(lifecycle)
    lifecycle.germinate(SLOT, germination(), epoch=0)
    driver.run_until(Stage.TRAINING)
    driver.epoch = 1
    lifecycle.cull(SLOT, "cull_command")
    lifecycle.cull(SLOT, "isolation_breaker")  # a second request keeps the first reason
    report = driver.run_step()
    assert [(c.reason, c.stage, c.embargo_until_epoch) for c in report.culls] == [("cull_command", Stage.TRAINING, 3)]
    assert lifecycle.record(SLOT).stage is Stage.CULLED
    assert lifecycle.record(SLOT).embargo_until_epoch == 3
    assert not lifecycle.record_step_evidence(SLOT, StepEvidence(seed_id=SEED, step=driver.step + 1)), "no live seed"

    driver.run_step()
    assert lifecycle.record(SLOT).stage is Stage.EMBARGOED
    # The embargo counts epochs, not steps: many boundaries in epochs 1 and 2 do not end it.
    for epoch in (1, 2):
        driver.epoch = epoch
        for _ in range(30):
            driver.run_step()
            assert lifecycle.record(SLOT).stage is Stage.EMBARGOED
        refused = lifecycle.germinate(SLOT, germination("seed-b"), epoch=epoch)
        assert (refused.verdict, refused.reason) == (GateVerdict.FAILED, "embargoed")

    driver.epoch = 3
    driver.run_step()
    assert lifecycle.record(SLOT).stage is Stage.RESETTING
    assert lifecycle.evidence(SLOT).cleared
    occupied = lifecycle.germinate(SLOT, germination("seed-b"), epoch=3)
    assert occupied.reason == "slot_occupied"

    # G5 waits for the actor's report, fails a dirty slot (which stays RESETTING) and passes a clean one.
    assert [e.outcome.reason for e in driver.run_step().evaluations] == ["awaiting_reset_report"]
    assert lifecycle.record_reset(SLOT, msgspec.structs.replace(CLEAN, prefetch_pending=True))
    assert [e.outcome.reason for e in driver.run_step().evaluations] == ["prefetch_pending"]
    assert lifecycle.record(SLOT).stage is Stage.RESETTING
    assert [e.outcome.reason for e in driver.run_step().evaluations] == ["awaiting_reset_report"]
    assert lifecycle.record_reset(SLOT, CLEAN)
    report = driver.run_step()
    assert [(e.outcome.gate, e.outcome.reason) for e in report.evaluations] == [(SeedLifecycleGate.G5_RESET, "clean")]
    record = lifecycle.record(SLOT)
    assert (record.stage, record.seed_id, record.blueprint_id) == (Stage.DORMANT, None, None)
    assert [e.to_stage for e in record.history[-4:]] == [Stage.CULLED, Stage.EMBARGOED, Stage.RESETTING, Stage.DORMANT]
    assert {e.seed_id for e in record.history[-4:]} == {SEED}, "the history names the seed until it is gone"

    assert lifecycle.germinate(SLOT, germination("seed-b"), epoch=3).passed
    driver.run_step()
    assert (lifecycle.record(SLOT).stage, lifecycle.record(SLOT).seed_id) == (Stage.GERMINATED, "seed-b")


def test_a_withdrawn_germination_goes_back_to_dormant_at_once_without_cull_or_embargo() -> None:
    """The trainer refused the seed's attach for the emergency level: its module never reached the model, so the slot
    is free again at the next boundary (a cull queued too gives way), and a new germination may follow at once."""
    settings = msgspec.structs.replace(SETTINGS, gates=msgspec.structs.replace(SETTINGS.gates, max_active_seeds=1))
    lifecycle = SeedLifecycle([SLOT], settings)
    assert lifecycle.germinate(SLOT, germination(), epoch=0).passed
    lifecycle.step_boundary(1, 0)
    assert lifecycle.record(SLOT).stage is Stage.GERMINATED
    assert not lifecycle.withdraw(SLOT, "seed-other", "attach_refused:emergency_level"), "not the slot's seed"
    assert lifecycle.withdraw(SLOT, SEED, "attach_refused:emergency_level")
    lifecycle.cull(SLOT, "cull_command")
    report = lifecycle.step_boundary(2, 0)  # within GERMINATED's dwell: a withdrawal does not wait for it
    assert report.culls == ()
    assert [(e.from_stage, e.to_stage, e.seed_id, e.reason) for e in report.transitions] == [
        (Stage.GERMINATED, Stage.DORMANT, SEED, "attach_refused:emergency_level")
    ]
    record = lifecycle.record(SLOT)
    assert (record.stage, record.seed_id, record.blueprint_id, record.embargo_until_epoch) == (
        Stage.DORMANT,
        None,
        None,
        None,
    )
    assert lifecycle.active_seeds() == 0
    assert lifecycle.step_boundary(3, 0).transitions == (), "the cull queued with it went with the seed"
    assert lifecycle.germinate(SLOT, germination("seed-b"), epoch=0).passed
    lifecycle.step_boundary(4, 0)
    assert (lifecycle.record(SLOT).stage, lifecycle.record(SLOT).seed_id) == (Stage.GERMINATED, "seed-b")
    lifecycle.cull(SLOT, "cull_command")
    lifecycle.step_boundary(5, 0)
    assert not lifecycle.withdraw(SLOT, "seed-b", "attach_refused:emergency_level"), "culled: nothing to withdraw"
    assert lifecycle.record(SLOT).stage is Stage.CULLED


def test_g0_budget_counts_pending_germinations_and_refuses_duplicates() -> None:
    settings = msgspec.structs.replace(SETTINGS, gates=msgspec.structs.replace(SETTINGS.gates, max_active_seeds=1))
    lifecycle = SeedLifecycle(["a", "b"], settings)
    assert lifecycle.germinate("a", germination("s1"), epoch=0).passed
    assert lifecycle.germinate("a", germination("s2"), epoch=0).reason == "germination_pending"
    assert lifecycle.germinate("b", germination("s1"), epoch=0).reason == "duplicate_seed_id"
    assert lifecycle.germinate("b", germination("s2"), epoch=0).reason == "seed_budget"
    assert lifecycle.record("b").stage is Stage.DORMANT


@pytest.mark.parametrize(
    ("request_name", "stage", "to_stage"),
    [
        ("cull", Stage.DORMANT, Stage.CULLED),
        ("fossilize", Stage.DORMANT, Stage.FOSSILIZED),
        ("fossilize", Stage.TRAINING, Stage.FOSSILIZED),
        ("retire", Stage.TRAINING, Stage.TERMINATED),
    ],
)
def test_illegal_requests_raise_and_change_nothing(request_name: str, stage: Stage, to_stage: Stage) -> None:
    lifecycle = SeedLifecycle([SLOT], SETTINGS)
    driver = Driver(lifecycle)
    if stage is not Stage.DORMANT:
        lifecycle.germinate(SLOT, germination(), epoch=0)
        driver.run_until(stage)
    before = lifecycle.record(SLOT)
    requests = {
        "cull": lambda: lifecycle.cull(SLOT, "cull_command"),
        "fossilize": lambda: lifecycle.request_fossilize(SLOT),
        "retire": lambda: lifecycle.retire(SLOT, "shrink"),
    }
    with pytest.raises(IllegalTransition) as info:
        requests[request_name]()
    assert (info.value.from_stage, info.value.to_stage) == (stage, to_stage)
    driver.run_step()
    assert lifecycle.record(SLOT).history[: len(before.history)] == before.history
    assert all(e.to_stage is not to_stage for e in lifecycle.record(SLOT).history)


def test_retire_terminates_a_dormant_slot_for_good() -> None:
    lifecycle = SeedLifecycle([SLOT], SETTINGS)
    lifecycle.retire(SLOT, "shrink")
    assert lifecycle.germinate(SLOT, germination(), epoch=0).reason == "slot_retiring"
    lifecycle.step_boundary(1, 0)
    assert lifecycle.record(SLOT).stage is Stage.TERMINATED
    with pytest.raises(IllegalTransition):
        lifecycle.retire(SLOT, "again")


def test_stale_evidence_is_refused_not_recorded() -> None:
    lifecycle = SeedLifecycle([SLOT], SETTINGS)
    assert not lifecycle.record_step_evidence(SLOT, StepEvidence(seed_id=SEED, step=1, seed_loss=1.0))
    lifecycle.germinate(SLOT, germination(), epoch=0)
    lifecycle.step_boundary(1, 0)  # GERMINATED at step 1
    assert not lifecycle.record_attachment(SLOT, healthy_attachment("someone-else"))
    assert not lifecycle.record_step_evidence(SLOT, StepEvidence(seed_id="someone-else", step=2, seed_loss=1.0))
    assert not lifecycle.record_step_evidence(SLOT, StepEvidence(seed_id=SEED, step=1, seed_loss=1.0))
    assert not lifecycle.record_reset(SLOT, CLEAN)
    assert lifecycle.evidence(SLOT).cleared
    assert lifecycle.record_step_evidence(SLOT, StepEvidence(seed_id=SEED, step=2, seed_loss=1.0))
    assert lifecycle.evidence(SLOT).loss.count == 1


def test_unknown_and_duplicate_slots_are_refused() -> None:
    with pytest.raises(ValueError, match="unique"):
        SeedLifecycle(["a", "a"])
    lifecycle = SeedLifecycle(["a"])
    with pytest.raises(UnknownSlot, match="'zz'"):
        lifecycle.record("zz")
    with pytest.raises(UnknownSlot):
        lifecycle.cull("zz", "x")


def test_a_queued_germination_can_be_cancelled_before_it_is_taken() -> None:
    lifecycle = SeedLifecycle([SLOT], SETTINGS)
    assert lifecycle.germinate(SLOT, germination(), epoch=0).passed
    assert lifecycle.active_seeds() == 1
    assert lifecycle.cancel_germination(SLOT)
    assert not lifecycle.cancel_germination(SLOT)
    assert lifecycle.active_seeds() == 0
    assert lifecycle.step_boundary(1, 0).transitions == ()
    assert lifecycle.record(SLOT).stage is Stage.DORMANT


def test_a_fossilize_request_waits_through_probation_without_timing_out() -> None:
    settings = msgspec.structs.replace(SETTINGS, gate_patience_steps=6)
    lifecycle = SeedLifecycle([SLOT], settings)
    driver = Driver(lifecycle)
    lifecycle.germinate(SLOT, germination(), epoch=0)
    driver.run_until(Stage.PROBATIONARY)
    lifecycle.request_fossilize(SLOT)
    driver.validate = False
    pending = [e.outcome.reason for _ in range(20) for e in driver.run_step().evaluations]
    assert set(pending) == {"insufficient_validation"}
    assert lifecycle.record(SLOT).stage is Stage.PROBATIONARY, "probation is open-ended: no timeout"

    driver.validate = True
    driver.benefit = -0.2  # the seed now hurts: G4 waits for a full window before it fails for want of benefit
    reasons: list[str] = []
    while lifecycle.record(SLOT).stage is Stage.PROBATIONARY:
        reasons += [e.outcome.reason for e in driver.run_step().evaluations]
    assert reasons[-1] == "no_benefit"
    assert set(reasons[:-1]) <= {"insufficient_validation", "benefit_within_noise"}
    record = lifecycle.record(SLOT)
    assert record.stage is Stage.CULLED
    assert record.last_cull is not None
    assert (record.last_cull.stage, record.last_cull.reason) == (Stage.PROBATIONARY, "G4_SYSTEM_IMPACT:no_benefit")
