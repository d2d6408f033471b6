"""The io lane's waits for its CUDA work wait for its own stream, never the whole device.

Its CUDA work: a blueprint's probe timings, Tezzeret's compile warm-up (ARCHITECTURE.md: an event or stream sync, not
device-wide): a device-wide sync waited for the training step's kernels on the train lane's stream too. No GPU here:
torch.cuda's calls are faked."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from actors.tezzeret.compile import warm_compiled
from esper.nn.blueprints import probe


class FakeStream:
    def __init__(self) -> None:
        self.synchronized = 0

    def synchronize(self) -> None:
        self.synchronized += 1


@pytest.fixture
def stream(monkeypatch: pytest.MonkeyPatch) -> FakeStream:
    """The calling thread's current stream on cuda:1; a device-wide sync fails the test."""
    current = FakeStream()

    def current_stream(device: torch.device | None = None) -> FakeStream:
        assert device == torch.device("cuda", 1)
        return current

    def device_wide(device: torch.device | None = None) -> None:
        raise AssertionError("a device-wide synchronize")

    monkeypatch.setattr(torch.cuda, "current_stream", current_stream)
    monkeypatch.setattr(torch.cuda, "synchronize", device_wide)
    return current


def test_the_probe_times_its_passes_by_the_current_streams_sync(stream: FakeStream) -> None:
    probe._sync(torch.device("cuda", 1))
    assert stream.synchronized == 1
    probe._sync(torch.device("cpu"))  # nothing to wait for on a CPU
    assert stream.synchronized == 1


def test_the_compile_warm_up_waits_for_the_current_stream(stream: FakeStream, monkeypatch: pytest.MonkeyPatch) -> None:
    # The forward itself runs eagerly on the CPU (no GPU, no compiler): the wait after it is what is checked.
    monkeypatch.setattr(torch, "compile", lambda module: module)
    monkeypatch.setattr(nn.Module, "to", lambda module, device: module)
    monkeypatch.setattr(torch, "zeros", lambda shape, device, dtype: torch.ones(shape, dtype=dtype))
    warm_compiled(nn.Linear(4, 4), (2, 4), torch.device("cuda", 1))
    assert stream.synchronized == 1
