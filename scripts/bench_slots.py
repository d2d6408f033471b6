"""Benchmark seed slots: dormant-slot overhead, graft stall and incubation cost. Prints ONE JSON line.

    python scripts/bench_slots.py [--steps N] [--threads T] [--hosts cnn1d,cnn2d_32] [--incubation-steps N]

- ``dormant_overhead_pct``: one training step (zero_grad, forward, cross-entropy, backward, SGD-momentum step) of
  the host with a dormant slot after every block vs the same model unwrapped, arms alternated in blocks of steps in
  one process, each step timed in this thread's CPU time, as the median over block quadruples of
  ``slotted / plain - 1`` (block medians, ABBA quadruples), in percent. Target <= 0.5.
  ``dormant_control_pct`` repeats it with both arms plain: the noise floor of the machine during the run.
- ``graft_stall_ms_p99``: ``slot.attach(seed) + add_seed_group(...)`` for a prepared seed, nearest-rank p99 (the
  ``ceil(0.99 n)``-th smallest) over ``graft_stall_samples`` trials. Target <= 1 ms.
- ``incubation_cost_ratio``: ``median over rotations of (step with one seed - step with the slot dormant) / median
  of the seed's own forward+backward on a tensor of the slot's activation shape``, for TRAINING and BLENDING (alpha
  0.5); the arms run back to back in a rotating order and each difference pairs the steps of one rotation. Target
  <= 1.2.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import time
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from esper.nn import SlotMode, find_slots, unwrap, wrap
from esper.nn.hosts import CNN1dHost, CNN2dHost
from esper.nn.optim_migration import add_seed_group, remove_seed_group
from esper.runtime.percentiles import nearest_rank

if TYPE_CHECKING:
    from collections.abc import Callable


def _step_fn(
    model: nn.Module, opt: torch.optim.Optimizer, x: Tensor, y: Tensor, clock: Callable[[], float] = time.thread_time
) -> Callable[[], float]:
    def step() -> float:
        t0 = clock()
        opt.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(model(x), y)
        torch.autograd.backward(loss)
        opt.step()
        return clock() - t0

    return step


GRAFT_STALL_TRIALS = 200


def _host(name: str) -> tuple[nn.Module, tuple[str, ...], Tensor, Tensor]:
    if name == "cnn1d":
        h1 = CNN1dHost()
        return h1, h1.slot_targets, torch.randn(64, 40), torch.randint(0, 10, (64,))
    h2 = CNN2dHost()
    return h2, h2.slot_targets, torch.randn(32, 3, 32, 32), torch.randint(0, 10, (32,))


def dormant_overhead_pct(name: str, steps: int, control: bool = False, block: int = 40) -> dict[str, float]:
    """Median over ABBA block quadruples of ``slotted / plain - 1`` (block medians), in %; ``control``: plain vs plain.

    Returns the median (``pct``), a 95 % bootstrap interval of that median (``ci95_lo``, ``ci95_hi``: 2000 resamples
    of the quadruples, fixed seed) and the number of quadruples, so a run says how far it can be trusted.

    One model and one optimizer: slots are inserted (``wrap``) and removed (``unwrap``) between blocks of ``block``
    steps, so both arms use the very same tensors and memory. Two separate model objects (the previous method) carry
    their own allocation layout, which biased a same-vs-same control by up to 1 %. Reassigning classes deoptimises
    CPython's specialised attribute caches, so the first ``block // 8`` steps after each toggle are not counted.
    Each step is timed in this thread's CPU time (torch runs single-threaded, on this thread), so preemption by other
    processes does not count. Blocks run in the order ABBA; each quadruple's geometric-mean ratio cancels a linear
    drift within it, and the figure is the median over quadruples.
    """
    torch.manual_seed(0)
    model, targets, x, y = _host(name)
    step = _step_fn(model, torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9), x, y)
    for _ in range(20):
        step()
    skip = max(1, block // 8)
    blocks = max(4, 4 * round(steps / block / 4))
    medians: dict[bool, list[float]] = {True: [], False: []}
    for k in range(blocks):
        slotted = (k % 4) in (0, 3)
        if slotted and not control:
            wrap(model, targets)
        times = [step() for _ in range(block + skip)][skip:]
        if slotted and not control:
            unwrap(model)
        medians[slotted].append(statistics.median(times))
    # Each ABBA quadruple gives one ratio, sqrt(A0 * A3 / (B1 * B2)), which cancels a linear drift within it.
    on, off = medians[True], medians[False]
    ratios = [math.sqrt((on[i] * on[i + 1]) / (off[i] * off[i + 1])) for i in range(0, len(on) - 1, 2)]
    lo, hi = _bootstrap_median_ci([(r - 1.0) * 100.0 for r in ratios])
    return {"pct": (statistics.median(ratios) - 1.0) * 100.0, "ci95_lo": lo, "ci95_hi": hi, "quadruples": len(ratios)}


def _bootstrap_median_ci(values: list[float], resamples: int = 2000) -> tuple[float, float]:
    """Percentile bootstrap 95 % interval of the median of ``values`` (deterministic: seeded)."""
    rng = random.Random(0)
    medians = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(resamples))
    return medians[int(0.025 * resamples)], medians[int(0.975 * resamples) - 1]


def _seed_for(name: str) -> nn.Module:
    if name == "cnn1d":
        return nn.Sequential(nn.Conv1d(12, 12, 5, padding=2), nn.ReLU())
    return nn.Sequential(nn.Conv2d(32, 32, 3, padding=1), nn.ReLU())


def p99(values: list[float]) -> float:
    """Nearest-rank p99: the ``ceil(0.99 n)``-th smallest value."""
    value = nearest_rank(sorted(values), 0.99)
    if value is None:
        raise ValueError("p99 of no samples")
    return value


def graft_stall_ms_p99(trials: int) -> float:
    torch.manual_seed(0)
    model, targets, _, _ = _host("cnn1d")
    wrap(model, targets)
    slot = find_slots(model)["blocks.1"]
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    seed = _seed_for("cnn1d")
    times: list[float] = []
    for i in range(trials):
        t0 = time.perf_counter()
        slot.attach(seed, SlotMode.TRAINING, seed_id=f"s{i}")
        add_seed_group(opt, f"s{i}", seed.parameters(), lr=0.01)
        times.append((time.perf_counter() - t0) * 1e3)
        slot.detach()
        remove_seed_group(opt, f"s{i}")
    return p99(times)


def incubation_cost_ratio(name: str, steps: int) -> dict[str, float]:
    torch.manual_seed(0)
    model, targets, x, y = _host(name)
    wrap(model, targets)
    slot = find_slots(model)["blocks.1"]
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    seed = _seed_for(name)
    # The group stays: in the dormant arm the seed has no grads, so the optimizer skips it.
    add_seed_group(opt, "s", seed.parameters(), lr=0.01)
    step = _step_fn(model, opt, x, y, clock=time.perf_counter)
    with torch.no_grad():
        first, second = model.get_submodule("blocks.0"), model.get_submodule("blocks.1")
        act = second(first(x.unsqueeze(1) if x.dim() == 2 else x))
    grad = torch.randn_like(act)

    def seed_alone() -> float:
        t0 = time.perf_counter()
        for p in seed.parameters():
            p.grad = None
        torch.autograd.backward(seed(act), grad)
        return time.perf_counter() - t0

    def in_mode(mode: SlotMode) -> float:
        slot.attach(seed, mode, seed_id="s")
        if mode is SlotMode.BLENDING:
            for _ in range(10):
                slot.advance_alpha()
        elapsed = step()
        slot.detach()
        return elapsed

    for _ in range(10):
        step()
        in_mode(SlotMode.TRAINING)
        seed_alone()
    arms: dict[str, list[float]] = {"dormant": [], "training": [], "blending": [], "alone": []}
    runners: dict[str, Callable[[], float]] = {
        "dormant": step,
        "training": lambda: in_mode(SlotMode.TRAINING),
        "blending": lambda: in_mode(SlotMode.BLENDING),
        "alone": seed_alone,
    }
    order = list(runners)
    for i in range(steps):
        for key in order[i % 4 :] + order[: i % 4]:
            arms[key].append(runners[key]())
    # Paired within each rotation (the four arms ran back to back), so slow drift cancels; then the median.
    alone = statistics.median(arms["alone"])
    return {
        mode: statistics.median(m - d for m, d in zip(arms[mode], arms["dormant"], strict=True)) / alone
        for mode in ("training", "blending")
    }


def _rounded_ci(figure: dict[str, float]) -> list[float]:
    return [round(figure["ci95_lo"], 3), round(figure["ci95_hi"], 3)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--steps", type=int, default=300, help="timed steps per arm (>= 30)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads, fixed for every arm")
    parser.add_argument("--incubation-steps", type=int, default=None, help="steps for the incubation ratio (--steps)")
    parser.add_argument("--hosts", default="cnn1d,cnn2d_32", help="comma-separated hosts for the dormant overhead")
    args = parser.parse_args()
    steps = max(30, args.steps)
    torch.set_num_threads(args.threads)
    incubation = max(30, args.incubation_steps if args.incubation_steps is not None else steps)
    hosts = tuple(h for h in args.hosts.split(",") if h)
    unknown = sorted(set(hosts) - {"cnn1d", "cnn2d_32"})
    if unknown:
        parser.error(f"--hosts: unknown host(s) {unknown}; choose from cnn1d, cnn2d_32")
    overhead = {name: dormant_overhead_pct(name, steps) for name in hosts}
    control = {name: dormant_overhead_pct(name, steps, control=True) for name in hosts}
    result = {
        "dormant_overhead_pct": {name: round(overhead[name]["pct"], 3) for name in hosts},
        "dormant_overhead_ci95": {name: _rounded_ci(overhead[name]) for name in hosts},
        # The same measurement with both arms plain: the noise floor of this machine right now.
        "dormant_control_pct": {name: round(control[name]["pct"], 3) for name in hosts},
        "dormant_control_ci95": {name: _rounded_ci(control[name]) for name in hosts},
        "quadruples": {name: int(overhead[name]["quadruples"]) for name in hosts},
        "graft_stall_ms_p99": round(graft_stall_ms_p99(GRAFT_STALL_TRIALS), 4),
        "graft_stall_samples": GRAFT_STALL_TRIALS,
        "incubation_cost_ratio": {
            "cnn1d": {k: round(v, 3) for k, v in incubation_cost_ratio("cnn1d", incubation).items()},
            "cnn2d_32": {
                k: round(v, 3) for k, v in incubation_cost_ratio("cnn2d_32", max(30, incubation // 4)).items()
            },
        },
        "targets": {"dormant_overhead_pct": 0.5, "graft_stall_ms_p99": 1.0, "incubation_cost_ratio": 1.2},
        "threads": args.threads,
        "steps": steps,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
