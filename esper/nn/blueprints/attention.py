"""Self-attention blueprint family: pre-norm multi-head attention over a sequence or over a conv1d's length.

Function-preserving at birth means: the output projection is exactly zero, so ``seed(x)`` is exactly zero; under a
RESIDUAL blend ``h + alpha * seed(x) == h`` exactly, and under CONVEX the slot starts at alpha 0.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, final

import torch.nn.functional as F
from torch import Tensor, nn

from esper.nn.blueprints.weights import materialise

if TYPE_CHECKING:
    from collections.abc import Mapping

    import torch

    from esper.nn.blueprints.descriptors import SlotKind, SlotShape

__all__ = ["ATTENTION_KINDS", "SelfAttention", "build_self_attention", "count_self_attention"]

ATTENTION_KINDS: tuple[SlotKind, ...] = ("sequence", "conv1d")


@final
class SelfAttention(nn.Module):
    """LayerNorm -> QKV projection -> scaled dot-product attention -> output projection (zero-initialised).

    The inner width is ``heads * head_dim``, independent of the slot's features, so any head count fits any slot.
    ``causal`` masks attention to earlier positions only: keep it on for autoregressive hosts, where a non-causal
    seed would read future tokens. Shapes: sequence ``[batch, seq, features]``; conv1d ``[batch, features, length]``
    (attention runs over length). No dropout: the forward is deterministic.
    """

    def __init__(self, features: int, heads: int, head_dim: int, *, causal: bool, channels_first: bool) -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = head_dim
        self.causal = causal
        self.channels_first = channels_first
        self.norm = nn.LayerNorm(features, device="meta")
        self.qkv = nn.Linear(features, 3 * heads * head_dim, device="meta")
        self.out = nn.Linear(heads * head_dim, features, device="meta")

    def forward(self, x: Tensor) -> Tensor:
        tokens = x.transpose(1, 2) if self.channels_first else x
        batch, seq, _ = tokens.shape
        qkv = self.qkv(self.norm(tokens)).reshape(batch, seq, 3, self.heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        mixed = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
        y: Tensor = self.out(mixed.transpose(1, 2).reshape(batch, seq, self.heads * self.head_dim))
        return y.transpose(1, 2) if self.channels_first else y


def _check(slot: SlotShape) -> None:
    if slot.kind not in ATTENTION_KINDS:
        raise ValueError(f"self_attention fits slot kinds {ATTENTION_KINDS}, not {slot.kind!r}")


def build_self_attention(slot: SlotShape, params: Mapping[str, float], generator: torch.Generator) -> nn.Module:
    """Self-attention; params ``heads``, ``head_dim`` and ``causal`` (0 or 1).

    Raises:
        ValueError: the slot is not sequence or conv1d.
    """
    _check(slot)
    module = SelfAttention(
        slot.features,
        int(params["heads"]),
        int(params["head_dim"]),
        causal=params["causal"] >= 0.5,
        channels_first=slot.kind == "conv1d",
    )
    return materialise(module, generator, zero=[module.out], dtype=slot.dtype)


def count_self_attention(slot: SlotShape, params: Mapping[str, float]) -> int:
    """Parameter count of ``build_self_attention(slot, params, ...)``."""
    _check(slot)
    f, inner = slot.features, int(params["heads"]) * int(params["head_dim"])
    return 2 * f + (f * 3 * inner + 3 * inner) + (inner * f + f)
