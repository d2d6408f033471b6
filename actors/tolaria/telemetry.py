"""Step statistics over a reporting interval and the SystemStatePacket assembled from them.

Accumulation is cheap per step (a few float adds; the loss and correct counts stay on the device as tensors until
the packet is built). Gradient norms are read once per packet from the last step's gradients. Lane-thread only.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, final

import torch

from esper.nn.slots import SlotMode
from esper.nn.wrap import SLOT_ATTR
from schemas.enums import EmergencyLevel, SeedLifecycleStage
from schemas.state import SeedState, StepTimings, SystemStatePacket

if TYPE_CHECKING:
    from actors.tolaria.build import Trainee

_MODE_STAGES: dict[SlotMode, SeedLifecycleStage] = {
    SlotMode.DORMANT: SeedLifecycleStage.DORMANT,
    SlotMode.TRAINING: SeedLifecycleStage.TRAINING,
    SlotMode.BLENDING: SeedLifecycleStage.BLENDING,
    SlotMode.FULL: SeedLifecycleStage.SHADOWING,
    SlotMode.FOSSILIZED: SeedLifecycleStage.FOSSILIZED,
}


@final
@dataclass(slots=True)
class IntervalStats:
    """Sums over the steps since the last packet (timings in seconds)."""

    steps: int = 0
    samples: int = 0
    loss_sum: torch.Tensor | None = None
    correct_sum: torch.Tensor | None = None
    data_wait_s: float = 0.0
    host_to_device_s: float = 0.0
    forward_s: float = 0.0
    backward_s: float = 0.0
    optimizer_s: float = 0.0
    step_s: float = 0.0
    started_s: float = field(default_factory=time.perf_counter)

    def add(self, loss: torch.Tensor, correct: torch.Tensor, batch: int) -> None:
        """Count one finished step of ``batch`` samples; ``loss`` is its mean loss, ``correct`` its hit count."""
        self.steps += 1
        self.samples += batch
        weighted = loss.detach() * batch
        self.loss_sum = weighted if self.loss_sum is None else self.loss_sum + weighted
        self.correct_sum = correct if self.correct_sum is None else self.correct_sum + correct

    def means(self) -> tuple[float, float]:
        """(mean loss, accuracy) over the interval; one device read. (nan, 0.0) for an empty interval."""
        if self.samples == 0 or self.loss_sum is None or self.correct_sum is None:
            return float("nan"), 0.0
        both = torch.stack((self.loss_sum.float(), self.correct_sum.float())).tolist()
        return both[0] / self.samples, both[1] / self.samples

    def timings(self) -> StepTimings:
        n = max(1, self.steps)
        return StepTimings(
            data_wait_ms=self.data_wait_s * 1e3 / n,
            host_to_device_ms=self.host_to_device_s * 1e3 / n,
            forward_ms=self.forward_s * 1e3 / n,
            backward_ms=self.backward_s * 1e3 / n,
            optimizer_ms=self.optimizer_s * 1e3 / n,
            step_ms=self.step_s * 1e3 / n,
        )


def layer_key(name: str, slot_names: tuple[str, ...]) -> str:
    """The layer a parameter belongs to: the slot target it lives under, else its first name component."""
    for slot in slot_names:
        if name.startswith(slot + "."):
            return slot
    return name.split(".", 1)[0]


def gradient_norms(trainee: Trainee) -> tuple[float | None, dict[str, float], dict[str, float]]:
    """(total, per layer, per seed) L2 norms of the current gradients; one device read for all of them."""
    slot_names = tuple(trainee.slots)
    keys: list[tuple[str, str | None]] = []
    grads: list[torch.Tensor] = []
    seed_prefixes = {
        f"{name}.{SLOT_ATTR}.seed.": slot.seed_id
        for name, slot in trainee.slots.items()
        if slot.seed_id is not None and slot.mode is not SlotMode.FOSSILIZED
    }
    for name, p in trainee.model.named_parameters():
        if p.grad is None:
            continue
        seed = next((sid for prefix, sid in seed_prefixes.items() if name.startswith(prefix)), None)
        keys.append((layer_key(name, slot_names), seed))
        grads.append(p.grad)
    if not grads:
        return None, {}, {}
    norms = torch.stack([n.float() for n in torch._foreach_norm(grads)]).tolist()
    layer_sq: dict[str, float] = {}
    seed_sq: dict[str, float] = {}
    total = 0.0
    for (layer, seed), norm in zip(keys, norms, strict=True):
        sq = norm * norm
        total += sq
        if seed is not None:
            seed_sq[seed] = seed_sq.get(seed, 0.0) + sq
        else:
            layer_sq[layer] = layer_sq.get(layer, 0.0) + sq
    return total**0.5, {k: v**0.5 for k, v in layer_sq.items()}, {k: v**0.5 for k, v in seed_sq.items()}


def seed_states(trainee: Trainee, seed_norms: dict[str, float], lrs: dict[str, float]) -> tuple[SeedState, ...]:
    """Each slot as Tolaria sees it (the stage is the slot's mode; Kasmina owns the finer lifecycle)."""
    states: list[SeedState] = []
    params = trainee.seed_parameters()
    for depth, (name, slot) in enumerate(trainee.slots.items()):
        paused = name in trainee.paused
        mode = SlotMode(trainee.paused[name]) if paused else slot.mode
        sid = slot.seed_id
        states.append(
            SeedState(
                slot=name,
                stage=_MODE_STAGES[mode],
                layer_depth=depth,
                seed_id=sid,
                alpha=slot.alpha_value,
                alpha_steps=slot.alpha_steps,
                alpha_total_steps=slot.schedule.total_steps if sid is not None else 0,
                alpha_temperature=slot.schedule.temperature if sid is not None else 0.0,
                gradient_norm=seed_norms.get(sid) if sid is not None else None,
                learning_rate=lrs.get(f"seed:{sid}") if sid is not None else None,
                parameter_count=params.get(sid, 0) if sid is not None else 0,
                paused=paused,
            )
        )
    return tuple(states)


def gpu_memory(device: torch.device) -> tuple[int | None, int | None]:
    """(allocated, peak allocated) bytes on a CUDA device; (None, None) elsewhere."""
    if device.type != "cuda":
        return None, None
    return int(torch.cuda.memory_allocated(device)), int(torch.cuda.max_memory_allocated(device))


def build_packet(
    trainee: Trainee,
    stats: IntervalStats,
    *,
    run_id: str,
    epoch: int,
    epochs_total: int,
    global_step: int,
    epoch_progress: float,
    hook_latency_ms: float,
    emergency_level: EmergencyLevel,
    validation: tuple[float, float] | None = None,
    loss_delta: float | None = None,
) -> SystemStatePacket:
    """The state packet of ``global_step`` from the interval's statistics and the model's current gradients."""
    loss, accuracy = stats.means()
    total, layers, seeds = gradient_norms(trainee)
    lrs = {str(g.get("name", i)): float(g["lr"]) for i, g in enumerate(trainee.optimizer.param_groups)}
    elapsed = max(1e-9, time.perf_counter() - stats.started_s)
    seed_params = sum(trainee.seed_parameters().values())
    memory, peak = gpu_memory(trainee.device)
    return SystemStatePacket(
        run_id=run_id,
        epoch=epoch,
        epochs_total=epochs_total,
        global_step=global_step,
        epoch_progress=min(1.0, max(0.0, epoch_progress)),
        issued_at=time.time(),
        training_loss=loss,
        training_accuracy=min(1.0, max(0.0, accuracy)),
        timings=stats.timings(),
        host_parameters=trainee.host_parameters,
        seed_parameters=seed_params,
        samples_per_s=stats.samples / elapsed,
        hook_latency_ms=max(0.0, hook_latency_ms),
        validation_loss=None if validation is None else validation[0],
        validation_accuracy=None if validation is None else min(1.0, max(0.0, validation[1])),
        loss_delta=loss_delta,
        gradient_norm=total,
        layer_gradient_norms=layers,
        seed_gradient_norms=seeds,
        seed_states=seed_states(trainee, seeds, lrs),
        emergency_level=emergency_level,
        learning_rate=lrs.get("host"),
        gpu_memory_bytes=memory,
        gpu_memory_peak_bytes=peak,
    )
