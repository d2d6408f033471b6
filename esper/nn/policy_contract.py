"""The policy network's contract: its action vocabulary, what one forward returns, and what ``decide`` calls.

Kept apart from the network (esper.nn.policy_gnn) so the fused kernels and the decision code can share it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, NamedTuple, Protocol

if TYPE_CHECKING:
    from collections.abc import Mapping

    from torch import Tensor

__all__ = [
    "ACTION_NAMES",
    "ARCHITECTURE_VERSION",
    "BLEND_METHOD_NAMES",
    "HIGH_RISK_CLASSES",
    "NO_OP",
    "NUM_ACTIONS",
    "RISK_CLASS_NAMES",
    "EdgeType",
    "PolicyModel",
    "PolicyOutput",
    "TamiyoGNNConfig",
]

ARCHITECTURE_VERSION: Final = "tamiyo_gnn_v1"
ACTION_NAMES: Final = ("NO_OP", "GERMINATE", "CULL", "FOSSILIZE", "PAUSE", "RESUME", "LR_TWEAK")
"""The action order of the logits head; index i is ``ACTION_NAMES[i]`` (schemas' PolicyAction uses the same names)."""
NUM_ACTIONS: Final = len(ACTION_NAMES)
NO_OP: Final = 0
BLEND_METHOD_NAMES: Final = ("convex", "residual", "channel")
RISK_CLASS_NAMES: Final = ("minimal", "low", "moderate", "high", "critical")
HIGH_RISK_CLASSES: Final = (3, 4)
"""The risk score is P(high) + P(critical), never the top softmax probability (REFERENCE.md section 13, flaw 8)."""

EdgeType = tuple[str, str, str]


class PolicyOutput(NamedTuple):
    """Everything one forward produces. Per-graph heads are ``[G, ...]``; per-node scores are ``[N_t]``."""

    action_logits: Tensor  # [G, NUM_ACTIONS], unmasked
    seed_scores: Tensor  # [N_seed]
    blueprint_scores: Tensor  # [N_blueprint]
    layer_scores: Tensor  # [N_layer], the slot head
    blend_logits: Tensor  # [G, 3], over BLEND_METHOD_NAMES
    schedule: Tensor  # [G, 2], start <= end, both in [0, 1] (fractions of the blending window)
    ramp: Tensor  # [G], in (0, 1): fraction of the configured maximum ramp length
    params: Tensor  # [G, 2], tanh: (lr delta as a fraction of its bound, initial alpha in [-1, 1])
    value: Tensor  # [G]
    risk_logits: Tensor  # [G, 5], over RISK_CLASS_NAMES
    risk_score: Tensor  # [G], P(high-risk classes)


class PolicyModel(Protocol):
    """What ``decide`` calls: a TamiyoGNN or its compiled wrapper."""

    @property
    def training(self) -> bool: ...

    def __call__(
        self,
        x_dict: Mapping[str, Tensor],
        edge_index_dict: Mapping[EdgeType, Tensor],
        edge_attr_dict: Mapping[EdgeType, Tensor],
        batch_dict: Mapping[str, Tensor] | None = None,
    ) -> PolicyOutput: ...


@dataclass(frozen=True, slots=True)
class TamiyoGNNConfig:
    """Sizes of ``tamiyo_gnn_v1``; the defaults are the reference ones (256 -> 128, 4 heads, dropout 0.2)."""

    hidden: int = 256
    gat_hidden: int = 128
    heads: int = 4
    dropout: float = 0.2

    def __post_init__(self) -> None:
        if self.hidden < 1 or self.gat_hidden < 1 or self.heads < 1:
            raise ValueError(f"TamiyoGNNConfig sizes must be >= 1, got {self}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"TamiyoGNNConfig.dropout must be in [0, 1), got {self.dropout}")
