"""Builders of state packets for the Nissa tests."""

from __future__ import annotations

from schemas.enums import EmergencyLevel, SeedLifecycleStage
from schemas.state import SeedState, StepTimings, SystemStatePacket

TIMINGS = StepTimings(
    data_wait_ms=0.5, host_to_device_ms=0.25, forward_ms=2.0, backward_ms=4.0, optimizer_ms=1.0, step_ms=7.75
)


def packet(
    step: int,
    *,
    epoch: int = 0,
    val: float | None = None,
    step_ms: float = 7.75,
    seeds: tuple[SeedState, ...] = (),
    level: EmergencyLevel = EmergencyLevel.L1_NOTICE,
    isolation: int = 0,
    hook_ms: float = 3.0,
    capture_ms: float = 0.0,
) -> SystemStatePacket:
    """A packet at ``step``; ``val`` set makes it an epoch end (validation accuracy 0.5)."""
    return SystemStatePacket(
        run_id="run-1",
        epoch=epoch,
        epochs_total=10,
        global_step=step,
        epoch_progress=1.0 if val is not None else 0.5,
        issued_at=float(step),
        training_loss=1.0 / (step + 1),
        training_accuracy=0.75,
        timings=StepTimings(
            data_wait_ms=0.5, host_to_device_ms=0.25, forward_ms=2.0, backward_ms=4.0, optimizer_ms=1.0, step_ms=step_ms
        ),
        host_parameters=1000,
        seed_parameters=64 * len(seeds),
        samples_per_s=512.0,
        hook_latency_ms=hook_ms,
        hook_capture_ms=capture_ms,
        validation_loss=val,
        validation_accuracy=None if val is None else 0.5,
        seed_states=seeds,
        isolation_violations=isolation,
        emergency_level=level,
    )


def seed(slot: str, stage: SeedLifecycleStage) -> SeedState:
    return SeedState(slot=slot, stage=stage, layer_depth=1, seed_id=f"seed-{slot}", blueprint_id="BP001")
