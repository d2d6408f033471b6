"""The optional parts of an optimizer step: the learning-rate schedule and gradient clipping.

The schedule is warm-up, then constant, cosine or linear decay; clipping takes each optimizer group by its own norm.
Lane-thread only.

The schedule is a pure function of the global step: a factor applied on top of each group's own rate for the
optimizer step alone, so the rates boundary ops set (a seed's, the incubation scale, the controller's tweak), the
snapshots, the checkpoints and the packets all keep seeing the group's base rate (a packet also carries the host's
rate in effect, for metrics.csv), and a resume, a rollback or a journal replay lands on the same factor without any
state of its own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, final

import torch

if TYPE_CHECKING:
    from actors.tolaria.epoch_end import FiniteCheck
    from schemas.config import TolariaConfig

ScheduleKind = Literal["constant", "cosine", "linear"]


@final
@dataclass(frozen=True, slots=True)
class LrSchedule:
    """The factor on every group's rate at each global step (0-based) of a run of ``total_steps`` steps.

    Warm-up: step ``s`` below ``warmup_steps`` gets ``(s + 1) / warmup_steps`` (the first step already learns, the
    last warm-up step at the full rate). After it, "constant" stays at 1; "cosine" and "linear" fall from 1 at the
    end of warm-up towards ``min_factor``, which they reach at step ``total_steps`` (just after the run's last).
    """

    kind: ScheduleKind
    warmup_steps: int
    total_steps: int
    min_factor: float = 0.0

    def factor(self, step: int) -> float:
        """The rate multiplier at global step ``step``."""
        warmup = self.warmup_steps
        if step < warmup:
            return (step + 1) / warmup
        if self.kind == "constant":
            return 1.0
        span = self.total_steps - warmup
        if span <= 0:
            return 1.0
        progress = min(1.0, (step - warmup) / span)
        shape = 1.0 - progress if self.kind == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.min_factor + (1.0 - self.min_factor) * shape

    @property
    def is_constant(self) -> bool:
        """Factor 1 at every step: nothing to apply."""
        return self.kind == "constant" and self.warmup_steps == 0


@final
class StepTuner:
    """Takes the finite check and the optimizer step over when a schedule or clipping is on (``for_config`` gives
    None otherwise, and the stepper then runs neither: the default step does no extra work).

    Clipping measures each group's gradient norm (one foreach norm per group): the host's and each seed's, never one
    norm over both, so a seed's gradient, however large, never scales the host's update (gradient isolation). Those
    norms, with the loss, are the step's finite check (one device read): a NaN or infinite gradient has a non-finite
    norm, and the step is skipped as the plain check skips it.
    """

    def __init__(self, schedule: LrSchedule | None, clip_norm: float | None) -> None:
        self.schedule = schedule
        self.clip_norm = clip_norm

    @classmethod
    def for_config(cls, config: TolariaConfig, total_steps: int) -> StepTuner | None:
        """The tuner ``config`` asks for over a run of ``total_steps`` steps; None with the defaults."""
        schedule = LrSchedule(config.lr_schedule, config.warmup_steps, total_steps, config.lr_min_factor)
        if schedule.is_constant and config.grad_clip_norm is None:
            return None
        return cls(None if schedule.is_constant else schedule, config.grad_clip_norm)

    def step(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer, global_step: int, check: FiniteCheck) -> bool:
        """Check, clip and step; False (nothing changed) when the loss or a gradient is not finite."""
        groups = optimizer.param_groups
        clip = self.clip_norm
        if clip is None:
            if not check(loss, optimizer):
                return False
        elif not _clip_groups(groups, loss, clip):
            return False
        factor = 1.0 if self.schedule is None else self.schedule.factor(global_step)
        if factor == 1.0:  # no schedule, or a constant one past its warm-up: the rates as they are
            optimizer.step()
            return True
        bases = [group["lr"] for group in groups]
        for group, base in zip(groups, bases, strict=True):
            group["lr"] = base * factor
        try:
            optimizer.step()
        finally:
            # The base rates again (the same float objects): everything between steps reads and sets those.
            for group, base in zip(groups, bases, strict=True):
                group["lr"] = base
        return True


def _clip_groups(groups: list[dict[str, object]], loss: torch.Tensor, clip: float) -> bool:
    """Scale each group's gradients down to norm ``clip`` at most, if every norm and the loss are finite."""
    grouped: list[list[torch.Tensor]] = []
    norms: list[torch.Tensor] = []
    for group in groups:
        params = group["params"]
        assert isinstance(params, list)
        grads = [p.grad for p in params if p.grad is not None]
        if grads:
            grouped.append(grads)
            norms.append(torch.nn.utils.get_total_norm(grads, foreach=True).float())
    if not bool(torch.isfinite(torch.stack([*norms, loss.float()])).all()):
        return False
    for grads, norm in zip(grouped, norms, strict=True):
        # torch's own clip_grads_with_norm_ rule, without its regrouping: a factor of exactly 1 below the bound (no
        # device read to skip it), so an unclipped gradient keeps every bit.
        torch._foreach_mul_(grads, torch.clamp(clip / (norm + 1e-6), max=1.0))
    return True
