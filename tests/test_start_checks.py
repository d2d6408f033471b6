"""esper.start_checks: the warnings a run starts with when a setting it accepts defeats it."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from structlog.testing import capture_logs

from actors.karn.catalogue import KarnCatalogue, TierPolicy
from esper.config import apply_overrides
from esper.logs import reset_logging
from esper.nn.blueprints import default_catalogue
from esper.run import start
from esper.start_checks import (
    warn_at_start,
    warn_gradientless_slots,
    warn_no_blueprint,
    warn_slot_targets_override,
    warn_unreachable_strain,
)
from schemas.config import RunConfig

if TYPE_CHECKING:
    from collections.abc import Mapping, MutableMapping
    from pathlib import Path

    from actors.karn.catalogue import Standing
    from schemas.kernels import SlotKind


def _warnings(overrides: list[str], steps_per_epoch: int, cpus: int | None) -> list[MutableMapping[str, Any]]:
    reset_logging()
    with capture_logs() as logs:
        warn_at_start(apply_overrides(RunConfig(), overrides), steps_per_epoch, cpus)
    return logs


def test_a_command_lag_no_shorter_than_the_run_is_said() -> None:
    """command_lag_steps=100000 on a 600-step run completed with nothing ever applied, and nothing said so."""
    [logged] = _warnings(["tolaria.epochs=30", "tolaria.command_lag_steps=600"], steps_per_epoch=20, cpus=2)
    assert (logged["event"], logged["log_level"]) == ("command_lag_outlasts_run", "warning")
    assert (logged["command_lag_steps"], logged["run_steps"]) == (600, 600)
    assert logged["detail"] == (
        "tolaria.command_lag_steps = 600 is not shorter than the run (30 epochs x 20 steps): no decision of the"
        " controller can take effect"
    )
    assert _warnings(["tolaria.epochs=30", "tolaria.command_lag_steps=599"], steps_per_epoch=20, cpus=2) == []


def test_a_run_of_one_epoch_is_not_called_1_epochs() -> None:
    overrides = ["tolaria.epochs=1", "tolaria.command_lag_steps=8", "tolaria.warmup_steps=9"]
    lag, warmup = _warnings(overrides, steps_per_epoch=1, cpus=2)
    assert "(1 epoch x 1 step):" in lag["detail"]
    assert "(1 epoch x 1 step):" in warmup["detail"]


def test_more_training_threads_than_cpus_is_said() -> None:
    """64 threads on 2 cores made every epoch 37 times slower."""
    [logged] = _warnings(["tolaria.num_threads=64"], steps_per_epoch=20, cpus=2)
    assert (logged["event"], logged["num_threads"], logged["cpus"]) == ("num_threads_above_cpus", 64, 2)
    assert _warnings(["tolaria.num_threads=2"], steps_per_epoch=20, cpus=2) == []
    assert _warnings(["tolaria.num_threads=64"], steps_per_epoch=20, cpus=None) == []
    assert _warnings([], steps_per_epoch=20, cpus=1) == []


def test_a_host_factory_in_main_is_said() -> None:
    """A notebook's ``__main__:make`` trained, but load_model, export and --resume from another process then failed
    ("module '__main__' has no callable 'make'"), and nothing said so at the start."""
    [logged] = _warnings(['tolaria.host_model="__main__:make"'], steps_per_epoch=20, cpus=2)
    assert (logged["event"], logged["log_level"], logged["host_model"]) == (
        "host_factory_in_main",
        "warning",
        "__main__:make",
    )
    assert logged["detail"] == (
        "tolaria.host_model = '__main__:make': the factory lives in __main__ (this script or notebook), so load_model,"
        " export and --resume from another process cannot rebuild the model: move it to an importable module"
    )
    assert _warnings(['tolaria.host_model="tests.tolaria_factories:tiny_mlp"'], steps_per_epoch=20, cpus=2) == []
    assert _warnings(['tolaria.host_model="mymain:make"'], steps_per_epoch=20, cpus=2) == []


def test_a_halt_before_the_epoch_breaker_can_open_is_said() -> None:
    """The emergency ladder climbs L2, L3 (the breaker opens: a rollback), L4; a streak that halts before the breaker
    can open skips L3, and nothing said so."""
    [logged] = _warnings(["tolaria.failed_epochs_to_halt=2"], steps_per_epoch=20, cpus=2)
    assert (logged["event"], logged["log_level"]) == ("ladder_skips_l3", "warning")
    assert logged["detail"] == (
        "tolaria.failed_epochs_to_halt = 2 is below tolaria.breaker.failure_threshold = 3: epochs that keep failing"
        " halt the run (L4) before the breaker opens, with no rollback (L3) first"
    )
    # Equal: the failure that opens the breaker rolls back first (actors/tolaria/emergencies.py).
    assert _warnings(["tolaria.failed_epochs_to_halt=2", "tolaria.breaker.failure_threshold=2"], 20, 2) == []
    assert _warnings([], steps_per_epoch=20, cpus=2) == []


def _offer_warnings(
    overrides: list[str],
    kinds: set[SlotKind],
    standings: Mapping[str, tuple[Standing, str]] | None = None,
) -> list[MutableMapping[str, Any]]:
    config = apply_overrides(RunConfig(), overrides)
    catalogue = default_catalogue()
    karn = KarnCatalogue.from_config(catalogue, config.karn, standings=standings)
    reset_logging()
    with capture_logs() as logs:
        warn_no_blueprint(config, karn, TierPolicy.from_config(config.karn), kinds, catalogue)
    return logs


def test_a_blueprint_selection_that_fits_no_slot_is_said_with_the_blueprints_that_would() -> None:
    """karn.include = ["BP007"] on the CNN's conv1d slots trained the whole run, every decision no_candidate, without
    a word."""
    [logged] = _offer_warnings(['karn.include=["BP007"]'], {"conv1d"})
    assert (logged["event"], logged["log_level"]) == ("no_blueprint_offered", "warning")
    assert (logged["slot_kinds"], logged["blueprints"]) == (["conv1d"], ["BP007"])
    assert logged["detail"] == (
        "no blueprint can be offered for this host's conv1d slots, so nothing will grow: karn.include = ['BP007']"
        " leaves BP007; none of them fits a conv1d slot (without the selection: BP001, BP002, BP004, BP005, BP006,"
        " BP008)"
    )
    [logged] = _offer_warnings(['karn.exclude=["BP001", "BP002", "BP003", "BP007", "BP008", "BP010"]'], {"flat"})
    assert logged["detail"].endswith(
        "karn.exclude = ['BP001', 'BP002', 'BP003', 'BP007', 'BP008', 'BP010'] leaves BP004, BP005, BP006, BP009,"
        " BP011; none of them fits a flat slot (without the selection: BP001, BP002, BP003, BP007)"
    )


def test_blueprints_that_fit_but_may_not_be_offered_are_named_with_the_reason() -> None:
    [logged] = _offer_warnings(
        ['karn.include=["BP005", "BP009", "BP011"]'], {"conv1d"}, {"BP005": ("failed", "timeout")}
    )
    assert logged["detail"] == (
        "no blueprint can be offered for this host's conv1d slots, so nothing will grow: karn.include = ['BP005',"
        " 'BP009', 'BP011'] leaves BP005, BP009, BP011; BP005 is marked failed in the artifact store (urza.root):"
        " timeout; BP009 is HIGH_RISK; BP011 is quarantine_only"
    )


def test_no_warning_while_some_slot_kind_has_a_blueprint_or_growth_is_off() -> None:
    assert _offer_warnings([], {"conv1d", "flat"}) == []
    assert _offer_warnings(['karn.include=["BP007"]'], {"conv1d", "flat"}) == []  # the flat slots can grow
    assert _offer_warnings(['karn.include=["BP007"]', "kasmina.max_active_seeds=0"], {"conv1d"}) == []


async def _warned_at_start(tmp_path: Path, tables: str, event: str) -> dict[str, Any]:
    """The one ``event`` line of a completed one-epoch run of a 300-sample MNIST-1D with ``tables`` added to its
    config (a [tolaria] table's keys go first)."""
    path = tmp_path / "c.toml"
    path.write_text(
        f"""
[tolaria]
epochs = 1
dataset_samples = 300
{tables}
[urza]
root = "{tmp_path / "urza"}"
[logging]
console = false
""",
        encoding="utf-8",
    )
    summary = await (await start(path, tmp_path / "run")).wait()
    assert summary.status == "completed", summary.error
    lines = (tmp_path / "run" / "events.jsonl").read_text(encoding="utf-8").splitlines()
    [warned] = [json.loads(line) for line in lines if f'"{event}"' in line]
    return warned  # type: ignore[no-any-return]


async def test_a_run_whose_blueprint_selection_fits_no_slot_starts_with_the_warning(tmp_path: Path) -> None:
    warned = await _warned_at_start(tmp_path, '[karn]\ninclude = ["BP007"]', "no_blueprint_offered")
    assert (warned["level"], warned["blueprints"]) == ("warning", ["BP007"])


def test_a_warmup_longer_than_the_run_is_said_not_refused() -> None:
    """The rate never reaches tolaria.lr: allowed (a smoke run of a few steps), but said at the start."""
    [logged] = _warnings(["tolaria.epochs=3", "tolaria.warmup_steps=61"], steps_per_epoch=20, cpus=2)
    assert (logged["event"], logged["log_level"]) == ("warmup_outlasts_run", "warning")
    assert (logged["warmup_steps"], logged["run_steps"]) == (61, 60)
    assert logged["detail"] == (
        "tolaria.warmup_steps = 61 is longer than the run (3 epochs x 20 steps): the learning rate never"
        " reaches tolaria.lr"
    )
    # The last step of a warm-up as long as the run learns at the full rate: (59 + 1) / 60.
    assert _warnings(["tolaria.epochs=3", "tolaria.warmup_steps=60"], steps_per_epoch=20, cpus=2) == []


def _strain_warnings(overrides: list[str], slots: list[str], layers: list[str]) -> list[MutableMapping[str, Any]]:
    reset_logging()
    with capture_logs() as logs:
        warn_unreachable_strain(apply_overrides(RunConfig(), overrides), slots, layers)
    return logs


def test_a_strain_threshold_no_slot_can_reach_is_said() -> None:
    """A slot's strain is its layer's gradient norm over the mean of the host's layers, so at most their count: on a
    one-layer host with tamiyo.germinate_min_constraint = 1.5 the heuristic said no_strained_slot at every plateau,
    and nothing said why."""
    [logged] = _strain_warnings(["tamiyo.germinate_min_constraint=1.5"], ["1"], ["1"])
    assert (logged["event"], logged["log_level"]) == ("strain_unreachable", "warning")
    assert (logged["germinate_min_constraint"], logged["layers"], logged["slots"]) == (1.5, ["1"], 1)
    assert logged["detail"] == (
        "tamiyo.germinate_min_constraint = 1.5 is above the host's 1 layer with gradients ('1'): a slot's strain (its"
        " layer's gradient norm over their mean) is at most 1, so the heuristic never grows a seed (no_strained_slot):"
        " lower tamiyo.germinate_min_constraint below 1, or add slot targets after other layers with parameters (each"
        " is a layer of its own)"
    )
    [logged] = _strain_warnings(["tamiyo.germinate_min_constraint=2.5"], ["b"], ["a", "b"])
    assert "the host's 2 layers with gradients ('a', 'b'): " in logged["detail"]


def test_no_strain_warning_while_a_slot_can_reach_the_threshold_or_it_does_not_apply() -> None:
    assert _strain_warnings(["tamiyo.germinate_min_constraint=1.0"], ["1"], ["1"]) == []  # exactly 1.0: it grows
    assert _strain_warnings(["tamiyo.germinate_min_constraint=1.5"], ["b"], ["a", "b"]) == []
    # No slot's layer reports a gradient norm (a ReLU slot): no slot has a strain, and the key is not applied.
    assert _strain_warnings(["tamiyo.germinate_min_constraint=1.5"], ["2"], ["1"]) == []
    assert _strain_warnings(["tamiyo.germinate_min_constraint=1.5", 'tamiyo.policy="every_k"'], ["1"], ["1"]) == []
    assert _strain_warnings(["tamiyo.germinate_min_constraint=1.5", "kasmina.max_active_seeds=0"], ["1"], ["1"]) == []


async def test_a_run_on_a_host_whose_slots_cannot_be_strained_enough_starts_with_the_warning(tmp_path: Path) -> None:
    """The layers are those the state packets report: the wrapped host's parameters by slot target or top module."""
    tables = 'host_model = "tests.tolaria_factories:one_layer_model"\n[tamiyo]\ngerminate_min_constraint = 1.5'
    warned = await _warned_at_start(tmp_path, tables, "strain_unreachable")
    assert (warned["level"], warned["layers"], warned["slots"]) == ("warning", ["1"], 1)


def _gradientless_warnings(overrides: list[str], slots: list[str], layers: list[str]) -> list[MutableMapping[str, Any]]:
    reset_logging()
    with capture_logs() as logs:
        warn_gradientless_slots(apply_overrides(RunConfig(), overrides), slots, layers)
    return logs


def test_slots_whose_layer_has_no_gradient_are_named_for_the_heuristic() -> None:
    """A slot after a ReLU (or a frozen layer) has a strain of 0 while another slot's layer has gradients, so the
    heuristic filtered it out at every germination (germinate_min_constraint) and never grew there, without a word."""
    [logged] = _gradientless_warnings([], ["l1", "r1", "r2"], ["l1", "out"])
    assert (logged["event"], logged["log_level"]) == ("slots_never_strained", "warning")
    assert (logged["slots"], logged["germinate_min_constraint"]) == (["r1", "r2"], 1.0)
    assert logged["detail"] == (
        "slot targets 'r1', 'r2' have no gradient norm in the state packets (no trainable parameter of their own: an"
        " activation, pooling or dropout module, a frozen layer), so a strain of 0, below"
        " tamiyo.germinate_min_constraint = 1.0: the heuristic policy never grows a seed there (every_k and gnn do"
        " not weigh strain); target the layer with parameters before it instead"
    )
    [logged] = _gradientless_warnings(["tamiyo.germinate_min_constraint=0.05"], ["r1", "l3"], ["l1", "l3"])
    assert logged["detail"].startswith("slot target 'r1' has no gradient norm in the state packets (no trainable")
    assert "of its own" in logged["detail"]


def test_no_gradientless_slot_warning_where_strain_is_not_what_decides() -> None:
    assert _gradientless_warnings([], ["l1", "l2"], ["l1", "l2"]) == []  # every slot has a strain
    # No slot's layer reports a gradient norm: no slot has a strain, and the heuristic applies no threshold.
    assert _gradientless_warnings([], ["r1", "r2"], ["l1"]) == []
    # A threshold of 0 keeps a slot of strain 0; every_k and the GNN do not weigh strain; no growth at all.
    assert _gradientless_warnings(["tamiyo.germinate_min_constraint=0.0"], ["l1", "r1"], ["l1"]) == []
    assert _gradientless_warnings(['tamiyo.policy="every_k"'], ["l1", "r1"], ["l1"]) == []
    assert _gradientless_warnings(['tamiyo.policy="gnn"'], ["l1", "r1"], ["l1"]) == []
    assert _gradientless_warnings(["kasmina.max_active_seeds=0"], ["l1", "r1"], ["l1"]) == []


async def test_a_run_with_a_slot_after_a_relu_starts_with_the_warning(tmp_path: Path) -> None:
    """The layers are those the state packets report: the ReLU's slot has none."""
    tables = 'host_model = "tests.tolaria_factories:relu_slot_mlp"'
    warned = await _warned_at_start(tmp_path, tables, "slots_never_strained")
    assert (warned["level"], warned["slots"]) == ("warning", ["2"])


def _override_warnings(
    targets: str, slots: list[str], own: tuple[str, ...], host: str = "mine:factory"
) -> list[MutableMapping[str, Any]]:
    reset_logging()
    config = apply_overrides(RunConfig(), [f"kasmina.slot_targets={targets}", f'tolaria.host_model="{host}"'])
    with capture_logs() as logs:
        warn_slot_targets_override(config, slots, own)
    return logs


def test_slot_targets_that_replace_or_add_to_the_models_own_are_said() -> None:
    """kasmina.slot_targets silently replaced a model's own slot_targets, and silently added to the slots of a model
    its factory had wrapped already."""
    [replaced] = _override_warnings('["a"]', ["a"], ("bn", "out"))
    assert (replaced["event"], replaced["log_level"]) == ("slot_targets_override", "warning")
    assert replaced["detail"] == (
        "kasmina.slot_targets = ['a'] replaces the model's own slot_targets ['bn', 'out']: seeds may grow after ['a']"
    )
    [added] = _override_warnings('["5"]', ["1", "3", "5"], ())
    assert added["detail"] == (
        "kasmina.slot_targets = ['5'] adds to the slots the model came with, ['1', '3']: seeds may grow after"
        " ['1', '3', '5']"
    )
    assert _override_warnings('["a"]', ["a"], ("a",)) == []  # the same list: nothing replaced
    assert _override_warnings('["b", "a"]', ["a", "b"], ("a", "b")) == []  # slots follow the model's order anyway
    assert _override_warnings('["blocks.1"]', ["blocks.1"], ("blocks.0", "blocks.1", "blocks.2"), "cnn1d") == []
    assert _override_warnings('["a"]', ["a"], ()) == []
    reset_logging()
    with capture_logs() as logs:
        warn_slot_targets_override(RunConfig(), ["bn"], ("bn",))  # the model's own, no key set
    assert logs == []


async def test_a_run_whose_config_replaces_the_models_slot_targets_starts_with_the_warning(tmp_path: Path) -> None:
    tables = 'host_model = "tests.tolaria_factories:tiny_mlp"\n[kasmina]\nslot_targets = ["3"]'
    warned = await _warned_at_start(tmp_path, tables, "slot_targets_override")
    assert (warned["level"], warned["model_slot_targets"], warned["slots"]) == ("warning", ["1"], ["3"])


def test_an_artifact_wait_no_shorter_than_the_decision_deadline_is_said() -> None:
    """kasmina.artifact_wait_ms = 5000 was accepted under a 1000 ms deadline: the trainer missed the plan first."""
    [logged] = _warnings(["kasmina.artifact_wait_ms=1000"], steps_per_epoch=20, cpus=2)
    assert (logged["event"], logged["log_level"]) == ("artifact_wait_outlasts_deadline", "warning")
    assert logged["detail"] == (
        "kasmina.artifact_wait_ms = 1000 is not below tolaria.decision_deadline_ms = 1000: the trainer gives up on a"
        " plan (plan_missed) before its seed's artifact wait ends"
    )
    assert _warnings(["kasmina.artifact_wait_ms=999"], steps_per_epoch=20, cpus=2) == []
