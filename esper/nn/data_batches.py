"""Deterministic, resumable batch order for training, and moving a batch to its device."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, final

import torch

from esper.nn.data import TensorPair

if TYPE_CHECKING:
    from collections.abc import Iterator

_SEED_MASK = (1 << 63) - 1


@final
@dataclass(frozen=True, slots=True)
class BatchPlan:
    """Which sample indices make up each batch of each epoch.

    An epoch's order is a permutation of ``range(dataset_size)`` that depends only on ``(seed, epoch)``: it is drawn
    from a private ``torch.Generator`` and never touches the global RNGs, so a run resumed at ``(epoch, batch_index)``
    (the data position a checkpoint stores) sees exactly the batches it would have seen. Every index appears once per
    epoch; with ``drop_last`` the short final batch is skipped, so up to ``batch_size - 1`` indices sit out that epoch.

    Attributes:
        dataset_size: number of samples in the split, >= 1.
        batch_size: samples per batch, >= 1.
        seed: >= 0; with the epoch number it fixes the order.
        drop_last: skip the final batch when it is shorter than ``batch_size``.
    """

    dataset_size: int
    batch_size: int
    seed: int
    drop_last: bool = False

    def __post_init__(self) -> None:
        for field, value in (("dataset_size", self.dataset_size), ("batch_size", self.batch_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"BatchPlan.{field} must be an int >= 1, got {value!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"BatchPlan.seed must be an int >= 0, got {self.seed!r}")
        if self.num_batches == 0:
            raise ValueError(
                f"BatchPlan.batch_size {self.batch_size} with drop_last leaves no batch of "
                f"dataset_size {self.dataset_size}"
            )

    @property
    def num_batches(self) -> int:
        """Batches per epoch."""
        if self.drop_last:
            return self.dataset_size // self.batch_size
        return -(-self.dataset_size // self.batch_size)

    def order(self, epoch: int) -> torch.Tensor:
        """The epoch's permutation of sample indices: int64 ``[dataset_size]`` on the CPU."""
        _check_epoch(epoch)
        generator = torch.Generator(device="cpu")
        generator.manual_seed(_epoch_seed(self.seed, epoch))
        return torch.randperm(self.dataset_size, generator=generator, dtype=torch.int64)

    def iter_from(self, epoch: int, batch_index: int = 0) -> Iterator[torch.Tensor]:
        """Yield the epoch's index batches from ``batch_index`` on.

        Each batch is int64 ``[batch_size]`` (the last may be shorter unless ``drop_last``) on the CPU.
        ``batch_index == num_batches`` is the end of the epoch and yields nothing.

        Raises:
            ValueError: ``epoch`` < 0, or ``batch_index`` outside ``[0, num_batches]``.
        """
        _check_epoch(epoch)
        if (
            isinstance(batch_index, bool)
            or not isinstance(batch_index, int)
            or not 0 <= batch_index <= self.num_batches
        ):
            raise ValueError(f"batch_index must be an int in [0, {self.num_batches}], got {batch_index!r}")
        return self._iter(self.order(epoch), batch_index)

    def _iter(self, order: torch.Tensor, start: int) -> Iterator[torch.Tensor]:
        for index in range(start, self.num_batches):
            yield order[index * self.batch_size : (index + 1) * self.batch_size]


def iter_batches(
    data: TensorPair, plan: BatchPlan, epoch: int, batch_index: int = 0
) -> Iterator[tuple[int, TensorPair]]:
    """Yield ``(batch_index, batch)`` for one epoch of ``data``, from ``batch_index`` on.

    Each batch is gathered with ``take`` (a fresh copy). Once the step on batch ``i`` has finished, the data position
    to checkpoint is ``(epoch, i + 1)``; resuming there continues with the next batch.

    Raises:
        ValueError: ``plan.dataset_size`` differs from ``data.num_samples``, or ``epoch`` / ``batch_index`` is out
            of range.
    """
    if plan.dataset_size != data.num_samples:
        raise ValueError(f"plan.dataset_size {plan.dataset_size} does not match the data's {data.num_samples} samples")
    for offset, indices in enumerate(plan.iter_from(epoch, batch_index)):
        yield batch_index + offset, take(data, indices)


def take(data: TensorPair, indices: torch.Tensor) -> TensorPair:
    """Gather the rows ``indices`` (int64 ``[batch]``) of ``data`` into a new pair on the same device."""
    return TensorPair(x=data.x.index_select(0, indices), y=data.y.index_select(0, indices))


def to_device(batch: TensorPair, device: torch.device | str) -> TensorPair:
    """Move a batch to ``device``; ``batch`` itself when it is already there (no copy).

    For a CUDA target, CPU tensors are first pinned (unless they already are) and then copied with
    ``non_blocking=True``, so the host-to-device copy is queued on the current CUDA stream and overlaps with host
    work. Kernels later queued on that same stream are ordered after the copy; work on another stream must wait on
    it first. The pinned staging copy may be dropped at once: PyTorch's caching host allocator keeps its memory until
    the queued copy has finished. Any other target gets a plain blocking ``.to(device)``.

    Runs on the thread that owns the device (the ``train`` lane); it does not synchronise the stream.
    """
    target = torch.device(device)
    if target == torch.device("cuda"):  # no index means the current device; tensors always carry one
        target = torch.device("cuda", torch.cuda.current_device())
    if batch.x.device == target and batch.y.device == target:
        return batch
    if target.type == "cuda":
        return TensorPair(x=_to_cuda(batch.x, target), y=_to_cuda(batch.y, target))
    return TensorPair(x=batch.x.to(target), y=batch.y.to(target))


def _to_cuda(tensor: torch.Tensor, target: torch.device) -> torch.Tensor:
    if tensor.device == target:
        return tensor
    if tensor.device.type == "cpu" and not tensor.is_pinned():
        # Only a copy from page-locked memory is truly asynchronous; from pageable memory CUDA blocks the host.
        tensor = tensor.pin_memory()
    return tensor.to(target, non_blocking=True)


def _check_epoch(epoch: int) -> None:
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
        raise ValueError(f"epoch must be an int >= 0, got {epoch!r}")


def _epoch_seed(seed: int, epoch: int) -> int:
    # A stable hash (unlike hash()) so the order is the same in every process and Python version.
    digest = hashlib.blake2b(f"esper.batch_plan:{seed}:{epoch}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & _SEED_MASK
