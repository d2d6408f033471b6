"""Tolaria's emergency policy: the epoch breaker's half-open, and where a halted run's checkpoint resumes.

An open epoch breaker half-opens after its open time, and a halted run's checkpoint resumes below L4 (but for one that
ended the run's last epoch: there is nothing left to train)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from actors.tolaria.emergencies import Action, EmergencyPolicy
from esper.runtime.emergency import RESTORED
from esper.runtime.emergency_tally import EmergencyTally
from schemas.config import BreakerConfig, TolariaConfig
from schemas.enums import BreakerState, EmergencyLevel
from schemas.runtime import EmergencySignal

if TYPE_CHECKING:
    from esper.runtime.clock import ManualClock
    from esper.runtime.events import RecordingSink

BUDGET_MS = 100.0


def _policy(clock: ManualClock, sink: RecordingSink) -> EmergencyPolicy:
    config = TolariaConfig(
        epoch_budget_ms=BUDGET_MS,
        failed_epochs_to_halt=8,
        breaker=BreakerConfig(failure_threshold=3, open_s=10.0, success_threshold=1),
    )
    return EmergencyPolicy(config, run_id="r", clock=clock, sink=sink)


def _breaker(policy: EmergencyPolicy) -> BreakerState:
    return policy.breaker.state


def test_an_open_breaker_half_opens_after_its_open_time_and_a_good_epoch_closes_it(
    clock: ManualClock, sink: RecordingSink
) -> None:
    """Tolaria never asked the breaker to allow anything, so it never half-opened: every epoch after it opened failed
    as breaker_open, however fast, until the failure streak halted the run."""
    policy = _policy(clock, sink)
    verdicts = [policy.end_epoch(epoch_ms=2 * BUDGET_MS, hook_ms=0.0, missed_decisions=0) for _ in range(3)]
    assert verdicts[-1].action is Action.ROLLBACK  # the third failure opened the breaker: L3
    assert _breaker(policy) is BreakerState.OPEN
    quick = policy.end_epoch(epoch_ms=BUDGET_MS / 2, hook_ms=0.0, missed_decisions=0)
    assert (quick.failed, quick.reason) == (True, "breaker_open")  # still within its open time
    clock.advance(10.0)
    probe = policy.end_epoch(epoch_ms=BUDGET_MS / 2, hook_ms=0.0, missed_decisions=0)
    assert (probe.failed, probe.action) == (False, Action.CONTINUE)
    assert _breaker(policy) is BreakerState.CLOSED
    assert policy.failed_streak == 0


def test_a_breaker_that_reopens_at_l3_defers_the_streaks_halt_only_once(
    clock: ManualClock, sink: RecordingSink
) -> None:
    """The failure that opens the breaker rolls back (L3) before the streak's halt; epochs longer than the open time
    make every later epoch a half-open probe, whose failure reopens it: that must halt, not roll back for ever."""
    config = TolariaConfig(epoch_budget_ms=BUDGET_MS, breaker=BreakerConfig(open_s=10.0))
    policy = EmergencyPolicy(config, run_id="r", clock=clock, sink=sink)
    failing = [policy.end_epoch(epoch_ms=2 * BUDGET_MS, hook_ms=0.0, missed_decisions=0) for _ in range(3)]
    assert [v.action for v in failing] == [Action.CONTINUE, Action.CONTINUE, Action.ROLLBACK]
    clock.advance(10.0)
    probe = policy.end_epoch(epoch_ms=2 * BUDGET_MS, hook_ms=0.0, missed_decisions=0)
    assert (probe.reason, probe.action) == ("epoch_budget", Action.HALT)
    assert policy.level is EmergencyLevel.L4_HALT


def test_a_halted_runs_checkpoint_resumes_at_l2_with_its_streak_cleared(
    clock: ManualClock, sink: RecordingSink
) -> None:
    """A resume of the checkpoint an L4 halt wrote trained on at L4 for good (L4 never steps down): growth stayed
    paused for the rest of the run, and the next failed epoch halted it again at once."""
    policy = _policy(clock, sink)
    policy.restore({"emergency_level": int(EmergencyLevel.L4_HALT), "failed_streak": 8, "failed_epochs": 8})
    assert policy.level is EmergencyLevel.L2_ELEVATED
    # Down from L4, not up from this fresh ladder's L1, and a restore: no new emergency event in the summary.
    [signal] = sink.of_type(EmergencySignal)
    assert (signal.previous, signal.level) == (EmergencyLevel.L4_HALT, EmergencyLevel.L2_ELEVATED)
    assert signal.reason == f"{RESTORED}: resumed after an L4 halt, conservative until clean epochs"
    assert EmergencyTally().add_signal(signal) is False
    assert policy.failed_streak == 0
    assert policy.failed_epochs == 8
    assert policy.end_epoch(epoch_ms=2 * BUDGET_MS, hook_ms=0.0, missed_decisions=0).action is Action.CONTINUE


def test_a_halts_checkpoint_at_the_runs_end_stays_at_l4(clock: ManualClock, sink: RecordingSink) -> None:
    """The checkpoint an L4 halt wrote at the end of the last epoch came back at L2: the resume, with nothing left to
    train, then ended the run as completed (the halt erased). With ``ended`` the level stays L4, re-announced."""
    policy = _policy(clock, sink)
    halted: dict[str, float | int | str | None] = {"emergency_level": 4, "failed_streak": 8, "failed_epochs": 8}
    assert policy.restore(halted, ended=True) is True
    assert policy.level is EmergencyLevel.L4_HALT
    assert policy.failed_streak == 8
    assert [(s.level, s.reason) for s in sink.of_type(EmergencySignal)] == [(EmergencyLevel.L4_HALT, RESTORED)]
    # Any other checkpoint at the run's end is no halt's.
    assert _policy(clock, sink).restore({"emergency_level": 2}, ended=True) is False
    assert _policy(clock, sink).restore(halted) is False


def test_a_resume_between_non_finite_steps_keeps_them_in_the_window(clock: ManualClock, sink: RecordingSink) -> None:
    """The window of non-finite steps was not in the checkpoint: a Ctrl-C after two of three let the resumed run
    pass the third, where the uninterrupted run rolled back (and ended with other weights)."""
    first = _policy(clock, sink)
    assert first.nonfinite_step(169) is Action.CONTINUE
    assert first.nonfinite_step(170) is Action.CONTINUE
    resumed = _policy(clock, sink)
    resumed.restore(first.counters())
    assert resumed.nonfinite_step(171) is Action.ROLLBACK
    assert resumed.skipped_steps == 3
    fresh = _policy(clock, sink)
    fresh.restore({"emergency_level": 1})  # a checkpoint from before the window was kept: an empty one
    assert fresh.nonfinite_step(171) is Action.CONTINUE


def test_a_resume_in_a_run_of_failed_epochs_opens_the_breaker_where_the_uninterrupted_run_does(
    clock: ManualClock, sink: RecordingSink
) -> None:
    """Checkpoints kept the failure streak but not the epochs' breaker: resumed after two failed epochs, the third
    completed the streak on a fresh breaker and halted (L2 to L4, no rollback) where the uninterrupted run opened the
    breaker and rolled back (L3)."""
    config = TolariaConfig(epoch_budget_ms=BUDGET_MS)
    uninterrupted = EmergencyPolicy(config, run_id="r", clock=clock, sink=sink)
    killed = EmergencyPolicy(config, run_id="r", clock=clock, sink=sink)
    for policy in (uninterrupted, killed):
        for _ in range(2):
            assert policy.end_epoch(epoch_ms=2 * BUDGET_MS, hook_ms=0.0, missed_decisions=0).action is Action.CONTINUE
    resumed = EmergencyPolicy(config, run_id="r", clock=clock, sink=sink)
    resumed.restore(killed.counters())
    assert _breaker(resumed) is BreakerState.CLOSED
    for policy in (uninterrupted, resumed):
        third = policy.end_epoch(epoch_ms=2 * BUDGET_MS, hook_ms=0.0, missed_decisions=0)
        assert (third.action, policy.level) == (Action.ROLLBACK, EmergencyLevel.L3_CONSERVATIVE)
    # A checkpoint taken with the breaker open resumes with it open (afresh: its timing is the new process's).
    reopened = EmergencyPolicy(config, run_id="r", clock=clock, sink=sink)
    reopened.restore(resumed.counters())
    assert _breaker(reopened) is BreakerState.OPEN
    assert reopened.end_epoch(epoch_ms=0.0, hook_ms=0.0, missed_decisions=0).reason == "breaker_open"


def test_a_halt_on_an_open_breaker_names_the_budget_failure_before_it_across_a_resume(
    clock: ManualClock, sink: RecordingSink
) -> None:
    """A resume that halted as "4 failed epochs in a row (the last: breaker_open)" named neither the hook time that
    failed the epochs before it, nor the budget, nor the setting to raise."""
    config = TolariaConfig()  # the default ladder and hook budget: a breaker opening at 3 failures, a halt at 3
    budget = config.epoch_hook_budget_ms
    first = EmergencyPolicy(config, run_id="r", clock=clock, sink=sink)
    for hook_ms in (61.49, 111.3):
        verdict = first.end_epoch(epoch_ms=0.0, hook_ms=hook_ms, missed_decisions=0)
        assert (verdict.reason, verdict.detail) == (
            "hook_budget",
            f"hook_ms {hook_ms:.1f} over tolaria.epoch_hook_budget_ms {budget}",
        )
    opened = first.end_epoch(epoch_ms=0.0, hook_ms=292.06, missed_decisions=0)
    assert (opened.action, _breaker(first)) == (Action.ROLLBACK, BreakerState.OPEN)
    cause = f"hook_budget, hook_ms 292.1 over tolaria.epoch_hook_budget_ms {budget}"
    resumed = EmergencyPolicy(config, run_id="r", clock=clock, sink=sink)
    resumed.restore(first.counters())  # the checkpoint of the epoch that opened the breaker
    halt = resumed.end_epoch(epoch_ms=0.0, hook_ms=1.0, missed_decisions=0)
    assert (halt.reason, halt.action, halt.detail) == ("breaker_open", Action.HALT, f"after {cause}")
    assert halt.halt_reason == f"4 failed epochs in a row (the last: breaker_open; the latest before it: {cause})"
    # A clean epoch ends the streak, and its cause with it.
    clean = EmergencyPolicy(config, run_id="r", clock=clock, sink=sink)
    clean.end_epoch(epoch_ms=0.0, hook_ms=budget + 1, missed_decisions=0)
    clean.end_epoch(epoch_ms=0.0, hook_ms=0.0, missed_decisions=0)
    assert clean.counters()["failed_cause"] is None
