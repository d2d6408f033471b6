"""Building a run's subsystems from its config: the child specs in start order and Tolaria's wiring.

Only esper.run calls ``assemble``; the routes between the actors are in esper.wiring.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from typing import TYPE_CHECKING, final

import anyio
import msgspec
import structlog
import torch

from actors.karn.catalogue import KarnCatalogue, TierPolicy, read_standings
from actors.kasmina.journal import JOURNAL_FILENAME, last_boundary_step
from actors.kasmina.spec import PlannerArgs, kasmina_spec
from actors.nissa.actor import Nissa
from actors.nissa.spec import nissa_spec, nissa_tick_spec
from actors.tamiyo.field_reports import WAL_FILENAME
from actors.tamiyo.heuristic import HeuristicConfig
from actors.tamiyo.spec import tamiyo_spec
from actors.tamiyo.state_journal import STATE_JOURNAL_FILENAME, entries_to_keep
from actors.tamiyo.stop_state import write_stop_state
from actors.tezzeret.spec import tezzeret_spec
from actors.tolaria.actor import TolariaWiring
from actors.tolaria.build import batch_plan
from actors.tolaria.cell import new_cell
from actors.tolaria.checkpoint_verify import DigestMemo
from actors.urza.publish import UrzaArtifactSink
from actors.urza.seed_source import UrzaSeedSource
from actors.urza.spec import urza_spec
from esper.assemble_inputs import candidates, evidence_cadence, growth_horizon, open_store, probe
from esper.assembly import Assembly
from esper.nissa_rules import nissa_rules, nissa_slos
from esper.nn.blueprints import default_catalogue
from esper.resume import run_keys
from esper.resume_checkpoints import check_checkpoint_fits
from esper.resume_rows import unwritten_epoch_ends
from esper.resume_seeds import check_replayed_seeds
from esper.run_history import finishing_halt, slot_transitions_at
from esper.runtime.clock import WallClock
from esper.runtime.errors import ConfigError, EsperError
from esper.runtime.handoff import Handoff
from esper.start_checks import (
    available_cpus,
    warn_at_start,
    warn_gradientless_slots,
    warn_no_blueprint,
    warn_slot_targets_override,
    warn_unreachable_strain,
)
from esper.tamiyo_resume import TAMIYO_STATE_FILE, resume_point_event, tamiyo_resume_state
from esper.version import esper_version
from esper.wiring import Routes, RunHooks, UrzaFirstSource, threadsafe
from schemas.control import BlendConfig
from schemas.domain_enums import BlendMode
from schemas.nissa import EvaluateAlerts

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from torch import nn

    from actors.tamiyo.state import TamiyoState
    from esper.nn.data import DataSplits
    from esper.run_tally import RunTally
    from esper.runtime.clock import Clock
    from esper.runtime.events import EventSink
    from esper.runtime.lanes import Lanes
    from esper.runtime.system import ActorSystem
    from schemas.boundary import BoundaryApplied, Decision
    from schemas.config import RunConfig
    from schemas.state import SystemStatePacket

_log = structlog.get_logger("esper.assemble")


async def assemble(
    config: RunConfig,
    *,
    run_id: str,
    run_dir: Path,
    resume: bool,
    secret: bytes,
    lanes: Lanes,
    clock: Clock,
    started_s: float,
    sink: EventSink,
    actors: ActorSystem,
    tally: RunTally,
    data: DataSplits,
    taps: tuple[Callable[[SystemStatePacket], None], ...] = (),
    hooks: RunHooks | None = None,
) -> Assembly:
    """Build every subsystem of a run (blocking parts on worker threads) and the routes between them.

    ``sink`` is the run's sink (events.jsonl, the session's events, the tally); Nissa gets the events it consumes.
    ``data`` is the data set the start's checks loaded; ``taps`` see every packet first (the console). ``started_s``:
    the ``clock`` time the run's start began at, which the summary's duration counts from, and metrics.csv's
    ``wall_time_s`` too.

    Raises:
        ConfigError: from building the host (the tolaria section names something unusable), or Urza's store cannot
            be opened (named with ``urza.root``).
    """
    hooks = hooks or RunHooks()
    loop = asyncio.get_running_loop()
    checkpoints = run_dir / "checkpoints"
    found = await anyio.to_thread.run_sync(probe, config, lanes.train.device, data)
    warn_at_start(config, batch_plan(config.tolaria, found.data).num_batches, available_cpus())
    warn_unreachable_strain(config, found.slots, found.gradient_layers)
    warn_gradientless_slots(config, found.slots, found.gradient_layers)
    warn_slot_targets_override(config, found.slots, found.model_slot_targets)
    # One hashing of each checkpoint for the checks below: the trainer's load hashes what it loads again.
    memo = DigestMemo()
    if resume:
        await anyio.to_thread.run_sync(
            check_checkpoint_fits, checkpoints, found.host_tensors, config.tolaria.host_model, memo
        )
    store = await anyio.to_thread.run_sync(open_store, config.urza.root)
    with contextlib.ExitStack() as on_failure:
        # Closed if anything below fails or is cancelled (the session closes it once the run is over); a SQLite
        # connection's close is quick enough for the loop's thread.
        on_failure.callback(store.close)
        catalogue = default_catalogue()
        standings = await anyio.to_thread.run_sync(read_standings, store, catalogue.ids)
        state, state_source, resume_step = None, "fresh", None
        if resume:
            state, state_source, resume_step = await anyio.to_thread.run_sync(
                tamiyo_resume_state, checkpoints, config.tolaria.state_every_steps or 1, config.tamiyo.policy, memo
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
        cadence = evidence_cadence(config.tolaria, found.data)
        # One set of arguments for Kasmina's planner and the replay that judges a resume: they cannot drift apart.
        planner = PlannerArgs(
            run_id=run_id,
            run_seed=config.tolaria.seed,
            slots=found.slots,
            config=config.kasmina,
            lag_steps=config.tolaria.command_lag_steps,
            cadence=cadence,
            initial_seeds=config.tolaria.initial_seed_blueprints(),
        )
        if controller_resumes and resume_step is not None:
            # Before any actor starts, so a refused resume trains nothing and writes no checkpoint, row or journal line.
            await check_replayed_seeds(
                config,
                planner,
                run_dir=run_dir,
                resume_step=resume_step,
                source=UrzaFirstSource(urza_source, lambda _event: None),  # its fallbacks are said by Kasmina's replay
                secret=secret,
                io_lane=lanes.io,
                memo=memo,
            )
        slot_transitions = None
        halt = None
        if resume:
            epochs = config.tolaria.epochs
            halt = await anyio.to_thread.run_sync(finishing_halt, run_dir, resume_step, epochs, memo)
            sink.emit(await anyio.to_thread.run_sync(resume_point_event, checkpoints, resume_step, epochs, halt))
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
            # The journal had no entry for the checkpoint's epoch-end packet (a policy inference was still running
            # then, tamiyo_state_not_journaled, or the file is gone; Tamiyo journals it before sending its decision,
            # without which Kasmina's journal, hence the resume point, never reaches that checkpoint): the resumed
            # controller may decide differently from there on.
            _log.warning(
                "tamiyo_state_behind",
                state_step=None if state is None else state.last_step,
                checkpoint_step=resume_step,
                source=state_source,
            )
        kasmina = config.kasmina
        lag = config.tolaria.command_lag_steps
        heuristic = HeuristicConfig.from_config(
            config.tamiyo,
            max_live_seeds=kasmina.max_active_seeds,
            probation_epochs=kasmina.probation_epochs,
            horizon=growth_horizon(kasmina, cadence, lag_steps=lag),
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
                started_s=started_s,
                resumed=resume,
                transitions=slot_transitions,
                later_transitions=tally.standing_slot_transitions,
                refusals=tally.standing_refusals,
                missed=missed,
                run_id=run_id,
                shutdown_deadline_s=deadline_s,
                mailbox_capacity=capacity,
                rules=nissa_rules(config),
                slos=nissa_slos(config),
            ),
            nissa_tick_spec(tick, config.nissa, clock=clock, shutdown_deadline_s=deadline_s),
            tezzeret_spec(
                catalogue=catalogue, slots=unique_shapes, artifacts=UrzaArtifactSink(store), io_lane=lanes.io,
                # The build seed is Tezzeret's fixed default, never the run's: runs share the store and fetch the newest
                # artifact, so seed-dependent weights would make a run's seeds depend on which run compiled last.
                clock=clock, sink=sink, config=config.tezzeret, shutdown_deadline_s=deadline_s,
            ),
            kasmina_spec(
                planner, outlet=routes.plan, handoff=handoff,
                io_lane=lanes.io, clock=wall, sink=sink, keys={config.security.key_id: secret},
                security=config.security,
                source=seed_source, journal_dir=checkpoints, resume=controller_resumes, observer=routes.observed,
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
            on_applied=functools.partial(_receipt, tally, routes),
            to_planner=routes.to_planner,
            resume=controller_resumes,  # a resume with nothing to continue from starts over, the trainer too
            slot_targets=kasmina.slot_targets,
            data=found.data,
            isolation_probe_every_steps=kasmina.isolation_probe_every_steps,
            step_probe=hooks.step_probe,
            resume_at_most=resume_step if controller_resumes else None,
            journaled_step=functools.partial(last_boundary_step, checkpoints / JOURNAL_FILENAME),
            halt_reason=halt if controller_resumes else None,
            run_keys=run_keys(config),
            written_by=esper_version(),
        )
        # Read on the train lane's own thread: the count the trainer really runs on (a resume's must be its run's).
        train_threads = await lanes.train.run(torch.get_num_threads)
        _log.info(
            "run_assembled",
            slots={name: f"{s.kind}[{s.features}]" for name, s in found.slots.items()},
            train_threads=train_threads,
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


def _receipt(tally: RunTally, routes: Routes, receipt: BoundaryApplied) -> None:
    """Tolaria's receipt of a boundary: to the summary's tally (a stage change the trainer refused counts from where
    it took effect), then to Kasmina and Nissa."""
    tally.on_receipt(receipt)
    routes.applied(receipt)


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
