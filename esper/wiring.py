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
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar, final

import structlog

from actors.kasmina.actor import KasminaActor
from actors.nissa.actor import Nissa
from actors.tamiyo.actor import TamiyoActor
from actors.tezzeret.compile import COMPILE_SEED
from actors.tolaria.actor import TolariaControl
from actors.urza.artifact import ArtifactCorrupt, ArtifactNotFound, BlobMissing, BlueprintUnavailable, UrzaError
from esper.nn.blueprints import SourcedModule, build_blueprint
from esper.runtime.errors import ActorStopped, MailboxFull
from schemas.boundary import TrainingRestored
from schemas.domain_enums import TelemetryLevel
from schemas.nissa import LifecycleRestored, SeedStageChanged
from schemas.runtime import BreakerTransition, ChildRestarted, EmergencySignal
from schemas.telemetry import MetricPoint, TelemetryEvent, TelemetryPacket

if TYPE_CHECKING:
    import asyncio
    from collections.abc import Callable, Mapping

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
        """Nissa's decision-latency gauge and SLO (at tamiyo.decision_budget_ms); straight to Nissa, not logged:
        every decision is already a ``tamiyo_decision`` line."""
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
