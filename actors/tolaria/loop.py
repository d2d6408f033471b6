"""The step loop: runs on the train lane thread from start (or resume) to the end of training, a stop or a halt.

Event order of one step: boundary (apply due plans, waiting for late ones) -> data -> stop check -> the step
(stepper.py: host-to-device, forward, backward, finite check, optimizer step or skip, alpha advance, statistics) ->
state packet every K steps. Epoch end: validation -> isolation probe, the packet's plan expected -> snapshot (cloned
tensors) -> verdict (budgets, emergencies) -> the packet (with this epoch's hook time and level) -> the epoch's log
line -> the checkpoint, handed to the writer thread (serialised and written there).

The hot path reads the device once per step (the finite check) and once per packet; nothing else allocates more
than a list append. Only the Outbox crosses back to the event loop, and it never blocks.
"""

from __future__ import annotations

# The parts share one position, one policy and the inbox: LoopState (loop_state.py) holds them, and each part gets
# it: the restores and rollbacks (loop_restore.py), the plans and packets (loop_exchange.py), the epoch end
# (loop_epoch.py). The step lives in stepper.py, the choice of the state to restore in restore_point.py, the counters a
# checkpoint carries in run_counters.py, and the stateless epoch-end work (validation, the finite check, the log
# record) in epoch_end.py.
import time
from typing import TYPE_CHECKING, final

import structlog

from actors.tolaria.build import Trainee, batch_plan, load_data
from actors.tolaria.checkpoints import CheckpointWriter
from actors.tolaria.data_cache import log_cache_events
from actors.tolaria.emergencies import Action, EmergencyPolicy
from actors.tolaria.epoch_end import evaluate
from actors.tolaria.loop_epoch import EpochCloser
from actors.tolaria.loop_exchange import PlanExchange
from actors.tolaria.loop_options import LoopOptions, LoopResult, LoopStatus
from actors.tolaria.loop_restore import Restorer
from actors.tolaria.loop_state import LoopState
from actors.tolaria.run_counters import finite
from actors.tolaria.snapshots import SnapshotStore, reserve_capture
from actors.tolaria.telemetry import IntervalStats, reset_gpu_peak
from esper.nn.data_batches import iter_batches
from schemas.run import TrainingFigures

if TYPE_CHECKING:
    from collections.abc import Iterator

    from torch import nn

    from actors.tolaria.outbox import Outbox
    from actors.tolaria.plans import PlanInbox
    from actors.tolaria.step_tuning import StepTuner
    from esper.nn.data import DataSplits, TensorPair
    from esper.runtime.handoff import Handoff
    from schemas.config import TolariaConfig

_log = structlog.get_logger("actors.tolaria")


@final
class TrainingLoop:
    """One incarnation's step loop. Build on any thread; call ``run()`` on the train lane thread, once."""

    def __init__(
        self,
        config: TolariaConfig,
        options: LoopOptions,
        *,
        inbox: PlanInbox,
        outbox: Outbox,
        snapshots: SnapshotStore,
        handoff: Handoff[nn.Module] | None = None,
        data: DataSplits | None = None,
    ) -> None:
        self._s = LoopState(
            config, options, inbox=inbox, outbox=outbox, snapshots=snapshots, handoff=handoff, data=data
        )
        self._restorer = Restorer(self._s)
        self._exchange = PlanExchange(self._s)
        self._epoch = EpochCloser(self._s, self._exchange, self._restorer)
        # Measurements for benchmarks and tests (one float per epoch; never read by the loop itself).
        self.epoch_train_s_history: list[float] = []
        self.epoch_train_cpu_s_history: list[float] = []

    # ------------------------------------------------------------------ public, lane thread

    @property
    def trainee(self) -> Trainee:
        return self._s.trainee

    @property
    def global_step(self) -> int:
        """The steps trained so far: where training is, or was when run() returned or raised."""
        return self._s.pos.global_step

    @property
    def policy(self) -> EmergencyPolicy:
        return self._s.policy

    @property
    def hook_ms_history(self) -> list[float]:
        """Each epoch end's hook time, ms (for benchmarks and tests)."""
        return self._s.hook_ms_history

    @property
    def capture_ms_history(self) -> list[float]:
        """Each epoch end's state copy time, ms: part of its hook time the hook budget does not bound (for tests)."""
        return self._s.capture_ms_history

    @property
    def stall_ms_history(self) -> list[float]:
        """Each epoch end's stall, ms (for benchmarks and tests)."""
        return self._s.stall_ms_history

    @property
    def restore_ms_history(self) -> list[tuple[str, float]]:
        """(tier, ms) of each restore (for benchmarks and tests)."""
        return self._s.restore_ms_history

    def run(self) -> LoopResult:
        """Train to the end (or a stop or halt) and return the result. Blocking: lane thread only.

        Raises: whatever breaks training (the actor crashes and its supervisor restarts it, which resumes).
        """
        config = self._s.config
        data = self._s.data
        if data is None:
            data = load_data(config)
            log_cache_events(data.cache_events)
        self._s.data = data
        plan = batch_plan(config, data)
        # The packets' GPU memory peak counts from this training job's start (its model included), not the process's:
        # once here, not at every rollback's rebuild, so the peak still spans the whole job.
        reset_gpu_peak(self._s.options.device)
        self._s.build()
        _log_tuning(self._s.tuner())
        writer = None
        if self._s.options.checkpoint_dir is not None:
            writer = CheckpointWriter(
                self._s.options.checkpoint_dir,
                keep_last=config.checkpoint_keep_last,
                on_written=_log_written,
                device=self._s.trainee.device,
                run_keys=self._s.options.run_keys,
                written_by=self._s.options.written_by,
            )
        self._s.writer = writer
        try:
            status: LoopStatus
            reason: str | None
            # A full restore that missed its deadline: L4 before the first step. The restore is complete (only
            # slow), so the halt's checkpoint holds a sound state, now at L4 (a resume continues at L2).
            halt = self._restorer.restore_at_start()
            if halt is None and self._s.restored_halt:
                # The checkpoint an L4 halt wrote at the end of the last epoch (killed before its summary): the
                # resume only writes the run's end, and that run ended halted (no test score), not completed.
                halt = self._s.options.halt_reason or f"an emergency halt (L4) at step {self._s.pos.global_step}"
            if halt is not None:
                status, reason = "halted", halt
            else:
                status, reason = self._train(plan, writer)
            figures = self._finish(status, reason, writer)
        except BaseException as err:
            if writer is not None:
                _close_after(writer, err)
            raise
        finally:
            self._s.writer = None
        if writer is not None:
            writer.close()
        return LoopResult(status=status, figures=figures, halt_reason=reason)

    def restore_checkpoint(self) -> bool:
        """Full-tier restore from the last good checkpoint (rebuild, replay, load); False without one. Lane thread."""
        return self._restorer.restore_checkpoint()

    def rollback(self, reason: str) -> bool:
        """Roll back to the fast snapshot (or the last checkpoint when the fast tier is off); False if neither.

        Lane thread, between steps; expected plans are dropped (those decided after the snapshot are re-decided).
        Asked for (a benchmark, an operator), it goes back however often it is asked. A full-tier one that missed its
        deadline has gone back (True) and left the policy at L4.
        """
        before = self._s.run_counters.rollbacks
        self._restorer.rollback(reason, loops=False)
        return self._s.run_counters.rollbacks > before

    def evaluate(self, split: TensorPair) -> tuple[float, float]:
        """(mean loss, accuracy) of the current model on a split, in eval mode; (nan, 0) for an empty split."""
        assert self._s.data is not None
        return evaluate(self._s.trainee, split, self._s.data.num_classes)

    # ------------------------------------------------------------------ the loop

    def _train(self, plan: object, writer: CheckpointWriter | None) -> tuple[LoopStatus, str | None]:
        from esper.nn.data_batches import BatchPlan

        assert isinstance(plan, BatchPlan)
        config = self._s.config
        pos = self._s.pos
        inbox = self._s.inbox
        every = config.state_every_steps
        probe = self._s.options.step_probe
        num_batches = plan.num_batches
        assert self._s.data is not None
        train = self._s.data.train
        snapshots = self._s.snapshots
        if snapshots.latest is None and snapshots.disabled_reason is None:
            # The run's start is its first fast snapshot: non-finite steps in the first epoch had nothing to roll back
            # to and halted the run. (Fresh buffers, not the pool's: the optimizer has no state to lay out yet.)
            snapshots.put(self._s.capture(keep_modules=True, pooled=False))
        while pos.epoch < config.epochs:
            epoch_started = time.perf_counter()
            epoch_cpu_started = time.thread_time()
            # The epoch's loss and hit sums: each interval's folded sums are added in when it ends (device ops).
            # A resume from a stop in mid-epoch carries on with the sums its checkpoint saved.
            epoch_stats, stats = self._s.take_open_stats()
            self._s.missed_this_epoch = 0
            self._s.loop_silent_s = 0.0
            batches: Iterator[tuple[int, TensorPair]] = iter_batches(train, plan, pos.epoch, pos.batch_index)
            while True:
                if inbox.has_due(pos.global_step):
                    # Before an epoch end a stop may not cut the wait short: the epoch end runs next (a stop waits for
                    # it), and it must see the plans due at its step applied, as an uninterrupted run does.
                    self._exchange.apply_due(stoppable=pos.batch_index < num_batches)
                t0 = time.perf_counter()
                item = next(batches, None)
                if item is None:
                    if not self._s.pool_reserved:  # a graft applied at the epoch's last step: no step follows it
                        wall_s, cpu_s = self._reserve_pool()
                        epoch_started += wall_s
                        epoch_cpu_started += cpu_s
                    break  # a stop that came with the epoch's last step waits for its end: the packet needs the grads
                if inbox.stop_requested:
                    self._s.open_stats = (epoch_stats, stats)
                    return "stopped", inbox.stop_reason
                index, batch = item
                sketched = pos.global_step == self._s.isolation.sketch_step
                if sketched:
                    self._s.isolation.arm(self._s.trainee, pos.global_step)
                action = self._s.stepper.step(batch, t0, stats, pos.global_step)
                if sketched:
                    self._s.isolation.disarm()
                if not self._s.pool_reserved:
                    # A one-time warm-up (a large model's buffers take a fifth of a second to map), outside every
                    # budget: the hook's no longer pays it, and the epoch's time is its training's.
                    wall_s, cpu_s = self._reserve_pool()
                    epoch_started += wall_s
                    epoch_cpu_started += cpu_s
                pos.batch_index = index + 1
                pos.global_step += 1
                if probe is not None and action is Action.CONTINUE:
                    probe(pos.global_step, self._s.trainee.model, batch)
                if action is Action.ROLLBACK:
                    halt = self._restorer.rollback("non-finite steps")
                    if halt is not None:
                        self._s.policy.halt_now(halt)
                        return "halted", halt
                    batches = iter_batches(train, plan, pos.epoch, pos.batch_index)
                    epoch_stats, stats = self._s.take_open_stats()
                    # The replayed epoch is judged on itself: its time and its missed decisions start at the rollback
                    # (the time before it tripped epoch_budget, a decision missed before it failed the replay).
                    epoch_started = time.perf_counter()
                    epoch_cpu_started = time.thread_time()
                    self._s.missed_this_epoch = 0
                    self._s.loop_silent_s = 0.0
                    continue
                if every and pos.global_step % every == 0 and pos.batch_index < num_batches:
                    epoch_stats.add_sums(stats)
                    self._exchange.send_packet(stats, epoch_progress=pos.batch_index / num_batches)
                    stats = IntervalStats()
            self.epoch_train_s_history.append(time.perf_counter() - epoch_started)
            self.epoch_train_cpu_s_history.append(time.thread_time() - epoch_cpu_started)
            epoch_stats.add_sums(stats)
            outcome = self._epoch.end_epoch(epoch_stats, stats, epoch_started, writer)
            if outcome is not None:
                return outcome
        return "completed", None

    def _reserve_pool(self) -> tuple[float, float]:
        """Have the capture pool allocate (and first touch) the buffers of the current layout; returns the seconds
        it took, wall and thread CPU, for the caller to leave out of the epoch's time. Logged: a pause between steps
        that no step, stall or epoch figure shows."""
        assert self._s.applier is not None
        started, cpu_started = time.perf_counter(), time.thread_time()
        sets = reserve_capture(self._s.trainee, self._s.capture_pool, self._s.planned_capture, len(self._s.applier.log))
        self._s.pool_reserved = True
        wall_s, cpu_s = time.perf_counter() - started, time.thread_time() - cpu_started
        if sets:
            _log.info("capture_reserved", step=self._s.pos.global_step, buffer_sets=sets, ms=round(wall_s * 1e3, 3))
        return wall_s, cpu_s

    # ------------------------------------------------------------------ the end

    def _finish(self, status: LoopStatus, reason: str | None, writer: CheckpointWriter | None) -> TrainingFigures:
        counters = self._s.run_counters
        # A resume that found every epoch trained (a run killed after its last checkpoint, an L4 halt's maybe, before
        # its summary) holds the state it loaded from that checkpoint: the file stays as verified (written again, only
        # its resume point would differ).
        finishing = counters.resumed_from == self._s.pos.global_step
        finishing = finishing and (status == "completed" or self._s.restored_halt)
        if writer is not None and not finishing:
            self._s.watch.hold()  # as at an epoch end's checkpoint (loop_epoch.py)
            state = self._s.capture(keep_modules=False)
            if status == "halted":
                # A kill before training_finished is logged leaves the resume that finishes the run only this file
                # to read the reason from, in the words the uninterrupted run's summary uses (the L4 signal's differ).
                state.counters["halt_reason"] = reason
            writer.submit(state)
            writer.flush()
            self._s.last_checkpoint = f"step-{state.global_step}.pt"
        test = None
        assert self._s.data is not None
        if status == "completed" and self._s.data.test.num_samples:
            test = self.evaluate(self._s.data.test)
        trainee = self._s.trainee
        stalls, stall_ms = self._s.run_counters.stall_totals(self._s.inbox.statistics())
        figures = self._s.run_counters.epoch_figures
        return TrainingFigures(
            epochs=self._s.pos.epoch,
            global_step=self._s.pos.global_step,
            host_parameters=trainee.host_parameters,
            seed_parameters=sum(trainee.seed_parameters().values()),
            fossilized_parameters=trainee.fossilized_seed_parameters(),
            train_loss=None if figures is None else finite(figures[0]),
            train_accuracy=None if figures is None else figures[1],
            val_loss=None if figures is None else finite(figures[2]),
            val_accuracy=None if figures is None else figures[3],
            test_loss=None if test is None else finite(test[0]),
            test_accuracy=None if test is None else test[1],
            skipped_steps=self._s.policy.skipped_steps,
            stalls=stalls,
            stall_ms=stall_ms,
            rollbacks=self._s.run_counters.rollbacks,
            emergency_level=int(self._s.policy.level),
            halted=status == "halted",
            halt_reason=reason if status == "halted" else None,
            completed=status == "completed",
            resumed_from_step=self._s.run_counters.resumed_from,
            checkpoint=self._s.last_checkpoint,
        )


def _close_after(writer: CheckpointWriter, error: BaseException) -> None:
    """Close the writer while ``error`` propagates: a write that failed too is logged, not raised (the exception that
    ended training is the one the actor and its supervisor must see)."""
    try:
        writer.close()
    except Exception as pending:  # noqa: BLE001  # logged; ``error`` is re-raised by the caller
        _log.error(
            "checkpoint_write_failed_too",
            error=f"{type(pending).__name__}: {pending}",
            raising=f"{type(error).__name__}: {error}",
        )


def _log_tuning(tuner: StepTuner | None) -> None:
    """Say once, at the start, what the rate schedule and clipping do (the packets carry each group's base rate, and
    the host's rate in effect)."""
    if tuner is None:
        return
    schedule = tuner.schedule
    _log.info(
        "lr_schedule",
        schedule="constant" if schedule is None else schedule.kind,
        warmup_steps=0 if schedule is None else schedule.warmup_steps,
        total_steps=None if schedule is None else schedule.total_steps,
        lr_min_factor=None if schedule is None else schedule.min_factor,
        grad_clip_norm=tuner.clip_norm,
    )


def _log_written(info: object) -> None:
    file = getattr(info, "file", "?")
    _log.info("checkpoint_written", file=file, step=getattr(info, "global_step", None))
