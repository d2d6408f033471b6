"""How Urza's catalogue rows are read, whatever rot or an edit left in them.

Text that is not UTF-8, columns of the wrong type, a row that does not match its own metadata or its blob (any may have
rotted or been edited: SQLite enforces none of it)."""

from __future__ import annotations

from typing import TypeVar, final

import msgspec

from actors.urza.artifact import ArtifactFormatError, ArtifactMetadata, sha256_hex
from actors.urza.records import ArtifactEntry, ArtifactStatus, BlueprintState
from schemas.constraints import NonNegInt, Sha256Hex

COLUMN_NAMES = (
    "sha256",
    "blueprint_id",
    "signature_key",
    "size_bytes",
    "metadata",
    "status",
    "reason",
    "created_at",
    "updated_at",
)
"""The artifacts table's columns, in the order every query selects them."""

_metadata_decoder = msgspec.json.Decoder(ArtifactMetadata)


@final
class NotText:
    """A TEXT value whose bytes are not UTF-8 (a flipped bit): SQLite's default decoding raised OperationalError
    from ``fetchall``, failing the whole query, so every read of the catalogue failed instead of this one row."""

    __slots__ = ("bad_at", "raw")

    def __init__(self, raw: bytes, bad_at: int) -> None:
        self.raw = raw
        self.bad_at = bad_at

    def __repr__(self) -> str:
        around = self.raw[max(0, self.bad_at - 24) : self.bad_at + 8]
        return f"byte {self.bad_at} of {len(self.raw)} is not UTF-8, in {around!r}"


def text_or_marker(raw: bytes) -> str | NotText:
    """The catalogue connection's text factory: the text, or a NotText marker a row check then names."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        return NotText(raw, err.start)


RowT = TypeVar("RowT", bound=msgspec.Struct)


class ArtifactRow(msgspec.Struct, frozen=True):
    """An artifacts row's columns as this store writes them; any may have rotted (or been edited) since."""

    sha256: Sha256Hex
    blueprint_id: str
    signature_key: str
    size_bytes: NonNegInt
    metadata: str
    status: ArtifactStatus
    reason: str
    created_at: float
    updated_at: float


class StandingRow(msgspec.Struct, frozen=True):
    """A blueprints row's columns, as ArtifactRow."""

    state: BlueprintState
    reason: str
    updated_at: float


def checked_row(kind: type[RowT], columns: tuple[str, ...], row: tuple[object, ...]) -> RowT:
    """``row``'s values as ``kind``, each column checked for its type.

    Raises:
        ValueError: a column is not UTF-8 text or not of its type, naming the column.
    """
    for name, value in zip(columns, row, strict=True):
        if isinstance(value, NotText):
            raise ValueError(f"column {name}: {value!r}")
    try:
        return msgspec.convert(dict(zip(columns, row, strict=True)), kind)
    except msgspec.ValidationError as err:
        raise ValueError(str(err)) from err


def entry_from_row(row: tuple[object, ...]) -> ArtifactEntry:
    """An artifacts row (``_COLUMNS``) as an entry, every column checked: any text may have a flipped bit, any column
    hold another type (SQLite does not enforce them).

    Raises:
        ArtifactFormatError: the row is damaged (its subject is the SHA-256, or the raw key when that is damaged).
    """
    name = row[0] if isinstance(row[0], str) else repr(row[0])
    try:
        checked = checked_row(ArtifactRow, COLUMN_NAMES, row)
    except ValueError as err:
        raise ArtifactFormatError(name, f"artifact {name}: catalogue row is damaged: {err}") from err
    sha = checked.sha256
    try:
        metadata = _metadata_decoder.decode(checked.metadata)
    except (msgspec.ValidationError, msgspec.DecodeError) as err:
        raise ArtifactFormatError(sha, f"artifact {sha}: catalogue metadata does not decode: {err}") from err
    if (metadata.blueprint_id, metadata.signature_key) != (checked.blueprint_id, checked.signature_key):
        raise ArtifactFormatError(
            sha,
            f"artifact {sha}: catalogue row is damaged: blueprint {checked.blueprint_id!r} and signature "
            f"{checked.signature_key!r}, its metadata says {metadata.blueprint_id!r} and {metadata.signature_key!r}",
        )
    return ArtifactEntry(
        sha256=sha,
        blueprint_id=checked.blueprint_id,
        signature_key=checked.signature_key,
        size_bytes=checked.size_bytes,
        status=checked.status,
        reason=checked.reason,
        created_at=checked.created_at,
        updated_at=checked.updated_at,
        metadata=metadata,
    )


def blob_problem(data: bytes, entry: ArtifactEntry) -> str:
    """What is wrong with a blob's bytes against its catalogue row ("" if nothing). Bytes that hash to the row's
    SHA-256 are the artifact whatever else the row says (a wrong size there is the row's damage, not the blob's)."""
    if sha256_hex(data) == entry.sha256:
        return ""
    if len(data) < entry.size_bytes:
        return f"truncated: {len(data)} of {entry.size_bytes} bytes"
    if len(data) != entry.size_bytes:
        return f"size {len(data)} bytes, catalogued {entry.size_bytes}"
    return "sha256 mismatch"


def row_mismatch(entry: ArtifactEntry, size: int, metadata: ArtifactMetadata) -> str:
    """How a row differs from its verified blob ("" if it does not): a row pointing at another blueprint's blob
    would have its weights loaded into the wrong builder."""
    if size != entry.size_bytes:
        return f"catalogued {entry.size_bytes} bytes, the blob has {size}"
    if metadata != entry.metadata:
        return (
            f"catalogued as {entry.blueprint_id!r} ({entry.metadata.family}, {entry.signature_key}), "
            f"the blob is {metadata.blueprint_id!r} ({metadata.family}, {metadata.signature_key})"
        )
    return ""
