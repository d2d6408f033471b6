"""Config errors as a user reads them: unknown keys with a suggestion, and validation errors in one line."""

from __future__ import annotations

import difflib
import re
from typing import TYPE_CHECKING, Final

import msgspec.inspect as mi

from esper.config_toml import format_string, format_value
from esper.runtime.errors import ConfigError
from schemas.config import RunConfig
from schemas.config_types import MAX_SECONDS
from schemas.constraints import INT64_MAX

if TYPE_CHECKING:
    import tomllib
    from collections.abc import Iterable, Sequence

    from esper.config_toml import TomlValue

_PATH_SEGMENT = re.compile(r"\.([^.\[]+)|\[(\d+)\]")
_RULE = re.compile(r"(?P<key>\w+) \((?P<value>[^)]*)\) (?P<rest>.*)", re.DOTALL)
_TOML_ERROR = re.compile(r"^(?P<msg>.*) \(at (?:line (?P<line>\d+), column \d+|end of document)\)$")


def _run_config_info() -> mi.StructType:
    info = mi.type_info(RunConfig)
    assert isinstance(info, mi.StructType)
    return info


RUN_CONFIG_INFO = _run_config_info()


def quote_hint(failing: str, applied: Sequence[tuple[str, str]], data: dict[str, TomlValue]) -> str:
    """For a string key given a number or a boolean on the command line (``--set run_id=123``): how to quote it."""
    segments = error_segments(f" - at `$.{failing}`")
    if not isinstance(_strip_none(_type_at(RUN_CONFIG_INFO, segments)), mi.StrType):
        return ""
    if not any(key == failing for key, _ in applied):
        return ""
    found, value = _value_at(data, segments)
    if not found or isinstance(value, str | dict | list):
        return ""
    quoted = format_string(format_value(value))
    return f" (a string: quote it, --set '{failing}={quoted}')"


def check_keys(table: dict[str, TomlValue], info: mi.StructType, path: tuple[str, ...], source: str) -> None:
    """Refuse unknown keys before msgspec sees them, so the message can list the known ones."""
    fields = {f.encode_name: f.type for f in info.fields}
    for key, value in table.items():
        dotted = ".".join((*path, key))
        if key not in fields:
            close = difflib.get_close_matches(key, list(fields), n=1, cutoff=0.6)
            elsewhere = _sections_with(key) if path or not isinstance(value, dict) else []
            if elsewhere:  # the right key in the wrong table (tolaria.policy): name the table it belongs to
                hint = f"did you mean {' or '.join(elsewhere)}? "
            else:
                hint = f"did you mean {close[0]}? " if close else ""
            if not path and isinstance(value, dict):
                sections = [name for name, t in fields.items() if isinstance(t, mi.StructType)]
                raise ConfigError(f"{source}: {dotted}: unknown section ({hint}known: {', '.join(sections)})")
            raise ConfigError(f"{source}: {dotted}: unknown key ({hint}known keys: {', '.join(fields)})")
        field_type = fields[key]
        if isinstance(field_type, mi.StructType) and isinstance(value, dict):
            check_keys(value, field_type, (*path, key), source)


def _sections_with(key: str) -> list[str]:
    """The dotted names of ``key`` in every section (one level below the top) that has it."""
    found: list[str] = []
    for section in RUN_CONFIG_INFO.fields:
        if isinstance(section.type, mi.StructType):
            if any(f.encode_name == key for f in section.type.fields):
                found.append(f"{section.encode_name}.{key}")
    return found


def translate(message: str, data: dict[str, TomlValue], source: str) -> str:
    """Turn msgspec's "Expected `float`, got `str` - at `$.a.b`" into "source: a.b: expected a number, got "x"."""
    text = message.partition(" - at `$")[0]
    segments = error_segments(message)
    dotted = dotted_path(segments) or "<top level>"
    if not (text.startswith("Expected") or text.startswith("Invalid enum value")):
        return f"{source}: {_cross_field(text, segments) or f'{dotted}: {text}'}"
    info = _type_at(RUN_CONFIG_INFO, segments)
    expected = _describe(info)
    found, value = _value_at(data, segments)
    got = format_value(value) if found else "nothing"
    bounded = _strip_none(info)
    beyond = found and isinstance(value, int) and not isinstance(value, bool) and value > INT64_MAX
    if beyond and isinstance(bounded, mi.IntType) and bounded.le == INT64_MAX:
        expected += f" and at most {INT64_MAX} (2**63 - 1)"
    number = value if isinstance(value, int | float) and not isinstance(value, bool) else None
    if number is not None and isinstance(bounded, mi.FloatType) and bounded.le in _DURATION_LIMITS:
        if number > bounded.le:
            expected += f" and at most {_number(bounded.le)} (about 31 years)"
    return f"{source}: {dotted}: expected {expected}, got {got}"


def _cross_field(text: str, segments: list[str | int]) -> str | None:
    """A table's rule between its keys, ``"warn (0.5) must not exceed veto (0.15)"`` at ``tamiyo``, led by the first key
    and naming each in full (``tamiyo.warn: 0.5 must not exceed tamiyo.veto (0.15)``); None for another message."""
    info = _strip_none(_type_at(RUN_CONFIG_INFO, segments))
    rule = _RULE.fullmatch(text)
    if not segments or not isinstance(info, mi.StructType) or rule is None:
        return None
    table = dotted_path(segments)
    keys = {f.encode_name for f in info.fields}
    if rule["key"] not in keys:
        return None
    rest = re.sub(r"(?<![\w.])\w+(?!\w)", lambda m: f"{table}.{m[0]}" if m[0] in keys else m[0], rule["rest"])
    return f"{table}.{rule['key']}: {rule['value']} {rest}"


def error_segments(message: str) -> list[str | int]:
    where = message.partition(" - at `$")[2].rstrip("`")
    return [name if name else int(index) for name, index in _PATH_SEGMENT.findall(where)]


def dotted_path(segments: list[str | int]) -> str:
    return "".join(f"[{s}]" if isinstance(s, int) else f".{s}" for s in segments).lstrip(".")


def touches(key: str, failing: str) -> bool:
    """Whether setting ``key`` can explain an error at ``failing`` (the field itself, an item, or its table)."""
    return key == failing or failing.startswith((f"{key}.", f"{key}[")) or key.startswith(f"{failing}.")


def names_a_key(reason: str, keys: Iterable[str]) -> bool:
    """Whether an error's text names one of ``keys`` (leaf names, as a cross-field rule's message does: "dataset =
    "npz" needs npz_path"), as a whole word."""
    return any(re.search(rf"(?<!\w){re.escape(key)}(?!\w)", reason) for key in keys)


def set_keys(key: str, value: object) -> tuple[str, ...]:
    """The leaf names an override sets: its key's last part, or each key of an inline table, nested ones too."""
    if not isinstance(value, dict):
        return (key.rpartition(".")[2],)
    return tuple(name for inner, item in value.items() for name in set_keys(str(inner), item))


def _type_at(info: mi.Type, segments: list[str | int]) -> mi.Type:
    for segment in segments:
        info = _strip_none(info)
        if isinstance(info, mi.StructType) and isinstance(segment, str):
            info = next(f.type for f in info.fields if f.encode_name == segment)
        elif isinstance(info, mi.ListType | mi.VarTupleType) and isinstance(segment, int):
            info = info.item_type
        elif isinstance(info, mi.DictType):
            info = info.value_type
        else:
            return mi.AnyType()
    return info


def _strip_none(info: mi.Type) -> mi.Type:
    """The type without None (an optional key's) and without the Metadata a Meta(extra=...) wraps around it."""
    if isinstance(info, mi.UnionType):
        members = [t for t in info.types if not isinstance(t, mi.NoneType)]
        if len(members) == 1:
            info = members[0]
    return info.type if isinstance(info, mi.Metadata) else info


def _value_at(data: TomlValue, segments: list[str | int]) -> tuple[bool, TomlValue]:
    value = data
    for segment in segments:
        if isinstance(segment, str) and isinstance(value, dict) and segment in value:
            value = value[segment]
        elif isinstance(segment, int) and isinstance(value, list) and segment < len(value):
            value = value[segment]
        else:
            return False, ""
    return True, value


def _describe(info: mi.Type) -> str:
    """Phrase a type and its constraints the way a user reads them: "an integer >= 1", 'one of "a", "b"'."""
    if isinstance(info, mi.UnionType):
        return " or ".join(_describe(t) for t in info.types if not isinstance(t, mi.NoneType))
    if isinstance(info, mi.Metadata):  # a type's own words (Meta(extra={"expected": ...})): a pattern is no phrase
        expected = (info.extra or {}).get("expected")
        return expected if isinstance(expected, str) else _describe(info.type)
    if isinstance(info, mi.BoolType):
        return "true or false"
    if isinstance(info, mi.IntType):
        return _with_bounds("an integer", info.ge, info.gt, info.le, info.lt)
    if isinstance(info, mi.FloatType):
        return _with_bounds("a number", info.ge, info.gt, info.le, info.lt)
    if isinstance(info, mi.StrType):
        if info.pattern is not None:
            return f"a string matching {info.pattern}"
        return "a non-empty string" if info.min_length else "a string"
    if isinstance(info, mi.LiteralType):
        return "one of " + ", ".join(format_value(v) for v in info.values if v is not None)
    if isinstance(info, mi.ListType | mi.VarTupleType):
        return f"an array of {_plural(info.item_type)}"
    if isinstance(info, mi.StructType | mi.DictType):
        return "a table"
    return "a valid value"


_DURATION_LIMITS: Final = (MAX_SECONDS, MAX_SECONDS * 1e3)  # every time key's, in seconds or milliseconds


def _with_bounds(noun: str, ge: float | None, gt: float | None, le: float | None, lt: float | None) -> str:
    if le == INT64_MAX or le in _DURATION_LIMITS:  # limits said only to a value beyond them (translate)
        le = None
    if ge is not None and le is not None:
        return f"{noun} between {_number(ge)} and {_number(le)}"
    bounds = [f"{op} {_number(v)}" for op, v in ((">=", ge), (">", gt), ("<=", le), ("<", lt)) if v is not None]
    return " ".join([noun, " and ".join(bounds)]) if bounds else noun


def _plural(info: mi.Type) -> str:
    nouns = {mi.IntType: "integers", mi.FloatType: "numbers", mi.StrType: "strings", mi.BoolType: "booleans"}
    return nouns.get(type(info), "values")


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def describe_toml_error(err: tomllib.TOMLDecodeError, text: str) -> str:
    match = _TOML_ERROR.match(str(err))
    if match is None:
        return f"invalid TOML: {err}"
    line = match["line"] or str(text.count("\n") + 1)
    return f"invalid TOML at line {line}: {match['msg']}"
