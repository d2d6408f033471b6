"""The composition root: config -> actors -> supervision tree; ``python -m esper.run`` and ``esper.start()``.

Only this module wires actors together (ARCHITECTURE.md section 1); nothing imports it but ``esper.start`` and scripts.
"""

from __future__ import annotations

import os
import signal
import sys

if __name__ == "__main__":
    # Loading torch and the actors takes seconds: a Ctrl-C (or a scheduler's SIGTERM) meanwhile ends with the
    # interrupted status (130) and without a traceback from deep inside an import. Nothing is written yet, so the
    # process leaves at once: a SystemExit raised inside an import was swallowed by some (the run then went on) or left
    # numpy half-loaded (a traceback). The run's own handling takes over below. (Without a handler a container's PID 1
    # would ignore the SIGTERM and train to the end.)
    signal.signal(signal.SIGINT, lambda _signum, _frame: os._exit(130))
    signal.signal(signal.SIGTERM, lambda _signum, _frame: os._exit(130))
    if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:  # under nohup a hang-up must leave the run alone
        signal.signal(signal.SIGHUP, lambda _signum, _frame: os._exit(130))
    signal.signal(signal.SIGUSR1, lambda _signum, _frame: os._exit(130))  # a scheduler's "stop, the time is nearly up"
    # --help, a usage error and a config the run refuses (a mistyped key, a bad value, no such file) are answered
    # before torch and the actors load (seconds): these imports are torch-free. main checks the config again (< 1 ms).
    from esper.cli_process import drop_lost_streams
    from esper.run_parser import EXIT_CONFIG_ERROR, build_parser, checked_config, readable_twice

    _args = build_parser().parse_args()
    # A config read from a pipe (`/dev/stdin`, `<(...)`) is read once, by main: a second read found it empty, and the
    # run went on with every key at its default.
    if readable_twice(_args.config) and isinstance(checked_config(_args), int):
        drop_lost_streams()
        os._exit(EXIT_CONFIG_ERROR)

import asyncio
import contextlib
import datetime as dt
import functools
from typing import TYPE_CHECKING, TextIO

import anyio
import structlog

from actors.oona.publisher import PUBLISHER, BusLosses, BusSink, OonaPublisher, Published
from actors.tolaria.data_cache import log_cache_events
from actors.tolaria.global_rngs import GlobalRngs
from actors.tolaria.run_precision import Float32Matmul, pick_precision
from esper.assemble import assemble
from esper.assembly import StoreCloser
from esper.bus_resource import BusResource, bus_limits
from esper.cli_process import drop_lost_streams, hand_signals_to_the_run, run_in_foreground, say
from esper.config import dump_config
from esper.console import Console
from esper.console_stream import standard_consoles
from esper.log_events import StructlogSink
from esper.log_file import reserve_log_file
from esper.pipeline_drain import drain_pipeline
from esper.resume_changes import resume_changes
from esper.run_args import blamed, check_progress, checked_command_line, checked_start, in_api_words
from esper.run_dir import RunDirLock, claim_run_dir, sweep_partial_writes, write_run_config
from esper.run_files import RunFiles
from esper.run_history import earlier_tally, written_by
from esper.run_parser import EXIT_CONFIG_ERROR, build_parser
from esper.run_start import (
    STORE_KEY,
    WEIGHTS_KEY,
    growth_figures,
    nothing_trained,
    preload_earlier,
    prepare_run_dir,
    renumber_metrics,
    restore_process,
    resume_notes,
    start_logging,
)
from esper.run_tally import RunTally
from esper.run_tree import build_tree
from esper.runtime.clock import MonotonicClock
from esper.runtime.errors import ChildStartFailed, ConfigError
from esper.runtime.gpu import read_gpus_once
from esper.runtime.lanes import Lanes
from esper.runtime.system import ActorSystem
from esper.session import EXIT_FAILED, EXIT_INTERRUPTED, EsperSystem
from esper.session_events import EventHub, FanoutSink
from esper.start_undo import StartUndo, log_start_abandoned
from esper.version import esper_version
from esper.wiring import NissaForward, RunHooks

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

    from esper.log_file import LogFileReservation
    from esper.logs import LoggingHandle
    from esper.run_args import StartArgs
    from esper.runtime.events import EventSink
    from esper.runtime.ref import ActorRef
    from schemas.config import RunConfig

_log = structlog.get_logger("esper.run")


async def start(
    config: str | Path | RunConfig,
    run_dir: str | Path | None = None,
    overrides: Sequence[str] | None = None,
    *,
    console: bool | None = None,
    resume: str | Path | None = None,
    progress: TextIO | None = None,
    hooks: RunHooks | None = None,
) -> EsperSystem:
    """Start a run as tasks of the running event loop and return its handle; never calls asyncio.run.

    Args:
        config: a TOML file path, or a RunConfig.
        run_dir: where the run writes its files; default ``<runs_dir>/<run-id>``.
        overrides: ``section.key=value`` strings applied on top of the config (as ``--set``).
        console: log readable lines to stderr; default from ``logging.console``.
        resume: an earlier run's directory: it is reused (events appended) and training continues from its last
            good checkpoint (one that ended the last epoch of a run that wrote no summary is only finished: the test
            split scored and the summary written). Overrides ``run_dir``.
        progress: where the progress bar and lifecycle lines go (the command line passes stderr); None: nowhere.
        hooks: test hooks (fault injection, a wrapped seed source).

    Raises:
        ConfigError: the config file, a RunConfig's value or an override is invalid (one-line message naming file,
            field and value), the tolaria section names a host model or data file that cannot be used, or ``resume``
            names a run that cannot be resumed or already trained ``tolaria.epochs`` epochs and wrote its summary.
        TypeError: ``config`` is neither a path nor a RunConfig, ``overrides`` is a single string or holds something
            else than strings, ``run_dir`` or ``resume`` is not a path, or ``progress`` is not a text stream.
        ValueError: ``progress`` is a closed stream.
        ChildStartFailed: an actor refused what it was given and could not be built (events.jsonl says so too).
        LogFileInUse: another run in this process is still going (logging is process-wide: their events would mix).
    """
    try:
        return await _start(config, run_dir, overrides, console=console, resume=resume, progress=progress, hooks=hooks)
    except ConfigError as err:
        # From its cause, not from itself: the traceback showed the refusal twice, once in the command line's words.
        raise ConfigError(in_api_words(str(err))) from err.__cause__


async def _start(
    config: str | Path | RunConfig,
    run_dir: str | Path | None = None,
    overrides: Sequence[str] | None = None,
    *,
    console: bool | None = None,
    resume: str | Path | None = None,
    progress: TextIO | None = None,
    hooks: RunHooks | None = None,
    prechecked: bool = False,
) -> EsperSystem:
    """``start`` in the command line's words (its refusals name --resume, --run-dir and --set); ``prechecked``: see
    checked_start."""
    check_progress(progress)
    # Before the checks, which build the model: the run seeds the process's global RNGs (and may turn TF32 on); the
    # caller's are given back when it ends (or fails to start).
    rngs = GlobalRngs()
    matmul = Float32Matmul()
    # Before anything is read or made, and held until the run's logging takes over: a second run in this process,
    # live or starting, is refused.
    reservation = reserve_log_file()
    try:
        args = await checked_start(config, run_dir, overrides, resume, prechecked=prechecked, progress=progress)
        resolved, directory = args.config, args.directory
        files = RunFiles(resolved.logging.json_file, resolved.nissa.metrics_csv, resolved.nissa.summary_json)
        claim = functools.partial(claim_run_dir, directory, resume=resume is not None, files=files)
        run_lock = await anyio.to_thread.run_sync(claim)
        try:
            return await _start_claimed(
                args,
                run_lock,
                (rngs, matmul),
                reservation,
                resume=resume,
                progress=progress,
                hooks=hooks,
                console=console,
            )
        except BaseException:
            run_lock.release()
            raise
    except BaseException:
        reservation.release()
        rngs.restore()  # after the failed start's threads have stopped: nothing of the run draws any more
        matmul.restore()
        raise


async def _start_claimed(
    args: StartArgs,
    run_lock: RunDirLock,
    process: tuple[GlobalRngs, Float32Matmul],
    reservation: LogFileReservation,
    *,
    resume: str | Path | None,
    progress: TextIO | None,
    hooks: RunHooks | None,
    console: bool | None,
) -> EsperSystem:
    run_id = await prepare_run_dir(args, resume=resume is not None)
    reservation.release()  # no await from here to the run's own logging, which takes the place over
    logging = start_logging(args, run_id, console=console, progress=progress)
    undo = StartUndo()
    try:
        return await _start_logged(
            args, run_id, run_lock, process, logging, undo, resume=resume, progress=progress, hooks=hooks
        )
    except BaseException as err:
        # Whatever failed or was cancelled, the process is left as before the start: a later start must not find
        # the log in use, nor the bus or the lane threads of a run that never began.
        try:
            await undo.aclose()
        finally:
            log_start_abandoned(run_id, err)  # the events file ends as every run's does (a tail --follow stops)
            logging.release()
        raise


async def _start_logged(
    args: StartArgs,
    run_id: str,
    run_lock: RunDirLock,
    process: tuple[GlobalRngs, Float32Matmul],
    logging: LoggingHandle,
    undo: StartUndo,
    *,
    resume: str | Path | None,
    progress: TextIO | None,
    hooks: RunHooks | None,
) -> EsperSystem:
    """The start once logging is set up (``run_id`` resolved for a resume): each part it makes is left in ``undo``,
    for the caller to close if the start fails or is cancelled."""
    resolved, directory, baseline = args.config, args.directory, args.baseline
    started_at = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    clock = MonotonicClock()
    # The summary's duration and metrics.csv's wall_time_s count from here: start-up too, as the user waits.
    started_s = clock.now()
    hub = EventHub()
    tally = RunTally()
    if resume is not None:
        preload_earlier(tally, await anyio.to_thread.run_sync(earlier_tally, directory, resolved))
    # One console: a reader gone is noticed (console_lost) whoever writes to it first.
    shared = logging.console if progress is not None and progress is logging.console.inner else progress
    screen = Console(shared, epochs=resolved.tolaria.epochs) if shared is not None else None
    sinks: list[EventSink] = [StructlogSink(), hub, tally]
    if screen is not None:
        sinks.append(screen)
    bus_resource = undo.bus = BusResource()
    try:
        bus = await bus_resource.open(resolved, clock, bus_limits(resolved))
    except ConfigError as err:
        if resume is not None:
            raise
        # Known only by connecting, after the directory was made: it holds this attempt's config and log alone, which
        # a new run there reuses (claim_run_dir), so it is named rather than left behind unmentioned.
        raise nothing_trained(err, directory) from err.__cause__  # the refusal once in a traceback

    def publisher() -> ActorRef[Published] | None:
        # Resolved lazily: the publisher exists only once the tree runs, and events before that stay local.
        try:
            return actors.ref(PUBLISHER, OonaPublisher)
        except ValueError:
            return None

    bus_losses = BusLosses()
    bus_sink = BusSink(publisher, bus_losses)
    sinks.append(bus_sink)
    nissa_forward = NissaForward()  # bound to the routes once they exist
    sinks.append(nissa_forward)
    sink = FanoutSink(*sinks, run_id=run_id)
    actors = ActorSystem(clock=clock, sink=sink, dead_letter_log_limit=resolved.logging.dead_letters_logged)
    # Before this session's run_starting: a run with no checkpoint says which version wrote it by its first one.
    written = await anyio.to_thread.run_sync(written_by, directory) if resume is not None else None
    _log.info(
        "run_starting",
        run_id=run_id,
        run_dir=str(directory),
        bus=resolved.oona.backend,
        resume=resume is not None,
        esper_version=esper_version(),
    )
    log_cache_events(args.data.cache_events)  # the start's checks loaded the data before this run's log existed
    if resume is not None:
        resume_notes(args, written)
        swept = await anyio.to_thread.run_sync(sweep_partial_writes, directory)
        if swept:
            _log.info("partial_writes_removed", files=[str(path.relative_to(directory)) for path in swept])
    if screen is not None:
        # The /metrics URL is shown by Nissa's metrics_endpoint_listening event once it has bound the port (port 0:
        # any free one): named here, a port another run took after the start's check advertised that run's metrics.
        screen.started(run_id, directory, resolved.logging.json_file, resume=resume is not None)
    if resume is not None:
        # Before the run's config.toml is rewritten with the new settings: the user sees each one the resume changes.
        for change in await anyio.to_thread.run_sync(resume_changes, directory, resolved):
            sink.emit(change)
    lanes = undo.lanes = Lanes(resolved.tolaria.device, num_threads={"train": resolved.tolaria.num_threads})
    rngs, matmul = process
    precision = await anyio.to_thread.run_sync(pick_precision, resolved.tolaria, lanes.device, matmul)
    try:
        parts = await assemble(
            resolved,
            run_id=run_id,
            run_dir=directory,
            resume=resume is not None,
            secret=args.key.secret,
            lanes=lanes,
            clock=clock,
            started_s=started_s,
            sink=sink,
            actors=actors,
            tally=tally,
            data=args.data,
            # State packets travel by direct routes, not the event sink: the bus gets them through a tap.
            taps=(bus_sink.emit, screen.on_packet) if screen is not None else (bus_sink.emit,),
            hooks=hooks,
        )
    except ConfigError as err:
        # The weights' contents are checked as Tamiyo loads them (torch: seconds, not worth a start's check before
        # the claim), and a catalogue's as the store opens, so the directory is left as after a Redis refusal and
        # named the same way.
        if resume is not None or not str(err).startswith((WEIGHTS_KEY, STORE_KEY)):
            raise
        raise nothing_trained(err, directory) from err.__cause__  # the refusal once in a traceback
    store = undo.store = StoreCloser(parts.store)
    nissa_forward.bind(parts.routes)
    tree = build_tree(
        resolved,
        bus=bus,
        clock=clock,
        sink=sink,
        actors=actors,
        tolaria=parts.tolaria,
        subsystems=parts.subsystems,
        bus_losses=bus_losses,
    )
    undo.actors = actors
    if resume is not None:
        # After every refusal (a refused resume leaves the file as it was), before Nissa appends to it.
        await renumber_metrics(directory / resolved.nissa.metrics_csv)
    await actors.start(tree)
    if resume is not None:
        # Only now: a resume refused or failed on the way (a bus that does not answer, a checkpoint that does not
        # fit) leaves the run's config.toml as it was, so its printed --resume command still works.
        await anyio.to_thread.run_sync(write_run_config, directory, dump_config(resolved))
    for state in actors.snapshot():
        _log.info("actor_started", actor=state.actor, status=state.status.value)
    # NVML calls block; on a machine without a GPU this logs "no GPU" once and carries on.
    gpu = await anyio.to_thread.run_sync(read_gpus_once)
    for device in gpu.devices:
        _log.info("gpu_device", index=device.index, name=device.name, memory_total_bytes=device.memory_total_bytes)
    _log.info("run_started", run_id=run_id, actors=len(actors.snapshot()), **precision)
    cell = parts.cell
    deadline_s = resolved.weatherlight.shutdown_deadline_s
    metrics = directory / resolved.nissa.metrics_csv
    growth = functools.partial(growth_figures, tally, metrics, baseline, parts.initial_seed_parameters)

    return EsperSystem(
        config=resolved,
        run_id=run_id,
        run_dir=directory,
        actors=actors,
        hub=hub,
        logging=logging,
        started_at=started_at,
        started_s=started_s,
        run_lock=run_lock,
        training=cell,
        resources=(lanes, store, bus_resource),
        stop_training=lambda: cell.request_run_stop("run stopping"),
        drain=lambda: drain_pipeline(actors, deadline_s),
        growth=growth,
        abandonable=(lanes,),
        bus_dropped=lambda: bus_losses.total,
        alerts_fired=lambda: dict(tally.alerts_fired),
        restore_process=functools.partial(restore_process, rngs, matmul),
        settle=lanes.wait_closed,
        abandoned_once_settled=(parts.store,),
    )


def main(argv: Sequence[str] | None = None, *, whole_process: bool = False) -> int:
    """The command line. Exit status: 0 done, 1 the run failed, 2 bad config or usage, 130 interrupted.

    ``whole_process``: this is ``python -m esper.run``, so once the summary is out a signal may end the process
    with the run's status (never set when called from a test or another program).
    """
    # Nothing the run writes to stdout or stderr may hold it up (a reader that stops reading): see ConsoleStream.
    with standard_consoles():
        return _main(argv, whole_process=whole_process)


def _main(argv: Sequence[str] | None, *, whole_process: bool) -> int:
    args = build_parser().parse_args(argv)
    try:
        # Read-only (a resume's newest checkpoint is read and digested: seconds for a large one), so a Ctrl-C here
        # leaves at once with nothing to stop; as ``python -m esper.run`` the import-time handlers still do that.
        config = checked_command_line(args)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    if isinstance(config, int):
        return config
    if whole_process:
        hand_signals_to_the_run()
    with contextlib.suppress(KeyboardInterrupt):
        try:
            return asyncio.run(
                run_in_foreground(
                    lambda: _start(config, args.run_dir, resume=args.resume, progress=sys.stderr, prechecked=True),
                    whole_process=whole_process,
                )
            )
        except ConfigError as err:
            say(sys.stderr, f"{blamed(err, args.config, args.overrides)}\n")
            return EXIT_CONFIG_ERROR
        except ChildStartFailed as err:  # an actor refused its settings: events.jsonl has the run_finished line
            say(sys.stderr, f"the run could not start: {err}\n")
            return EXIT_FAILED
    return EXIT_INTERRUPTED


if __name__ == "__main__":
    status = main(whole_process=True)
    drop_lost_streams()
    # Everything is written (the run's files closed, the console flushed): leave now rather than through the
    # interpreter's teardown, which resets the signal handlers first, so that a signal in its half second of torch
    # clean-up killed a completed run (exit 129, 130 or 143 instead of its own status).
    os._exit(status)
