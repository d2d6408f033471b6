"""Benchmark Tamiyo's decision latency (graph build + GNN inference + risk engine) on CPU; prints one JSON line.

Usage: python scripts/bench_tamiyo.py [--threads N] [--iterations N] [--slots 8,32,128,512]

Each headline sample (``latency_ms``) times Tamiyo's real decision path from a SystemStatePacket:
``build_observation`` (packet + blueprint candidates -> Observation), ``GnnPolicy.decide`` (graph_inputs, the graph
build with its normaliser update, the per-action target sets and masks, and one to three network calls: a second
when the chosen slot does not suit the chosen action, another when a GERMINATE's best blueprint does not fit the
slot), then the risk engine as Tamiyo's ``Decider.judge`` runs it (``RiskContext.from_packet`` with the proposal's
blueprint facts and the implicated seed, then ``assess``). It runs in this process, on this thread, as
bench_overlap's ``--policy-process thread`` arm does: a run on a CPU sends the observation to a worker process by
default, whose pipe adds about 0.3-0.6 ms (BENCHMARKS.md) that is not in these figures, nor are the actor's mailbox,
lane hop, command signing and telemetry. The policy is built as Tamiyo builds it from the shipped config.toml's
tamiyo section (graph caps, normaliser, risk thresholds), with the reference network sizes (256 -> 128, 4 heads).

The host: N slots, one after each of N layers, a third of them holding a TRAINING seed; 8 blueprint candidates that
fit every slot. The graph holds a seed node per slot but at most ``GraphCaps.max_layers`` layer nodes
(``tamiyo.max_layer_nodes``, 4 shipped): at 512 slots, 512 seed nodes and 4 layer nodes (``graph_nodes``).

Arms, alternated in blocks (10 headline decisions, 10 baseline decisions and 3 reference decisions per block, the
first arm rotating from block to block), each after an untimed warm-up (``GnnPolicy.warm_up`` as Tamiyo's start does,
then 10 decisions):

- headline (``latency_ms``): the path above; ``--iterations`` samples at every size, rounded up to whole blocks (at
  least 100, so that a p99 is not simply the slowest sample).
- baseline (``baseline_mlp_latency_ms``, ``ratio_p50_gnn_over_mlp``): the same graph work (build_observation,
  graph_inputs, the graph build with a normaliser of its own) and one call of a 3-layer MLP over the flattened node
  features instead of the GNN; no masks, no risk engine. As many samples as the headline.
- reference (``reference_pyg_latency_ms``): the headline path with the network's unfused PyG modules
  (``TamiyoGNN.forward_reference``), the cost the fused forward removes; 3 samples for every 10 headline ones.

Percentiles are nearest-rank (the ``ceil(q n)``-th smallest sample); ``samples`` gives each arm's count per size.
``network_calls`` counts the headline decisions by their number of network calls (a counter around the model: one
Python call per network call, inside the timing) and ``proposed_actions`` by what the policy proposed before the
risk engine (both noted after each sample's timing).
Targets (REFERENCE.md section 1): p95 <= 5 ms at 32 slots, <= 45 ms at 512.
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import sys
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec
import torch
from torch import nn

from actors.tamiyo.gnn_policy import GnnPolicy, graph_inputs, registries_for, weights_sha256
from actors.tamiyo.observe import build_observation, candidate, implicated_seed
from actors.tamiyo.policy import BlueprintCandidate
from actors.tamiyo.risk import RiskContext, RiskThresholds, RiskVerdict, assess
from esper.config import load_config
from esper.nn.normaliser import EwmaNormaliser
from esper.nn.policy_contract import NUM_ACTIONS
from esper.nn.policy_gnn import TamiyoGNN, TamiyoGNNConfig, build_tamiyo_gnn
from esper.nn.policy_graph import GraphCaps, PolicyGraphBuilder
from esper.runtime.percentiles import nearest_rank
from schemas.domain_enums import BlueprintTier, CostTier
from schemas.enums import SeedLifecycleStage
from schemas.state import LayerSummary, SeedState, StepTimings, SystemStatePacket

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from actors.tamiyo.policy import Decision, Observation
    from esper.nn.policy_contract import PolicyModel, PolicyOutput
    from schemas.config import TamiyoConfig

CONFIG = Path(__file__).resolve().parent.parent / "config.toml"
TARGET_P95_MS = {"32": 5.0, "512": 45.0}
N_BLUEPRINTS = 8
LAYER_TYPES = ("conv2d", "linear")
ACTIVATIONS = ("relu",)
MIN_ITERATIONS = 100
BLOCK = 10
REFERENCE_PER_BLOCK = 3
WARM_UP = 10


class ReferencePath:
    """Calls TamiyoGNN.forward_reference where decide() calls the model."""

    def __init__(self, model: TamiyoGNN) -> None:
        self.model = model

    @property
    def training(self) -> bool:
        return self.model.training

    def __call__(
        self,
        x_dict: Mapping[str, torch.Tensor],
        edge_index_dict: Mapping[tuple[str, str, str], torch.Tensor],
        edge_attr_dict: Mapping[tuple[str, str, str], torch.Tensor],
        batch_dict: Mapping[str, torch.Tensor] | None = None,
    ) -> PolicyOutput:
        return self.model.forward_reference(x_dict, edge_index_dict, edge_attr_dict, batch_dict)


class CountedModel:
    """A model that counts its calls (how many network calls a decision made)."""

    def __init__(self, model: PolicyModel) -> None:
        self.model = model
        self.calls = 0

    @property
    def training(self) -> bool:
        return self.model.training

    def __call__(
        self,
        x_dict: Mapping[str, torch.Tensor],
        edge_index_dict: Mapping[tuple[str, str, str], torch.Tensor],
        edge_attr_dict: Mapping[tuple[str, str, str], torch.Tensor],
        batch_dict: Mapping[str, torch.Tensor] | None = None,
    ) -> PolicyOutput:
        self.calls += 1
        return self.model(x_dict, edge_index_dict, edge_attr_dict, batch_dict)


def candidates() -> tuple[BlueprintCandidate, ...]:
    """The Karn candidates Tamiyo offers the policy: every one fits every slot."""
    return tuple(
        BlueprintCandidate(
            blueprint_id=f"bp{k}",
            cost_tier=(CostTier.LOW, CostTier.MEDIUM, CostTier.HIGH)[k % 3],
            risk=0.05 * k,
            parameter_count=10_000 * (k + 1),
            tier=BlueprintTier(1 + k % 2),
        )
        for k in range(N_BLUEPRINTS)
    )


def make_packet(slots: int) -> SystemStatePacket:
    """A mid-run packet of a host with one slot after each of ``slots`` layers; a third of the slots hold a seed
    (training, every other one blending)."""
    layers = tuple(
        LayerSummary(
            name=f"layer{i}",
            depth=i,
            layer_type=LAYER_TYPES[i % 2],
            parameter_count=65_536,
            activation="relu",
            weight_norm=3.0,
            gradient_norm=0.2,
            latency_ms=0.05,
        )
        for i in range(slots)
    )
    # Every other seed blends (alpha 0.5): only a seed the host's output sees can be blamed for a loss spike, so the
    # risk context's blame search has candidates to rank, as it had when any live seed could be blamed.
    seeds = tuple(
        SeedState(
            slot=f"slot{i}",
            stage=SeedLifecycleStage.BLENDING if i % 6 == 3 else SeedLifecycleStage.TRAINING,
            alpha=0.5 if i % 6 == 3 else 0.0,
            layer_depth=i,
            seed_id=f"seed{i}",
            blueprint_id=f"bp{i % N_BLUEPRINTS}",
            learning_rate=1e-3,
            risk_score=0.2,
            gradient_norm=0.3,
            age_epochs=i % 7,
            age_steps=20 * (i % 7),
        )
        if i % 3 == 0
        else SeedState(slot=f"slot{i}", stage=SeedLifecycleStage.DORMANT, layer_depth=i)
        for i in range(slots)
    )
    return SystemStatePacket(
        run_id="bench",
        epoch=5,
        epochs_total=50,
        global_step=12_000,
        epoch_progress=0.4,
        issued_at=0.0,
        training_loss=0.59,
        training_accuracy=0.8,
        timings=StepTimings(
            data_wait_ms=0.1, host_to_device_ms=0.0, forward_ms=1.0, backward_ms=2.0, optimizer_ms=0.5, step_ms=3.6
        ),
        host_parameters=65_536 * slots,
        seed_parameters=500,
        samples_per_s=21_000.0,
        hook_latency_ms=4.2,
        validation_loss=0.66,
        loss_delta=-0.01,
        gradient_norm=1.7,
        layers=layers,
        seed_states=seeds,
    )


def judge(decision: Decision, observation: Observation, thresholds: RiskThresholds) -> RiskVerdict:
    """The risk engine on a proposal, its context built as Tamiyo's Decider.judge builds it (no conservative mode)."""
    bp = candidate(observation, decision.blueprint_id)
    context = msgspec.structs.replace(
        RiskContext.from_packet(observation.packet, conservative=False),
        blueprint_risk=bp.risk if bp is not None else None,
        blueprint_quarantine_only=bp.quarantine_only if bp is not None else False,
        implicated_seed_id=implicated_seed(observation),
    )
    return assess(decision, context, thresholds)


def make_policy(model: PolicyModel, digest: str, config: TamiyoConfig) -> GnnPolicy:
    """A GnnPolicy as Tamiyo's spec builds one for this host (in process)."""
    ids = tuple(bp.blueprint_id for bp in candidates())
    return GnnPolicy(
        model,
        registries=registries_for(ids, LAYER_TYPES, ACTIVATIONS),
        weights_digest=digest,
        caps=GraphCaps(max_layers=config.max_layer_nodes),
        normaliser_alpha=config.normaliser_alpha,
    )


def real_decision(
    policy: GnnPolicy, packet: SystemStatePacket, thresholds: RiskThresholds
) -> Callable[[], RiskVerdict]:
    """Tamiyo's decision on ``packet``: observation, GnnPolicy.decide, then the risk engine's verdict."""
    offered = candidates()

    def run() -> RiskVerdict:
        observation = build_observation(packet, offered)
        return judge(policy.decide(observation), observation, thresholds)

    return run


def mlp_decision(packet: SystemStatePacket, config: TamiyoConfig, hidden: int, out: int) -> Callable[[], int]:
    """The baseline: the same observation and graph build, then an MLP over the flattened node features."""
    offered = candidates()
    ids = tuple(bp.blueprint_id for bp in offered)
    builder = PolicyGraphBuilder(
        registries_for(ids, LAYER_TYPES, ACTIVATIONS),
        normaliser=EwmaNormaliser(config.normaliser_alpha),
        caps=GraphCaps(max_layers=config.max_layer_nodes),
    )
    width = sum(x.numel() for x in builder.build(graph_inputs(build_observation(packet, offered))).x_dict.values())
    mlp = nn.Sequential(
        nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, out), nn.GELU(), nn.Linear(out, NUM_ACTIONS)
    )
    mlp.eval()

    def run() -> int:
        graph = builder.build(graph_inputs(build_observation(packet, offered)))
        with torch.inference_mode():
            flat = torch.cat([x.flatten() for x in graph.x_dict.values()])
            return int(mlp(flat).argmax())

    return run


def graph_nodes(packet: SystemStatePacket, config: TamiyoConfig) -> dict[str, int]:
    """Node counts by type of the graph the policy builds for ``packet``."""
    offered = candidates()
    builder = PolicyGraphBuilder(
        registries_for(tuple(bp.blueprint_id for bp in offered), LAYER_TYPES, ACTIVATIONS),
        caps=GraphCaps(max_layers=config.max_layer_nodes),
    )
    graph = builder.build(graph_inputs(build_observation(packet, offered)), update_normaliser=False)
    return {kind: int(x.shape[0]) for kind, x in graph.x_dict.items()}


def percentiles(samples_s: list[float]) -> dict[str, float]:
    """Nearest-rank p50 / p95 / p99 in milliseconds."""
    ms = sorted(s * 1e3 for s in samples_s)
    out: dict[str, float] = {}
    for name, q in (("p50", 0.50), ("p95", 0.95), ("p99", 0.99)):
        value = nearest_rank(ms, q)
        if value is None:
            raise ValueError("no samples")
        out[name] = round(value, 3)
    return out


class Arm:
    """One arm of the benchmark: what a sample times, how many per block, and what to note after each (untimed)."""

    def __init__(self, fn: Callable[[], object], per_block: int, after: Callable[[object], None] | None = None) -> None:
        self.fn = fn
        self.per_block = per_block
        self.after = after
        self.samples: list[float] = []

    def run_block(self) -> None:
        for _ in range(self.per_block):
            start = time.perf_counter()
            result = self.fn()
            self.samples.append(time.perf_counter() - start)
            if self.after is not None:
                self.after(result)


def alternate(arms: Mapping[str, Arm], blocks: int) -> list[str]:
    """Run ``blocks`` blocks, every arm once per block, the first arm rotating block by block; returns the order."""
    names = list(arms)
    order: list[str] = []
    for block in range(blocks):
        shift = block % len(names)
        for name in names[shift:] + names[:shift]:
            arms[name].run_block()
            order.append(name)
    return order


def check_iterations(iterations: int) -> str | None:
    """A one-line error when ``--iterations`` is too few for the p99 to mean something, else None."""
    if iterations < MIN_ITERATIONS:
        return (
            f"bench_tamiyo.py: --iterations must be >= {MIN_ITERATIONS} (a p99 of fewer samples is the slowest one), "
            f"got {iterations}"
        )
    return None


class Setup:
    """What every size shares: the shipped tamiyo section, its risk thresholds, the network and its digest."""

    def __init__(self, net: TamiyoGNNConfig) -> None:
        self.tamiyo = load_config(CONFIG).tamiyo
        self.thresholds = RiskThresholds.from_config(self.tamiyo)
        self.net = net
        self.model = build_tamiyo_gnn(net, seed=0)
        self.model.eval()
        self.digest = weights_sha256(self.model)


@dataclass
class SizeFigures:
    """One host size's figures (their JSON keys are the field names)."""

    latency_ms: dict[str, float]
    baseline_mlp_latency_ms: dict[str, float]
    ratio_p50_gnn_over_mlp: float
    reference_pyg_latency_ms: dict[str, float]
    samples: dict[str, int]
    graph_nodes: dict[str, int]
    network_calls: dict[str, int]
    proposed_actions: dict[str, int]


def bench_size(setup: Setup, slots: int, blocks: int) -> SizeFigures:
    """Every arm at one host size, alternated over ``blocks`` blocks after their warm-up; that size's figures."""
    packet = make_packet(slots)
    counted = CountedModel(setup.model)
    gnn = make_policy(counted, setup.digest, setup.tamiyo)
    ref = make_policy(ReferencePath(setup.model), setup.digest, setup.tamiyo)
    arms = {
        "gnn": Arm(real_decision(gnn, packet, setup.thresholds), BLOCK),
        "mlp": Arm(mlp_decision(packet, setup.tamiyo, setup.net.hidden, setup.net.gat_hidden), BLOCK),
        "reference": Arm(real_decision(ref, packet, setup.thresholds), REFERENCE_PER_BLOCK),
    }
    for policy in (gnn, ref):
        policy.warm_up()
    for arm in arms.values():
        for _ in range(WARM_UP):
            arm.fn()
    proposed: collections.Counter[str] = collections.Counter()
    calls: collections.Counter[int] = collections.Counter()
    counted.calls = 0

    def note(verdict: object) -> None:
        assert isinstance(verdict, RiskVerdict)
        proposed[verdict.proposed.action.value] += 1
        calls[counted.calls] += 1
        counted.calls = 0

    arms["gnn"].after = note
    alternate(arms, blocks)
    latency = percentiles(arms["gnn"].samples)
    baseline = percentiles(arms["mlp"].samples)
    return SizeFigures(
        latency_ms=latency,
        baseline_mlp_latency_ms=baseline,
        ratio_p50_gnn_over_mlp=round(latency["p50"] / baseline["p50"], 2),
        reference_pyg_latency_ms=percentiles(arms["reference"].samples),
        samples={name: len(arm.samples) for name, arm in arms.items()},
        graph_nodes=graph_nodes(packet, setup.tamiyo),
        network_calls={str(n): count for n, count in sorted(calls.items())},
        proposed_actions=dict(sorted(proposed.items())),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--iterations", type=int, default=200, help=f"headline samples per size (>= {MIN_ITERATIONS})")
    parser.add_argument("--slots", default="8,32,128,512")
    args = parser.parse_args()
    problem = check_iterations(args.iterations)
    if problem is not None:
        sys.exit(problem)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    setup = Setup(TamiyoGNNConfig())
    blocks = math.ceil(args.iterations / BLOCK)
    sizes = {s: bench_size(setup, int(s), blocks) for s in args.slots.split(",")}
    met = {s: sizes[s].latency_ms["p95"] <= target for s, target in TARGET_P95_MS.items() if s in sizes}
    record: dict[str, object] = {
        "bench": "tamiyo_decision",
        "path": "build_observation + GnnPolicy.decide + risk assess, in process (no worker pipe)",
        "device": "cpu",
        "torch_threads": torch.get_num_threads(),
        "config": {"hidden": setup.net.hidden, "gat_hidden": setup.net.gat_hidden, "heads": setup.net.heads},
        "caps": {"max_layers": setup.tamiyo.max_layer_nodes, "blueprints": N_BLUEPRINTS},
        "percentiles": "nearest-rank",
    }
    for f in fields(SizeFigures):
        record[f.name] = {s: getattr(figures, f.name) for s, figures in sizes.items()}
    record["target_p95_ms"] = TARGET_P95_MS
    record["targets_met"] = met
    print(json.dumps(record))


if __name__ == "__main__":
    main()
