"""The step loop's restores: the state a start continues from, a full-tier restore, rollbacks and their loop guard."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, final

import msgspec
import structlog

from actors.tolaria.boundary import replay
from actors.tolaria.checkpoint_verify import load_latest
from actors.tolaria.isolation_monitor import restore_totals
from actors.tolaria.plans import release_modules
from actors.tolaria.restore_point import choose_restore, journal_check
from actors.tolaria.snapshots import TrainState, load_into
from actors.tolaria.telemetry import OpenStats
from schemas.boundary import TrainingRestored

if TYPE_CHECKING:
    from actors.tolaria.loop_state import LoopState

_log = structlog.get_logger("actors.tolaria")

# Rollbacks to one state (the same snapshot step) in a row before the run halts instead.
_ROLLBACKS_TO_ONE_STATE = 3


@final
class Restorer:
    """Puts the loop's state back: at the start, from the last checkpoint, or in a rollback.

    ``_s``: the loop's shared state (loop_state.py)."""

    def __init__(self, state: LoopState) -> None:
        self._s = state

    def restore_at_start(self) -> str | None:
        """Continue from the newest of: the fast snapshot an earlier incarnation left, or the last good checkpoint;
        of those whose plans in flight the planner's journal holds, when it is known (restore_point.py).

        Returns None, or the halt's reason when a full-tier restore missed its deadline (the run must not train)."""
        read = self._s.options.journaled_step if self._s.options.expects_plans else None
        directory = self._s.options.checkpoint_dir if self._s.options.resume else None
        point = choose_restore(
            self._s.snapshots.latest,
            directory,
            at_most=self._s.options.resume_at_most,
            covered=journal_check(read),
            journal_known=read is not None,
        )
        if point is None:
            if self._s.options.resume:
                # A restart (or a resume) with nothing to continue from trains again from step 0: the planner, told
                # so, starts over as well instead of refusing every packet up to its last boundary.
                self._s.outbox.event(TrainingRestored(run_id=self._s.options.run_id, step=0, tier="none"))
            return None
        # A checkpoint's plans in flight are not taken back: their attach handles name modules prepared in the
        # process that wrote it. Kasmina, told by TrainingRestored, prepares them again and resends them.
        halt = self.restore(point.state, tier=point.tier, extra_s=point.read_s)
        if point.info is not None:
            self._s.last_checkpoint = point.info.file
        self.announce(point.state, point.tier)
        if self._s.options.resumed_run:
            self._s.run_counters.resumed_from = self._s.pos.global_step
        return halt

    def announce(self, state: TrainState, tier: str) -> None:
        # Expect again the plans decided up to the restored step that take effect after it (the planner, told by
        # TrainingRestored, sends them again): a restored run applies them at the same steps as the first one.
        saved = state.counters.get("expected_plans")
        step = self._s.pos.global_step
        # The planner is told which of them take effect at the restored step itself (lag 0: an epoch end's own plan,
        # applied after the capture): a receipt its journal holds for one is not this state's (TrainingRestored).
        unapplied: list[int] = []
        if self._s.options.expects_plans and isinstance(saved, str):
            have = {decided for decided, _ in self._s.inbox.pending()}
            for decided, effect in msgspec.json.decode(saved, type=list[tuple[int, int]]):
                if decided not in have and effect >= step:
                    self._s.inbox.expect(decided, effect, resent=True)
                if effect == step:
                    unapplied.append(decided)
        restored = TrainingRestored(run_id=self._s.options.run_id, step=step, tier=tier, unapplied=tuple(unapplied))
        self._s.outbox.event(restored)

    def restore(self, state: TrainState, *, tier: str, extra_s: float = 0.0, counters: bool = True) -> str | None:
        """Load ``state`` (rebuilding the model and replaying its graft log); with ``counters``, its health counters
        too. Returns None, or the halt's reason when a full-tier restore missed tolaria.rollback_full_deadline_s: L4.

        The restore is complete either way (only slow), so the state is sound: the halt's checkpoint may hold it."""
        started = time.perf_counter()
        self._s.build()
        applier = self._s.applier
        assert applier is not None
        replay(applier, state.graft_log, state.seed_modules or None)
        load_into(self._s.trainee, state)
        # Every tier, a rollback's too: Kasmina's journal, cut at this step, holds the totals its packet reported.
        restore_totals(self._s.trainee, state.counters)
        self._s.isolation.restore_schedule(state.counters)
        self._s.pool_reserved = False
        self._s.planned_capture.forget()
        self._s.pos.global_step = state.global_step
        self._s.pos.epoch = state.epoch
        self._s.pos.batch_index = state.batch_index
        saved_stats = state.counters.get("open_stats")
        self._s.restored_stats = None
        if isinstance(saved_stats, str) and state.batch_index > 0:
            self._s.restored_stats = msgspec.json.decode(saved_stats, type=tuple[OpenStats, OpenStats])
        if counters:
            # Resume or restart: the run's health counters continue. A rollback keeps the current ones instead,
            # or every rollback would forget the failures that caused it.
            ended = state.epoch >= self._s.config.epochs and state.batch_index == 0
            self._s.restored_halt = self._s.policy.restore(state.counters, ended=ended)
            self._s.run_counters.restore(state.counters, stalls_now=self._s.inbox.statistics())
        else:
            # The next epoch end's loss delta is against the restored model's last validation, not against one of
            # the epochs rolled away.
            self._s.run_counters.rewind(state.counters)
        elapsed = time.perf_counter() - started + extra_s
        self._s.restore_ms_history.append((tier, elapsed * 1e3))
        _log.info(
            "tolaria_restored",
            tier=tier,
            restore_ms=round(elapsed * 1e3, 3),
            step=state.global_step,
            epoch=state.epoch,
            batch_index=state.batch_index,
            seeds=len(state.seed_modules) if tier == "fast" else sum(1 for e in state.graft_log if e.kind == "attach"),
        )
        if tier == "full" and elapsed > self._s.config.rollback_full_deadline_s:
            _log.error("tolaria_restore_deadline_exceeded", tier=tier, restore_ms=round(elapsed * 1e3, 3))
            return self._s.policy.restore_deadline_missed(elapsed)
        return None

    def restore_checkpoint(self) -> bool:
        """Full-tier restore from the last good checkpoint (rebuild, replay, load); False without one. Lane thread.

        Outside the step loop (a benchmark, an operator): a missed deadline leaves the policy at L4, nothing more."""
        directory = self._s.options.checkpoint_dir
        started = time.perf_counter()
        found = load_latest(directory) if directory is not None and directory.is_dir() else None
        if found is None:
            return False
        self.restore(found[0], tier="full", extra_s=time.perf_counter() - started, counters=False)
        return True

    def rollback(self, reason: str, *, loops: bool = True) -> str | None:
        """Roll back; None when done, else why the run must halt instead: no state to go back to, or, with ``loops``,
        the same state rolled back to too often (a fault every replay of it meets again, such as a model that turned
        NaN for good, rolled back thousands of times and never ended), or a full-tier restore that missed its deadline
        (the rollback is done, and counted, but the run must not train on: L4)."""
        state = self._s.snapshots.latest
        tier = "fast"
        if state is None:
            if self._s.writer is not None:
                # The epoch-end checkpoints submitted so far are the full tier's states: one the writer thread had
                # not written yet (a loaded machine) made the rollback impossible, or went back further than needed.
                self._s.writer.wait_written()
            directory = self._s.options.checkpoint_dir
            found = load_latest(directory) if directory is not None and directory.is_dir() else None
            if found is None:
                _log.error("tolaria_rollback_impossible", reason=reason)
                return f"rollback impossible after {reason}"
            state, tier = found[0], "full"
        last, times = self._s.rollback_target
        if loops and state.global_step == last and times >= _ROLLBACKS_TO_ONE_STATE:
            _log.error("tolaria_rollback_loop", step=last, times=times, reason=reason)
            return f"rolled back to step {last} {times} times without getting past it ({reason})"
        release_modules(self._s.inbox.reset(), self._s.handoff)
        halt = self.restore(state, tier=tier, counters=False)
        self.announce(state, tier)
        step = self._s.pos.global_step
        same = self._s.rollback_target[1] + 1 if step == self._s.rollback_target[0] else 1
        self._s.rollback_target = (step, same)
        self._s.run_counters.rollbacks += 1
        _log.warning("tolaria_rolled_back", reason=reason, step=step, rollbacks=self._s.run_counters.rollbacks)
        return halt
