"""Blend modes and alpha schedules: the arithmetic a seed slot uses to mix a seed's output into the host's.

Notation (REFERENCE.md section 3): ``h`` is the host activation at the slot (kept attached, so the host keeps learning
through a blending slot with weight ``1 - alpha``), ``s`` is the seed's output computed from the DETACHED slot input,
``alpha`` is a 0-dim buffer in [0, 1].

- CONVEX: ``alpha * s + (1 - alpha) * h`` (``torch.lerp``).
- RESIDUAL: ``h + alpha * s``.
- CHANNEL: lerp with a per-channel alpha ``clamp(alpha * v, 0, 1)`` over the channel dim (dim 1, the feature dim 2
  of a ``[batch, seq, features]`` sequence activation); ``v`` has one entry per channel, at most 64.
- CONFIDENCE: lerp with a per-sample alpha ``clamp(alpha * sigmoid(k * (m - tau)), lo, hi)``, where ``m`` is the
  top-1 minus top-2 margin of the seed's logits (last dim); for logit-emitting seeds only.

Every clamp writes a fresh tensor; the shared ``alpha`` buffer is never modified here. The confidence gate reads the
seed's logits detached: it is a control signal, so the seed is not rewarded for inflating its own margin.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from typing import assert_never, final

import torch
from torch import Tensor

__all__ = [
    "MAX_CHANNEL_WEIGHTS",
    "RAMP_REFERENCE_STEPS",
    "AlphaSchedule",
    "BlendMode",
    "BlendSpec",
    "ScheduleMethod",
    "blend",
    "channel_alpha",
    "confidence_alpha",
    "ramp_temperature",
    "sigmoid_ramp",
    "straight_through",
]

MAX_CHANNEL_WEIGHTS = 64
# A configured blend temperature is in steps for a ramp of this length and scales with the ramp, so the ramp's shape
# (how near 0 it starts and 1 it ends) is the same for every ramp_steps and the 20-step default keeps its exact alphas.
RAMP_REFERENCE_STEPS = 20


class BlendMode(enum.Enum):
    """How a blending slot mixes seed and host (DELTA, LOGIT and SOFT_GATE are deferred)."""

    CONVEX = "convex"
    RESIDUAL = "residual"
    CHANNEL = "channel"
    CONFIDENCE = "confidence"


class ScheduleMethod(enum.Enum):
    """Shape of the alpha ramp. SIGMOID is the tanh ramp of REFERENCE.md section 3 (the default)."""

    SIGMOID = "sigmoid"
    LINEAR = "linear"
    COSINE = "cosine"


@final
@dataclass(frozen=True, slots=True)
class BlendSpec:
    """A validated blend configuration: the mode and the parameters that mode needs.

    Attributes:
        mode: the blend mode.
        channel_weights: ``v`` for CHANNEL, one entry per channel of the slot activation (its feature axis: dim 1,
            dim 2 for a sequence), 1 to 64 entries; must be empty for the other modes.
        confidence_k: gate steepness ``k`` for CONFIDENCE (> 0).
        confidence_tau: margin threshold ``tau`` for CONFIDENCE, in logit units.
        alpha_lo: lower clamp of the effective alpha for CONFIDENCE.
        alpha_hi: upper clamp of the effective alpha for CONFIDENCE (``0 <= alpha_lo <= alpha_hi <= 1``).

    Raises:
        ValueError: a parameter outside its range, a CHANNEL spec without weights or with more than 64, or channel
            weights given to another mode.
    """

    mode: BlendMode = BlendMode.CONVEX
    channel_weights: tuple[float, ...] = ()
    confidence_k: float = 10.0
    confidence_tau: float = 0.5
    alpha_lo: float = 0.0
    alpha_hi: float = 1.0

    def __post_init__(self) -> None:
        n = len(self.channel_weights)
        if self.mode is BlendMode.CHANNEL:
            if not 1 <= n <= MAX_CHANNEL_WEIGHTS:
                raise ValueError(f"channel_weights: CHANNEL blending needs 1 to {MAX_CHANNEL_WEIGHTS} entries, got {n}")
            if not all(math.isfinite(v) for v in self.channel_weights):
                raise ValueError(f"channel_weights: every entry must be finite, got {self.channel_weights}")
        elif n:
            raise ValueError(f"channel_weights: only CHANNEL blending takes channel weights, mode is {self.mode.name}")
        if not (math.isfinite(self.confidence_k) and self.confidence_k > 0):
            raise ValueError(f"confidence_k: must be finite and > 0, got {self.confidence_k}")
        if not math.isfinite(self.confidence_tau):
            raise ValueError(f"confidence_tau: must be finite, got {self.confidence_tau}")
        if not 0.0 <= self.alpha_lo <= self.alpha_hi <= 1.0:
            raise ValueError(f"alpha_lo/alpha_hi: need 0 <= lo <= hi <= 1, got {self.alpha_lo}, {self.alpha_hi}")


def sigmoid_ramp(step: float, total_steps: float, temperature: float) -> float:
    """The raw tanh ramp ``0.5 * (1 + tanh((step - total_steps / 2) / (2 * temperature)))``, without the snap.

    With ``total_steps = 20`` and ``temperature = 2`` it gives about 0.007 at step 0, 0.5 at 10 and 0.993 at 20.
    """
    return 0.5 * (1.0 + math.tanh((step - total_steps / 2.0) / (2.0 * temperature)))


def ramp_temperature(temperature: float, ramp_steps: int) -> float:
    """The tanh width in steps of a ``ramp_steps``-step ramp whose ``temperature`` is relative to a 20-step ramp.

    ``temperature * ramp_steps / 20``: exactly ``temperature`` for 20 steps, 10 for a 100-step ramp at the default
    2.0, so a ramp starts near 0 and ends near 1 (0.0067 and 0.9933 at 2.0) whatever its length.
    """
    # The ratio first: it is exactly 1.0 for 20 steps, so the default length keeps every temperature bitwise (times
    # 20 then over 20 rounds some, e.g. 1.99, to another float and moved their alphas in the last bit).
    return temperature * (ramp_steps / RAMP_REFERENCE_STEPS)


@final
@dataclass(frozen=True, slots=True)
class AlphaSchedule:
    """Alpha as a function of optimizer steps since BLENDING began.

    The ramp occupies the window ``[start * total_steps, end * total_steps)`` steps. Before the window alpha is 0;
    from ``end * total_steps`` on it is exactly 1 (the snap). Inside, SIGMOID evaluates the tanh ramp centred on the
    window (``temperature`` in steps), LINEAR rises linearly and COSINE follows ``0.5 * (1 - cos(pi * p))``. With the
    defaults (SIGMOID, 20 steps, temperature 2, window [0, 1]) this is ``sigmoid_ramp`` snapped to 1 at step 20.
    ``temperature`` here is in steps (what a checkpoint stores); ``for_ramp`` builds one from a configured,
    ramp-relative temperature.

    Raises:
        ValueError: ``total_steps < 1``, a non-positive or non-finite temperature, or a window outside
            ``0 <= start < end <= 1``.
    """

    method: ScheduleMethod = ScheduleMethod.SIGMOID
    total_steps: int = 20
    temperature: float = 2.0
    start: float = 0.0
    end: float = 1.0

    def __post_init__(self) -> None:
        if self.total_steps < 1:
            raise ValueError(f"total_steps: must be >= 1, got {self.total_steps}")
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ValueError(f"temperature: must be finite and > 0, got {self.temperature}")
        if not 0.0 <= self.start < self.end <= 1.0:
            raise ValueError(f"start/end: need 0 <= start < end <= 1, got {self.start}, {self.end}")

    @classmethod
    def for_ramp(
        cls, method: ScheduleMethod, ramp_steps: int, temperature: float, start: float = 0.0, end: float = 1.0
    ) -> AlphaSchedule:
        """The schedule of a ``ramp_steps``-step ramp whose ``temperature`` is relative (see ``ramp_temperature``)."""
        return cls(method, ramp_steps, ramp_temperature(temperature, ramp_steps), start, end)

    def value(self, step: int) -> float:
        """Alpha after ``step`` optimizer steps of blending (a plain float in [0, 1], exactly 1 once ramped)."""
        lo = self.start * self.total_steps
        hi = self.end * self.total_steps
        if step >= hi:
            return 1.0
        if step < lo:
            return 0.0
        if self.method is ScheduleMethod.SIGMOID:
            centre = (lo + hi) / 2.0
            return 0.5 * (1.0 + math.tanh((step - centre) / (2.0 * self.temperature)))
        progress = (step - lo) / (hi - lo)
        if self.method is ScheduleMethod.LINEAR:
            return progress
        return 0.5 * (1.0 - math.cos(math.pi * progress))


def straight_through(h: Tensor, s: Tensor) -> Tensor:
    """Incubation output ``h + (s - s.detach())``: the value is exactly ``h``; the seed still gets the loss gradient.

    The gradient reaching ``h`` is the incoming gradient unchanged, so host gradients are bitwise those of the same
    step without the seed. A non-finite ``s`` makes the output non-finite (``inf - inf``); G1 checks seed finiteness.
    """
    return h + (s - s.detach())


def channel_alpha(alpha: Tensor, weights: Tensor, ndim: int, channel_dim: int = 1) -> Tensor:
    """Per-channel alpha ``clamp(alpha * v, 0, 1)`` shaped ``[1, ..., C, ..., 1]`` (``C`` at ``channel_dim``) to
    broadcast over ``ndim`` dims."""
    eff = torch.clamp(alpha * weights, 0.0, 1.0)
    shape = [1] * ndim
    shape[channel_dim] = weights.numel()
    return eff.view(shape)


def confidence_alpha(alpha: Tensor, logits: Tensor, spec: BlendSpec) -> Tensor:
    """Per-sample alpha ``clamp(alpha * sigmoid(k * (m - tau)), lo, hi)`` shaped ``[..., 1]``.

    Args:
        alpha: 0-dim alpha buffer.
        logits: the seed's logits ``[batch, ..., classes]`` (classes last, at least 2); read detached.
        spec: the CONFIDENCE spec.
    """
    top2 = torch.topk(logits.detach(), 2, dim=-1).values
    margin = top2[..., 0] - top2[..., 1]
    gate = torch.sigmoid(spec.confidence_k * (margin - spec.confidence_tau))
    return torch.clamp(alpha * gate, spec.alpha_lo, spec.alpha_hi).unsqueeze(-1)


def blend(
    h: Tensor, s: Tensor, alpha: Tensor, spec: BlendSpec, channel_weights: Tensor | None = None, channel_dim: int = 1
) -> Tensor:
    """Mix seed output ``s`` into host output ``h`` (same shape and dtype) according to ``spec.mode``.

    Args:
        h: host activation, e.g. ``[batch, channels, ...]``; stays attached.
        s: seed output, same shape as ``h``.
        alpha: 0-dim alpha, same dtype as ``h``, already in [0, 1].
        spec: the blend spec.
        channel_weights: ``v`` as a 1-D tensor on ``h``'s device, required for CHANNEL.
        channel_dim: the dim of ``h`` CHANNEL weighs (>= 1): 1 for conv and flat activations, 2 for
            ``[batch, seq, features]``.

    Raises:
        ValueError: CHANNEL with ``v`` missing or of a length other than ``h.shape[channel_dim]``; CONFIDENCE with
            fewer than two classes in the last dim.
    """
    mode = spec.mode
    if mode is BlendMode.CONVEX:
        return torch.lerp(h, s, alpha)
    if mode is BlendMode.RESIDUAL:
        return torch.addcmul(h, alpha, s)
    if mode is BlendMode.CHANNEL:
        if channel_weights is None:
            raise ValueError("channel_weights: CHANNEL blending needs the weight vector v")
        if not 1 <= channel_dim < h.dim() or h.shape[channel_dim] != channel_weights.numel():
            raise ValueError(
                f"channel_weights: {channel_weights.numel()} entries do not match the {tuple(h.shape)} activation's "
                f"channel dim {channel_dim}"
            )
        return torch.lerp(h, s, channel_alpha(alpha, channel_weights, h.dim(), channel_dim))
    if mode is BlendMode.CONFIDENCE:
        if s.dim() < 1 or s.shape[-1] < 2:
            raise ValueError(f"CONFIDENCE blending needs seed logits with >= 2 classes in dim -1, got {tuple(s.shape)}")
        return torch.lerp(h, s, confidence_alpha(alpha, s, spec))
    assert_never(mode)
