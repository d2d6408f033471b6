# Past the 600-line soft cap on purpose: the fused kernels must stay beside the PyG modules whose weights they read.
"""Tamiyo's policy network ``tamiyo_gnn_v1`` (hetero SAGE then GAT over the state graph), its builder and ``decide``.

Shapes: ``G`` graphs in a batch (1 for a decision), ``N_t`` nodes of type ``t``, ``H`` = ``config.hidden``,
``H2`` = ``config.gat_hidden``. The parameters live in PyG modules (``HeteroConv`` of ``SAGEConv`` / ``GATConv``, mean
over relations), so the state dict is the reference one; ``forward_reference`` runs those modules as they are. The
default ``forward`` computes the same function with the relations fused into a few large tensor operations (about 2.5x
faster on CPU at 32 slots); a parity test holds the two together. Neither branches on tensor values nor calls
``.item()``; ``decide`` converts to Python numbers once, at its end.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, NamedTuple, Protocol, final

import torch
from torch import Tensor, nn
from torch_geometric.nn import GATConv, HeteroConv, SAGEConv

from esper.nn.policy_graph import EDGE_DIM, EDGE_TYPES, NODE_FEATURES

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    from torch_geometric.data import HeteroData

__all__ = [
    "ACTION_NAMES",
    "ARCHITECTURE_VERSION",
    "BLEND_METHOD_NAMES",
    "HIGH_RISK_CLASSES",
    "NO_OP",
    "NUM_ACTIONS",
    "RISK_CLASS_NAMES",
    "CompileFallback",
    "PolicyDecision",
    "PolicyModel",
    "PolicyOutput",
    "TamiyoGNN",
    "TamiyoGNNConfig",
    "build_tamiyo_gnn",
    "decide",
    "maybe_compile",
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

_NO_OP_BIAS = 2.0
_HEAD_INIT_STD = 0.01

EdgeType = tuple[str, str, str]


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


def _encoder(in_dim: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.LayerNorm(hidden))


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
        self._layout = _Layout.of(self.node_types, self.edge_types)
        self._fused_cache: tuple[tuple[tuple[int, int], ...], _FusedWeights] | None = None
        self._param_list: tuple[nn.Parameter, ...] | None = None

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
        h = {t: self.encoders[t](x_dict[t]) for t in self.node_types}
        plan = _Plan.of(self._layout, h, edge_index_dict, edge_attr_dict)
        fused = self._fused_weights()
        for sage_w in fused.sage:
            out = _sage_fused(sage_w, self._layout, plan, h)
            h = {t: self.drop(self.act(out[t]) + h[t]) for t in self.node_types}
        for gat_w in fused.gat:
            out = _gat_fused(gat_w, self._layout, plan, h, self.config.heads)
            h = {t: self.drop(self.act(out[t]) + h[t] if out[t].shape == h[t].shape else self.act(out[t])) for t in h}
        return _heads_fused(fused.heads, h, batch_dict)

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
            schedule=_ordered_unit_pair(self.schedule_head(g)),
            ramp=torch.sigmoid(self.ramp_head(g)).squeeze(-1),
            params=torch.tanh(self.param_head(g)),
            value=self.value_head(g).squeeze(-1),
            risk_logits=risk,
            risk_score=torch.softmax(risk.float(), dim=-1)[:, list(HIGH_RISK_CLASSES)].sum(-1),
        )

    def _fused_weights(self) -> _FusedWeights:
        # Concatenated weights are rebuilt when any parameter changed (optimizer step, load, move); with grad enabled
        # they are rebuilt every call so gradients reach the real parameters.
        if torch.is_grad_enabled():
            return _FusedWeights.of(self)
        if self._param_list is None:
            self._param_list = tuple(self.parameters())
        key = tuple((p.data_ptr(), p._version) for p in self._param_list)
        if self._fused_cache is None or self._fused_cache[0] != key:
            self._fused_cache = (key, _FusedWeights.of(self))
        return self._fused_cache[1]

    @staticmethod
    def _node_scores(
        head: nn.Linear, nodes: Tensor, g: Tensor, batch_dict: Mapping[str, Tensor] | None, node_type: str
    ) -> Tensor:
        # Each node is scored beside its own graph's readout, so the score can depend on the global state.
        ctx = g[batch_dict[node_type]] if batch_dict is not None else g[:1].expand(nodes.shape[0], -1)
        scores: Tensor = head(torch.cat([nodes, ctx], dim=-1)).squeeze(-1)
        return scores


def _ordered_unit_pair(raw: Tensor) -> Tensor:
    start = torch.sigmoid(raw[:, 0])
    end = start + (1.0 - start) * torch.sigmoid(raw[:, 1])
    return torch.stack([start, end], dim=-1)


_SIZE_RANK = {"global": 0, "layer": 1, "blueprint": 2, "seed": 3}
"""Expected node counts, smallest first: one global node, capped layers, a blueprint catalogue, one seed per slot."""


@dataclass(frozen=True, slots=True)
class _Layout:
    """Static relation bookkeeping for the fused path.

    Linear maps commute with sums, so a relation can either project its source nodes and aggregate the projections
    ("src" mode) or aggregate raw source features per destination and project those ("dst" mode). Each relation uses
    the mode whose side is expected to hold fewer nodes, so seeds are rarely projected once per relation.
    """

    node_types: tuple[str, ...]
    edge_types: tuple[EdgeType, ...]
    in_rels: dict[str, tuple[int, ...]]  # every relation entering a type (softmax groups, degrees, relation mean)
    out_rels: dict[str, tuple[int, ...]]  # every relation leaving a type (attention source terms)
    src_rels: dict[str, tuple[int, ...]]  # src-mode relations, by source type
    dst_rels: dict[str, tuple[int, ...]]  # dst-mode relations, by destination type
    order: tuple[int, ...]  # relations in plan order: every src-mode relation first, then every dst-mode one

    @classmethod
    def of(cls, node_types: tuple[str, ...], edge_types: tuple[EdgeType, ...]) -> _Layout:
        in_rels = {t: tuple(r for r, et in enumerate(edge_types) if et[2] == t) for t in node_types}
        out_rels = {t: tuple(r for r, et in enumerate(edge_types) if et[0] == t) for t in node_types}
        for t, rels in in_rels.items():
            if not rels:
                raise ValueError(f"node type {t!r} receives no relation, so message passing would drop it")
        for et in edge_types:
            if et[0] not in in_rels or et[2] not in in_rels:
                raise ValueError(f"edge type {et} names a node type the network does not have")
        rank = [(_SIZE_RANK.get(s, len(_SIZE_RANK)), _SIZE_RANK.get(d, len(_SIZE_RANK))) for s, _, d in edge_types]
        src_mode = [a <= b for a, b in rank]
        src_rels = {t: tuple(r for r in out_rels[t] if src_mode[r]) for t in node_types}
        dst_rels = {t: tuple(r for r in in_rels[t] if not src_mode[r]) for t in node_types}
        order = tuple(r for t in node_types for r in src_rels[t]) + tuple(r for t in node_types for r in dst_rels[t])
        return cls(node_types, edge_types, in_rels, out_rels, src_rels, dst_rels, order)

    @property
    def n_src_mode(self) -> int:
        return sum(len(rels) for rels in self.src_rels.values())


def _offsets(
    layout: _Layout, counts: Mapping[str, int], rels: Mapping[str, tuple[int, ...]]
) -> tuple[dict[str, int], int]:
    off, total = {}, 0
    for t in layout.node_types:
        off[t] = total
        total += counts[t] * len(rels[t])
    return off, total


@dataclass(frozen=True, slots=True)
class _Plan:
    """One graph's edges flattened over all relations (in ``layout.order``) into row indices of the fused tables.

    A row table keyed by (node of type t, relation r among ``rels[t]``) puts that pair at
    ``offset_t + node * len(rels[t]) + position of r``, so a type's rows view as ``[N_t, len(rels[t]), ...]``. Edges
    ``[:e_src]`` belong to src-mode relations, the rest to dst-mode ones.
    """

    counts: dict[str, int]
    node_off: dict[str, int]
    in_off: dict[str, int]
    in_rows: int
    dst_off: dict[str, int]
    dst_rows: int
    e_src: int
    src_node: Tensor  # [E] index into all nodes (types concatenated in layout order)
    dst_node: Tensor  # [E]
    in_row: Tensor  # [E] (destination, relation) over every entering relation: softmax group and degree
    out_row: Tensor  # [E] (source, relation) over every leaving relation: attention source term
    mode_row: Tensor  # [E] src-mode edges: (source, relation) among src_rels; dst-mode: (dest, relation) in dst_rels
    rel: Tensor  # [E]
    attr: Tensor  # [E, 3]
    edge_scale: Tensor  # [E, 1]: 1 / (degree of its (destination, relation) * relations entering the destination)
    inv_k: Tensor  # [E, 1]: 1 / relations entering the destination

    @classmethod
    def of(
        cls,
        layout: _Layout,
        h: Mapping[str, Tensor],
        edge_index_dict: Mapping[EdgeType, Tensor],
        edge_attr_dict: Mapping[EdgeType, Tensor],
    ) -> _Plan:
        counts = {t: h[t].shape[0] for t in layout.node_types}
        node_off, _ = _offsets(layout, counts, {t: (0,) for t in layout.node_types})
        in_off, in_rows = _offsets(layout, counts, layout.in_rels)
        out_off, _ = _offsets(layout, counts, layout.out_rels)
        src_off, _ = _offsets(layout, counts, layout.src_rels)
        dst_off, dst_rows = _offsets(layout, counts, layout.dst_rels)
        table: list[list[int]] = [[] for _ in range(10)]
        for r in layout.order:
            s, _, d = layout.edge_types[r]
            src_mode = r in layout.src_rels[s]
            mode_t, mode_rels, mode_off = (s, layout.src_rels, src_off) if src_mode else (d, layout.dst_rels, dst_off)
            for column, value in enumerate((
                node_off[s], node_off[d],
                len(layout.in_rels[d]), in_off[d] + layout.in_rels[d].index(r),
                len(layout.out_rels[s]), out_off[s] + layout.out_rels[s].index(r),
                len(mode_rels[mode_t]), mode_off[mode_t] + mode_rels[mode_t].index(r),
                int(src_mode), r,
            )):  # fmt: skip
                table[column].append(value)
        device = h[layout.node_types[0]].device
        dtype = h[layout.node_types[0]].dtype
        indices = [edge_index_dict[layout.edge_types[r]] for r in layout.order]
        sizes = [ei.shape[1] for ei in indices]
        edges = torch.cat(indices, dim=1)
        slot = torch.repeat_interleave(
            torch.arange(len(indices), device=device), torch.tensor(sizes, device=device), output_size=edges.shape[1]
        )
        col = torch.tensor(table, dtype=torch.long, device=device)[:, slot]
        src, dst = edges[0], edges[1]
        in_row = dst * col[2] + col[3]
        mode_node = torch.where(col[8].bool(), src, dst)
        deg = torch.bincount(in_row, minlength=in_rows).clamp_(min=1).to(dtype)
        return cls(
            counts=counts,
            node_off=node_off,
            in_off=in_off,
            in_rows=in_rows,
            dst_off=dst_off,
            dst_rows=dst_rows,
            e_src=sum(sizes[: layout.n_src_mode]),
            src_node=src + col[0],
            dst_node=dst + col[1],
            in_row=in_row,
            out_row=src * col[4] + col[5],
            mode_row=mode_node * col[6] + col[7],
            rel=col[9],
            attr=torch.cat([edge_attr_dict[layout.edge_types[r]] for r in layout.order]).to(dtype),
            edge_scale=(deg[in_row] * col[2].to(dtype)).reciprocal().unsqueeze(-1),
            inv_k=col[2].to(dtype).reciprocal().unsqueeze(-1),
        )


@dataclass(frozen=True, slots=True)
class _SageWeights:
    node_w: dict[str, Tensor]  # [H, H + k_s * H]: the mean root weight, then W_l of each src-mode relation leaving t
    agg_w: dict[str, Tensor]  # [k_t * H, H]: W_l of each dst-mode relation entering t
    bias: dict[str, Tensor]  # [H], the mean of the entering relations' biases


@dataclass(frozen=True, slots=True)
class _GatWeights:
    # [d_in, k_out * heads + k_in * heads + k_src * heads * C] per type: projections folded with att_src (every
    # leaving relation), folded with att_dst (every entering relation), then the projections of src-mode relations.
    node_w: dict[str, Tensor]
    agg_w: dict[str, Tensor]  # [k_t * heads * d_in, C]: projections of dst-mode relations entering t, / (heads * k)
    edge: Tensor  # [3, R * heads]: lin_edge folded with att_edge
    bias: dict[str, Tensor]  # [C], the mean of the entering relations' biases
    out_channels: int


@dataclass(frozen=True, slots=True)
class _HeadWeights:
    graph_w: Tensor  # [H2, 24]: action 7, blend 3, schedule 2, ramp 1, params 2, value 1, risk 5, node-head contexts 3
    graph_b: Tensor  # [24]
    node_w: dict[str, Tensor]  # [H2, 1]: the node half of each node-scoring head


_HEAD_SPLITS = (NUM_ACTIONS, len(BLEND_METHOD_NAMES), 2, 1, 2, 1, len(RISK_CLASS_NAMES), 1, 1, 1)


@dataclass(frozen=True, slots=True)
class _FusedWeights:
    sage: tuple[_SageWeights, ...]
    gat: tuple[_GatWeights, ...]
    heads: _HeadWeights

    @classmethod
    def of(cls, model: TamiyoGNN) -> _FusedWeights:
        lay = model._layout
        k_in = [len(lay.in_rels[d]) for _, _, d in lay.edge_types]
        sage = []
        for hetero in model.sage:
            convs = _relation_convs(hetero, lay.edge_types)
            node_w, agg_w, bias = {}, {}, {}
            for t in lay.node_types:
                root = torch.stack([convs[r].lin_r.weight for r in lay.in_rels[t]]).mean(0)
                node_w[t] = torch.cat([root, *(convs[r].lin_l.weight for r in lay.src_rels[t])]).t().contiguous()
                if lay.dst_rels[t]:
                    agg_w[t] = torch.cat([convs[r].lin_l.weight for r in lay.dst_rels[t]], dim=1).t().contiguous()
                bias[t] = torch.stack([convs[r].lin_l.bias for r in lay.in_rels[t]]).mean(0)
            sage.append(_SageWeights(node_w, agg_w, bias))
        gat = []
        for hetero in model.gat:
            convs = _relation_convs(hetero, lay.edge_types)
            heads, c = convs[0].heads, convs[0].out_channels
            proj = [conv.lin.weight.view(heads, c, -1) for conv in convs]  # [heads, C, d_in]
            a_src = [torch.einsum("hcd,hc->hd", p, conv.att_src[0]) for p, conv in zip(proj, convs, strict=True)]
            a_dst = [torch.einsum("hcd,hc->hd", p, conv.att_dst[0]) for p, conv in zip(proj, convs, strict=True)]
            node_w = {
                t: torch.cat([
                    *(a_src[r] for r in lay.out_rels[t]),
                    *(a_dst[r] for r in lay.in_rels[t]),
                    *(convs[r].lin.weight for r in lay.src_rels[t]),
                ]).t().contiguous()
                for t in lay.node_types
            }  # fmt: skip
            agg_w = {
                t: torch.cat([proj[r].permute(0, 2, 1).reshape(-1, c) / (heads * k_in[r]) for r in rels])
                for t, rels in lay.dst_rels.items()
                if rels
            }
            edge = torch.cat(
                [
                    torch.einsum("hce,hc->eh", conv.lin_edge.weight.view(heads, c, -1), conv.att_edge[0])
                    for conv in convs
                ],
                dim=1,
            )
            bias = {t: torch.stack([convs[r].bias for r in rels]).mean(0) for t, rels in lay.in_rels.items()}
            gat.append(_GatWeights(node_w, agg_w, edge, bias, c))
        return cls(tuple(sage), tuple(gat), _head_weights(model))


def _head_weights(model: TamiyoGNN) -> _HeadWeights:
    h2 = model.config.gat_hidden
    graph_heads = (model.action_head, model.blend_head, model.schedule_head, model.ramp_head, model.param_head,
                   model.value_head, model.risk_head)  # fmt: skip
    node_heads = {"seed": model.seed_head, "blueprint": model.blueprint_head, "layer": model.layer_head}
    weights: list[Tensor] = [*(head.weight for head in graph_heads)] + [
        head.weight[:, h2:] for head in node_heads.values()
    ]
    biases: list[Tensor] = [*(head.bias for head in graph_heads), *(head.bias for head in node_heads.values())]
    return _HeadWeights(
        graph_w=torch.cat(weights).t().contiguous(),
        graph_b=torch.cat(biases),
        node_w={t: head.weight[:, :h2].t().contiguous() for t, head in node_heads.items()},
    )


def _heads_fused(w: _HeadWeights, h: Mapping[str, Tensor], batch_dict: Mapping[str, Tensor] | None) -> PolicyOutput:
    g = h["global"]
    action, blend, schedule, ramp, params, value, risk, *ctx = torch.addmm(w.graph_b, g, w.graph_w).split_with_sizes(
        list(_HEAD_SPLITS), dim=-1
    )
    scores = {}
    for (t, node_w), c in zip(w.node_w.items(), ctx, strict=True):
        per_node = c[batch_dict[t]] if batch_dict is not None else c[:1]
        scores[t] = (h[t] @ node_w + per_node).squeeze(-1)
    return PolicyOutput(
        action_logits=action,
        seed_scores=scores["seed"],
        blueprint_scores=scores["blueprint"],
        layer_scores=scores["layer"],
        blend_logits=blend,
        schedule=_ordered_unit_pair(schedule),
        ramp=torch.sigmoid(ramp).squeeze(-1),
        params=torch.tanh(params),
        value=value.squeeze(-1),
        risk_logits=risk,
        risk_score=torch.softmax(risk.float(), dim=-1)[:, list(HIGH_RISK_CLASSES)].sum(-1),
    )


def _relation_convs(hetero: HeteroConv, edge_types: tuple[EdgeType, ...]) -> list[Any]:
    # PyG ships no types; the convs are SAGEConv / GATConv instances keyed by edge type.
    return [hetero.convs[et] for et in edge_types]


def _rows(table: Tensor, off: int, n: int, k: int) -> Tensor:
    return table[off : off + n * k].reshape(n, -1)


def _sage_fused(w: _SageWeights, lay: _Layout, plan: _Plan, h: Mapping[str, Tensor]) -> dict[str, Tensor]:
    x_all = torch.cat([h[t] for t in lay.node_types])
    dim, e = x_all.shape[1], plan.e_src
    y = {t: h[t] @ w.node_w[t] for t in lay.node_types}  # [N_t, H + k_src * H]: root term, src-mode projections
    # Src mode: scatter the scaled projections of the sources onto their destination nodes.
    proj = torch.cat([y[t][:, dim:].reshape(-1, dim) for t in lay.node_types])
    acc = x_all.new_zeros(x_all.shape).index_add(0, plan.dst_node[:e], proj[plan.mode_row[:e]] * plan.edge_scale[:e])
    # Dst mode: mean-aggregate raw source features per (destination, relation), then project per type.
    agg = x_all.new_zeros(plan.dst_rows, dim).index_add(
        0, plan.mode_row[e:], x_all[plan.src_node[e:]] * plan.edge_scale[e:]
    )
    out = {}
    for t in lay.node_types:
        n, off = plan.counts[t], plan.node_off[t]
        o = y[t][:, :dim] + w.bias[t] + acc[off : off + n]
        out[t] = o + _rows(agg, plan.dst_off[t], n, len(lay.dst_rels[t])) @ w.agg_w[t] if t in w.agg_w else o
    return out


def _gat_fused(w: _GatWeights, lay: _Layout, plan: _Plan, h: Mapping[str, Tensor], heads: int) -> dict[str, Tensor]:
    c, e = w.out_channels, plan.e_src
    x_all = torch.cat([h[t] for t in lay.node_types])
    y = {t: h[t] @ w.node_w[t] for t in lay.node_types}
    cut = {t: (len(lay.out_rels[t]) * heads, (len(lay.out_rels[t]) + len(lay.in_rels[t])) * heads) for t in y}
    a_src = torch.cat([y[t][:, : cut[t][0]].reshape(-1, heads) for t in lay.node_types])
    a_dst = torch.cat([y[t][:, cut[t][0] : cut[t][1]].reshape(-1, heads) for t in lay.node_types])
    p = torch.cat([y[t][:, cut[t][1] :].reshape(-1, heads, c) for t in lay.node_types])
    n_edges = plan.rel.shape[0]
    a_edge = (plan.attr @ w.edge).view(n_edges, -1, heads)[torch.arange(n_edges, device=plan.rel.device), plan.rel]
    alpha = torch.nn.functional.leaky_relu(a_src[plan.out_row] + a_dst[plan.in_row] + a_edge, 0.2)
    # Softmax per (destination node, relation), as GATConv does per relation: shift by the detached group max.
    index = plan.in_row.unsqueeze(-1).expand(-1, heads)
    top = alpha.new_zeros(plan.in_rows, heads).scatter_reduce(0, index, alpha.detach(), "amax", include_self=False)
    ex = (alpha - top[plan.in_row]).exp()
    denom = alpha.new_zeros(plan.in_rows, heads).index_add(0, plan.in_row, ex) + 1e-16
    alpha = ex / denom[plan.in_row]
    # Src mode: weight the source projections by attention, average the heads, scatter onto destination nodes.
    msg = torch.bmm(alpha[:e].unsqueeze(1), p[plan.mode_row[:e]]).squeeze(1) * (plan.inv_k[:e] / heads)
    acc = x_all.new_zeros(x_all.shape[0], c).index_add(0, plan.dst_node[:e], msg)
    # Dst mode: attention-weighted sums of raw source features per (destination, relation, head), then project.
    z_msg = alpha[e:].unsqueeze(-1) * x_all[plan.src_node[e:]].unsqueeze(1)
    z = x_all.new_zeros(plan.dst_rows, heads, x_all.shape[1]).index_add(0, plan.mode_row[e:], z_msg)
    out = {}
    for t in lay.node_types:
        n, off = plan.counts[t], plan.node_off[t]
        o = acc[off : off + n] + w.bias[t]
        out[t] = o + _rows(z, plan.dst_off[t], n, len(lay.dst_rels[t])) @ w.agg_w[t] if t in w.agg_w else o
    return out


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
            torch.manual_seed(seed)
            model = TamiyoGNN(config)
    return model.to(device).eval()


@dataclass(frozen=True, slots=True)
class PolicyDecision:
    """One decision in plain Python numbers. Target indices are node indices of the graph (None: no node of that type).

    ``log_prob`` is the log-probability of ``action_index`` under the masked policy. ``lr_delta`` is in [-1, 1] (a
    fraction of the configured bound), ``initial_alpha`` and ``ramp`` in [0, 1], ``schedule`` is (start, end) with
    start <= end in [0, 1].
    """

    action_index: int
    action: str
    log_prob: float
    value: float
    risk_score: float
    seed_index: int | None
    layer_index: int | None
    blueprint_index: int | None
    blend_method: int
    schedule: tuple[float, float]
    ramp: float
    lr_delta: float
    initial_alpha: float


def _bool_mask(mask: Sequence[bool] | Tensor | None, size: int, name: str, device: torch.device) -> Tensor | None:
    if mask is None:
        return None
    t = torch.as_tensor(mask, dtype=torch.bool).to(device)
    if t.shape != (size,):
        raise ValueError(f"{name} must have shape ({size},), got {tuple(t.shape)}")
    return t


def _pick(scores: Tensor, mask: Tensor | None) -> Tensor:
    if scores.shape[0] == 0:
        return torch.full((), -1.0, device=scores.device)
    s = scores.float()
    if mask is not None:
        s = s.masked_fill(~mask, -math.inf)
    # An all-masked target set yields -1 rather than an arbitrary index.
    return torch.where(torch.isfinite(s.max()), s.argmax().float(), torch.full((), -1.0, device=s.device))


def decide(
    model: PolicyModel,
    graph: HeteroData,
    mask: Sequence[bool] | Tensor,
    *,
    device: torch.device | str,
    seed_mask: Sequence[bool] | Tensor | None = None,
    layer_mask: Sequence[bool] | Tensor | None = None,
    blueprint_mask: Sequence[bool] | Tensor | None = None,
    sample: bool = False,
    generator: torch.Generator | None = None,
) -> PolicyDecision:
    """Run one inference and turn it into a decision; blocking, so it runs on the policy lane, never the event loop.

    Runs under ``torch.inference_mode`` with bf16 autocast on CUDA only. The action is the argmax (or, with
    ``sample``, a draw using ``generator``) over the logits with invalid actions set to -inf; a masked action is never
    chosen. Targets are the argmax of their masked scores. One device-to-host copy at the end.

    Args:
        mask: ``[NUM_ACTIONS]`` bool, True = allowed, in ``ACTION_NAMES`` order.
        seed_mask / layer_mask / blueprint_mask: ``[N_t]`` bool over the graph's nodes of that type.

    Raises:
        ValueError: the model is in training mode, a mask has the wrong shape, or every action is masked.
    """
    if model.training:
        raise ValueError("decide needs a model in eval mode (call .eval()); dropout would make decisions random")
    dev = torch.device(device)
    action_mask = _bool_mask(mask, NUM_ACTIONS, "mask", dev)
    assert action_mask is not None
    if not bool(action_mask.any()):
        raise ValueError("mask allows no action; NO_OP at least should be allowed")
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda" else contextlib.nullcontext()
    with torch.inference_mode(), autocast:
        # HeteroData.to walks every store even when nothing moves, so skip it when the graph is already there.
        data = graph if graph["global"].x.device == dev else graph.to(dev)
        out = model(data.x_dict, data.edge_index_dict, data.edge_attr_dict)
        logits = out.action_logits[0].float().masked_fill(~action_mask, -math.inf)
        log_probs = torch.log_softmax(logits, dim=-1)
        if sample:
            action = torch.multinomial(log_probs.exp(), 1, generator=generator)[0]
        else:
            action = log_probs.argmax()
        n_seed, n_layer, n_bp = out.seed_scores.shape[0], out.layer_scores.shape[0], out.blueprint_scores.shape[0]
        packed = torch.cat([
            torch.stack([action.float(), log_probs[action], out.value[0].float(), out.risk_score[0].float()]),
            torch.stack([
                _pick(out.seed_scores, _bool_mask(seed_mask, n_seed, "seed_mask", dev)),
                _pick(out.layer_scores, _bool_mask(layer_mask, n_layer, "layer_mask", dev)),
                _pick(out.blueprint_scores, _bool_mask(blueprint_mask, n_bp, "blueprint_mask", dev)),
                out.blend_logits[0].float().argmax().float(),
            ]),
            out.schedule[0].float(),
            out.ramp[:1].float(),
            out.params[0].float(),
        ])  # fmt: skip
    v = packed.cpu().tolist()
    a = int(v[0])
    return PolicyDecision(
        action_index=a,
        action=ACTION_NAMES[a],
        log_prob=v[1],
        value=v[2],
        risk_score=v[3],
        seed_index=None if v[4] < 0 else int(v[4]),
        layer_index=None if v[5] < 0 else int(v[5]),
        blueprint_index=None if v[6] < 0 else int(v[6]),
        blend_method=int(v[7]),
        schedule=(v[8], v[9]),
        ramp=v[10],
        lr_delta=v[11],
        initial_alpha=(v[12] + 1.0) / 2.0,
    )


@final
class CompileFallback:
    """A compiled policy that switches to its eager twin for good on the first compiler failure (counted).

    Only compiler errors (``torch._dynamo`` / inductor) trigger the switch; an error that the eager model raises as
    well propagates to the caller. Not thread-safe: one lane calls it.
    """

    def __init__(self, eager: TamiyoGNN, compiled: Callable[..., PolicyOutput]) -> None:
        import torch._dynamo.exc
        import torch._inductor.exc

        self.eager = eager
        self._compiled: Callable[..., PolicyOutput] | None = compiled
        self._errors: tuple[type[Exception], ...] = (
            torch._dynamo.exc.TorchDynamoException,
            torch._inductor.exc.InductorError,
        )
        self.fallbacks = 0
        self.last_error: str | None = None

    @property
    def training(self) -> bool:
        return self.eager.training

    @property
    def compiled(self) -> bool:
        """True while the compiled path is still in use."""
        return self._compiled is not None

    def __call__(
        self,
        x_dict: Mapping[str, Tensor],
        edge_index_dict: Mapping[EdgeType, Tensor],
        edge_attr_dict: Mapping[EdgeType, Tensor],
        batch_dict: Mapping[str, Tensor] | None = None,
    ) -> PolicyOutput:
        if self._compiled is not None:
            try:
                return self._compiled(x_dict, edge_index_dict, edge_attr_dict, batch_dict)
            except self._errors as err:
                self._compiled = None
                self.fallbacks += 1
                self.last_error = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        out: PolicyOutput = self.eager(x_dict, edge_index_dict, edge_attr_dict, batch_dict)
        return out


def maybe_compile(model: TamiyoGNN, device: torch.device | str) -> tuple[TamiyoGNN | CompileFallback, bool]:
    """``torch.compile`` the policy on CUDA (dynamic shapes, eager fallback); on any other device return it as is.

    Compilation is lazy: a failure surfaces on the first call and ``CompileFallback`` counts it and goes eager.
    """
    if torch.device(device).type != "cuda":
        return model, False
    compiled = torch.compile(model, dynamic=True)
    return CompileFallback(model, compiled), True
