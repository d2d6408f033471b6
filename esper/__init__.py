"""Esper: morphogenetic training on an asyncio actor runtime. Exposes ``start``, ``load_model`` and ``__version__``
lazily."""

from __future__ import annotations

import random
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from esper.shadowing import refuse_shadowed_packages

# First, before anything imports schemas or actors: a folder of the user's by either name in the working directory
# would be imported in their place, and every command died with a traceback from deep inside.
refuse_shadowed_packages(Path(__file__).resolve().parent.parent)

if TYPE_CHECKING:
    from esper.run import start as start
    from esper.trained_model import load_model as load_model

__all__ = ["__version__", "load_model", "start"]


def __getattr__(name: str) -> object:
    # Lazy on purpose: importing esper.runtime must never pull in actors or torch.
    if name == "start":
        if "esper.run" in sys.modules:
            # Imported already: a save and restore here would rewind what another thread drew meanwhile.
            from esper.run import start

            return start
        # The first import of the run's modules draws from Python's random (rich, under structlog, at its import):
        # the caller's stream must go on as if no run had happened, and the run saves it only once it starts.
        state = random.getstate()
        try:
            from esper.run import start
        finally:
            random.setstate(state)
        return start
    if name == "load_model":
        if "esper.trained_model" in sys.modules:
            from esper.trained_model import load_model

            return load_model
        # As for start: the first import of its modules draws from Python's random, which the caller's stream must go
        # on without.
        saved = random.getstate()
        try:
            from esper.trained_model import load_model
        finally:
            random.setstate(saved)
        return load_model
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("esper-morphogenesis")
        except PackageNotFoundError:
            return "0.0.0+unknown"
    raise AttributeError(f"module 'esper' has no attribute {name!r}")
