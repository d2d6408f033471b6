"""The composition root's glue: the run's subsystems as child specs, and the routes between them.

Only esper.run imports this module. The step pipeline, per state packet of step s (schemas/boundary.py): Tolaria's
packet goes to Kasmina and Nissa; Kasmina shows it to Tamiyo with its own view of the seeds (stages, gate results)
once every earlier packet is planned; Tamiyo's Decision goes to Kasmina; Kasmina's BoundaryPlan to tolaria/control;
Tolaria's BoundaryApplied back to Kasmina and Nissa; validation reports and restores from Tolaria to Kasmina.
Kasmina's SeedStageChanged events go to the run's sink (events.jsonl) and to Nissa. Refs are resolved when a message
is sent (the tree starts after the specs are built, and a restarted actor keeps its mailbox).
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar, final

import structlog

from actors.kasmina.actor import KasminaActor
from actors.nissa.actor import ALERT_FIRED, Nissa
from actors.tamiyo.actor import TamiyoActor
from actors.tezzeret.compile import COMPILE_SEED
from actors.tolaria.actor import TolariaControl
from actors.urza.artifact import ArtifactCorrupt, ArtifactNotFound, BlobMissing, BlueprintUnavailable, UrzaError
from esper.decisions import Decision as DecisionRecord
from esper.decisions import add_decision, vetoed_by
from esper.nn.blueprints import SourcedModule, build_blueprint
from esper.runtime.emergency_tally import EmergencyTally
from esper.runtime.errors import ActorStopped, MailboxFull
from esper.runtime.percentiles import nearest_rank
from esper.runtime.stage_refusals import Refusal, RefusalLog, Transition, effect_step
from esper.summary_table import seed_outcomes, unapplied_transitions
from schemas.boundary import FALLBACK_SUFFIX, TrainingRestored
from schemas.domain_enums import TelemetryLevel
from schemas.enums import SeedLifecycleStage
from schemas.nissa import LifecycleRestored, SeedStageChanged
from schemas.run import GrowthFigures
from schemas.runtime import BreakerTransition, ChildFailed, ChildRestarted, EmergencySignal
from schemas.telemetry import MetricPoint, TelemetryEvent, TelemetryPacket

if TYPE_CHECKING:
    import asyncio
    from collections.abc import Callable, Mapping, Sequence

    from torch import nn

    from actors.kasmina.preparation import SeedSource
    from actors.tamiyo.policy import Policy
    from actors.urza.seed_source import UrzaSeedSource
    from esper.nn.blueprints import BlueprintDescriptor, SlotShape
    from esper.nn.data import TensorPair
    from esper.runtime.actor import Actor
    from esper.runtime.events import EventSink
    from esper.runtime.ref import ActorRef
    from esper.runtime.system import ActorSystem
    from schemas.base import Message, Record
    from schemas.boundary import BoundaryApplied, BoundaryPlan, Decision
    from schemas.kasmina import SeedValidationReport
    from schemas.state import SystemStatePacket

_log = structlog.get_logger("esper.wiring")

M = TypeVar("M", bound="Message")

NissaEvent = (
    SeedStageChanged
    | LifecycleRestored
    | TrainingRestored
    | EmergencySignal
    | BreakerTransition
    | ChildRestarted
    | TelemetryPacket
)
NISSA_EVENTS = (
    SeedStageChanged,
    LifecycleRestored,
    TrainingRestored,
    EmergencySignal,
    BreakerTransition,
    ChildRestarted,
    TelemetryPacket,
)
"""The run-sink events Nissa also consumes."""


@final
@dataclass(frozen=True, slots=True)
class RunHooks:
    """Test hooks of a run (none in production).

    Attributes:
        crash_tamiyo_at_step: once a packet of at least this step passes, Tamiyo is told a packet of another run,
            which crashes it (its supervisor restarts it, and Tolaria, which continues from its last snapshot).
        wrap_source: wraps the seed source Kasmina fetches modules from (e.g. to hand out a seed that cannot help).
        packet_tap: sees every SystemStatePacket on the event loop (benchmarks read the training loss per packet);
            must not block.
        step_probe: called on the train lane after each completed step with the global step, the model and that
            step's batch (benchmarks measure the model on a fixed probe set); must leave the model as it found it.
        tamiyo_policy: decides instead of the configured policy, on the policy lane, under the same deadline and
            breaker (e.g. a policy slower than an epoch); reported under ``tamiyo.policy``'s name.
    """

    crash_tamiyo_at_step: int | None = None
    wrap_source: Callable[[SeedSource], SeedSource] | None = None
    packet_tap: Callable[[SystemStatePacket], None] | None = None
    step_probe: Callable[[int, nn.Module, TensorPair], None] | None = None
    tamiyo_policy: Policy | None = None


@final
class Routes:
    """Late-bound sends between the actors of one run (every method runs on the event loop and never blocks).

    A tell that finds the mailbox full or the actor stopped loses that message, which is counted in ``dropped``: the
    pipeline then stalls Tolaria at the effect step up to its decision deadline, never forever.
    """

    def __init__(self, actors: ActorSystem, run_sink: EventSink) -> None:
        self._actors = actors
        self._sink = run_sink
        self.dropped = 0

    def _tell(self, path: str, actor_type: type[Actor[M]], msg: M, *, quiet_if_absent: bool = False) -> None:
        """Send without waiting; a full mailbox, or an actor absent or stopped, loses the message (counted and
        logged; with ``quiet_if_absent`` an absent or stopped actor loses it without a word)."""
        try:
            self._actors.ref(path, actor_type).tell_nowait(msg)
        except (ActorStopped, ValueError) as err:
            if quiet_if_absent:
                return
            self._dropped(path, msg, err)
        except MailboxFull as err:
            self._dropped(path, msg, err)

    def _dropped(self, path: str, msg: object, err: Exception) -> None:
        self.dropped += 1
        _log.warning("route_dropped", to=path, message=type(msg).__name__, error=f"{type(err).__name__}: {err}")

    def event_to_nissa(self, event: NissaEvent) -> None:
        """An event for Nissa, dropped without a word while Nissa is not running (not started yet, restarting or
        stopped: it learns the run's state from the next packets); a full mailbox is counted as for any route."""
        self._tell("nissa", Nissa, event, quiet_if_absent=True)

    def _ref(self, path: str, actor_type: type[Actor[M]]) -> ActorRef[M]:
        return self._actors.ref(path, actor_type)

    # Tolaria -> others (Tamiyo sees each packet through Kasmina, with the lifecycle's view of the seeds)
    def packet_to_kasmina(self, packet: SystemStatePacket) -> None:
        self._tell("kasmina", KasminaActor, packet)

    def packet_to_nissa(self, packet: SystemStatePacket) -> None:
        self._tell("nissa", Nissa, packet)

    def applied(self, receipt: BoundaryApplied) -> None:
        self._tell("kasmina", KasminaActor, receipt)
        self._tell("nissa", Nissa, receipt)

    def to_planner(self, note: SeedValidationReport | TrainingRestored) -> None:
        self._tell("kasmina", KasminaActor, note)

    # Kasmina -> Tamiyo, Tamiyo -> Kasmina, Kasmina -> Tolaria: awaited tells (backpressure, in order)
    async def observed(self, packet: SystemStatePacket) -> None:
        await self._ref("tamiyo", TamiyoActor).tell(packet)

    async def decision(self, decision: Decision) -> None:
        await self._ref("kasmina", KasminaActor).tell(decision)

    def decision_latency(self, decision: Decision) -> None:
        """Nissa's decision-latency gauge and SLO (the 45 ms budget); straight to Nissa, not logged: every decision
        is already a ``tamiyo_decision`` line."""
        points = [MetricPoint(name="tamiyo.inference.latency_ms", value=decision.decision_ms, unit="ms")]
        if decision.feature_coverage is not None:  # the GNN's (the tamiyo_coverage_low alert reads it)
            points.append(MetricPoint(name="tamiyo.gnn.feature_coverage", value=decision.feature_coverage))
        packet = TelemetryPacket(
            packet_id=f"tamiyo-decision-{decision.decided_on_step}",
            source="tamiyo",
            issued_at=time.time(),
            run_id=decision.run_id,
            global_step=decision.decided_on_step,
            metrics=tuple(points),
        )
        self._tell("nissa", Nissa, packet)

    async def plan(self, plan: BoundaryPlan) -> None:
        tolaria = self._ref("tolaria/control", TolariaControl)
        try:
            if tolaria.stopped:
                # Checked first, so the usual case (the plan of a run's last packet, decided after training ended)
                # is not a dead letter: those are for messages that should have arrived.
                raise ActorStopped("actor tolaria/control has stopped")
            await tolaria.tell(plan)
        except ActorStopped as err:
            # Training has ended, or Tolaria is between restarts: a restarted Tolaria's TrainingRestored makes Kasmina
            # rebuild and send its in-flight plans again, so dropping this one loses nothing (and must not crash
            # Kasmina, the sender).
            self.dropped += 1
            _log.info(
                "boundary_plan_undelivered",
                decided_on_step=plan.decided_on_step,
                effect_step=plan.effect_step,
                error=f"{type(err).__name__}: {err}",
            )

    def tamiyo_ref(self) -> ActorRef[SystemStatePacket]:
        return self._ref("tamiyo", TamiyoActor)


@final
class NissaForward:
    """An EventSink that tells Nissa the events it consumes (lifecycle, emergencies, breakers, restarts).

    Part of the run's own sink, so that every actor's events reach Nissa, the supervisor's restarts and every breaker
    included (only Kasmina's and Tolaria's did). ``bind`` gives it the routes once they exist; until then, and while
    Nissa is not running (not started yet, between restarts, stopped), events go to the other sinks only.
    """

    def __init__(self) -> None:
        self._routes: Routes | None = None

    def bind(self, routes: Routes) -> None:
        self._routes = routes

    def emit(self, event: Message | Record) -> None:
        if self._routes is not None and isinstance(event, NISSA_EVENTS):
            self._routes.event_to_nissa(event)


@final
@dataclass
class RunTally:
    """What the summary table needs, gathered from the traffic: an EventSink plus packet and decision taps.

    Event loop only.
    """

    epoch_val_accuracy: dict[int, float] = field(default_factory=dict)
    epoch_step: dict[int, int] = field(default_factory=dict)
    # The seeds' transitions as (seed id, effect step, stage), in order (see seed_outcomes).
    seed_transitions: list[tuple[str, int, SeedLifecycleStage]] = field(default_factory=list)
    # The run's decisions, each decided step once (see add_decision); a resumed run's begin with the interrupted
    # sessions' (read back from their tamiyo_decision lines).
    decisions: list[DecisionRecord] = field(default_factory=list)
    # Every session's emergency signals, each move of the ladder once: a resumed session that trains the killed
    # session's last steps again makes its moves at those steps again (see EmergencyTally).
    emergencies: EmergencyTally = field(default_factory=EmergencyTally)
    # A resumed run's earlier slot transitions, read once with the rest of its tally.
    earlier_slot_transitions: list[Transition] = field(default_factory=list)
    # Every slot's transitions that stand, the earlier sessions' included: a restarted Nissa starts from them.
    slot_transitions: list[Transition] = field(default_factory=list)
    # The stage ops the trainer refused (from its receipts) and where they took effect: a transition counts at the
    # step it took effect (effect_step), not the step planned.
    refusals: RefusalLog = field(default_factory=RefusalLog)
    # What a resumed run's earlier sessions' files could not tell (a phrase each), for the summary to say.
    earlier_incomplete: list[str] = field(default_factory=list)
    # What they could not tell with their seed transitions whole (the host-only baseline is still known).
    earlier_partial: list[str] = field(default_factory=list)
    # GNN workers killed because they stopped answering (the actor's tamiyo_gnn_worker_hung events).
    worker_hangs: int = 0
    # Nissa's alerts that fired, by rule (its alert_fired events): a resumed run's begin with the earlier sessions'.
    alerts_fired: dict[str, int] = field(default_factory=dict)
    # The actors cancelled past their shutdown deadline, in order (their supervisors' ChildFailed events).
    cancelled: list[str] = field(default_factory=list)

    def emit(self, event: Message | Record) -> None:
        match event:
            case SeedStageChanged(slot=slot, seed_id=seed_id, to_stage=stage, step=step):
                if seed_id is not None:
                    self.seed_transitions.append((seed_id, step, stage))
                self.slot_transitions.append(Transition(slot, stage, step, seed_id))
            case LifecycleRestored():
                # A rollback (or a restart, or a resume) undid the later transitions: a seed germinated after the
                # restored state was counted with the outcome it never reached; those that happen again come again.
                self.seed_transitions = [t for t in self.seed_transitions if not event.undoes(t[1])]
                self.slot_transitions = [t for t in self.slot_transitions if not event.undoes(t.step)]
                self.refusals.restore(event.step)
            case TrainingRestored(step=step):
                # The epochs that ended after the restored step are trained again, or never (a resume with fewer
                # epochs): their figures, a killed session's read back by preload included, are the undone attempt's.
                # Nissa cuts its metrics.csv rows the same way.
                for epoch in [epoch for epoch, ended in self.epoch_step.items() if ended > step]:
                    del self.epoch_step[epoch]
                    self.epoch_val_accuracy.pop(epoch, None)
            case EmergencySignal():
                self.emergencies.add_signal(event)  # a resume's re-announcement of its level is no emergency
            case ChildFailed(child=child, error_type="ShutdownDeadlineExceeded"):
                self.cancelled.append(child)
            case TelemetryEvent(name="tamiyo_gnn_worker_hung"):
                self.worker_hangs += 1
            case TelemetryEvent(name=name, attributes={"rule": str(rule)}) if name == ALERT_FIRED:
                self.alerts_fired[rule] = self.alerts_fired.get(rule, 0) + 1
            case _:
                pass

    def preload(
        self,
        stages: list[tuple[str, SeedLifecycleStage, int]],
        epochs: list[tuple[int, int, float]],
        decisions: list[DecisionRecord] | None = None,
        slot_transitions: list[Transition] | None = None,
        *,
        emergencies: EmergencyTally | None = None,
        refusals: Sequence[Refusal] = (),
        incomplete: Sequence[str] = (),
        partial: Sequence[str] = (),
        alerts_fired: Sequence[str] = (),
    ) -> None:
        """What an interrupted run already did (``--resume``): (seed id, stage, step) transitions in order,
        (epoch, step, validation accuracy) rows, its decisions and its slot transitions (what Nissa starts from, see
        slot_transitions_at), its emergency signals (the summary counts every session's, each move once) and the stage
        ops the trainer refused (see RefusalLog), and the rule of each alert that fired; the resumed run's own traffic
        then continues the tally.
        ``incomplete``: what the earlier sessions' files could not tell (the summary says so:
        GrowthFigures.earlier_incomplete); ``partial``: what they could not tell with their seed transitions whole
        (said the same way, but the host-only baseline stays known)."""
        self.earlier_incomplete = list(incomplete)
        self.earlier_partial = list(partial)
        self.decisions = list(decisions or ())
        self.emergencies = emergencies if emergencies is not None else EmergencyTally()
        self.earlier_slot_transitions = list(slot_transitions or ())
        self.slot_transitions = list(slot_transitions or ())
        self.refusals = RefusalLog(refusals)
        self.alerts_fired = dict(Counter(alerts_fired))
        for seed_id, stage, step in stages:
            self.seed_transitions.append((seed_id, step, stage))
        for epoch, step, accuracy in epochs:
            self.epoch_val_accuracy[epoch] = accuracy
            self.epoch_step[epoch] = step

    def standing_slot_transitions(self) -> list[Transition]:
        """Every slot transition that stands, the earlier sessions' included: what a restarted Nissa starts from (it
        counted seeds by the trainer's coarser view, probationary as shadowing and embargoed as dormant, until each
        slot's next transition)."""
        return list(self.slot_transitions)

    def standing_refusals(self) -> tuple[Refusal, ...]:
        """The refused stage ops that stand, the earlier sessions' included: a restarted Nissa starts from them."""
        return self.refusals.refusals()

    def on_receipt(self, receipt: BoundaryApplied) -> None:
        """Tolaria's receipt of a boundary: the stage ops it refused, and those it applied after a refusal."""
        self.refusals.receipt(receipt)

    def on_packet(self, packet: SystemStatePacket) -> None:
        if packet.epoch_progress >= 1.0 and packet.validation_accuracy is not None:
            self.epoch_val_accuracy[packet.epoch + 1] = packet.validation_accuracy
            self.epoch_step[packet.epoch + 1] = packet.global_step

    def on_decision(self, decision: Decision) -> None:
        command = decision.command is not None
        no_op = None if command else (decision.reason or "no_op")
        fallback = decision.policy.endswith(FALLBACK_SUFFIX)
        vetoed, other = vetoed_by(command, decision.risk_reason, decision.proposed)
        record = DecisionRecord(
            decision.decided_on_step, decision.decision_ms, no_op, fallback, decision.fallback_reason, vetoed, other
        )
        add_decision(self.decisions, record)

    def _first_grafted_germination(self, last_step: int | None) -> int | None:
        """The germination step of the first seed that was grafted (reached TRAINING by ``last_step``, None: ever). One
        culled before (its module could not be fetched, or its attach failed G1) left the host training alone: until
        then the slot's forward value is the host's own (esper.nn.slots)."""
        germinated: dict[str, int] = {}
        grafted: list[int] = []
        for seed_id, step, stage in self.seed_transitions:
            if last_step is not None and step > last_step:
                continue
            if stage is SeedLifecycleStage.GERMINATED:
                germinated.setdefault(seed_id, step)
            elif stage is SeedLifecycleStage.TRAINING and seed_id in germinated:
                grafted.append(germinated[seed_id])
        return min(grafted, default=None)

    def figures(self, seed_parameters: int, last_step: int | None = None) -> GrowthFigures:
        """The growth figures as of now; the baseline is the last epoch whose end came before the germination of the
        first seed that reached training took effect (the host alone), or the final epoch when none did; none
        ("unknown") when the earlier sessions' events are incomplete (their seed transitions lost). Seeds are
        counted by the stage they were in at ``last_step`` (the last trained step; None: their latest), each
        transition at the step it took effect, leaving out what never did (planned after ``last_step``, or refused
        by the trainer and never applied)."""
        epochs = sorted(self.epoch_val_accuracy)
        final = self.epoch_val_accuracy[epochs[-1]] if epochs else None
        baseline_epoch: int | None = None
        source = "run"
        grafted = self._first_grafted_germination(last_step)
        if self.earlier_incomplete:
            # The earlier sessions' seed transitions are partly lost (their event log gone or cut short): which
            # epochs the host trained alone cannot be told, and "host only" would call a grown model the baseline.
            source = "unknown"
        elif grafted is None:
            baseline_epoch, source = (epochs[-1] if epochs else None), "host_only"
        else:
            before = [e for e in epochs if self.epoch_step[e] < grafted]
            baseline_epoch = before[-1] if before else None
        # Each transition where it took effect: a stage change the trainer refused (at L3) counts from the step its
        # op was applied, or not at all, as the report draws it (esper.report_receipts).
        refusals = self.refusals.refusals()
        counts = seed_outcomes(
            (
                (seed_id, at, stage)
                for seed_id, step, stage in self.seed_transitions
                if (at := effect_step(seed_id, stage, step, refusals)) is not None
            ),
            last_step,
        )
        unapplied = unapplied_transitions(
            (
                at
                for t in self.slot_transitions
                if (at := effect_step(t.seed_id, t.stage, t.step, refusals)) is not None
            ),
            last_step,
        )
        latencies = sorted(d.ms for d in self.decisions)
        no_op_reasons: dict[str, int] = {}
        vetoed_reasons: dict[str, int] = {}
        fallback_reasons: dict[str, int] = {}
        for d in self.decisions:
            if d.vetoed_by:
                vetoed_reasons[d.vetoed_by] = vetoed_reasons.get(d.vetoed_by, 0) + 1
            elif d.no_op_reason is not None and not d.vetoed_other:
                no_op_reasons[d.no_op_reason] = no_op_reasons.get(d.no_op_reason, 0) + 1
            if d.fallback:
                why = d.fallback_reason or "unrecorded"
                fallback_reasons[why] = fallback_reasons.get(why, 0) + 1
        return GrowthFigures(
            baseline_val_accuracy=None if baseline_epoch is None else self.epoch_val_accuracy[baseline_epoch],
            baseline_epoch=baseline_epoch,
            baseline_source=source,
            final_val_accuracy=final,
            parameters_added=seed_parameters,
            seeds=counts,
            unapplied_transitions=unapplied,
            no_op_reasons=no_op_reasons,
            vetoed_reasons=vetoed_reasons,
            decisions=len(latencies),
            decision_p50_ms=nearest_rank(latencies, 0.50),
            decision_p95_ms=nearest_rank(latencies, 0.95),
            fallback_decisions=sum(d.fallback for d in self.decisions),
            fallback_reasons=fallback_reasons,
            worker_hangs=self.worker_hangs,
            emergency_events=self.emergencies.count,
            earlier_incomplete=[*self.earlier_incomplete, *self.earlier_partial],
        )


BUILT_FROM_CATALOGUE = "kasmina.seed_built_from_catalogue"


@final
class UrzaFirstSource:
    """Kasmina's seed source for a run: Urza's verified artifact when Tezzeret has stored it, else the same blueprint
    built from Karn's catalogue, reported as a ``kasmina.seed_built_from_catalogue`` WARNING event (never another
    blueprint). Waiting is not an option: Tezzeret compiles on the same io lane this fetch runs on. An artifact whose
    blob went bad on disk (quarantined by the load, and stored again by the next run's Tezzeret pass) or is missing,
    any other artifact the store cannot serve (Urza's errors: weights its builder does not take, a blob that does not
    decode, a catalogue row that does not match its blob), and a blueprint the store has marked failed or quarantined
    since the run started, are treated the same way, so a damaged or shared store costs no germination.

    ``describe`` on the event loop; ``fetch`` on the io lane (blocking); ``notify`` must be thread-safe.
    """

    def __init__(self, urza: UrzaSeedSource, notify: Callable[[TelemetryEvent], None]) -> None:
        self._urza = urza
        self._notify = notify
        self.built_from_catalogue = 0

    def describe(self, blueprint_id: str) -> BlueprintDescriptor | None:
        # The catalogue's descriptor whatever the store says of the blueprint now: which blueprints a run may grow is
        # decided at its start (Karn's offer to the controller reads the standings), so a mark made while it trains
        # (another run's failed compile on a shared store) neither culls its seeds nor changes a resume's replay of
        # germinations made before the mark.
        catalogue = self._urza.catalogue
        return catalogue.get(blueprint_id) if blueprint_id in catalogue else None

    def fetch(self, blueprint_id: str, slot_shape: SlotShape, params: Mapping[str, float], seed: int) -> SourcedModule:
        try:
            return self._urza.fetch(blueprint_id, slot_shape, params, seed)
        except ArtifactNotFound as err:
            why = f"no compiled artifact yet ({err})"
        except BlueprintUnavailable as err:
            # Marked since this run decided on it (another run's compile on a shared store), or a replay of a past
            # germination: the blueprint itself is as it was.
            why = f"the store marks it unavailable ({err})"
        except (ArtifactCorrupt, BlobMissing) as err:
            why = f"its artifact is unusable ({err})"
        except UrzaError as err:
            # Weights the blueprint's builder does not take (ModuleMismatch), a blob that does not decode, one marked
            # failed or quarantined, unreadable: the artifact, not the blueprint, is at fault.
            why = f"its artifact is unusable ({type(err).__name__}: {err})"
        except OSError as err:  # a transient read error (EIO): the same blueprint, built here instead
            why = f"its artifact could not be read ({type(err).__name__}: {err})"
        self.built_from_catalogue += 1
        self._notify(
            TelemetryEvent(
                name=BUILT_FROM_CATALOGUE,
                level=TelemetryLevel.WARNING,
                description=f"blueprint {blueprint_id}: {why}; built from the catalogue",
                attributes={"blueprint_id": blueprint_id, "kind": slot_shape.kind, "features": slot_shape.features},
            )
        )
        # Tezzeret's seed, not the seed's own: the same weights the artifact would have held, so a cold or damaged
        # store does not change the run.
        return SourcedModule(
            build_blueprint(self._urza.catalogue.get(blueprint_id), slot_shape, params, seed=COMPILE_SEED)
        )


def threadsafe(loop: asyncio.AbstractEventLoop, sink: EventSink) -> Callable[[TelemetryEvent], None]:
    """A callable any thread may use to emit to ``sink`` on ``loop``."""

    def post(event: TelemetryEvent) -> None:
        try:
            loop.call_soon_threadsafe(sink.emit, event)
        except RuntimeError:
            pass  # the loop has closed: the run is over

    return post
