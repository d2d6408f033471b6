"""The training device's CUDA RNG state, as a capture takes it and a restore puts it back (one device, not all)."""

from __future__ import annotations

import structlog
import torch

__all__ = ["cuda_rng_problem", "cuda_rng_state", "set_cuda_rng_state"]

_log = structlog.get_logger("actors.tolaria")


def cuda_rng_state(device: torch.device | None) -> torch.Tensor | None:
    """The CUDA generator state of the training ``device`` (a uint8 CPU tensor); None when it is not a CUDA device.

    Only that device's: a capture of every visible device's, indexed by ordinal, failed a resume on a machine that
    sees fewer GPUs (IndexError at every restart) and put another GPU's state on the training one when they are
    numbered otherwise. Lane thread; may initialise CUDA.
    """
    if device is None or device.type != "cuda":
        return None
    return torch.cuda.get_rng_state(device)


def set_cuda_rng_state(saved: object, device: torch.device | None) -> None:
    """Put ``saved`` back on the training ``device``'s CUDA generator; nothing when it is not a CUDA device.

    ``saved`` is this version's tensor (``cuda_rng_state``) or an earlier version's list of every visible device's
    state by ordinal, whose entry at the training device's index is used; a list without that entry (a resume that
    sees other GPUs) is passed over with a ``cuda_rng_state_not_restored`` warning, and the device's generator goes on
    from where it is. Lane thread.
    """
    if device is None or device.type != "cuda":
        return
    index = device.index if device.index is not None else torch.cuda.current_device()
    state: object = saved
    if isinstance(saved, list):
        state = saved[index] if index < len(saved) else None
    if isinstance(state, torch.Tensor):
        torch.cuda.set_rng_state(state, torch.device("cuda", index))
        return
    _log.warning(
        "cuda_rng_state_not_restored",
        device=f"cuda:{index}",
        saved=f"{len(saved)} devices' states" if isinstance(saved, list) else type(saved).__name__,
    )


def cuda_rng_problem(saved: object) -> str | None:
    """What keeps ``saved`` (a checkpoint's ``rng.cuda``) from loading, in one line, or None: this version's uint8
    tensor, an earlier version's list of them, or nothing (a CPU run's)."""
    if saved is None or _is_state(saved):
        return None
    if isinstance(saved, list) and all(_is_state(entry) for entry in saved):
        return None
    return "rng.cuda: expected a uint8 tensor or a list of them"


def _is_state(value: object) -> bool:
    return isinstance(value, torch.Tensor) and value.dtype == torch.uint8 and value.dim() == 1
