"""GPU telemetry through NVML: memory and utilisation per device, or an empty reading when there is no GPU."""

from __future__ import annotations

from typing import final

import pynvml
import structlog

from schemas.base import Record


class GpuDeviceReading(Record, frozen=True):
    """One device at one instant, as NVML reports it."""

    index: int
    name: str
    memory_used_bytes: int
    memory_total_bytes: int
    memory_free_bytes: int
    gpu_utilization_percent: int
    memory_utilization_percent: int


class GpuReading(Record, frozen=True):
    """Every visible device at one instant. ``available`` is False (and ``devices`` empty) without a GPU or driver."""

    available: bool
    devices: tuple[GpuDeviceReading, ...] = ()
    unavailable_reason: str | None = None


@final
class GpuTelemetry:
    """Reads GPU memory and utilisation through NVML; never raises, and says "no GPU" once.

    NVML is initialised at the first read(), never at import or construction. If that fails (no driver, no library,
    no device), the structlog event ``gpu_telemetry_unavailable`` is logged once with the reason, and every read()
    thereafter returns an empty reading without trying again. A device that fails mid-run is logged once
    (``gpu_telemetry_device_failed``) and left out of readings.

    Any thread may call read(); each call makes a few NVML queries per device (driver calls, well under a
    millisecond each), so an actor that samples often does it on the ``io`` lane. Not thread-safe: one owner.
    """

    def __init__(self) -> None:
        self._log = structlog.get_logger("esper.runtime.gpu")
        self._initialised = False
        self._unavailable_reason: str | None = None
        self._failed_devices: set[int] = set()

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
        readings = (self._read_device(index) for index in range(self._device_count()))
        devices = tuple(reading for reading in readings if reading is not None)
        return GpuReading(available=True, devices=devices)

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
        return None

    def _device_count(self) -> int:
        try:
            return int(pynvml.nvmlDeviceGetCount())
        except pynvml.NVMLError as err:
            self._log.warning("gpu_telemetry_device_count_failed", error=str(err))
            return 0

    def _read_device(self, index: int) -> GpuDeviceReading | None:
        try:
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
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
            name=name.decode() if isinstance(name, bytes) else str(name),
            memory_used_bytes=int(memory.used),
            memory_total_bytes=int(memory.total),
            memory_free_bytes=int(memory.free),
            gpu_utilization_percent=int(rates.gpu),
            memory_utilization_percent=int(rates.memory),
        )
