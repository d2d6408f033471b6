"""The run config as TOML data: the value type, and rendering a table or a value as TOML text."""

from __future__ import annotations

import datetime
import json
import math
import re
from typing import TYPE_CHECKING, TypeAlias

import msgspec

if TYPE_CHECKING:
    from schemas.config import RunConfig

TomlValue: TypeAlias = (
    str
    | int
    | float
    | bool
    | datetime.datetime
    | datetime.date
    | datetime.time
    | list["TomlValue"]
    | dict[str, "TomlValue"]
)
"""Any value a TOML document can hold."""

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def to_table(config: RunConfig) -> dict[str, TomlValue]:
    """The config as plain TOML data: msgspec.to_builtins keeps tuples, TOML arrays are lists."""
    table = plain(msgspec.to_builtins(config))
    assert isinstance(table, dict)
    return table


def plain(value: object) -> TomlValue:
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value  # type: ignore[return-value]  # to_builtins yields only TOML scalars here (and None)


def without_none(table: dict[str, TomlValue]) -> dict[str, TomlValue]:
    return {k: without_none(v) if isinstance(v, dict) else v for k, v in table.items() if v is not None}


def emit_table(lines: list[str], path: tuple[str, ...], table: dict[str, TomlValue]) -> None:
    if path:
        lines.extend(("", f"[{'.'.join(_format_key(p) for p in path)}]"))
    for key, value in table.items():
        if not isinstance(value, dict):
            lines.append(f"{_format_key(key)} = {format_value(value)}")
    for key, value in table.items():
        if isinstance(value, dict):
            emit_table(lines, (*path, key), value)


def _format_key(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) else format_string(key)


def format_value(value: TomlValue | None) -> str:
    """A value as TOML writes it (also how error messages show the offending value)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return format_string(value)
    if isinstance(value, list):
        return "[" + ", ".join(format_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_format_key(k)} = {format_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    return repr(value)  # not a TOML value (a RunConfig built in code holding None): shown as Python would


def format_string(value: str) -> str:
    # json.dumps escapes are valid TOML basic-string escapes, but it leaves DEL raw and TOML forbids it.
    return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
