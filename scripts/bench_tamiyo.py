"""Benchmark Tamiyo's decision latency (graph build + GNN inference + risk engine) on CPU; prints one JSON line.

Usage: python scripts/bench_tamiyo.py [--threads N] [--iterations N] [--slots 8,32,128,512]

Each sample times PolicyGraphBuilder.build on prepared GraphInputs, decide() with the default tamiyo_gnn_v1 sizes
(256 -> 128), and the risk engine's rule table (actors.tamiyo.risk.assess) on the proposed decision. The baseline,
run in the same process on the same inputs, builds the same graph and runs a 3-layer MLP over its flattened node
features (no risk engine). ``reference_pyg_latency_ms`` times the same decision through the unfused PyG
modules (``TamiyoGNN.forward_reference``), the cost the fused forward removes. Targets (REFERENCE.md section 1):
p95 <= 5 ms at 32 slots, <= 45 ms at 512.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import TYPE_CHECKING

import torch
from torch import nn

from actors.tamiyo.policy import Decision
from actors.tamiyo.risk import RiskContext, RiskThresholds, assess
from esper.nn.policy_contract import NUM_ACTIONS, PolicyOutput
from esper.nn.policy_decide import decide
from esper.nn.policy_gnn import TamiyoGNN, TamiyoGNNConfig, build_tamiyo_gnn
from esper.nn.policy_graph import (
    BlueprintInput,
    GlobalInput,
    GraphCaps,
    GraphInputs,
    GraphRegistries,
    LayerInput,
    PolicyGraphBuilder,
    SeedInput,
)
from schemas.domain_enums import PolicyAction

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

TARGET_P95_MS = {"32": 5.0, "512": 45.0}
RISK_THRESHOLDS = RiskThresholds()
# A typical mid-run context: validation loss just improved, latencies measured, no violation.
RISK_CONTEXT = RiskContext(loss_delta=-0.01, hook_latency_ms=4.2, step_latency_ms=2.5, blueprint_risk=0.1)
N_BLUEPRINTS = 8


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


def make_inputs(slots: int) -> GraphInputs:
    """A host with one slot per layer; a third of the slots hold a seed."""
    metrics = GlobalInput(
        epoch=5,
        epochs_total=50,
        step=12_000,
        epoch_progress=0.4,
        loss=0.61,
        validation_loss=0.66,
        training_loss=0.59,
        gradient_norm=1.7,
        samples_per_s=21_000.0,
        hook_latency_ms=4.2,
    )
    layers = tuple(
        LayerInput(
            name=f"layer{i}",
            depth=i,
            layer_type="linear" if i % 2 else "conv2d",
            parameter_count=65_536,
            activation="relu",
            weight_norm=3.0,
            gradient_norm=0.2,
            latency_ms=0.05,
        )
        for i in range(slots)
    )
    seeds = tuple(
        SeedInput(
            slot=f"slot{i}",
            stage=3 if i % 3 == 0 else 1,
            layer_depth=i,
            occupied=i % 3 == 0,
            blueprint_id=f"bp{i % N_BLUEPRINTS}" if i % 3 == 0 else None,
            learning_rate=1e-3 if i % 3 == 0 else None,
            risk_score=0.2,
            gradient_norm=0.3 if i % 3 == 0 else None,
            age_epochs=i % 7,
            alpha=0.5 if i % 3 == 0 else 0.0,
            blend_allowed=i % 3 == 0,
        )
        for i in range(slots)
    )
    blueprints = tuple(
        BlueprintInput(blueprint_id=f"bp{k}", risk=0.05 * k, tier=1 + k % 3, stage=2, parameter_count=10_000 * (k + 1))
        for k in range(N_BLUEPRINTS)
    )
    return GraphInputs(metrics=metrics, layers=layers, seeds=seeds, blueprints=blueprints)


def percentiles(samples_s: list[float]) -> dict[str, float]:
    ms = sorted(s * 1e3 for s in samples_s)
    q = statistics.quantiles(ms, n=100, method="inclusive")
    return {"p50": round(q[49], 3), "p95": round(q[94], 3), "p99": round(q[98], 3)}


def measure(fn: Callable[[], object], iterations: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(iterations):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--slots", default="8,32,128,512")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    config = TamiyoGNNConfig()
    model = build_tamiyo_gnn(config, seed=0)
    registries = GraphRegistries.of(
        blueprints=[f"bp{k}" for k in range(N_BLUEPRINTS)], layer_types=["conv2d", "linear"], activations=["relu"]
    )
    caps = GraphCaps()
    mask = [True] * NUM_ACTIONS
    latency: dict[str, dict[str, float]] = {}
    baseline: dict[str, dict[str, float]] = {}
    ratio: dict[str, float] = {}
    reference: dict[str, dict[str, float]] = {}
    reference_model = ReferencePath(model)
    actions: dict[str, str] = {}
    for slots in (int(s) for s in args.slots.split(",")):
        inputs = make_inputs(slots)
        builder = PolicyGraphBuilder(registries, caps=caps)
        iterations = args.iterations if slots <= 128 else max(args.iterations // 4, 20)

        def gnn_decision(inputs: GraphInputs = inputs, builder: PolicyGraphBuilder = builder) -> str:
            out = decide(model, builder.build(inputs), mask, device="cpu")
            # The risk engine judges what the network proposed, as Tamiyo's actor does before signing a command.
            proposed = Decision(
                action=PolicyAction[out.action],
                target_slot=f"slot{out.seed_index}" if out.seed_index is not None else None,
                blueprint_id=f"bp{out.blueprint_index}" if out.blueprint_index is not None else None,
                policy_risk=out.risk_score,
                log_prob=out.log_prob,
                value_estimate=out.value,
                reason=f"gnn_{out.action.lower()}",
            )
            return assess(proposed, RISK_CONTEXT, RISK_THRESHOLDS).decision.action.value

        width = sum(x.numel() for x in builder.build(inputs).x_dict.values())
        mlp = nn.Sequential(
            nn.Linear(width, config.hidden),
            nn.GELU(),
            nn.Linear(config.hidden, config.gat_hidden),
            nn.GELU(),
            nn.Linear(config.gat_hidden, NUM_ACTIONS),
        ).eval()

        def mlp_decision(
            inputs: GraphInputs = inputs, builder: PolicyGraphBuilder = builder, mlp: nn.Module = mlp
        ) -> int:
            graph = builder.build(inputs)
            with torch.inference_mode():
                flat = torch.cat([x.flatten() for x in graph.x_dict.values()])
                return int(mlp(flat).argmax())

        key = str(slots)
        actions[key] = gnn_decision()
        latency[key] = percentiles(measure(gnn_decision, iterations, warmup=10))
        baseline[key] = percentiles(measure(mlp_decision, iterations, warmup=10))
        ratio[key] = round(latency[key]["p50"] / baseline[key]["p50"], 2)

        def reference_decision(inputs: GraphInputs = inputs, builder: PolicyGraphBuilder = builder) -> str:
            return decide(reference_model, builder.build(inputs), mask, device="cpu").action

        reference[key] = percentiles(measure(reference_decision, max(iterations // 4, 20), warmup=3))

    met = {k: latency[k]["p95"] <= v for k, v in TARGET_P95_MS.items() if k in latency}
    print(
        json.dumps(
            {
                "bench": "tamiyo_decision",
                "device": "cpu",
                "torch_threads": torch.get_num_threads(),
                "config": {"hidden": config.hidden, "gat_hidden": config.gat_hidden, "heads": config.heads},
                "caps": {"max_layers": caps.max_layers, "blueprints": N_BLUEPRINTS},
                "latency_ms": latency,
                "baseline_mlp_latency_ms": baseline,
                "ratio_p50_gnn_over_mlp": ratio,
                "reference_pyg_latency_ms": reference,
                "target_p95_ms": TARGET_P95_MS,
                "targets_met": met,
                "actions": actions,
            }
        )
    )


if __name__ == "__main__":
    main()
