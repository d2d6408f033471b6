"""Every contract type the schemas package defines, found by walking its modules (config sections excluded)."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import schemas
from schemas.base import ConfigSection, Message, Record


def contract_types() -> tuple[type[Message] | type[Record], ...]:
    """Every concrete Message and Record subclass defined in a module of the schemas package, sorted by name.

    Imports the schemas modules (which have no side effects); call it once, not per message.
    """
    found: dict[str, type[Message] | type[Record]] = {}
    for info in pkgutil.iter_modules(schemas.__path__):
        module = importlib.import_module(f"schemas.{info.name}")
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if obj.__module__ != module.__name__ or obj in (Message, Record) or issubclass(obj, ConfigSection):
                continue
            if issubclass(obj, Message | Record):
                found[obj.__name__] = obj
    return tuple(found[name] for name in sorted(found))


def message_types() -> tuple[type[Message], ...]:
    """The Message subclasses among contract_types(): everything that can travel as a tagged message."""
    return tuple(kind for kind in contract_types() if issubclass(kind, Message))
