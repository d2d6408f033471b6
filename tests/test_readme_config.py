"""README's configuration reference and resume rules follow the code.

Every schema key has its row, with its default and its inert mark, and the keys a resume refuses to change are named."""

from __future__ import annotations

import re
from pathlib import Path

import msgspec

from esper.config_checks import RUN_FILE_KEYS
from esper.config_toml import format_value, plain
from esper.nn.blueprints.registry import default_catalogue
from esper.resume import SAME_RUN
from schemas.base import ConfigSection
from schemas.config import BreakerConfig, RunConfig
from schemas.config_inert import INERT_KEYS

README = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
_ROW = re.compile(r"^\| `(?P<key>[\w.]+)` \| (?P<default>[^|]*?) \| (?P<bounds>[^|]*?) \| (?P<text>.*) \|$", re.M)


def _section(heading: str) -> str:
    start = README.index(f"\n## {heading}\n")
    end = README.find("\n## ", start + 1)
    return README[start:end]


def _schema_rows() -> dict[str, tuple[str, bool]]:
    """Each documented key (breakers as ``breaker.<key>``): the default as the table shows it, and whether inert."""
    rows: dict[str, tuple[str, bool]] = {}

    def add(struct: type[ConfigSection], prefix: str) -> None:
        defaults = struct()
        for name in struct.__struct_fields__:
            value = getattr(defaults, name)
            if isinstance(value, ConfigSection) and not isinstance(value, BreakerConfig):
                add(type(value), f"{prefix}{name}.")
                continue
            if value is None:
                shown = "unset"
            elif isinstance(value, ConfigSection):
                shown = "(table)"
            else:
                shown = f"`{format_value(plain(msgspec.to_builtins(value)))}`"
            rows[prefix + name] = (shown, (struct, name) in INERT_KEYS)

    add(RunConfig, "")
    add(BreakerConfig, "breaker.")
    return rows


def test_the_configuration_reference_has_one_row_per_key_with_its_default_and_inert_mark() -> None:
    found = [match.groupdict() for match in _ROW.finditer(_section("Configuration reference"))]
    keys = [row["key"] for row in found]
    assert len(keys) == len(set(keys)), sorted({k for k in keys if keys.count(k) > 1})
    expected = _schema_rows()
    assert set(keys) == set(expected), (sorted(set(expected) - set(keys)), sorted(set(keys) - set(expected)))
    for row in found:
        default, inert = expected[row["key"]]
        assert row["default"] == default, row["key"]
        assert ("**Inert**" in row["text"]) == inert, row["key"]
        assert row["text"].strip(), row["key"]
        assert row["bounds"].strip(), row["key"]


def test_the_resume_rules_name_every_key_a_resume_keeps_outside_training_and_the_planner() -> None:
    """karn.include and karn.exclude were refused by a resume but missing from README's list."""
    start = README.index("A resume refuses, naming the key")
    rules = README[start : README.index("Every differing key is", start)]
    named = set(re.findall(r"`([\w.]+)`", rules))
    # The training and planner keys are described as groups (data, host model, optimizer ...; dwell, gates ...).
    listed = [key for key in (*SAME_RUN, *RUN_FILE_KEYS) if key.split(".")[0] not in ("tolaria", "kasmina")]
    listed += [key for key in SAME_RUN if key in ("tolaria.command_lag_steps", "tolaria.state_every_steps")]
    assert sorted(set(listed) - named) == []


def test_the_blueprint_table_lists_the_built_in_catalogue() -> None:
    """A user could learn the blueprint ids only from an error message listing them."""
    section = _section("Configuration reference")
    karn = section[section.index("### `[karn]`") : section.index("### `[oona]`")]
    rows = re.findall(r"^\| (BP\d+) \| (\w+) \| (\w+) \| (\w+) \| ([\w, ]+) \| (.*) \|$", karn, re.M)
    expected = [
        (d.blueprint_id, d.name, d.tier, d.cost_tier, ", ".join(s.kind for s in d.slot_signatures), d.description)
        for d in default_catalogue()
    ]
    assert rows == expected
