"""Step statistics over a reporting interval and the SystemStatePacket assembled from them.

Accumulation is cheap per step (list appends and float adds; losses and hits stay on the device until the packet is
built). Gradient norms are read once per packet from the last step's gradients, in the same device read as the
interval's loss and accuracy. Lane-thread only.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, final

import msgspec
import torch

from actors.tolaria.layer_summaries import slot_layer_summaries
from esper.nn.slots import SlotMode
from esper.nn.wrap import SLOT_ATTR
from schemas.enums import EmergencyLevel, SeedLifecycleStage
from schemas.state import LayerSummary, SeedState, StepTimings, SystemStatePacket

if TYPE_CHECKING:
    from actors.tolaria.build import Trainee

_MODE_STAGES: dict[SlotMode, SeedLifecycleStage] = {
    SlotMode.DORMANT: SeedLifecycleStage.DORMANT,
    SlotMode.TRAINING: SeedLifecycleStage.TRAINING,
    SlotMode.BLENDING: SeedLifecycleStage.BLENDING,
    SlotMode.FULL: SeedLifecycleStage.SHADOWING,
    SlotMode.FOSSILIZED: SeedLifecycleStage.FOSSILIZED,
}


# Logits larger than this (elements) are reduced to a hit count at once instead of being kept until the next fold.
_KEEP_LOGITS_MAX = 1 << 16
# Steps kept before their losses and logits are reduced to two device scalars (bounds the memory held).
_FOLD_EVERY = 32


@final
class IntervalStats:
    """Sums over the steps since the last packet (timings in seconds).

    ``add`` costs a few list appends: it keeps the step's detached loss, logits and labels (device tensors), and
    ``fold`` reduces them to two device scalars with a handful of fused ops every ``_FOLD_EVERY`` steps or when
    read. Nothing here reads the device except ``means`` and the packet builder (one read each).
    """

    __slots__ = (
        "_correct",
        "_labels",
        "_logits",
        "_losses",
        "_sizes",
        "backward_s",
        "correct_sum",
        "data_wait_s",
        "forward_s",
        "host_to_device_s",
        "loss_sum",
        "optimizer_s",
        "samples",
        "started_s",
        "step_s",
        "steps",
        "timed_samples",
        "timed_steps",
    )

    def __init__(self) -> None:
        self.steps = 0
        self.samples = 0
        self.loss_sum: torch.Tensor | None = None
        self.correct_sum: torch.Tensor | None = None
        self.data_wait_s = 0.0
        self.host_to_device_s = 0.0
        self.forward_s = 0.0
        self.backward_s = 0.0
        self.optimizer_s = 0.0
        self.step_s = 0.0
        # The steps (and their samples) whose timings the sums above hold: a checkpoint keeps an open interval's
        # losses, not its timings, so a resumed one has more steps than timed ones.
        self.timed_steps = 0
        self.timed_samples = 0
        self.started_s = time.perf_counter()
        self._losses: list[torch.Tensor] = []
        self._sizes: list[int] = []
        self._logits: list[torch.Tensor] = []
        self._labels: list[torch.Tensor] = []
        self._correct: list[torch.Tensor] = []

    def add(self, loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor, batch: int) -> None:
        """Count one finished step of ``batch`` samples.

        Args:
            loss: the step's mean loss (0-d, detached).
            logits: ``[batch, classes, ...]`` (detached); a hit is ``argmax(1) == labels``.
            labels: ``[batch, ...]`` class indices.
            batch: samples in the step.
        """
        self.steps += 1
        self.samples += batch
        self._losses.append(loss)
        self._sizes.append(batch)
        if logits.numel() > _KEEP_LOGITS_MAX:
            self._correct.append((logits.argmax(1) == labels).sum())
        else:
            self._logits.append(logits)
            self._labels.append(labels)
        if len(self._losses) >= _FOLD_EVERY:
            self.fold()

    def add_sums(self, other: IntervalStats) -> None:
        """Add another interval's folded loss and hit sums into this one (device ops only, no read)."""
        other.fold()
        self.steps += other.steps
        self.samples += other.samples
        # The timings too, so an epoch's figures are the epoch's (metrics.csv showed its last interval's).
        self.data_wait_s += other.data_wait_s
        self.host_to_device_s += other.host_to_device_s
        self.forward_s += other.forward_s
        self.backward_s += other.backward_s
        self.optimizer_s += other.optimizer_s
        self.step_s += other.step_s
        self.timed_steps += other.timed_steps
        self.timed_samples += other.timed_samples
        if other.loss_sum is not None:
            self.loss_sum = other.loss_sum if self.loss_sum is None else self.loss_sum + other.loss_sum
        if other.correct_sum is not None:
            self.correct_sum = other.correct_sum if self.correct_sum is None else self.correct_sum + other.correct_sum

    def fold(self) -> None:
        """Reduce the kept per-step tensors into ``loss_sum`` and ``correct_sum`` (device ops only, no read)."""
        losses = self._losses
        if not losses:
            return
        sizes = self._sizes
        if sizes.count(sizes[0]) == len(sizes):
            loss = torch.stack(losses).sum() * sizes[0]
        else:  # the epoch's short final batch: weight each step by its own size
            loss = torch.stack([value * size for value, size in zip(losses, sizes, strict=True)]).sum()
        hits = list(self._correct)
        if self._logits:
            logits = self._logits[0] if len(self._logits) == 1 else torch.cat(self._logits)
            labels = self._labels[0] if len(self._labels) == 1 else torch.cat(self._labels)
            hits.append((logits.argmax(1) == labels).sum())
        correct = hits[0] if len(hits) == 1 else torch.stack(hits).sum()
        self.loss_sum = loss if self.loss_sum is None else self.loss_sum + loss
        self.correct_sum = correct if self.correct_sum is None else self.correct_sum + correct
        losses.clear()
        sizes.clear()
        self._logits.clear()
        self._labels.clear()
        self._correct.clear()

    def sum_tensors(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(loss sum, hit count) as float32 device scalars after a fold; None for an empty interval."""
        self.fold()
        if self.samples == 0 or self.loss_sum is None or self.correct_sum is None:
            return None
        return self.loss_sum.float(), self.correct_sum.float()

    def means(self) -> tuple[float, float]:
        """(mean loss, accuracy) over the interval; one device read. (nan, 0.0) for an empty interval."""
        sums = self.sum_tensors()
        if sums is None:
            return float("nan"), 0.0
        both = torch.stack(sums).tolist()
        return both[0] / self.samples, both[1] / self.samples

    def export(self) -> OpenStats:
        """The sums so far as plain numbers (one device read), for a checkpoint written in mid-interval."""
        losses = torch.stack(self._losses).tolist() if self._losses else []
        hits = list(self._correct)
        if self._logits:
            pairs = zip(self._logits, self._labels, strict=True)
            hits.extend((logits.argmax(1) == labels).sum() for logits, labels in pairs)
        return OpenStats(
            steps=self.steps,
            samples=self.samples,
            loss_sum=None if self.loss_sum is None else float(self.loss_sum),
            correct_sum=None if self.correct_sum is None else int(self.correct_sum),
            losses=losses,
            sizes=list(self._sizes),
            hits=int(torch.stack(hits).sum()) if hits else 0,
        )

    @classmethod
    def restored(cls, saved: OpenStats, device: torch.device) -> IntervalStats:
        """An interval continuing from ``export``'s figures: its folds add up exactly as the exported one's would.

        (float32 losses round-trip exactly through Python floats; hit counts are integers.)
        """
        stats = cls()
        stats.steps, stats.samples = saved.steps, saved.samples
        if saved.loss_sum is not None:
            stats.loss_sum = torch.tensor(saved.loss_sum, dtype=torch.float32, device=device)
        if saved.correct_sum is not None:
            stats.correct_sum = torch.tensor(saved.correct_sum, dtype=torch.int64, device=device)
        stats._losses = [torch.tensor(v, dtype=torch.float32, device=device) for v in saved.losses]
        stats._sizes = list(saved.sizes)
        if saved.losses:
            stats._correct = [torch.tensor(saved.hits, dtype=torch.int64, device=device)]
        return stats

    def timings(self) -> StepTimings:
        """Mean time per step of each part, over the timed steps."""
        n = max(1, self.timed_steps)
        return StepTimings(
            data_wait_ms=self.data_wait_s * 1e3 / n,
            host_to_device_ms=self.host_to_device_s * 1e3 / n,
            forward_ms=self.forward_s * 1e3 / n,
            backward_ms=self.backward_s * 1e3 / n,
            optimizer_ms=self.optimizer_s * 1e3 / n,
            step_ms=self.step_s * 1e3 / n,
        )

    def samples_per_s(self, now_s: float) -> float:
        """Samples trained per second of wall time since the interval (or epoch) started, over the timed steps."""
        return self.timed_samples / max(1e-9, now_s - self.started_s)


class OpenStats(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """An interval's figures at a checkpoint taken inside it (a stop in mid-epoch), so a resume reports the whole
    interval and epoch instead of only the steps after it."""

    steps: int
    samples: int
    loss_sum: float | None
    correct_sum: int | None
    losses: list[float]
    sizes: list[int]
    hits: int


def layer_key(name: str, slot_names: tuple[str, ...]) -> str:
    """The layer a parameter belongs to: the slot target it lives under, else its first name component."""
    for slot in slot_names:
        if name.startswith(slot + "."):
            return slot
    return name.split(".", 1)[0]


_Layout = tuple[list[torch.nn.Parameter], list[tuple[str, str | None]], dict[str, int]]


@final
class PacketBuilder:
    """Assembles the SystemStatePacket of one trainee; lane-thread only.

    What depends only on the architecture (which parameter counts for which layer or seed, seed sizes) is computed
    once and recomputed when a slot's seed or fossilized state or the optimizer's groups change. A packet reads the
    device once: every gradient norm and the interval's sums come back in one ``tolist``.
    """

    def __init__(self, trainee: Trainee) -> None:
        self._trainee = trainee
        self._signature: tuple[object, ...] | None = None
        self._layout: _Layout = ([], [], {})
        self._layers: tuple[LayerSummary, ...] = ()

    def _current_layout(self) -> _Layout:
        trainee = self._trainee
        signature = (
            len(trainee.optimizer.param_groups),
            *((slot.seed_id, slot.mode is SlotMode.FOSSILIZED) for slot in trainee.slots.values()),
        )
        if signature == self._signature:
            return self._layout
        slot_names = tuple(trainee.slots)
        seed_prefixes = {
            f"{name}.{SLOT_ATTR}.seed.": slot.seed_id
            for name, slot in trainee.slots.items()
            if slot.seed_id is not None and slot.mode is not SlotMode.FOSSILIZED
        }
        params: list[torch.nn.Parameter] = []
        keys: list[tuple[str, str | None]] = []
        for name, p in trainee.model.named_parameters():
            seed = next((sid for prefix, sid in seed_prefixes.items() if name.startswith(prefix)), None)
            params.append(p)
            keys.append((layer_key(name, slot_names), seed))
        self._layout = (params, keys, trainee.seed_parameters())
        self._layers = slot_layer_summaries(trainee.model, trainee.slots)
        self._signature = signature
        return self._layout

    def build(
        self,
        stats: IntervalStats,
        *,
        run_id: str,
        epoch: int,
        epochs_total: int,
        global_step: int,
        epoch_progress: float,
        hook_latency_ms: float,
        emergency_level: EmergencyLevel,
        hook_capture_ms: float = 0.0,
        validation: tuple[float, float] | None = None,
        loss_delta: float | None = None,
        epoch_means: tuple[float, float] | None = None,
        epoch_stats: IntervalStats | None = None,
        lr_factor: float = 1.0,
    ) -> SystemStatePacket:
        """The state packet of ``global_step`` from the interval's statistics and the model's current gradients;
        ``epoch_means`` (an epoch end) is the whole epoch's (training loss, accuracy), ``epoch_stats`` its sums (for
        the epoch's timings and throughput); ``lr_factor`` the rate schedule's factor of the interval's last step."""
        trainee = self._trainee
        params, all_keys, seed_sizes = self._current_layout()
        keys: list[tuple[str, str | None]] = []
        grads: list[torch.Tensor] = []
        for p, key in zip(params, all_keys, strict=True):
            grad = p.grad
            if grad is not None:
                grads.append(grad)
                keys.append(key)
        parts: list[torch.Tensor] = list(torch._foreach_norm(grads)) if grads else []
        sums = stats.sum_tensors()
        if sums is not None:
            parts.extend(sums)
        values = torch.stack(parts).tolist() if parts else []
        if sums is not None:
            loss, accuracy = values[-2] / stats.samples, values[-1] / stats.samples
        else:
            loss, accuracy = float("nan"), 0.0
        total, layers, seeds = _combine(keys, values[: len(keys)])
        lrs = {str(g.get("name", i)): float(g["lr"]) for i, g in enumerate(trainee.optimizer.param_groups)}
        host_lr = lrs.get("host")
        now = time.perf_counter()
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
            seed_parameters=sum(seed_sizes.values()),
            samples_per_s=stats.samples_per_s(now),
            hook_latency_ms=max(0.0, hook_latency_ms),
            hook_capture_ms=max(0.0, hook_capture_ms),
            validation_loss=None if validation is None else validation[0],
            validation_accuracy=None if validation is None else min(1.0, max(0.0, validation[1])),
            loss_delta=loss_delta,
            gradient_norm=total,
            layers=self._layers,
            layer_gradient_norms=layers,
            seed_gradient_norms=seeds,
            seed_states=seed_states(trainee, seeds, lrs, seed_sizes),
            isolation_violations=trainee.session_violations(),
            emergency_level=emergency_level,
            learning_rate=host_lr,
            effective_learning_rate=None if host_lr is None else host_lr * lr_factor,
            gpu_memory_bytes=memory,
            gpu_memory_peak_bytes=peak,
            epoch_training_loss=None if epoch_means is None else epoch_means[0],
            epoch_training_accuracy=None if epoch_means is None else min(1.0, max(0.0, epoch_means[1])),
            epoch_timings=None if epoch_stats is None else epoch_stats.timings(),
            epoch_samples_per_s=None if epoch_stats is None else epoch_stats.samples_per_s(now),
        )


def _combine(
    keys: list[tuple[str, str | None]], norms: list[float]
) -> tuple[float | None, dict[str, float], dict[str, float]]:
    """(total, per layer, per seed) L2 norms from per-parameter norms."""
    if not keys:
        return None, {}, {}
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


def seed_states(
    trainee: Trainee, seed_norms: dict[str, float], lrs: dict[str, float], params: dict[str, int]
) -> tuple[SeedState, ...]:
    """Each slot as Tolaria sees it (the stage is the slot's mode; Kasmina owns the finer lifecycle).

    ``params`` is the parameter count of each attached seed, by seed id.
    """
    states: list[SeedState] = []
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
                isolation_violations=trainee.isolation_violations.get(sid, 0) if sid is not None else 0,
                paused=paused,
            )
        )
    return tuple(states)


def gpu_memory(device: torch.device) -> tuple[int | None, int | None]:
    """(allocated, peak allocated) bytes on a CUDA device; (None, None) elsewhere. The peak is since
    ``reset_gpu_peak`` (the start of the training job)."""
    if device.type != "cuda":
        return None, None
    return int(torch.cuda.memory_allocated(device)), int(torch.cuda.max_memory_allocated(device))


def reset_gpu_peak(device: torch.device) -> None:
    """Start the peak of ``gpu_memory`` afresh on a CUDA device (torch's peak is the process's: a notebook's second run
    reported the first's); nothing elsewhere."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
