"""The graph side of the fused forward: relation layouts, flattened graph plans and their cache.

Which relation enters and leaves which node type (``RelationLayout``), one graph's edges flattened over all relations
(``GraphPlan``), and the plans of the last few graph structures (``PlanCache``)."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, final

import torch
from torch import Tensor

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from esper.nn.policy_contract import EdgeType

__all__ = ["GraphPlan", "PlanCache", "RelationLayout"]


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
