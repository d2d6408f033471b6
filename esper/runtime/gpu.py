"""GPU telemetry through NVML: memory and utilisation per device, or an empty reading when there is no GPU."""

from __future__ import annotations

import os
from typing import final

import pynvml
import structlog

from esper.runtime.gpu_visible import VisibleDevices, visible_devices
from schemas.base import Record


class GpuDeviceReading(Record, frozen=True):
    """One device at one instant, as NVML reports it. ``index`` is torch's (``cuda:<index>``), ``nvml_index`` NVML's
    (PCI order, blind to CUDA_VISIBLE_DEVICES)."""

    index: int
    name: str
    memory_used_bytes: int
    memory_total_bytes: int
    memory_free_bytes: int
    gpu_utilization_percent: int
    memory_utilization_percent: int
    nvml_index: int


class GpuReading(Record, frozen=True):
    """Every device CUDA sees (CUDA_VISIBLE_DEVICES) at one instant, in torch's order. ``available`` is False (and
    ``devices`` empty) without a GPU or driver. ``note``: why the devices may not be those torch sees, or be numbered
    otherwise (a CUDA_VISIBLE_DEVICES that could not be mapped lists every device); None when they are."""

    available: bool
    devices: tuple[GpuDeviceReading, ...] = ()
    unavailable_reason: str | None = None
    note: str | None = None


@final
class GpuTelemetry:
    """Reads GPU memory and utilisation through NVML; never raises, and says "no GPU" once.

    NVML is initialised at the first read(), never at import or construction. If that fails (no driver, no library,
    no device), the structlog event ``gpu_telemetry_unavailable`` is logged once with the reason, and every read()
    thereafter returns an empty reading without trying again. A device that fails mid-run is logged once
    (``gpu_telemetry_device_failed``) and left out of readings.

    NVML lists every device in PCI order, whatever CUDA_VISIBLE_DEVICES says; readings list only the devices CUDA
    sees, numbered as torch numbers them (gpu_visible.py: indices and GPU UUIDs; anything else lists every device
    with a note, logged once as ``gpu_telemetry_note`` when NVML is initialised). close() shuts NVML down again;
    ``read_gpus_once`` does both for a single reading.

    Any thread may call read(); each call makes a few NVML queries per device (driver calls, well under a
    millisecond each), so an actor that samples often does it on the ``io`` lane. Not thread-safe: one owner.
    """

    def __init__(self) -> None:
        self._log = structlog.get_logger("esper.runtime.gpu")
        self._initialised = False
        self._unavailable_reason: str | None = None
        self._failed_devices: set[int] = set()
        self._visible = VisibleDevices((), by_index=True)

    @property
    def unavailable_reason(self) -> str | None:
        """Why there is no telemetry, once a read() has found out; None while it works or before the first read."""
        return self._unavailable_reason

    def read(self) -> GpuReading:
        """Read every device now. Never raises an NVML error."""
        if self._unavailable_reason is not None:
            return GpuReading(available=False, unavailable_reason=self._unavailable_reason)
        if not self._initialised:
            reason = self._initialise()
            if reason is not None:
                self._unavailable_reason = reason
                self._log.info("gpu_telemetry_unavailable", reason=reason)
                return GpuReading(available=False, unavailable_reason=reason)
        readings = (self._read_device(nvml, index) for index, nvml in enumerate(self._visible.nvml_indices))
        devices = tuple(reading for reading in readings if reading is not None)
        return GpuReading(available=True, devices=devices, note=self._visible.note)

    def close(self) -> None:
        """Release NVML if read() initialised it; the next read() initialises it again. Never raises."""
        if not self._initialised:
            return
        self._initialised = False
        try:
            pynvml.nvmlShutdown()
        except pynvml.NVMLError as err:
            self._log.warning("gpu_telemetry_shutdown_failed", error=str(err))

    def _initialise(self) -> str | None:
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as err:
            return f"nvml init failed: {err}"
        except OSError as err:
            return f"nvml library could not be loaded: {err}"
        self._initialised = True
        count = self._device_count()
        if count == 0:
            self.close()
            return "nvml found no GPU devices"
        # Read when NVML starts, as CUDA reads it when it starts: the process's setting, not the one at import.
        visible = visible_devices(os.environ.get("CUDA_VISIBLE_DEVICES"), count, self._uuids)
        if visible.note is None and visible.by_index and self._mixed_order(count):
            note = (
                "GPUs of different models and CUDA_DEVICE_ORDER is not PCI_BUS_ID: CUDA numbers them fastest first, "
                "so torch's cuda:N may be another device than the one listed as N"
            )
            visible = VisibleDevices(visible.nvml_indices, by_index=True, note=note)
        self._visible = visible
        if visible.note is not None:
            self._log.info("gpu_telemetry_note", note=visible.note)
        return None

    def _uuids(self) -> list[str] | None:
        try:
            raw = [pynvml.nvmlDeviceGetUUID(pynvml.nvmlDeviceGetHandleByIndex(i)) for i in range(self._device_count())]
        except pynvml.NVMLError:
            return None
        return [uuid.decode() if isinstance(uuid, bytes) else str(uuid) for uuid in raw]

    def _mixed_order(self, count: int) -> bool:
        """Whether CUDA's default order may differ from NVML's: several models, not told to use PCI order."""
        if count < 2 or os.environ.get("CUDA_DEVICE_ORDER") == "PCI_BUS_ID":
            return False
        try:
            names = {pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(i)) for i in range(count)}
        except pynvml.NVMLError:
            return False
        return len(names) > 1

    def _device_count(self) -> int:
        try:
            return int(pynvml.nvmlDeviceGetCount())
        except pynvml.NVMLError as err:
            self._log.warning("gpu_telemetry_device_count_failed", error=str(err))
            return 0

    def _read_device(self, nvml_index: int, index: int) -> GpuDeviceReading | None:
        try:
            handle = pynvml.nvmlDeviceGetHandleByIndex(nvml_index)
            name = pynvml.nvmlDeviceGetName(handle)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            rates = pynvml.nvmlDeviceGetUtilizationRates(handle)
        except pynvml.NVMLError as err:
            if index not in self._failed_devices:
                self._failed_devices.add(index)
                self._log.warning("gpu_telemetry_device_failed", device=index, error=str(err))
            return None
        self._failed_devices.discard(index)
        return GpuDeviceReading(
            index=index,
            nvml_index=nvml_index,
            name=name.decode() if isinstance(name, bytes) else str(name),
            memory_used_bytes=int(memory.used),
            memory_total_bytes=int(memory.total),
            memory_free_bytes=int(memory.free),
            gpu_utilization_percent=int(rates.gpu),
            memory_utilization_percent=int(rates.memory),
        )


def read_gpus_once() -> GpuReading:
    """One reading, with NVML initialised for it and shut down after (a start-up log line). Never raises an NVML error.

    Blocking (driver calls): a worker thread, not the event loop.
    """
    telemetry = GpuTelemetry()
    try:
        return telemetry.read()
    finally:
        telemetry.close()
