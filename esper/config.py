"""Load, override and dump the run configuration (TOML -> schemas.config.RunConfig), with one-line errors.

Every failure raises ConfigError whose message is one line: the source (a file name, or the ``--set`` argument), the
dotted field path and the problem, e.g. ``config.toml: tamiyo.decision_budget_ms: expected a number > 0, got -5``.
The caller (esper.run) prints it and exits with status 2; no traceback reaches the user.
"""

from __future__ import annotations

import datetime
import difflib
import json
import math
import re
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Final, TypeAlias

import msgspec
import msgspec.inspect as mi

from esper.runtime.errors import ConfigError
from schemas.base import ConfigSection
from schemas.config import INERT_KEYS, MAX_SECONDS, RunConfig, TamiyoConfig, TolariaConfig
from schemas.constraints import INT64_MAX

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

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

_PATH_SEGMENT = re.compile(r"\.([^.\[]+)|\[(\d+)\]")
_DOTTED_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*")
_TOML_ERROR = re.compile(r"^(?P<msg>.*) \(at (?:line (?P<line>\d+), column \d+|end of document)\)$")
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def load_config(path: str | Path | None, overrides: Sequence[str] = (), *, written: bool = False) -> RunConfig:
    """Read a TOML config file (or start from the defaults when ``path`` is None) and apply ``--set`` overrides.

    ``written``: the file is a run's own config.toml, written by the version that ran it: an INERT_KEYS key set there
    did nothing then either, so it is kept rather than refused (a resume or a baseline compares other keys).
    Blocks on file I/O: call it before the event loop starts, or from a thread.

    Raises:
        ConfigError: the file is missing or unreadable, is not valid TOML, names an unknown section or key, or holds
            a value of the wrong type or out of range; or an override is malformed or invalid.
    """
    if path is None:
        return apply_overrides(RunConfig(), overrides)
    source = str(path)
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError as err:
        raise ConfigError(f"{source}: file not found") from err
    except OSError as err:
        raise ConfigError(f"{source}: cannot read: {err.strerror or err}") from err
    try:
        text = raw.decode("utf-8-sig")  # an editor's byte-order mark is not TOML's business
    except UnicodeDecodeError as err:
        raise ConfigError(f"{source}: invalid TOML: not UTF-8 text (byte {err.start})") from err
    return apply_overrides(parse_config(text, source, written=written), overrides)


def parse_config(text: str, source: str = "<string>", *, written: bool = False) -> RunConfig:
    """Decode TOML text into a RunConfig; ``source`` names the text in error messages (``written``: see load_config).

    Raises:
        ConfigError: invalid TOML, an unknown section or key, or a value of the wrong type or out of range.
    """
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{source}: {_describe_toml_error(err, text)}") from err
    return _validate(data, source, written=written)


def parse_override(text: str) -> tuple[str, TomlValue]:
    """Split ``section.key=value`` into the dotted key and the value parsed as a TOML value.

    A value that is not valid TOML is taken as a bare string, so ``tamiyo.policy=gnn`` sets the string "gnn" and
    ``tolaria.epochs=abc`` later fails validation naming "abc".

    Raises:
        ConfigError: there is no ``=`` or the key is not a dotted name.
    """
    key, sep, raw = text.partition("=")
    key, raw = key.strip(), raw.strip()
    if not sep:
        raise ConfigError(f"--set {text}: expected section.key=value")
    if not _DOTTED_KEY.fullmatch(key):
        raise ConfigError(f"--set {text}: {key!r} is not a dotted key such as tolaria.epochs")
    if not raw or "\n" in raw or "\r" in raw:
        return key, raw
    try:
        value: TomlValue = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return key, raw
    return key, value


def validate_config(config: RunConfig, source: str = "RunConfig") -> RunConfig:
    """``config`` checked as a file's would be (a Struct built in code is not validated): a copy, validated.

    Raises:
        ConfigError: a value is invalid or a setting is one this version does not act on; named as ``<source>: ...``.
    """
    try:
        table = _to_table(config)
    except TypeError as err:  # a value no config file could hold (an arbitrary object)
        raise ConfigError(f"{source}: {err}") from err
    return _validate(table, source)


def apply_overrides(config: RunConfig, overrides: Sequence[str], source: str = "--set") -> RunConfig:
    """Return ``config`` with each ``section.key=value`` override applied in order; the result is validated.

    Errors name the override as ``<source> <override>``, e.g. ``--set tolaria.epochs=abc: tolaria.epochs: ...``.

    An inline table (``tolaria={epochs=1, lr=0.1}``) sets the keys it names and leaves the table's others as they are.

    Raises:
        ConfigError: an override is malformed, names an unknown section or key, or sets an invalid value.
        TypeError: an override is not a string (from esper.start), naming its index.
    """
    if not overrides:
        return config
    for index, text in enumerate(overrides):
        if not isinstance(text, str):  # from esper.start: a bare AttributeError named neither the item nor its place
            raise TypeError(f"overrides[{index}]: expected a 'section.key=value' string, got {text!r}")
    data = _to_table(config)
    applied: list[tuple[str, str]] = []
    for text in overrides:
        label = f"{source} {text}"
        key, value = parse_override(text)
        *parents, leaf = key.split(".")
        table = data
        for depth, segment in enumerate(parents):
            child = table.setdefault(segment, {})
            if not isinstance(child, dict):
                dotted = ".".join(parents[: depth + 1])
                raise ConfigError(f"{label}: {dotted}: not a table, cannot set {key}")
            table = child
        current = table.get(leaf)
        # An inline table sets the keys it names, as a --set of each would: it replaced the whole table, so the file's
        # other keys of that section silently went back to their defaults.
        table[leaf] = _merged(current, value) if isinstance(current, dict) and isinstance(value, dict) else value
        _check_keys(data, _RUN_CONFIG_INFO, (), label)
        applied.append((key, label))
    try:
        config = msgspec.convert(data, RunConfig)
    except msgspec.ValidationError as err:
        # Values are checked once all overrides are in, so cross-field rules do not depend on their order; the error
        # is charged to the last override that touched the failing field or its table.
        message = str(err)
        failing = _dotted(_error_segments(message))
        label = next(
            (label for key, label in reversed(applied) if _touches(key, failing)),
            f"{source} {' '.join(overrides)}",
        )
        raise ConfigError(_translate(message, data, label) + _quote_hint(failing, applied, data)) from err
    for dotted, setting, reason in inert_settings(config):
        label = next((label for key, label in reversed(applied) if _touches(key, dotted)), source)
        raise ConfigError(_inert_message(label, dotted, setting, reason))
    for dotted, problem in value_problems(config):
        label = next((label for key, label in reversed(applied) if _touches(key, dotted)), source)
        raise ConfigError(f"{label}: {dotted}: {problem}")
    return config


def _merged(base: dict[str, TomlValue], update: dict[str, TomlValue]) -> dict[str, TomlValue]:
    """``base`` with each key of ``update`` set, nested tables merged key by key."""
    out = dict(base)
    for key, value in update.items():
        current = out.get(key)
        out[key] = _merged(current, value) if isinstance(current, dict) and isinstance(value, dict) else value
    return out


def _quote_hint(failing: str, applied: Sequence[tuple[str, str]], data: dict[str, TomlValue]) -> str:
    """For a string key given a number or a boolean on the command line (``--set run_id=123``): how to quote it."""
    segments = _error_segments(f" - at `$.{failing}`")
    if not isinstance(_strip_none(_type_at(_RUN_CONFIG_INFO, segments)), mi.StrType):
        return ""
    if not any(key == failing for key, _ in applied):
        return ""
    found, value = _value_at(data, segments)
    if not found or isinstance(value, str | dict | list):
        return ""
    quoted = _format_string(_format_value(value))
    return f" (a string: quote it, --set '{failing}={quoted}')"


def dump_config(config: RunConfig) -> str:
    """Render the resolved config as TOML text; None values are omitted (TOML has no null) and reload as None."""
    lines: list[str] = []
    _emit_table(lines, (), _without_none(_to_table(config)))
    return "\n".join(lines).lstrip("\n") + "\n"


# ---------------------------------------------------------------- validation and error translation


def _run_config_info() -> mi.StructType:
    info = mi.type_info(RunConfig)
    assert isinstance(info, mi.StructType)
    return info


_RUN_CONFIG_INFO = _run_config_info()


def _validate(data: dict[str, TomlValue], source: str, *, written: bool = False) -> RunConfig:
    _check_keys(data, _RUN_CONFIG_INFO, (), source)
    try:
        config = msgspec.convert(data, RunConfig)
    except msgspec.ValidationError as err:
        raise ConfigError(_translate(str(err), data, source)) from err
    for dotted, value, reason in () if written else inert_settings(config):
        raise ConfigError(_inert_message(source, dotted, value, reason))
    for dotted, problem in value_problems(config):
        raise ConfigError(f"{source}: {dotted}: {problem}")
    return config


_RUN_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")


_DEFAULT_SAMPLES = TolariaConfig().dataset_samples


def value_problems(section: ConfigSection, path: tuple[str, ...] = ()) -> Iterator[tuple[str, str]]:
    """Values the schema's types admit but no run can use: a non-finite number (lr = inf halted the run at L4), an
    empty slot target, an npz file for a data set that is not npz (it was silently ignored), amp with fp32."""
    for name in section.__struct_fields__:
        value = getattr(section, name)
        dotted = ".".join((*path, name))
        if isinstance(value, float) and not math.isfinite(value):
            yield dotted, f"expected a finite number, got {value}"
        elif isinstance(value, ConfigSection):
            yield from value_problems(value, (*path, name))
        elif name == "slot_targets" and isinstance(value, tuple) and any(not str(t).strip() for t in value):
            yield dotted, f"expected module names, got an empty one in {list(value)!r}"
    # An empty path became the working directory (Path("") is "."), and the refusal named that directory instead.
    if isinstance(section, TolariaConfig) and section.npz_path == "":
        yield ".".join((*path, "npz_path")), "expected the path of an .npz file, got an empty string"
    if isinstance(section, TamiyoConfig) and section.gnn_checkpoint == "":
        yield (
            ".".join((*path, "gnn_checkpoint")),
            "expected the path of a safetensors file, got an empty string (leave the key out for fresh weights)",
        )
    if isinstance(section, TolariaConfig) and section.npz_path is not None and section.dataset != "npz":
        yield ".".join((*path, "npz_path")), f'is read only with dataset = "npz", and dataset is {section.dataset!r}'
    if (
        isinstance(section, TolariaConfig)
        and section.dataset != "mnist1d"
        and section.dataset_samples != _DEFAULT_SAMPLES
    ):
        # digits and npz come with their own sizes: the setting was silently ignored.
        yield (
            ".".join((*path, "dataset_samples")),
            f'is read only with dataset = "mnist1d", and dataset is {section.dataset!r}',
        )
    if isinstance(section, TolariaConfig) and section.amp and section.precision == "fp32":
        # amp forced bf16 autocast over an explicit fp32: the run trained in another precision than it asked for.
        precision = ".".join((*path, "precision"))
        yield (
            ".".join((*path, "amp")),
            f'true asks for bf16 autocast, but {precision} = "fp32" asks for none: '
            'set amp = false for fp32, or precision = "bf16"',
        )
    if isinstance(section, TolariaConfig) and section.dataset == "mnist1d" and section.dataset_samples % 10:
        # MNIST-1D makes as many samples of each of its 10 digits (checked here, before the run directory is made).
        samples = section.dataset_samples
        yield ".".join((*path, "dataset_samples")), f"expected a multiple of 10 for mnist1d, got {samples}"
    if isinstance(section, TamiyoConfig) and section.policy != "gnn":
        # Read only by the GNN policy: set for another, they would do nothing.
        for key, default in (("gnn_checkpoint", None), ("policy_process", "auto"), ("compile", False)):
            if getattr(section, key) != default:
                yield ".".join((*path, key)), f'is read only with policy = "gnn", and policy is {section.policy!r}'
    if isinstance(section, RunConfig):
        yield from _run_file_problems(section)
    if isinstance(section, RunConfig) and section.run_id is not None and not _RUN_ID.fullmatch(section.run_id):
        yield "run_id", f"expected letters, digits, '.', '_' or '-' (it names a directory), got {section.run_id!r}"


RUN_FILE_KEYS: Final = ("nissa.metrics_csv", "nissa.summary_json", "logging.json_file")
"""The keys that name the run's own files in its directory."""

# What else the run directory holds: the files the keys below name may take none of these names.
_RESERVED_RUN_NAMES = frozenset(
    {"checkpoints", "config.toml", "data.json", "field_reports.wal", "report.png", "run.lock"}
)


def _run_file_problems(config: RunConfig) -> Iterator[tuple[str, str]]:
    """The run's own file names (nissa.metrics_csv, nissa.summary_json, logging.json_file) must be plain file names
    inside the run directory, distinct and not another run file's: "../other-run/summary.json" rewrote another
    run, "checkpoints/manifest.json" this run's manifest."""
    names = {key: str(dotted_value(config, key)) for key in RUN_FILE_KEYS}
    for key, name in names.items():
        if not name or name in {".", ".."} or "/" in name or "\\" in name or "\x00" in name:
            yield key, f"expected a file name inside the run directory (no directories), got {name!r}"
        elif name in _RESERVED_RUN_NAMES:
            yield key, f"{name!r} is a file the run directory already holds; choose another name"
        elif list(names.values()).count(name) > 1:
            yield key, f"{name!r} is also the name of another of the run's files; choose another name"


def dotted_value(config: RunConfig, dotted: str) -> object:
    """The value of a ``section.key`` of ``config``."""
    section, key = dotted.split(".")
    return getattr(getattr(config, section), key)


def inert_settings(section: ConfigSection, path: tuple[str, ...] = ()) -> Iterator[tuple[str, object, str]]:
    """Each key of ``section`` (recursively) that INERT_KEYS lists and that differs from its default: its dotted
    name, its value and why this version does not act on it."""
    default = type(section)()
    for name in section.__struct_fields__:
        value = getattr(section, name)
        reason = INERT_KEYS.get((type(section), name))
        if reason is not None:
            if value != getattr(default, name):
                yield ".".join((*path, name)), value, reason
        elif isinstance(value, ConfigSection):
            yield from inert_settings(value, (*path, name))


def _inert_message(source: str, dotted: str, value: object, reason: str) -> str:
    if isinstance(value, ConfigSection):
        shown = "a table that differs from the defaults"
    else:  # as the file writes it (true, "x"), not as Python does (True, 'x')
        shown = _format_value(_plain(msgspec.to_builtins(value)))
    return f"{source}: {dotted}: set to {shown}, but this version does not act on it ({reason}); remove it"


def _check_keys(table: dict[str, TomlValue], info: mi.StructType, path: tuple[str, ...], source: str) -> None:
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
            _check_keys(value, field_type, (*path, key), source)


def _sections_with(key: str) -> list[str]:
    """The dotted names of ``key`` in every section (one level below the top) that has it."""
    found: list[str] = []
    for section in _RUN_CONFIG_INFO.fields:
        if isinstance(section.type, mi.StructType):
            if any(f.encode_name == key for f in section.type.fields):
                found.append(f"{section.encode_name}.{key}")
    return found


def _translate(message: str, data: dict[str, TomlValue], source: str) -> str:
    """Turn msgspec's "Expected `float`, got `str` - at `$.a.b`" into "source: a.b: expected a number, got "x"."""
    text = message.partition(" - at `$")[0]
    segments = _error_segments(message)
    dotted = _dotted(segments) or "<top level>"
    if not (text.startswith("Expected") or text.startswith("Invalid enum value")):
        return f"{source}: {dotted}: {text}"
    info = _type_at(_RUN_CONFIG_INFO, segments)
    expected = _describe(info)
    found, value = _value_at(data, segments)
    got = _format_value(value) if found else "nothing"
    bounded = _strip_none(info)
    beyond = found and isinstance(value, int) and not isinstance(value, bool) and value > INT64_MAX
    if beyond and isinstance(bounded, mi.IntType) and bounded.le == INT64_MAX:
        expected += f" and at most {INT64_MAX} (2**63 - 1)"
    number = value if isinstance(value, int | float) and not isinstance(value, bool) else None
    if number is not None and isinstance(bounded, mi.FloatType) and bounded.le in _DURATION_LIMITS:
        if number > bounded.le:
            expected += f" and at most {_number(bounded.le)} (about 31 years)"
    return f"{source}: {dotted}: expected {expected}, got {got}"


def _error_segments(message: str) -> list[str | int]:
    where = message.partition(" - at `$")[2].rstrip("`")
    return [name if name else int(index) for name, index in _PATH_SEGMENT.findall(where)]


def _dotted(segments: list[str | int]) -> str:
    return "".join(f"[{s}]" if isinstance(s, int) else f".{s}" for s in segments).lstrip(".")


def _touches(key: str, failing: str) -> bool:
    """Whether setting ``key`` can explain an error at ``failing`` (the field itself, an item, or its table)."""
    return key == failing or failing.startswith((f"{key}.", f"{key}[")) or key.startswith(f"{failing}.")


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
    if isinstance(info, mi.UnionType):
        members = [t for t in info.types if not isinstance(t, mi.NoneType)]
        if len(members) == 1:
            return members[0]
    return info


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
        return "one of " + ", ".join(_format_value(v) for v in info.values if v is not None)
    if isinstance(info, mi.ListType | mi.VarTupleType):
        return f"an array of {_plural(info.item_type)}"
    if isinstance(info, mi.StructType | mi.DictType):
        return "a table"
    return "a valid value"


_DURATION_LIMITS: Final = (MAX_SECONDS, MAX_SECONDS * 1e3)  # every time key's, in seconds or milliseconds


def _with_bounds(noun: str, ge: float | None, gt: float | None, le: float | None, lt: float | None) -> str:
    if le == INT64_MAX or le in _DURATION_LIMITS:  # limits said only to a value beyond them (_translate)
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


# ---------------------------------------------------------------- TOML rendering


def _describe_toml_error(err: tomllib.TOMLDecodeError, text: str) -> str:
    match = _TOML_ERROR.match(str(err))
    if match is None:
        return f"invalid TOML: {err}"
    line = match["line"] or str(text.count("\n") + 1)
    return f"invalid TOML at line {line}: {match['msg']}"


def _to_table(config: RunConfig) -> dict[str, TomlValue]:
    """The config as plain TOML data: msgspec.to_builtins keeps tuples, TOML arrays are lists."""
    table = _plain(msgspec.to_builtins(config))
    assert isinstance(table, dict)
    return table


def _plain(value: object) -> TomlValue:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value  # type: ignore[return-value]  # to_builtins yields only TOML scalars here (and None)


def _without_none(table: dict[str, TomlValue]) -> dict[str, TomlValue]:
    return {k: _without_none(v) if isinstance(v, dict) else v for k, v in table.items() if v is not None}


def _emit_table(lines: list[str], path: tuple[str, ...], table: dict[str, TomlValue]) -> None:
    if path:
        lines.extend(("", f"[{'.'.join(_format_key(p) for p in path)}]"))
    for key, value in table.items():
        if not isinstance(value, dict):
            lines.append(f"{_format_key(key)} = {_format_value(value)}")
    for key, value in table.items():
        if isinstance(value, dict):
            _emit_table(lines, (*path, key), value)


def _format_key(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) else _format_string(key)


def _format_value(value: TomlValue | None) -> str:
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
        return _format_string(value)
    if isinstance(value, list):
        return "[" + ", ".join(_format_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_format_key(k)} = {_format_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    return repr(value)  # not a TOML value (a RunConfig built in code holding None): shown as Python would


def _format_string(value: str) -> str:
    # json.dumps escapes are valid TOML basic-string escapes, but it leaves DEL raw and TOML forbids it.
    return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
