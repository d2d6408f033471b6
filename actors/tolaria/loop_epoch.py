"""The step loop's epoch end: validation, then the stall: probe, capture, verdict, packet, log line, checkpoint."""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, final

import structlog

from actors.tolaria.emergencies import Action
from actors.tolaria.epoch_end import epoch_fields, evaluate
from actors.tolaria.loop_watch import silent_detail
from actors.tolaria.validation import seed_validation

if TYPE_CHECKING:
    from actors.tolaria.checkpoints import CheckpointWriter
    from actors.tolaria.loop_exchange import PlanExchange
    from actors.tolaria.loop_options import LoopStatus
    from actors.tolaria.loop_restore import Restorer
    from actors.tolaria.loop_state import LoopState
    from actors.tolaria.snapshots import TrainState
    from actors.tolaria.telemetry import IntervalStats

_log = structlog.get_logger("actors.tolaria")


@final
class EpochCloser:
    """Ends an epoch (see loop.py for the order). ``_s``: the loop's shared state."""

    def __init__(self, state: LoopState, exchange: PlanExchange, restorer: Restorer) -> None:
        self._s = state
        self._exchange = exchange
        self._restorer = restorer

    def end_epoch(
        self,
        epoch_stats: IntervalStats,
        stats: IntervalStats,
        epoch_started: float,
        writer: CheckpointWriter | None,
    ) -> tuple[LoopStatus, str | None] | None:
        assert self._s.data is not None
        data = self._s.data
        val = evaluate(self._s.trainee, data.val, data.num_classes) if data.val.num_samples else None
        if val is not None and not math.isfinite(val[0]) and not self._s.said_val_not_finite:
            # Training steps are checked every step; an eval pass that gives NaN (a model that misbehaves in eval
            # mode only) was silent: once a run, it says so.
            self._s.said_val_not_finite = True
            _log.warning("validation_not_finite", epoch=self._s.pos.epoch + 1, val_loss=str(val[0]))
        # Everything the epoch end sends reaches the event loop when the lane thread is done (see HeldOutbox).
        self._s.outbox.hold()
        started: float | None = None
        try:
            # The planner's benefit evidence, ahead of the packet of the same step (the outbox keeps the order).
            step = self._s.pos.global_step
            report = seed_validation(self._s.trainee, self._s.data.val, run_id=self._s.options.run_id, step=step)
            if report is not None:
                self._s.outbox.event(report)
            # The stall: everything the loop does at an epoch end besides the validation any loop would run.
            started = time.perf_counter()
            return self._close_epoch(epoch_stats, stats, val, (started - epoch_started) * 1e3, writer)
        finally:
            self._s.outbox.release()
            if started is not None:
                self._s.stall_ms_history.append((time.perf_counter() - started) * 1e3)

    def _close_epoch(
        self,
        epoch_stats: IntervalStats,
        stats: IntervalStats,
        val: tuple[float, float] | None,
        epoch_ms: float,
        writer: CheckpointWriter | None,
    ) -> tuple[LoopStatus, str | None] | None:
        config = self._s.config
        pos = self._s.pos
        assert self._s.data is not None
        hook_started = time.perf_counter()
        finished_epoch = pos.epoch
        loss_delta = None
        if val is not None and self._s.run_counters.last_val_loss is not None:
            loss_delta = val[0] - self._s.run_counters.last_val_loss
        train = epoch_stats.means()
        # The epoch-end packet carries this epoch's hook time and emergency level, so it is built after the verdict;
        # its plan is expected (and the isolation probe runs) before the capture, so a resume from this epoch's
        # checkpoint waits for that plan and the model state is the one the continuing run has.
        self._s.isolation.maybe_probe(self._s.trainee, pos.global_step, self._s.outbox.event)
        self._exchange.expect_plan()
        if val is not None:
            self._s.run_counters.last_val_loss = val[0]
        # Before the capture: this epoch's snapshot and checkpoint carry its own figures (a resume or restart with no
        # step left to train reports them, as the uninterrupted run does), not the epoch's before.
        self._s.run_counters.epoch_figures = (*train, *(val if val is not None else (float("nan"), 0.0)))
        pos.epoch += 1
        pos.batch_index = 0
        last = pos.epoch >= config.epochs
        # One capture serves both tiers: its tensors are private copies that nobody changes afterwards, so the
        # fast tier keeps it and the writer thread serialises it concurrently.
        # The copy is timed on its own: an O(model size) copy the run cannot skip, which the hook budget does not
        # bound (a large model failed every epoch on it and halted a healthy run); hook_ms still includes it.
        capture_started = time.perf_counter()
        state = self._s.capture(keep_modules=True) if self._s.snapshots.disabled_reason is None else None
        due = writer is not None and not last and config.checkpoint_every_epochs > 0
        due = due and pos.epoch % max(1, config.checkpoint_every_epochs) == 0
        if due and state is None:
            state = self._s.capture(keep_modules=False)
        hook_ended = time.perf_counter()
        capture_ms = (hook_ended - capture_started) * 1e3 if state is not None else 0.0
        self._s.hook_ms = (hook_ended - hook_started) * 1e3
        self._s.capture_ms = capture_ms
        self._s.hook_ms_history.append(self._s.hook_ms)
        self._s.capture_ms_history.append(capture_ms)
        self._say_slow_copy(capture_ms, state, finished_epoch + 1)
        verdict = self._s.policy.end_epoch(
            epoch_ms=epoch_ms, hook_ms=self._s.hook_ms - capture_ms, missed_decisions=self._s.missed_this_epoch
        )
        if state is not None:
            # Captured before the verdict (the stall's order): the state continues after it, with the level, streak
            # and clean dwell it left (a resume from here repeated neither this epoch's verdict nor its clean tick,
            # and diverged from the uninterrupted run).
            state.counters.update(self._s.policy.counters())
        self._exchange.send_packet(
            stats,
            epoch_progress=1.0,
            epoch=finished_epoch,
            validation=val,
            loss_delta=loss_delta,
            epoch_means=train,
            epoch_stats=epoch_stats,
            probe=False,
            expect=False,
        )
        fields = epoch_fields(
            epoch=finished_epoch + 1,
            epochs=config.epochs,
            step=pos.global_step,
            train=train,
            validation=val,
            epoch_ms=epoch_ms,
            hook_ms=self._s.hook_ms,
            capture_ms=capture_ms,
            emergency_level=int(self._s.policy.level),
        )
        _log.info("epoch_end", **fields)
        if verdict.failed:
            # The figures and the setting they broke: the line named only the reason, and a user could not tell by
            # how much, nor what to raise.
            detail = verdict.detail
            if verdict.reason == "decision_timeout" and self._s.loop_silent_s > 0:
                detail = f"{detail}; {silent_detail(self._s.loop_silent_s)}"
            _log.warning(
                "epoch_failed",
                epoch=finished_epoch + 1,
                reason=verdict.reason,
                action=verdict.action.value,
                detail=detail,
            )
        if verdict.action is Action.ROLLBACK:
            # No loop guard here: failed epochs have their own end, the streak (failed_epochs_to_halt), and epochs
            # failed only because the breaker is still open go back to one state by design until it half-opens.
            halt = self._restorer.rollback(f"failed epoch: {verdict.reason}", loops=False)
            if halt is not None:
                self._s.policy.halt_now(halt)
                return "halted", halt
            return None
        if verdict.action is Action.HALT:
            return "halted", verdict.halt_reason or verdict.reason
        if state is not None and self._s.snapshots.disabled_reason is None:
            self._s.snapshots.put(state)  # a state over the cap disables the tier, and the store says so
        if writer is not None and due and state is not None:
            # Not while the event loop is stopped: the planner's journal stands still, and this checkpoint's pruning
            # could remove the last state it covers (a closed loop ends the run here, without it).
            self._s.watch.hold()
            writer.submit(state)
        return None

    def _say_slow_copy(self, capture_ms: float, state: TrainState | None, epoch: int) -> None:
        """Once per start of the trainer, when the state copy alone took longer than the hook budget: the budget does
        not count it, but every epoch end waits for it (a user seeing long epoch ends learns why, and that no failure
        follows)."""
        budget = self._s.config.epoch_hook_budget_ms
        if state is None or capture_ms <= budget or self._s.said_slow_copy:
            return
        self._s.said_slow_copy = True
        megabytes = state.nbytes / 2**20
        _log.warning(
            "state_copy_over_hook_budget",
            epoch=epoch,
            capture_ms=round(capture_ms, 1),
            megabytes=round(megabytes, 1),
            detail=(
                f"the state copy took {capture_ms:.1f} ms for {megabytes:.1f} MB at this epoch end; the hook budget"
                f" (tolaria.epoch_hook_budget_ms {budget:g}) does not count it, but training waits for it"
            ),
        )
