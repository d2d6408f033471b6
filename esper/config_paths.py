"""The config keys that name files or directories, made absolute from the working directory the run starts in."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Final, overload

import msgspec

if TYPE_CHECKING:
    from schemas.config import RunConfig

PATH_KEYS: Final = (
    "runs_dir",
    "tolaria.npz_path",
    "tolaria.data_cache_dir",
    "tamiyo.gnn_checkpoint",
    "urza.root",
    "nissa.baseline_run",
)
"""Every key read as a path relative to the working directory (``~`` expanded). Not the run's own file names
(``nissa.metrics_csv``, ``nissa.summary_json``, ``logging.json_file``): those are plain names inside the run
directory."""


@overload
def absolute_path(value: str) -> str: ...
@overload
def absolute_path(value: None) -> None: ...
def absolute_path(value: str | None) -> str | None:
    """``value`` absolute (from the working directory, ``~`` expanded); None and "" (``tolaria.data_cache_dir``'s "no
    cache") as they are, and an absolute path exactly as written."""
    if not value or Path(value).is_absolute():
        return value
    return str(Path(value).expanduser().absolute())


def absolute_paths(config: RunConfig) -> RunConfig:
    """``config`` with each of PATH_KEYS absolute (absolute_path), so that the run's config.toml, and the ``--resume``
    command it prints, mean the same files from any directory (a resume from elsewhere refused a relative
    ``nissa.baseline_run`` as "not a run directory", and silently opened a second, empty ``urza.root``). Reads the
    working directory; touches no file."""
    tolaria, replace = config.tolaria, msgspec.structs.replace
    return replace(
        config,
        runs_dir=absolute_path(config.runs_dir),
        tolaria=replace(
            tolaria, npz_path=absolute_path(tolaria.npz_path), data_cache_dir=absolute_path(tolaria.data_cache_dir)
        ),
        tamiyo=replace(config.tamiyo, gnn_checkpoint=absolute_path(config.tamiyo.gnn_checkpoint)),
        urza=replace(config.urza, root=absolute_path(config.urza.root)),
        nissa=replace(config.nissa, baseline_run=absolute_path(config.nissa.baseline_run)),
    )
