"""Settings the schema's types admit but that the run would not act on as written.

A key read only under another key's value, an empty path, a name given twice, a run file named as another file the run
directory holds."""

from __future__ import annotations

import pytest

from esper.config import apply_overrides, dump_config, parse_config
from esper.config_checks import RESERVED_RUN_NAMES, RUN_FILE_KEYS, SCOPED_KEYS
from esper.run_dir import _WRITTEN
from esper.runtime.errors import ConfigError
from schemas.config import RunConfig


def _refusal(overrides: list[str]) -> str:
    with pytest.raises(ConfigError) as refused:
        apply_overrides(RunConfig(), overrides)
    return str(refused.value)


@pytest.mark.parametrize("key", RUN_FILE_KEYS)
@pytest.mark.parametrize("name", _WRITTEN)
def test_no_run_file_may_take_the_name_of_a_file_the_run_directory_holds(key: str, name: str) -> None:
    """logging.json_file = "command.key" appended the event log to the run's signing key: no resume could read it."""
    assert _refusal([f'{key}="{name}"']) == (
        f'--set {key}="{name}": {key}: {name!r} is a file the run directory already holds; choose another name'
    )
    assert name in RESERVED_RUN_NAMES


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["tolaria.momentum=0.5"], "tolaria.momentum: is read only with optimizer = \"sgd\", and optimizer is 'adamw'"),
        (
            ["tamiyo.every_k_epochs=5"],
            "tamiyo.every_k_epochs: is read only with policy = \"every_k\", and policy is 'heuristic'",
        ),
        (
            ["tamiyo.max_layer_nodes=8"],
            "tamiyo.max_layer_nodes: is read only with policy = \"gnn\", and policy is 'heuristic'",
        ),
        (
            ['tamiyo.policy="every_k"', "tamiyo.normaliser_alpha=0.5"],
            "tamiyo.normaliser_alpha: is read only with policy = \"gnn\", and policy is 'every_k'",
        ),
        (['oona.redis_url="abc"'], "oona.redis_url: is read only with backend = \"redis\", and backend is 'inproc'"),
        (
            ['oona.stream_prefix="x"'],
            "oona.stream_prefix: is read only with backend = \"redis\", and backend is 'inproc'",
        ),
        (
            ["oona.max_payload_bytes=1000"],
            "oona.max_payload_bytes: is read only with backend = \"redis\", and backend is 'inproc'",
        ),
    ],
)
def test_a_key_set_where_its_section_does_not_read_it_is_refused(overrides: list[str], message: str) -> None:
    assert _refusal(overrides) == f"--set {overrides[-1]}: {message}"


def test_a_scoped_key_is_accepted_where_it_is_read() -> None:
    config = apply_overrides(
        RunConfig(),
        ['tolaria.optimizer="sgd"', "tolaria.momentum=0.5", 'tamiyo.policy="every_k"', "tamiyo.every_k_epochs=5"],
    )
    assert (config.tolaria.momentum, config.tamiyo.every_k_epochs) == (0.5, 5)
    gnn = apply_overrides(
        RunConfig(), ['tamiyo.policy="gnn"', "tamiyo.max_layer_nodes=8", "tamiyo.normaliser_alpha=0.5"]
    )
    assert (gnn.tamiyo.max_layer_nodes, gnn.tamiyo.normaliser_alpha) == (8, 0.5)
    redis = apply_overrides(RunConfig(), ['oona.backend="redis"', 'oona.stream_prefix="x"', "oona.max_payload_bytes=9"])
    assert (redis.oona.stream_prefix, redis.oona.max_payload_bytes) == ("x", 9)


def test_a_run_directory_an_earlier_version_wrote_with_an_unread_key_is_read_as_it_ran() -> None:
    """Those versions accepted the keys and did nothing with them: the run's config.toml must still resume."""
    text = dump_config(RunConfig())
    for section, _, _, keys in SCOPED_KEYS:
        assert all(hasattr(section(), key) for key in keys)
    for old, new in (
        ("momentum = 0.9", "momentum = 0.5"),
        ("every_k_epochs = 3", "every_k_epochs = 7"),
        ("max_layer_nodes = 4", "max_layer_nodes = 9"),
        ('redis_url = "redis://localhost:6379/0"', 'redis_url = "abc"'),
        ('stream_prefix = "esper"', 'stream_prefix = "x"'),
        ("slot_targets = []", 'slot_targets = ["blocks.0", "blocks.0"]'),
        ("include = []", 'include = ["BP001", "BP002"]'),
        ("exclude = []", 'exclude = ["BP002"]'),
        ('root = ".esper/urza"', 'root = ""'),
        ('runs_dir = "runs"', 'runs_dir = ""'),
    ):
        assert old in text, old
        text = text.replace(old, new)
    with pytest.raises(ConfigError):
        parse_config(text, "run/config.toml")
    config = parse_config(text, "run/config.toml", written=True)
    assert config.kasmina.slot_targets == ("blocks.0",)  # one slot, as it ran
    assert (config.karn.include, config.karn.exclude) == (("BP001",), ("BP002",))
    assert (config.urza.root, config.runs_dir) == (".", ".")  # the working directory, as Path("") was
    assert (config.tolaria, config.tamiyo, config.oona) == (RunConfig().tolaria, RunConfig().tamiyo, RunConfig().oona)


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("runs_dir", "expected a directory path, got an empty string (leave the key out for runs/)"),
        ("urza.root", "expected a directory path, got an empty string (leave the key out for .esper/urza)"),
        ("nissa.baseline_run", "expected a run directory, got an empty string (leave the key out for no baseline)"),
    ],
)
def test_an_empty_path_is_refused(key: str, message: str) -> None:
    """urza.root = "" made a store in the working directory and was recorded as "": a resume from elsewhere made a
    second one."""
    assert _refusal([f'{key}=""']) == f'--set {key}="": {key}: {message}'


def test_a_slot_target_named_twice_is_refused() -> None:
    """["blocks.0", "blocks.0"] silently became one slot."""
    assert _refusal(['kasmina.slot_targets=["blocks.0", "blocks.1", "blocks.0"]']) == (
        '--set kasmina.slot_targets=["blocks.0", "blocks.1", "blocks.0"]: kasmina.slot_targets: names \'blocks.0\' more'
        " than once in ['blocks.0', 'blocks.1', 'blocks.0']: one slot each"
    )


def test_a_blueprint_both_included_and_excluded_is_refused() -> None:
    assert _refusal(['karn.include=["BP001", "BP002"]', 'karn.exclude=["BP002"]']) == (
        "--set karn.exclude=[\"BP002\"]: karn.exclude: names 'BP002', which karn.include names too: an excluded"
        " blueprint is never offered; name each blueprint in one of them"
    )
    config = apply_overrides(RunConfig(), ['karn.include=["BP001"]', 'karn.exclude=["BP002"]'])
    assert (config.karn.include, config.karn.exclude) == (("BP001",), ("BP002",))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("tamiyo.loss_spike_warn=0.5", "tamiyo.loss_spike_warn: 0.5 must not exceed tamiyo.loss_spike_veto (0.15)"),
        (
            "tamiyo.policy_risk_elevated=0.99",
            "tamiyo.policy_risk_elevated: 0.99 must not exceed tamiyo.policy_risk_critical (0.98)",
        ),
        (
            "tamiyo.blueprint_risk_downgrade=0.9",
            "tamiyo.blueprint_risk_downgrade: 0.9 must not exceed tamiyo.blueprint_risk_veto (0.8)",
        ),
    ],
)
def test_a_rule_between_two_keys_names_both_in_full_with_their_values(override: str, message: str) -> None:
    """It said "tamiyo: loss_spike_warn (0.5) must not exceed loss_spike_veto": the table, and no 0.15."""
    assert _refusal([override]) == f"--set {override}: {message}"
    with pytest.raises(ConfigError) as refused:
        parse_config("[tamiyo]\n" + override.partition(".")[2].replace("=", " = ") + "\n", "c.toml")
    assert str(refused.value) == f"c.toml: {message}"
