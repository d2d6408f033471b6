"""Tolaria's control-plane cost: a plain PyTorch loop vs Tolaria's step loop on the same model, data and seed.

Arms run interleaved in one process (the machine is shared and noisy; medians are reported). Prints ONE JSON line:
overhead_pct (target <= 2), epoch_boundary_stall_p99_ms (target <= 1), fast_rollback_p99_ms (target <= 50) and
full_restore_ms (target <= 2000) for the default MNIST-1D model.

    python scripts/bench_trainer.py [--rounds 7] [--epochs 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import structlog
import torch
import torch.nn.functional as F

from actors.tolaria.build import batch_plan, build_host, load_data, seed_everything
from actors.tolaria.loop import LoopOptions, TrainingLoop
from actors.tolaria.plans import PlanInbox
from actors.tolaria.snapshots import SnapshotStore
from esper.nn.data_batches import iter_batches
from schemas.config import TolariaConfig

if TYPE_CHECKING:
    from esper.nn.data import DataSplits


class NullOutbox:
    def packet(self, packet: object) -> None: ...

    def applied(self, receipt: object) -> None: ...

    def event(self, event: object) -> None: ...


def plain_arm(config: TolariaConfig, data: DataSplits) -> float:
    """The reference: the same host, optimizer, batches, per-epoch validation and final test, nothing else."""
    started = time.perf_counter()
    seed_everything(config.seed)
    model = build_host(config, data.input_shape, data.num_classes)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay, foreach=True)
    plan = batch_plan(config, data)
    for epoch in range(config.epochs):
        model.train()
        for _, batch in iter_batches(data.train, plan, epoch):
            optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(batch.x).float(), batch.y)
            loss.backward()  # type: ignore[no-untyped-call]  # torch leaves Tensor.backward unannotated
            optimizer.step()
        model.eval()
        with torch.no_grad():
            F.cross_entropy(model(data.val.x), data.val.y).item()
    with torch.no_grad():  # Tolaria reports the test figures at the end; so does the reference
        F.cross_entropy(model(data.test.x), data.test.y).item()
    return time.perf_counter() - started


def tolaria_arm(config: TolariaConfig, data: DataSplits, directory: Path) -> tuple[float, TrainingLoop]:
    loop = TrainingLoop(
        config,
        LoopOptions(run_id="bench", checkpoint_dir=directory),
        inbox=PlanInbox(),
        outbox=NullOutbox(),
        snapshots=SnapshotStore(int(config.snapshot_memory_cap_mb * 2**20)),
        data=data,
    )
    started = time.perf_counter()
    loop.run()
    return time.perf_counter() - started, loop


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))  # quiet: errors only
    config = TolariaConfig(epochs=args.epochs)
    data = load_data(config)
    plain: list[float] = []
    tolaria: list[float] = []
    hooks: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        plain_arm(config, data)  # warm-up of both arms
        tolaria_arm(config, data, Path(tmp) / "warm")
        for index in range(args.rounds):
            # Alternate which arm goes first so drift in machine load hits both equally.
            if index % 2:
                plain.append(plain_arm(config, data))
                elapsed, loop = tolaria_arm(config, data, Path(tmp) / f"r{index}")
            else:
                elapsed, loop = tolaria_arm(config, data, Path(tmp) / f"r{index}")
                plain.append(plain_arm(config, data))
            tolaria.append(elapsed)
            hooks.extend(loop.hook_ms_history[1:] if index == 0 else loop.hook_ms_history)
        rollback_ms: list[float] = []
        for _ in range(30):
            started = time.perf_counter()
            assert loop.rollback("bench")
            rollback_ms.append((time.perf_counter() - started) * 1e3)
        restore_ms: list[float] = []
        for _ in range(5):
            started = time.perf_counter()
            assert loop.restore_checkpoint()
            restore_ms.append((time.perf_counter() - started) * 1e3)
    plain_s = statistics.median(plain)
    tolaria_s = statistics.median(tolaria)
    result = {
        "bench": "trainer",
        "model": "cnn1d",
        "dataset": "mnist1d",
        "epochs": args.epochs,
        "rounds": args.rounds,
        "steps_per_run": args.epochs * batch_plan(config, data).num_batches,
        "plain_median_s": round(plain_s, 4),
        "tolaria_median_s": round(tolaria_s, 4),
        "ratio": round(tolaria_s / plain_s, 4),
        "overhead_pct": round((tolaria_s / plain_s - 1.0) * 100.0, 2),
        "overhead_target_pct": 2.0,
        "epoch_boundary_stall_p50_ms": round(statistics.median(hooks), 3),
        "epoch_boundary_stall_p99_ms": round(p99(hooks), 3),
        "epoch_boundary_stall_target_ms": 1.0,
        "fast_rollback_p50_ms": round(statistics.median(rollback_ms), 3),
        "fast_rollback_p99_ms": round(p99(rollback_ms), 3),
        "fast_rollback_target_ms": 50.0,
        "full_restore_ms": round(statistics.median(restore_ms), 3),
        "full_restore_target_ms": 2000.0,
        "torch_threads": torch.get_num_threads(),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
