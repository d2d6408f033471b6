"""Deterministic, side-effect-free weight initialisation for blueprint modules.

Builders construct their layers on the ``meta`` device and then materialise them here, so building a seed never
draws from torch's global RNG: a seed built on the io lane cannot perturb the training run's random stream, and the
same generator seed always gives bitwise the same weights.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, TypeVar

import torch
from torch import nn

if TYPE_CHECKING:
    from collections.abc import Iterable

__all__ = ["as_generator", "hidden_width", "materialise"]

_M = TypeVar("_M", bound=nn.Module)


def as_generator(seed: int | torch.Generator) -> torch.Generator:
    """A CPU generator: the one given, or a fresh one seeded with ``seed``."""
    if isinstance(seed, torch.Generator):
        return seed
    return torch.Generator(device="cpu").manual_seed(seed)


def hidden_width(features: int, multiplier: float) -> int:
    """Width of a hidden layer scaled from ``features``: ``max(1, round(features * multiplier))``."""
    return max(1, round(features * multiplier))


def _fan_in(weight: torch.Tensor) -> int:
    # Linear [out, in]; conv [out, in / groups, *kernel]: both have fan-in = prod of every dim after the first.
    return max(1, math.prod(weight.shape[1:]))


def materialise(module: _M, generator: torch.Generator, *, zero: Iterable[nn.Module], dtype: torch.dtype) -> _M:
    """Allocate a meta-device module on the CPU and initialise it from ``generator`` alone.

    Linear and conv weights are uniform in ``[-1/sqrt(fan_in), 1/sqrt(fan_in)]`` (torch's default scale), biases
    zero, norm scales one; then every parameter of the modules in ``zero`` (the last layer) is set to exactly zero,
    which makes the seed's output exactly zero at birth. Parameters are visited in registration order, so the draw
    sequence, and hence the weights, depend only on the module structure and the generator state.
    """
    module.to_empty(device="cpu")
    done: set[int] = set()
    with torch.no_grad():
        for sub in module.modules():
            weight = getattr(sub, "weight", None)
            bias = getattr(sub, "bias", None)
            if isinstance(sub, nn.Linear | nn.Conv1d | nn.Conv2d):
                bound = 1.0 / math.sqrt(_fan_in(sub.weight))
                sub.weight.uniform_(-bound, bound, generator=generator)
                done.add(id(sub.weight))
            elif isinstance(weight, nn.Parameter):
                weight.fill_(1.0)
                done.add(id(weight))
            if isinstance(bias, nn.Parameter):
                bias.zero_()
                done.add(id(bias))
        for last in zero:
            for param in last.parameters():
                param.zero_()
                done.add(id(param))
    # to_empty leaves garbage in anything not visited above; refuse rather than ship uninitialised memory.
    for name, param in module.named_parameters():
        if id(param) not in done:
            raise ValueError(f"{type(module).__name__}: parameter {name!r} has no initialisation rule")
    return module.to(dtype=dtype)
