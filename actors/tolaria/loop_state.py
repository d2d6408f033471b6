"""The step loop's shared state: position, model, policy and counters; the model's build and the state's capture."""

from __future__ import annotations

from typing import TYPE_CHECKING, final

from actors.tolaria.boundary import BoundaryApplier
from actors.tolaria.build import Trainee, batch_plan, build_trainee
from actors.tolaria.capture_plan import PlannedCapture
from actors.tolaria.capture_pool import CapturePool
from actors.tolaria.emergencies import EmergencyPolicy
from actors.tolaria.isolation_monitor import (
    COUNTER,
    LAST_PROBE,
    SKETCH_STEP,
    IsolationMonitor,
    export_totals,
    micro_batch,
)
from actors.tolaria.loop_watch import LoopWatch
from actors.tolaria.outbox import HeldOutbox, Outbox
from actors.tolaria.run_counters import RunCounters
from actors.tolaria.snapshots import SeedTemplates, SnapshotStore, TrainState, capture
from actors.tolaria.step_tuning import StepTuner
from actors.tolaria.stepper import Stepper
from actors.tolaria.telemetry import IntervalStats, OpenStats, PacketBuilder
from esper.runtime.clock import MonotonicClock

if TYPE_CHECKING:
    from torch import nn

    from actors.tolaria.checkpoints import CheckpointWriter
    from actors.tolaria.loop_options import LoopOptions
    from actors.tolaria.plans import PlanInbox
    from esper.nn.data import DataSplits
    from esper.runtime.handoff import Handoff
    from schemas.base import Message, Record
    from schemas.config import TolariaConfig


@final
class _Position:
    __slots__ = ("batch_index", "epoch", "global_step")

    def __init__(self) -> None:
        self.epoch = 0
        self.batch_index = 0
        self.global_step = 0


@final
class LoopState:
    """What the step loop's parts share: its config, position, model, emergency policy, counters, inbox and outbox;
    with the model's build and the state's capture. One per incarnation; the lane thread only."""

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
        self.config = config
        self.options = options
        self.inbox = inbox
        self.outbox = HeldOutbox(outbox)
        self.watch = LoopWatch(options.event_loop)
        self.snapshots = snapshots
        # Snapshot buffers reused while the state's layout holds: the epoch-boundary stall allocates nothing.
        self.capture_pool = CapturePool()
        self.seed_templates = SeedTemplates()
        self.planned_capture = PlannedCapture()
        # False until the pool holds buffers for the current layout: set after the first step once the optimizer's
        # state exists (and again after a graft or restore), so the epoch end only copies.
        self.pool_reserved = False
        self.handoff = handoff
        self.data = data
        self.pos = _Position()
        sink = _OutboxSink(self.outbox)
        pos = self.pos
        self.policy = EmergencyPolicy(
            config,
            run_id=options.run_id,
            clock=MonotonicClock(),
            sink=sink,
            position=lambda: (pos.global_step, pos.epoch),
        )
        self.run_counters = RunCounters(options.run_id)
        self.said_val_not_finite = False
        # (step, times in a row) of the state the last rollbacks went back to: a loop back to one state halts.
        self.rollback_target: tuple[int | None, int] = (None, 0)
        self.missed_this_epoch = 0
        # The longest the event loop ran nothing before a plan of this epoch was missed (0.0: it was not the cause).
        self.loop_silent_s = 0.0
        self.last_checkpoint: str | None = None
        # The restored checkpoint is the one an L4 halt wrote at the end of the run's last epoch (see Restorer.restore).
        self.restored_halt = False
        # The running loop's checkpoint writer (None between runs and without a checkpoint directory).
        self.writer: CheckpointWriter | None = None
        # The open epoch's and interval's sums: kept at a stop for its checkpoint, taken back by a resume from it.
        self.open_stats: tuple[IntervalStats, IntervalStats] | None = None
        self.restored_stats: tuple[OpenStats, OpenStats] | None = None
        self.hook_ms = 0.0
        # The latest epoch end's state copy, part of hook_ms that tolaria.epoch_hook_budget_ms does not bound.
        self.capture_ms = 0.0
        self.said_slow_copy = False
        # Measurements for benchmarks and tests (one float per epoch or restore; never read by the loop itself).
        self.hook_ms_history: list[float] = []
        self.capture_ms_history: list[float] = []
        self.stall_ms_history: list[float] = []
        self.restore_ms_history: list[tuple[str, float]] = []
        self._trainee: Trainee | None = None
        self.applier: BoundaryApplier | None = None
        self.packets: PacketBuilder | None = None
        self.isolation = IsolationMonitor(0, None)
        self.stepper = Stepper(compile=config.compile, batch_hook=options.batch_hook, policy=self.policy)

    @property
    def trainee(self) -> Trainee:
        assert self._trainee is not None, "run() has not built the model yet"
        return self._trainee

    def build(self) -> None:
        assert self.data is not None
        counted = self._trainee.session_violations() if self._trainee is not None else 0
        trainee = build_trainee(self.config, self.data, self.options.slot_targets, self.options.device)
        # A restore rebuilds the model: the session's isolation count goes on (restore_totals keeps it there).
        trainee.violations_offset = -counted
        self._trainee = trainee
        self.applier = BoundaryApplier(trainee)
        self.packets = PacketBuilder(trainee)
        probe_split = self.data.val if self.data.val.num_samples else self.data.train
        self.isolation = IsolationMonitor(
            self.options.isolation_probe_every_steps, micro_batch(probe_split.x, trainee.device)
        )
        self.stepper.bind(trainee, self.data.train, self.tuner(), classes=self.data.num_classes)

    def tuner(self) -> StepTuner | None:
        """The rate schedule and clipping the config asks for, over the run's configured steps (None: neither)."""
        assert self.data is not None
        steps = batch_plan(self.config, self.data).num_batches * self.config.epochs
        return StepTuner.for_config(self.config, steps)

    def counters(self) -> dict[str, float | int | str | None]:
        # The open epoch's sums: those a stop kept, else those a resume took back and has not continued yet (the
        # resumed session's first snapshot left them out, and a restart to it began the epoch's sums at zero).
        opened = self.open_stats
        open_stats = (opened[0].export(), opened[1].export()) if opened is not None else self.restored_stats
        run = self.run_counters.export(
            expected_plans=self.inbox.pending(), stalls=self.inbox.statistics(), open_stats=open_stats
        )
        # Each seed's isolation total belongs to the state: a restore to it charges only the violations after it.
        isolation = {
            COUNTER: export_totals(self.trainee),
            LAST_PROBE: self.isolation.last_probe_step,
            SKETCH_STEP: self.isolation.sketch_step,
        }
        return {**self.policy.counters(), **run, **isolation}

    def take_open_stats(self) -> tuple[IntervalStats, IntervalStats]:
        """(the epoch's sums, the interval's) to train on with: fresh, or those a restored checkpoint saved."""
        saved = self.restored_stats
        self.restored_stats = None
        if saved is None:
            return IntervalStats(), IntervalStats()
        device = self.trainee.device
        return IntervalStats.restored(saved[0], device), IntervalStats.restored(saved[1], device)

    def capture(self, *, keep_modules: bool, pooled: bool = True) -> TrainState:
        """The state now; ``pooled``: into the capture pool's reused buffers, by the layout's plan."""
        applier = self.applier
        assert applier is not None
        pos = self.pos
        return capture(
            self.trainee,
            global_step=pos.global_step,
            epoch=pos.epoch,
            batch_index=pos.batch_index,
            graft_log=applier.log,
            counters=self.counters(),
            keep_modules=keep_modules,
            pool=self.capture_pool if pooled else None,
            templates=self.seed_templates,
            planned=self.planned_capture if pooled else None,
        )


@final
class _OutboxSink:
    """An EventSink for the ladder and breaker on the lane thread: forwards to the outbox (thread-safe)."""

    def __init__(self, outbox: Outbox) -> None:
        self._outbox = outbox

    def emit(self, event: Message | Record) -> None:
        self._outbox.event(event)
