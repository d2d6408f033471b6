"""The config loader: defaults, one-line errors for every kind of bad config, overrides, and dump/load round trips."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import msgspec
import msgspec.inspect as mi
import pytest

from esper.config import apply_overrides, dump_config, load_config, parse_config, parse_override
from esper.runtime.errors import ConfigError
from schemas.config import BreakerConfig, RunConfig

if TYPE_CHECKING:
    from collections.abc import Callable

REPO_ROOT = Path(__file__).resolve().parent.parent


def _write(tmp_path: Path, text: str, name: str = "config.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_an_empty_file_gives_the_resolved_defaults(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path, ""))
    assert config == RunConfig()
    assert config.run_id is None
    assert (config.tolaria.epochs, config.tolaria.seed, config.tolaria.dataset) == (10, 0, "mnist1d")
    assert config.tolaria.host_model == "cnn1d"
    assert config.tolaria.device == "auto"
    assert config.tolaria.command_lag_steps == 8
    assert config.tolaria.compile is False
    assert config.tolaria.epoch_hook_budget_ms == 50.0
    assert config.tolaria.epoch_budget_ms is None
    assert config.tolaria.snapshot_memory_cap_mb == 32.0
    assert config.tolaria.rollback_full_deadline_s == 12.0
    assert config.tamiyo.policy == "heuristic"
    assert config.tamiyo.decision_budget_ms == 45.0
    assert config.tamiyo.metadata_budget_ms == 20.0
    assert (config.tamiyo.loss_spike_veto, config.tamiyo.loss_spike_warn) == (0.15, 0.075)
    assert (config.tamiyo.max_layer_nodes, config.tamiyo.max_activation_nodes, config.tamiyo.max_parameter_nodes) == (
        4,
        2,
        2,
    )
    assert config.tamiyo.field_report_window_epochs == 3
    assert config.kasmina.embargo_epochs == 2
    assert (config.kasmina.blend_ramp_steps, config.kasmina.blend_temperature) == (20, 2.0)
    assert (config.kasmina.confidence_k, config.kasmina.confidence_tau) == (4.0, 0.2)
    assert config.kasmina.breaker == BreakerConfig(
        failure_threshold=3, open_s=30.0, half_open_probes=1, success_threshold=2
    )
    assert config.urza.root == ".esper/urza"
    assert (config.urza.ready_cache_modules, config.urza.fetch_budget_ms) == (32, 10.0)
    oona = config.oona
    assert oona.backend == "inproc"
    assert (oona.claim_idle_s, oona.claim_batch, oona.dead_letter_attempts, oona.message_ttl_s) == (60.0, 50, 5, 900.0)
    assert (oona.emergency_rate_per_min, oona.queue_depth_high, oona.queue_depth_recovery) == (120, 4000, 1000)
    security = config.security
    assert (security.command_freshness_s, security.future_skew_s, security.nonce_ttl_s) == (60.0, 5.0, 300.0)
    assert security.nonce_ledger_size == 4096
    assert config.nissa.prometheus_port is None
    simic = config.simic
    assert (simic.lr, simic.grad_clip, simic.gamma, simic.gae_lambda) == (1e-4, 0.5, 0.99, 0.95)
    assert (simic.entropy_coef, simic.value_coef, simic.clip_ratio) == (0.01, 0.5, 0.2)
    weatherlight = config.weatherlight
    assert (weatherlight.restart_max, weatherlight.restart_window_s, weatherlight.shutdown_deadline_s) == (5, 30.0, 5.0)
    assert weatherlight.restart_max_without_progress == 3
    assert (config.logging.level, config.logging.console, config.logging.json_file) == ("info", True, "events.jsonl")


def test_no_path_means_defaults() -> None:
    assert load_config(None) == RunConfig()


def test_the_key_names_other_tools_rely_on_exist() -> None:
    config = RunConfig()
    pinned = {
        ("tolaria", "epochs"),
        ("tolaria", "seed"),
        ("tamiyo", "policy"),
        ("tamiyo", "decision_budget_ms"),
        ("urza", "root"),
        ("nissa", "prometheus_port"),
        ("oona", "backend"),
    }
    for section, key in pinned:
        assert hasattr(getattr(config, section), key), f"{section}.{key}"
    sections = {f.name for f in msgspec.structs.fields(RunConfig)}
    assert {"tolaria", "kasmina", "tamiyo", "urza", "tezzeret", "karn", "oona", "nissa", "simic"} <= sections
    assert {"weatherlight", "logging", "security", "run_id"} <= sections


def test_optional_keys_default_to_none_so_a_dump_without_them_round_trips() -> None:
    def walk(info: mi.StructType, path: str) -> None:
        for f in info.fields:
            if isinstance(f.type, mi.StructType):
                walk(f.type, f"{path}{f.name}.")
            elif isinstance(f.type, mi.UnionType) and any(isinstance(t, mi.NoneType) for t in f.type.types):
                assert f.default is None, f"{path}{f.name} is optional but defaults to {f.default!r}"

    root = mi.type_info(RunConfig)
    assert isinstance(root, mi.StructType)
    walk(root, "")


def test_the_gnn_workers_silence_limit_is_a_tamiyo_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker's silence limit was a constant (0.5 s): a machine where a decision can take longer killed sound
    workers."""
    monkeypatch.chdir(tmp_path)
    assert load_config(_write(tmp_path, "")).tamiyo.policy_worker_silence_s == 0.5
    _write(tmp_path, '[tamiyo]\npolicy = "gnn"\npolicy_worker_silence_s = 2.5\n')
    assert load_config("config.toml").tamiyo.policy_worker_silence_s == 2.5


def test_the_shipped_config_toml_loads() -> None:
    config = load_config(REPO_ROOT / "config.toml")
    assert config.tamiyo.policy == "heuristic"
    assert config.urza.root == ".esper/urza"
    assert config.nissa.prometheus_port is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '[tamiyo]\ndecision_budget_ms = "fast"\n',
            'config.toml: tamiyo.decision_budget_ms: expected a number > 0, got "fast"',
        ),
        (
            "[tamiyo]\ndecision_budget_ms = -5\n",
            "config.toml: tamiyo.decision_budget_ms: expected a number > 0, got -5",
        ),
        ("[tolaria]\nepochs = 2.5\n", "config.toml: tolaria.epochs: expected an integer >= 1, got 2.5"),
        (  # the pattern's own words, not its regex
            '[tolaria]\nhost_model = "./mymodels:bn_drop"\n',
            'config.toml: tolaria.host_model: expected cnn1d, mlp or package.module:factory, got "./mymodels:bn_drop"',
        ),
        ('[security]\nkey_id = ""\n', 'config.toml: security.key_id: expected a non-empty string, got ""'),
        ("[tolaria]\ncompile = 1\n", "config.toml: tolaria.compile: expected true or false, got 1"),
        (
            '[tamiyo]\npolicy = "greedy"\n',
            'config.toml: tamiyo.policy: expected one of "every_k", "gnn", "heuristic", got "greedy"',
        ),
        (
            "[nissa]\nprometheus_port = 70000\n",
            "config.toml: nissa.prometheus_port: expected an integer between 0 and 65535, got 70000",
        ),
        (
            "[tolaria]\nvalidation_fraction = 1.0\n",
            "config.toml: tolaria.validation_fraction: expected a number > 0 and < 1, got 1.0",
        ),
        ('[kasmina]\nslot_targets = ["a", 3]\n', "config.toml: kasmina.slot_targets[1]: expected a string, got 3"),
        ('[karn]\ninclude = "bp1"\n', 'config.toml: karn.include: expected an array of strings, got "bp1"'),
        ("tolaria = 3\n", "config.toml: tolaria: expected a table, got 3"),
        (
            '[tamiyo]\npolicy = "gnn"\npolicy_worker_silence_s = 0\n',
            "config.toml: tamiyo.policy_worker_silence_s: expected a number > 0, got 0",
        ),
        (
            "[tamiyo.inference_breaker]\nopen_s = 0\n",
            "config.toml: tamiyo.inference_breaker.open_s: expected a number > 0, got 0",
        ),
        (
            "[oona]\nqueue_depth_recovery = 5000\n",
            "config.toml: oona.queue_depth_recovery: 5000 must be below oona.queue_depth_high (4000)",
        ),
        ('[tolaria]\ndataset = "npz"\n', 'config.toml: tolaria: dataset = "npz" needs npz_path'),
    ],
)
def test_a_wrong_value_names_file_field_expectation_and_value(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, message: str
) -> None:
    monkeypatch.chdir(tmp_path)
    _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config("config.toml")
    assert str(info.value) == message


def test_an_unknown_key_is_refused_with_a_suggestion(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    _write(tmp_path, "[tamiyo]\ndecison_budget_ms = 10\n")
    with pytest.raises(ConfigError) as info:
        load_config("config.toml")
    message = str(info.value)
    assert message.startswith(
        "config.toml: tamiyo.decison_budget_ms: unknown key (did you mean decision_budget_ms? known keys: policy, "
    )
    assert "\n" not in message


def test_an_unknown_section_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    _write(tmp_path, '[tamyo]\npolicy = "gnn"\n')
    with pytest.raises(ConfigError) as info:
        load_config("config.toml")
    assert str(info.value) == (
        "config.toml: tamyo: unknown section (did you mean tamiyo? known: tolaria, kasmina, tamiyo, urza, tezzeret, "
        "karn, oona, nissa, simic, security, weatherlight, logging)"
    )


def test_an_unknown_top_level_key_lists_the_top_level_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    _write(tmp_path, "colour = 1\n")
    with pytest.raises(
        ConfigError, match=r"^config\.toml: colour: unknown key \(known keys: run_id, runs_dir, tolaria"
    ):
        load_config("config.toml")


def test_an_unknown_nested_key_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    _write(tmp_path, "[kasmina.breaker]\nfailures = 3\n")
    with pytest.raises(ConfigError, match=r"^config\.toml: kasmina\.breaker\.failures: unknown key \("):
        load_config("config.toml")


def test_a_missing_file_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as info:
        load_config("missing.toml")
    assert str(info.value) == "missing.toml: file not found"


def test_a_directory_is_not_readable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "conf.d").mkdir()
    with pytest.raises(ConfigError, match=r"^conf\.d: cannot read: "):
        load_config("conf.d")


def test_invalid_toml_names_the_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    _write(tmp_path, "[tolaria]\nepochs = 3\nseed = = 4\n")
    with pytest.raises(ConfigError) as info:
        load_config("config.toml")
    assert str(info.value) == "config.toml: invalid TOML at line 3: Invalid value"


def test_non_utf8_is_invalid_toml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "config.toml").write_bytes(b'run_id = "\xff"\n')
    with pytest.raises(ConfigError, match=r"^config\.toml: invalid TOML: not UTF-8 text"):
        load_config("config.toml")


def test_config_error_is_a_value_error_with_the_cause_kept(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="expected an integer") as info:
        parse_config("[tolaria]\nepochs = 0\n", "config.toml")
    assert isinstance(info.value, ConfigError)
    assert isinstance(info.value.__cause__, msgspec.ValidationError)


@pytest.mark.parametrize(
    ("override", "key", "value"),
    [
        ("tolaria.epochs=3", "tolaria.epochs", 3),
        ("tamiyo.policy=gnn", "tamiyo.policy", "gnn"),
        ('tamiyo.policy="gnn"', "tamiyo.policy", "gnn"),
        ("tolaria.lr=3e-4", "tolaria.lr", 3e-4),
        ("tolaria.compile=true", "tolaria.compile", True),
        ("kasmina.slot_targets=['Conv1d', \"features.3\"]", "kasmina.slot_targets", ["Conv1d", "features.3"]),
        (" nissa.prometheus_port = 9100 ", "nissa.prometheus_port", 9100),
        ("run_id=", "run_id", ""),
        ("urza.root=/tmp/urza store", "urza.root", "/tmp/urza store"),
    ],
)
def test_override_values_are_parsed_as_toml(override: str, key: str, value: object) -> None:
    assert parse_override(override) == (key, value)


def test_overrides_of_every_type_apply(tmp_path: Path) -> None:
    config = load_config(
        _write(tmp_path, "[tolaria]\nepochs = 20\n"),
        [
            "tolaria.epochs=3",
            "tamiyo.policy=gnn",
            "tolaria.lr=0.01",
            "tolaria.compile=true",
            "nissa.prometheus_port=9100",
            'kasmina.slot_targets=["Conv1d", "Linear"]',
            "tamiyo.inference_breaker.open_s=5",
            "run_id=demo",
            "oona.backend=redis",
        ],
    )
    assert config.tolaria.epochs == 3
    assert config.tamiyo.policy == "gnn"
    assert config.tolaria.lr == 0.01
    assert config.tolaria.compile is True
    assert config.nissa.prometheus_port == 9100
    assert config.kasmina.slot_targets == ("Conv1d", "Linear")
    assert config.tamiyo.inference_breaker.open_s == 5.0
    assert config.run_id == "demo"
    assert config.oona.backend == "redis"


def test_later_overrides_win_and_the_input_is_untouched() -> None:
    base = RunConfig()
    changed = apply_overrides(base, ["tolaria.epochs=3", "tolaria.epochs=4"])
    assert changed.tolaria.epochs == 4
    assert base.tolaria.epochs == 10


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("tolaria.epochs=abc", '--set tolaria.epochs=abc: tolaria.epochs: expected an integer >= 1, got "abc"'),
        ("tolaria.epochs=0", "--set tolaria.epochs=0: tolaria.epochs: expected an integer >= 1, got 0"),
        ("tolaria.epochs", "--set tolaria.epochs: expected section.key=value"),
        ("9lives=1", "--set 9lives=1: '9lives' is not a dotted key such as tolaria.epochs"),
        ("run_id.x=1", "--set run_id.x=1: run_id: not a table, cannot set run_id.x"),
        ("tolaria.dataset=npz", '--set tolaria.dataset=npz: tolaria: dataset = "npz" needs npz_path'),
        (
            "oona.backend=kafka",
            '--set oona.backend=kafka: oona.backend: expected one of "inproc", "redis", got "kafka"',
        ),
    ],
)
def test_a_bad_override_names_itself(override: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        apply_overrides(RunConfig(), [override])
    assert str(info.value) == message


def test_cross_field_rules_do_not_depend_on_override_order() -> None:
    for order in (["tolaria.dataset=npz", "tolaria.npz_path=d.npz"], ["tolaria.npz_path=d.npz", "tolaria.dataset=npz"]):
        config = apply_overrides(RunConfig(), order)
        assert (config.tolaria.dataset, config.tolaria.npz_path) == ("npz", "d.npz")
    with pytest.raises(ConfigError) as info:
        apply_overrides(RunConfig(), ["tolaria.epochs=2", "oona.queue_depth_recovery=5000", "tamiyo.policy=gnn"])
    assert str(info.value).startswith("--set oona.queue_depth_recovery=5000: oona.queue_depth_recovery: 5000 must")


@pytest.mark.parametrize(
    ("overrides", "blamed"),
    [
        (["tolaria.dataset=npz", "tolaria.epochs=3"], "--set tolaria.dataset=npz"),
        (["tolaria.epochs=3", "tolaria.dataset=npz", "tolaria.lr=0.1"], "--set tolaria.dataset=npz"),
        (["tolaria={dataset='npz', epochs=3}", "tolaria.lr=0.1"], "--set tolaria={dataset='npz', epochs=3}"),
    ],
)
def test_a_table_rule_blames_the_override_that_set_a_key_it_names(overrides: list[str], blamed: str) -> None:
    """The last override of the table was blamed: "--set tolaria.epochs=3: tolaria: dataset = "npz" needs npz_path"."""
    with pytest.raises(ConfigError) as info:
        apply_overrides(RunConfig(), overrides)
    assert str(info.value) == f'{blamed}: tolaria: dataset = "npz" needs npz_path'


def test_an_override_of_an_unknown_key_or_section_is_refused() -> None:
    with pytest.raises(
        ConfigError, match=r"^--set tolaria\.epcohs=1: tolaria\.epcohs: unknown key \(did you mean epochs\?"
    ):
        apply_overrides(RunConfig(), ["tolaria.epcohs=1"])
    with pytest.raises(ConfigError, match=r"^--set tamyo\.policy=gnn: tamyo: unknown section \(did you mean tamiyo\?"):
        apply_overrides(RunConfig(), ["tamyo.policy=gnn"])


def test_the_override_source_label_is_configurable() -> None:
    with pytest.raises(
        ConfigError,
        match=r"^ESPER_SET tolaria\.seed=-1: tolaria\.seed: expected an integer between 0 and 4294967295, got -1$",
    ):
        apply_overrides(RunConfig(), ["tolaria.seed=-1"], source="ESPER_SET")


def test_dump_then_load_gives_the_same_config(tmp_path: Path) -> None:
    configs = [
        RunConfig(),
        load_config(
            None,
            [
                "run_id=run-7",
                "tolaria.epochs=3",
                "tolaria.dataset=npz",
                'tolaria.npz_path="data/x \\"quoted\\" \\\\ ok.npz"',
                "tolaria.epoch_budget_ms=250",
                "tamiyo.policy=gnn",
                "tamiyo.gnn_checkpoint=ckpt/policy.safetensors",
                "nissa.prometheus_port=9100",
                'kasmina.slot_targets=["Conv1d", "blocks.0.mlp", "ünïcode\\ttab"]',
                "tolaria.lr=1e-5",
                "kasmina.g4_min_improvement=0.5",
            ],
        ),
    ]
    for config in configs:
        text = dump_config(config)
        assert parse_config(text, "dumped.toml") == config
        path = _write(tmp_path, text, "resolved.toml")
        assert load_config(path) == config
    assert "prometheus_port" not in dump_config(RunConfig())
    assert "prometheus_port = 9100" in dump_config(configs[1])


def test_dump_is_toml_with_one_table_per_section() -> None:
    text = dump_config(RunConfig())
    assert text.startswith('runs_dir = "runs"\n\n[tolaria]\nepochs = 10\n')
    assert "\n[kasmina.breaker]\nfailure_threshold = 3\n" in text
    assert "null" not in text
    assert text.endswith("\n")


def _keys(info: mi.StructType, accept: Callable[[mi.Type, str], bool], path: tuple[str, ...] = ()) -> list[str]:
    """The dotted config keys whose type and name ``accept`` takes, in every section."""
    keys: list[str] = []
    for f in info.fields:
        kind = f.type
        if isinstance(kind, mi.UnionType):
            kind = next(t for t in kind.types if not isinstance(t, mi.NoneType))
        if isinstance(kind, mi.StructType):
            keys += _keys(kind, accept, (*path, f.encode_name))
        elif accept(kind, f.encode_name):
            keys.append(".".join((*path, f.encode_name)))
    return keys


def _int_keys(info: mi.StructType) -> list[str]:
    return _keys(info, lambda kind, _: isinstance(kind, mi.IntType))


def _duration_keys(info: mi.StructType) -> list[str]:
    return _keys(info, lambda kind, name: isinstance(kind, mi.FloatType) and name.endswith(("_s", "_ms")))


_RUN_INFO = mi.type_info(RunConfig)
assert isinstance(_RUN_INFO, mi.StructType)


@pytest.mark.parametrize("key", _int_keys(_RUN_INFO))
def test_no_integer_key_takes_a_value_beyond_64_bits(key: str) -> None:
    """99999999999999999999999 passed validation for every integer key, then overflowed at run time (exit 1), or
    left Tamiyo unable to write its state at the stop (exit 0)."""
    huge = "99999999999999999999999"
    with pytest.raises(ConfigError) as info:
        apply_overrides(RunConfig(), [f"{key}={huge}"])
    message = str(info.value)
    assert message.startswith(f"--set {key}={huge}: {key}: expected an integer "), message
    assert message.endswith(f", got {huge}")


@pytest.mark.parametrize("key", _duration_keys(_RUN_INFO))
def test_no_duration_key_takes_a_wait_the_clock_cannot_hold(key: str) -> None:
    """1e308 passed validation for every time key (a deadline, a budget, a window), and a wait that long overflows the
    platform's clock (OverflowError: timestamp out of range) when it is reached."""
    with pytest.raises(ConfigError) as info:
        apply_overrides(RunConfig(), [f"{key}=1e308"])
    limit = "1000000000000" if key.endswith("_ms") else "1000000000"
    message = str(info.value)
    assert f"{key}: expected a number " in message
    assert message.endswith(f" 0 and at most {limit} (about 31 years), got 1e+308"), message


def test_the_64_bit_limit_is_said_only_to_a_value_beyond_it() -> None:
    with pytest.raises(ConfigError) as info:
        apply_overrides(RunConfig(), ["kasmina.g2_window_steps=9223372036854775808"])
    assert str(info.value) == (
        "--set kasmina.g2_window_steps=9223372036854775808: kasmina.g2_window_steps: expected an integer >= 1 and at"
        " most 9223372036854775807 (2**63 - 1), got 9223372036854775808"
    )
    assert apply_overrides(RunConfig(), ["kasmina.g2_window_steps=9223372036854775807"]).kasmina.g2_window_steps == (
        2**63 - 1
    )


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "tolaria.seed=18446744073709551616",  # torch.manual_seed overflowed (exit 1, run directory made)
            "tolaria.seed: expected an integer between 0 and 4294967295, got 18446744073709551616",
        ),
        (
            "tolaria.snapshot_memory_cap_mb=1e308",  # the byte count overflowed
            "tolaria.snapshot_memory_cap_mb: expected a number between 0 and 16777216, got 1e+308",
        ),
        (
            "kasmina.seed_memory_budget_mb=1e308",
            "kasmina.seed_memory_budget_mb: expected a number > 0 and <= 16777216, got 1e+308",
        ),
        (
            "tolaria.num_threads=100000",  # segfaulted (exit 139)
            "tolaria.num_threads: expected an integer between 1 and 256, got 100000",
        ),
        (
            "oona.topic_capacity=1000",  # the bus's limits raised a ValueError traceback
            "oona.queue_depth_high: 4000 must not exceed oona.topic_capacity (1000): a topic holds no more",
        ),
        (
            "weatherlight.restart_backoff_max_s=0",  # the supervisor raised a ValueError traceback
            "weatherlight.restart_backoff_max_s: 0.0 must not be below weatherlight.restart_backoff_initial_s (0.1)",
        ),
        ('oona.stream_prefix=""', 'oona.stream_prefix: expected a non-empty string, got ""'),
    ],
)
def test_values_that_failed_the_run_after_it_started_are_refused_by_the_schema(override: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        apply_overrides(RunConfig(), [override])
    assert str(info.value) == f"--set {override}: {message}"


def test_amp_is_refused_with_an_explicit_fp32_and_accepted_otherwise() -> None:
    with pytest.raises(ConfigError) as info:
        apply_overrides(RunConfig(), ["tolaria.amp=true", 'tolaria.precision="fp32"'])
    assert str(info.value) == (
        '--set tolaria.amp=true: tolaria.amp: true asks for bf16 autocast, but tolaria.precision = "fp32" asks for '
        'none: set amp = false for fp32, or precision = "bf16"'
    )
    for overrides in (
        ["tolaria.amp=true"],
        ['tolaria.precision="fp32"'],
        ["tolaria.amp=true", 'tolaria.precision="bf16"'],
    ):
        apply_overrides(RunConfig(), overrides)


def test_an_inline_table_sets_its_keys_and_keeps_the_others(tmp_path: Path) -> None:
    """``--set tolaria={epochs=1}`` replaced the whole table: the file's lr went back to the default."""
    path = _write(tmp_path, "[tolaria]\nlr = 0.003\nepochs = 50\n[kasmina.breaker]\nopen_s = 7.0\n")
    config = load_config(path, ["tolaria={epochs=1}", "kasmina={breaker={failure_threshold=9}}"])
    assert (config.tolaria.epochs, config.tolaria.lr) == (1, 0.003)
    assert (config.kasmina.breaker.failure_threshold, config.kasmina.breaker.open_s) == (9, 7.0)
    # An array is a value, not a table: it is replaced whole.
    config = load_config(path, ['kasmina.slot_targets=["blocks.0"]', 'kasmina.slot_targets=["blocks.1"]'])
    assert config.kasmina.slot_targets == ("blocks.1",)


@pytest.mark.parametrize(
    ("override", "hint"),
    [
        ('tolaria.policy="gnn"', "did you mean tamiyo.policy? "),
        ("tamiyo.lr=0.1", "did you mean tolaria.lr or simic.lr? "),
        ("policy=1", "did you mean tamiyo.policy? "),
    ],
)
def test_a_key_in_the_wrong_section_names_the_section_it_belongs_to(override: str, hint: str) -> None:
    key = override.partition("=")[0]
    with pytest.raises(ConfigError) as info:
        apply_overrides(RunConfig(), [override])
    assert str(info.value).startswith(f"--set {override}: {key}: unknown key ({hint}known keys: ")


def test_a_number_given_to_a_string_key_says_how_to_quote_it() -> None:
    with pytest.raises(ConfigError) as info:
        apply_overrides(RunConfig(), ["run_id=123"])
    assert str(info.value) == (
        "--set run_id=123: run_id: expected a string, got 123 (a string: quote it, --set 'run_id=\"123\"')"
    )
    with pytest.raises(ConfigError) as info:  # a file's value is quoted in the file: no command-line hint
        parse_config("run_id = 123\n", "c.toml")
    assert str(info.value) == "c.toml: run_id: expected a string, got 123"
    with pytest.raises(ConfigError) as info:  # a key with its own words (Meta extra) is still a string key
        apply_overrides(RunConfig(), ["tolaria.host_model=123"])
    assert str(info.value).endswith(", got 123 (a string: quote it, --set 'tolaria.host_model=\"123\"')")


@pytest.mark.parametrize("item", [1, None, ("tolaria.epochs", 1)])
def test_an_override_that_is_not_a_string_is_a_type_error_naming_it(item: object) -> None:
    with pytest.raises(TypeError) as info:
        apply_overrides(RunConfig(), ["tolaria.epochs=2", item])  # type: ignore[list-item]  # what is tested
    assert str(info.value) == f"overrides[1]: expected a 'section.key=value' string, got {item!r}"


@pytest.mark.parametrize("value", ["0", "-5", '"big"'])
def test_the_parameter_budget_takes_a_positive_integer(value: str) -> None:
    assert RunConfig().tamiyo.max_added_parameters is None
    assert apply_overrides(RunConfig(), ["tamiyo.max_added_parameters=50000"]).tamiyo.max_added_parameters == 50000
    with pytest.raises(ConfigError) as info:
        apply_overrides(RunConfig(), [f"tamiyo.max_added_parameters={value}"])
    assert str(info.value) == (
        f"--set tamiyo.max_added_parameters={value}: tamiyo.max_added_parameters: expected an integer >= 1, got {value}"
    )


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("tolaria.warmup_steps=-1", "tolaria.warmup_steps: expected an integer >= 0, got -1"),
        (
            'tolaria.lr_schedule="step"',
            'tolaria.lr_schedule: expected one of "constant", "cosine", "linear", got "step"',
        ),
        ("tolaria.lr_min_factor=1.5", "tolaria.lr_min_factor: expected a number between 0 and 1, got 1.5"),
        ("tolaria.grad_clip_norm=0", "tolaria.grad_clip_norm: expected a number > 0, got 0"),
        ("tolaria.grad_clip_norm=inf", "tolaria.grad_clip_norm: expected a finite number, got inf"),
        (
            # The floor of a decay, with no decay: it would do nothing.
            "tolaria.lr_min_factor=0.1",
            'tolaria.lr_min_factor: is read only with lr_schedule = "cosine" or "linear", and lr_schedule is'
            " 'constant'",
        ),
    ],
)
def test_a_bad_learning_rate_schedule_or_clip_is_one_line_naming_key_and_value(override: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        apply_overrides(RunConfig(), [override])
    assert str(info.value) == f"--set {override}: {message}"


def test_a_schedule_with_warmup_floor_and_clipping_is_accepted_and_round_trips(tmp_path: Path) -> None:
    overrides = [
        'tolaria.lr_schedule="linear"',
        "tolaria.warmup_steps=50",
        "tolaria.lr_min_factor=0.1",
        "tolaria.grad_clip_norm=1.5",
    ]
    config = apply_overrides(RunConfig(), overrides)
    assert (config.tolaria.lr_schedule, config.tolaria.warmup_steps) == ("linear", 50)
    assert (config.tolaria.lr_min_factor, config.tolaria.grad_clip_norm) == (0.1, 1.5)
    assert load_config(_write(tmp_path, dump_config(config))) == config
    assert RunConfig().tolaria.grad_clip_norm is None  # unset: no clipping


def test_a_negative_g4_minimum_is_refused_but_a_written_one_reads_as_the_zero_it_gated_as(tmp_path: Path) -> None:
    """G4 passes a seed only when its mean benefit is above a multiple of its standard error, so above 0: a
    kasmina.g4_min_improvement of -10 was accepted and gated exactly as 0 (rC: the same no_benefit cull as the
    default run). A run directory an earlier version wrote with one is still resumed, as the run it was."""
    with pytest.raises(ConfigError) as info:
        apply_overrides(RunConfig(), ["kasmina.g4_min_improvement=-10.0"])
    assert str(info.value) == (
        "--set kasmina.g4_min_improvement=-10.0: kasmina.g4_min_improvement: expected a number >= 0, got -10.0 (G4"
        " passes a seed only when its mean benefit is above a multiple of its standard error, so above 0: a negative"
        " minimum would do nothing)"
    )
    with pytest.raises(ConfigError, match=r"^config\.toml: kasmina\.g4_min_improvement: expected a number >= 0"):
        parse_config("[kasmina]\ng4_min_improvement = -0.5\n", "config.toml")
    assert apply_overrides(RunConfig(), ["kasmina.g4_min_improvement=0.01"]).kasmina.g4_min_improvement == 0.01
    written = _write(
        tmp_path, dump_config(RunConfig()).replace("g4_min_improvement = 0.0", "g4_min_improvement = -10.0")
    )
    assert load_config(written, written=True) == RunConfig()


def test_a_normaliser_weight_of_0_is_refused_at_load() -> None:
    """tamiyo.normaliser_alpha = 0 passed the config (a fraction in [0, 1]) and the GNN run failed to start, after its
    directory was made: "tamiyo could not be built: ValueError: alpha must be in (0, 1], got 0.0", naming no key."""
    with pytest.raises(ConfigError) as info:
        apply_overrides(RunConfig(), ["tamiyo.policy=gnn", "tamiyo.normaliser_alpha=0.0"])
    assert str(info.value) == (
        "--set tamiyo.normaliser_alpha=0.0: tamiyo.normaliser_alpha: expected a number > 0 and <= 1, got 0.0 (the GNN"
        " policy's feature normaliser would never learn)"
    )
    gnn = apply_overrides(RunConfig(), ["tamiyo.policy=gnn", "tamiyo.normaliser_alpha=1.0"])
    assert gnn.tamiyo.normaliser_alpha == 1.0
    # A heuristic run an earlier version wrote with it (the key unread there) is still read.
    text = dump_config(RunConfig()).replace("normaliser_alpha = 0.1", "normaliser_alpha = 0.0")
    assert "normaliser_alpha = 0.0" in text
    assert parse_config(text, "run/config.toml", written=True) == RunConfig()


def test_prometheus_port_0_is_any_free_port(tmp_path: Path) -> None:
    """Port 0 was refused ("expected an integer between 1 and 65535"): it asks for any free port, as sockets do."""
    config = load_config(_write(tmp_path, "[nissa]\nprometheus_port = 0\n"), [])
    assert config.nissa.prometheus_port == 0
    with pytest.raises(ConfigError, match=r"nissa\.prometheus_port: expected an integer between 0 and 65535, got -1$"):
        load_config(_write(tmp_path, "[nissa]\nprometheus_port = -1\n"), [])


def test_a_mailbox_too_small_for_the_trainers_unwaited_sends_is_refused() -> None:
    # At 1 or 2 the trainer's packets and receipts to Kasmina were lost to a full mailbox and the result changed.
    with pytest.raises(ConfigError) as info:
        apply_overrides(RunConfig(), ["weatherlight.mailbox_capacity=2"])
    assert str(info.value) == (
        "--set weatherlight.mailbox_capacity=2: weatherlight.mailbox_capacity: expected an integer >= 64, got 2"
    )
    assert apply_overrides(RunConfig(), ["weatherlight.mailbox_capacity=64"]).weatherlight.mailbox_capacity == 64
