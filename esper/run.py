"""The composition root: config -> actors -> supervision tree; ``python -m esper.run`` and ``esper.start()``.

Only this module wires actors together (ARCHITECTURE.md section 1); nothing imports it but ``esper.start`` and scripts.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import os
import secrets
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import structlog

from actors.oona.housekeeping import oona_spec
from actors.weatherlight.tree import build_root, state_reporter
from esper.config import apply_overrides, dump_config, load_config
from esper.logs import StructlogSink, configure_logging
from esper.runtime.atomic_write import atomic_write_text
from esper.runtime.bus import BusLimits
from esper.runtime.bus_inproc import InProcessBus
from esper.runtime.clock import MonotonicClock
from esper.runtime.errors import ConfigError
from esper.runtime.gpu import GpuTelemetry
from esper.runtime.system import ActorSystem
from esper.session import EsperSystem, EventHub, FanoutSink
from schemas.config import RunConfig

if TYPE_CHECKING:
    from collections.abc import Sequence

    from esper.runtime.bus import Bus
    from esper.runtime.clock import Clock
    from esper.runtime.events import EventSink
    from esper.runtime.supervisor import ChildSpec, Supervisor
    from schemas.run import RunSummary

_log = structlog.get_logger("esper.run")

EXIT_CONFIG_ERROR = 2
EXIT_INTERRUPTED = 130


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


def build_tree(config: RunConfig, *, bus: Bus, clock: Clock, sink: EventSink, actors: ActorSystem) -> Supervisor:
    """The run's supervision tree: the subsystems that exist, in start order, then the state reporter."""
    deadline_s = config.weatherlight.shutdown_deadline_s
    children: list[ChildSpec] = [
        oona_spec(bus, clock=clock, ttl_s=config.oona.message_ttl_s, shutdown_deadline_s=deadline_s),
        state_reporter(
            actors.snapshot,
            sink,
            interval_s=config.logging.state_interval_s,
            clock=clock,
            shutdown_deadline_s=deadline_s,
        ),
    ]
    return build_root(children, config.weatherlight)


def _bus_limits(config: RunConfig) -> BusLimits:
    oona = config.oona
    return BusLimits(
        depth_high=oona.queue_depth_high,
        depth_recovery=oona.queue_depth_recovery,
        capacity=oona.topic_capacity,
        emergency_rate_per_min=float(oona.emergency_rate_per_min),
        claim_idle_s=oona.claim_idle_s,
        claim_batch=oona.claim_batch,
        max_attempts=oona.dead_letter_attempts,
        ttl_s=oona.message_ttl_s,
    )


async def start(
    config: str | Path | RunConfig,
    run_dir: str | Path | None = None,
    overrides: Sequence[str] | None = None,
    *,
    console: bool | None = None,
) -> EsperSystem:
    """Start a run as tasks of the running event loop and return its handle; never calls asyncio.run.

    Args:
        config: a TOML file path, or a RunConfig.
        run_dir: where the run writes its files; default ``<runs_dir>/<run-id>``.
        overrides: ``section.key=value`` strings applied on top of the config (as ``--set``).
        console: log readable lines to stderr; default from ``logging.console``.

    Raises:
        ConfigError: the config file or an override is invalid (one-line message naming file, field and value).
    """
    if isinstance(config, RunConfig):
        resolved = apply_overrides(config, overrides or ()) if overrides else config
    else:
        resolved = await anyio.to_thread.run_sync(load_config, config, tuple(overrides or ()))
    resolve_secret(resolved)  # fail before anything is written; the key itself reaches actors in later issues
    run_id = resolved.run_id or new_run_id()
    directory = Path(run_dir) if run_dir is not None else Path(resolved.runs_dir) / run_id
    await anyio.to_thread.run_sync(_prepare_run_dir, directory, dump_config(resolved))
    logging = configure_logging(
        directory,
        level=resolved.logging.level,
        console=resolved.logging.console if console is None else console,
        json_file=resolved.logging.json_file,
    )
    started_at = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    hub = EventHub()
    sink = FanoutSink(StructlogSink(), hub)
    clock = MonotonicClock()
    bus = InProcessBus(clock, limits=_bus_limits(resolved))
    actors = ActorSystem(clock=clock, sink=sink, dead_letter_log_limit=resolved.logging.dead_letters_logged)
    _log.info("run_starting", run_id=run_id, run_dir=str(directory), bus=resolved.oona.backend)
    try:
        await actors.start(build_tree(resolved, bus=bus, clock=clock, sink=sink, actors=actors))
    except BaseException:
        logging.close()
        raise
    for state in actors.snapshot():
        _log.info("actor_started", actor=state.actor, status=state.status.value)
    # NVML calls block; on a machine without a GPU this logs "no GPU" once and carries on.
    gpu = await anyio.to_thread.run_sync(GpuTelemetry().read)
    for device in gpu.devices:
        _log.info("gpu_device", index=device.index, name=device.name, memory_total_bytes=device.memory_total_bytes)
    _log.info("run_started", run_id=run_id, actors=len(actors.snapshot()))
    return EsperSystem(
        config=resolved,
        run_id=run_id,
        run_dir=directory,
        actors=actors,
        hub=hub,
        logging=logging,
        started_at=started_at,
    )


def _prepare_run_dir(directory: Path, resolved_toml: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    atomic_write_text(directory / "config.toml", resolved_toml)


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
    parser.add_argument(
        "--run-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="the run directory for config.toml, events.jsonl and summary.json (default: runs/<run-id>)",
    )
    return parser


def format_summary(summary: RunSummary) -> str:
    """The end-of-run table shown on the console."""
    lines = [
        f"run {summary.run_id}: {summary.status} in {summary.duration_s:.2f} s (exit {summary.exit_code})",
        f"run directory: {summary.run_dir}",
        f"{'actor':<16}{'status':<12}{'handled':>9}{'failed':>8}{'restarts':>10}",
    ]
    lines += [
        f"{state.actor:<16}{state.status.value:<12}{state.handled:>9}{state.failed:>8}{state.restarts:>10}"
        for state in summary.actors
    ]
    if summary.error:
        lines.append(f"error: {summary.error}")
    return "\n".join(lines) + "\n"


async def run_until_done(system: EsperSystem, interrupted: asyncio.Event) -> RunSummary:
    """Wait for the run to end, or stop it gracefully once ``interrupted`` is set.

    Until the trainer exists, a run has no work of its own: it starts the tree, logs it and stops cleanly.
    """
    if "tolaria" not in {state.actor for state in system.snapshot()}:
        _log.info("run_has_no_trainer", detail="the trainer actor is not built yet; stopping after start-up")
        return await system.stop(status="completed")
    async with asyncio.TaskGroup() as tg:
        finished = tg.create_task(system.wait())
        interrupt = tg.create_task(interrupted.wait())
        await asyncio.wait((finished, interrupt), return_when=asyncio.FIRST_COMPLETED)
        if not finished.done():
            tg.create_task(system.stop(status="interrupted"))
        interrupt.cancel()
    return finished.result()


async def _main_async(config: RunConfig, run_dir: Path | None) -> int:
    system = await start(config, run_dir)
    interrupted = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, interrupted.set)
    try:
        summary = await run_until_done(system, interrupted)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    sys.stdout.write(format_summary(summary))
    if summary.status == "interrupted":
        return EXIT_INTERRUPTED
    return summary.exit_code


def main(argv: Sequence[str] | None = None) -> int:
    """The command line. Exit status: 0 done, 1 the run failed, 2 bad config or usage, 130 interrupted."""
    args = build_parser().parse_args(argv)
    try:
        config = load_config(args.config, args.overrides)
        resolve_secret(config)
    except ConfigError as err:
        sys.stderr.write(f"{err}\n")
        return EXIT_CONFIG_ERROR
    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(_main_async(config, args.run_dir))
    return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
