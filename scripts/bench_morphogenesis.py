"""Benchmark: does growth help? Esper's controller against fixed and naive growth. ONE JSON line per data set.

    python scripts/bench_morphogenesis.py [--seeds 3] [--epochs N] [--datasets mnist1d,digits]

Every arm is a real run through ``esper.start`` (Tolaria's loop, the same host, data, epochs, optimizer and batch
order; config.toml plus the overrides below; console off; a temporary run directory per run), run one after
another (the machine has 2 cores; sequential runs keep wall times undistorted). Before the timed arms of a data set,
one untimed warm-up run (the esper arm, seed 0, 1 epoch, its own run directory, the same urza root): the first run on
a fresh urza root compiles the catalogue into it and pays first-use costs, which would otherwise land on the first
timed arm's wall time (seed 0's esper arm) alone; its wall time is reported as ``warmup_wall_s``. Data sets:

- mnist1d: ``tolaria.dataset_samples = 5000``, the package's standard 4000 train / 1000 test split (20 % of the
  4000 held out for validation), host ``cnn1d`` (3 conv blocks of width 12, slots after each block).
- digits: scikit-learn's 8x8 digits (seeded 80/20 train/test split, 20 % of train for validation), host ``mlp``
  (3 Linear+ReLU blocks of 64, slots after each block).

Arms (seeds 0..n-1 each; the "default blueprint" of a data set, ``DEFAULT_BLUEPRINTS``, is the one the shipped
heuristic grafts on its host: config.toml's ``tamiyo.blueprint_cost_tier = "medium"`` makes it BP005 residual_conv
on the cnn1d host's conv1d slots and BP007 gated_linear_unit on the mlp host's flat slots; the record lists the
blueprints esper actually grafted, ``esper_blueprints``, so a mismatch shows):

- host: the heuristic with germination disabled (``tamiyo.plateau_patience_epochs`` = 10**6).
- static_full: the host plus a default-blueprint seed in every slot from step 0 (``tolaria.initial_seeds``:
  fossilized, trained with the host's optimizer group), germination disabled.
- static_same: the (slot, blueprint) pairs the same seed's esper run fossilized, present from step 0.
- every_k: ``tamiyo.policy = "every_k"``, only the default blueprint (``karn.include``), K = ceil(epochs / (n + 1))
  where n is the number of germinations the same seed's esper run made (so it grafts about as often).
- naive: esper's controller without incubation or ramp: ``kasmina.stage_min_dwell_steps = 0``,
  ``kasmina.g2_window_steps = 1`` (one packet of evidence), ``kasmina.blend_ramp_steps = 1`` (alpha reaches 1 in
  one step). The lifecycle still passes through TRAINING for at least one packet interval (4 steps): no knob skips
  it.
- esper: the shipped defaults (heuristic controller).

Figures per arm: test accuracy (mean, min, max over seeds), parameters added (seed parameters at the end, mean),
wall time (mean seconds from ``esper.start`` to the summary), the fallback decisions and emergency events of each
seed's run and, for grafting arms, ``max_loss_jump_pct``. A run is deterministic only while every decision meets its
wall-clock deadline and no budget trips: ``load_perturbed_runs`` lists the runs (arm/seed) where the machine's load
decided something (a fallback decision or an emergency), so a figure moved by load shows as such.

max_loss_jump_pct: the training loss is read from Tolaria's state packets (``tolaria.state_every_steps`` = 4, the
shipped cadence: a packet every 4 steps and at each epoch end, carrying the mean loss over its interval). Per-step
packets are not used because Kasmina's evidence windows count packets, so the cadence changes the lifecycle of the
growing arms. Grafts are read from the run's final checkpoint graft log: every ``attach`` and every ``set_stage``
to BLENDING (the two moments a graft can change the function: with incubation the forward value changes only when
alpha leaves 0). For a graft at step g, loss_g is the loss of the last packet at or before g (the mean over up to 4
steps before it) and the jump is max over packets t in (g, g + 20] of (loss_t - loss_g) / loss_g * 100; the figure
is the max over the run's grafts (0 when no packet rose), then the max over seeds. ``noise_floor_pct`` is the same
statistic on the host arm's packets at the esper arm's graft steps (no graft there): mini-batch noise alone.

max_loss_jump_vs_host_pct: the same window, with each packet's loss taken relative to the host arm's packet of the
same seed and step (the same batches: every arm keeps the batch order): ((loss_t - host_t) - (loss_g - host_g)) /
loss_g * 100. Late in training a 4-step mean moves by tens of percent with the batches alone, which the plain
statistic cannot tell from a graft's disruption; against the host the batches cancel. ``noise_floor_vs_host_pct``
is it for static_full (present from step 0, so nothing is grafted) at esper's graft steps: the drift of two
different models on the same batches.

probe_loss_jump_pct (and _vs_host_pct, with noise floors computed the same way): the same two statistics on a
steadier loss. After every step the run's model is evaluated on a fixed probe set, the first two training batches
of the run (256 samples; every arm of a seed trains on the same batches in the same order), in training mode (batch
statistics, as the training loss) under no_grad, with every buffer and the RNG state put back afterwards so
training is untouched (the host arm's figures match runs without the probe). The loss on the same samples removes
the batch-to-batch noise of the packet statistics; what is left is how the model moved. For a graft applied at
the boundary after step g, the base is the probe after step g (before the graft) and the window is steps g+1 ..
g+20.

When esper grafted nothing on any seed, the loss-jump targets are reported as null (nothing to judge).

Derived: gap_closed = (esper - host) / (static_full - host) in mean test accuracy, null when static_full - host <= 0
(no gap to close; ``static_full_minus_host_acc`` shows the span); params_ratio = esper's mean added parameters /
static_full's. Targets: gap_closed >= 0.75 with params_ratio <= 0.6; esper's accuracy >= every_k's with no more
added parameters; esper's max_loss_jump_pct <= 2 with naive's above esper's (reported for every statistic).

paired_differences (not a target; how far the noise reaches): for esper - every_k, esper - host and static_full -
host, the mean over seeds of the per-seed difference in test accuracy (points) and its standard error (sample sd /
sqrt(seeds)). Every arm of a seed shares data, split, initial host weights and batch order, so the per-seed
difference is the fair comparison; a mean within about two standard errors of zero is not resolved.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

import esper
from actors.tolaria.checkpoint_verify import load_latest
from esper.wiring import RunHooks
from schemas.enums import SeedLifecycleStage

if TYPE_CHECKING:
    from esper.nn.data import TensorPair
    from schemas.run import RunSummary
    from schemas.state import SystemStatePacket

CONFIG = Path(__file__).resolve().parent.parent / "config.toml"
DEFAULT_BLUEPRINTS = {"mnist1d": "BP005", "digits": "BP007"}
SLOTS = ("blocks.0", "blocks.1", "blocks.2")
JUMP_WINDOW_STEPS = 20
PROBE_BATCHES = 2
NO_GERMINATION = "tamiyo.plateau_patience_epochs=1000000"
DATASETS: dict[str, tuple[str, ...]] = {
    "mnist1d": ("tolaria.dataset=mnist1d", "tolaria.dataset_samples=5000", "tolaria.host_model=cnn1d"),
    "digits": ("tolaria.dataset=digits", "tolaria.host_model=mlp"),
}
ARMS = ("host", "static_full", "static_same", "every_k", "naive", "esper")


@dataclass
class RunResult:
    """One run's figures."""

    test_accuracy: float
    parameters_added: int
    wall_s: float
    status: str
    packets: list[tuple[int, float]]
    grafts: list[tuple[int, str]]
    fossilized: list[str]
    germinations: int
    blueprints: list[str]
    probe: list[tuple[int, float]]
    fallback_decisions: int = 0
    emergency_events: int = 0
    overrides: list[str] = field(default_factory=list)


class LossProbe:
    """The model's training-mode loss on a fixed probe set after each step; leaves buffers and RNG as it found them."""

    def __init__(self) -> None:
        self._parts: list[TensorPair] = []
        self._probe: tuple[torch.Tensor, torch.Tensor] | None = None
        self.losses: dict[int, float] = {}

    def __call__(self, step: int, model: nn.Module, batch: TensorPair) -> None:
        if self._probe is None:
            self._parts.append(batch)
            if len(self._parts) < PROBE_BATCHES:
                return
            self._probe = (torch.cat([p.x for p in self._parts]), torch.cat([p.y for p in self._parts]))
        x, y = self._probe
        buffers = list(model.buffers())
        saved = [b.detach().clone() for b in buffers]
        rng = torch.get_rng_state()
        with torch.no_grad():
            loss = F.cross_entropy(model(x).float(), y)
            for buffer, value in zip(buffers, saved, strict=True):
                buffer.copy_(value)
        torch.set_rng_state(rng)
        self.losses[step] = float(loss)


def _toml_list(items: list[str]) -> str:
    return "[" + ",".join(json.dumps(i) for i in items) + "]"


async def _run(overrides: list[str], run_dir: Path) -> RunResult:
    packets: list[tuple[int, float]] = []

    def tap(packet: SystemStatePacket) -> None:
        packets.append((packet.global_step, packet.training_loss))

    probe = LossProbe()
    started = time.perf_counter()
    system = await esper.start(
        CONFIG, run_dir=run_dir, overrides=overrides, console=False, hooks=RunHooks(packet_tap=tap, step_probe=probe)
    )
    summary: RunSummary = await system.wait()
    wall_s = time.perf_counter() - started
    training = summary.training
    if training is None or training.test_accuracy is None:
        raise RuntimeError(f"run {run_dir} ended {summary.status} without test figures: {summary.error}")
    found = load_latest(run_dir / "checkpoints")
    log = found[0].graft_log if found is not None else []
    grafts: list[tuple[int, str]] = []
    fossilized: list[str] = []
    blueprints: set[str] = set()
    for event in log:
        if event.kind == "attach" and not (event.seed_id or "").startswith("initial-"):
            grafts.append((event.step, "attach"))
            blueprints.add(event.blueprint_id or "?")
        elif event.kind == "set_stage" and event.stage is SeedLifecycleStage.BLENDING:
            grafts.append((event.step, "blend"))
        if event.kind == "fossilize" or (event.kind == "set_stage" and event.stage is SeedLifecycleStage.FOSSILIZED):
            attach = next(e for e in log if e.kind == "attach" and e.seed_id == event.seed_id)
            fossilized.append(f"{attach.slot}={attach.blueprint_id}")
    germinations = sum(1 for _, kind in grafts if kind == "attach")
    growth = summary.growth
    return RunResult(
        test_accuracy=training.test_accuracy,
        parameters_added=training.seed_parameters,
        wall_s=wall_s,
        status=summary.status,
        packets=packets,
        grafts=grafts,
        fossilized=sorted(set(fossilized)),
        germinations=germinations,
        blueprints=sorted(blueprints),
        probe=sorted(probe.losses.items()),
        fallback_decisions=growth.fallback_decisions if growth is not None else 0,
        emergency_events=growth.emergency_events if growth is not None else 0,
        overrides=overrides,
    )


def loss_jump_pct(
    packets: list[tuple[int, float]], graft_steps: list[int], reference: list[tuple[int, float]] | None = None
) -> float:
    """Max over grafts g of max over packets t in (g, g + 20] of (loss_t - loss_g) / loss_g * 100 (>= 0).

    With ``reference`` (the host arm's packets of the same seed: the same batches at the same steps), each loss is
    first taken relative to the host's on the same step: the rise is ((loss_t - host_t) - (loss_g - host_g)) /
    loss_g, so the difficulty of the batches drops out and what is left is how the graft moved this arm against
    the host. Steps the reference lacks are skipped.
    """
    arm = {step: loss for step, loss in sorted(packets) if math.isfinite(loss)}
    host = {step: loss for step, loss in sorted(reference) if math.isfinite(loss)} if reference is not None else None
    steps = [step for step in arm if host is None or step in host]

    def excess(step: int) -> float:
        return arm[step] - (host[step] if host is not None else 0.0)

    worst = 0.0
    for g in graft_steps:
        before = [step for step in steps if step <= g]
        if not before or arm[before[-1]] <= 0:
            continue
        base_step = before[-1]
        for step in steps:
            if g < step <= g + JUMP_WINDOW_STEPS:
                worst = max(worst, (excess(step) - excess(base_step)) / arm[base_step] * 100.0)
    return worst


def paired_difference(a: list[RunResult], b: list[RunResult]) -> dict[str, float | None]:
    """Mean and standard error over seeds of ``a``'s test accuracy minus ``b``'s, in points (None below 2 seeds)."""
    diffs = [(x.test_accuracy - y.test_accuracy) * 100.0 for x, y in zip(a, b, strict=True)]
    if len(diffs) < 2:
        return {"mean_points": round(diffs[0], 3) if diffs else None, "se_points": None}
    se = statistics.stdev(diffs) / math.sqrt(len(diffs))
    return {"mean_points": round(statistics.fmean(diffs), 3), "se_points": round(se, 3)}


def _arm_figures(runs: list[RunResult], grafting: bool, hosts: list[RunResult]) -> dict[str, object]:
    accs = [r.test_accuracy for r in runs]
    out: dict[str, object] = {
        "test_accuracy_mean": round(statistics.fmean(accs), 4),
        "test_accuracy_min": round(min(accs), 4),
        "test_accuracy_max": round(max(accs), 4),
        "test_accuracy_std": round(statistics.pstdev(accs), 4),
        "test_accuracy_per_seed": [round(a, 4) for a in accs],
        "parameters_added_mean": round(statistics.fmean(r.parameters_added for r in runs), 1),
        "parameters_added": [r.parameters_added for r in runs],
        "wall_s_mean": round(statistics.fmean(r.wall_s for r in runs), 2),
        # Non-zero means the machine's load decided part of the run (a decision past its wall-clock deadline is made
        # by the fallback; a budget breach raises the emergency ladder): that run is not the deterministic one.
        "fallback_decisions_per_seed": [r.fallback_decisions for r in runs],
        "emergency_events_per_seed": [r.emergency_events for r in runs],
    }
    if grafting:
        jumps = [loss_jump_pct(r.packets, [s for s, _ in r.grafts]) for r in runs]
        attach = [loss_jump_pct(r.packets, [s for s, k in r.grafts if k == "attach"]) for r in runs]
        out["max_loss_jump_pct"] = round(max(jumps), 2)
        out["max_loss_jump_pct_per_seed"] = [round(j, 2) for j in jumps]
        out["max_loss_jump_after_attach_pct"] = round(max(attach), 2)
        matched = [
            loss_jump_pct(r.packets, [s for s, _ in r.grafts], h.packets) for r, h in zip(runs, hosts, strict=True)
        ]
        out["max_loss_jump_vs_host_pct"] = round(max(matched), 2)
        out["max_loss_jump_vs_host_pct_per_seed"] = [round(j, 2) for j in matched]
        probed = [loss_jump_pct(r.probe, [s for s, _ in r.grafts]) for r in runs]
        out["probe_loss_jump_pct"] = round(max(probed), 2)
        out["probe_loss_jump_pct_per_seed"] = [round(j, 2) for j in probed]
        probed_attach = [loss_jump_pct(r.probe, [s for s, k in r.grafts if k == "attach"]) for r in runs]
        out["probe_loss_jump_after_attach_pct"] = round(max(probed_attach), 2)
        probed_vs_host = [
            loss_jump_pct(r.probe, [s for s, _ in r.grafts], h.probe) for r, h in zip(runs, hosts, strict=True)
        ]
        out["probe_loss_jump_vs_host_pct"] = round(max(probed_vs_host), 2)
        out["probe_loss_jump_vs_host_pct_per_seed"] = [round(j, 2) for j in probed_vs_host]
        out["grafts_per_seed"] = [r.germinations for r in runs]
    return out


def bench_dataset(
    name: str, seeds: int, epochs: int | None, root: Path, blueprint: str | None = None
) -> dict[str, object]:
    """Run every arm for every seed on one data set and return its JSON record."""
    base = [*DATASETS[name], "logging.console=false", "nissa.report_png=false", f"urza.root={root / 'urza'}"]
    if epochs is not None:
        base.append(f"tolaria.epochs={epochs}")
    if blueprint is None:
        blueprint = DEFAULT_BLUEPRINTS[name]
    else:
        # Another default blueprint: the only one Karn offers, so the heuristic grafts it too.
        base.append(f"karn.include={_toml_list([blueprint])}")
    total_epochs = epochs if epochs is not None else 50  # config.toml's
    results: dict[str, list[RunResult]] = {arm: [] for arm in ARMS}
    every_k_by_seed: list[int] = []
    noise: list[float] = []
    noise_vs_host: list[float] = []
    probe_noise: list[float] = []
    probe_noise_vs_host: list[float] = []
    started = time.perf_counter()
    # Untimed: the first run on a fresh urza root compiles the catalogue into it (Tezzeret) and pays first-use imports
    # and caches, about ten times a short run's wall time, which the first timed arm would otherwise carry alone.
    warm_up = [o for o in base if not o.startswith("tolaria.epochs=")]
    warm_up_s = asyncio.run(_run([*warm_up, "tolaria.epochs=1", "tolaria.seed=0"], root / f"{name}-warmup")).wall_s
    for seed in range(seeds):
        common = [*base, f"tolaria.seed={seed}"]

        def run(arm: str, extra: list[str], seed: int = seed, common: list[str] = common) -> RunResult:
            result = asyncio.run(_run([*common, *extra], root / f"{name}-{arm}-{seed}"))
            results[arm].append(result)
            return result

        grown = run("esper", [])
        host = run("host", [NO_GERMINATION])
        noise.append(loss_jump_pct(host.packets, [s for s, _ in grown.grafts]))
        probe_noise.append(loss_jump_pct(host.probe, [s for s, _ in grown.grafts]))
        full = [f"{slot}={blueprint}" for slot in SLOTS]
        static = run("static_full", [NO_GERMINATION, f"tolaria.initial_seeds={_toml_list(full)}"])
        noise_vs_host.append(loss_jump_pct(static.packets, [s for s, _ in grown.grafts], host.packets))
        probe_noise_vs_host.append(loss_jump_pct(static.probe, [s for s, _ in grown.grafts], host.probe))
        run("static_same", [NO_GERMINATION, f"tolaria.initial_seeds={_toml_list(grown.fossilized)}"])
        k = max(1, math.ceil(total_epochs / (grown.germinations + 1)))
        every_k_by_seed.append(k)
        run(
            "every_k",
            ["tamiyo.policy=every_k", f"tamiyo.every_k_epochs={k}", f"karn.include={_toml_list([blueprint])}"],
        )
        run("naive", ["kasmina.stage_min_dwell_steps=0", "kasmina.g2_window_steps=1", "kasmina.blend_ramp_steps=1"])
    arms = {
        arm: _arm_figures(runs, arm in ("every_k", "naive", "esper"), results["host"]) for arm, runs in results.items()
    }
    arms["static_same"]["architectures"] = [r.overrides[-1].partition("=")[2] for r in results["static_same"]]
    arms["every_k"]["k_epochs"] = every_k_by_seed
    arms["esper"]["fossilized"] = [r.fossilized for r in results["esper"]]
    esper_blueprints = sorted({b for r in results["esper"] for b in r.blueprints})

    def mean(arm: str, key: str) -> float:
        value = arms[arm][key]
        assert isinstance(value, float)
        return value

    host_acc, full_acc, esper_acc = (mean(a, "test_accuracy_mean") for a in ("host", "static_full", "esper"))
    span = full_acc - host_acc
    # With static_full at or below the host there is no gap to close: a ratio over a zero or negative span would read
    # as progress (esper below the host over a span further below gave 2.1).
    gap_closed = (esper_acc - host_acc) / span if span > 0 else None
    full_params = mean("static_full", "parameters_added_mean")
    params_ratio = mean("esper", "parameters_added_mean") / full_params if full_params else None
    esper_jump = mean("esper", "max_loss_jump_pct")
    naive_jump = mean("naive", "max_loss_jump_pct")
    esper_vs_host = mean("esper", "max_loss_jump_vs_host_pct")
    naive_vs_host = mean("naive", "max_loss_jump_vs_host_pct")
    targets: dict[str, bool | None] = {
        "gap_closed_ge_0.75_with_params_ratio_le_0.6": gap_closed is not None
        and params_ratio is not None
        and span > 0
        and gap_closed >= 0.75
        and params_ratio <= 0.6,
        "esper_acc_ge_every_k_with_no_more_params": esper_acc >= mean("every_k", "test_accuracy_mean")
        and mean("esper", "parameters_added_mean") <= mean("every_k", "parameters_added_mean"),
        "esper_max_loss_jump_le_2pct": esper_jump <= 2.0,
        "naive_jump_above_esper": naive_jump > esper_jump,
        "esper_max_loss_jump_vs_host_le_2pct": esper_vs_host <= 2.0,
        "naive_jump_vs_host_above_esper": naive_vs_host > esper_vs_host,
        "esper_probe_loss_jump_le_2pct": mean("esper", "probe_loss_jump_pct") <= 2.0,
        "naive_probe_jump_above_esper": mean("naive", "probe_loss_jump_pct") > mean("esper", "probe_loss_jump_pct"),
        "esper_probe_loss_jump_vs_host_le_2pct": mean("esper", "probe_loss_jump_vs_host_pct") <= 2.0,
    }
    if not any(r.grafts for r in results["esper"]):
        # Nothing was grafted, so there is no jump to judge: not met, not missed.
        targets.update({key: None for key in targets if "jump" in key})
    return {
        "benchmark": "morphogenesis",
        "dataset": name,
        "seeds": seeds,
        "epochs": total_epochs,
        "default_blueprint": blueprint,
        "esper_blueprints": esper_blueprints,
        "arms": arms,
        "gap_closed": None if gap_closed is None else round(gap_closed, 3),
        "static_full_minus_host_acc": round(span, 4),
        "params_ratio": None if params_ratio is None else round(params_ratio, 3),
        "paired_differences": {
            "esper_minus_every_k": paired_difference(results["esper"], results["every_k"]),
            "esper_minus_host": paired_difference(results["esper"], results["host"]),
            "static_full_minus_host": paired_difference(results["static_full"], results["host"]),
        },
        "noise_floor_pct": round(max(noise), 2) if noise else None,
        "noise_floor_vs_host_pct": round(max(noise_vs_host), 2) if noise_vs_host else None,
        "probe_noise_floor_pct": round(max(probe_noise), 2) if probe_noise else None,
        "probe_noise_floor_vs_host_pct": round(max(probe_noise_vs_host), 2) if probe_noise_vs_host else None,
        "probe_noise_floor_pct_per_seed": [round(n, 2) for n in probe_noise],
        "targets_met": targets,
        "load_perturbed_runs": sorted(
            f"{arm}/{seed}"
            for arm, runs in results.items()
            for seed, r in enumerate(runs)
            if r.fallback_decisions or r.emergency_events
        ),
        "warmup_wall_s": round(warm_up_s, 2),
        "wall_s": round(time.perf_counter() - started, 1),
        "loadavg_1m": round(os.getloadavg()[0], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=None, help="override config.toml's tolaria.epochs")
    parser.add_argument("--datasets", default="mnist1d,digits")
    parser.add_argument(
        "--blueprint", default=None, help="replace each data set's default blueprint (every arm grafts only this one)"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="esper-bench-morpho-") as tmp:
        for name in args.datasets.split(","):
            result = bench_dataset(name, args.seeds, args.epochs, Path(tmp), args.blueprint)
            print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
