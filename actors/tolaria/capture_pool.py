"""CapturePool: flat snapshot buffers reused from one capture to the next while the training state's layout holds.

A capture copies every tensor of the training state (weights, buffers, optimizer state) into one flat buffer per
(dtype, device). Allocating those buffers and cutting them into views costs more than the copy itself for a small
model, and it sits in the epoch-boundary stall. The pool keeps a few buffer sets with their views cut once; a
capture whose sources are the very same tensor objects (same ``numel``) as the last one's reuses a set nobody
holds any more and fills it with one ``_foreach_copy_`` per group.

Who holds a set: the TrainState that was captured into it, through a lease object. The pool keeps only a weak
reference to each lease, so a set becomes free when its state is garbage collected (the fast tier replaced it and
the checkpoint writer is done with it). Sources are held weakly too: a layout never keeps a culled seed's tensors
alive, and a dead source means the layout changed. Lane-thread only.
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, final

import torch
from torch._utils import _unflatten_dense_tensors

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    # (container, key, source) as the capture's copier records it.
    Entry = tuple[object, object, torch.Tensor]

__all__ = ["CapturePool"]


@final
class _Lease:
    """What a captured state holds to keep its buffer set out of reuse."""

    __slots__ = ("__weakref__",)


@final
class CapturePool:
    """Reusable buffer sets for captures of one training state layout (see the module docstring).

    Args:
        max_sets: buffer sets kept; a capture that finds every set still held gets fresh buffers of its own
            (correct, just not pooled). Two cover the usual case: the fast tier holds the last capture while the
            writer has finished with the one before.
    """

    def __init__(self, max_sets: int = 2) -> None:
        if max_sets < 1:
            raise ValueError(f"max_sets: expected >= 1, got {max_sets}")
        self._max_sets = max_sets
        # Per group: (dtype, device) and a weak reference plus numel for each source, in order.
        self._layout: list[tuple[tuple[torch.dtype, torch.device], list[tuple[weakref.ref[torch.Tensor], int]]]] = []
        self._sets: list[tuple[list[list[torch.Tensor]], weakref.ref[_Lease]]] = []
        self.reused = 0
        self.allocated = 0

    def views_for(
        self, groups: Mapping[tuple[torch.dtype, torch.device], Sequence[Entry]]
    ) -> tuple[list[list[torch.Tensor]], _Lease]:
        """Target views, group by group and entry by entry, and the lease the captured state must keep."""
        self._adopt(groups)
        lease = _Lease()
        for index, (views, held) in enumerate(self._sets):
            if held() is None:
                self._sets[index] = (views, weakref.ref(lease))
                self.reused += 1
                return views, lease
        views = _new_set(groups)
        self.allocated += 1
        if len(self._sets) < self._max_sets:
            self._sets.append((views, weakref.ref(lease)))
        return views, lease

    def reserve(self, groups: Mapping[tuple[torch.dtype, torch.device], Sequence[Entry]]) -> int:
        """Allocate every buffer set ``groups``' layout will need, free, ahead of the captures; returns how many.

        The first capture after a layout change otherwise pays the allocation inside the epoch-boundary stall. The
        buffers are written once here too: a fresh allocation's pages are mapped by the first write to each, and
        for a large model that first touch (one set per capture, so the first ``max_sets`` captures of a process or
        layout) cost more than the copy itself and put those epoch ends over their hook budget.
        """
        self._adopt(groups)
        added = 0
        while len(self._sets) < self._max_sets:
            fresh = _new_set(groups, touch=True)
            self._sets.append((fresh, weakref.ref(_Lease())))  # a reference to nothing: the set is free
            self.allocated += 1
            added += 1
        return added

    def _adopt(self, groups: Mapping[tuple[torch.dtype, torch.device], Sequence[Entry]]) -> None:
        if not self._fits(groups):
            self._layout = [
                (key, [(weakref.ref(source), source.numel()) for _, _, source in entries])
                for key, entries in groups.items()
            ]
            self._sets = []

    def _fits(self, groups: Mapping[tuple[torch.dtype, torch.device], Sequence[Entry]]) -> bool:
        layout = self._layout
        if len(layout) != len(groups):
            return False
        for (key, known), (group_key, entries) in zip(layout, groups.items(), strict=True):
            if key != group_key or len(known) != len(entries):
                return False
            for (ref, numel), (_, _, source) in zip(known, entries, strict=True):
                if ref() is not source or source.numel() != numel:
                    return False
        return True


def _new_set(
    groups: Mapping[tuple[torch.dtype, torch.device], Sequence[Entry]], *, touch: bool = False
) -> list[list[torch.Tensor]]:
    return [_cut([source for _, _, source in entries], touch=touch) for entries in groups.values()]


def _cut(sources: Sequence[torch.Tensor], *, touch: bool = False) -> list[torch.Tensor]:
    total = sum(s.numel() for s in sources)
    first = sources[0]
    flat = torch.empty(total, dtype=first.dtype, device=first.device)
    if touch:
        # Maps every page now, outside the epoch end (see CapturePool.reserve); a capture's own fresh set is not
        # touched twice: its copy is the first write.
        flat.zero_()
    views: list[torch.Tensor] = list(_unflatten_dense_tensors(flat, sources))  # type: ignore[no-untyped-call]
    return views
