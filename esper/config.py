"""Load, override and dump the run configuration (TOML -> schemas.config.RunConfig), with one-line errors.

Every failure raises ConfigError whose message is one line: the source (a file name, or the ``--set`` argument), the
dotted field path and the problem, e.g. ``config.toml: tamiyo.decision_budget_ms: expected a number > 0, got -5``.
The caller (esper.run) prints it and exits with status 2; no traceback reaches the user.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec

from esper.config_checks import as_acted_on, inert_message, inert_settings, value_problems
from esper.config_errors import (
    RUN_CONFIG_INFO,
    check_keys,
    describe_toml_error,
    dotted_path,
    error_segments,
    names_a_key,
    quote_hint,
    set_keys,
    touches,
    translate,
)
from esper.config_toml import emit_table, to_table, without_none
from esper.runtime.bus_redis import redacted
from esper.runtime.errors import ConfigError
from schemas.config import RunConfig

if TYPE_CHECKING:
    from collections.abc import Sequence

    from esper.config_toml import TomlValue

_DOTTED_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*")


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
        raise ConfigError(f"{source}: {describe_toml_error(err, text)}") from err
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
        table = to_table(config)
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
    data = to_table(config)
    applied: list[tuple[str, str]] = []
    names: dict[str, tuple[str, ...]] = {}  # the leaf names each override sets, by its label
    for text in overrides:
        label = f"{source} {redacted(text)}"  # oona.redis_url's password stays off the console
        key, value = parse_override(text)
        names[label] = set_keys(key, value)
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
        check_keys(data, RUN_CONFIG_INFO, (), label)
        applied.append((key, label))
    try:
        config = msgspec.convert(data, RunConfig)
    except msgspec.ValidationError as err:
        # Values are checked once all overrides are in, so cross-field rules do not depend on their order; the error
        # is charged to the last override that touched the failing field or its table, one that set a key the error
        # names first (a table's rule: "--set tolaria.epochs=3" was blamed for dataset = "npz" needing npz_path).
        message = str(err)
        failing = dotted_path(error_segments(message))
        reason = message.partition(" - at `$")[0]
        touching = [label for key, label in reversed(applied) if touches(key, failing)]
        label = next(
            (label for label in touching if names_a_key(reason, names[label])),
            touching[0] if touching else f"{source} {' '.join(overrides)}",
        )
        raise ConfigError(translate(message, data, label) + quote_hint(failing, applied, data)) from err
    for dotted, setting, reason in inert_settings(config):
        label = next((label for key, label in reversed(applied) if touches(key, dotted)), source)
        raise ConfigError(inert_message(label, dotted, setting, reason))
    # A problem with a key an override set first, named by that override; else the first, charged to all of them (they
    # made it: the file alone passed), not to a bare "--set".
    problems = list(value_problems(config))
    for dotted, problem in problems:
        setter = next((label for key, label in reversed(applied) if touches(key, dotted)), None)
        if setter is not None:
            raise ConfigError(f"{setter}: {dotted}: {problem}")
    if problems:
        dotted, problem = problems[0]
        raise ConfigError(f"{source} {' '.join(overrides)}: {dotted}: {problem}")
    return config


def _merged(base: dict[str, TomlValue], update: dict[str, TomlValue]) -> dict[str, TomlValue]:
    """``base`` with each key of ``update`` set, nested tables merged key by key."""
    out = dict(base)
    for key, value in update.items():
        current = out.get(key)
        out[key] = _merged(current, value) if isinstance(current, dict) and isinstance(value, dict) else value
    return out


def dump_config(config: RunConfig) -> str:
    """Render the resolved config as TOML text; None values are omitted (TOML has no null) and reload as None."""
    lines: list[str] = []
    emit_table(lines, (), without_none(to_table(config)))
    return "\n".join(lines).lstrip("\n") + "\n"


def _validate(data: dict[str, TomlValue], source: str, *, written: bool = False) -> RunConfig:
    check_keys(data, RUN_CONFIG_INFO, (), source)
    try:
        config = msgspec.convert(data, RunConfig)
    except msgspec.ValidationError as err:
        raise ConfigError(translate(str(err), data, source)) from err
    for dotted, value, reason in () if written else inert_settings(config):
        raise ConfigError(inert_message(source, dotted, value, reason))
    if written:
        config = as_acted_on(config)
    for dotted, problem in value_problems(config):
        raise ConfigError(f"{source}: {dotted}: {problem}")
    return config
