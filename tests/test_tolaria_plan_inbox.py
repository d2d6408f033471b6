"""PlanInbox: expected plans are delivered, unexpected and late ones dropped, a resent identical plan is idempotent."""

from __future__ import annotations

import threading

from torch import nn

from actors.tolaria.plans import PlanInbox, release_modules
from esper.runtime.handoff import Handoff
from schemas.boundary import BoundaryPlan, SeedOp


def _plan(decided: int, effect: int, run_id: str = "r") -> BoundaryPlan:
    return BoundaryPlan(run_id=run_id, decided_on_step=decided, effect_step=effect)


def test_an_expected_plan_is_delivered_and_applied_at_its_effect_step() -> None:
    inbox = PlanInbox()
    inbox.expect(4, 8)
    assert inbox.put(_plan(4, 8))
    assert inbox.take_due(7, 0.0).plans == ()
    assert inbox.take_due(8, 0.0).plans == (_plan(4, 8),)
    stats = inbox.statistics()
    assert (stats.received, stats.applied, stats.unexpected, stats.duplicates) == (1, 1, 0, 0)


def test_a_plan_nobody_expected_or_for_another_effect_step_is_dropped() -> None:
    inbox = PlanInbox()
    inbox.expect(4, 8)
    assert not inbox.put(_plan(12, 16))
    assert not inbox.put(_plan(4, 9))
    assert inbox.statistics().unexpected == 2


def test_the_same_plan_delivered_twice_is_a_duplicate_before_and_after_it_is_applied() -> None:
    """Delivery is idempotent: a plan delivered again (a retried send) applies once."""
    inbox = PlanInbox()
    inbox.expect(4, 8)
    assert inbox.put(_plan(4, 8))
    assert inbox.put(_plan(4, 8))  # before it applies
    assert inbox.take_due(8, 0.0).plans == (_plan(4, 8),)
    assert inbox.put(_plan(4, 8))  # after
    assert inbox.take_due(8, 0.0).plans == ()  # applied once
    assert not inbox.put(_plan(4, 8, run_id="other"))  # a different plan for that decision is not a duplicate
    stats = inbox.statistics()
    assert (stats.applied, stats.duplicates, stats.unexpected) == (1, 2, 1)


def test_a_plan_after_its_deadline_was_given_up_is_late() -> None:
    inbox = PlanInbox()
    inbox.expect(4, 8)
    due = inbox.take_due(8, 0.0)
    assert due.missed == (4,)
    assert not inbox.put(_plan(4, 8))
    assert inbox.statistics().late == 1


def test_after_a_rewind_an_expected_plan_is_taken_again_even_if_the_same_was_applied_before() -> None:
    """A rollback or restart goes back before a plan it applied; the plan, expected again and resent (or decided again
    the same), must apply again, not be swallowed as a duplicate (the loop then timed out waiting for it)."""
    inbox = PlanInbox()
    inbox.expect(4, 8)
    assert inbox.put(_plan(4, 8))
    assert inbox.take_due(8, 0.0).plans == (_plan(4, 8),)
    inbox.reset()  # back to step 0
    inbox.expect(4, 8)
    assert inbox.put(_plan(4, 8))
    assert inbox.take_due(8, 0.0).plans == (_plan(4, 8),)
    stats = inbox.statistics()
    assert (stats.applied, stats.duplicates, stats.unexpected) == (2, 0, 0)


def test_a_reset_returns_the_unapplied_plans_whose_prepared_modules_are_then_released() -> None:
    """A rewind drops the plans received for later steps; the planner prepares and resends the ones still in flight,
    so the modules the dropped attach ops named must leave the handoff store, or each rewind would leak one."""
    handoff: Handoff[nn.Module] = Handoff(capacity=4)
    handle = handoff.put(nn.Linear(2, 2), prefix="seed-a")
    kept = handoff.put(nn.Linear(2, 2), prefix="seed-b")
    attach = BoundaryPlan(
        run_id="r",
        decided_on_step=4,
        effect_step=8,
        ops=(SeedOp(kind="attach", slot="a", seed_id="seed-a", handle=handle), SeedOp(kind="detach", slot="b")),
    )
    inbox = PlanInbox()
    inbox.expect(4, 8)
    inbox.expect(8, 12)
    assert inbox.put(attach)
    assert inbox.put(_plan(8, 12))
    dropped = inbox.reset()
    assert dropped == (attach, _plan(8, 12))
    assert inbox.pending() == ()
    assert release_modules(dropped, handoff) == 1
    assert len(handoff) == 1
    assert handoff.take(kept) is not None
    assert release_modules(dropped, None) == 0


def test_a_plan_expected_again_after_a_restore_waits_the_grace_not_the_decision_deadline() -> None:
    """After a restore the planner resends its plans in flight once it has replayed its journal, which grows with
    the run; the trainer waits for them as long as a restore may take, but for any other plan only the deadline."""
    waiting = threading.Event()
    inbox = PlanInbox(on_wait=lambda step, missing: waiting.set())
    inbox.expect(4, 8, resent=True)

    def planner() -> None:
        assert waiting.wait(30)  # the barrier: the lane waits for the resent plan
        inbox.put(_plan(4, 8))

    sender = threading.Thread(target=planner)
    sender.start()
    due = inbox.take_due(8, 0.0, grace_s=60.0)
    sender.join()
    assert (due.plans, due.missed) == ((_plan(4, 8),), ())
    inbox.expect(12, 16)
    assert inbox.take_due(16, 0.0, grace_s=60.0).missed == (12,)


def test_before_an_epoch_end_a_stop_does_not_cut_the_wait_for_a_due_plan_short() -> None:
    """A stop that came while the trainer waited for a late plan at an epoch's last boundary ended the wait; the
    epoch end then ran without that plan (a seed not attached there), unlike the uninterrupted run's."""
    inbox = PlanInbox()
    inbox.expect(4, 8)
    inbox.request_stop("test")
    assert inbox.take_due(8, 60.0).stopped  # mid-epoch: the stop ends the wait, the plan stays expected
    assert inbox.pending() == ((4, 8),)

    waiting = threading.Event()
    inbox = PlanInbox(on_wait=lambda step, missing: waiting.set())
    inbox.expect(4, 8)
    inbox.request_stop("test")

    def planner() -> None:
        assert waiting.wait(30)  # the barrier: the lane waits for the plan despite the stop
        inbox.put(_plan(4, 8))

    sender = threading.Thread(target=planner)
    sender.start()
    due = inbox.take_due(8, 60.0, stoppable=False)
    sender.join()
    assert (due.plans, due.missed, due.stopped) == ((_plan(4, 8),), (), False)
