"""Tolaria's control-plane cost: a plain PyTorch loop vs Tolaria's step loop on the same model, data and seed.

Method (prints ONE JSON line):

- The configuration is what users run: the ``[tolaria]`` section of the shipped config.toml as ``esper.config`` loads
  it (``state_every_steps`` 4: a state packet every 4 steps; lr 0.003; MNIST-1D at the default 4000 samples, as
  config.toml leaves ``dataset_samples`` unset, the size this benchmark always used), with two overrides only:
  ``tolaria.epochs`` (``--epochs``: the benchmark's own design, many short runs) and ``tolaria.device = "cpu"`` (the
  plain arm is a CPU loop; on a CUDA machine "auto" would put Tolaria alone on the GPU). The JSON prints the packet
  cadence and every tolaria key whose value differs from the schema default.
- Both arms train the default MNIST-1D model in this process with ``torch.set_num_threads(1)``, on the same data
  tensors, batch order and seed. The plain arm is the textbook loop (zero_grad, forward, cross-entropy, backward,
  AdamW step with fused kernels, as Tolaria builds it) over ``iter_batches`` on the unwrapped host; it records no
  metrics. The Tolaria arm is ``TrainingLoop.run()`` with no planner (no adaptation) but everything else on: slots
  wrapped in, the finite check, statistics, a state packet every ``state_every_steps``, fast snapshots and a
  checkpoint every epoch written by the writer thread.
- Setup belongs to neither arm: data generation, model build, the slot-shape probe, starting the writer thread and
  the final checkpoint flush happen outside the timed spans.
- **overhead_pct** compares the steady-state cost of training: the median over epochs of the time from an epoch's
  start to the end of its last step (data, steps and, for Tolaria, its in-epoch packets and whatever the writer
  thread's serialisation of the previous checkpoint costs the loop through the GIL). The first epoch of every run
  is warm-up and is dropped. Arms are interleaved run by run, rotating which goes first, so drift in machine load
  hits each; ``overhead_paired_pct`` is the median of per-round ratios, a cross-check against such drift.
  ``control_pct`` / ``control_cpu_pct`` run the plain arm a second time in the same rotation and compare it with
  the first: the noise floor of the machine during this run (an overhead below it cannot be told apart from zero).
  ``overhead_cpu_pct`` compares the training thread's CPU time (``time.thread_time``) per epoch, which time spent
  descheduled by other processes does not inflate (nor does waiting for the GIL, so it excludes the writer thread's
  share; the wall figure is the headline).
- **overhead_interleaved_pct** steps a second, plain model inside Tolaria's batch hook, one textbook step (with its
  own batch fetch) before each Tolaria step, so both see the same moment of the machine. Per epoch it compares the
  sum of Tolaria's cycles (its step, whatever runs between steps such as packets, and the next batch fetch) with the
  sum of the plain steps over the same span; the median over epochs (first of each run dropped; the cycle across an
  epoch end is excluded, the stall covers it). ``overhead_interleaved_cpu_pct`` is the same in thread CPU time. The
  hook itself costs Tolaria one extra ``to_device`` call per step, so this errs against Tolaria.
- **epoch_boundary_stall** is the time the step loop is blocked at an epoch end beyond the validation pass any loop
  runs: the state packet, the snapshot copy, the verdict, the log record and handing the captured state to the
  checkpoint writer (p50 / p99 over every epoch end of the measured rounds).
- **fast_rollback** restores the in-memory snapshot (rebuild, replay, load) 30 times; **full_restore** reads,
  verifies and loads the last checkpoint 5 times (its median is reported).
- Percentiles are nearest-rank (the ``ceil(q n)``-th smallest sample); the JSON gives each one's sample count
  (``*_samples``). With fewer than 100 samples a p99 is the slowest sample.

Targets: overhead_pct <= 2, stall p99 <= 1 ms, fast rollback p99 <= 50 ms, full restore <= 2000 ms.

    python scripts/bench_trainer.py [--rounds 15] [--epochs 6]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec
import structlog
import torch
import torch.nn.functional as F

from actors.tolaria.build import batch_plan, load_data, seed_everything
from actors.tolaria.host_model import build_host
from actors.tolaria.loop import TrainingLoop
from actors.tolaria.loop_options import LoopOptions
from actors.tolaria.plans import PlanInbox
from actors.tolaria.snapshots import SnapshotStore
from esper.config import load_config
from esper.nn.data import TensorPair
from esper.nn.data_batches import iter_batches
from esper.runtime.percentiles import nearest_rank
from schemas.config import TolariaConfig

if TYPE_CHECKING:
    from collections.abc import Iterator

    from esper.nn.data import DataSplits


CONFIG = Path(__file__).resolve().parent.parent / "config.toml"


def bench_overrides(epochs: int) -> list[str]:
    """What the benchmark changes in the shipped configuration, and nothing else (see the module docstring)."""
    return [f"tolaria.epochs={epochs}", 'tolaria.device="cpu"']


def bench_config(epochs: int) -> TolariaConfig:
    """The shipped config.toml's tolaria section, as a run loads it, with ``bench_overrides``."""
    return load_config(CONFIG, bench_overrides(epochs)).tolaria


def non_default(config: TolariaConfig) -> dict[str, object]:
    """The tolaria keys whose value differs from the schema default, as JSON-ready values."""
    default = TolariaConfig()
    return {
        f.name: msgspec.to_builtins(getattr(config, f.name))
        for f in msgspec.structs.fields(config)
        if getattr(config, f.name) != getattr(default, f.name)
    }


class NullOutbox:
    def packet(self, packet: object) -> None: ...

    def applied(self, receipt: object) -> None: ...

    def event(self, event: object) -> None: ...


def textbook_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, batch: TensorPair) -> None:
    """The plain arm's step: zero_grad, forward, cross-entropy, backward, optimizer step."""
    optimizer.zero_grad(set_to_none=True)
    loss = F.cross_entropy(model(batch.x).float(), batch.y)
    loss.backward()  # type: ignore[no-untyped-call]  # torch leaves Tensor.backward unannotated
    optimizer.step()


def plain_arm(config: TolariaConfig, data: DataSplits) -> list[tuple[float, float]]:
    """The reference loop; returns each epoch's training (wall, thread CPU) seconds (validation between epochs is
    untimed)."""
    seed_everything(config.seed)
    model = build_host(config, data.input_shape, data.num_classes)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay, fused=True)
    plan = batch_plan(config, data)
    model.train()
    epochs: list[tuple[float, float]] = []
    for epoch in range(config.epochs):
        started = time.perf_counter()
        cpu_started = time.thread_time()
        for _, batch in iter_batches(data.train, plan, epoch):
            textbook_step(model, optimizer, batch)
        epochs.append((time.perf_counter() - started, time.thread_time() - cpu_started))
        model.eval()
        with torch.no_grad():
            F.cross_entropy(model(data.val.x), data.val.y).item()
        model.train()
    return epochs


def tolaria_arm(config: TolariaConfig, data: DataSplits, directory: Path) -> TrainingLoop:
    """Tolaria alone (no planner) with snapshots and a checkpoint every epoch; the loop keeps its own timings."""
    loop = TrainingLoop(
        config,
        LoopOptions(run_id="bench", checkpoint_dir=directory),
        inbox=PlanInbox(),
        outbox=NullOutbox(),
        snapshots=SnapshotStore(int(config.snapshot_memory_cap_mb * 2**20)),
        data=data,
    )
    loop.run()
    return loop


class _Interleaved:
    """Steps a plain model inside Tolaria's batch hook: one textbook step (its own batch fetch included) per Tolaria
    step, so the two are compared step by step under the same machine conditions."""

    def __init__(self, config: TolariaConfig, data: DataSplits) -> None:
        seed_everything(config.seed)
        self.model = build_host(config, data.input_shape, data.num_classes)
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=config.lr, weight_decay=config.weight_decay, fused=True
        )
        self.model.train()
        # A copy of its own: gathering from the very tensor Tolaria just gathered from would find it warm in the
        # caches and hand the plain arm a cheaper fetch than a plain loop gets.
        self.train = TensorPair(x=data.train.x.clone(), y=data.train.y.clone())
        self.plan = batch_plan(config, data)
        self.steps_per_epoch = self.plan.num_batches
        self.batches: Iterator[tuple[int, TensorPair]] = iter(())
        self.epoch = -1
        # Per epoch of Tolaria (the first dropped later): [plain wall, plain CPU, tolaria wall, tolaria CPU] sums.
        self.sums: list[list[float]] = []
        self._left: tuple[float, float] | None = None

    def hook(self, attempt: int, batch: TensorPair) -> TensorPair:
        wall, cpu = time.perf_counter(), time.thread_time()
        index = attempt % self.steps_per_epoch
        if index == 0:
            # Tolaria's epoch end (validation, snapshot) lies before this point: its cycle is not a step's.
            self.epoch += 1
            self.batches = iter_batches(self.train, self.plan, self.epoch)
            self.sums.append([0.0, 0.0, 0.0, 0.0])
        elif self._left is not None:
            # Tolaria's cycle: the previous step, whatever ran between steps (packets), and this batch's fetch.
            row = self.sums[-1]
            row[2] += wall - self._left[0]
            row[3] += cpu - self._left[1]
        _, own = next(self.batches)
        textbook_step(self.model, self.optimizer, own)
        wall_done, cpu_done = time.perf_counter(), time.thread_time()
        if index > 0:
            # The plain cycle over the same span: one fetch and one step.
            row = self.sums[-1]
            row[0] += wall_done - wall
            row[1] += cpu_done - cpu
        self._left = (wall_done, cpu_done)
        return batch


def interleaved_arm(config: TolariaConfig, data: DataSplits, directory: Path) -> list[list[float]]:
    """Tolaria and a plain loop stepped alternately in one thread; per-epoch sums (see ``_Interleaved``)."""
    plain = _Interleaved(config, data)
    loop = TrainingLoop(
        config,
        LoopOptions(run_id="bench", checkpoint_dir=directory, batch_hook=plain.hook),
        inbox=PlanInbox(),
        outbox=NullOutbox(),
        snapshots=SnapshotStore(int(config.snapshot_memory_cap_mb * 2**20)),
        data=data,
    )
    loop.run()
    return plain.sums[1:]


def _median(rows: list[tuple[float, float]], column: int) -> float:
    return statistics.median(row[column] for row in rows)


def p99(values: list[float]) -> float:
    """Nearest-rank p99: the ``ceil(0.99 n)``-th smallest value."""
    value = nearest_rank(sorted(values), 0.99)
    if value is None:
        raise ValueError("p99 of no samples")
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--epochs", type=int, default=6)
    args = parser.parse_args()
    if args.epochs < 2:
        parser.error("--epochs must be >= 2 (the first epoch of every run is warm-up)")
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))  # quiet: errors only
    torch.set_num_threads(1)
    config = bench_config(args.epochs)
    data = load_data(config)
    plain: list[tuple[float, float]] = []
    control: list[tuple[float, float]] = []
    tolaria: list[tuple[float, float]] = []
    paired: list[float] = []
    stalls: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        plain_arm(config, data)  # warm-up of both arms
        loop = tolaria_arm(config, data, Path(tmp) / "warm")
        for index in range(args.rounds):
            # Rotate the order of the three arms so drift in machine load hits each equally.
            order = ("plain", "tolaria", "control")
            for arm in order[index % 3 :] + order[: index % 3]:
                if arm == "plain":
                    plain_epochs = plain_arm(config, data)[1:]
                elif arm == "control":
                    control.extend(plain_arm(config, data)[1:])
                else:
                    loop = tolaria_arm(config, data, Path(tmp) / f"r{index}")
            tolaria_epochs = list(zip(loop.epoch_train_s_history, loop.epoch_train_cpu_s_history, strict=True))[1:]
            plain.extend(plain_epochs)
            tolaria.extend(tolaria_epochs)
            paired.append(_median(tolaria_epochs, 0) / _median(plain_epochs, 0))
            stalls.extend(loop.stall_ms_history)
        interleaved: list[list[float]] = []
        for index in range(args.rounds):
            interleaved.extend(interleaved_arm(config, data, Path(tmp) / f"i{index}"))
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
    steps = batch_plan(config, data).num_batches
    plain_s = _median(plain, 0)
    tolaria_s = _median(tolaria, 0)
    plain_cpu_s = _median(plain, 1)
    tolaria_cpu_s = _median(tolaria, 1)
    result = {
        "bench": "trainer",
        "model": config.host_model,
        "dataset": config.dataset,
        "dataset_samples": config.dataset_samples,
        "config": f"{CONFIG.name} [tolaria] with {' '.join(bench_overrides(args.epochs))}",
        "state_every_steps": config.state_every_steps,
        "tolaria_non_default": non_default(config),
        "epochs": args.epochs,
        "rounds": args.rounds,
        "steps_per_epoch": steps,
        "epochs_measured_per_arm": len(plain),
        "plain_epoch_median_ms": round(plain_s * 1e3, 3),
        "tolaria_epoch_median_ms": round(tolaria_s * 1e3, 3),
        "plain_step_median_us": round(plain_s / steps * 1e6, 1),
        "tolaria_step_median_us": round(tolaria_s / steps * 1e6, 1),
        "ratio": round(tolaria_s / plain_s, 4),
        "overhead_pct": round((tolaria_s / plain_s - 1.0) * 100.0, 2),
        "overhead_paired_pct": round((statistics.median(paired) - 1.0) * 100.0, 2),
        "overhead_cpu_pct": round((tolaria_cpu_s / plain_cpu_s - 1.0) * 100.0, 2),
        "control_pct": round((_median(control, 0) / plain_s - 1.0) * 100.0, 2),
        "control_cpu_pct": round((_median(control, 1) / plain_cpu_s - 1.0) * 100.0, 2),
        "overhead_interleaved_pct": round((statistics.median(r[2] / r[0] for r in interleaved) - 1.0) * 100.0, 2),
        "overhead_interleaved_cpu_pct": round((statistics.median(r[3] / r[1] for r in interleaved) - 1.0) * 100.0, 2),
        "interleaved_epochs_measured": len(interleaved),
        "overhead_target_pct": 2.0,
        "epoch_boundary_stall_p50_ms": round(statistics.median(stalls), 3),
        "epoch_boundary_stall_p99_ms": round(p99(stalls), 3),
        "epoch_boundary_stall_max_ms": round(max(stalls), 3),
        "epoch_boundary_stall_samples": len(stalls),
        "epoch_boundary_stall_target_ms": 1.0,
        "fast_rollback_p50_ms": round(statistics.median(rollback_ms), 3),
        "fast_rollback_p99_ms": round(p99(rollback_ms), 3),
        "fast_rollback_samples": len(rollback_ms),
        "fast_rollback_target_ms": 50.0,
        "full_restore_ms": round(statistics.median(restore_ms), 3),
        "full_restore_samples": len(restore_ms),
        "full_restore_target_ms": 2000.0,
        "torch_threads": torch.get_num_threads(),
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
