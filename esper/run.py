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

import argparse
import asyncio
import contextlib
import datetime as dt
import functools
import re
import secrets
import time
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import anyio
import msgspec
import structlog

from actors.nissa.prometheus import check_bindable, host_port
from actors.oona.housekeeping import oona_spec
from actors.oona.publisher import PUBLISHER, BusSink, OonaPublisher, Published
from actors.tolaria.actor import TolariaWiring, tolaria_spec
from actors.tolaria.build import check_config
from actors.tolaria.checkpoints import CheckpointError
from actors.weatherlight.tree import build_root, state_reporter
from esper.assemble import StoreCloser, assemble, drain_pipeline
from esper.baseline import RecordedBaseline, load_baseline, with_baseline
from esper.bus_resource import BusResource, bus_limits
from esper.cli_process import (
    STOP_SIGNALS,
    detach_from_terminal,
    drop_lost_streams,
    exit_on_signal,
    handled_signals,
    say,
)
from esper.config import apply_overrides, dump_config, load_config, parse_override, validate_config
from esper.console import Console
from esper.data_fingerprint import check_same_data, record_data
from esper.logs import StructlogSink, check_log_file_free, configure_logging
from esper.resume import check_checkpoint_run, check_resumable, check_resume_files
from esper.run_dir import (
    RunDirLock,
    check_not_in_use,
    check_not_the_run_config,
    claim_run_dir,
    sweep_partial_writes,
    write_run_config,
)
from esper.run_files import RunFiles
from esper.run_history import already_trained, earlier_tally, previous_run_id
from esper.runtime.bus_redis import redacted
from esper.runtime.clock import MonotonicClock
from esper.runtime.errors import ChildStartFailed, ConfigError
from esper.runtime.gpu import GpuTelemetry
from esper.runtime.lanes import Lanes
from esper.runtime.supervisor import ChildSpec
from esper.runtime.system import ActorSystem
from esper.session import EXIT_FAILED, EXIT_INTERRUPTED, EsperSystem, EventHub, FanoutSink
from esper.start_checks import check_start
from esper.summary_table import format_summary
from esper.wiring import NissaForward, RunHooks, RunTally
from schemas.config import RunConfig

if TYPE_CHECKING:
    from collections.abc import Sequence

    from esper.runtime.bus import Bus
    from esper.runtime.clock import Clock
    from esper.runtime.events import EventSink
    from esper.runtime.ref import ActorRef
    from esper.runtime.supervisor import Supervisor
    from schemas.run import GrowthFigures, RunSummary, TrainingFigures

_log = structlog.get_logger("esper.run")

EXIT_OK = 0
EXIT_CONFIG_ERROR = 2


def new_run_id(now: dt.datetime | None = None) -> str:
    """A sortable, unique run id: UTC time to the second plus 4 random hex digits."""
    moment = now or dt.datetime.now(dt.UTC)
    return f"{moment:%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"


def resolve_secret(config: RunConfig) -> bytes:
    """The key that signs commands: the secret environment variable, or a random per-run key.

    Raises:
        ConfigError: the variable is unset while weatherlight.require_secret is true.
    """
    name = config.security.secret_env
    value = os.environ.get(name)
    if value:
        return value.encode("utf-8")
    if config.weatherlight.require_secret:
        raise ConfigError(f"weatherlight.require_secret: the environment variable {name} is not set")
    return secrets.token_bytes(32)


def build_tree(
    config: RunConfig,
    *,
    bus: Bus,
    clock: Clock,
    sink: EventSink,
    actors: ActorSystem,
    tolaria: TolariaWiring | None = None,
    subsystems: Sequence[ChildSpec] = (),
) -> Supervisor:
    """The run's supervision tree: oona, then ``subsystems`` (urza, nissa, tezzeret, kasmina, tamiyo in that order),
    then Tolaria, then the state reporter.

    Tolaria is transient: when training ends it stops normally and stays stopped; a crash restarts it (it resumes).
    Without subsystems Tolaria runs alone and expects no plans.
    """
    deadline_s = config.weatherlight.shutdown_deadline_s
    children: list[ChildSpec] = [
        oona_spec(bus, clock=clock, ttl_s=config.oona.message_ttl_s, shutdown_deadline_s=deadline_s),
        ChildSpec(
            PUBLISHER,
            lambda: OonaPublisher(bus, clock=clock, sink=sink, breaker=config.oona.publish_breaker),
            shutdown_deadline_s=deadline_s,
        ),
        *subsystems,
    ]
    if tolaria is not None:
        # Stopping Tolaria finishes the current step and writes a checkpoint, which may outlast a small deadline.
        children.append(
            tolaria_spec(
                config.tolaria,
                tolaria,
                shutdown_deadline_s=max(deadline_s, 30.0),
                max_restarts=config.weatherlight.restart_max,
                window_s=config.weatherlight.restart_window_s,
            )
        )
    children += [
        state_reporter(
            actors.snapshot,
            sink,
            interval_s=config.logging.state_interval_s,
            clock=clock,
            shutdown_deadline_s=deadline_s,
        ),
    ]
    return build_root(children, config.weatherlight)


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
            good checkpoint. Overrides ``run_dir``.
        progress: where the progress bar and lifecycle lines go (the command line passes stderr); None: nowhere.
        hooks: test hooks (fault injection, a wrapped seed source).

    Raises:
        ConfigError: the config file, a RunConfig's value or an override is invalid (one-line message naming file,
            field and value), the tolaria section names a host model or data file that cannot be used, or ``resume``
            names a run that cannot be resumed or already trained ``tolaria.epochs`` epochs.
        TypeError: ``config`` is neither a path nor a RunConfig, ``overrides`` is a single string or holds something
            else than strings, or ``run_dir`` or ``resume`` is not a path.
        ChildStartFailed: an actor refused what it was given and could not be built (events.jsonl says so too).
        LogFileInUse: another run in this process is still going (logging is process-wide: their events would mix).
    """
    try:
        return await _start(config, run_dir, overrides, console=console, resume=resume, progress=progress, hooks=hooks)
    except ConfigError as err:
        raise ConfigError(in_api_words(str(err))) from err


_FLAGS = (("--resume ", "resume="), ("--resume:", "resume:"), ("--run-dir", "run_dir"), ("--set ", "overrides: "))


def in_api_words(message: str) -> str:
    """A refusal the command line words with its flags (--resume DIR, --run-dir, --set KEY=VALUE), in the words of
    ``esper.start``'s parameters, for a caller of the API."""
    for flag, parameter in _FLAGS:
        message = message.replace(flag, parameter)
    return message


async def _start(
    config: str | Path | RunConfig,
    run_dir: str | Path | None = None,
    overrides: Sequence[str] | None = None,
    *,
    console: bool | None = None,
    resume: str | Path | None = None,
    progress: TextIO | None = None,
    hooks: RunHooks | None = None,
) -> EsperSystem:
    """``start`` in the command line's words (its refusals name --resume, --run-dir and --set)."""
    check_log_file_free()  # before anything is read or made: a second live run in this process is refused
    if isinstance(overrides, str):
        raise TypeError(f"overrides: a list of 'section.key=value' strings, got the string {overrides!r}")
    for name, where in (("run_dir", run_dir), ("resume", resume)):
        if where is not None and not isinstance(where, str | os.PathLike):
            raise TypeError(f"{name}: expected a directory's path (a str or os.PathLike), got {where!r}")
    if isinstance(config, RunConfig):
        resolved = apply_overrides(validate_config(config), overrides or ())
    elif not isinstance(config, str | os.PathLike):
        raise TypeError(f"config: a TOML file's path or a RunConfig, got a {type(config).__name__}")
    else:
        resolved = await anyio.to_thread.run_sync(load_config, config, tuple(overrides or ()))
    resolved = _absolute_data_path(resolved)
    secret = resolve_secret(resolved)
    try:
        await anyio.to_thread.run_sync(check_config, resolved.tolaria, resolved.kasmina.slot_targets)
        await anyio.to_thread.run_sync(check_start, resolved)
        if resolved.nissa.prometheus_port is not None:
            host, port = resolved.nissa.prometheus_host, resolved.nissa.prometheus_port
            await anyio.to_thread.run_sync(check_bindable, host, port)
    except ConfigError as err:
        raise blamed(err, config, overrides or ()) from err
    baseline = await anyio.to_thread.run_sync(load_baseline, resolved)
    if resume is not None:
        directory = Path(resume)
        await anyio.to_thread.run_sync(check_not_in_use, directory)
        if not await anyio.to_thread.run_sync((directory / "checkpoints").is_dir):
            raise ConfigError(
                f"--resume {directory}: no checkpoints directory to resume from (a run stopped while it started"
                f" trains nothing: start it again with --run-dir {directory})"
            )
        # Before the already-trained notice: another run's checkpoints copied in were "already trained" (exit 0).
        await anyio.to_thread.run_sync(
            lambda: check_checkpoint_run(directory / "checkpoints", previous_run_id(directory))
        )
        # Read-only, before the claim, so a refused resume leaves the directory exactly as it was.
        try:
            finished = await anyio.to_thread.run_sync(already_trained, directory, resolved.tolaria.epochs)
        except CheckpointError as err:
            raise ConfigError(f"--resume {directory}: {err}") from err
        if finished is not None:  # resuming would only rewrite its summary, without the figures
            raise ConfigError(finished)
        await anyio.to_thread.run_sync(check_resume_files, directory, resolved.nissa.metrics_csv)
        await anyio.to_thread.run_sync(check_resumable, directory, resolved)
        await anyio.to_thread.run_sync(check_same_data, directory, resolved.tolaria)
        run_id: str | None = None  # the resumed run's own, read once the directory is claimed
    else:
        run_id = resolved.run_id or new_run_id()
        directory = Path(run_dir) if run_dir is not None else Path(resolved.runs_dir) / run_id
        if not isinstance(config, RunConfig):
            await anyio.to_thread.run_sync(check_not_the_run_config, config, directory)
    files = RunFiles(resolved.logging.json_file, resolved.nissa.metrics_csv, resolved.nissa.summary_json)
    claim = functools.partial(claim_run_dir, directory, resume=resume is not None, files=files)
    run_lock = await anyio.to_thread.run_sync(claim)
    try:
        return await _start_claimed(
            resolved, directory, run_id, run_lock,
            baseline=baseline, secret=secret, resume=resume, progress=progress, hooks=hooks, console=console,
        )  # fmt: skip
    except BaseException:
        run_lock.release()
        raise


async def _start_claimed(
    resolved: RunConfig,
    directory: Path,
    run_id: str | None,
    run_lock: RunDirLock,
    *,
    baseline: RecordedBaseline | None,
    secret: bytes,
    resume: str | Path | None,
    progress: TextIO | None,
    hooks: RunHooks | None,
    console: bool | None,
) -> EsperSystem:
    if run_id is None:
        earlier: str = await anyio.to_thread.run_sync(previous_run_id, directory)
        run_id = resolved.run_id or earlier
    if resume is None:
        await anyio.to_thread.run_sync(write_run_config, directory, dump_config(resolved))
        await anyio.to_thread.run_sync(record_data, directory, resolved.tolaria)
    logging = configure_logging(
        directory,
        level=resolved.logging.level,
        console=resolved.logging.console if console is None else console,
        json_file=resolved.logging.json_file,
        console_level=_console_level(resolved.logging.console_level),
        # The progress lines show the telemetry events that change the run, readably; the rest stay in the file.
        console_omit=("telemetry_event",) if progress is not None else (),
    )
    started_at = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    started_s = time.monotonic()  # the summary's duration covers assembly and start-up too, as the user waits
    hub = EventHub()
    tally = RunTally()
    if resume is not None:
        before = await anyio.to_thread.run_sync(earlier_tally, directory, resolved)
        tally.preload(
            before.stages, before.epochs, before.decisions, before.slot_transitions, emergencies=before.emergencies
        )
    # One console: a reader gone is noticed (console_lost) whoever writes to it first.
    shared = logging.console if progress is not None and progress is logging.console.inner else progress
    screen = Console(shared, epochs=resolved.tolaria.epochs) if shared is not None else None
    sinks: list[EventSink] = [StructlogSink(), hub, tally]
    if screen is not None:
        sinks.append(screen)
    clock = MonotonicClock()
    bus_resource = BusResource()
    try:
        bus = await bus_resource.open(resolved, clock, bus_limits(resolved))
    except BaseException as err:
        _log_start_abandoned(run_id, err)  # the events file ends as every run's does (a tail --follow stops)
        logging.close()
        raise

    def publisher() -> ActorRef[Published] | None:
        # Resolved lazily: the publisher exists only once the tree runs, and events before that stay local.
        try:
            return actors.ref(PUBLISHER, OonaPublisher)
        except ValueError:
            return None

    bus_sink = BusSink(publisher)
    sinks.append(bus_sink)
    nissa_forward = NissaForward()  # bound to the routes once they exist
    sinks.append(nissa_forward)
    sink = FanoutSink(*sinks)
    actors = ActorSystem(clock=clock, sink=sink, dead_letter_log_limit=resolved.logging.dead_letters_logged)
    _log.info(
        "run_starting", run_id=run_id, run_dir=str(directory), bus=resolved.oona.backend, resume=resume is not None
    )
    if resume is not None:
        swept = await anyio.to_thread.run_sync(sweep_partial_writes, directory)
        if swept:
            _log.info("partial_writes_removed", files=[str(path.relative_to(directory)) for path in swept])
    if screen is not None:
        port = resolved.nissa.prometheus_port
        metrics_url = None if port is None else f"http://{host_port(resolved.nissa.prometheus_host, port)}/metrics"
        screen.started(
            run_id, directory, resolved.logging.json_file, resume=resume is not None, metrics_url=metrics_url
        )
    lanes = Lanes(resolved.tolaria.device, num_threads={"train": resolved.tolaria.num_threads})
    try:
        parts = await assemble(
            resolved,
            run_id=run_id,
            run_dir=directory,
            resume=resume is not None,
            secret=secret,
            lanes=lanes,
            clock=clock,
            sink=sink,
            actors=actors,
            tally=tally,
            # State packets travel by direct routes, not the event sink: the bus gets them through a tap.
            taps=(bus_sink.emit, screen.on_packet) if screen is not None else (bus_sink.emit,),
            hooks=hooks,
        )
    except BaseException as err:
        await lanes.aclose()
        await bus_resource.aclose()
        _log_start_abandoned(run_id, err)
        logging.close()
        raise
    nissa_forward.bind(parts.routes)
    tree = build_tree(
        resolved, bus=bus, clock=clock, sink=sink, actors=actors, tolaria=parts.tolaria, subsystems=parts.subsystems
    )
    try:
        await actors.start(tree)
    except BaseException as err:
        # Ctrl-C while the tree starts cancels start(), which leaves the tree starting: stop it before its lanes
        # close under it (the trainer would fail on a closed lane and be restarted, again and again).
        await actors.stop()
        await lanes.aclose()
        await StoreCloser(parts.store).aclose()
        await bus_resource.aclose()
        _log_start_abandoned(run_id, err)
        logging.close()
        raise
    if resume is not None:
        # Only now: a resume refused or failed on the way (a bus that does not answer, a checkpoint that does not
        # fit) leaves the run's config.toml as it was, so its printed --resume command still works.
        await anyio.to_thread.run_sync(write_run_config, directory, dump_config(resolved))
    for state in actors.snapshot():
        _log.info("actor_started", actor=state.actor, status=state.status.value)
    # NVML calls block; on a machine without a GPU this logs "no GPU" once and carries on.
    gpu = await anyio.to_thread.run_sync(GpuTelemetry().read)
    for device in gpu.devices:
        _log.info("gpu_device", index=device.index, name=device.name, memory_total_bytes=device.memory_total_bytes)
    _log.info("run_started", run_id=run_id, actors=len(actors.snapshot()))
    cell = parts.cell
    deadline_s = resolved.weatherlight.shutdown_deadline_s

    def growth(figures: TrainingFigures | None) -> GrowthFigures:
        if figures is None:
            return with_baseline(tally.figures(0), baseline)
        return with_baseline(tally.figures(figures.seed_parameters, figures.global_step), baseline)

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
        resources=(lanes, StoreCloser(parts.store), bus_resource),
        stop_training=lambda: cell.request_run_stop("run stopping"),
        drain=lambda: drain_pipeline(actors, deadline_s),
        growth=growth,
        abandonable=(lanes, parts.store),
    )


_CHECKED_KEY = re.compile(r"([a-z_]+\.[a-z_]+)(?:\[\d+\])? = ")


def blamed(err: ConfigError, config: str | Path | RunConfig, overrides: Sequence[str]) -> ConfigError:
    """``err`` (which starts with the ``section.key`` it is about) led by where that value came from: the last
    ``--set`` of the key, else the config file; an embedded RunConfig has neither and the error is left as it is."""
    text = str(err)
    key = _CHECKED_KEY.match(text)
    if key is None:
        return err
    setter = next((o for o in reversed(overrides) if parse_override(o)[0] == key.group(1)), None)
    if setter is not None:
        return ConfigError(f"--set {redacted(setter)}: {text}")  # a Redis URL's password stays off the console
    if isinstance(config, str | Path):
        return ConfigError(f"{config}: {text}")
    return err


def _absolute_data_path(config: RunConfig) -> RunConfig:
    """``tolaria.npz_path`` and ``tamiyo.gnn_checkpoint`` made absolute (from the working directory, ``~`` expanded),
    so that the run's config.toml and the ``--resume`` command it prints work from any directory."""
    npz, weights = config.tolaria.npz_path, config.tamiyo.gnn_checkpoint
    if npz is not None and not Path(npz).is_absolute():
        absolute = str(Path(npz).expanduser().absolute())
        config = msgspec.structs.replace(config, tolaria=msgspec.structs.replace(config.tolaria, npz_path=absolute))
    if weights is not None and not Path(weights).is_absolute():
        absolute = str(Path(weights).expanduser().absolute())
        tamiyo = msgspec.structs.replace(config.tamiyo, gnn_checkpoint=absolute)
        config = msgspec.structs.replace(config, tamiyo=tamiyo)
    return config


def _log_start_abandoned(run_id: str, err: BaseException) -> None:
    """The ``run_finished`` line of a run that ended while starting (a Ctrl-C, a failure), so that the events file
    ends as every run's does and ``esper.tail --follow`` stops."""
    interrupted = isinstance(err, asyncio.CancelledError | KeyboardInterrupt)
    status = "interrupted" if interrupted else "failed"
    error = None if interrupted else f"{type(err).__name__}: {err}"
    _log.info("run_finished", run_id=run_id, status=status, duration_s=None, error=error, started=False)


def _console_level(configured: str) -> str:
    """The stderr log level: as configured, or under "auto" warning. The info log stays in events.jsonl; on stderr
    (a terminal, a pipe, a notebook's cell) it would bury the progress lines and warnings: hundreds of lines a
    minute."""
    return "warning" if configured == "auto" else configured


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m esper.run",
        description="Run Esper: train a host model while the controller grows it, under a supervision tree.",
    )
    parser.add_argument("config", type=Path, help="the run configuration (TOML); every key has a default")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one config value, read as a TOML value (e.g. tolaria.epochs=3, tamiyo.policy=gnn); repeatable",
    )
    # A resume continues the run in its own directory: a --run-dir beside it was silently ignored.
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--run-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="the run directory for config.toml, events.jsonl and summary.json (default: <runs_dir>/<run-id>, with"
        " the config's runs_dir, runs unless set)",
    )
    where.add_argument(
        "--resume",
        type=Path,
        default=None,
        metavar="RUN_DIR",
        help="continue an interrupted run from its last good checkpoint; the directory is reused, events appended",
    )
    return parser


async def run_until_done(system: EsperSystem, interrupted: asyncio.Event) -> RunSummary:
    """Wait for the run to end (training finished), or stop it gracefully once ``interrupted`` is set: Tolaria
    finishes its step and writes a checkpoint that ``--resume`` continues from."""
    async with asyncio.TaskGroup() as tg:
        finished = tg.create_task(system.wait())
        interrupt = tg.create_task(interrupted.wait())
        await asyncio.wait((finished, interrupt), return_when=asyncio.FIRST_COMPLETED)
        if not finished.done():
            tg.create_task(system.stop(status="interrupted"))
        interrupt.cancel()
    return finished.result()


async def _main_async(
    config: RunConfig, run_dir: Path | None, resume: Path | None = None, *, whole_process: bool = False
) -> int:
    interrupted = asyncio.Event()
    starting = asyncio.ensure_future(_start(config, run_dir, resume=resume, progress=sys.stderr))

    def interrupt() -> None:
        if interrupted.is_set():
            # A second Ctrl-C means now: every write that matters is atomic (temp file, fsync, rename), so what is on
            # disk is the last checkpoint, and --resume sweeps the temp file of one cut short.
            say(sys.stderr, "interrupted again: exiting at once; --resume continues from the last checkpoint\n")
            os._exit(EXIT_INTERRUPTED)
        interrupted.set()
        if not starting.done():
            # Loading the data, building the host, starting the actors: what has started is stopped in order, and a
            # step still running in a thread (a user's factory, the data set's generation) is left to the process's
            # exit; whatever it writes is written atomically, so nothing is left half-written.
            say(sys.stderr, "interrupted while starting: stopping what has started (Ctrl-C again to exit at once)\n")
            starting.cancel()
            return
        say(
            sys.stderr,
            "interrupted: finishing the step, writing a checkpoint, stopping the actors in order (Ctrl-C again to"
            " exit at once)\n",
        )

    def hang_up() -> None:
        # The terminal closed: whatever is still written to it would fail (EIO) and end the stop half-way.
        detach_from_terminal()
        interrupt()

    # Installed before the start, so a Ctrl-C while the data set loads is heard at once.
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, interrupt)
    if signal.SIGHUP in handled_signals():
        loop.add_signal_handler(signal.SIGHUP, hang_up)
    try:
        try:
            system = await starting
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise  # this task is being cancelled, not only the start
            return EXIT_INTERRUPTED
        summary = await run_until_done(system, interrupted)
    finally:
        for sig in STOP_SIGNALS:
            loop.remove_signal_handler(sig)
    if whole_process:
        exit_on_signal(summary.exit_code)
    say(sys.stdout, format_summary(summary))
    return summary.exit_code


def main(argv: Sequence[str] | None = None, *, whole_process: bool = False) -> int:
    """The command line. Exit status: 0 done, 1 the run failed, 2 bad config or usage, 130 interrupted.

    ``whole_process``: this is ``python -m esper.run``, so once the summary is out a signal may end the process
    with the run's status (never set when called from a test or another program).
    """
    args = build_parser().parse_args(argv)
    try:
        config = load_config(args.config, args.overrides)
        resolve_secret(config)
    except ConfigError as err:
        say(sys.stderr, f"{err}\n")
        return EXIT_CONFIG_ERROR
    if args.resume is None and args.run_dir is not None:
        try:
            check_not_the_run_config(args.config, args.run_dir)
        except ConfigError as err:
            say(sys.stderr, f"{err}\n")
            return EXIT_CONFIG_ERROR
    if args.resume is not None:
        try:
            check_not_in_use(args.resume)
            check_checkpoint_run(args.resume / "checkpoints", previous_run_id(args.resume))
            finished = already_trained(args.resume, config.tolaria.epochs)
        except ConfigError as err:
            say(sys.stderr, f"{err}\n")
            return EXIT_CONFIG_ERROR
        except CheckpointError as err:
            say(sys.stderr, f"--resume {args.resume}: {err}\n")
            return EXIT_CONFIG_ERROR
        if finished is not None:
            say(sys.stderr, f"{finished}\n")
            return EXIT_OK
    with contextlib.suppress(KeyboardInterrupt):
        try:
            return asyncio.run(_main_async(config, args.run_dir, args.resume, whole_process=whole_process))
        except ConfigError as err:
            say(sys.stderr, f"{blamed(err, args.config, args.overrides)}\n")
            return EXIT_CONFIG_ERROR
        except ChildStartFailed as err:  # an actor refused its settings: events.jsonl has the run_finished line
            say(sys.stderr, f"the run could not start: {err}\n")
            return EXIT_FAILED
    return EXIT_INTERRUPTED


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:
        signal.signal(signal.SIGHUP, signal.SIG_DFL)
    status = main(whole_process=True)
    drop_lost_streams()
    # Everything is written (the run's files closed, the console flushed): leave now rather than through the
    # interpreter's teardown, which resets the signal handlers first, so that a signal in its half second of torch
    # clean-up killed a completed run (exit 129, 130 or 143 instead of its own status).
    os._exit(status)
