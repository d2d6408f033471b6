"""Copies of read-only CPU tensors packed into one buffer backed by 2 MB pages where the OS grants them."""

from __future__ import annotations

import mmap
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["HUGE_PAGE", "pack"]

HUGE_PAGE = 2 << 20
_ALIGN = 64  # bytes: every copy starts where torch's CPU allocator would put a tensor of its own
# Linux only (transparent huge pages on request); elsewhere the buffer keeps the usual pages.
_MADV_HUGEPAGE: int | None = getattr(mmap, "MADV_HUGEPAGE", None)


def pack(tensors: Sequence[torch.Tensor]) -> list[torch.Tensor] | None:
    """Contiguous copies of ``tensors`` laid out one after another in a fresh anonymous mapping, or None when they are
    not all on the CPU with one dtype (nothing to gain, or nothing to do).

    Reading the policy network's fused weights (18 MB, every decision) through 4 KB pages misses the TLB on most pages;
    with the mapping given 2 MB pages before the copies fault it in, each product reads its weight through a handful
    of TLB entries. The copies hold the same values with the same strides and alignment class, so a product gives
    the same bits. The returned tensors keep the mapping alive.
    """
    if not tensors or any(t.device.type != "cpu" or t.dtype != tensors[0].dtype for t in tensors):
        return None
    item = tensors[0].element_size()
    offsets: list[int] = []
    end = 0
    for t in tensors:
        offsets.append(end)
        end += -(-t.numel() * item // _ALIGN) * _ALIGN
    length = -(-end // HUGE_PAGE) * HUGE_PAGE + HUGE_PAGE  # room to start on a 2 MB boundary
    buffer = mmap.mmap(-1, length, flags=mmap.MAP_PRIVATE)  # private: a shared mapping is shmem, with no THP
    if _MADV_HUGEPAGE is not None:
        try:
            buffer.madvise(_MADV_HUGEPAGE)
        except OSError:  # a kernel built without transparent huge pages: the usual pages then
            pass
    whole = torch.frombuffer(buffer, dtype=torch.uint8)
    start = -whole.data_ptr() % HUGE_PAGE
    out = []
    for t, off in zip(tensors, offsets, strict=True):
        size = t.numel() * item
        copy = whole[start + off : start + off + size].view(t.dtype).view(t.shape)
        out.append(copy.copy_(t))
    return out
