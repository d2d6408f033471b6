"""What a run is given, checked before its directory is claimed: the command line, the config, a resume's refusals."""

from __future__ import annotations

import datetime as dt
import functools
import io
import os
import re
import secrets
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TextIO, final

import anyio

from actors.kasmina.journal import JOURNAL_FILENAME, JournalBoundary, iter_journal
from actors.nissa.prometheus import check_bindable
from actors.tolaria.build import batch_plan, check_config
from actors.tolaria.checkpoints import CheckpointError
from esper.baseline import RecordedBaseline, load_baseline
from esper.cli_process import say
from esper.config import apply_overrides, load_config, parse_override, validate_config
from esper.config_paths import absolute_paths
from esper.data_fingerprint import check_same_data
from esper.resume import check_resumable, check_resume_files, threads_as_trained
from esper.resume_checkpoints import check_checkpoint_run
from esper.run_dir import check_not_in_use, check_not_the_run_config, check_run_dir_files, earlier_run_files
from esper.run_files import run_files
from esper.run_history import already_trained, previous_run_id
from esper.run_key import MIN_SECRET_BYTES, RunKey, env_key, new_run_key, read_run_key, short_secret
from esper.run_parser import EXIT_CONFIG_ERROR, EXIT_OK, checked_config, is_run_config
from esper.runtime.bus_redis import redacted
from esper.runtime.errors import ConfigError
from esper.start_checks import check_default_dtype, check_start
from esper.tamiyo_resume import recorded_policy_version
from schemas.config import RunConfig

if TYPE_CHECKING:
    import argparse
    from collections.abc import Sequence

    from esper.nn.data import DataSplits
    from schemas.config import TolariaConfig


def new_run_id(now: dt.datetime | None = None) -> str:
    """A sortable, unique run id: UTC time to the second plus 8 random hex digits (4 gave a sweep starting 50 runs in
    one second a 2 % chance that one of them was refused: another run held its directory)."""
    moment = now or dt.datetime.now(dt.UTC)
    return f"{moment:%Y%m%d-%H%M%S}-{secrets.token_hex(4)}"


_FLAGS = (("--resume ", "resume="), ("--resume:", "resume:"), ("--run-dir", "run_dir"), ("--set ", "overrides: "))


def in_api_words(message: str) -> str:
    """A refusal the command line words with its flags (--resume DIR, --run-dir, --set KEY=VALUE), in the words of
    ``esper.start``'s parameters, for a caller of the API."""
    for flag, parameter in _FLAGS:
        message = message.replace(flag, parameter)
    return message


_CHECKED_KEY = re.compile(r"([a-z_]+\.[a-z_]+)(?:\[\d+\])? = ")


def _sets(override: str, key: str) -> bool:
    """Whether ``override`` sets the dotted ``key``: as itself, or inside a table it sets (``tolaria={lr=0.01}``
    sets tolaria.lr)."""
    name, value = parse_override(override)
    parts, rest = name.split("."), key.split(".")
    if rest[: len(parts)] != parts:
        return False
    for part in rest[len(parts) :]:
        if not isinstance(value, dict) or part not in value:
            return False
        value = value[part]
    return True


def blamed(err: ConfigError, config: str | Path | RunConfig, overrides: Sequence[str]) -> ConfigError:
    """``err`` (which starts with the ``section.key`` it is about) led by where that value came from: the last
    ``--set`` of the key (or of a table holding it), else the config file; an embedded RunConfig has neither and the
    error is left as it is."""
    text = str(err)
    key = _CHECKED_KEY.match(text)
    if key is None:
        return err
    setter = next((o for o in reversed(overrides) if _sets(o, key.group(1))), None)
    if setter is not None:
        return ConfigError(f"--set {redacted(setter)}: {text}")  # a Redis URL's password stays off the console
    if isinstance(config, str | Path):
        return ConfigError(f"{config}: {text}")
    return err


def console_level(configured: str) -> str:
    """The stderr log level: as configured, or under "auto" warning. The info log stays in events.jsonl; on stderr
    (a terminal, a pipe, a notebook's cell) it would bury the progress lines and warnings: hundreds of lines a
    minute."""
    return "warning" if configured == "auto" else configured


@final
@dataclass(frozen=True, slots=True)
class StartArgs:
    """What ``start`` was given, resolved and checked; the run directory is not claimed yet.

    Attributes:
        config: the run's config, overrides applied and its paths made absolute (config_paths.PATH_KEYS).
        key: the key that signs commands (a resumed run's own, which its journaled commands were verified with).
        baseline: the recorded host-only baseline the config names, if any.
        directory: the run directory, absolute (a relative one from the working directory the run starts in).
        run_id: a new run's id; None for a resume (the resumed run's own, read once the directory is claimed).
        data: the data set the checks loaded, which the run trains on.
    """

    config: RunConfig
    key: RunKey
    baseline: RecordedBaseline | None
    directory: Path
    run_id: str | None
    data: DataSplits


def _journaled_a_command(directory: Path) -> bool:
    """Whether Kasmina's journal in ``directory`` holds a command (each one verified with the run's key before this).
    Blocking: reads the journal."""
    journal = directory / "checkpoints" / JOURNAL_FILENAME
    return any(isinstance(entry, JournalBoundary) and entry.command is not None for entry in iter_journal(journal))


def checked_command_line(args: argparse.Namespace) -> RunConfig | int:
    """The config the command line names, checked as far as it can be before the event loop starts; or the exit
    status to leave with, its one line said on stderr (a refusal, or a resume of a run that trained its epochs and
    wrote its summary)."""
    config = checked_config(args)
    if isinstance(config, int):
        return config
    if args.resume is None and args.run_dir is not None:
        try:
            check_not_the_run_config(args.config, args.run_dir)
        except ConfigError as err:
            say(sys.stderr, f"{err}\n")
            return EXIT_CONFIG_ERROR
    if args.resume is not None:
        try:
            check_resume_file_kinds(args.resume)
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
    return config


def check_progress(progress: object) -> None:
    """Refuse a ``progress`` that cannot take the progress lines, before anything is set up or written.

    Raises:
        TypeError: ``progress`` is not a text stream (no write() and flush(), or a binary one).
        ValueError: ``progress`` is a closed stream.
    """
    if progress is None:
        return
    text = callable(getattr(progress, "write", None)) and callable(getattr(progress, "flush", None))
    if not text or isinstance(progress, io.BufferedIOBase | io.RawIOBase):
        raise TypeError(
            f"progress: expected a text stream (sys.stderr, a file opened for text) or None, got {progress!r}"
        )
    if getattr(progress, "closed", False) is True:
        raise ValueError(f"progress: {progress!r} is closed")


async def checked_start(
    config: str | Path | RunConfig,
    run_dir: str | Path | None,
    overrides: Sequence[str] | None,
    resume: str | Path | None,
    *,
    prechecked: bool = False,
    progress: TextIO | None = None,
) -> StartArgs:
    """The arguments of ``start`` resolved and checked, each refusal in the command line's words; writes nothing.
    ``prechecked``: the command line's checks (checked_command_line) already found the resumed run's checkpoints its
    own and not yet trained through, which hashes every checkpoint: not done twice. ``progress``: where a line says
    a data set is being generated (minutes for a large one, before the run's console starts); None: nowhere.

    Raises:
        ConfigError: the config, an override, the host model or data, or the run to resume cannot be used.
        TypeError: an argument of the wrong type.
    """
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
        written = is_run_config(config, resume)
        load = functools.partial(load_config, config, tuple(overrides or ()), written=written)
        resolved = await anyio.to_thread.run_sync(load)
    try:
        resolved = absolute_paths(resolved)
    except ConfigError as err:
        raise blamed(err, config, overrides or ()) from err.__cause__  # the refusal once in a traceback
    key = env_key(resolved, resuming=resume is not None)
    check_default_dtype()
    try:
        announce = functools.partial(_say_line, progress) if progress is not None else None
        check = functools.partial(check_config, resolved.tolaria, resolved.kasmina.slot_targets, announce)
        data = await anyio.to_thread.run_sync(check)
        await anyio.to_thread.run_sync(check_start, resolved)
        if resolved.nissa.prometheus_port is not None:
            host, port = resolved.nissa.prometheus_host, resolved.nissa.prometheus_port
            await anyio.to_thread.run_sync(check_bindable, host, port)
    except ConfigError as err:
        check_default_dtype()  # set by the user's model module as check_config imported it: that is the refusal
        cause = err.__cause__
        if resume is not None and str(err).startswith("tamiyo.gnn_checkpoint"):
            err = ConfigError(await anyio.to_thread.run_sync(_with_recorded_weights, str(err), Path(resume)))
        elif resume is not None and re.match(r"tolaria\.npz_path = .*: file not found$", str(err)):
            # The run's written config names the file where it was: a moved data set is named anew with --set.
            err = ConfigError(f"{err} (moved? --set tolaria.npz_path=<its path now>; the resume checks its bytes)")
        raise blamed(err, config, overrides or ()) from cause  # the refusal once in a traceback
    baseline = await anyio.to_thread.run_sync(load_baseline, resolved, data)
    if resume is not None:
        directory = Path(resume)
        await anyio.to_thread.run_sync(_check_resume_dir, directory)
        await anyio.to_thread.run_sync(check_resume_file_kinds, directory)
        await anyio.to_thread.run_sync(check_not_in_use, directory)
        if not await anyio.to_thread.run_sync((directory / "checkpoints").is_dir):
            trained = await anyio.to_thread.run_sync(earlier_run_files, directory)
            if trained:
                # A new run refuses this directory too (it holds a run): the only way out is another directory.
                raise ConfigError(
                    f"--resume {directory}: no checkpoints directory to resume from, though a run trained there"
                    f" ({', '.join(trained)}): nothing can continue it; start a new run with another --run-dir"
                )
            raise ConfigError(
                f"--resume {directory}: no checkpoints directory to resume from (a run stopped while it started"
                f" trains nothing: start it again with --run-dir {shlex.quote(str(directory))})"
            )
        if not prechecked:
            # Before the already-trained notice: another run's checkpoints copied in were "already trained" (exit 0).
            await anyio.to_thread.run_sync(
                lambda: check_checkpoint_run(directory / "checkpoints", previous_run_id(directory))
            )
            # Read-only, before the claim, so a refused resume leaves the directory exactly as it was.
            try:
                finished = await anyio.to_thread.run_sync(already_trained, directory, resolved.tolaria.epochs)
            except CheckpointError as err:
                raise ConfigError(f"--resume {directory}: {err}") from err
            if finished is not None:  # resuming would only rewrite its summary
                raise ConfigError(finished)
        # A run keeps the key it signed its first commands with: one started without the variable kept its own key in
        # the directory, and a variable set since would make its genuine journal read as forged (and the file be
        # deleted when the journal held no command yet).
        stored = await anyio.to_thread.run_sync(read_run_key, directory)
        if stored is not None:
            key = stored
        # Every journaled command is verified with the key now, and a journal that does not verify is refused here,
        # in one line, rather than replayed (a forged command would graft) or dropped (the run would diverge).
        earlier: str = await anyio.to_thread.run_sync(previous_run_id, directory)
        check_files = functools.partial(
            check_resume_files,
            run_id=resolved.run_id or earlier,
            key=key,
            security=resolved.security,
            first_checkpoint_step=first_checkpoint_step(resolved.tolaria, data),
        )
        # The config's check first: a changed security.key_id or secret_env is that key's refusal, not a journal
        # whose signatures "do not match" (blamed on a wrong secret or a forged journal).
        await anyio.to_thread.run_sync(check_resumable, directory, resolved)
        await anyio.to_thread.run_sync(check_files, directory, resolved.nissa.metrics_csv)
        if (
            key is not None
            and short_secret(key)
            and not await anyio.to_thread.run_sync(_journaled_a_command, directory)
        ):
            # Taken on a resume only because the run's commands were signed with it (verified just now): with none
            # signed yet, a proper secret loses nothing, and the short one would sign every command from here.
            try:
                env_key(resolved)
            except ConfigError as err:
                raise ConfigError(
                    f"{err}; this run signed no command yet, so any secret of at least {MIN_SECRET_BYTES} bytes"
                    " resumes it"
                ) from err
        await anyio.to_thread.run_sync(functools.partial(check_same_data, directory, resolved.tolaria, data=data))
        # An earlier version trained an unset thread count on one thread: the resume keeps training on one.
        resolved = await anyio.to_thread.run_sync(threads_as_trained, directory, resolved)
        run_id: str | None = None  # the resumed run's own, read once the directory is claimed
    else:
        run_id = resolved.run_id or new_run_id()
        directory = Path(run_dir) if run_dir is not None else Path(resolved.runs_dir) / run_id
        if not isinstance(config, RunConfig):
            await anyio.to_thread.run_sync(check_not_the_run_config, config, directory)
    # Absolute from here on, for everything the run writes and names: an API caller that changes its working directory
    # while the run goes would have moved a relative one (its checkpoints and summary.json written elsewhere).
    directory = directory.absolute()
    return StartArgs(
        config=resolved, key=key or new_run_key(), baseline=baseline, directory=directory, run_id=run_id, data=data
    )


def _say_line(stream: TextIO, line: str) -> None:
    say(stream, f"{line}\n")


def _with_recorded_weights(message: str, directory: Path) -> str:
    """A refused ``tamiyo.gnn_checkpoint`` of a resume (the file gone, say) with the weights the run decided with, so
    the user knows which file to put back."""
    version = recorded_policy_version(directory)
    if version is None:
        return message
    if version.startswith("file-"):
        sha = version.removeprefix("file-")
        return f"{message}; the run decided with the file whose SHA-256 starts {sha} (policy version {version})"
    return f"{message}; the run decided with policy version {version}, not a file's weights"


def first_checkpoint_step(tolaria: TolariaConfig, data: DataSplits) -> int | None:
    """The step of a run's first periodic checkpoint (None when ``tolaria.checkpoint_every_epochs`` is 0)."""
    every = tolaria.checkpoint_every_epochs
    return every * batch_plan(tolaria, data).num_batches if every > 0 else None


def _check_resume_dir(directory: Path) -> None:
    """Refuse a ``--resume`` path that is no directory: the checkpoints' message would send the user to start a run
    there. Blocking (one stat).

    Raises:
        ConfigError: nothing is at ``directory``, or something other than a directory is.
    """
    if not directory.exists():
        raise ConfigError(f"--resume {directory}: no such run directory (give the directory of the run to resume)")
    if not directory.is_dir():
        raise ConfigError(f"--resume {directory}: not a directory (give the directory of the run to resume)")


def check_resume_file_kinds(directory: Path) -> None:
    """Refuse a run directory where a file the resume reads is a FIFO, a directory or a link, before anything opens
    one (the open of a FIFO would wait forever). Its config.toml is checked before the file names are read from it.
    Read-only and blocking.

    Raises:
        ConfigError: one line naming the file.
    """
    check_run_dir_files(directory)
    check_run_dir_files(directory, run_files(directory))
