"""Convolutional blueprint families: residual conv block, depthwise-separable conv, squeeze-excite.

Each fits conv1d slots ``[batch, channels, length]`` and conv2d slots ``[batch, channels, height, width]`` and maps
its input to a tensor of the same shape. Function-preserving at birth means: the last layer's parameters are exactly
zero, so ``seed(x)`` is exactly zero. Under a RESIDUAL blend ``h + alpha * seed(x) == h`` exactly for any alpha; under
CONVEX the slot starts at alpha 0, so its output is ``h`` until the seed has trained. The first gradient reaches the
last layer only (the layers before it see a zero weight downstream); once it moves, the earlier layers learn too.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, final

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from esper.nn.blueprints.weights import hidden_width, materialise

if TYPE_CHECKING:
    from collections.abc import Mapping

    from esper.nn.blueprints.descriptors import SlotKind, SlotShape

__all__ = [
    "CONV_KINDS",
    "DepthwiseSeparableConv",
    "ResidualConvBlock",
    "SqueezeExcite",
    "build_depthwise_separable",
    "build_residual_conv",
    "build_squeeze_excite",
    "count_depthwise_separable",
    "count_residual_conv",
    "count_squeeze_excite",
]

CONV_KINDS: tuple[SlotKind, ...] = ("conv1d", "conv2d")


def _spatial_dims(slot: SlotShape, family: str) -> int:
    if slot.kind == "conv1d":
        return 1
    if slot.kind == "conv2d":
        return 2
    raise ValueError(f"{family} fits slot kinds {CONV_KINDS}, not {slot.kind!r}")


def _conv(dims: int, c_in: int, c_out: int, kernel: int, *, groups: int = 1) -> nn.Conv1d | nn.Conv2d:
    # Odd kernels with k // 2 padding keep every spatial size unchanged ("same" padding, stride 1).
    if dims == 1:
        return nn.Conv1d(c_in, c_out, kernel, padding=kernel // 2, groups=groups, device="meta")
    return nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2, groups=groups, device="meta")


@final
class ResidualConvBlock(nn.Module):
    """conv(k) -> GroupNorm(1) -> GELU -> conv(k, zero-initialised): the branch of a residual block.

    Shapes: ``[batch, channels, *spatial]`` in and out; ``hidden = max(1, round(channels * width))``.
    """

    def __init__(self, dims: int, channels: int, hidden: int, kernel: int) -> None:
        super().__init__()
        self.conv_in = _conv(dims, channels, hidden, kernel)
        self.norm = nn.GroupNorm(1, hidden, device="meta")
        self.conv_out = _conv(dims, hidden, channels, kernel)

    def forward(self, x: Tensor) -> Tensor:
        y: Tensor = self.conv_out(F.gelu(self.norm(self.conv_in(x))))
        return y


@final
class DepthwiseSeparableConv(nn.Module):
    """Depthwise conv(k, channels * multiplier outputs) -> GELU -> pointwise 1x1 conv (zero-initialised).

    Shapes: ``[batch, channels, *spatial]`` in and out.
    """

    def __init__(self, dims: int, channels: int, multiplier: int, kernel: int) -> None:
        super().__init__()
        self.depthwise = _conv(dims, channels, channels * multiplier, kernel, groups=channels)
        self.pointwise = _conv(dims, channels * multiplier, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        y: Tensor = self.pointwise(F.gelu(self.depthwise(x)))
        return y


@final
class SqueezeExcite(nn.Module):
    """Channel gate: ``x * tanh(W2 gelu(W1 mean_spatial(x)))`` with W2 zero-initialised, so the gate starts at 0.

    Under a RESIDUAL blend this learns a per-channel rescaling ``h * (1 + alpha * gate)`` of the host output.
    tanh rather than sigmoid so that a zero last layer gives a zero gate (sigmoid(0) is 1/2). Shapes:
    ``[batch, channels, *spatial]`` in and out; ``hidden = max(1, round(channels / reduction))``.
    """

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.squeeze = nn.Linear(channels, hidden, device="meta")
        self.excite = nn.Linear(hidden, channels, device="meta")

    def forward(self, x: Tensor) -> Tensor:
        pooled = x.flatten(2).mean(dim=2)
        gate = torch.tanh(self.excite(F.gelu(self.squeeze(pooled))))
        return x * gate.reshape(*gate.shape, *([1] * (x.dim() - 2)))


def _kernel(params: Mapping[str, float]) -> int:
    return 2 * int(params["kernel_radius"]) + 1


def _taps(params: Mapping[str, float], dims: int) -> int:
    # Weights per (input, output) channel pair: kernel ** dims (int ** int is not an int to the type checker).
    return math.prod([_kernel(params)] * dims)


def build_residual_conv(slot: SlotShape, params: Mapping[str, float], generator: torch.Generator) -> nn.Module:
    """Residual conv branch; params ``width`` (hidden-channel multiplier) and ``kernel_radius`` (kernel 2r+1).

    Raises:
        ValueError: the slot is not conv1d or conv2d.
    """
    dims = _spatial_dims(slot, "residual_conv")
    hidden = hidden_width(slot.features, params["width"])
    module = ResidualConvBlock(dims, slot.features, hidden, _kernel(params))
    return materialise(module, generator, zero=[module.conv_out], dtype=slot.dtype)


def count_residual_conv(slot: SlotShape, params: Mapping[str, float]) -> int:
    """Parameter count of ``build_residual_conv(slot, params, ...)``."""
    dims = _spatial_dims(slot, "residual_conv")
    c, h, taps = slot.features, hidden_width(slot.features, params["width"]), _taps(params, dims)
    return (c * h * taps + h) + 2 * h + (h * c * taps + c)


def build_depthwise_separable(slot: SlotShape, params: Mapping[str, float], generator: torch.Generator) -> nn.Module:
    """Depthwise-separable conv; params ``kernel_radius`` (kernel 2r+1) and ``depth_multiplier``.

    Raises:
        ValueError: the slot is not conv1d or conv2d.
    """
    dims = _spatial_dims(slot, "depthwise_separable")
    module = DepthwiseSeparableConv(dims, slot.features, int(params["depth_multiplier"]), _kernel(params))
    return materialise(module, generator, zero=[module.pointwise], dtype=slot.dtype)


def count_depthwise_separable(slot: SlotShape, params: Mapping[str, float]) -> int:
    """Parameter count of ``build_depthwise_separable(slot, params, ...)``."""
    dims = _spatial_dims(slot, "depthwise_separable")
    c, inner = slot.features, slot.features * int(params["depth_multiplier"])
    return (inner * _taps(params, dims) + inner) + (inner * c + c)


def build_squeeze_excite(slot: SlotShape, params: Mapping[str, float], generator: torch.Generator) -> nn.Module:
    """Squeeze-excite channel gate; param ``reduction`` (hidden = channels / reduction, at least 1).

    Raises:
        ValueError: the slot is not conv1d or conv2d.
    """
    _spatial_dims(slot, "squeeze_excite")
    module = SqueezeExcite(slot.features, hidden_width(slot.features, 1.0 / params["reduction"]))
    return materialise(module, generator, zero=[module.excite], dtype=slot.dtype)


def count_squeeze_excite(slot: SlotShape, params: Mapping[str, float]) -> int:
    """Parameter count of ``build_squeeze_excite(slot, params, ...)``."""
    _spatial_dims(slot, "squeeze_excite")
    c, h = slot.features, hidden_width(slot.features, 1.0 / params["reduction"])
    return (c * h + h) + (h * c + c)
