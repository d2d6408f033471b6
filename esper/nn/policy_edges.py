"""The state graph's relations: the edge types, their attributes, and one decision's edge lists.

Every relation in ``EDGE_TYPES`` is always present, possibly with no edge. Attributes are three floats per edge
(``EDGE_DIM``); seed stages enter them as ``stage / MAX_STAGE``.
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Final

import numpy as np
import torch

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    from esper.nn.policy_graph import BlueprintInput, LayerInput, SeedInput

__all__ = ["EDGE_DIM", "EDGE_TYPES", "MAX_STAGE", "EdgeKey", "build_edges"]

EdgeKey = tuple[str, str, str]
EDGE_DIM: Final = 3
MAX_STAGE: Final = 11
"""The highest seed lifecycle stage number (TERMINATED); stages are encoded as ``stage / MAX_STAGE``."""
EDGE_TYPES: Final[tuple[EdgeKey, ...]] = (
    ("global", "influences", "seed"),
    ("seed", "reports", "global"),
    ("global", "annotates", "blueprint"),
    ("blueprint", "monitored_by", "global"),
    ("global", "operates", "layer"),
    ("layer", "feedback", "global"),
    ("seed", "peer", "seed"),
    ("seed", "monitors", "layer"),
    ("layer", "monitored_by", "seed"),
    ("blueprint", "composes", "layer"),
    ("layer", "belongs_to", "blueprint"),
    ("layer", "connects", "layer"),
)


def build_edges(
    seeds: tuple[SeedInput, ...],
    layers: tuple[LayerInput, ...],
    blueprints: tuple[BlueprintInput, ...],
    layer_edges: tuple[tuple[str, str], ...] | None,
    max_depth: int,
) -> tuple[dict[EdgeKey, torch.Tensor], dict[EdgeKey, torch.Tensor]]:
    """Every relation's edges for one decision: (edge_index ``[2, E]`` int64, edge_attr ``[E, EDGE_DIM]`` float32)
    per edge type, E possibly 0. ``max_depth`` normalises depth gaps; ``layer_edges`` None chains the layers."""
    # Each relation's edges are listed in one pass (a relation's edge order is part of the sums' rounding).
    e = _Edges()
    layer_at_depth: dict[int, int] = {}
    for i, lay in enumerate(layers):
        layer_at_depth.setdefault(lay.depth, i)
    layer_index = {lay.name: i for i, lay in enumerate(layers)}
    e.pair(
        "influences", "reports", "global", "seed", [0] * len(seeds), range(len(seeds)),
        [(s.stage / MAX_STAGE, s.alpha, float(s.blend_allowed)) for s in seeds],
    )  # fmt: skip
    hosted = [(i, j) for i, s in enumerate(seeds) if (j := layer_at_depth.get(s.layer_depth)) is not None]
    e.pair(
        "monitors", "monitored_by", "seed", "layer", [i for i, _ in hosted], [j for _, j in hosted],
        [(seeds[i].alpha, seeds[i].stage / MAX_STAGE, 1.0) for i, _ in hosted],
    )  # fmt: skip
    seeded_layers: dict[int, set[str]] = {}
    for i, j in hosted:
        blueprint_id = seeds[i].blueprint_id
        if blueprint_id is not None:
            seeded_layers.setdefault(j, set()).add(blueprint_id)
    # Peers: a chain over slots sorted by depth keeps the relation O(seeds) at 512 slots.
    order = sorted(range(len(seeds)), key=lambda i: (seeds[i].layer_depth, i))
    peer_src: list[int] = []
    peer_dst: list[int] = []
    peer_attr: list[tuple[float, float, float]] = []
    for a, c in itertools.pairwise(order):
        gap = abs(seeds[a].layer_depth - seeds[c].layer_depth)
        attr = (gap / max_depth, float(gap == 0), 1.0)
        peer_src += (a, c)
        peer_dst += (c, a)
        peer_attr += (attr, attr)
    e.extend(("seed", "peer", "seed"), peer_src, peer_dst, peer_attr)
    e.pair(
        "annotates", "monitored_by", "global", "blueprint", [0] * len(blueprints), range(len(blueprints)),
        [
            (b.risk, b.candidate_score if b.candidate_score is not None else 1.0 - b.risk, float(b.quarantine_only))
            for b in blueprints
        ],
    )  # fmt: skip
    composed = [
        (k, j)
        for k, b in enumerate(blueprints)
        for j, lay in enumerate(layers)
        if not b.layer_types or lay.layer_type in b.layer_types
    ]
    e.pair(
        "composes", "belongs_to", "blueprint", "layer", [k for k, _ in composed], [j for _, j in composed],
        [
            (float(blueprints[k].blueprint_id in seeded_layers.get(j, ())), blueprints[k].risk, 1.0)
            for k, j in composed
        ],
    )  # fmt: skip
    e.pair(
        "operates", "feedback", "global", "layer", [0] * len(layers), range(len(layers)),
        [(lay.depth / max_depth, float(j in seeded_layers), 1.0) for j, lay in enumerate(layers)],
    )  # fmt: skip
    if layer_edges is None:
        pairs = [(layers[j - 1].name, layers[j].name) for j in range(1, len(layers))]
    else:
        pairs = list(layer_edges)
    connects = [
        (a_i, b_i)
        for src, dst in pairs
        # An end capped away drops the edge rather than let it dangle.
        if (a_i := layer_index.get(src)) is not None and (b_i := layer_index.get(dst)) is not None
    ]
    e.extend(
        ("layer", "connects", "layer"), [a for a, _ in connects], [b for _, b in connects],
        [(abs(layers[b].depth - layers[a].depth) / max_depth, 1.0, 0.0) for a, b in connects],
    )  # fmt: skip
    return e.tensors()


class _Edges:
    __slots__ = ("attr", "dst", "src")

    def __init__(self) -> None:
        self.src: dict[EdgeKey, list[int]] = {et: [] for et in EDGE_TYPES}
        self.dst: dict[EdgeKey, list[int]] = {et: [] for et in EDGE_TYPES}
        self.attr: dict[EdgeKey, list[tuple[float, float, float]]] = {et: [] for et in EDGE_TYPES}

    def extend(
        self,
        et: EdgeKey,
        src: Iterable[int],
        dst: Iterable[int],
        attr: Iterable[tuple[float, float, float]],
    ) -> None:
        self.src[et].extend(src)
        self.dst[et].extend(dst)
        self.attr[et].extend(attr)

    def pair(
        self,
        fwd: str,
        rev: str,
        a_type: str,
        b_type: str,
        a: Sequence[int],
        b: Sequence[int],
        attr: Sequence[tuple[float, float, float]],
    ) -> None:
        """Edges ``a[i] -> b[i]`` of ``(a_type, fwd, b_type)`` and their reverses in ``(b_type, rev, a_type)``."""
        self.extend((a_type, fwd, b_type), a, b, attr)
        self.extend((b_type, rev, a_type), b, a, attr)

    def tensors(
        self,
    ) -> tuple[dict[EdgeKey, torch.Tensor], dict[EdgeKey, torch.Tensor]]:
        """(edge_index per relation ``[2, E]`` int64, edge_attr per relation ``[E, EDGE_DIM]`` float32)."""
        index = {
            et: torch.from_numpy(np.array([self.src[et], self.dst[et]], dtype=np.int64).reshape(2, -1))
            for et in EDGE_TYPES
        }
        attr = {
            et: torch.from_numpy(np.array(self.attr[et], dtype=np.float32).reshape(-1, EDGE_DIM)) for et in EDGE_TYPES
        }
        return index, attr
