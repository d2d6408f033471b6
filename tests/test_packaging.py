"""What the distribution ships: the typing marker of each package, the license, and what an sdist's tests read."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

import actors
import esper
import schemas

if TYPE_CHECKING:
    from types import ModuleType

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("package", [esper, actors, schemas], ids=lambda package: package.__name__)
def test_each_top_level_package_is_marked_typed(package: ModuleType) -> None:
    """actors lacked py.typed, so mypy in a project using the installed wheel ignored its annotations (PEP 561);
    pyproject.toml's package-data ships every package's."""
    assert package.__file__ is not None
    assert (Path(package.__file__).parent / "py.typed").is_file()


def test_the_license_is_an_spdx_expression_with_its_text_beside_it() -> None:
    """``license = { text = "MIT" }`` is deprecated by setuptools (no builds after 2027-02-18), and no LICENSE file
    was shipped."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    assert project["project"]["license"] == "MIT"
    assert "setuptools>=77" in project["build-system"]["requires"]  # the first to read a license expression
    assert (REPO / "LICENSE").read_text(encoding="utf-8").startswith("MIT License\n\nCopyright (c) 2026 the Esper")


def test_the_sdist_takes_in_what_the_tests_read_outside_the_packages() -> None:
    """The sdist lacked config.toml, examples/, LICENSE and the tests' helpers (conftest.py, _*.py, golden/): its
    tests could not run."""
    lines = (REPO / "MANIFEST.in").read_text(encoding="utf-8").splitlines()
    included = {word for line in lines if line.startswith("include ") for word in line.split()[1:]}
    grafted = {line.split()[1] for line in lines if line.startswith("graft ")}
    assert {"LICENSE", "config.toml"} <= included
    assert {"examples", "scripts", "tests"} <= grafted
