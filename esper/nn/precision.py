"""Which reduced precisions a device runs natively: bf16 and TF32 need a CUDA GPU of compute capability 8.0 or newer."""

from __future__ import annotations

from typing import Final

import torch

__all__ = ["NATIVE_BF16_CAPABILITY", "native_bf16"]

NATIVE_BF16_CAPABILITY: Final = (8, 0)
"""Ampere: the first CUDA compute capability whose tensor cores compute bf16 and TF32."""


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` is a CUDA GPU of compute capability 8.0 (Ampere) or newer, which computes bf16 and TF32.

    Not ``torch.cuda.is_bf16_supported()``: it says True on older GPUs (a T4 is 7.5), which emulate bf16, slower
    than fp32. May initialise CUDA.
    """
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= NATIVE_BF16_CAPABILITY
