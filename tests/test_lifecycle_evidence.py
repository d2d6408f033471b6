"""Evidence windows: bounded, exact statistics over the newest samples, stage windows apart from lifetime counters."""

from __future__ import annotations

import math
import statistics

import pytest

from actors.kasmina.evidence import (
    AttachmentEvidence,
    ScalarWindow,
    SeedEvidence,
    StepEvidence,
    ValidationEvidence,
    WindowStats,
)
from schemas.enums import BreakerState


def test_window_keeps_the_newest_samples_and_matches_reference_statistics() -> None:
    window = ScalarWindow(4)
    for step, value in enumerate([9.0, 1.0, 2.0, 4.0, 7.0], start=1):
        window.append(step, value)
    stats = window.stats()
    kept = [1.0, 2.0, 4.0, 7.0]
    assert len(window) == window.capacity == 4
    assert stats.count == 4
    assert stats.nonfinite == 0
    assert stats.mean == pytest.approx(statistics.fmean(kept))
    assert stats.variance == pytest.approx(statistics.pvariance(kept))
    assert (stats.minimum, stats.maximum, stats.last_step) == (1.0, 7.0, 5)


def test_window_counts_nonfinite_samples_apart() -> None:
    window = ScalarWindow(5)
    for step, value in enumerate([1.0, math.nan, 3.0, math.inf], start=1):
        window.append(step, value)
    stats = window.stats()
    assert (stats.count, stats.nonfinite, stats.mean, stats.maximum) == (4, 2, 2.0, 3.0)


def test_empty_and_all_nonfinite_windows() -> None:
    assert ScalarWindow(3).stats() == WindowStats()
    window = ScalarWindow(3)
    window.append(1, math.nan)
    assert (window.stats().count, window.stats().nonfinite) == (1, 1)
    window.clear()
    assert window.stats() == WindowStats()
    with pytest.raises(ValueError, match="capacity"):
        ScalarWindow(0)


def test_enter_stage_restarts_stage_windows_but_keeps_lifetime_evidence() -> None:
    evidence = SeedEvidence(stability_window_steps=3, clamp_window_steps=3, validation_window_batches=3)
    assert evidence.snapshot().cleared
    evidence.set_attachment(
        AttachmentEvidence(
            seed_id="s",
            artifact_verified=True,
            fallback=True,
            interface_matches=True,
            probe_seed_grad_norm=1.0,
            probe_host_grad_max_abs=0.0,
            isolation_breaker=BreakerState.CLOSED,
            params_in_optimizer=True,
        )
    )
    evidence.add_step(
        StepEvidence(seed_id="s", step=1, seed_loss=1.0, alpha=0.3, isolation_violations=2, critical_events=1)
    )
    evidence.add_validation(ValidationEvidence(seed_id="s", step=1, loss_without_seed=1.0, loss_with_seed=0.75))
    before = evidence.snapshot()
    assert (before.loss.count, before.contribution.mean, before.alpha) == (1, 0.25, 0.3)
    assert (before.isolation_violations_in_stage, before.isolation_violations_total) == (2, 2)

    evidence.enter_stage()
    after = evidence.snapshot()
    assert (after.loss.count, after.contribution.count, after.alpha, after.steps_recorded) == (0, 0, None, 0)
    assert after.isolation_violations_in_stage == 0
    assert (after.isolation_violations_total, after.critical_events_total, after.fallback) == (2, 1, True)
    assert after.attachment is not None
    assert not after.cleared
