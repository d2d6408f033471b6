"""Constrained scalar types shared by messages and config: checked by msgspec at decode time, never on construction."""

from __future__ import annotations

from typing import Annotated

from msgspec import Meta

INT64_MAX = 2**63 - 1
"""The largest integer any field takes: beyond it a value overflowed torch, deques and the wire encoders at run time."""
NonNegInt = Annotated[int, Meta(ge=0, le=INT64_MAX)]
PosInt = Annotated[int, Meta(ge=1, le=INT64_MAX)]
NonNegFloat = Annotated[float, Meta(ge=0.0)]
PosFloat = Annotated[float, Meta(gt=0.0)]
UnitFloat = Annotated[float, Meta(ge=0.0, le=1.0)]
"""A fraction or probability in [0, 1] (alpha, risk, a schedule window bound)."""

Sha256Hex = Annotated[str, Meta(pattern=r"^[0-9a-f]{64}$")]
"""A SHA-256 digest as 64 lower-case hex characters."""

UuidStr = Annotated[str, Meta(pattern=r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")]
"""A canonical lower-case UUID string (command ids double as replay nonces)."""

SemVer = Annotated[
    str, Meta(pattern=r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-[0-9A-Za-z.-]+)?(?:\+[0-9A-Za-z.-]+)?$")
]
"""A semantic version, e.g. ``1.4.0`` or ``2.0.0-rc.1``."""

NonEmptyStr = Annotated[str, Meta(min_length=1)]
