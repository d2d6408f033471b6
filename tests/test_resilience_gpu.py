"""GpuTelemetry: without a GPU it says so once and keeps returning empty readings; with one it reads every device."""

from __future__ import annotations

import pytest
import structlog
import torch

from esper.runtime.gpu import GpuReading, GpuTelemetry


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU path")
def test_no_gpu_is_reported_once_and_readings_stay_empty() -> None:
    telemetry = GpuTelemetry()
    before_first_read = telemetry.unavailable_reason
    assert before_first_read is None  # nothing is tried before the first read
    with structlog.testing.capture_logs() as logs:
        readings = [telemetry.read() for _ in range(3)]
    telemetry.close()
    unavailable = [log for log in logs if log["event"] == "gpu_telemetry_unavailable"]
    assert len(unavailable) == 1
    assert len(logs) == 1
    reason = telemetry.unavailable_reason
    assert reason is not None
    assert unavailable[0]["reason"] == reason
    assert readings == [GpuReading(available=False, devices=(), unavailable_reason=reason)] * 3


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_gpu_is_read_with_memory_and_utilisation() -> None:
    telemetry = GpuTelemetry()
    try:
        reading = telemetry.read()
    finally:
        telemetry.close()
    assert reading.available
    assert len(reading.devices) >= 1
    device = reading.devices[0]
    assert device.memory_total_bytes > 0
    assert 0 <= device.memory_used_bytes <= device.memory_total_bytes
    assert 0 <= device.gpu_utilization_percent <= 100
