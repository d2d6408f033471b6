"""Esper: morphogenetic training on an asyncio actor runtime.

Exposes ``start``, ``load_model`` and ``__version__`` lazily."""

from __future__ import annotations

import importlib
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
        return _imported_keeping_random("esper.run", "start")
    if name == "load_model":
        return _imported_keeping_random("esper.trained_model", "load_model")
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("esper-morphogenesis")
        except PackageNotFoundError:
            return "0.0.0+unknown"
    raise AttributeError(f"module 'esper' has no attribute {name!r}")


def _imported_keeping_random(module: str, name: str) -> object:
    """``module``'s ``name``. The first import of the run's modules draws from Python's random (rich, under structlog,
    at its import): the caller's stream must go on as if no run had happened, and a run saves it only once it starts.
    A module imported already is not saved around: a restore would rewind what another thread drew meanwhile."""
    if module not in sys.modules:
        state = random.getstate()
        try:
            importlib.import_module(module)
        finally:
            random.setstate(state)
    return getattr(sys.modules[module], name)
