"""The user's data file's SHA-256, recorded when a run starts and checked by ``--resume`` (same config, same data)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Final

import msgspec

from esper.runtime.atomic_write import atomic_write_bytes
from esper.runtime.errors import ConfigError

if TYPE_CHECKING:
    from schemas.config import TolariaConfig

DATA_RECORD: Final = "data.json"
_CHUNK: Final = 1 << 20


class DataRecord(msgspec.Struct, frozen=True, forbid_unknown_fields=False):
    """What a run trained on, beyond its config: the npz file's digest (the built-in data sets are generated from
    the config alone)."""

    npz_path: str
    npz_sha256: str


def data_record(config: TolariaConfig) -> DataRecord | None:
    """The record of ``config``'s data (None for the built-in data sets). Blocking: reads the whole file.

    Raises:
        OSError: the file cannot be read.
    """
    if config.dataset != "npz" or config.npz_path is None:
        return None
    digest = hashlib.sha256()
    with Path(config.npz_path).expanduser().open("rb") as file:
        while chunk := file.read(_CHUNK):
            digest.update(chunk)
    return DataRecord(npz_path=str(config.npz_path), npz_sha256=digest.hexdigest())


def record_data(directory: Path, config: TolariaConfig) -> None:
    """Write ``data.json`` for a new run (nothing for the built-in data sets). Blocking.

    Raises:
        ConfigError: the record cannot be written.
    """
    record = data_record(config)
    if record is None:
        return
    try:
        atomic_write_bytes(directory / DATA_RECORD, msgspec.json.encode(record), shared=True)
    except OSError as err:
        raise ConfigError(f"run directory {directory}: cannot write there: {err.strerror or err}") from err


def check_same_data(directory: Path, config: TolariaConfig, *, where: str | None = None) -> None:
    """Refuse a resume (or a baseline: ``where`` names the key and path) whose npz file is not the one the run in
    ``directory`` trained on (same path or not: the bytes count). A run without a record (the built-in data sets)
    passes. Blocking: hashes the file.

    Raises:
        ConfigError: one line naming the file and both digests' prefixes, or the record that cannot be read.
    """
    path = directory / DATA_RECORD
    try:
        recorded = msgspec.json.decode(path.read_bytes(), type=DataRecord)
    except FileNotFoundError as err:
        if config.dataset != "npz":
            return  # the built-in data sets are made from the config alone: nothing is recorded
        raise ConfigError(
            f"{where or f'--resume {directory}'}: {path} is missing; it records the npz data the run trained on,"
            " which this run must match"
        ) from err
    except (OSError, msgspec.DecodeError) as err:
        # Damaged, it would have let a run continue on other data unnoticed.
        raise ConfigError(
            f"{where or f'--resume {directory}'}: {path} cannot be read ({err}); it records the data the run trained"
            " on, which this run must match"
        ) from err
    now = data_record(config)
    if now is None or now.npz_sha256 != recorded.npz_sha256:
        found = "no npz file" if now is None else f"SHA-256 {now.npz_sha256[:12]}..."
        purpose = "a resume continues the same training on the same data"
        if where is not None:
            purpose = "a baseline must train on the same data"
        raise ConfigError(
            f"{where or f'--resume {directory}'}: the run trained on {recorded.npz_path}"
            f" (SHA-256 {recorded.npz_sha256[:12]}...), and tolaria's data here has {found}; {purpose}"
        )
