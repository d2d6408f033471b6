"""Tamiyo's policy network ``tamiyo_gnn_v1`` (hetero SAGE then GAT over the state graph) and its builder.

Shapes: ``G`` graphs in a batch (1 for a decision), ``N_t`` nodes of type ``t``, ``H`` = ``config.hidden``,
``H2`` = ``config.gat_hidden``. The parameters live in PyG modules (``HeteroConv`` of ``SAGEConv`` / ``GATConv``, mean
over relations), so the state dict is the reference one; ``forward_reference`` runs those modules as they are. The
default ``forward`` computes the same function with the relations fused into a few large tensor operations
(esper.nn.policy_fused; about 2.5x faster on CPU at 32 slots); a parity test holds the two together. Neither
branches on tensor values nor calls ``.item()``; ``decide`` (esper.nn.policy_decide) converts to Python numbers once.
The action vocabulary and the output record live in esper.nn.policy_contract.
"""

from __future__ import annotations

import operator
from typing import TYPE_CHECKING, final

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.nn import GATConv, HeteroConv, SAGEConv

from esper.nn.policy_contract import (
    BLEND_METHOD_NAMES,
    HIGH_RISK_CLASSES,
    NO_OP,
    NUM_ACTIONS,
    RISK_CLASS_NAMES,
    EdgeType,
    PolicyOutput,
    TamiyoGNNConfig,
)
from esper.nn.policy_fused import (
    FusedWeights,
    gat_fused,
    heads_fused,
    ordered_unit_pair,
    sage_fused,
)
from esper.nn.policy_graph import EDGE_DIM, EDGE_TYPES, NODE_FEATURES
from esper.nn.policy_plan import PlanCache, RelationLayout

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

__all__ = ["TamiyoGNN", "TamiyoGNNConfig", "build_tamiyo_gnn"]

_NO_OP_BIAS = 2.0
# A parameter's in-place update counter; with its storage address, what the fused-weight cache is keyed on.
_version = operator.attrgetter("_version")
_HEAD_INIT_STD = 0.01


def _encoder(in_dim: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.LayerNorm(hidden))


def _identity(x: Tensor) -> Tensor:
    return x


def _forget_fused(module: nn.Module, _keys: object) -> None:
    assert isinstance(module, TamiyoGNN)
    module.forget_fused()


_EncoderArgs = tuple[Tensor, Tensor | None, tuple[int, ...], Tensor | None, Tensor | None, float]


def _encoder_args(encoder: nn.Module) -> _EncoderArgs:
    """What ``_encode`` needs of an ``_encoder`` Sequential: its linear's and its layer norm's parameters."""
    linear, _, norm = encoder.children()
    assert isinstance(linear, nn.Linear)
    assert isinstance(norm, nn.LayerNorm)
    return linear.weight, linear.bias, tuple(norm.normalized_shape), norm.weight, norm.bias, norm.eps


def _encode(args: _EncoderArgs, x: Tensor) -> Tensor:
    """``encoder(x)`` for an ``_encoder`` Sequential, as three functional calls (the same kernels, without the
    four module dispatches and the module attribute reads, a measurable share of a 4 ms decision)."""
    weight, bias, shape, norm_weight, norm_bias, eps = args
    return F.layer_norm(F.gelu(F.linear(x, weight, bias)), shape, norm_weight, norm_bias, eps)


@final
class TamiyoGNN(nn.Module):
    """``tamiyo_gnn_v1``: per-type encoders, 2 hetero SAGE layers, 2 hetero GAT layers, global-node readout, heads.

    Every size is fixed at construction (no lazy ``-1`` sizes), so the optimizer can be built right away. An untrained
    network favours NO_OP: the action head starts with near-zero weights and a positive NO_OP bias.
    """

    def __init__(
        self,
        config: TamiyoGNNConfig | None = None,
        *,
        node_features: Mapping[str, int] = NODE_FEATURES,
        edge_types: Sequence[EdgeType] = EDGE_TYPES,
    ) -> None:
        super().__init__()
        cfg = config if config is not None else TamiyoGNNConfig()
        self.config = cfg
        self.node_types = tuple(node_features)
        self.edge_types = tuple(edge_types)
        h, h2 = cfg.hidden, cfg.gat_hidden
        self.encoders = nn.ModuleDict({t: _encoder(d, h) for t, d in node_features.items()})
        self.sage = nn.ModuleList(
            HeteroConv({et: SAGEConv(h, h, aggr="mean") for et in self.edge_types}, aggr="mean") for _ in range(2)
        )
        self.gat = nn.ModuleList(
            HeteroConv(
                {
                    et: GATConv(d_in, h2, heads=cfg.heads, concat=False, add_self_loops=False, edge_dim=EDGE_DIM)
                    for et in self.edge_types
                },
                aggr="mean",
            )
            for d_in in (h, h2)
        )
        self.act = nn.GELU()
        self.drop = nn.Dropout(cfg.dropout)
        self.action_head = nn.Linear(h2, NUM_ACTIONS)
        self.seed_head = nn.Linear(2 * h2, 1)
        self.blueprint_head = nn.Linear(2 * h2, 1)
        self.layer_head = nn.Linear(2 * h2, 1)
        self.blend_head = nn.Linear(h2, len(BLEND_METHOD_NAMES))
        self.schedule_head = nn.Linear(h2, 2)
        self.ramp_head = nn.Linear(h2, 1)
        self.param_head = nn.Linear(h2, 2)
        self.value_head = nn.Linear(h2, 1)
        self.risk_head = nn.Linear(h2, len(RISK_CLASS_NAMES))
        self._init_heads()
        self._layout = RelationLayout.of(self.node_types, self.edge_types)
        self._fused_cache: tuple[tuple[tuple[int, ...], tuple[int, ...]], FusedWeights] | None = None
        self._plans = PlanCache()
        self._param_list: tuple[nn.Parameter, ...] | None = None
        self._encoder_args: dict[str, _EncoderArgs] | None = None
        # load_state_dict(assign=True) puts new Parameter objects in place: forget the ones being watched.
        self.register_load_state_dict_post_hook(_forget_fused)  # type: ignore[no-untyped-call]  # torch leaves it unannotated

    def _init_heads(self) -> None:
        for head in (self.action_head, self.risk_head, self.value_head, self.param_head):
            nn.init.normal_(head.weight, std=_HEAD_INIT_STD)
            nn.init.zeros_(head.bias)
        with torch.no_grad():
            self.action_head.bias[NO_OP] = _NO_OP_BIAS

    def forward(
        self,
        x_dict: Mapping[str, Tensor],
        edge_index_dict: Mapping[EdgeType, Tensor],
        edge_attr_dict: Mapping[EdgeType, Tensor],
        batch_dict: Mapping[str, Tensor] | None = None,
    ) -> PolicyOutput:
        """Run the network on the fused path (the same weights and maths as ``forward_reference``, fewer kernels).

        Args:
            x_dict: ``{node_type: [N_t, F_t]}`` float features, one entry per type in ``node_types`` (N_t may be 0).
            edge_index_dict: ``{edge_type: [2, E]}`` int64, one entry per type in ``edge_types`` (E may be 0).
            edge_attr_dict: ``{edge_type: [E, 3]}`` float, the same keys.
            batch_dict: ``{node_type: [N_t]}`` graph index per node for a PyG batch; None for a single graph.

        Raises:
            KeyError: a node type or edge type of the network is missing from the inputs.
        """
        lay = self._layout
        if self._encoder_args is None:
            # The parameters themselves (in-place updates show through); replacing them calls forget_fused.
            self._encoder_args = {t: _encoder_args(self.encoders[t]) for t in self.node_types}
        encoded = [_encode(self._encoder_args[t], x_dict[t]) for t in self.node_types]
        counts = {t: x.shape[0] for t, x in zip(self.node_types, encoded, strict=True)}
        plan = self._plans.plan(lay, counts, edge_index_dict, edge_attr_dict, encoded[0].dtype, self.config.heads)
        fused = self._fused_weights()
        # Every node type's rows in one tensor, so activations and residuals are one operation per layer.
        x = torch.cat(encoded)
        # self.act as the function it calls, and self.drop only in training (the identity in eval): the module calls
        # cost more than the kernels at a decision's sizes.
        drop = self.drop if self.training else _identity
        for sage_w in fused.sage:
            x = drop(F.gelu(sage_fused(sage_w, lay, plan, x)) + x)
        for gat_w in fused.gat:
            out = gat_fused(gat_w, lay, plan, x, self.config.heads)
            x = drop(F.gelu(out) + x) if out.shape == x.shape else F.gelu(out)
        return heads_fused(fused.heads, plan.views(x, self.node_types), batch_dict)

    def forward_reference(
        self,
        x_dict: Mapping[str, Tensor],
        edge_index_dict: Mapping[EdgeType, Tensor],
        edge_attr_dict: Mapping[EdgeType, Tensor],
        batch_dict: Mapping[str, Tensor] | None = None,
    ) -> PolicyOutput:
        """The plain PyG formulation (``HeteroConv`` of ``SAGEConv`` / ``GATConv``); ``forward`` must match it."""
        edges = {et: edge_index_dict[et] for et in self.edge_types}
        attrs = {et: edge_attr_dict[et] for et in self.edge_types}
        h = {t: self.encoders[t](x_dict[t]) for t in self.node_types}
        for conv in self.sage:
            out = conv(h, edges)
            h = {t: self.drop(self.act(out[t]) + h[t]) for t in self.node_types}
        for conv in self.gat:
            out = conv(h, edges, edge_attr_dict=attrs)
            h = {t: self.drop(self.act(out[t]) + h[t] if out[t].shape == h[t].shape else self.act(out[t])) for t in h}
        return self._heads(h, batch_dict)

    def _heads(self, h: dict[str, Tensor], batch_dict: Mapping[str, Tensor] | None) -> PolicyOutput:
        g = h["global"]  # [G, H2]
        risk = self.risk_head(g)
        return PolicyOutput(
            action_logits=self.action_head(g),
            seed_scores=self._node_scores(self.seed_head, h["seed"], g, batch_dict, "seed"),
            blueprint_scores=self._node_scores(self.blueprint_head, h["blueprint"], g, batch_dict, "blueprint"),
            layer_scores=self._node_scores(self.layer_head, h["layer"], g, batch_dict, "layer"),
            blend_logits=self.blend_head(g),
            schedule=ordered_unit_pair(self.schedule_head(g)),
            ramp=torch.sigmoid(self.ramp_head(g)).squeeze(-1),
            params=torch.tanh(self.param_head(g)),
            value=self.value_head(g).squeeze(-1),
            risk_logits=risk,
            risk_score=torch.softmax(risk.float(), dim=-1)[:, list(HIGH_RISK_CLASSES)].sum(-1),
        )

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> TamiyoGNN:
        # .to(), .double() and friends may replace parameters (torch.__future__'s overwrite option).
        super()._apply(fn, recurse)  # type: ignore[no-untyped-call]  # torch leaves it unannotated
        self.forget_fused()
        return self

    def forget_fused(self) -> None:
        """Drop the fused weights and the lists of watched and encoder parameters; the next inference rebuilds them.

        Inference notices every in-place change made to a parameter itself (an optimizer step, ``load_state_dict``,
        ``copy_`` under ``no_grad``) by its version counter, but not one made through ``param.data`` (for example a
        Polyak average written as ``p.data.mul_(tau)``): torch gives ``.data`` a version counter of its own. Nor does
        it notice a submodule or a Parameter replaced by another object (``model.encoders["seed"] = ...``,
        ``layer.weight = nn.Parameter(...)``): the watched lists hold the old ones. Call this after such a change
        (``load_state_dict`` and ``.to()`` call it themselves).
        """
        self._fused_cache = None
        self._param_list = None
        self._encoder_args = None

    def _fused_weights(self) -> FusedWeights:
        # Concatenated weights are rebuilt when any parameter changed (optimizer step, load, move); with grad enabled
        # they are rebuilt every call so gradients reach the real parameters.
        if torch.is_grad_enabled():
            return FusedWeights.of(self)
        if self._param_list is None:
            # The encoders run as modules, not from the fused copies, so their parameters need no watching.
            encoders = {id(p) for p in self.encoders.parameters()}
            self._param_list = tuple(p for p in self.parameters() if id(p) not in encoders)
        params = self._param_list
        key = (tuple(map(Tensor.data_ptr, params)), tuple(map(_version, params)))
        if self._fused_cache is None or self._fused_cache[0] != key:
            # Packed: the cached copies are read on every inference, through fewer TLB entries (weight_arena).
            self._fused_cache = (key, FusedWeights.of(self).packed())
        return self._fused_cache[1]

    @staticmethod
    def _node_scores(
        head: nn.Linear, nodes: Tensor, g: Tensor, batch_dict: Mapping[str, Tensor] | None, node_type: str
    ) -> Tensor:
        # Each node is scored beside its own graph's readout, so the score can depend on the global state.
        ctx = g[batch_dict[node_type]] if batch_dict is not None else g[:1].expand(nodes.shape[0], -1)
        scores: Tensor = head(torch.cat([nodes, ctx], dim=-1)).squeeze(-1)
        return scores


def build_tamiyo_gnn(
    config: TamiyoGNNConfig | None = None, *, device: torch.device | str = "cpu", seed: int | None = None
) -> TamiyoGNN:
    """Build ``tamiyo_gnn_v1`` on ``device`` in eval mode; with ``seed`` the initial weights are reproducible.

    Sizes are static, so no dry forward pass is needed before creating an optimizer.
    """
    if seed is None:
        model = TamiyoGNN(config)
    else:
        with torch.random.fork_rng(devices=[]):
            # The CPU generator only, which the weights are drawn from: torch.manual_seed would reseed every CUDA
            # device too, which fork_rng(devices=[]) does not put back.
            torch.default_generator.manual_seed(seed)
            model = TamiyoGNN(config)
    return model.to(device).eval()
