"""What a run trained on (an npz file's SHA-256, a built-in data set's loaded splits').

Recorded when a run starts and checked by ``--resume`` and a baseline (same config, same data)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Final

import msgspec

from esper.runtime.atomic_write import atomic_write_bytes
from esper.runtime.errors import ConfigError

if TYPE_CHECKING:
    from esper.nn.data import DataSplits
    from schemas.config import TolariaConfig

DATA_RECORD: Final = "data.json"
_CHUNK: Final = 1 << 20


class DataRecord(msgspec.Struct, frozen=True, forbid_unknown_fields=False, omit_defaults=True):
    """What a run trained on, beyond its config: the npz file's path and digest, or, for a built-in data set (made
    from the config, but kept in a data cache anyone who can write it can change), the digest of the splits it loaded
    (``splits_sha256``). A record an earlier version wrote has only the npz fields; it wrote none for a built-in set.
    An npz file's record also keeps one sample's shape and the class count (``input_shape``, ``num_classes``): the
    model is rebuilt from them (esper.load_model) once the file is moved or changed; earlier versions kept neither."""

    npz_path: str | None = None
    npz_sha256: str | None = None
    input_shape: tuple[int, ...] | None = None
    num_classes: int | None = None
    dataset: str | None = None
    splits_sha256: str | None = None


def splits_sha256(data: DataSplits) -> str:
    """The SHA-256 of every split's features and labels as loaded (dtype, shape and bytes). Blocking (CPU)."""
    digest = hashlib.sha256()
    for split, pair in (("train", data.train), ("val", data.val), ("test", data.test)):
        for part, tensor in (("x", pair.x), ("y", pair.y)):
            array = tensor.detach().cpu().contiguous().numpy()
            digest.update(f"{split}.{part}:{array.dtype.str}:{array.shape}\n".encode())
            digest.update(array.data)  # the buffer itself, not a copy of it
    return digest.hexdigest()


def data_record(config: TolariaConfig, data: DataSplits | None = None) -> DataRecord | None:
    """The record of ``config``'s data: an npz file's digest (and, given its loaded splits, ``data``, their sample
    shape and class count); for a built-in data set the digest of ``data``, its loaded splits (None without them).
    Blocking: reads the whole npz file, or hashes the splits.

    Raises:
        OSError: the file cannot be read.
    """
    if config.dataset != "npz":
        return None if data is None else DataRecord(dataset=config.dataset, splits_sha256=splits_sha256(data))
    if config.npz_path is None:
        return None
    digest = hashlib.sha256()
    with Path(config.npz_path).expanduser().open("rb") as file:
        while chunk := file.read(_CHUNK):
            digest.update(chunk)
    if data is None:
        return DataRecord(npz_path=str(config.npz_path), npz_sha256=digest.hexdigest())
    return DataRecord(
        npz_path=str(config.npz_path),
        npz_sha256=digest.hexdigest(),
        input_shape=data.input_shape,
        num_classes=data.num_classes,
    )


def record_data(directory: Path, config: TolariaConfig, data: DataSplits | None = None) -> None:
    """Write ``data.json`` for a new run (a built-in data set's needs its loaded splits, ``data``; without them
    nothing is written). Blocking.

    Raises:
        ConfigError: the record cannot be written.
    """
    record = data_record(config, data)
    if record is None:
        return
    try:
        atomic_write_bytes(directory / DATA_RECORD, msgspec.json.encode(record), shared=True)
    except OSError as err:
        raise ConfigError(f"run directory {directory}: cannot write there: {err.strerror or err}") from err


def check_same_data(
    directory: Path, config: TolariaConfig, *, where: str | None = None, data: DataSplits | None = None
) -> None:
    """Refuse a resume (or a baseline: ``where`` names the key and path) whose data is not the one the run in
    ``directory`` trained on: an npz file's bytes (same path or not), or a built-in data set's splits as loaded here
    (``data``: a data cache changed since, by hand or by someone who can write it, trained on silently). A run without
    a record of a built-in data set (one an earlier version wrote) passes, as does one when ``data`` is None.
    Blocking: hashes the file or the splits.

    Raises:
        ConfigError: one line naming the data and both digests' prefixes, or the record that cannot be read.
    """
    path = directory / DATA_RECORD
    caller = where or f"--resume {directory}"
    purpose = "a baseline must train on the same data" if where is not None else None
    purpose = purpose or "a resume continues the same training on the same data"
    try:
        recorded = msgspec.json.decode(path.read_bytes(), type=DataRecord)
    except FileNotFoundError as err:
        if config.dataset != "npz":
            return  # an earlier version recorded nothing of a built-in data set
        raise ConfigError(
            f"{caller}: {path} is missing; it records the npz data the run trained on, which this run must match"
        ) from err
    except (OSError, msgspec.DecodeError) as err:
        # Damaged, it would have let a run continue on other data unnoticed.
        raise ConfigError(
            f"{caller}: {path} cannot be read ({err}); it records the data the run trained on, which this run must"
            " match"
        ) from err
    if recorded.npz_sha256 is None:
        _check_same_splits(caller, purpose, recorded, config, data)
        return
    now = data_record(config)
    now_sha256 = None if now is None else now.npz_sha256
    if now_sha256 != recorded.npz_sha256:
        if now is None:
            found = f"tolaria.dataset = {config.dataset!r}"
        elif now.npz_path == recorded.npz_path:
            found = f"tolaria.npz_path = {str(now.npz_path)!r} is SHA-256 {str(now_sha256)[:12]}... now"
        else:
            found = f"tolaria.npz_path = {str(now.npz_path)!r} is SHA-256 {str(now_sha256)[:12]}..."
        raise ConfigError(
            f"{caller}: the run trained on {recorded.npz_path}"
            f" (SHA-256 {recorded.npz_sha256[:12]}...), and {found}; {purpose}"
        )


def _check_same_splits(
    caller: str, purpose: str, recorded: DataRecord, config: TolariaConfig, data: DataSplits | None
) -> None:
    """Refuse a built-in data set whose loaded splits are not the recorded ones (see check_same_data)."""
    if recorded.splits_sha256 is None or data is None:
        return
    if config.dataset != recorded.dataset:
        raise ConfigError(
            f"{caller}: the run trained on the {recorded.dataset} data set, and tolaria's data here is"
            f" {config.dataset}; {purpose}"
        )
    now = splits_sha256(data)
    if now != recorded.splits_sha256:
        cache = f" (was {config.data_cache_dir} changed?)" if config.data_cache_dir else ""
        raise ConfigError(
            f"{caller}: the run trained on {recorded.dataset} data of SHA-256 {recorded.splits_sha256[:12]}..., and"
            f" the data loaded here has SHA-256 {now[:12]}...{cache}; {purpose}"
        )
