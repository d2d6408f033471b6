"""What Urza's store hands out, and the check that an artifact id is a SHA-256.

Catalogue rows, blueprint standing, statistics, integrity reports and loaded artifacts; an artifact id is checked
because it becomes a file name."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, final

from actors.urza.artifact import ArtifactMetadata
from schemas.base import Record

if TYPE_CHECKING:
    import torch

ArtifactStatus = Literal["ready", "quarantined", "failed"]
BlueprintState = Literal["ok", "failed", "quarantined"]

_SHA_RE = re.compile(r"^[0-9a-f]{64}$")


class ArtifactEntry(Record, frozen=True):
    """One catalogue row: an artifact's address, status and metadata. Times are wall-clock seconds (epoch)."""

    sha256: str
    blueprint_id: str
    signature_key: str
    size_bytes: int
    status: ArtifactStatus
    reason: str
    created_at: float
    updated_at: float
    metadata: ArtifactMetadata


class BlueprintStatus(Record, frozen=True):
    """A blueprint's standing in the catalogue; ``failed`` or ``quarantined`` stops all its artifacts being served."""

    blueprint_id: str
    state: BlueprintState
    reason: str
    updated_at: float


class StoreStatistics(Record, frozen=True):
    """Counters of one store object (this process only). Returned by statistics(), which never blocks on I/O.

    ``puts_new`` counts puts that inserted a row or repaired a quarantined one; the rest found it already there.
    """

    puts: int
    puts_new: int
    loads: int
    integrity_failures: int
    temp_files_removed: int


class IntegrityReport(Record, frozen=True):
    """What check_integrity() found: rows checked, and artifact ids whose blob is missing or corrupt."""

    checked: int
    ok: int
    missing: tuple[str, ...]
    corrupt: tuple[str, ...]
    orphan_blobs: tuple[str, ...]

    @property
    def clean(self) -> bool:
        return not self.missing and not self.corrupt


@final
@dataclass(frozen=True, slots=True)
class LoadedArtifact:
    """A verified artifact: its catalogue entry and its CPU tensors (state dict)."""

    entry: ArtifactEntry
    tensors: dict[str, torch.Tensor]

    @property
    def metadata(self) -> ArtifactMetadata:
        return self.entry.metadata


def is_sha(text: str) -> bool:
    """Whether ``text`` is a SHA-256 as 64 lower-case hex characters."""
    return _SHA_RE.match(text) is not None


def check_sha(artifact: str) -> str:
    """Return ``artifact`` if it is 64 lower-case hex characters (it becomes a file name: no path tricks).

    Raises:
        ValueError: it is not.
    """
    if not is_sha(artifact):
        raise ValueError(f"artifact id must be a SHA-256 as 64 lower-case hex characters, got {artifact!r}")
    return artifact
