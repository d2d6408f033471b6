"""A run's precision on a GPU: bf16 autocast and TF32 only where the GPU computes them.

That is compute capability 8.0 or newer; a warning when bf16 is asked of one that emulates it, and torch's TF32 settings
given back after the run.

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
    from collections.abc import Callable, Iterator
    from pathlib import Path

CUDA = torch.device("cuda", 0)
T4 = (7, 5)
A100 = (8, 0)


def on_gpu(monkeypatch: pytest.MonkeyPatch, capability: tuple[int, int]) -> None:
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)


PER_BACKEND = hasattr(torch.backends, "fp32_precision")  # torch 2.9's TF32 switches, beside the legacy ones
# Each per-backend switch, parents first (a parent set to a precision sets its children too).
SWITCHES = (
    (torch.backends, "fp32_precision"),
    (torch.backends.cudnn, "fp32_precision"),
    (torch.backends.mkldnn, "fp32_precision"),
    (torch.backends.cuda.matmul, "fp32_precision"),
    (getattr(torch.backends.cudnn, "conv", None), "fp32_precision"),
    (getattr(torch.backends.cudnn, "rnn", None), "fp32_precision"),
    (getattr(torch.backends.mkldnn, "matmul", None), "fp32_precision"),
    (getattr(torch.backends.mkldnn, "conv", None), "fp32_precision"),
    (getattr(torch.backends.mkldnn, "rnn", None), "fp32_precision"),
)


def _read(getter: Callable[[], object]) -> object:
    try:
        return getter()
    except RuntimeError as err:  # torch refuses a legacy read once the per-backend switches were set
        return f"refused: {str(err)[:40]}"


def tf32_settings() -> dict[str, object]:
    """Everything a caller may have set, through either of torch's APIs, as a legacy reader or a new one sees it."""
    seen: dict[str, object] = {
        "legacy matmul": _read(torch.get_float32_matmul_precision),
        "legacy cudnn": _read(lambda: torch.backends.cudnn.allow_tf32),
    }
    if PER_BACKEND:
        for index, (owner, name) in enumerate(SWITCHES):
            seen[f"switch {index}"] = getattr(owner, name)
    return seen


def tf32_on() -> tuple[bool, bool]:
    """Whether float32 matmuls and cuDNN's convolutions may use TF32, read through the API the run sets."""
    if PER_BACKEND:
        return torch.backends.cuda.matmul.fp32_precision == "tf32", _conv_switch() == "tf32"
    return torch.get_float32_matmul_precision() == "high", torch.backends.cudnn.allow_tf32


def _conv_switch() -> object:
    return getattr(torch.backends.cudnn, "conv").fp32_precision  # noqa: B009  # torch's stubs do not show it


@pytest.fixture(autouse=True)
def matmul_settings() -> Iterator[None]:
    """Each test starts from torch's defaults and leaves the process's settings as it found them."""
    before = tf32_settings()
    saved = [(owner, name, getattr(owner, name)) for owner, name in SWITCHES] if PER_BACKEND else []
    legacy = before["legacy matmul"], before["legacy cudnn"]
    torch.set_float32_matmul_precision("highest")
    torch.backends.cudnn.allow_tf32 = True
    for owner, name, _ in saved:
        setattr(owner, name, "tf32" if owner is getattr(torch.backends.cudnn, "conv", None) else "none")
    yield
    if isinstance(legacy[0], str) and not legacy[0].startswith("refused"):
        torch.set_float32_matmul_precision(legacy[0])
    if isinstance(legacy[1], bool):
        torch.backends.cudnn.allow_tf32 = legacy[1]
    for owner, name, value in saved:
        setattr(owner, name, value)
    assert tf32_settings() == before


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
    assert tf32_on() == (tf32, tf32)
    warnings = [entry for entry in logs if entry["log_level"] == "warning"]
    if warned:
        assert [entry["event"] for entry in warnings] == ["bf16_emulated"]
        assert warnings[0]["compute_capability"] == "7.5"
        assert warnings[0]["detail"].startswith('tolaria.precision = "bf16": this GPU (compute capability 7.5')
    else:
        assert warnings == []
    matmul.restore()
    assert tf32_on() == (False, False)


def _fails(*_args: object) -> object:
    raise OSError("a disk error, by a test")


def _set_by_caller(api: str) -> None:
    """A caller's own TF32 choice, made through one of torch's APIs before it starts a run."""
    if api == "legacy":
        torch.set_float32_matmul_precision("medium")
        torch.backends.cudnn.allow_tf32 = False
    elif api == "new":  # torch's recommended switches: its legacy getters then raise
        torch.backends.cuda.matmul.fp32_precision = "tf32"
        setattr(getattr(torch.backends.cudnn, "conv"), "fp32_precision", "ieee")  # noqa: B009, B010  # not in the stubs
    elif api == "new global":
        setattr(torch.backends, "fp32_precision", "tf32")  # noqa: B010  # not in torch's stubs


CALLERS = ["neither", "legacy", *(["new", "new global"] if PER_BACKEND else [])]


@pytest.mark.parametrize("api", CALLERS)
def test_the_callers_tf32_settings_are_read_and_given_back_whichever_api_set_them(api: str) -> None:
    """Reading them raised ("a mix of the legacy and new APIs") in a process that had used torch's new switches."""
    _set_by_caller(api)
    before = tf32_settings()
    matmul = Float32Matmul()
    matmul.use_tf32()
    assert tf32_on() == (True, True)
    matmul.restore()
    assert tf32_settings() == before


@pytest.mark.parametrize("api", CALLERS)
@pytest.mark.parametrize("gpu", [True, False], ids=["tf32 run", "cpu run"])
async def test_a_run_starts_and_gives_the_callers_tf32_settings_back_whichever_api_set_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, api: str, gpu: bool
) -> None:
    """Every start crashed, even on the CPU, in a process that had set torch's new TF32 switches: a traceback."""
    monkeypatch.setattr(run_precision, "native_bf16", lambda device: gpu)  # True: the training device "is" an A100
    _set_by_caller(api)
    before = tf32_settings()
    system = await esper.start(quiet_config(tmp_path), run_dir=tmp_path / "run")
    during = tf32_on(), tf32_settings()
    assert (await system.wait()).status == "completed"
    if gpu:
        assert during[0] == (True, True)
    else:
        assert during[1] == before  # a run without TF32 leaves them alone
    assert tf32_settings() == before


@pytest.mark.parametrize("end", ["completed", "failed start"])
async def test_a_tf32_run_gives_the_callers_matmul_settings_back_when_it_ends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, end: str
) -> None:
    """Nothing turned TF32 on for a run on an Ampere GPU; turned on, it must not outlive the run in a notebook."""
    monkeypatch.setattr(run_precision, "native_bf16", lambda device: True)  # the training device "is" an A100
    if end == "failed start":
        monkeypatch.setattr(esper_run, "read_gpus_once", _fails)  # after the precision was picked
    torch.backends.cudnn.allow_tf32 = False
    before = tf32_settings()
    run_dir = tmp_path / "run"
    if end == "failed start":
        with pytest.raises(OSError, match="by a test"):
            await esper.start(quiet_config(tmp_path), run_dir=run_dir)
    else:
        system = await esper.start(quiet_config(tmp_path), run_dir=run_dir)
        during = tf32_on()
        assert (await system.wait()).status == "completed"
        assert during == (True, True)
        lines = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
        started = next(line for line in lines if line["event"] == "run_started")
        assert (started["precision"], started["tf32"]) == ("fp32", True)  # the CPU itself trains without autocast
    assert tf32_on() == (False, False)
    assert tf32_settings() == before
