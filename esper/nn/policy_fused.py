"""The fused forward of ``tamiyo_gnn_v1``: every relation of a layer computed in a few large tensor operations.

``RelationLayout`` is the static bookkeeping of which relation enters and leaves which node type, ``GraphPlan`` one
graph's edges flattened over all relations (``PlanCache`` keeps the last few structures' plans), ``FusedWeights`` the
PyG modules' weights concatenated to match (rebuilt when a parameter changes), and ``sage_fused`` / ``gat_fused`` /
``heads_fused`` the layers, which take every node's features as one tensor (types concatenated). The maths is exactly
``TamiyoGNN.forward_reference``'s (a parity test holds them together); no function here branches on tensor values.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, final

import torch
from torch import Tensor

from esper.nn.policy_contract import (
    BLEND_METHOD_NAMES,
    HIGH_RISK_CLASSES,
    NUM_ACTIONS,
    RISK_CLASS_NAMES,
    EdgeType,
    PolicyOutput,
)
from esper.nn.weight_arena import pack

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    from torch_geometric.nn import HeteroConv

    from esper.nn.policy_gnn import TamiyoGNN

__all__ = [
    "FusedWeights",
    "GraphPlan",
    "PlanCache",
    "RelationLayout",
    "gat_fused",
    "heads_fused",
    "ordered_unit_pair",
    "sage_fused",
]


def ordered_unit_pair(raw: Tensor) -> Tensor:
    start = torch.sigmoid(raw[:, 0])
    end = start + (1.0 - start) * torch.sigmoid(raw[:, 1])
    return torch.stack([start, end], dim=-1)


_SIZE_RANK = {"global": 0, "layer": 1, "blueprint": 2, "seed": 3}
"""Expected node counts, smallest first: one global node, capped layers, a blueprint catalogue, one seed per slot."""


@dataclass(frozen=True, slots=True)
class RelationLayout:
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
    def of(cls, node_types: tuple[str, ...], edge_types: tuple[EdgeType, ...]) -> RelationLayout:
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
    layout: RelationLayout, counts: Mapping[str, int], rels: Mapping[str, tuple[int, ...]]
) -> tuple[dict[str, int], int]:
    off, total = {}, 0
    for t in layout.node_types:
        off[t] = total
        total += counts[t] * len(rels[t])
    return off, total


@dataclass(frozen=True, slots=True)
class GraphPlan:
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
    edge_rel_row: Tensor  # [E]: edge * relations + its relation, a row of an [E * R, ...] per-relation table
    # The src-mode ([:e_src]) and dst-mode ([e_src:]) parts the layers read, cut once per structure, not per layer.
    src_dst_node: Tensor
    src_mode_row: Tensor
    src_scale: Tensor
    src_inv_k: Tensor
    dst_src_node: Tensor
    dst_mode_row: Tensor
    dst_scale: Tensor
    # What the attention layers derive from the structure: ``in_row`` expanded over the heads (the softmax groups'
    # scatter index) and the src-mode edges' ``inv_k / heads``.
    in_row_heads: Tensor
    src_msg_scale: Tensor

    @classmethod
    def of(
        cls,
        layout: RelationLayout,
        counts: Mapping[str, int],
        edges: Tensor,
        sizes: Sequence[int],
        attr: Tensor,
        heads: int,
    ) -> GraphPlan:
        """The plan of a graph whose edges, in ``layout.order``, are ``edges`` ``[2, E]`` (``sizes`` per relation) with
        attributes ``attr`` ``[E, 3]`` in the dtype of the node features, for attention layers of ``heads`` heads."""
        counts = dict(counts)
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
        device, dtype = edges.device, attr.dtype
        slot = torch.repeat_interleave(
            torch.arange(len(sizes), device=device), torch.tensor(sizes, device=device), output_size=edges.shape[1]
        )
        col = torch.tensor(table, dtype=torch.long, device=device)[:, slot]
        src, dst = edges[0], edges[1]
        in_row = dst * col[2] + col[3]
        mode_node = torch.where(col[8].bool(), src, dst)
        deg = torch.bincount(in_row, minlength=in_rows).clamp_(min=1).to(dtype)
        e = sum(sizes[: layout.n_src_mode])
        src_node, dst_node, mode_row = src + col[0], dst + col[1], mode_node * col[6] + col[7]
        edge_scale = (deg[in_row] * col[2].to(dtype)).reciprocal().unsqueeze(-1)
        inv_k = col[2].to(dtype).reciprocal().unsqueeze(-1)
        return cls(
            counts=counts,
            node_off=node_off,
            in_off=in_off,
            in_rows=in_rows,
            dst_off=dst_off,
            dst_rows=dst_rows,
            e_src=e,
            src_node=src_node,
            dst_node=dst_node,
            in_row=in_row,
            out_row=src * col[4] + col[5],
            mode_row=mode_row,
            rel=col[9],
            attr=attr,
            edge_scale=edge_scale,
            inv_k=inv_k,
            edge_rel_row=torch.arange(edges.shape[1], device=device) * len(layout.edge_types) + col[9],
            src_dst_node=dst_node[:e],
            src_mode_row=mode_row[:e],
            src_scale=edge_scale[:e],
            src_inv_k=inv_k[:e],
            dst_src_node=src_node[e:],
            dst_mode_row=mode_row[e:],
            dst_scale=edge_scale[e:],
            in_row_heads=in_row.unsqueeze(-1).expand(-1, heads),
            src_msg_scale=inv_k[:e] / heads,
        )

    def views(self, x: Tensor, node_types: Sequence[str]) -> dict[str, Tensor]:
        """Each node type's rows of ``x``, a tensor over all nodes (types concatenated in layout order)."""
        return dict(zip(node_types, self.split(x, node_types), strict=True))

    def split(self, x: Tensor, node_types: Sequence[str]) -> tuple[Tensor, ...]:
        """``views``' tensors in ``node_types`` order (the layout's): one split, not a slice per type."""
        return x.split_with_sizes([self.counts[t] for t in node_types])

    def per_type_rows(self, values: Mapping[str, Tensor], node_types: Sequence[str]) -> Tensor:
        """``values[t]`` (one row) repeated over the nodes of type ``t``, for every type: ``[N, D]``."""
        return torch.cat([values[t].expand(self.counts[t], -1) for t in node_types])


def _bias_rows(
    cache: dict[tuple[object, ...], Tensor], bias: Mapping[str, Tensor], plan: GraphPlan, node_types: Sequence[str]
) -> Tensor:
    # The per-node bias rows depend only on the weights (the cache lives with them) and the node counts: built once
    # per structure instead of five operations per layer and decision. Keyed on inference mode like the plans.
    key = (tuple(plan.counts[t] for t in node_types), torch.is_inference_mode_enabled())
    rows = cache.get(key)
    if rows is None:
        if len(cache) >= _BIAS_ROWS_KEPT:
            cache.clear()
        rows = cache[key] = plan.per_type_rows(bias, node_types)
    return rows


_BIAS_ROWS_KEPT = 8


@final
class PlanCache:
    """The plans of the last few graph structures, so a decision on an unchanged structure (the usual case: slots,
    layers and catalogue change far more slowly than decisions come) only gathers its edge attributes.

    A structure is its node counts and the bytes of its edge indices. Tensors off the CPU are never cached (reading
    their bytes would synchronise with the device). Not thread-safe: the model's one lane uses it.
    """

    __slots__ = ("_entries", "_size", "hits", "misses")

    def __init__(self, size: int = 4) -> None:
        self._entries: OrderedDict[tuple[object, ...], GraphPlan] = OrderedDict()
        self._size = size
        self.hits = 0
        self.misses = 0

    def plan(
        self,
        layout: RelationLayout,
        counts: Mapping[str, int],
        edge_index_dict: Mapping[EdgeType, Tensor],
        edge_attr_dict: Mapping[EdgeType, Tensor],
        dtype: torch.dtype,
        heads: int,
    ) -> GraphPlan:
        indices = [edge_index_dict[layout.edge_types[r]] for r in layout.order]
        edges = torch.cat(indices, dim=1)
        attr = torch.cat([edge_attr_dict[layout.edge_types[r]] for r in layout.order]).to(dtype)
        sizes = [ei.shape[1] for ei in indices]
        if edges.device.type != "cpu":
            self.misses += 1
            return GraphPlan.of(layout, counts, edges, sizes, attr, heads)
        # A plan made under inference mode holds inference tensors, which autograd may not save: keyed apart.
        inference = torch.is_inference_mode_enabled()
        key = (
            tuple(counts[t] for t in layout.node_types),
            tuple(sizes),
            dtype,
            heads,
            inference,
            edges.numpy().tobytes(),
        )
        cached = self._entries.get(key)
        if cached is not None:
            self.hits += 1
            self._entries.move_to_end(key)
            return replace(cached, attr=attr)
        self.misses += 1
        plan = GraphPlan.of(layout, counts, edges, sizes, attr, heads)
        self._entries[key] = plan
        if len(self._entries) > self._size:
            self._entries.popitem(last=False)
        return plan


@dataclass(frozen=True, slots=True)
class _SageWeights:
    node_w: dict[str, Tensor]  # [H, H + k_s * H]: the mean root weight, then W_l of each src-mode relation leaving t
    agg_w: dict[str, Tensor]  # [k_t * H, H]: W_l of each dst-mode relation entering t
    bias: dict[str, Tensor]  # [H], the mean of the entering relations' biases
    bias_rows: dict[tuple[object, ...], Tensor] = field(default_factory=dict)  # per structure, see _bias_rows


@dataclass(frozen=True, slots=True)
class _GatWeights:
    # [d_in, k_out * heads + k_in * heads + k_src * heads * C] per type: projections folded with att_src (every
    # leaving relation), folded with att_dst (every entering relation), then the projections of src-mode relations.
    node_w: dict[str, Tensor]
    agg_w: dict[str, Tensor]  # [k_t * heads * d_in, C]: projections of dst-mode relations entering t, / (heads * k)
    edge: Tensor  # [3, R * heads]: lin_edge folded with att_edge
    bias: dict[str, Tensor]  # [C], the mean of the entering relations' biases
    out_channels: int
    bias_rows: dict[tuple[object, ...], Tensor] = field(default_factory=dict)  # per structure, see _bias_rows


@dataclass(frozen=True, slots=True)
class _HeadWeights:
    graph_w: Tensor  # [H2, 24]: action 7, blend 3, schedule 2, ramp 1, params 2, value 1, risk 5, node-head contexts 3
    graph_b: Tensor  # [24]
    node_w: dict[str, Tensor]  # [H2, 1]: the node half of each node-scoring head


_HEAD_SPLITS = (NUM_ACTIONS, len(BLEND_METHOD_NAMES), 2, 1, 2, 1, len(RISK_CLASS_NAMES), 1, 1, 1)


@dataclass(frozen=True, slots=True)
class FusedWeights:
    sage: tuple[_SageWeights, ...]
    gat: tuple[_GatWeights, ...]
    heads: _HeadWeights

    @classmethod
    def of(cls, model: TamiyoGNN) -> FusedWeights:
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

    def map_tensors(self, fn: Callable[[Tensor], Tensor]) -> FusedWeights:
        """The same weights with every tensor replaced by ``fn(tensor)``, called in one fixed order (layer by layer)."""

        def each(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
            return {k: fn(v) for k, v in tensors.items()}

        return FusedWeights(
            sage=tuple(_SageWeights(each(w.node_w), each(w.agg_w), each(w.bias)) for w in self.sage),
            gat=tuple(
                _GatWeights(each(w.node_w), each(w.agg_w), fn(w.edge), each(w.bias), w.out_channels) for w in self.gat
            ),
            heads=_HeadWeights(fn(self.heads.graph_w), fn(self.heads.graph_b), each(self.heads.node_w)),
        )

    def packed(self) -> FusedWeights:
        """The same values copied into one buffer of 2 MB pages (esper.nn.weight_arena); itself off the CPU."""
        tensors: list[Tensor] = []

        def collect(t: Tensor) -> Tensor:
            tensors.append(t)
            return t

        self.map_tensors(collect)
        copies = pack(tensors)
        if copies is None:
            return self
        it = iter(copies)
        return self.map_tensors(lambda _: next(it))


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


def heads_fused(w: _HeadWeights, h: Mapping[str, Tensor], batch_dict: Mapping[str, Tensor] | None) -> PolicyOutput:
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
        schedule=ordered_unit_pair(schedule),
        ramp=torch.sigmoid(ramp).squeeze(-1),
        params=torch.tanh(params),
        value=value.squeeze(-1),
        risk_logits=risk,
        risk_score=torch.softmax(risk.float(), dim=-1)[:, _HIGH_RISK].sum(-1),
    )


# The high-risk classes as a slice when they are consecutive (a view instead of building an index tensor).
_HIGH_RISK: slice | list[int] = (
    slice(HIGH_RISK_CLASSES[0], HIGH_RISK_CLASSES[-1] + 1)
    if list(HIGH_RISK_CLASSES) == list(range(HIGH_RISK_CLASSES[0], HIGH_RISK_CLASSES[-1] + 1))
    else list(HIGH_RISK_CLASSES)
)


def _relation_convs(hetero: HeteroConv, edge_types: tuple[EdgeType, ...]) -> list[Any]:
    # PyG ships no types; the convs are SAGEConv / GATConv instances keyed by edge type.
    return [hetero.convs[et] for et in edge_types]


def _rows(table: Tensor, off: int, n: int, k: int) -> Tensor:
    # An explicit width, since a type with no nodes would leave -1 ambiguous.
    return table[off : off + n * k].reshape(n, k * math.prod(table.shape[1:]))


def sage_fused(w: _SageWeights, lay: RelationLayout, plan: GraphPlan, x_all: Tensor) -> Tensor:
    """One hetero SAGE layer over ``x_all`` ``[N, H]`` (every node, types concatenated in layout order)."""
    dim = x_all.shape[1]
    roots, projs = [], []
    for t, h in zip(lay.node_types, plan.split(x_all, lay.node_types), strict=True):
        y = torch.mm(h, w.node_w[t])  # [N_t, H + k_src * H]: root term, src-mode projections
        if lay.src_rels[t]:
            root, proj = y.split_with_sizes([dim, y.shape[1] - dim], dim=1)
            roots.append(root)
            projs.append(proj.reshape(-1, dim))
        else:
            roots.append(y)
    # Src mode: scatter the scaled projections of the sources onto their destination nodes.
    acc = x_all.new_zeros(x_all.shape).index_add_(
        0, plan.src_dst_node, torch.cat(projs or [x_all[:0]]).index_select(0, plan.src_mode_row) * plan.src_scale
    )
    # Dst mode: mean-aggregate raw source features per (destination, relation), then project per type.
    agg = x_all.new_zeros(plan.dst_rows, dim).index_add_(
        0, plan.dst_mode_row, x_all.index_select(0, plan.dst_src_node) * plan.dst_scale
    )
    out = torch.cat(roots) + _bias_rows(w.bias_rows, w.bias, plan, lay.node_types) + acc
    for t, agg_w in w.agg_w.items():
        n, off = plan.counts[t], plan.node_off[t]
        out[off : off + n] += torch.mm(_rows(agg, plan.dst_off[t], n, len(lay.dst_rels[t])), agg_w)
    return out


def gat_fused(w: _GatWeights, lay: RelationLayout, plan: GraphPlan, x_all: Tensor, heads: int) -> Tensor:
    """One hetero GAT layer over ``x_all`` ``[N, d_in]`` (all nodes, types in layout order) -> ``[N, C]``."""
    c, e = w.out_channels, plan.e_src
    srcs, dsts, projs = [], [], []
    for t, h in zip(lay.node_types, plan.split(x_all, lay.node_types), strict=True):
        y = torch.mm(h, w.node_w[t])
        n_src, n_dst = len(lay.out_rels[t]) * heads, len(lay.in_rels[t]) * heads
        a_s, a_d, proj = y.split_with_sizes([n_src, n_dst, y.shape[1] - n_src - n_dst], dim=1)
        srcs.append(a_s.reshape(-1, heads))
        dsts.append(a_d.reshape(-1, heads))
        if lay.src_rels[t]:
            projs.append(proj.reshape(-1, heads, c))
    a_src, a_dst = torch.cat(srcs), torch.cat(dsts)
    p = torch.cat(projs) if projs else x_all.new_empty(0, heads, c)
    a_edge = torch.mm(plan.attr, w.edge).view(-1, heads).index_select(0, plan.edge_rel_row)
    alpha = torch.nn.functional.leaky_relu(
        a_src.index_select(0, plan.out_row) + a_dst.index_select(0, plan.in_row) + a_edge, 0.2
    )
    # Softmax per (destination node, relation), as GATConv does per relation: shift by the detached group max.
    shift = alpha.detach() if alpha.requires_grad else alpha
    top = alpha.new_zeros(plan.in_rows, heads).scatter_reduce_(0, plan.in_row_heads, shift, "amax", include_self=False)
    ex = (alpha - top.index_select(0, plan.in_row)).exp()
    denom = alpha.new_zeros(plan.in_rows, heads).index_add_(0, plan.in_row, ex) + 1e-16
    alpha = ex / denom.index_select(0, plan.in_row)
    # Src mode: weight the source projections by attention, average the heads, scatter onto destination nodes.
    msg = torch.bmm(alpha[:e].unsqueeze(1), p.index_select(0, plan.src_mode_row)).squeeze(1) * plan.src_msg_scale
    acc = x_all.new_zeros(x_all.shape[0], c).index_add_(0, plan.src_dst_node, msg)
    # Dst mode: attention-weighted sums of raw source features per (destination, relation, head), then project.
    z_msg = alpha[e:].unsqueeze(-1) * x_all.index_select(0, plan.dst_src_node).unsqueeze(1)
    z = x_all.new_zeros(plan.dst_rows, heads, x_all.shape[1]).index_add_(0, plan.dst_mode_row, z_msg)
    out = acc + _bias_rows(w.bias_rows, w.bias, plan, lay.node_types)
    for t, agg_w in w.agg_w.items():
        n, off = plan.counts[t], plan.node_off[t]
        out[off : off + n] += torch.mm(_rows(z, plan.dst_off[t], n, len(lay.dst_rels[t])), agg_w)
    return out
