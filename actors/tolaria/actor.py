"""The Tolaria actors: a trainer that runs the step loop on the train lane, and a control actor that receives plans.

Why two actors under one supervisor ("tolaria", one_for_all): the trainer's one message handler awaits the whole
step loop on the lane, so it cannot also receive plans; the control actor can, and hands them to the lane thread
through the PlanInbox (a threading.Condition). The lane thread never touches an asyncio object: packets, receipts
and emergency events go back through ``loop.call_soon_threadsafe`` (LoopOutbox), which never blocks training.

What survives a crash and restart of either actor lives in the TolariaCell (built once per run): the plan inbox,
the fast snapshot and the finish signal. A restarted trainer resumes from the fast snapshot or the last checkpoint.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, assert_never, final

import structlog

from actors.tolaria.failure_streak import repeated_failure
from actors.tolaria.loop import TrainingLoop
from actors.tolaria.loop_options import LoopOptions, LoopResult
from actors.tolaria.loop_outbox import LoopOutbox
from actors.tolaria.plans import release_modules
from esper.runtime.actor import Actor
from esper.runtime.child_spec import ChildSpec
from esper.runtime.supervisor import Supervisor
from schemas.base import Message
from schemas.boundary import BoundaryApplied, BoundaryPlan, OpOutcome

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from torch import nn

    from actors.tolaria.cell import TolariaCell
    from actors.tolaria.loop_outbox import PlannerNote
    from esper.nn.data import DataSplits, TensorPair
    from esper.runtime.events import EventSink
    from esper.runtime.handoff import Handoff
    from esper.runtime.lanes import Lane
    from schemas.config import TolariaConfig
    from schemas.state import SystemStatePacket

_log = structlog.get_logger("actors.tolaria")


class StartTraining(Message, frozen=True):
    """The trainer's own first message: run the step loop (once per incarnation)."""

    incarnation: int


class TrainingEnded(Message, frozen=True):
    """From the trainer (of incarnation ``incarnation``) to the control actor: training is over, stop normally."""

    status: str
    incarnation: int


ControlMessage = BoundaryPlan | TrainingEnded


@final
@dataclass(frozen=True, slots=True)
class TolariaWiring:
    """What the composition root hands Tolaria besides its config section.

    Attributes:
        run_id: the run's id.
        run_dir: the run directory (checkpoints go to ``<run_dir>/checkpoints``); None: no checkpoints.
        lane: the ``train`` lane.
        cell: shared state across restarts (``new_cell``).
        sink: emergency and breaker events.
        handoff: where Kasmina leaves prepared seed modules.
        subscribers: receive each SystemStatePacket on the event loop (Tamiyo, Kasmina).
        expects_plans: a planner answers every packet with one BoundaryPlan.
        on_applied: receives each BoundaryApplied receipt on the event loop (Kasmina).
        to_planner: receives each SeedValidationReport and TrainingRestored on the event loop (Kasmina); None: the
            reports are dropped and restores only logged.
        resume: continue from the run directory's last checkpoint at the first start (``--resume``).
        slot_targets: kasmina.slot_targets.
        data: preloaded splits (tests); None loads them from the config on the lane.
        batch_hook: a test hook applied to each batch.
        step_probe: a benchmark hook called after each completed step (see LoopOptions).
        isolation_probe_every_steps: probe live seeds for gradient isolation at most this often (0: never).
        resume_at_most: with ``resume``, the newest checkpoint step the first start may continue from (see
            LoopOptions); None: the newest.
        journaled_step: reads the planner journal's last boundary step (see LoopOptions); None: not known.
        halt_reason: with ``resume``, why the run halted when its checkpoint is an L4 halt's at the end of the last
            epoch (see LoopOptions); None: not on record.
        run_keys: the config keys the run trains with, for the checkpoint manifest (see LoopOptions); None: none.
        written_by: the Esper version training, for the checkpoint manifest (see LoopOptions); None: not recorded.
    """

    run_id: str
    run_dir: Path | None
    lane: Lane
    cell: TolariaCell
    sink: EventSink
    handoff: Handoff[nn.Module] | None = None
    subscribers: tuple[Callable[[SystemStatePacket], None], ...] = ()
    expects_plans: bool = False
    on_applied: Callable[[BoundaryApplied], None] | None = None
    to_planner: Callable[[PlannerNote], None] | None = None
    resume: bool = False
    slot_targets: tuple[str, ...] = ()
    data: DataSplits | None = None
    batch_hook: Callable[[int, TensorPair], TensorPair] | None = None
    step_probe: Callable[[int, nn.Module, TensorPair], None] | None = None
    isolation_probe_every_steps: int = 0
    resume_at_most: int | None = None
    journaled_step: Callable[[], int | None] | None = None
    halt_reason: str | None = None
    run_keys: Mapping[str, object] | None = None
    written_by: str | None = None


@final
class TolariaControl(Actor[ControlMessage]):
    """Receives BoundaryPlans (from Kasmina) and hands them to the step loop; event loop only, never blocks."""

    def __init__(
        self,
        cell: TolariaCell,
        capacity: int = 1024,
        *,
        handoff: Handoff[nn.Module] | None = None,
        on_applied: Callable[[BoundaryApplied], None] | None = None,
    ) -> None:
        super().__init__(inbox=(BoundaryPlan, TrainingEnded), capacity=capacity)
        self._cell = cell
        # Built before its sibling trainer starts (one_for_all restarts both, control first): a TrainingEnded of a
        # trainer that had started by now is an earlier incarnation's, left in the mailbox its path keeps.
        self._born_after = cell.incarnations
        self._handoff = handoff
        self._on_applied = on_applied

    async def handle(self, msg: ControlMessage) -> None:
        match msg:
            case BoundaryPlan():
                verdict = self._cell.inbox.offer(msg)
                if verdict == "accepted":
                    return
                late = verdict == "late"
                _log.warning(
                    "boundary_plan_dropped",
                    decided_on_step=msg.decided_on_step,
                    effect_step=msg.effect_step,
                    detail="late: its deadline passed" if late else "never expected",
                )
                if late:
                    self._refuse(msg)
            case TrainingEnded() if msg.incarnation <= self._born_after:
                _log.warning("training_ended_dropped", incarnation=msg.incarnation, detail="an earlier trainer's")
            case TrainingEnded():
                self.request_stop()
            case _:
                assert_never(msg)

    def _refuse(self, plan: BoundaryPlan) -> None:
        """A plan that missed its step is never applied: its prepared modules are released and the planner gets a
        receipt saying no op took effect, so a seed it germinated is culled instead of waiting for an attach."""
        release_modules((plan,), self._handoff)
        if self._on_applied is None or not plan.ops:
            return
        error = f"the plan missed its step {plan.effect_step} (decided on {plan.decided_on_step}) and was dropped"
        self._on_applied(
            BoundaryApplied(
                run_id=plan.run_id,
                decided_on_step=plan.decided_on_step,
                effect_step=plan.effect_step,
                applied_step=plan.effect_step,
                outcomes=tuple(
                    OpOutcome(kind=op.kind, slot=op.slot, seed_id=op.seed_id, applied=False, error=error)
                    for op in plan.ops
                ),
            )
        )


@final
class TolariaTrainer(Actor[StartTraining]):
    """Runs the step loop on the train lane, once per incarnation; stops normally when training ends.

    A stop request reaches the lane thread through the plan inbox: the loop finishes its step, writes a checkpoint
    and returns, and only then does this actor stop (the lane never abandons started work). An exception from the
    loop crashes this actor; the supervisor restarts both Tolaria actors and the new trainer resumes. The
    ``max_without_progress``-th failure in a row that got no further than the step of the failures before it fails
    with RepeatedFailure instead, which no supervisor restarts: the run ends.
    """

    # Its one message is the whole training run: a "latency" of 30000 ms read as a stall.
    reports_latency: ClassVar[bool] = False

    def __init__(
        self,
        config: TolariaConfig,
        wiring: TolariaWiring,
        control: Callable[[], TolariaControl | None],
        *,
        max_without_progress: int = 3,
    ) -> None:
        super().__init__(inbox=(StartTraining,), capacity=4)
        self._config = config
        self._wiring = wiring
        self._control = control
        self._max_without_progress = max_without_progress

    async def on_start(self) -> None:
        cell = self._wiring.cell
        cell.incarnations += 1
        self.ref.tell_nowait(StartTraining(incarnation=cell.incarnations))

    async def handle(self, msg: StartTraining) -> None:
        wiring = self._wiring
        cell = wiring.cell
        loop = asyncio.get_running_loop()
        outbox = LoopOutbox(
            loop,
            subscribers=wiring.subscribers,
            on_applied=wiring.on_applied,
            sink=wiring.sink,
            to_planner=wiring.to_planner,
        )
        options = LoopOptions(
            run_id=wiring.run_id,
            checkpoint_dir=None if wiring.run_dir is None else Path(wiring.run_dir) / "checkpoints",
            expects_plans=wiring.expects_plans,
            resume=wiring.resume or msg.incarnation > 1,
            resumed_run=wiring.resume and msg.incarnation == 1,
            slot_targets=wiring.slot_targets,
            device=wiring.lane.device,
            batch_hook=wiring.batch_hook,
            step_probe=wiring.step_probe,
            isolation_probe_every_steps=wiring.isolation_probe_every_steps,
            # The resume's point holds for the first incarnation only: a restart continues from what it wrote since.
            resume_at_most=wiring.resume_at_most if msg.incarnation == 1 else None,
            journaled_step=wiring.journaled_step,
            halt_reason=wiring.halt_reason,
            run_keys=wiring.run_keys,
            written_by=wiring.written_by,
            event_loop=loop,
        )
        release_modules(cell.inbox.reset(), wiring.handoff)
        if cell.run_stop is None:
            cell.inbox.clear_stop()
        training = TrainingLoop(
            self._config,
            options,
            inbox=cell.inbox,
            outbox=outbox,
            snapshots=cell.snapshots,
            handoff=wiring.handoff,
            data=wiring.data,
        )
        cell.last_loop = training
        if msg.incarnation > 1:
            _log.warning("tolaria_restarted", incarnation=msg.incarnation)
        try:
            result = await self._run_until_done(training)
        except Exception as err:
            if cell.failures.record(training.global_step) >= self._max_without_progress:
                raise repeated_failure(err, cell.failures) from err
            raise
        cell.result = result
        if result.status != "stopped" or cell.run_stop is not None:
            cell.finished.set()
        _log.info(
            "training_finished",
            status=result.status,
            epochs=result.figures.epochs,
            global_step=result.figures.global_step,
            test_accuracy=result.figures.test_accuracy,
            halt_reason=result.halt_reason,
        )
        control = self._control()
        # Only when training ended on its own (or the run asked): a trainer its supervisor stops has a sibling being
        # stopped or restarted too, and a restarted control must not take this as its own end.
        if not self.stopping and control is not None and not control.stopping:
            control.ref.tell_nowait(TrainingEnded(status=result.status, incarnation=msg.incarnation))
        self.request_stop()

    async def _run_until_done(self, training: TrainingLoop) -> LoopResult:
        inbox = self._wiring.cell.inbox
        async with asyncio.TaskGroup() as tg:
            job = tg.create_task(self._wiring.lane.run(training.run))
            watcher = tg.create_task(self.until_stopping(asyncio.Event().wait))
            try:
                await asyncio.wait((job, watcher), return_when=asyncio.FIRST_COMPLETED)
                if not job.done():
                    # A stop was requested: the loop finishes its step, checkpoints and returns.
                    inbox.request_stop("tolaria stopping")
                    await asyncio.wait((job,))
            except asyncio.CancelledError:
                # Cancelled (a shutdown deadline): the lane waits out the job, so tell the job to end first.
                inbox.request_stop("tolaria cancelled")
                raise
            watcher.cancel()
        return job.result()


def tolaria_spec(
    config: TolariaConfig,
    wiring: TolariaWiring,
    *,
    shutdown_deadline_s: float = 30.0,
    max_restarts: int = 3,
    window_s: float = 60.0,
    max_without_progress: int = 3,
) -> ChildSpec:
    """The "tolaria" subtree: a one_for_all supervisor over the control actor and the trainer, transient (a
    finished training run stays finished; a crash restarts both, and the trainer resumes, unless it failed
    ``max_without_progress`` times in a row at no later step: see TolariaTrainer)."""

    def build() -> Supervisor:
        holder: list[TolariaControl] = []

        def make_control() -> TolariaControl:
            control = TolariaControl(wiring.cell, handoff=wiring.handoff, on_applied=wiring.on_applied)
            holder[:] = [control]
            return control

        def current_control() -> TolariaControl | None:
            return holder[0] if holder else None

        return Supervisor(
            [
                ChildSpec("control", make_control, restart="transient", shutdown_deadline_s=shutdown_deadline_s),
                ChildSpec(
                    "trainer",
                    lambda: TolariaTrainer(config, wiring, current_control, max_without_progress=max_without_progress),
                    restart="transient",
                    shutdown_deadline_s=shutdown_deadline_s,
                ),
            ],
            strategy="one_for_all",
            max_restarts=max_restarts,
            window_s=window_s,
            # No backoff, whatever weatherlight.restart_backoff_* say (README, "Stopping and resuming"): a restart
            # replays the steps since the last snapshot, and a wait would only stall training; restart_max and
            # restart_window_s (and restart_max_without_progress) bound the restarts instead.
            backoff_initial_s=0.0,
            backoff_max_s=1.0,
            name="tolaria",
        )

    return ChildSpec("tolaria", build, restart="transient", shutdown_deadline_s=shutdown_deadline_s * 2)
