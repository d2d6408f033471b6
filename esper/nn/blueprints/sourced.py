"""A seed module together with where it came from: a verified Urza artifact (its SHA-256) or Karn's catalogue."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, final

if TYPE_CHECKING:
    from torch import nn


@final
@dataclass(frozen=True, slots=True)
class SourcedModule:
    """A fresh seed module and its provenance.

    Attributes:
        module: the module, owned by the receiver.
        artifact_sha256: the SHA-256 of the Urza artifact it was loaded from (verified before loading); None when it
            was built from Karn's catalogue by the blueprint's own builder.
    """

    module: nn.Module
    artifact_sha256: str | None = None
