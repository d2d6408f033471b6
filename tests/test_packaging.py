"""What the distribution ships: the typing marker of each package."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest

import actors
import esper
import schemas

if TYPE_CHECKING:
    from types import ModuleType


@pytest.mark.parametrize("package", [esper, actors, schemas], ids=lambda package: package.__name__)
def test_each_top_level_package_is_marked_typed(package: ModuleType) -> None:
    """actors lacked py.typed, so mypy in a project using the installed wheel ignored its annotations (PEP 561);
    pyproject.toml's package-data ships every package's."""
    assert package.__file__ is not None
    assert (Path(package.__file__).parent / "py.typed").is_file()
