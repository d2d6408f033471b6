"""Benchmark how Tamiyo's GNN decision on the policy lane and a training step on the train lane slow each other down.

Usage: python scripts/bench_overlap.py [--train-threads 1] [--policy-threads 1] [--steps 300] [--rounds 3]
                                      [--policy-process auto|thread|process]

Training: the default MNIST-1D host (esper.nn.hosts.CNN1dHost, width 12), batch 128 of length-40 inputs (random
tensors: the step's cost does not depend on the values), cross-entropy, and the optimizer Tolaria builds for it
(``actors.tolaria.build.build_optimizer`` with the shipped config.toml's tolaria section: AdamW with fused kernels on
the CPU); one step is forward, backward and optimizer step, run on a ``train`` Lane. Decision: Tamiyo's
GnnPolicy.decide (graph build + tamiyo_gnn_v1 at the reference sizes 256 -> 128, under inference mode) on an
Observation of the same host (3 slots, 3 conv layers, 4 blueprint candidates), run on a ``policy`` Lane: by default
as the Tamiyo actor runs it on a CPU (``tamiyo.policy_process`` = "auto": a RemoteGnnPolicy, whose lane job waits on
a worker process), with ``--policy-process thread`` in the lane's own thread (the baseline the worker process
replaces). Each lane thread (and the worker) gets its own torch thread budget (defaults: train 1, policy 1, on this
2-core machine, so the two lanes own one core each).

Phases, repeated ``--rounds`` times and interleaved (so background load hits all of them alike): steps alone,
decisions alone, then both lanes busy at once (decisions back to back: the worst case; Tamiyo really decides once per
packet, every K steps). Times are taken inside the lane jobs (perf_counter on the lane thread). Prints ONE JSON line:
``step_slowdown`` = median step time with a decision in flight / alone (target <= 1.10) and ``decision_slowdown`` =
median decision latency while training runs / alone (target <= 1.5).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from actors.tamiyo.gnn_policy import GnnPolicy, registries_for, weights_sha256
from actors.tamiyo.gnn_process import RemoteGnnPolicy
from actors.tamiyo.observe import build_observation
from actors.tamiyo.policy import BlueprintCandidate
from actors.tolaria.build import build_optimizer
from esper.config import load_config
from esper.nn.hosts import CNN1dHost
from esper.nn.policy_gnn import TamiyoGNNConfig, build_tamiyo_gnn
from esper.nn.policy_graph import GraphCaps
from esper.runtime.lanes import Lane
from schemas.config import TamiyoConfig
from schemas.control import BlendConfig
from schemas.domain_enums import CostTier
from schemas.enums import SeedLifecycleStage
from schemas.state import LayerSummary, SeedState, StepTimings, SystemStatePacket

if TYPE_CHECKING:
    from collections.abc import Callable

CONFIG = Path(__file__).resolve().parent.parent / "config.toml"
BATCH = 128
LENGTH = 40
TARGETS = {"step_slowdown": 1.10, "decision_slowdown": 1.5}


def make_optimizer(host: nn.Module) -> torch.optim.Optimizer:
    """The optimizer Tolaria builds for this host on the CPU (the shipped configuration's kind and settings)."""
    return build_optimizer(load_config(CONFIG).tolaria, host, torch.device("cpu"))


def make_step() -> Callable[[], float]:
    torch.manual_seed(0)
    host = CNN1dHost()
    optimizer = make_optimizer(host)
    loss_fn = nn.CrossEntropyLoss()
    x = torch.randn(BATCH, LENGTH)
    y = torch.randint(0, 10, (BATCH,))

    def step() -> float:
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(host(x), y)
        loss.backward()
        optimizer.step()
        return time.perf_counter() - start

    return step


def make_decision(in_worker: bool, threads: int) -> tuple[Callable[[], float], GnnPolicy | RemoteGnnPolicy]:
    model = build_tamiyo_gnn(TamiyoGNNConfig(), seed=0)
    blueprints = tuple(
        BlueprintCandidate(blueprint_id=f"bp{k}", cost_tier=CostTier.LOW, risk=0.1 * k, parameter_count=500 * (k + 1))
        for k in range(4)
    )
    ids = tuple(bp.blueprint_id for bp in blueprints)
    local = GnnPolicy(
        model, registries=registries_for(ids, ("conv1d",), ("relu",)), weights_digest=weights_sha256(model)
    )
    policy: GnnPolicy | RemoteGnnPolicy = local
    if in_worker:
        # What the Tamiyo actor builds for tamiyo.policy_process = "process" (the default on a CPU lane).
        remote = RemoteGnnPolicy(
            local, model, blueprint_ids=ids, layer_types=("conv1d",), activations=("relu",), caps=GraphCaps(),
            normaliser_alpha=0.1, blend=BlendConfig(), max_ramp_steps=100, lr_delta_bound=0.1, num_threads=threads,
        )  # fmt: skip
        remote.wait_ready()
        policy = remote
    layers = tuple(
        LayerSummary(name=f"blocks.{i}", depth=i, layer_type="conv1d", parameter_count=500, activation="relu",
                     gradient_norm=0.5, weight_norm=3.0, latency_ms=0.1)
        for i in range(3)
    )  # fmt: skip
    seeds = (
        SeedState(slot="blocks.0", stage=SeedLifecycleStage.TRAINING, layer_depth=0, seed_id="s-a", blueprint_id="bp0"),
        SeedState(slot="blocks.1", stage=SeedLifecycleStage.DORMANT, layer_depth=1),
        SeedState(slot="blocks.2", stage=SeedLifecycleStage.DORMANT, layer_depth=2),
    )
    packet = SystemStatePacket(
        run_id="bench",
        epoch=3,
        epochs_total=20,
        global_step=1200,
        epoch_progress=1.0,
        issued_at=0.0,
        training_loss=1.1,
        training_accuracy=0.6,
        timings=StepTimings(
            data_wait_ms=0.1, host_to_device_ms=0.0, forward_ms=1.0, backward_ms=2.0, optimizer_ms=0.5, step_ms=3.6
        ),
        host_parameters=2782,
        seed_parameters=500,
        samples_per_s=30_000.0,
        hook_latency_ms=1.0,
        validation_loss=1.2,
        loss_delta=-0.01,
        gradient_norm=1.3,
        layers=layers,
        seed_states=seeds,
    )
    observation = build_observation(packet, blueprints)

    def decision() -> float:
        start = time.perf_counter()
        policy.decide(observation)
        return time.perf_counter() - start

    return decision, policy


async def repeat(lane: Lane, fn: Callable[[], float], count: int) -> list[float]:
    return [await lane.run(fn) for _ in range(count)]


async def until(lane: Lane, fn: Callable[[], float], stop: asyncio.Event) -> list[float]:
    out: list[float] = []
    while not stop.is_set():
        out.append(await lane.run(fn))
    return out


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--train-threads", type=int, default=1)
    parser.add_argument("--policy-threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--decisions", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--policy-process",
        choices=("auto", "thread", "process"),
        default=TamiyoConfig().policy_process,
        help="tamiyo.policy_process (default: the shipped default; auto is process on this CPU)",
    )
    args = parser.parse_args()

    step = make_step()
    in_worker = args.policy_process != "thread"  # the lanes here are CPU lanes, where auto means process
    decision, gnn = make_decision(in_worker, args.policy_threads)
    steps_alone: list[float] = []
    decisions_alone: list[float] = []
    steps_overlap: list[float] = []
    decisions_overlap: list[float] = []
    async with (
        Lane("train", "cpu", num_threads=args.train_threads) as train,
        Lane("policy", "cpu", num_threads=args.policy_threads) as policy,
    ):
        await repeat(train, step, 30)  # warm-up: allocator, optimizer state, thread pools
        await repeat(policy, decision, 10)
        for _ in range(args.rounds):
            steps_alone += await repeat(train, step, args.steps)
            decisions_alone += await repeat(policy, decision, args.decisions)
            stop = asyncio.Event()
            async with asyncio.TaskGroup() as tg:
                deciding = tg.create_task(until(policy, decision, stop))
                steps_overlap += await repeat(train, step, args.steps)
                stop.set()
            decisions_overlap += deciding.result()
    if isinstance(gnn, RemoteGnnPolicy):
        gnn.close()

    def median_ms(samples: list[float]) -> float:
        return statistics.median(samples) * 1e3

    step_slowdown = median_ms(steps_overlap) / median_ms(steps_alone)
    decision_slowdown = median_ms(decisions_overlap) / median_ms(decisions_alone)
    print(
        json.dumps(
            {
                "bench": "overlap",
                "torch_threads": {"train": args.train_threads, "policy": args.policy_threads},
                "policy_process": "process" if in_worker else "thread",
                "cpu_count": os.cpu_count(),
                "batch": BATCH,
                "step_ms_alone_p50": round(median_ms(steps_alone), 3),
                "step_ms_overlap_p50": round(median_ms(steps_overlap), 3),
                "decision_ms_alone_p50": round(median_ms(decisions_alone), 3),
                "decision_ms_overlap_p50": round(median_ms(decisions_overlap), 3),
                "decisions_during_overlap": len(decisions_overlap),
                "step_slowdown": round(step_slowdown, 3),
                "decision_slowdown": round(decision_slowdown, 3),
                "targets": TARGETS,
                "meets_targets": step_slowdown <= TARGETS["step_slowdown"]
                and decision_slowdown <= TARGETS["decision_slowdown"],
            }
        )
    )


if __name__ == "__main__":
    asyncio.run(main())
