"""The fused forward of ``tamiyo_gnn_v1``: every relation of a layer computed in a few large tensor operations.

The graph's side (``RelationLayout``, ``GraphPlan``, ``PlanCache``) lives in policy_plan.py; here ``FusedWeights``,
the PyG modules' weights concatenated to match its layout (rebuilt when a parameter changes), and ``sage_fused`` /
``gat_fused`` / ``heads_fused`` the layers, which take every node's features as one tensor (types concatenated). The
maths is exactly ``TamiyoGNN.forward_reference``'s (a parity test holds them together); no function here branches on
tensor values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

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
    from esper.nn.policy_plan import GraphPlan, RelationLayout

__all__ = [
    "FusedWeights",
    "gat_fused",
    "heads_fused",
    "ordered_unit_pair",
    "sage_fused",
]


def ordered_unit_pair(raw: Tensor) -> Tensor:
    start = torch.sigmoid(raw[:, 0])
    end = start + (1.0 - start) * torch.sigmoid(raw[:, 1])
    return torch.stack([start, end], dim=-1)


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
