"""A run's precision on a GPU: bf16 autocast and TF32 only where the GPU computes them (compute capability 8.0 or
newer), a warning when bf16 is asked of one that emulates it, and torch's TF32 settings given back after the run.

No GPU here: torch.cuda's capability query is faked, and the run-level tests run on the CPU with the capability test
of actors.tolaria.run_precision faked, so that the process-wide TF32 settings change as they would on an A100."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import msgspec
import pytest
import structlog.testing
import torch

import esper
from actors.tolaria import run_precision
from actors.tolaria.build import emulated_bf16, resolve_precision
from actors.tolaria.run_precision import Float32Matmul, pick_precision
from esper import run as esper_run
from schemas.config import TolariaConfig
from tests.test_run_embedded import quiet_config

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

CUDA = torch.device("cuda", 0)
T4 = (7, 5)
A100 = (8, 0)


def on_gpu(monkeypatch: pytest.MonkeyPatch, capability: tuple[int, int]) -> None:
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)


@pytest.fixture(autouse=True)
def matmul_settings() -> Iterator[None]:
    """Each test starts from torch's defaults and leaves them so (the settings are the process's)."""
    saved = Float32Matmul()
    torch.set_float32_matmul_precision("highest")
    torch.backends.cudnn.allow_tf32 = True
    yield
    saved.restore()


@pytest.mark.parametrize(
    ("capability", "precision", "amp", "expected", "emulated"),
    [
        (T4, "auto", False, None, False),  # is_bf16_supported() says True on a T4: bf16 was picked, slower than fp32
        (A100, "auto", False, torch.bfloat16, False),
        ((9, 0), "auto", False, torch.bfloat16, False),
        (T4, "bf16", False, torch.bfloat16, True),  # asked for: honoured, with a warning
        (T4, "auto", True, torch.bfloat16, True),
        (A100, "bf16", False, torch.bfloat16, False),
        (A100, "fp32", False, None, False),
    ],
)
def test_auto_precision_is_bf16_only_on_a_gpu_that_computes_it(
    monkeypatch: pytest.MonkeyPatch,
    capability: tuple[int, int],
    precision: str,
    amp: bool,
    expected: torch.dtype | None,
    emulated: bool,
) -> None:
    on_gpu(monkeypatch, capability)
    config = msgspec.convert({"precision": precision, "amp": amp}, TolariaConfig)
    assert resolve_precision(config, CUDA) is expected
    assert emulated_bf16(config, CUDA) is emulated


def test_the_cpu_trains_in_fp32_unless_asked_and_is_never_warned_about(monkeypatch: pytest.MonkeyPatch) -> None:
    on_gpu(monkeypatch, T4)
    cpu = torch.device("cpu")
    assert resolve_precision(TolariaConfig(), cpu) is None
    bf16 = TolariaConfig(precision="bf16")
    assert resolve_precision(bf16, cpu) is torch.bfloat16
    assert not emulated_bf16(bf16, cpu)


@pytest.mark.parametrize(
    ("capability", "precision", "fields", "warned"),
    [
        (A100, "auto", {"precision": "bf16", "tf32": True}, False),
        (A100, "bf16", {"precision": "bf16", "tf32": True}, False),
        (A100, "fp32", {"precision": "fp32", "tf32": False}, False),  # fp32 asked: IEEE float32, no TF32
        (T4, "auto", {"precision": "fp32", "tf32": False}, False),
        (T4, "bf16", {"precision": "bf16", "tf32": False}, True),
    ],
)
def test_the_run_picks_tf32_on_a_gpu_that_computes_it_and_warns_once_of_emulated_bf16(
    monkeypatch: pytest.MonkeyPatch,
    capability: tuple[int, int],
    precision: str,
    fields: dict[str, object],
    warned: bool,
) -> None:
    on_gpu(monkeypatch, capability)
    torch.backends.cudnn.allow_tf32 = False  # a caller's choice, which a TF32 run overrides and gives back
    matmul = Float32Matmul()
    config = msgspec.convert({"precision": precision}, TolariaConfig)
    with structlog.testing.capture_logs() as logs:
        assert pick_precision(config, CUDA, matmul) == fields
    tf32 = fields["tf32"]
    assert torch.get_float32_matmul_precision() == ("high" if tf32 else "highest")
    assert torch.backends.cudnn.allow_tf32 is tf32
    warnings = [entry for entry in logs if entry["log_level"] == "warning"]
    if warned:
        assert [entry["event"] for entry in warnings] == ["bf16_emulated"]
        assert warnings[0]["compute_capability"] == "7.5"
        assert warnings[0]["detail"].startswith('tolaria.precision = "bf16": this GPU (compute capability 7.5')
    else:
        assert warnings == []
    matmul.restore()
    assert torch.get_float32_matmul_precision() == "highest"
    assert torch.backends.cudnn.allow_tf32 is False


def _fails(*_args: object) -> object:
    raise OSError("a disk error, by a test")


@pytest.mark.parametrize("end", ["completed", "failed start"])
async def test_a_tf32_run_gives_the_callers_matmul_settings_back_when_it_ends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, end: str
) -> None:
    """Nothing turned TF32 on for a run on an Ampere GPU; turned on, it must not outlive the run in a notebook."""
    monkeypatch.setattr(run_precision, "native_bf16", lambda device: True)  # the training device "is" an A100
    if end == "failed start":
        monkeypatch.setattr(esper_run, "read_gpus_once", _fails)  # after the precision was picked
    torch.backends.cudnn.allow_tf32 = False
    run_dir = tmp_path / "run"
    if end == "failed start":
        with pytest.raises(OSError, match="by a test"):
            await esper.start(quiet_config(tmp_path), run_dir=run_dir)
    else:
        system = await esper.start(quiet_config(tmp_path), run_dir=run_dir)
        during = torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32
        assert (await system.wait()).status == "completed"
        assert during == ("high", True)
        lines = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
        started = next(line for line in lines if line["event"] == "run_started")
        assert (started["precision"], started["tf32"]) == ("fp32", True)  # the CPU itself trains without autocast
    assert torch.get_float32_matmul_precision() == "highest"
    assert torch.backends.cudnn.allow_tf32 is False
