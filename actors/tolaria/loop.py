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

# Past 600 lines: the phases share one position, one policy and the inbox. The step lives in stepper.py, the choice
# of the state to restore in restore_point.py, the counters a checkpoint carries in run_counters.py, and the stateless
# epoch-end work (validation, the finite check, the log record) in epoch_end.py; the next split is the epoch end.
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal, final

import msgspec
import structlog
import torch

from actors.tolaria.boundary import BoundaryApplier, replay
from actors.tolaria.build import Trainee, batch_plan, build_trainee, load_data
from actors.tolaria.capture_plan import PlannedCapture
from actors.tolaria.capture_pool import CapturePool
from actors.tolaria.checkpoints import CheckpointWriter, load_latest
from actors.tolaria.emergencies import Action, EmergencyPolicy
from actors.tolaria.epoch_end import epoch_fields, evaluate
from actors.tolaria.isolation_monitor import IsolationMonitor, micro_batch
from actors.tolaria.outbox import HeldOutbox, Outbox
from actors.tolaria.plans import release_modules
from actors.tolaria.restore_point import choose_restore, journal_check
from actors.tolaria.run_counters import RunCounters, finite
from actors.tolaria.snapshots import SeedTemplates, SnapshotStore, TrainState, capture, load_into, reserve_capture
from actors.tolaria.stepper import Stepper
from actors.tolaria.telemetry import IntervalStats, OpenStats, PacketBuilder
from actors.tolaria.validation import seed_validation
from esper.nn.data_batches import iter_batches
from esper.runtime.clock import MonotonicClock
from schemas.boundary import BoundaryApplied, BoundaryPlan, OpOutcome, TrainingRestored
from schemas.enums import EmergencyLevel
from schemas.run import TrainingFigures

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from torch import nn

    from actors.tolaria.plans import PlanInbox
    from esper.nn.data import DataSplits, TensorPair
    from esper.runtime.handoff import Handoff
    from schemas.base import Message, Record
    from schemas.boundary import SeedOp
    from schemas.config import TolariaConfig

_log = structlog.get_logger("actors.tolaria")

LoopStatus = Literal["completed", "stopped", "halted"]
# Rollbacks to one state (the same snapshot step) in a row before the run halts instead.
_ROLLBACKS_TO_ONE_STATE = 3


@final
@dataclass(frozen=True, slots=True)
class LoopOptions:
    """What the loop needs besides its config section.

    Attributes:
        run_id: copied into packets and receipts.
        checkpoint_dir: where checkpoints go (None: no full tier, e.g. benchmarks).
        expects_plans: a planner answers every packet with one BoundaryPlan (False: Tolaria alone).
        resume: look for a checkpoint in checkpoint_dir before starting.
        resumed_run: this is a ``--resume``'s first start (not a restart): the summary's resumed_from_step is its
            restored step (a restarted trainer of a fresh run reported one too).
        slot_targets: kasmina.slot_targets (empty: the host's own).
        device: the lane's device.
        batch_hook: a test hook applied to each batch, given the monotonic attempt count (survives rollbacks).
        step_probe: a benchmark hook called on the lane after each completed step with the global step, the model
            and that step's batch; it must leave the model as it found it (buffers, modes, RNG).
        isolation_probe_every_steps: probe live seeds for gradient isolation at most this often (0: never).
        resume_at_most: a resume continues from the newest checkpoint of this step or earlier (the newest one the
            lifecycle journal covers); None: the newest.
        journaled_step: the planner journal's last boundary step, read when the loop restores: a restart continues
            from the newest state whose plans in flight were decided there (a planner that crashed on a packet lost
            its decision, which nobody can send again); None: the newest state.
    """

    run_id: str
    checkpoint_dir: Path | None
    expects_plans: bool = False
    resume: bool = False
    resumed_run: bool = False
    slot_targets: tuple[str, ...] = ()
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    batch_hook: Callable[[int, TensorPair], TensorPair] | None = None
    step_probe: Callable[[int, nn.Module, TensorPair], None] | None = None
    isolation_probe_every_steps: int = 0
    resume_at_most: int | None = None
    journaled_step: Callable[[], int | None] | None = None


@final
@dataclass(frozen=True, slots=True)
class LoopResult:
    """How the loop ended and what training achieved."""

    status: LoopStatus
    figures: TrainingFigures
    halt_reason: str | None = None


@final
class _Position:
    __slots__ = ("batch_index", "epoch", "global_step")

    def __init__(self) -> None:
        self.epoch = 0
        self.batch_index = 0
        self.global_step = 0


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
        self._config = config
        self._options = options
        self._inbox = inbox
        self._outbox = HeldOutbox(outbox)
        self._snapshots = snapshots
        # Snapshot buffers reused while the state's layout holds: the epoch-boundary stall allocates nothing.
        self._capture_pool = CapturePool()
        self._seed_templates = SeedTemplates()
        self._planned_capture = PlannedCapture()
        # False until the pool holds buffers for the current layout: set after the first step once the optimizer's
        # state exists (and again after a graft or restore), so the epoch end only copies.
        self._pool_reserved = False
        self._handoff = handoff
        self._data = data
        self._pos = _Position()
        sink = _OutboxSink(self._outbox)
        pos = self._pos
        self._policy = EmergencyPolicy(
            config,
            run_id=options.run_id,
            clock=MonotonicClock(),
            sink=sink,
            position=lambda: (pos.global_step, pos.epoch),
        )
        self._run = RunCounters(options.run_id)
        self._said_val_not_finite = False
        # (step, times in a row) of the state the last rollbacks went back to: a loop back to one state halts.
        self._rollback_target: tuple[int | None, int] = (None, 0)
        self._missed_this_epoch = 0
        self._last_checkpoint: str | None = None
        # The open epoch's and interval's sums: kept at a stop for its checkpoint, taken back by a resume from it.
        self._open_stats: tuple[IntervalStats, IntervalStats] | None = None
        self._restored_stats: tuple[OpenStats, OpenStats] | None = None
        self._hook_ms = 0.0
        # Measurements for benchmarks and tests (one float per epoch or restore; never read by the loop itself).
        self.hook_ms_history: list[float] = []
        self.stall_ms_history: list[float] = []
        self.epoch_train_s_history: list[float] = []
        self.epoch_train_cpu_s_history: list[float] = []
        self.restore_ms_history: list[tuple[str, float]] = []
        self._trainee: Trainee | None = None
        self._applier: BoundaryApplier | None = None
        self._packets: PacketBuilder | None = None
        self._isolation = IsolationMonitor(0, None)
        self._stepper = Stepper(compile=config.compile, batch_hook=options.batch_hook, policy=self._policy)

    # ------------------------------------------------------------------ public, lane thread

    @property
    def trainee(self) -> Trainee:
        assert self._trainee is not None, "run() has not built the model yet"
        return self._trainee

    @property
    def policy(self) -> EmergencyPolicy:
        return self._policy

    def run(self) -> LoopResult:
        """Train to the end (or a stop or halt) and return the result. Blocking: lane thread only.

        Raises: whatever breaks training (the actor crashes and its supervisor restarts it, which resumes).
        """
        config = self._config
        data = self._data if self._data is not None else load_data(config)
        self._data = data
        plan = batch_plan(config, data)
        self._build()
        writer = None
        if self._options.checkpoint_dir is not None:
            writer = CheckpointWriter(
                self._options.checkpoint_dir, keep_last=config.checkpoint_keep_last, on_written=_log_written
            )
        try:
            self._restore_at_start()
            status, reason = self._train(plan, writer)
            figures = self._finish(status, reason, writer)
        finally:
            if writer is not None:
                writer.close()
        return LoopResult(status=status, figures=figures, halt_reason=reason)

    # ------------------------------------------------------------------ building and restoring

    def _build(self) -> None:
        assert self._data is not None
        trainee = build_trainee(self._config, self._data, self._options.slot_targets, self._options.device)
        self._trainee = trainee
        self._applier = BoundaryApplier(trainee)
        self._packets = PacketBuilder(trainee)
        probe_split = self._data.val if self._data.val.num_samples else self._data.train
        self._isolation = IsolationMonitor(
            self._options.isolation_probe_every_steps, micro_batch(probe_split.x, trainee.device)
        )
        self._stepper.bind(trainee, self._data.train)

    def _restore_at_start(self) -> None:
        """Continue from the newest of: the fast snapshot an earlier incarnation left, or the last good checkpoint;
        of those whose plans in flight the planner's journal holds, when it is known (restore_point.py)."""
        read = self._options.journaled_step if self._options.expects_plans else None
        directory = self._options.checkpoint_dir if self._options.resume else None
        point = choose_restore(
            self._snapshots.latest,
            directory,
            at_most=self._options.resume_at_most,
            covered=journal_check(read),
            journal_known=read is not None,
        )
        if point is None:
            if self._options.resume:
                # A restart (or a resume) with nothing to continue from trains again from step 0: the planner, told
                # so, starts over as well instead of refusing every packet up to its last boundary.
                self._outbox.event(TrainingRestored(run_id=self._options.run_id, step=0, tier="none"))
            return
        # A checkpoint's plans in flight are not taken back: their attach handles name modules prepared in the
        # process that wrote it. Kasmina, told by TrainingRestored, prepares them again and resends them.
        self._restore(point.state, tier=point.tier, extra_s=point.read_s)
        if point.info is not None:
            self._last_checkpoint = point.info.file
        self._announce_restore(point.state, point.tier)
        if self._options.resumed_run:
            self._run.resumed_from = self._pos.global_step

    def _announce_restore(self, state: TrainState, tier: str) -> None:
        # Expect again the plans decided up to the restored step that take effect after it (the planner, told by
        # TrainingRestored, sends them again): a restored run applies them at the same steps as the first one.
        saved = state.counters.get("expected_plans")
        if self._options.expects_plans and isinstance(saved, str):
            have = {decided for decided, _ in self._inbox.pending()}
            for decided, effect in msgspec.json.decode(saved, type=list[tuple[int, int]]):
                if decided not in have and effect >= self._pos.global_step:
                    self._inbox.expect(decided, effect, resent=True)
        self._outbox.event(TrainingRestored(run_id=self._options.run_id, step=self._pos.global_step, tier=tier))

    def _restore(self, state: TrainState, *, tier: str, extra_s: float = 0.0, counters: bool = True) -> None:
        started = time.perf_counter()
        self._build()
        applier = self._applier
        assert applier is not None
        replay(applier, state.graft_log, state.seed_modules or None)
        load_into(self.trainee, state)
        self._pool_reserved = False
        self._planned_capture.forget()
        self._pos.global_step = state.global_step
        self._pos.epoch = state.epoch
        self._pos.batch_index = state.batch_index
        saved_stats = state.counters.get("open_stats")
        self._restored_stats = None
        if isinstance(saved_stats, str) and state.batch_index > 0:
            self._restored_stats = msgspec.json.decode(saved_stats, type=tuple[OpenStats, OpenStats])
        if counters:
            # Resume or restart: the run's health counters continue. A rollback keeps the current ones instead,
            # or every rollback would forget the failures that caused it.
            self._policy.restore(state.counters)
            self._run.restore(state.counters, stalls_now=self._inbox.statistics())
        elapsed = time.perf_counter() - started + extra_s
        self.restore_ms_history.append((tier, elapsed * 1e3))
        _log.info(
            "tolaria_restored",
            tier=tier,
            restore_ms=round(elapsed * 1e3, 3),
            step=state.global_step,
            epoch=state.epoch,
            batch_index=state.batch_index,
            seeds=len(state.seed_modules) if tier == "fast" else sum(1 for e in state.graft_log if e.kind == "attach"),
        )
        if tier == "full" and elapsed > self._config.rollback_full_deadline_s:
            self._policy.restore_deadline_missed(elapsed)

    def _counters(self) -> dict[str, float | int | str | None]:
        # The open epoch's sums: those a stop kept, else those a resume took back and has not continued yet (the
        # resumed session's first snapshot left them out, and a restart to it began the epoch's sums at zero).
        opened = self._open_stats
        open_stats = (opened[0].export(), opened[1].export()) if opened is not None else self._restored_stats
        run = self._run.export(
            expected_plans=self._inbox.pending(), stalls=self._inbox.statistics(), open_stats=open_stats
        )
        return {**self._policy.counters(), **run}

    def _take_open_stats(self) -> tuple[IntervalStats, IntervalStats]:
        """(the epoch's sums, the interval's) to train on with: fresh, or those a restored checkpoint saved."""
        saved = self._restored_stats
        self._restored_stats = None
        if saved is None:
            return IntervalStats(), IntervalStats()
        device = self.trainee.device
        return IntervalStats.restored(saved[0], device), IntervalStats.restored(saved[1], device)

    def _capture(self, *, keep_modules: bool, pooled: bool = True) -> TrainState:
        """The state now; ``pooled``: into the capture pool's reused buffers, by the layout's plan."""
        applier = self._applier
        assert applier is not None
        pos = self._pos
        return capture(
            self.trainee,
            global_step=pos.global_step,
            epoch=pos.epoch,
            batch_index=pos.batch_index,
            graft_log=applier.log,
            counters=self._counters(),
            keep_modules=keep_modules,
            pool=self._capture_pool if pooled else None,
            templates=self._seed_templates,
            planned=self._planned_capture if pooled else None,
        )

    def restore_checkpoint(self) -> bool:
        """Full-tier restore from the last good checkpoint (rebuild, replay, load); False without one. Lane thread."""
        directory = self._options.checkpoint_dir
        started = time.perf_counter()
        found = load_latest(directory) if directory is not None and directory.is_dir() else None
        if found is None:
            return False
        self._restore(found[0], tier="full", extra_s=time.perf_counter() - started, counters=False)
        return True

    def rollback(self, reason: str) -> bool:
        """Roll back to the fast snapshot (or the last checkpoint when the fast tier is off); False if neither.

        Lane thread, between steps; expected plans are dropped (those decided after the snapshot are re-decided).
        Asked for (a benchmark, an operator), it goes back however often it is asked.
        """
        return self._rollback(reason, loops=False) is None

    def _rollback(self, reason: str, *, loops: bool = True) -> str | None:
        """Roll back; None when done, else why the run must halt instead (no state to go back to, or, with ``loops``,
        the same state rolled back to too often: a fault every replay of it meets again, such as a model that turned
        NaN for good, rolled back thousands of times and never ended)."""
        state = self._snapshots.latest
        tier = "fast"
        if state is None:
            directory = self._options.checkpoint_dir
            found = load_latest(directory) if directory is not None and directory.is_dir() else None
            if found is None:
                _log.error("tolaria_rollback_impossible", reason=reason)
                return f"rollback impossible after {reason}"
            state, tier = found[0], "full"
        last, times = self._rollback_target
        if loops and state.global_step == last and times >= _ROLLBACKS_TO_ONE_STATE:
            _log.error("tolaria_rollback_loop", step=last, times=times, reason=reason)
            return f"rolled back to step {last} {times} times without getting past it ({reason})"
        release_modules(self._inbox.reset(), self._handoff)
        self._restore(state, tier=tier, counters=False)
        self._announce_restore(state, tier)
        step = self._pos.global_step
        same = self._rollback_target[1] + 1 if step == self._rollback_target[0] else 1
        self._rollback_target = (step, same)
        self._run.rollbacks += 1
        _log.warning("tolaria_rolled_back", reason=reason, step=step, rollbacks=self._run.rollbacks)
        return None

    # ------------------------------------------------------------------ the loop

    def _train(self, plan: object, writer: CheckpointWriter | None) -> tuple[LoopStatus, str | None]:
        from esper.nn.data_batches import BatchPlan

        assert isinstance(plan, BatchPlan)
        config = self._config
        pos = self._pos
        inbox = self._inbox
        every = config.state_every_steps
        probe = self._options.step_probe
        num_batches = plan.num_batches
        assert self._data is not None
        train = self._data.train
        snapshots = self._snapshots
        if snapshots.latest is None and snapshots.disabled_reason is None:
            # The run's start is its first fast snapshot: non-finite steps in the first epoch had nothing to roll back
            # to and halted the run. (Fresh buffers, not the pool's: the optimizer has no state to lay out yet.)
            snapshots.put(self._capture(keep_modules=True, pooled=False))
        while pos.epoch < config.epochs:
            epoch_started = time.perf_counter()
            epoch_cpu_started = time.thread_time()
            # The epoch's loss and hit sums: each interval's folded sums are added in when it ends (device ops).
            # A resume from a stop in mid-epoch carries on with the sums its checkpoint saved.
            epoch_stats, stats = self._take_open_stats()
            self._missed_this_epoch = 0
            batches: Iterator[tuple[int, TensorPair]] = iter_batches(train, plan, pos.epoch, pos.batch_index)
            while True:
                if inbox.has_due(pos.global_step):
                    # Before an epoch end a stop may not cut the wait short: the epoch end runs next (a stop waits for
                    # it), and it must see the plans due at its step applied, as an uninterrupted run does.
                    self._apply_due(stoppable=pos.batch_index < num_batches)
                t0 = time.perf_counter()
                item = next(batches, None)
                if item is None:
                    break  # a stop that came with the epoch's last step waits for its end: the packet needs the grads
                if inbox.stop_requested:
                    self._open_stats = (epoch_stats, stats)
                    return "stopped", inbox.stop_reason
                index, batch = item
                sketched = pos.global_step == self._isolation.sketch_step
                if sketched:
                    self._isolation.arm(self.trainee, pos.global_step)
                action = self._stepper.step(batch, t0, stats, pos.global_step)
                if sketched:
                    self._isolation.disarm()
                if not self._pool_reserved:
                    assert self._applier is not None
                    log_length = len(self._applier.log)
                    reserve_capture(self.trainee, self._capture_pool, self._planned_capture, log_length)
                    self._pool_reserved = True
                pos.batch_index = index + 1
                pos.global_step += 1
                if probe is not None and action is Action.CONTINUE:
                    probe(pos.global_step, self.trainee.model, batch)
                if action is Action.ROLLBACK:
                    halt = self._rollback("non-finite steps")
                    if halt is not None:
                        self._policy.halt_now(halt)
                        return "halted", halt
                    batches = iter_batches(train, plan, pos.epoch, pos.batch_index)
                    epoch_stats, stats = self._take_open_stats()
                    continue
                if every and pos.global_step % every == 0 and pos.batch_index < num_batches:
                    epoch_stats.add_sums(stats)
                    self._send_packet(stats, epoch_progress=pos.batch_index / num_batches)
                    stats = IntervalStats()
            self.epoch_train_s_history.append(time.perf_counter() - epoch_started)
            self.epoch_train_cpu_s_history.append(time.thread_time() - epoch_cpu_started)
            epoch_stats.add_sums(stats)
            outcome = self._end_epoch(epoch_stats, stats, epoch_started, writer)
            if outcome is not None:
                return outcome
        return "completed", None

    # ------------------------------------------------------------------ boundaries and packets

    def _apply_due(self, *, stoppable: bool = True) -> None:
        pos = self._pos
        # A plan resent after a restore waits for the planner's journal replay, which grows with the run: it gets as
        # long as a full restore may take.
        config = self._config
        due = self._inbox.take_due(
            pos.global_step,
            config.decision_deadline_ms / 1e3,
            grace_s=config.rollback_full_deadline_s,
            stoppable=stoppable,
        )
        if due.stall_s > 0:
            _log.info("boundary_stall", step=pos.global_step, stall_ms=round(due.stall_s * 1e3, 3))
        for plan in due.plans:
            self._apply_plan(plan, due.stall_s)
        if due.missed:
            self._missed_this_epoch += len(due.missed)
            _log.warning("plan_missed", step=pos.global_step, decided_on_steps=list(due.missed))

    def _apply_plan(self, plan: BoundaryPlan, stall_s: float) -> None:
        applier = self._applier
        assert applier is not None
        step = self._pos.global_step
        level = self._policy.level
        outcomes: list[OpOutcome] = []
        for op in plan.ops:
            if level >= EmergencyLevel.L3_CONSERVATIVE and op.kind != "detach":
                outcomes.append(
                    OpOutcome(
                        kind=op.kind,
                        slot=op.slot,
                        seed_id=op.seed_id,
                        applied=False,
                        error="adaptation paused (emergency level L3 or above)",
                    )
                )
                continue
            outcomes.append(
                applier.apply(
                    op, step=step, take_module=self._take_module, conservative=level >= EmergencyLevel.L2_ELEVATED
                )
            )
        if plan.ops:
            self._pool_reserved = False
            self._planned_capture.forget()
        receipt = BoundaryApplied(
            run_id=plan.run_id,
            decided_on_step=plan.decided_on_step,
            effect_step=plan.effect_step,
            applied_step=step,
            outcomes=tuple(outcomes),
            stall_ms=stall_s * 1e3,
            seed_parameters=self.trainee.seed_parameters(),
        )
        self._outbox.applied(receipt)

    def _take_module(self, op: SeedOp) -> nn.Module:
        if self._handoff is None or op.handle is None:
            raise ValueError(f"no prepared module for seed {op.seed_id!r} (handle {op.handle!r})")
        return self._handoff.take(op.handle)

    def _send_packet(
        self,
        stats: IntervalStats,
        *,
        epoch_progress: float,
        epoch: int | None = None,
        validation: tuple[float, float] | None = None,
        loss_delta: float | None = None,
        epoch_means: tuple[float, float] | None = None,
        epoch_stats: IntervalStats | None = None,
        probe: bool = True,
        expect: bool = True,
    ) -> None:
        pos = self._pos
        packets = self._packets
        assert packets is not None
        assert self._trainee is not None
        if probe:
            self._isolation.maybe_probe(self._trainee, pos.global_step, self._outbox.event)
        packet = packets.build(
            stats,
            run_id=self._options.run_id,
            epoch=pos.epoch if epoch is None else epoch,
            epochs_total=self._config.epochs,
            global_step=pos.global_step,
            epoch_progress=epoch_progress,
            hook_latency_ms=self._hook_ms,
            emergency_level=self._policy.level,
            validation=validation,
            loss_delta=loss_delta,
            epoch_means=epoch_means,
            epoch_stats=epoch_stats,
        )
        if expect:
            self._expect_plan()
        self._outbox.packet(packet)

    def _expect_plan(self) -> None:
        # Registered before the packet is sent, so even an instant plan finds its expectation.
        if self._options.expects_plans:
            step = self._pos.global_step
            self._inbox.expect(step, step + self._config.command_lag_steps)

    # ------------------------------------------------------------------ epoch end

    def evaluate(self, split: TensorPair) -> tuple[float, float]:
        """(mean loss, accuracy) of the current model on a split, in eval mode; (nan, 0) for an empty split."""
        return evaluate(self.trainee, split)

    def _end_epoch(
        self,
        epoch_stats: IntervalStats,
        stats: IntervalStats,
        epoch_started: float,
        writer: CheckpointWriter | None,
    ) -> tuple[LoopStatus, str | None] | None:
        assert self._data is not None
        val = self.evaluate(self._data.val) if self._data.val.num_samples else None
        if val is not None and not math.isfinite(val[0]) and not self._said_val_not_finite:
            # Training steps are checked every step; an eval pass that gives NaN (a model that misbehaves in eval
            # mode only) was silent: once a run, it says so.
            self._said_val_not_finite = True
            _log.warning("validation_not_finite", epoch=self._pos.epoch + 1, val_loss=str(val[0]))
        # Everything the epoch end sends reaches the event loop when the lane thread is done (see HeldOutbox).
        self._outbox.hold()
        started: float | None = None
        try:
            # The planner's benefit evidence, ahead of the packet of the same step (the outbox keeps the order).
            step = self._pos.global_step
            report = seed_validation(self.trainee, self._data.val, run_id=self._options.run_id, step=step)
            if report is not None:
                self._outbox.event(report)
            # The stall: everything the loop does at an epoch end besides the validation any loop would run.
            started = time.perf_counter()
            return self._close_epoch(epoch_stats, stats, val, (started - epoch_started) * 1e3, writer)
        finally:
            self._outbox.release()
            if started is not None:
                self.stall_ms_history.append((time.perf_counter() - started) * 1e3)

    def _close_epoch(
        self,
        epoch_stats: IntervalStats,
        stats: IntervalStats,
        val: tuple[float, float] | None,
        epoch_ms: float,
        writer: CheckpointWriter | None,
    ) -> tuple[LoopStatus, str | None] | None:
        config = self._config
        pos = self._pos
        assert self._data is not None
        hook_started = time.perf_counter()
        finished_epoch = pos.epoch
        loss_delta = None
        if val is not None and self._run.last_val_loss is not None:
            loss_delta = val[0] - self._run.last_val_loss
        train = epoch_stats.means()
        # The epoch-end packet carries this epoch's hook time and emergency level, so it is built after the verdict;
        # its plan is expected (and the isolation probe runs) before the capture, so a resume from this epoch's
        # checkpoint waits for that plan and the model state is the one the continuing run has.
        self._isolation.maybe_probe(self.trainee, pos.global_step, self._outbox.event)
        self._expect_plan()
        if val is not None:
            self._run.last_val_loss = val[0]
        pos.epoch += 1
        pos.batch_index = 0
        last = pos.epoch >= config.epochs
        # One capture serves both tiers: its tensors are private copies that nobody changes afterwards, so the
        # fast tier keeps it and the writer thread serialises it concurrently.
        state = self._capture(keep_modules=True) if self._snapshots.disabled_reason is None else None
        due = writer is not None and not last and config.checkpoint_every_epochs > 0
        due = due and pos.epoch % max(1, config.checkpoint_every_epochs) == 0
        if due and state is None:
            state = self._capture(keep_modules=False)
        pending = self._pending_json() if due else ()
        self._hook_ms = (time.perf_counter() - hook_started) * 1e3
        self.hook_ms_history.append(self._hook_ms)
        verdict = self._policy.end_epoch(
            epoch_ms=epoch_ms, hook_ms=self._hook_ms, missed_decisions=self._missed_this_epoch
        )
        if state is not None:
            # Captured before the verdict (the stall's order): the state continues after it, with the level, streak
            # and clean dwell it left (a resume from here repeated neither this epoch's verdict nor its clean tick,
            # and diverged from the uninterrupted run).
            state.counters.update(self._policy.counters())
        self._send_packet(
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
        self._run.epoch_figures = (*train, *(val if val is not None else (float("nan"), 0.0)))
        fields = epoch_fields(
            epoch=finished_epoch + 1,
            epochs=config.epochs,
            step=pos.global_step,
            train=train,
            validation=val,
            epoch_ms=epoch_ms,
            hook_ms=self._hook_ms,
            emergency_level=int(self._policy.level),
        )
        _log.info("epoch_end", **fields)
        if verdict.failed:
            _log.warning("epoch_failed", epoch=finished_epoch + 1, reason=verdict.reason, action=verdict.action.value)
        if verdict.action is Action.ROLLBACK:
            # No loop guard here: failed epochs have their own end, the streak (failed_epochs_to_halt), and epochs
            # failed only because the breaker is still open go back to one state by design until it half-opens.
            halt = self._rollback(f"failed epoch: {verdict.reason}", loops=False)
            if halt is not None:
                self._policy.halt_now(halt)
                return "halted", halt
            return None
        if verdict.action is Action.HALT:
            return "halted", verdict.halt_reason or verdict.reason
        if state is not None and self._snapshots.disabled_reason is None:
            if not self._snapshots.put(state):
                _log.warning("snapshot_tier_disabled", reason=self._snapshots.disabled_reason)
        if writer is not None and due and state is not None:
            writer.submit(state, pending)
        return None

    def _pending_json(self) -> tuple[str, ...]:
        return tuple(msgspec.json.encode(p).decode() for p in self._inbox.received_plans())

    # ------------------------------------------------------------------ the end

    def _finish(self, status: LoopStatus, reason: str | None, writer: CheckpointWriter | None) -> TrainingFigures:
        if writer is not None:
            state = self._capture(keep_modules=False)
            writer.submit(state, self._pending_json())
            writer.flush()
            self._last_checkpoint = f"step-{state.global_step}.pt"
        test = None
        assert self._data is not None
        if status == "completed" and self._data.test.num_samples:
            test = self.evaluate(self._data.test)
        trainee = self.trainee
        stalls, stall_ms = self._run.stall_totals(self._inbox.statistics())
        figures = self._run.epoch_figures
        return TrainingFigures(
            epochs=self._pos.epoch,
            global_step=self._pos.global_step,
            host_parameters=trainee.host_parameters,
            seed_parameters=sum(trainee.seed_parameters().values()),
            train_loss=None if figures is None else finite(figures[0]),
            train_accuracy=None if figures is None else figures[1],
            val_loss=None if figures is None else finite(figures[2]),
            val_accuracy=None if figures is None else figures[3],
            test_loss=None if test is None else finite(test[0]),
            test_accuracy=None if test is None else test[1],
            skipped_steps=self._policy.skipped_steps,
            stalls=stalls,
            stall_ms=stall_ms,
            rollbacks=self._run.rollbacks,
            emergency_level=int(self._policy.level),
            halted=status == "halted",
            halt_reason=reason if status == "halted" else None,
            completed=status == "completed",
            resumed_from_step=self._run.resumed_from,
            checkpoint=self._last_checkpoint,
        )


def _log_written(info: object) -> None:
    file = getattr(info, "file", "?")
    _log.info("checkpoint_written", file=file, step=getattr(info, "global_step", None))


@final
class _OutboxSink:
    """An EventSink for the ladder and breaker on the lane thread: forwards to the outbox (thread-safe)."""

    def __init__(self, outbox: Outbox) -> None:
        self._outbox = outbox

    def emit(self, event: Message | Record) -> None:
        self._outbox.event(event)


def default_checkpoint_dir(run_dir: Path) -> Path:
    """``<run dir>/checkpoints``."""
    return Path(run_dir) / "checkpoints"
