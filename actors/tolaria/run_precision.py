"""A run's precision, picked once at its start, and torch's TF32 settings put back at its end.

bf16 autocast and TF32 where the GPU computes them; torch's process-wide TF32 settings are put back at the run's end (a
notebook runs several runs in one process)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, final

import structlog
import torch

from actors.tolaria.build import emulated_bf16, resolve_precision
from esper.nn.precision import native_bf16

if TYPE_CHECKING:
    from schemas.config import TolariaConfig

__all__ = ["Float32Matmul", "pick_precision"]

_log = structlog.get_logger("actors.tolaria")


# torch 2.9's per-backend TF32 switches (torch 2.8 has only the legacy ones). Once a caller has set one, torch's
# legacy getters raise ("a mix of the legacy and new APIs"): a torch that has them is read and set through them only.
# cuDNN's is an attribute of the module object, which torch's stubs do not show.
_CUDNN_CONV: Any = getattr(torch.backends.cudnn, "conv", None)
_PER_BACKEND = _CUDNN_CONV is not None and hasattr(torch.backends.cuda.matmul, "fp32_precision")


@final
class Float32Matmul:
    """torch's float32 matmul precision and cuDNN's TF32 switch for convolutions as they are when built; ``restore``
    puts them back. As GlobalRngs: build before the run changes them, restore once no thread of the run computes.
    Never raises, whichever of torch's APIs the caller set them with."""

    __slots__ = ("_cudnn", "_matmul")

    def __init__(self) -> None:
        if _PER_BACKEND:
            # The switches themselves ("none": inherit from torch.backends.fp32_precision), not what they resolve to.
            self._matmul: str = torch.backends.cuda.matmul.fp32_precision
            self._cudnn: str | bool = _CUDNN_CONV.fp32_precision
        else:
            self._matmul = torch.get_float32_matmul_precision()
            self._cudnn = torch.backends.cudnn.allow_tf32

    def use_tf32(self) -> None:
        """TF32 for float32 matmuls and convolutions (cuDNN's switch is on by default; a caller may have turned it
        off)."""
        if _PER_BACKEND:
            torch.backends.cuda.matmul.fp32_precision = "tf32"
            _CUDNN_CONV.fp32_precision = "tf32"
        else:
            torch.set_float32_matmul_precision("high")
            torch.backends.cudnn.allow_tf32 = True

    def restore(self) -> None:
        if _PER_BACKEND:
            torch.backends.cuda.matmul.fp32_precision = self._matmul
            _CUDNN_CONV.fp32_precision = self._cudnn
        else:
            torch.set_float32_matmul_precision(self._matmul)
            torch.backends.cudnn.allow_tf32 = bool(self._cudnn)


def pick_precision(config: TolariaConfig, device: torch.device, matmul: Float32Matmul) -> dict[str, object]:
    """Turn TF32 on for the run when ``device`` computes it (a CUDA GPU of compute capability 8.0 or newer) and
    ``tolaria.precision`` is not "fp32" (which asks for float32 throughout), warn once when bf16 is asked of a
    GPU that only emulates it, and return the fields the run's start line records: ``precision`` (the training's
    autocast, "bf16" or "fp32") and ``tf32``. Blocking (may initialise CUDA)."""
    tf32 = config.precision != "fp32" and native_bf16(device)
    if tf32:
        matmul.use_tf32()
    if emulated_bf16(config, device):
        major, minor = torch.cuda.get_device_capability(device)
        asked = 'precision = "bf16"' if config.precision == "bf16" else "amp = true"
        _log.warning(
            "bf16_emulated",
            device=str(device),
            compute_capability=f"{major}.{minor}",
            detail=(
                f"tolaria.{asked}: this GPU (compute capability {major}.{minor}, below 8.0) emulates bf16, slower"
                ' than fp32; precision = "auto" trains it in fp32'
            ),
        )
    precision = "fp32" if resolve_precision(config, device) is None else "bf16"
    return {"precision": precision, "tf32": tf32}
