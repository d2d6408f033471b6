"""Building a run's subsystems from its config: data and slot probe, Urza's store, Karn's candidates, the child specs.

Only esper.run calls ``assemble``; the routes between the actors are in esper.wiring.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, final

import anyio
import msgspec
import structlog
import torch

from actors.karn.catalogue import KarnCatalogue, TierPolicy, read_standings
from actors.kasmina.actor import KasminaActor
from actors.kasmina.journal import JOURNAL_FILENAME, last_boundary_step
from actors.kasmina.lifecycle_settings import EvidenceCadence
from actors.kasmina.spec import kasmina_spec
from actors.nissa.actor import Nissa
from actors.nissa.alerts import alert_rules
from actors.nissa.spec import nissa_spec, nissa_tick_spec
from actors.tamiyo.actor import TamiyoActor
from actors.tamiyo.field_reports import WAL_FILENAME
from actors.tamiyo.heuristic import HeuristicConfig
from actors.tamiyo.policy import BlueprintCandidate
from actors.tamiyo.spec import tamiyo_spec
from actors.tamiyo.state_journal import STATE_JOURNAL_FILENAME, entries_to_keep, resume_state
from actors.tamiyo.stop_state import STOP_STATE_FILENAME, StopStateDamaged, read_stop_state, write_stop_state
from actors.tezzeret.spec import tezzeret_spec
from actors.tolaria.actor import TolariaWiring, new_cell
from actors.tolaria.build import batch_plan, build_trainee, load_data
from actors.tolaria.checkpoints import CheckpointError, read_manifest
from actors.tolaria.validation import validation_batch_count
from actors.urza.publish import UrzaArtifactSink
from actors.urza.seed_source import UrzaSeedSource
from actors.urza.spec import urza_spec
from actors.urza.store import UrzaStore
from esper.nn.blueprints import default_catalogue, param_count
from esper.resume import SEED_KEY, check_checkpoint_fits, resume_point
from esper.resume_rows import unwritten_epoch_ends
from esper.run_history import slot_transitions_at
from esper.runtime.clock import WallClock
from esper.runtime.errors import ConfigError, EsperError
from esper.runtime.handoff import Handoff
from esper.start_checks import available_cpus, warn_at_start, warn_no_blueprint
from esper.wiring import Routes, RunHooks, RunTally, UrzaFirstSource, threadsafe
from schemas.control import BlendConfig
from schemas.domain_enums import BlendMode, TelemetryLevel
from schemas.kasmina import GetKasminaStatistics, KasminaStatistics
from schemas.nissa import EvaluateAlerts
from schemas.tamiyo import GetTamiyoStatistics, TamiyoStatistics
from schemas.telemetry import TelemetryEvent

if TYPE_CHECKING:
    from collections.abc import Callable

    from torch import nn

    from actors.tamiyo.state import TamiyoState
    from actors.tolaria.actor import TolariaCell
    from esper.nn.blueprints import Catalogue, SlotShape
    from esper.nn.data import DataSplits
    from esper.runtime.clock import Clock
    from esper.runtime.events import EventSink
    from esper.runtime.lanes import Lanes
    from esper.runtime.supervisor import ChildSpec
    from esper.runtime.system import ActorSystem
    from schemas.boundary import Decision
    from schemas.config import RunConfig, TolariaConfig
    from schemas.kernels import BlueprintDescriptor as KarnDescriptor
    from schemas.kernels import SlotKind
    from schemas.state import SystemStatePacket

_log = structlog.get_logger("esper.assemble")

TAMIYO_STATE_FILE = STOP_STATE_FILENAME
"""Tamiyo's exported state at the last stop, beside the checkpoints; ``--resume`` starts Tamiyo from it."""


@final
@dataclass(frozen=True, slots=True)
class Probe:
    """What the run learns once at start: the data, the host's slots and its parameter count, and that of the seeds
    ``tolaria.initial_seeds`` attach before step 0."""

    data: DataSplits
    slots: dict[str, SlotShape]
    host_parameters: int
    initial_seed_parameters: int
    host_tensors: dict[str, tuple[int, ...] | None]  # the wrapped host's state entries: tensor shapes, seeds aside


def probe(config: RunConfig, device: torch.device) -> Probe:
    """Load the data and build the host once to read its slot shapes and prove it trains (the step loop reuses the
    data). Blocking."""
    data = load_data(config.tolaria)
    trainee = build_trainee(config.tolaria, data, config.kasmina.slot_targets, device, check_training=True)
    tensors = {
        key: tuple(value.shape) if isinstance(value, torch.Tensor) else None
        for key, value in trainee.model.state_dict().items()
        if SEED_KEY not in key
    }
    return Probe(
        data=data,
        slots=dict(trainee.slot_shapes),
        host_parameters=trainee.host_parameters,
        initial_seed_parameters=sum(trainee.seed_parameters().values()),  # only they are attached yet
        host_tensors=tensors,
    )


def evidence_cadence(tolaria: TolariaConfig, data: DataSplits) -> EvidenceCadence:
    """When Tolaria's evidence reaches Kasmina's gates: a packet every ``state_every_steps`` (at epoch ends only when
    0), the epoch's steps (G4's validation comes at epoch ends) and the validation batches of each epoch end (as
    actors.tolaria.validation cuts the split); the command lag is kasmina_spec's ``lag_steps``."""
    steps = batch_plan(tolaria, data).num_batches
    every = tolaria.state_every_steps
    return EvidenceCadence(
        packet_every_steps=max(1, min(every, steps) if every else steps),
        epoch_steps=steps,
        validation_batches=validation_batch_count(data.val.num_samples),
    )


def candidates(
    catalogue: Catalogue, karn: KarnCatalogue, policy: TierPolicy, slots: dict[str, SlotShape]
) -> tuple[BlueprintCandidate, ...]:
    """Karn's blueprints offered for the run's slot kinds, each with the slot kinds it fits and its size in every slot
    of those kinds (a blueprint grafted into a slot of a kind it does not fit is refused)."""
    kinds: dict[SlotKind, tuple[KarnDescriptor, ...]] = {}
    for shape in slots.values():
        if shape.kind not in kinds:
            kinds[shape.kind] = karn.offered(shape.kind, policy)
    fitting: dict[str, tuple[KarnDescriptor, list[SlotKind]]] = {}
    for kind, offered in kinds.items():
        for descriptor in offered:
            fitting.setdefault(descriptor.blueprint_id, (descriptor, []))[1].append(kind)
    out: list[BlueprintCandidate] = []
    for blueprint_id, (descriptor, fits) in fitting.items():
        blueprint = catalogue.get(blueprint_id)
        per_slot = {
            name: param_count(blueprint, shape, {}, fill_defaults=True)
            for name, shape in slots.items()
            if shape.kind in fits
        }
        out.append(
            BlueprintCandidate(
                blueprint_id=blueprint_id,
                cost_tier=descriptor.cost_tier,
                risk=descriptor.risk,
                parameter_count=next(iter(per_slot.values())),
                tier=descriptor.tier,
                quarantine_only=descriptor.quarantine_only,
                slot_kinds=tuple(fits),
                slot_parameters=per_slot,
            )
        )
    return tuple(out)


@final
class StoreCloser:
    """Closes Urza's store after the tree has stopped (a session resource)."""

    def __init__(self, store: UrzaStore) -> None:
        self._store = store

    async def aclose(self) -> None:
        await anyio.to_thread.run_sync(self._store.close)


@final
@dataclass(frozen=True, slots=True)
class Assembly:
    """A run's parts, ready for the tree: the subsystem specs in start order and Tolaria's wiring."""

    subsystems: tuple[ChildSpec, ...]
    tolaria: TolariaWiring
    cell: TolariaCell
    tally: RunTally
    routes: Routes
    store: UrzaStore
    host_parameters: int
    initial_seed_parameters: int  # in every packet's and the training figures' seed parameters; not grown


def _load_tamiyo_state(path: Path, policy: str) -> tuple[TamiyoState | None, str | None]:
    """Tamiyo's state saved at the last stop and why it was refused: (None, None) when absent; (None, why) when it
    fails its checksum, cannot be read or is the state of a policy other than ``policy`` (the run's: the resume
    check refuses a changed tamiyo.policy, so such a file was made elsewhere, and the controller refused it at its
    build, which ended the resume with exit 1). A warning says why, and the resume takes Tamiyo's journaled state
    instead, as after a kill."""
    try:
        state = read_stop_state(path)
    except StopStateDamaged as err:
        _log.warning("tamiyo_state_unreadable", file=str(path), error=str(err))
        return None, str(err)
    if state is not None and state.policy != policy:
        why = f"it is the state of policy {state.policy!r}, this run's tamiyo.policy is {policy!r}"
        _log.warning("tamiyo_state_unreadable", file=str(path), error=why)
        return None, why
    return state, None


def _tamiyo_resume_state(
    checkpoints: Path, first_packet: int, policy: str
) -> tuple[TamiyoState | None, str, int | None]:
    """Tamiyo's state for a resume from the checkpoint Tolaria will load: (state, source, that checkpoint's step).
    ``first_packet`` is the step of the run's first state packet: a checkpoint before it leaves the controller
    nothing to restore. ``policy``: the run's tamiyo.policy, the only one whose state the controller takes.

    Raises:
        ConfigError: checkpoints are listed but none passes its checksum, so there is nothing to resume from; or the
            stop state is damaged and the journal holds no state at or before the checkpoint to use instead; or the
            journal's state is of another policy.
    """
    try:
        step = resume_point(checkpoints) if checkpoints.is_dir() else None
    except CheckpointError as err:
        # Before any actor starts: otherwise the trainer fails to load, again at every restart.
        raise ConfigError(
            f"--resume {checkpoints.parent}: {err}; nothing to resume from (a new run needs another --run-dir)"
        ) from err
    graceful, damaged = _load_tamiyo_state(checkpoints / TAMIYO_STATE_FILE, policy)
    state, source = resume_state(graceful, checkpoints / STATE_JOURNAL_FILENAME, step)
    if state is not None and state.policy != policy:
        # Only a journal written elsewhere holds one (each entry is checksummed): the controller would refuse it.
        raise ConfigError(
            f"--resume {checkpoints.parent}: {checkpoints / STATE_JOURNAL_FILENAME}: its controller state at or before"
            f" step {step} is of policy {state.policy!r}, this run's tamiyo.policy is {policy!r}"
        )
    if damaged is not None and state is None and step is not None and step >= first_packet:
        # The controller would start over beside a lifecycle that goes on: the seeds it grew, its cooldowns and the
        # blueprints it was offered forgotten. Said and refused; removing the file accepts exactly that.
        raise ConfigError(
            f"--resume {checkpoints.parent}: {checkpoints / TAMIYO_STATE_FILE}: {damaged}, and"
            f" {STATE_JOURNAL_FILENAME} holds no controller state at or before step {step} to use instead"
            " (remove the file to resume with a fresh controller)"
        )
    return state, source, step


RESUME_POINT = "esper.resume_point"


def _resume_point_event(checkpoints: Path, step: int | None, epochs: int) -> TelemetryEvent:
    """Where a resume continues: the checkpoint (its step, epoch and batch), or the start when none is usable; or, when
    that checkpoint ended the run's last epoch (``epochs``: tolaria.epochs), that the resume only finishes the run."""
    if step is None:
        return TelemetryEvent(
            name=RESUME_POINT,
            level=TelemetryLevel.WARNING,
            description="no checkpoint to continue from: training starts again at step 0",
        )
    info = next((e for e in read_manifest(checkpoints) if e.global_step == step), None)
    if info is not None and info.epoch >= epochs and info.batch_index == 0:
        # Killed after its last checkpoint, before its summary: the run's end is all that is left to do.
        return TelemetryEvent(
            name=RESUME_POINT,
            level=TelemetryLevel.INFO,
            description=(
                f"finishing from step {step} ({info.file}, the end of epoch {info.epoch} of {epochs}): no step to"
                " train; scoring the test split and writing the summary"
            ),
        )
    where = ""
    if info is not None:
        batch = f"the start of epoch {info.epoch + 1}" if info.batch_index == 0 else f"epoch {info.epoch + 1}"
        where = f" ({batch}, {info.file})"
    return TelemetryEvent(
        name=RESUME_POINT, level=TelemetryLevel.INFO, description=f"continuing from step {step}{where}"
    )


async def assemble(
    config: RunConfig,
    *,
    run_id: str,
    run_dir: Path,
    resume: bool,
    secret: bytes,
    lanes: Lanes,
    clock: Clock,
    sink: EventSink,
    actors: ActorSystem,
    tally: RunTally,
    taps: tuple[Callable[[SystemStatePacket], None], ...] = (),
    hooks: RunHooks | None = None,
) -> Assembly:
    """Build every subsystem of a run (blocking parts on worker threads) and the routes between them.

    ``sink`` is the run's sink (events.jsonl, the session's events, the tally); Nissa gets the events it consumes.
    ``taps`` see every packet first (the console).

    Raises:
        ConfigError: from building the host (the tolaria section names something unusable), or Urza's store cannot
            be opened (named with ``urza.root``).
    """
    hooks = hooks or RunHooks()
    loop = asyncio.get_running_loop()
    checkpoints = run_dir / "checkpoints"
    found = await anyio.to_thread.run_sync(probe, config, lanes.train.device)
    warn_at_start(config, batch_plan(config.tolaria, found.data).num_batches, available_cpus())
    if resume:
        await anyio.to_thread.run_sync(
            check_checkpoint_fits, checkpoints, found.host_tensors, config.tolaria.host_model
        )
    store = await anyio.to_thread.run_sync(_open_store, config.urza.root)
    with contextlib.ExitStack() as on_failure:
        # Closed if anything below fails or is cancelled (the session closes it once the run is over); a SQLite
        # connection's close is quick enough for the loop's thread.
        on_failure.callback(store.close)
        catalogue = default_catalogue()
        standings = await anyio.to_thread.run_sync(read_standings, store, catalogue.ids)
        state, state_source, resume_step = None, "fresh", None
        if resume:
            state, state_source, resume_step = await anyio.to_thread.run_sync(
                _tamiyo_resume_state, checkpoints, config.tolaria.state_every_steps or 1, config.tamiyo.policy
            )
        # A resumed controller is offered what the run offered at its first start: a blueprint another run marked
        # failed on the shared store since (its seeds are then built from the catalogue) or cleared since would make
        # the resumed run decide differently from an uninterrupted one.
        first_offer = state.blueprints if state is not None and resume_step is not None else ()
        if first_offer:
            standings = {bp: standing for bp, standing in standings.items() if bp not in first_offer}
        try:
            karn = KarnCatalogue.from_config(catalogue, config.karn, standings=standings)
        except ValueError as err:
            raise ConfigError(str(err)) from err
        tiers = TierPolicy.from_config(config.karn)
        warn_no_blueprint(config, karn, tiers, {shape.kind for shape in found.slots.values()}, catalogue)
        offered = await anyio.to_thread.run_sync(candidates, catalogue, karn, tiers, found.slots)
        if first_offer:
            offered = tuple(candidate for candidate in offered if candidate.blueprint_id in first_offer)
        urza_source = await anyio.to_thread.run_sync(UrzaSeedSource, store, catalogue)
        routes = Routes(actors, sink)
        source = UrzaFirstSource(urza_source, threadsafe(loop, sink))
        seed_source = hooks.wrap_source(source) if hooks.wrap_source is not None else source
        # A resume without a good checkpoint (the run died before its first one) trains again from step 0, so the
        # controller starts over with it: Kasmina replaying the dead session's journal would stand at its last
        # boundary and refuse every new packet as not after it (each plan then timed out, and the run halted).
        controller_resumes = resume and resume_step is not None
        slot_transitions = None
        if resume:
            epochs = config.tolaria.epochs
            sink.emit(await anyio.to_thread.run_sync(_resume_point_event, checkpoints, resume_step, epochs))
            if resume_step is not None:
                lag = config.tolaria.command_lag_steps
                slot_transitions = slot_transitions_at(tally.earlier_slot_transitions, lag, resume_step)
        missed: tuple[SystemStatePacket, ...] = ()
        if controller_resumes and resume_step is not None:
            args = (checkpoints, tally.epoch_step, resume_step, tuple(found.slots))
            missed = await anyio.to_thread.run_sync(unwritten_epoch_ends, *args)
            for packet in missed:  # the summary counts their epochs, as Nissa writes their rows
                tally.on_packet(packet)
        if not controller_resumes:
            # Nor may a fresh run in a reused directory resume later from another run's controller states.
            await anyio.to_thread.run_sync((checkpoints / STATE_JOURNAL_FILENAME).unlink, True)
            if resume:  # training starts over: the dead session's field reports would be written again
                await anyio.to_thread.run_sync((run_dir / WAL_FILENAME).unlink, True)
            if resume:
                _log.info("resume_starts_over", reason="no checkpoint to resume from: training starts again at step 0")
            state, state_source = None, "fresh"
        # A checkpoint before the first state packet (a stop in the first steps) leaves the controller nothing to
        # restore.
        first_packet = config.tolaria.state_every_steps or 1
        behind = state is None and resume_step is not None and resume_step >= first_packet
        behind = behind or (state is not None and state_source == "journal" and state.last_step != resume_step)
        if resume_step is not None and behind:
            # The journal had no entry for the checkpoint's epoch-end packet (Tamiyo had not handled it when the run
            # died, or the file is gone): the resumed controller may decide differently from there on.
            _log.warning(
                "tamiyo_state_behind",
                state_step=None if state is None else state.last_step,
                checkpoint_step=resume_step,
                source=state_source,
            )
        kasmina = config.kasmina
        heuristic = HeuristicConfig.from_config(
            config.tamiyo, max_live_seeds=kasmina.max_active_seeds, probation_epochs=kasmina.probation_epochs
        )
        heuristic = msgspec.structs.replace(
            heuristic,
            # Karn's blueprints are zero at birth and meant to add to the host's activation: a residual blend keeps the
            # host's function while alpha ramps (a convex one would replace it with a near-zero signal).
            blend=BlendConfig(
                mode=BlendMode.RESIDUAL, ramp_steps=kasmina.blend_ramp_steps, temperature=kasmina.blend_temperature
            ),
        )
        deadline_s = config.weatherlight.shutdown_deadline_s
        capacity = config.weatherlight.mailbox_capacity
        handoff: Handoff[nn.Module] = Handoff()
        # Commands carry wall-clock issue times (Tamiyo's WallClock): Kasmina's verifier must read the same clock.
        wall = WallClock()
        decisions = _DecisionTap(routes, tally)

        def persist_tamiyo(exported: TamiyoState) -> None:
            # At a stop only (a few KB): written here so the state and the checkpoint Tolaria just wrote go together.
            checkpoints.mkdir(parents=True, exist_ok=True)
            write_stop_state(checkpoints / TAMIYO_STATE_FILE, exported)

        async def tick() -> None:
            await routes._ref("nissa", Nissa).tell(EvaluateAlerts())

        unique_shapes = list({(s.kind, s.features, str(s.dtype)): s for s in found.slots.values()}.values())
        subsystems = (
            urza_spec(
                store=store, catalogue=catalogue, io_lane=lanes.io, clock=clock, sink=sink, config=config.urza,
                shutdown_deadline_s=deadline_s, mailbox_capacity=capacity,
            ),
            nissa_spec(
                config.nissa,
                run_dir,
                clock=clock,
                sink=sink,
                transitions=slot_transitions,
                later_transitions=tally.standing_slot_transitions,
                missed=missed,
                shutdown_deadline_s=deadline_s,
                rules=alert_rules(
                    isolation_violations=config.kasmina.isolation_alert_violations,
                    isolation_window_s=config.kasmina.isolation_alert_window_s,
                ),
            ),
            nissa_tick_spec(tick, config.nissa, clock=clock, shutdown_deadline_s=deadline_s),
            tezzeret_spec(
                catalogue=catalogue, slots=unique_shapes, artifacts=UrzaArtifactSink(store), io_lane=lanes.io,
                # The build seed is Tezzeret's fixed default, never the run's: runs share the store and fetch the newest
                # artifact, so seed-dependent weights would make a run's seeds depend on which run compiled last.
                clock=clock, sink=sink, config=config.tezzeret, shutdown_deadline_s=deadline_s,
            ),
            kasmina_spec(
                run_id=run_id, run_seed=config.tolaria.seed, slots=found.slots, outlet=routes.plan, handoff=handoff,
                io_lane=lanes.io, clock=wall, sink=sink, keys={config.security.key_id: secret},
                config=kasmina, security=config.security, lag_steps=config.tolaria.command_lag_steps,
                cadence=evidence_cadence(config.tolaria, found.data),
                source=seed_source, journal_dir=checkpoints, resume=controller_resumes, observer=routes.observed,
                initial_seeds=config.tolaria.initial_seed_blueprints(),
                resume_step=resume_step if controller_resumes else None,
                mailbox_capacity=capacity, shutdown_deadline_s=deadline_s,
            ),
            tamiyo_spec(
                run_id=run_id, config=config.tamiyo, security=config.security, simic=config.simic, signing_key=secret,
                key_id=config.security.key_id, outlet=decisions.send, policy_lane=lanes.policy, clock=clock,
                wall_clock=wall, sink=sink, run_dir=run_dir, blueprints=offered, heuristic=heuristic, state=state,
                policy=hooks.tamiyo_policy,
                on_state=persist_tamiyo, state_journal=checkpoints / STATE_JOURNAL_FILENAME, mailbox_capacity=capacity,
                state_journal_keep=entries_to_keep(
                    config.tolaria.checkpoint_every_epochs, config.tolaria.checkpoint_keep_last
                ),
                shutdown_deadline_s=deadline_s,
            ),
        )  # fmt: skip
        subscribers = (
            *taps,
            tally.on_packet,
            routes.packet_to_kasmina,
            routes.packet_to_nissa,
        )
        if hooks.packet_tap is not None:
            subscribers = (*subscribers, hooks.packet_tap)
        if hooks.crash_tamiyo_at_step is not None:
            subscribers = (*subscribers, _CrashTamiyo(routes, hooks.crash_tamiyo_at_step).on_packet)
        cell = new_cell(config.tolaria)
        wiring = TolariaWiring(
            run_id=run_id,
            run_dir=run_dir,
            lane=lanes.train,
            cell=cell,
            sink=sink,
            handoff=handoff,
            subscribers=subscribers,
            expects_plans=True,
            on_applied=routes.applied,
            to_planner=routes.to_planner,
            resume=controller_resumes,  # a resume with nothing to continue from starts over, the trainer too
            slot_targets=kasmina.slot_targets,
            data=found.data,
            isolation_probe_every_steps=kasmina.isolation_probe_every_steps,
            step_probe=hooks.step_probe,
            resume_at_most=resume_step if controller_resumes else None,
            journaled_step=functools.partial(last_boundary_step, checkpoints / JOURNAL_FILENAME),
        )
        _log.info(
            "run_assembled",
            slots={name: f"{s.kind}[{s.features}]" for name, s in found.slots.items()},
            host_parameters=found.host_parameters,
            blueprints=[c.blueprint_id for c in offered],
            tamiyo_state=state_source,
            tamiyo_state_step=None if state is None else state.last_step,
        )
        on_failure.pop_all()
        return Assembly(
            subsystems=subsystems,
            tolaria=wiring,
            cell=cell,
            tally=tally,
            routes=routes,
            store=store,
            host_parameters=found.host_parameters,
            initial_seed_parameters=found.initial_seed_parameters,
        )


async def drain_pipeline(actors: ActorSystem, deadline_s: float) -> None:
    """Let Tamiyo and Kasmina handle everything queued, so that every packet the trainer sent before its checkpoint
    is planned and journaled (a resume then resends its plan). An ask after the tells is a barrier; one round plans at
    least one more packet (Kasmina shows Tamiyo the next packet only once the one before is planned), so the rounds go
    on until Kasmina holds no packet or decision, or a round plans nothing (a packet whose decision will not come: the
    rounds spun, hundreds of thousands of asks, until the deadline). Bounded by ``deadline_s``; an actor already gone
    ends it."""
    tamiyo = actors.ref("tamiyo", TamiyoActor)
    kasmina = actors.ref("kasmina", KasminaActor)
    planned: int | None = None
    try:
        async with asyncio.timeout(deadline_s):
            while True:
                await tamiyo.ask(GetTamiyoStatistics(request_id="drain"), TamiyoStatistics)
                stats = await kasmina.ask(GetKasminaStatistics(request_id="drain"), KasminaStatistics)
                if not (stats.pending_packets or stats.pending_decisions):
                    return
                if stats.boundaries == planned:
                    _log.warning(
                        "pipeline_drain_incomplete",
                        error=f"no progress: {stats.pending_packets} packets and {stats.pending_decisions} decisions"
                        " wait for their partner",
                    )
                    return
                planned = stats.boundaries
    except (EsperError, ValueError, TimeoutError) as err:
        _log.warning("pipeline_drain_incomplete", error=f"{type(err).__name__}: {err}")


@final
class _DecisionTap:
    """Tamiyo's outlet: counts each decision's latency (the summary's and Nissa's), then hands it to Kasmina."""

    def __init__(self, routes: Routes, tally: RunTally) -> None:
        self._routes = routes
        self._tally = tally

    async def send(self, decision: Decision) -> None:
        self._tally.on_decision(decision)
        self._routes.decision_latency(decision)
        await self._routes.decision(decision)


@final
class _CrashTamiyo:
    """Test hook: tells Tamiyo one packet of another run once the run passes ``step`` (Tamiyo crashes on it)."""

    def __init__(self, routes: Routes, step: int) -> None:
        self._routes = routes
        self._step = step
        self._done = False

    def on_packet(self, packet: SystemStatePacket) -> None:
        if self._done or packet.global_step < self._step:
            return
        self._done = True
        _log.warning("fault_injected", actor="tamiyo", step=packet.global_step)
        with contextlib.suppress(EsperError):
            self._routes.tamiyo_ref().tell_nowait(msgspec.structs.replace(packet, run_id="fault-injection"))


def _open_store(root: str) -> UrzaStore:
    """Urza's store at ``urza.root``. Blocking.

    Raises:
        ConfigError: one line naming the root and what is wrong (a directory that cannot be made, a catalogue that is
            not a SQLite database or is locked past the busy timeout).
    """
    catalog = Path(root) / "catalog.sqlite"
    try:
        return UrzaStore(Path(root))
    except sqlite3.DatabaseError as err:
        if not os.access(root, os.W_OK) or (catalog.exists() and not os.access(catalog, os.W_OK)):
            # SQLite says "unable to open database file" for a sound catalogue it may not write: not a damaged one.
            raise ConfigError(
                f"urza.root = {root!r}: the store is not writable ({err}); a run stores its compiled blueprints"
                " there: make it writable or point urza.root elsewhere"
            ) from err
        hint = (
            "another process holds it; retry when it is done"
            if "locked" in str(err)
            else "move it aside to start a new catalogue (Tezzeret stores every blueprint again; blueprint quarantines"
            " recorded in it are lost) or point urza.root elsewhere"
        )
        raise ConfigError(f"urza.root = {root!r}: the catalogue {catalog} cannot be used ({err}); {hint}") from err
    except OSError as err:
        raise ConfigError(f"urza.root = {root!r}: the store cannot be opened: {err}") from err
