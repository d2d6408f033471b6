"""The state packets' GPU memory peak is the training job's, not the process's.

torch keeps one peak per device for the process, so a notebook's second run reported the first run's peak. No GPU here:
torch.cuda's calls are faked."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from actors.tolaria import loop as tolaria_loop
from actors.tolaria.build import load_data
from actors.tolaria.telemetry import gpu_memory, reset_gpu_peak
from esper.nn.data import TensorPair
from schemas.config import TolariaConfig
from tests.test_tolaria_loop import TINY, make_loop

if TYPE_CHECKING:
    import pytest

    from esper.nn.data import DataSplits


class FakeAllocator:
    """torch.cuda's allocated bytes and their peak since the last reset, for one device."""

    def __init__(self, allocated: int, peak: int) -> None:
        self.allocated = allocated
        self.peak = peak
        self.asked: list[torch.device] = []

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(torch.cuda, "memory_allocated", self.memory_allocated)
        monkeypatch.setattr(torch.cuda, "max_memory_allocated", self.max_memory_allocated)
        monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", self.reset_peak_memory_stats)

    def memory_allocated(self, device: torch.device) -> int:
        self.asked.append(device)
        return self.allocated

    def max_memory_allocated(self, device: torch.device) -> int:
        self.asked.append(device)
        return self.peak

    def reset_peak_memory_stats(self, device: torch.device) -> None:
        self.asked.append(device)
        self.peak = self.allocated


def test_the_peak_counts_from_its_reset_on_the_device_and_a_cpu_has_none(monkeypatch: pytest.MonkeyPatch) -> None:
    allocator = FakeAllocator(allocated=1000, peak=9000)  # 9000: an earlier run's peak in this process
    allocator.install(monkeypatch)
    cuda = torch.device("cuda", 1)
    reset_gpu_peak(cuda)
    assert gpu_memory(cuda) == (1000, 1000)
    assert set(allocator.asked) == {cuda}
    cpu = torch.device("cpu")
    reset_gpu_peak(cpu)
    assert gpu_memory(cpu) == (None, None)
    assert set(allocator.asked) == {cuda}


def test_the_training_job_resets_the_peak_once_at_its_start_not_at_a_rollback(monkeypatch: pytest.MonkeyPatch) -> None:
    data: DataSplits = load_data(TolariaConfig(**TINY))  # type: ignore[arg-type]
    resets: list[torch.device] = []
    monkeypatch.setattr(tolaria_loop, "reset_gpu_peak", resets.append)

    def nan_in_epoch_2(attempt: int, batch: TensorPair) -> TensorPair:
        if attempt in (18, 19, 20):  # three non-finite steps: a rollback to the fast snapshot
            return TensorPair(x=torch.full_like(batch.x, math.nan), y=batch.y)
        return batch

    loop = make_loop(TolariaConfig(**TINY), data, hook=nan_in_epoch_2)  # type: ignore[arg-type]
    assert loop.run().status == "completed"
    assert [tier for tier, _ in loop.restore_ms_history] == ["fast"]
    assert resets == [torch.device("cpu")]
