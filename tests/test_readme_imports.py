"""Every import README's Python examples make resolves: a class moved between modules broke a documented snippet."""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def _imports() -> list[tuple[str, str | None]]:
    """(module, name) for each ``from module import name`` and (module, None) for each ``import module`` of README's
    python blocks."""
    found: list[tuple[str, str | None]] = []
    for block in re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.DOTALL):
        for node in ast.walk(ast.parse(block)):
            if isinstance(node, ast.ImportFrom) and node.module is not None:
                found.extend((node.module, alias.name) for alias in node.names)
            elif isinstance(node, ast.Import):
                found.extend((alias.name, None) for alias in node.names)
    return found


def test_every_import_in_readmes_examples_resolves() -> None:
    imports = _imports()
    assert ("esper.logs", "LogFileInUse") in imports
    for module, name in imports:
        imported = importlib.import_module(module)
        assert name is None or hasattr(imported, name), f"README imports {name} from {module}, which has none"
