"""GPU telemetry lists the devices CUDA_VISIBLE_DEVICES lets torch see, numbered as torch numbers them.

NVML lists every device in PCI order; what it cannot map lists every device with a note; a one-off reading shuts NVML
down. pynvml is stood in for by a machine of three GPUs."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import structlog.testing

import esper.runtime.gpu as gpu
from esper.runtime.gpu_visible import VisibleDevices, visible_devices

_UUIDS = ("GPU-aaaa1111", "GPU-bbbb2222", "GPU-bbbb3333")


class _FakeNvml:
    """Three devices in NVML's (PCI) order, named by ``names``."""

    class NVMLError(Exception):
        pass

    def __init__(self, names: tuple[str, ...] = ("A100", "A100", "A100")) -> None:
        self.names = names
        self.inits = 0
        self.shutdowns = 0

    def nvmlInit(self) -> None:
        self.inits += 1

    def nvmlShutdown(self) -> None:
        self.shutdowns += 1

    def nvmlDeviceGetCount(self) -> int:
        return len(self.names)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlDeviceGetName(self, handle: int) -> str:
        return self.names[handle]

    def nvmlDeviceGetUUID(self, handle: int) -> str:
        return _UUIDS[handle]

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> SimpleNamespace:
        return SimpleNamespace(used=handle, total=10 + handle, free=10)

    def nvmlDeviceGetUtilizationRates(self, handle: int) -> SimpleNamespace:
        return SimpleNamespace(gpu=handle, memory=handle)


@pytest.fixture
def nvml(monkeypatch: pytest.MonkeyPatch) -> _FakeNvml:
    fake = _FakeNvml()
    monkeypatch.setattr(gpu, "pynvml", fake)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("CUDA_DEVICE_ORDER", raising=False)
    return fake


def _listed(reading: gpu.GpuReading) -> list[tuple[int, int]]:
    """(torch's index, NVML's index) of each device read."""
    return [(device.index, device.nvml_index) for device in reading.devices]


@pytest.mark.parametrize(
    ("visible", "listed"),
    [
        ("1", [(0, 1)]),
        ("2,0", [(0, 2), (1, 0)]),
        ("GPU-bbbb3", [(0, 2)]),
        ("GPU-bbbb3333,GPU-aaaa", [(0, 2), (1, 0)]),
        ("0,7,1", [(0, 0)]),  # CUDA stops at the first device that does not exist
        ("GPU-aaaa,GPU-bbbb", [(0, 0)]),  # a prefix of two UUIDs names neither
        ("", []),
    ],
)
def test_a_reading_lists_the_devices_torch_sees_by_torchs_index(
    nvml: _FakeNvml, monkeypatch: pytest.MonkeyPatch, visible: str, listed: list[tuple[int, int]]
) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    reading = gpu.read_gpus_once()
    assert reading.available
    assert _listed(reading) == listed
    assert reading.note is None
    assert [device.name for device in reading.devices] == ["A100"] * len(listed)
    assert [device.memory_total_bytes for device in reading.devices] == [10 + nvml_index for _, nvml_index in listed]


def test_without_the_variable_every_device_is_listed(nvml: _FakeNvml) -> None:
    reading = gpu.read_gpus_once()
    assert _listed(reading) == [(0, 0), (1, 1), (2, 2)]
    assert reading.note is None


@pytest.mark.parametrize(
    ("visible", "why"),
    [
        ("MIG-GPU-aaaa1111/1/0", "names MIG instances, which NVML's device list cannot map"),
        ("abc", "names no device NVML knows of"),
        ("GPU-cccc", "names no device NVML knows of"),
    ],
)
def test_a_value_that_cannot_be_mapped_lists_every_device_with_a_note(
    nvml: _FakeNvml, monkeypatch: pytest.MonkeyPatch, visible: str, why: str
) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    with structlog.testing.capture_logs() as logs:
        telemetry = gpu.GpuTelemetry()
        readings = [telemetry.read(), telemetry.read()]
        telemetry.close()
    note = f"CUDA_VISIBLE_DEVICES={visible!r} {why}"
    assert [_listed(reading) for reading in readings] == [[(0, 0), (1, 1), (2, 2)]] * 2
    assert [reading.note for reading in readings] == [note, note]
    assert [(log["event"], log["note"]) for log in logs] == [("gpu_telemetry_note", note)]  # once


def test_uuids_nvml_cannot_read_list_every_device_with_a_note(nvml: _FakeNvml, monkeypatch: pytest.MonkeyPatch) -> None:
    def fails(handle: int) -> str:
        raise _FakeNvml.NVMLError("not supported")

    monkeypatch.setattr(nvml, "nvmlDeviceGetUUID", fails)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-bbbb3")
    reading = gpu.read_gpus_once()
    assert _listed(reading) == [(0, 0), (1, 1), (2, 2)]
    assert reading.note == "CUDA_VISIBLE_DEVICES='GPU-bbbb3' names UUIDs, and NVML's could not be read"


def test_gpus_of_different_models_in_cudas_default_order_get_a_note(
    nvml: _FakeNvml, monkeypatch: pytest.MonkeyPatch
) -> None:
    nvml.names = ("A100", "T4", "A100")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    reading = gpu.read_gpus_once()
    assert _listed(reading) == [(0, 1)]
    assert reading.note is not None
    assert reading.note.startswith("GPUs of different models and CUDA_DEVICE_ORDER is not PCI_BUS_ID")
    monkeypatch.setenv("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
    assert gpu.read_gpus_once().note is None


def test_a_one_off_reading_shuts_nvml_down(nvml: _FakeNvml) -> None:
    gpu.read_gpus_once()
    gpu.read_gpus_once()
    assert (nvml.inits, nvml.shutdowns) == (2, 2)


def test_a_repeated_entry_hides_every_device_as_in_cuda() -> None:
    assert visible_devices("1,1", 3, lambda: _UUIDS) == VisibleDevices((), by_index=True)


def test_an_index_is_read_as_cuda_reads_it() -> None:
    assert visible_devices(" 1, +2", 3, lambda: None).nvml_indices == (1, 2)
    assert visible_devices("1gpu,0", 3, lambda: None).nvml_indices == (1, 0)
    assert visible_devices("0,-1,1", 3, lambda: None).nvml_indices == (0,)


def test_uuids_are_read_only_for_a_list_of_uuids() -> None:
    def unread() -> list[str]:
        raise AssertionError("read the UUIDs for a list of indices")

    assert visible_devices("0,1", 3, unread).nvml_indices == (0, 1)
    assert visible_devices(None, 3, unread).nvml_indices == (0, 1, 2)
