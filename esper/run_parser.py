"""The command line of ``python -m esper.run`` and its config's first check: torch-free, so answered at once."""

from __future__ import annotations

import argparse
import stat
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from esper.cli_process import say
from esper.config import load_config
from esper.run_key import env_key
from esper.runtime.errors import ConfigError

if TYPE_CHECKING:
    import os

    from schemas.config import RunConfig

EXIT_OK = 0
EXIT_CONFIG_ERROR = 2


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


def is_run_config(config: str | os.PathLike[str], resume: str | os.PathLike[str] | None) -> bool:
    """Whether ``config`` is the config.toml of the run ``resume`` continues (the file its end prints to resume with):
    written by the version that ran it, it is read with a run directory's leniency (load_config's ``written``), so
    a key that version wrote and this one no longer acts on does not refuse the resume it was told to use."""
    if resume is None:
        return False
    try:
        return Path(config).resolve() == (Path(resume) / "config.toml").resolve()
    except (OSError, RuntimeError):  # a symlink loop: not the run's file, and load_config says what is wrong with it
        return False


def readable_twice(config: Path) -> bool:
    """Whether reading ``config`` again gives the same bytes: a regular file (or none: its check says so), not a pipe,
    FIFO or device."""
    try:
        return stat.S_ISREG(config.stat().st_mode)
    except OSError:
        return True


def checked_config(args: argparse.Namespace) -> RunConfig | int:
    """The config the parsed command line names, overrides applied, its values and the secret's variable checked; or
    EXIT_CONFIG_ERROR, the refusal's one line said on stderr. Reads the config file only."""
    try:
        config = load_config(args.config, args.overrides, written=is_run_config(args.config, args.resume))
        env_key(config, resuming=args.resume is not None)
    except ConfigError as err:
        say(sys.stderr, f"{err}\n")
        return EXIT_CONFIG_ERROR
    return config
