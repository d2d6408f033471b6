"""JSON for controller states that gives non-finite floats back exactly (msgspec's JSON writes NaN and inf as null).

A NaN or infinite float is written as the string ``"nan"``, ``"inf"`` or ``"-inf"``; the decoder reads in msgspec's
lax mode, which turns such a string in a float field back into the float (and leaves string fields alone). A state
without non-finite floats encodes to the same bytes as plain msgspec JSON, and null, as older files wrote a NaN,
still decodes to None in an optional field.
"""

from __future__ import annotations

import math
from typing import TypeVar

import msgspec

__all__ = ["decoder", "encode"]

_ENCODER = msgspec.json.Encoder()
T = TypeVar("T")


def encode(value: object) -> bytes:
    """``value`` (a msgspec Struct or builtins) as JSON, its non-finite floats spelled as strings."""
    return _ENCODER.encode(_spell(msgspec.to_builtins(value)))


def decoder(kind: type[T]) -> msgspec.json.Decoder[T]:
    """A decoder of ``kind`` that reads what ``encode`` wrote."""
    return msgspec.json.Decoder(kind, strict=False)


def _spell(value: object) -> object:
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {key: _spell(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_spell(item) for item in value]
    return value
