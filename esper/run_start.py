"""The start's steps that wire no actor: the run directory's files, logging, a resume's notes, the growth figures."""

from __future__ import annotations

import shlex
from typing import TYPE_CHECKING, TextIO

import anyio
import msgspec
import structlog

from esper.baseline import with_baseline
from esper.config import dump_config
from esper.console import LOG_LINES
from esper.data_fingerprint import record_data
from esper.end_notes import end_notes
from esper.logs import configure_logging
from esper.resume_rows import renumber_from_1
from esper.run_args import console_level
from esper.run_dir import write_run_config
from esper.run_history import previous_run_id
from esper.run_key import MIN_SECRET_BYTES, keep_run_key, short_secret
from esper.runtime.errors import ConfigError
from esper.version import esper_version

if TYPE_CHECKING:
    from pathlib import Path

    from actors.tolaria.global_rngs import GlobalRngs
    from actors.tolaria.run_precision import Float32Matmul
    from esper.baseline import RecordedBaseline
    from esper.logs import LoggingHandle
    from esper.run_args import StartArgs
    from esper.run_history import EarlierTally
    from esper.run_tally import RunTally
    from schemas.run import GrowthFigures, TrainingFigures

# The composition root's name: these events are the start's, as they were when it logged them itself.
_log = structlog.get_logger("esper.run")

WEIGHTS_KEY = "tamiyo.gnn_checkpoint"
"""The config field a refusal names when Tamiyo's weights cannot be loaded (a new run's start then trained nothing)."""
STORE_KEY = "urza.root"
"""The config field a refusal names when the artifact store cannot be opened (a damaged catalogue, known only as it
opens: a new run's start then trained nothing)."""


def preload_earlier(tally: RunTally, before: EarlierTally) -> None:
    """Give ``tally`` a resumed run's earlier sessions, saying on the console what their figures leave out."""
    tally.preload(
        before.stages,
        before.epochs,
        before.decisions,
        before.slot_transitions,
        emergencies=before.emergencies,
        refusals=before.refusals,
        incomplete=before.incomplete,
        partial=before.partial,
        alerts_fired=before.alerts_fired,
        rejected_commands=before.rejected_commands,
    )
    # On the console too: the summary's figures will leave this out.
    for note in (*before.incomplete, *before.partial):
        _log.warning("resume_history_incomplete", detail=note)
    if before.metrics_problem is not None:
        _log.warning(
            "resume_metrics_unreadable",
            detail=f"{before.metrics_problem}: the earlier epochs are read back from Kasmina's journal",
        )


def resume_notes(args: StartArgs, written: str | None) -> None:
    """A resume's warnings: another version wrote the run (``written``: the version that did), its secret is short."""
    if written != esper_version():
        # Once, so the user knows which rules the rest of the run is trained under.
        _log.warning(
            "resume_by_other_version",
            written_by=written or "an earlier version (its checkpoints do not say which)",
            now=esper_version(),
            detail="the run continues under this version's rules",
        )
    if short_secret(args.key):
        # Taken, not refused: the run's journal is signed with it, and no other secret can finish the run.
        _log.warning(
            "run_secret_short",
            env=args.key.env,
            secret_bytes=len(args.key.secret),
            detail=f"a new run needs at least {MIN_SECRET_BYTES} bytes; this run goes on with the one it started with",
        )


async def renumber_metrics(metrics: Path) -> None:
    """Number a resumed run's metrics CSV's epochs from 1 (renumber_from_1), saying so in the log when it changed."""
    renumbered, dropped = await anyio.to_thread.run_sync(renumber_from_1, metrics)
    if renumbered:
        detail = "epochs counted from 1"
        if dropped:
            detail += "; a row repeating the last one's step (written again by an earlier version) removed"
        _log.info("metrics_renumbered", file=str(metrics), rows=renumbered, dropped=dropped, detail=detail)


def growth_figures(
    tally: RunTally,
    metrics: Path,
    baseline: RecordedBaseline | None,
    initial_seed_parameters: int,
    figures: TrainingFigures | None,
) -> GrowthFigures:
    """The summary's growth figures, from the run's tally and the trainer's final ``figures`` (None: it gave none)."""
    # Called once the actors have stopped: every cancel is known and Nissa writes no more rows.
    notes = end_notes(tally.cancelled, metrics, figures.epochs if figures else 0)
    if figures is None:
        return msgspec.structs.replace(with_baseline(tally.figures(0), baseline), end_notes=notes)
    # Growth added what the controller grafted: the initial seeds are part of the host from step 0, as its
    # baseline accuracy is (they stay in the training figures' seed parameters, which the benchmark's static
    # arms count).
    added = max(0, figures.seed_parameters - initial_seed_parameters)
    growth = msgspec.structs.replace(
        with_baseline(tally.figures(added, figures.global_step), baseline), end_notes=notes
    )
    if figures.fossilized_parameters is None:
        return growth
    fossilized = max(0, figures.fossilized_parameters - initial_seed_parameters)
    return msgspec.structs.replace(growth, parameters_fossilized=fossilized)


def nothing_trained(err: ConfigError, directory: Path) -> ConfigError:
    """``err`` refused a new run once its directory held this attempt's config and log alone: say so, and how to go
    on (a new run there reuses it: claim_run_dir)."""
    # The client's message may end with a full stop of its own: ".; nothing" read as a typo.
    return ConfigError(
        f"{str(err).rstrip('.')}; nothing was trained: run again with --run-dir {shlex.quote(str(directory))} (a new"
        " run may reuse it) or remove it"
    )


async def prepare_run_dir(args: StartArgs, *, resume: bool) -> str:
    """Write a claimed run directory's files before logging starts (a new run's config and data record, the run's
    key) and return the run's id (a resume's is read back from its log when the start's checks did not find it)."""
    resolved, directory, run_id, key = args.config, args.directory, args.run_id, args.key
    if run_id is None:
        earlier: str = await anyio.to_thread.run_sync(previous_run_id, directory)
        run_id = resolved.run_id or earlier
    if not resume:
        await anyio.to_thread.run_sync(write_run_config, directory, dump_config(resolved))
        await anyio.to_thread.run_sync(record_data, directory, resolved.tolaria, args.data)
    # Before the first command is signed: a resume verifies the journaled commands with this key.
    await anyio.to_thread.run_sync(keep_run_key, directory, key)
    return run_id


def start_logging(args: StartArgs, run_id: str, *, console: bool | None, progress: TextIO | None) -> LoggingHandle:
    """Configure the process's logging for the run (``console`` None: the config's ``logging.console`` says)."""
    resolved, directory = args.config, args.directory
    return configure_logging(
        directory,
        level=resolved.logging.level,
        console=resolved.logging.console if console is None else console,
        json_file=resolved.logging.json_file,
        console_level=console_level(resolved.logging.console_level),
        # The progress lines show the telemetry events that change the run, readably; the rest stay in the file.
        console_omit=("telemetry_event",) if progress is not None else (),
        console_lines=LOG_LINES if progress is not None else None,
        run_id=run_id,
    )


def restore_process(rngs: GlobalRngs, matmul: Float32Matmul) -> None:
    """Give the process back the global RNGs and matmul precision it had before the run."""
    rngs.restore()
    matmul.restore()
