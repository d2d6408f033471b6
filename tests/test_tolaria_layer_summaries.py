"""Tolaria's state packets describe the host's slot layers, so the GNN's graph has layer nodes in a real run."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from actors.tamiyo.gnn_policy import graph_inputs, registries_for
from actors.tamiyo.observe import layer_gradient_norms, mean_layer_norm, slot_constraint
from actors.tamiyo.policy import BlueprintCandidate, Observation
from actors.tolaria.build import Trainee, build_trainee, load_data
from actors.tolaria.layer_summaries import slot_layer_summaries
from actors.tolaria.telemetry import IntervalStats, PacketBuilder
from esper.nn.policy_graph import PolicyGraphBuilder
from esper.nn.wrap import find_slots, wrap
from schemas.config import TolariaConfig
from schemas.enums import EmergencyLevel
from schemas.state import SystemStatePacket

if TYPE_CHECKING:
    from esper.nn.data import DataSplits


def _trainee(host_model: str) -> tuple[Trainee, DataSplits]:
    config = TolariaConfig(dataset_samples=400, host_model=host_model)
    data = load_data(config)
    return build_trainee(config, data, (), torch.device("cpu")), data


def _packet(built: tuple[Trainee, DataSplits]) -> SystemStatePacket:
    trainee, data = built
    x, y = data.train.x[:8], data.train.y[:8]
    logits = trainee.model(x)
    loss = torch.nn.functional.cross_entropy(logits, y)
    loss.backward()  # type: ignore[no-untyped-call]  # gradients for the packet's norms
    stats = IntervalStats()
    stats.add(loss.detach(), logits.detach(), y, len(y))  # the interval's losses: nothing the state lacks
    return PacketBuilder(trainee).build(
        stats,
        run_id="r",
        epoch=0,
        epochs_total=1,
        global_step=8,
        epoch_progress=1.0,
        hook_latency_ms=0.0,
        emergency_level=EmergencyLevel.L1_NOTICE,
        validation=(1.0, 0.5),
    )


def test_a_packet_summarises_each_slots_layer_at_its_seeds_depth() -> None:
    """Packets carried no layer summaries: the policy graph's layer nodes, one of its four node types, were never
    present in a run (tamiyo.max_layer_nodes changed nothing)."""
    built = _trainee("cnn1d")
    trainee, packet = built[0], _packet(built)
    assert [(layer.name, layer.depth) for layer in packet.layers] == [
        (state.slot, state.layer_depth) for state in packet.seed_states
    ]
    for layer in packet.layers:
        module = trainee.model.get_submodule(layer.name)
        own = sum(p.numel() for name, p in module.named_parameters() if not name.startswith("esper_slot."))
        assert (layer.parameter_count, layer.gradient_norm) == (own, None)
        assert layer.parameter_count > 0
        assert layer.name in packet.layer_gradient_norms  # where a reader finds the layer's norm
    observation = Observation(packet=packet, blueprints=(BlueprintCandidate(blueprint_id="BP001"),))
    graph = PolicyGraphBuilder(registries_for(["BP001"])).build(graph_inputs(observation))
    assert graph.x_dict["layer"].shape[0] == min(len(packet.layers), 4)  # GraphCaps.max_layers, the default cap
    # Nothing the state should carry is missing: no weight norm is sent, and each layer's norm is in the packet.
    assert graph.feature_coverage == 1.0


def test_an_activation_slots_layer_costs_the_graph_no_coverage() -> None:
    """Its layer has no parameter, so no gradient norm to miss: counted missing (with the weight norm no packet
    carries), a healthy run's coverage sat at 0.64-0.84, near the tamiyo_coverage_low alert's 0.7."""
    packet = _packet(_trainee("tests.tolaria_factories:relu_slot_mlp"))
    observation = Observation(packet=packet, blueprints=(BlueprintCandidate(blueprint_id="BP001"),))
    assert PolicyGraphBuilder(registries_for(["BP001"])).build(graph_inputs(observation)).feature_coverage == 1.0


def test_an_activation_slots_layer_says_so() -> None:
    packet = _packet(_trainee("tests.tolaria_factories:relu_slot_mlp"))
    assert [(layer.name, layer.layer_type, layer.activation, layer.parameter_count) for layer in packet.layers] == [
        ("1", "linear", None, 40 * 16 + 16),
        ("2", "relu", "relu", 0),
    ]


def test_the_heuristics_strain_is_what_it_was_without_the_summaries() -> None:
    """A mean over the summarised (slot) layers alone would have judged each slot against the other slots: the
    strain stays a slot layer's norm over the mean of every layer the packet reports."""
    packet = _packet(_trainee("cnn1d"))
    bare = SystemStatePacket(**{**{f: getattr(packet, f) for f in packet.__struct_fields__}, "layers": ()})
    norms = list(packet.layer_gradient_norms.values())
    assert len(norms) > len(packet.layers)  # the stem and the head besides the slots' layers
    for state in packet.seed_states:
        with_summaries = slot_constraint(state, packet, layer_gradient_norms(packet))
        without = slot_constraint(state, bare, layer_gradient_norms(bare))
        assert with_summaries == without == packet.layer_gradient_norms[state.slot] / (sum(norms) / len(norms))
    assert mean_layer_norm(packet, layer_gradient_norms(packet)) == mean_layer_norm(bare, {})


def test_every_dropout_kind_gives_its_rate_and_a_nested_slots_seed_is_not_the_outer_layers() -> None:
    """Dropout1d/2d and AlphaDropout were summarised with no dropout (they do not derive from nn.Dropout); an outer
    layer counted the seed of a slot nested inside it as its own parameters."""
    model = nn.Sequential(
        nn.Sequential(nn.Linear(4, 4), nn.ReLU()), nn.Dropout1d(0.3), nn.Dropout(0.2), nn.AlphaDropout(0.1)
    )
    slots = find_slots(wrap(model, ["0", "0.0", "1", "2", "3"]))
    slots["0.0"].attach(nn.Linear(4, 4), seed_id="inner")
    summaries = {layer.name: layer for layer in slot_layer_summaries(model, slots)}
    assert [(summaries[n].layer_type, summaries[n].dropout) for n in ("1", "2", "3")] == [
        ("dropout1d", 0.3),
        ("dropout", 0.2),
        ("alphadropout", 0.1),
    ]
    assert (summaries["0"].parameter_count, summaries["0.0"].parameter_count) == (20, 20)
