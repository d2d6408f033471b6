"""Tests of Tamiyo's graph encoding, the EWMA normaliser and the category registries (esper.nn)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch_geometric.data import HeteroData

from esper.nn.normaliser import CategoryRegistry, EwmaNormaliser
from esper.nn.policy_graph import (
    EDGE_DIM,
    EDGE_TYPES,
    NODE_FEATURES,
    BlueprintInput,
    EncodedGraph,
    GlobalInput,
    GraphCaps,
    GraphInputs,
    GraphRegistries,
    LayerInput,
    PolicyGraphBuilder,
    SeedInput,
)

REGISTRIES = GraphRegistries.of(
    blueprints=["bp-conv", "bp-mlp", "bp-attn"], layer_types=["linear", "conv2d"], activations=["relu", "gelu"]
)


def metrics(**overrides: float | None) -> GlobalInput:
    values: dict[str, float | None] = {
        "loss": 0.9,
        "validation_loss": 1.0,
        "training_loss": 0.8,
        "gradient_norm": 2.0,
        "samples_per_s": 4000.0,
        "hook_latency_ms": 3.0,
    }
    values.update(overrides)
    return GlobalInput(epoch=2, epochs_total=10, step=500, epoch_progress=0.5, **values)


def layers(n: int) -> tuple[LayerInput, ...]:
    return tuple(
        LayerInput(
            name=f"layer{i}",
            depth=i,
            layer_type="linear",
            parameter_count=1000,
            activation="relu",
            weight_norm=1.5,
            gradient_norm=0.1,
            latency_ms=0.3,
        )
        for i in range(n)
    )


def seeds(n: int, *, depth_of: int = 4) -> tuple[SeedInput, ...]:
    return tuple(
        SeedInput(
            slot=f"slot{i}",
            stage=3 if i % 2 == 0 else 1,
            layer_depth=i % depth_of,
            occupied=i % 2 == 0,
            blueprint_id="bp-mlp" if i % 2 == 0 else None,
            learning_rate=1e-3,
            risk_score=0.2,
            gradient_norm=0.4,
            age_epochs=3,
            alpha=0.5,
            blend_allowed=True,
        )
        for i in range(n)
    )


BLUEPRINTS = (
    BlueprintInput(blueprint_id="bp-mlp", risk=0.1, tier=1, parameter_count=500),
    BlueprintInput(blueprint_id="bp-conv", risk=0.3, tier=2, parameter_count=900, validation_loss=0.7),
)


def build(inputs: GraphInputs, caps: GraphCaps | None = None) -> tuple[PolicyGraphBuilder, EncodedGraph]:
    builder = PolicyGraphBuilder(REGISTRIES, caps=caps)
    return builder, builder.build(inputs)


def assert_well_formed(data: HeteroData, counts: dict[str, int]) -> None:
    assert isinstance(data, HeteroData)
    for node_type, width in NODE_FEATURES.items():
        x = data[node_type].x
        assert x.dtype == torch.float32
        assert tuple(x.shape) == (counts[node_type], width), node_type
        assert torch.isfinite(x).all()
    for et in EDGE_TYPES:
        ei, attr = data[et].edge_index, data[et].edge_attr
        assert ei.dtype == torch.long, et
        assert ei.shape[0] == 2, et
        assert tuple(attr.shape) == (ei.shape[1], EDGE_DIM), et
        src, _, dst = et
        if ei.numel():
            assert int(ei.min()) >= 0, et
            assert int(ei[0].max()) < counts[src], et
            assert int(ei[1].max()) < counts[dst], et


@pytest.mark.parametrize("n_seeds", [0, 1, 5])
def test_encoding_shapes_for_0_1_and_several_seeds(n_seeds: int) -> None:
    """Every node type has its documented width, and every relation is present with a [2, E] index and [E, 3] attrs."""
    _, enc = build(GraphInputs(metrics=metrics(), layers=layers(3), seeds=seeds(n_seeds), blueprints=BLUEPRINTS))
    assert_well_formed(enc.data, {"global": 1, "seed": n_seeds, "blueprint": 2, "layer": 3})
    assert len(enc.seed_slots) == n_seeds


def test_zero_seeds_gives_empty_node_set_and_empty_edges() -> None:
    _, enc = build(GraphInputs(metrics=metrics(), layers=layers(2), blueprints=BLUEPRINTS))
    data = enc.data
    assert tuple(data["seed"].x.shape) == (0, NODE_FEATURES["seed"])
    for et in EDGE_TYPES:
        if "seed" in (et[0], et[2]):
            assert tuple(data[et].edge_index.shape) == (2, 0)
            assert tuple(data[et].edge_attr.shape) == (0, EDGE_DIM)


def test_missing_values_are_zero_with_presence_bit_zero() -> None:
    m = metrics(loss=None, gradient_norm=None, hook_latency_ms=float("nan"))
    seed = SeedInput(slot="s0", stage=1, layer_depth=0)
    layer = LayerInput(name="l0", depth=0, layer_type="mystery")
    _, enc = build(GraphInputs(metrics=m, layers=(layer,), seeds=(seed,), blueprints=BLUEPRINTS))
    data = enc.data
    g = data["global"].x[0]
    # (value, presence) pairs: loss, validation_loss, training_loss, gradient_norm, samples_per_s, hook_latency_ms
    assert g[0:2].tolist() == [0.0, 0.0]
    assert g[3].item() == 1.0
    assert g[5].item() == 1.0
    assert g[6:8].tolist() == [0.0, 0.0]
    assert g[10:12].tolist() == [0.0, 0.0]
    s = data["seed"].x[0]
    for value, bit in ((0, 1), (2, 3), (4, 5), (6, 7)):  # lr, risk, grad norm, age all missing
        assert s[value].item() == 0.0
        assert s[bit].item() == 0.0
    lay = data["layer"].x[0]
    assert lay[6].item() == 0.0
    assert lay[7].item() == 0.0
    assert lay[8].item() == 0.0
    assert lay[9].item() == 0.0
    assert lay[1:3].tolist() == [0.0, 0.0]  # no latency
    assert 0.0 < enc.feature_coverage < 1.0


def test_full_inputs_have_full_coverage() -> None:
    _, enc = build(GraphInputs(metrics=metrics(), layers=layers(2), seeds=seeds(2), blueprints=BLUEPRINTS[:1]))
    assert enc.feature_coverage == 1.0
    full_bp = BlueprintInput(
        blueprint_id="bp-mlp", risk=0.1, tier=1, parameter_count=5, validation_loss=0.5, training_loss=0.4
    )
    _, enc = build(GraphInputs(metrics=metrics(), layers=layers(2), seeds=seeds(2), blueprints=(full_bp,)))
    assert enc.feature_coverage == 1.0


def test_coverage_counts_only_what_the_state_should_carry() -> None:
    """Counting every optional input, a healthy run's graph covered about 0.55 (dormant slots have no seed figures,
    untried blueprints no losses, the policy leaves the timings out): the coverage alert (< 0.7) would always fire."""
    dormant = SeedInput(slot="free", stage=1, layer_depth=0, occupied=False)  # no figures, none expected
    mid_epoch = metrics(validation_loss=None)  # measured at epoch ends only
    untimed = GraphInputs(
        metrics=metrics(samples_per_s=None, hook_latency_ms=None),
        layers=tuple(dataclasses.replace(lay, latency_ms=None) for lay in layers(2)),
        seeds=seeds(1),
        blueprints=BLUEPRINTS[:1],
        timings=False,
    )
    for inputs in (
        GraphInputs(metrics=mid_epoch, layers=layers(2), seeds=(*seeds(1), dormant), blueprints=BLUEPRINTS[:1]),
        untimed,
    ):
        assert build(inputs)[1].feature_coverage == 1.0
    at_epoch_end = dataclasses.replace(mid_epoch, epoch_progress=1.0)
    live_without_figures = SeedInput(slot="s", stage=3, layer_depth=0, occupied=True, blueprint_id="bp-mlp")
    for inputs in (
        GraphInputs(metrics=at_epoch_end, layers=layers(2), seeds=seeds(1), blueprints=BLUEPRINTS[:1]),
        GraphInputs(metrics=metrics(), layers=layers(2), seeds=(live_without_figures,), blueprints=BLUEPRINTS[:1]),
        dataclasses.replace(untimed, timings=True),
    ):
        assert build(inputs)[1].feature_coverage < 1.0


def test_layer_cap_drops_nodes_and_their_edges_without_dangling() -> None:
    inputs = GraphInputs(
        metrics=metrics(),
        layers=layers(12),
        seeds=seeds(10, depth_of=12),
        blueprints=BLUEPRINTS,
        layer_edges=tuple((f"layer{i}", f"layer{j}") for i in range(12) for j in range(12) if i < j),
    )
    _, enc = build(inputs, GraphCaps(max_layers=4, max_seeds=6))
    data = enc.data
    assert_well_formed(data, {"global": 1, "seed": 6, "blueprint": 2, "layer": 4})
    # Layers hosting occupied seeds are kept first.
    kept_depths = {int(name.removeprefix("layer")) for name in enc.layer_names}
    assert kept_depths == {0, 2, 4, 6}
    assert data["layer", "connects", "layer"].edge_index.shape[1] == 6  # all pairs among the 4 kept layers


def test_seed_cap_keeps_occupied_slots_first() -> None:
    _, enc = build(
        GraphInputs(metrics=metrics(), layers=layers(4), seeds=seeds(10), blueprints=BLUEPRINTS),
        GraphCaps(max_seeds=5),
    )
    assert enc.seed_slots == ("slot0", "slot2", "slot4", "slot6", "slot8")


def test_unknown_layer_edges_are_dropped() -> None:
    inputs = GraphInputs(
        metrics=metrics(), layers=layers(2), blueprints=BLUEPRINTS, layer_edges=(("layer0", "layer1"), ("x", "layer1"))
    )
    _, enc = build(inputs)
    assert enc.data["layer", "connects", "layer"].edge_index.tolist() == [[0], [1]]


def test_build_rejects_no_blueprint_and_duplicate_layers() -> None:
    builder = PolicyGraphBuilder(REGISTRIES)
    with pytest.raises(ValueError, match="blueprints"):
        builder.build(GraphInputs(metrics=metrics()))
    with pytest.raises(ValueError, match="duplicate"):
        builder.build(GraphInputs(metrics=metrics(), layers=layers(2) * 2, blueprints=BLUEPRINTS))


def test_build_is_deterministic_and_can_leave_the_normaliser_alone() -> None:
    inputs = GraphInputs(metrics=metrics(), layers=layers(3), seeds=seeds(4), blueprints=BLUEPRINTS)
    a, b = PolicyGraphBuilder(REGISTRIES), PolicyGraphBuilder(REGISTRIES)
    ga, gb = a.build(inputs), b.build(inputs)
    for t in NODE_FEATURES:
        torch.testing.assert_close(ga.data[t].x, gb.data[t].x)
    before = a.normaliser.state_dict()
    a.build(inputs, update_normaliser=False)
    after = a.normaliser.state_dict()
    assert before.keys() == after.keys()
    for key in before:
        torch.testing.assert_close(before[key], after[key])


# ------------------------------------------------------------------ normaliser


def test_ewma_update_matches_the_formula() -> None:
    norm = EwmaNormaliser(alpha=0.1)
    norm.update("x", 2.0)
    assert norm.moments("x") == (2.0, 0.0, 1)
    norm.update("x", 4.0)
    mean, var, count = norm.moments("x")  # type: ignore[misc]
    assert mean == pytest.approx(2.0 + 0.1 * 2.0)
    assert var == pytest.approx(0.9 * (0.0 + 0.1 * 4.0))
    assert count == 2
    assert norm.normalise("x", 2.2) == pytest.approx(0.0, abs=1e-6)
    assert norm.normalise("x", 1e9) == 5.0  # clipped
    assert norm.normalise("unseen", 3.0) == 0.0


def test_ewma_update_many_of_one_value_equals_update() -> None:
    a, b = EwmaNormaliser(), EwmaNormaliser()
    for v in (1.0, 3.0, -2.0):
        a.update("k", v)
        b.update_many("k", [v])
    assert a.moments("k") == b.moments("k")
    b.update_many("k", [float("nan")])
    assert a.moments("k") == b.moments("k")


def test_normaliser_state_round_trip() -> None:
    norm = EwmaNormaliser(alpha=0.1)
    for v in (1.0, 2.0, 5.0):
        norm.update("a", v)
    norm.update_many("b", [1.0, 2.0, 3.0])
    state = norm.state_dict()
    assert all(isinstance(t, torch.Tensor) and t.dtype == torch.float64 for t in state.values())
    copy = EwmaNormaliser(alpha=0.5)
    copy.load_state_dict(state)
    assert copy.alpha == 0.1
    assert copy.keys() == ("a", "b")
    for key in ("a", "b"):
        assert copy.moments(key) == norm.moments(key)
        assert copy.normalise(key, 2.5) == norm.normalise(key, 2.5)


def test_normaliser_rejects_bad_state_and_alpha() -> None:
    with pytest.raises(ValueError, match="alpha"):
        EwmaNormaliser(alpha=0.0)
    norm = EwmaNormaliser()
    norm.update("a", 1.0)
    with pytest.raises(ValueError, match="__alpha__"):
        norm.load_state_dict({"a": torch.zeros(3, dtype=torch.float64)})
    with pytest.raises(ValueError, match="'b'"):
        norm.load_state_dict({"__alpha__": torch.tensor([0.1, 1e-6]), "b": torch.zeros(2)})
    assert norm.moments("a") == (1.0, 0.0, 1)  # unchanged after a failed load


def test_graph_features_use_the_normaliser() -> None:
    builder = PolicyGraphBuilder(REGISTRIES)
    for loss in (1.0, 1.2, 0.8, 1.1):
        builder.build(GraphInputs(metrics=metrics(loss=loss), blueprints=BLUEPRINTS))
    enc = builder.build(GraphInputs(metrics=metrics(loss=3.0), blueprints=BLUEPRINTS), update_normaliser=False)
    expected = builder.normaliser.normalise("global.loss", 3.0)
    assert enc.data["global"].x[0, 0].item() == pytest.approx(expected, rel=1e-6)
    assert expected > 1.0


# ------------------------------------------------------------------ registries


def test_registry_codes_and_digest_are_deterministic() -> None:
    a = CategoryRegistry.of("blueprint", ["c", "a", "b", "a"])
    b = CategoryRegistry.of("blueprint", ["b", "c", "a"])
    assert a == b
    assert a.names == ("a", "b", "c")
    assert a.digest() == b.digest()
    assert len(a.digest()) == 64
    assert a.code("a") == pytest.approx(0.25)
    assert a.code("c") == pytest.approx(0.75)
    assert a.code("zzz") == 0.0
    assert a.code(None) == 0.0
    assert CategoryRegistry.of("layer_type", ["a", "b", "c"]).digest() != a.digest()
    assert CategoryRegistry.of("blueprint", ["a", "b"]).digest() != a.digest()


def test_registry_rejects_unsorted_names() -> None:
    with pytest.raises(ValueError, match="sorted"):
        CategoryRegistry("blueprint", ("b", "a"))


def test_graph_registries_digests_name_every_registry() -> None:
    digests = REGISTRIES.digests()
    assert set(digests) == {"blueprint", "layer_type", "activation"}
    assert (
        digests
        == GraphRegistries.of(
            blueprints=["bp-attn", "bp-mlp", "bp-conv"], layer_types=["conv2d", "linear"], activations=["gelu", "relu"]
        ).digests()
    )
    assert all(len(d) == 64 for d in digests.values())


def test_caps_reject_nonpositive_values() -> None:
    with pytest.raises(ValueError, match="max_layers"):
        GraphCaps(max_layers=0)
