"""Feature-wise blueprint families: bottleneck MLP, low-rank adapter, gated linear unit, norm-and-scale.

Each acts on the feature axis position by position: the last axis of flat ``[batch, features]`` and sequence
``[batch, seq, hidden]`` slots, and (for the adapter and norm-and-scale) the channel axis of conv1d
``[batch, channels, length]`` and conv2d ``[batch, channels, height, width]`` slots, which is then a 1x1 convolution.
Function-preserving at birth means: the last layer's parameters are exactly zero, so ``seed(x)`` is exactly zero;
under a RESIDUAL blend ``h + alpha * seed(x) == h`` exactly, and under CONVEX the slot starts at alpha 0.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, final

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from esper.nn.blueprints.weights import hidden_width, materialise

if TYPE_CHECKING:
    from collections.abc import Mapping

    from esper.nn.blueprints.descriptors import SlotKind, SlotShape

__all__ = [
    "ALL_KINDS",
    "TOKEN_KINDS",
    "BottleneckMLP",
    "GatedLinearUnit",
    "LowRankAdapter",
    "NormScale",
    "build_bottleneck_mlp",
    "build_gated_linear_unit",
    "build_low_rank_adapter",
    "build_norm_scale",
    "count_bottleneck_mlp",
    "count_gated_linear_unit",
    "count_low_rank_adapter",
    "count_norm_scale",
]

TOKEN_KINDS: tuple[SlotKind, ...] = ("flat", "sequence")
ALL_KINDS: tuple[SlotKind, ...] = ("conv1d", "conv2d", "flat", "sequence")


def _check(slot: SlotShape, family: str, kinds: tuple[SlotKind, ...]) -> None:
    if slot.kind not in kinds:
        raise ValueError(f"{family} fits slot kinds {kinds}, not {slot.kind!r}")


def _channels_first(slot: SlotShape) -> bool:
    return slot.kind in ("conv1d", "conv2d")


@final
class BottleneckMLP(nn.Module):
    """Linear(features -> hidden) -> GELU -> Linear(hidden -> features, zero-initialised), per position.

    Shapes: ``[batch, features]`` or ``[batch, seq, features]`` in and out.
    """

    def __init__(self, features: int, hidden: int) -> None:
        super().__init__()
        self.up = nn.Linear(features, hidden, device="meta")
        self.down = nn.Linear(hidden, features, device="meta")

    def forward(self, x: Tensor) -> Tensor:
        y: Tensor = self.down(F.gelu(self.up(x)))
        return y


@final
class LowRankAdapter(nn.Module):
    """``B A x`` with A: features -> rank (random) and B: rank -> features (zero-initialised), no biases.

    Shapes: any slot; the product acts on the feature axis (channels for conv slots).
    """

    def __init__(self, features: int, rank: int, *, channels_first: bool) -> None:
        super().__init__()
        self.channels_first = channels_first
        self.a = nn.Linear(features, rank, bias=False, device="meta")
        self.b = nn.Linear(rank, features, bias=False, device="meta")

    def forward(self, x: Tensor) -> Tensor:
        z = x.movedim(1, -1) if self.channels_first else x
        y: Tensor = self.b(self.a(z))
        return y.movedim(-1, 1) if self.channels_first else y


@final
class GatedLinearUnit(nn.Module):
    """``W_out (W_a x * sigmoid(W_g x))`` with W_out zero-initialised, per position.

    Shapes: ``[batch, features]`` or ``[batch, seq, features]`` in and out.
    """

    def __init__(self, features: int, hidden: int) -> None:
        super().__init__()
        self.value = nn.Linear(features, hidden, device="meta")
        self.gate = nn.Linear(features, hidden, device="meta")
        self.out = nn.Linear(hidden, features, device="meta")

    def forward(self, x: Tensor) -> Tensor:
        y: Tensor = self.out(self.value(x) * torch.sigmoid(self.gate(x)))
        return y


@final
class NormScale(nn.Module):
    """``gain * layer_norm(x) + shift`` over the feature axis, with ``gain`` and ``shift`` zero-initialised.

    The affine pair is the last layer. Shapes: any slot; normalised over channels for conv slots, per position.
    """

    def __init__(self, features: int, *, channels_first: bool) -> None:
        super().__init__()
        self.channels_first = channels_first
        self.features = features
        self.gain = nn.Parameter(torch.empty(features, device="meta"))
        self.shift = nn.Parameter(torch.empty(features, device="meta"))

    def forward(self, x: Tensor) -> Tensor:
        z = x.movedim(1, -1) if self.channels_first else x
        y = F.layer_norm(z, (self.features,)) * self.gain + self.shift
        return y.movedim(-1, 1) if self.channels_first else y


def build_bottleneck_mlp(slot: SlotShape, params: Mapping[str, float], generator: torch.Generator) -> nn.Module:
    """Bottleneck MLP; param ``width`` (hidden = features * width, at least 1).

    Raises:
        ValueError: the slot is not flat or sequence.
    """
    _check(slot, "bottleneck_mlp", TOKEN_KINDS)
    module = BottleneckMLP(slot.features, hidden_width(slot.features, params["width"]))
    return materialise(module, generator, zero=[module.down], dtype=slot.dtype)


def count_bottleneck_mlp(slot: SlotShape, params: Mapping[str, float]) -> int:
    """Parameter count of ``build_bottleneck_mlp(slot, params, ...)``."""
    _check(slot, "bottleneck_mlp", TOKEN_KINDS)
    f, h = slot.features, hidden_width(slot.features, params["width"])
    return (f * h + h) + (h * f + f)


def build_low_rank_adapter(slot: SlotShape, params: Mapping[str, float], generator: torch.Generator) -> nn.Module:
    """Low-rank adapter on the feature axis; param ``rank``."""
    _check(slot, "low_rank_adapter", ALL_KINDS)
    module = LowRankAdapter(slot.features, int(params["rank"]), channels_first=_channels_first(slot))
    return materialise(module, generator, zero=[module.b], dtype=slot.dtype)


def count_low_rank_adapter(slot: SlotShape, params: Mapping[str, float]) -> int:
    """Parameter count of ``build_low_rank_adapter(slot, params, ...)``."""
    _check(slot, "low_rank_adapter", ALL_KINDS)
    return 2 * slot.features * int(params["rank"])


def build_gated_linear_unit(slot: SlotShape, params: Mapping[str, float], generator: torch.Generator) -> nn.Module:
    """Gated linear unit; param ``width`` (hidden = features * width, at least 1).

    Raises:
        ValueError: the slot is not flat or sequence.
    """
    _check(slot, "gated_linear_unit", TOKEN_KINDS)
    module = GatedLinearUnit(slot.features, hidden_width(slot.features, params["width"]))
    return materialise(module, generator, zero=[module.out], dtype=slot.dtype)


def count_gated_linear_unit(slot: SlotShape, params: Mapping[str, float]) -> int:
    """Parameter count of ``build_gated_linear_unit(slot, params, ...)``."""
    _check(slot, "gated_linear_unit", TOKEN_KINDS)
    f, h = slot.features, hidden_width(slot.features, params["width"])
    return 2 * (f * h + h) + (h * f + f)


def build_norm_scale(slot: SlotShape, params: Mapping[str, float], generator: torch.Generator) -> nn.Module:
    """Norm-and-scale; no hyperparameters (``params`` must be empty after validation)."""
    _check(slot, "norm_scale", ALL_KINDS)
    module = NormScale(slot.features, channels_first=_channels_first(slot))
    return materialise(module, generator, zero=[module], dtype=slot.dtype)


def count_norm_scale(slot: SlotShape, params: Mapping[str, float]) -> int:
    """Parameter count of ``build_norm_scale(slot, params, ...)``."""
    _check(slot, "norm_scale", ALL_KINDS)
    return 2 * slot.features
