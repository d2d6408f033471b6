"""Keys the schema carries but this version does not act on.

Listed with a reason, refused when set to anything but their default (a setting that silently does nothing misleads),
and no other key goes unread by the code."""

from __future__ import annotations

import ast
import re
import subprocess
from pathlib import Path

import msgspec
import pytest

from actors.nissa.alerts import DEFAULT_RULES, alert_rules
from esper.config import apply_overrides, dump_config, parse_config
from esper.config_checks import inert_settings
from esper.runtime.errors import ConfigError
from schemas.base import ConfigSection
from schemas.config import BreakerConfig, RunConfig
from schemas.config_inert import INERT_KEYS

ROOT = Path(__file__).resolve().parents[1]


def sections(struct: type[ConfigSection], name: str = "") -> set[tuple[type[ConfigSection], str]]:
    """Each table of ``struct`` with its key in its parent ("" for the top level and for breakers, whose keys are read
    through whichever breaker field holds them)."""
    found = {(struct, name)}
    for field in msgspec.structs.fields(struct):
        default = field.default_factory() if field.default_factory is not msgspec.NODEFAULT else field.default
        if isinstance(default, ConfigSection):
            found |= sections(type(default), "" if isinstance(default, BreakerConfig) else field.name)
    return found


_CONFIG_NAME = re.compile(r"config|cfg|settings", re.IGNORECASE)
"""The names an actor's code holds its own section under (``self.config``, ``cfg``, ``settings``): ``torch.compile`` or
``re.compile`` in actors/tolaria is no read of ``tolaria.compile``."""


def attribute_reads() -> set[tuple[str, str]]:
    """Each attribute the code reads, as (the name it is read from, the attribute): ``config.oona.claim_batch`` and
    ``oona.claim_batch`` are ("oona", "claim_batch"); and once more as ("actors/<package>", the attribute) in an actor's
    package when read from a name that holds its config (``self.config.breaker`` in actors/kasmina)."""
    files = subprocess.run(
        ["git", "ls-files", "esper/*.py", "actors/*.py"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    reads: set[tuple[str, str]] = set()
    for name in files:
        parts = Path(name).parts
        package = f"actors/{parts[1]}" if parts[0] == "actors" and len(parts) > 2 else None
        for node in ast.walk(ast.parse((ROOT / name).read_text(), name)):
            if isinstance(node, ast.Attribute):
                owner = node.value
                owned = owner.attr if isinstance(owner, ast.Attribute) else getattr(owner, "id", "")
                reads.add((owned, node.attr))
                if package is not None and _CONFIG_NAME.search(owned):
                    reads.add((package, node.attr))
    return reads


def test_every_listed_key_exists_and_says_why() -> None:
    for (section, name), reason in INERT_KEYS.items():
        assert name in section.__struct_fields__, f"{section.__name__}.{name}"
        assert reason
        assert "\n" not in reason


def test_no_key_goes_unread_unless_it_is_listed() -> None:
    """A key is read as ``<section>.<key>`` or, in the section's actor package, as ``.<key>`` of a config: a keyword
    argument (``metadata_breaker=BreakerState.CLOSED``), another section's field of that name (Kasmina's ``breaker``
    for Tezzeret's) or another object's (``torch.compile``) is not a read of it."""
    reads = attribute_reads()
    read_anywhere = {attribute for _, attribute in reads}
    unread = {
        (section, key)
        for section, name in sections(RunConfig)
        for key in section.__struct_fields__
        if not (key in read_anywhere if not name else (name, key) in reads or (f"actors/{name}", key) in reads)
    }
    assert unread <= set(INERT_KEYS), sorted(f"{s.__name__}.{n}" for s, n in unread - set(INERT_KEYS))


def test_the_defaults_and_a_dumped_config_hold_no_inert_setting() -> None:
    assert list(inert_settings(RunConfig())) == []
    assert parse_config(dump_config(RunConfig()), "run/config.toml") == RunConfig()


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        (
            "[tamiyo]\nmax_activation_nodes = 5\n",
            "c.toml: tamiyo.max_activation_nodes: set to 5, but this version does not act on it (the policy graph"
            " has no activation nodes); remove it",
        ),
        (
            "[oona.consume_breaker]\nopen_s = 3.0\n",
            "c.toml: oona.consume_breaker: set to a table that differs from the defaults, but this version does not"
            " act on it (a run publishes on the bus and consumes nothing from it); remove it",
        ),
        (
            '[simic]\ndevice = "cpu"\n',  # as TOML writes it: it said 'cpu' (and True for true)
            'c.toml: simic.device: set to "cpu", but this version does not act on it (Simic (policy learning) is not'
            " built yet); remove it",
        ),
        (
            "[karn]\nallow_high_risk = true\n",  # it offered nothing: each high-risk blueprint needs an approval
            "c.toml: karn.allow_high_risk: set to true, but this version does not act on it (every HIGH_RISK blueprint"
            " (BP009-BP011) also requires a recorded approval, and this version records none); remove it",
        ),
        (
            "[kasmina]\ng4_max_step_latency_growth = 0.3\n",
            "c.toml: kasmina.g4_max_step_latency_growth: set to 0.3, but this version does not act on it (G4 judges no"
            " step latency: step times are wall-clock, and a gate on them would make the lifecycle depend on the"
            " machine's load); remove it",
        ),
        (
            "[kasmina]\nconfidence_k = 8.0\n",
            "c.toml: kasmina.confidence_k: set to 8.0, but this version does not act on it (no policy blends a seed in"
            " CONFIDENCE mode, the only mode that reads it); remove it",
        ),
        (
            "[tolaria.breaker]\nhalf_open_probes = 2\n",
            "c.toml: tolaria.breaker.half_open_probes: set to 2, but this version does not act on it (a breaker"
            " admits one probe at a time); remove it",
        ),
    ],
)
def test_a_file_setting_an_inert_key_is_refused_in_one_line(toml: str, message: str) -> None:
    with pytest.raises(ConfigError) as refused:
        parse_config(toml, "c.toml")
    assert str(refused.value) == message


def test_an_override_setting_an_inert_key_is_charged_to_that_override() -> None:
    with pytest.raises(ConfigError) as refused:
        apply_overrides(RunConfig(), ["tolaria.epochs=3", "simic.enabled=true"])
    assert str(refused.value).startswith(
        "--set simic.enabled=true: simic.enabled: set to true, but this version does not act on it (Simic"
    )
    # The keys Simic's section lends to Tamiyo's rewards are live.
    config = apply_overrides(RunConfig(), ["simic.reward_lambda_size=0.2"])
    assert config.simic.reward_lambda_size == 0.2


def test_the_isolation_alert_follows_its_kasmina_keys() -> None:
    rules = alert_rules(isolation_violations=5, isolation_window_s=60.0)
    [rule] = [r for r in rules if r.metric == "kasmina.isolation.violations_total"]
    assert (rule.threshold, rule.window_s) == (5.0, 60.0)
    assert alert_rules() == DEFAULT_RULES
