"""The process's global RNG states, kept while a run reseeds them (seed_everything, a resume's restore) and put back."""

from __future__ import annotations

import random
from typing import final

import numpy as np
import torch

__all__ = ["GlobalRngs"]


@final
class GlobalRngs:
    """Python's, NumPy's and torch's global RNG states as they are when built (CUDA's only if CUDA is initialised
    then: a run that initialises it leaves its generators seeded by the run); ``restore`` puts them back, so a
    notebook's own random stream goes on as if the run had not happened. Call it once no thread of the run draws."""

    __slots__ = ("_cuda", "_numpy", "_python", "_torch")

    def __init__(self) -> None:
        self._python = random.getstate()
        self._numpy = np.random.get_state()
        self._torch = torch.get_rng_state()
        initialised = torch.cuda.is_initialized()  # type: ignore[no-untyped-call]  # untyped in torch's stubs
        self._cuda = torch.cuda.get_rng_state_all() if initialised else None

    def restore(self) -> None:
        random.setstate(self._python)
        np.random.set_state(self._numpy)
        torch.set_rng_state(self._torch)
        if self._cuda is not None:
            torch.cuda.set_rng_state_all(self._cuda)
