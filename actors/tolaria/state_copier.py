"""Copying nested training state (dicts and lists of tensors): into a few flat buffers, or tensor by tensor."""

from __future__ import annotations

from typing import TYPE_CHECKING, final

import torch
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

if TYPE_CHECKING:
    from actors.tolaria.capture_pool import CapturePool


def clone_tree(value: object) -> object:
    """A copy of ``value`` with every tensor in its dicts, lists and tuples cloned on its own (detached)."""
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, dict):
        return {k: clone_tree(v) for k, v in value.items()}
    if isinstance(value, list):
        return [clone_tree(v) for v in value]
    if isinstance(value, tuple):
        return tuple(clone_tree(v) for v in value)
    return value


_LEAVES = frozenset({str, int, float, bool, type(None)})
# Groups smaller than this are cloned tensor by tensor (without a pool): a cat and its views cost more than a few
# clones.
_FLATTEN_MIN = 8
_Slot = tuple[dict[object, object] | list[object], object, torch.Tensor]


@final
class StateCopier:
    """Copies nested dicts and lists of tensors into a few flat buffers, one per (dtype, device).

    ``tree`` returns the containers with placeholders and records where each tensor goes; ``finish`` copies each
    group into one buffer and puts views of it in place. A snapshot then costs a few allocations (none with a
    ``CapturePool`` whose layout still fits) instead of one per tensor, and a checkpoint file holds a few flat tensors
    instead of dozens (less work on the checkpoint writer thread). Tensors inside tuples (none in the default state)
    are cloned on their own.
    """

    __slots__ = ("_groups", "nbytes")

    def __init__(self) -> None:
        self.nbytes = 0
        # (dtype, device) -> [(container, key, source)]; sources are the live tensors themselves (their identity
        # is what lets a pool reuse a layout).
        self._groups: dict[tuple[torch.dtype, torch.device], list[_Slot]] = {}

    def tree(self, value: object) -> object:
        if type(value) in _LEAVES:
            return value
        if isinstance(value, torch.Tensor):
            self.nbytes += value.numel() * value.element_size()
            return value.detach().clone()
        if isinstance(value, dict):
            out: dict[object, object] = {}
            for k, v in value.items():
                if isinstance(v, torch.Tensor):
                    self._defer(out, k, v)
                else:
                    out[k] = self.tree(v)
            return out
        if isinstance(value, list):
            items: list[object] = []
            for i, v in enumerate(value):
                items.append(None)
                if isinstance(v, torch.Tensor):
                    self._defer(items, i, v)
                else:
                    items[i] = self.tree(v)
            return items
        if isinstance(value, tuple):
            return tuple(self.tree(v) for v in value)
        return value

    def put(self, container: dict[str, object], key: str, value: object) -> None:
        """``container[key]`` = a copy of ``value`` (tensors deferred to ``finish``)."""
        if isinstance(value, torch.Tensor):
            self._defer(container, key, value)  # type: ignore[arg-type]  # str keys are object keys here
        else:
            container[key] = self.tree(value)

    def _defer(self, container: dict[object, object] | list[object], key: object, tensor: torch.Tensor) -> None:
        self.nbytes += tensor.numel() * tensor.element_size()
        if isinstance(container, dict):
            container[key] = None
        self._groups.setdefault((tensor.dtype, tensor.device), []).append((container, key, tensor))

    def reserve(self, pool: CapturePool) -> int:
        """Let ``pool`` allocate buffer sets for the deferred tensors' layout; the copier is spent afterwards."""
        added = pool.reserve(self._groups)
        self._groups.clear()
        return added

    def finish(self, pool: CapturePool | None = None) -> object:
        """Copy every deferred tensor into its group's buffer and put the views into their containers.

        With a ``pool``, returns the lease the captured state must hold (its buffers are reused once it is gone).
        """
        if pool is not None:
            views, lease = pool.views_for(self._groups)
            with torch.no_grad():
                for entries, targets in zip(self._groups.values(), views, strict=True):
                    torch._foreach_copy_(targets, [source for _, _, source in entries])
                    for (container, key, _), view in zip(entries, targets, strict=True):
                        _place(container, key, view)
            self._groups.clear()
            return lease
        for entries in self._groups.values():
            if len(entries) < _FLATTEN_MIN:
                for container, key, source in entries:
                    _place(container, key, source.detach().clone())
                continue
            sources = [source.detach() for _, _, source in entries]
            # One cat into a fresh buffer and views back into it, both single C++ calls (what DDP's bucketing uses).
            flat = _flatten_dense_tensors(sources)  # type: ignore[no-untyped-call]  # torch leaves it unannotated
            views = _unflatten_dense_tensors(flat, sources)  # type: ignore[no-untyped-call]  # as above
            for (container, key, _), view in zip(entries, views, strict=True):
                _place(container, key, view)
        self._groups.clear()
        return None


def _place(container: dict[object, object] | list[object], key: object, value: torch.Tensor) -> None:
    if isinstance(container, list):
        assert isinstance(key, int)
        container[key] = value
    else:
        container[key] = value
