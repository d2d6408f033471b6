"""Ordering Tolaria's CUDA work across streams and threads: ready events for captures, stream marks for seed modules.

Each lane owns a CUDA stream (esper.runtime.lanes), and the caching allocator knows only the stream a tensor was
allocated on (PyTorch's CUDA semantics, "Use of multiple streams"): a tensor another stream or thread reads needs an
explicit happens-before edge, and a tensor another stream uses needs ``record_stream`` before it is freed. On a CPU
device every function here does nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import torch

if TYPE_CHECKING:
    from collections.abc import Iterable

__all__ = ["Ready", "lane_stream", "mark_ready", "record_use"]


class Ready(Protocol):
    """A point in a stream's work that another thread can wait for (a recorded ``torch.cuda.Event``)."""

    def synchronize(self) -> None:
        """Block the calling thread until the stream's work up to the point has run."""
        ...


def lane_stream(device: torch.device) -> torch.cuda.Stream | None:
    """The calling thread's current CUDA stream on ``device`` (on a lane's thread: the lane's own); None on a CPU.

    Any thread; never blocks.
    """
    if device.type != "cuda":
        return None
    return torch.cuda.current_stream(device)


def mark_ready(device: torch.device) -> Ready | None:
    """An event recorded now on the calling thread's current stream of ``device``: once it has completed, every kernel
    this thread queued on ``device`` before the call (a capture's copies) has run. None on a CPU (nothing to wait for).

    Any thread; never blocks. The waiter calls ``synchronize()`` on its own thread.
    """
    stream = lane_stream(device)
    if stream is None:
        return None
    event = torch.cuda.Event()  # type: ignore[no-untyped-call]  # torch 2.13 leaves Event.__new__ unannotated
    event.record(stream)
    ready: Ready = event
    return ready


def record_use(tensors: Iterable[torch.Tensor], device: torch.device) -> int:
    """Tell the caching allocator that the calling thread's current stream on ``device`` uses each of ``tensors``
    (``Tensor.record_stream``), so that memory another stream allocated is not reused before the work this stream has
    queued by the time of its free is done. Tensors elsewhere (a CPU module still to be moved) are left alone. Returns
    how many were marked; on a CPU device, none.

    Call it on the using thread before its stream first uses the tensors; never blocks.
    """
    stream = lane_stream(device)
    if stream is None:
        return 0
    marked = 0
    for tensor in tensors:
        if tensor.device == stream.device:
            tensor.record_stream(stream)
            marked += 1
    return marked
