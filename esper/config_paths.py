"""The config keys that name files or directories, made absolute from the working directory the run starts in."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Final, cast, overload

import msgspec

from esper.runtime.errors import ConfigError

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


# The one key with a fallback for a "~" that cannot be expanded: the trainer generates the data instead of caching it.
_HOME_OPTIONAL: Final = "tolaria.data_cache_dir"


@overload
def absolute_path(key: str, value: str) -> str: ...
@overload
def absolute_path(key: str, value: None) -> None: ...
def absolute_path(key: str, value: str | None) -> str | None:
    """``value`` of config key ``key`` absolute (from the working directory, ``~`` expanded); None and "" (``tolaria.
    data_cache_dir``'s "no cache") as they are, and an absolute path exactly as written.

    With no home directory to expand a ``~`` to (HOME unset and no passwd entry, as in some containers), the
    data_cache_dir is left as written (the trainer then generates the data instead of caching it).

    Raises:
        ConfigError: any other key's ``~`` cannot be expanded.
    """
    if not value or Path(value).is_absolute():
        return value
    try:
        return str(Path(value).expanduser().absolute())
    except RuntimeError as err:  # pathlib's "Could not determine home directory."
        if key == _HOME_OPTIONAL:
            return value
        raise ConfigError(
            f"{key} = {value!r}: no home directory to expand '~' to ({err}); give the path without '~'"
        ) from err


def absolute_paths(config: RunConfig) -> RunConfig:
    """``config`` with each of PATH_KEYS absolute (absolute_path), so that the run's config.toml, and the ``--resume``
    command it prints, mean the same files from any directory (a resume from elsewhere refused a relative
    ``nissa.baseline_run`` as "not a run directory", and silently opened a second, empty ``urza.root``). Reads the
    working directory; touches no file.

    Raises:
        ConfigError: a key other than ``tolaria.data_cache_dir`` starts with a ``~`` there is no home directory for.
    """
    made: msgspec.Struct = config
    for key in PATH_KEYS:
        made = _with_absolute(made, key.split("."), key)
    return cast("RunConfig", made)


def _with_absolute(struct: msgspec.Struct, path: list[str], key: str) -> msgspec.Struct:
    """``struct`` with the field at ``path`` (dotted ``key``'s parts) made absolute."""
    head, *rest = path
    value = getattr(struct, head)
    made = _with_absolute(value, rest, key) if rest else absolute_path(key, value)
    return msgspec.structs.replace(struct, **{head: made})
