"""The house rules hold: one-line module docstrings, no print outside scripts/, no sleeps in tests to wait on."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CHECKED = ("esper", "actors", "schemas", "scripts", "tests")
LINE_LENGTH = 120  # [tool.ruff] line-length
SLEEPING_MODULES = frozenset({"time", "asyncio", "anyio"})


def python_files(*roots: str) -> list[Path]:
    """Every .py file under ``roots`` (relative to the repository), caches and hidden folders left out."""
    found: list[Path] = []
    for root in roots:
        for path in sorted((REPO / root).rglob("*.py")):
            parts = path.relative_to(REPO).parts
            if not any(part == "__pycache__" or part.startswith(".") for part in parts):
                found.append(path)
    return found


def parsed(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def where(path: Path, line: int) -> str:
    return f"{path.relative_to(REPO)}:{line}"


def docstring_problem(tree: ast.Module) -> tuple[int, str] | None:
    """The line and reason a module's docstring breaks the rule, or None when its first paragraph is one short line."""
    first = tree.body[0] if tree.body else None
    if not (
        isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str)
    ):
        return 1, "no module docstring"
    text = first.value.value.strip()
    if not text:
        return first.lineno, "an empty module docstring"
    lines = text.splitlines()
    paragraph = [lines[0]]
    for line in lines[1:]:
        if not line.strip():
            break
        paragraph.append(line)
    if len(paragraph) > 1:
        return first.lineno, f"the first paragraph is {len(paragraph)} lines, not one"
    width = len('"""') + len(lines[0]) + (len('"""') if len(lines) == 1 else 0)
    if width > LINE_LENGTH:
        return first.lineno, f"the summary line is {width} columns with its quotes, over {LINE_LENGTH}"
    return None


def print_calls(tree: ast.Module) -> list[int]:
    """Lines that call the builtin print (a method named print on some object is another thing)."""
    return sorted(
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print"
    )


def _is_literal_zero(node: ast.expr) -> bool:
    return (
        isinstance(node, ast.Constant)
        and type(node.value) in (int, float)
        and node.value == 0  # sleep(0) only yields to the loop: it waits for nothing
    )


def waiting_sleeps(tree: ast.Module) -> list[int]:
    """Lines that sleep on time, asyncio or anyio (as ``module.sleep`` or an imported ``sleep``) for other than 0."""
    modules: set[str] = set()  # names bound to time / asyncio / anyio
    sleeps: set[str] = set()  # names bound to their sleep
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules.update(alias.asname or alias.name for alias in node.names if alias.name in SLEEPING_MODULES)
        elif isinstance(node, ast.ImportFrom) and node.module in SLEEPING_MODULES:
            sleeps.update(alias.asname or alias.name for alias in node.names if alias.name == "sleep")
    found: list[int] = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        is_sleep = (isinstance(func, ast.Name) and func.id in sleeps) or (
            isinstance(func, ast.Attribute)
            and func.attr == "sleep"
            and isinstance(func.value, ast.Name)
            and func.value.id in modules
        )
        if not is_sleep:
            continue
        delays = [*node.args, *(keyword.value for keyword in node.keywords)]
        if len(delays) != 1 or not _is_literal_zero(delays[0]):
            found.append(node.lineno)
    return sorted(found)


def test_every_module_has_a_one_line_summary_docstring() -> None:
    """A module's docstring opens with one line saying what lives there; further paragraphs may follow."""
    offences = []
    for path in python_files(*CHECKED):
        problem = docstring_problem(parsed(path))
        if problem is not None:
            offences.append(f"{where(path, problem[0])}: {problem[1]}")
    assert not offences, f"{len(offences)} module docstrings break the one-line rule:\n" + "\n".join(offences)


def test_no_print_outside_scripts() -> None:
    """Only scripts/ prints; code a test hands to a subprocess as a string is not code of the tree and is not seen."""
    offences = [
        where(path, line)
        for path in python_files(*(root for root in CHECKED if root != "scripts"))
        for line in print_calls(parsed(path))
    ]
    assert not offences, f"{len(offences)} print calls outside scripts/:\n" + "\n".join(offences)


def test_no_test_sleeps_to_wait_for_things() -> None:
    """A test awaits a reply or an event, or moves an injected clock; ``sleep(0)`` (a yield point) is allowed.

    Work that must be cancelled before the test ends waits on an event that never fires, not on a long sleep.
    """
    offences = [where(path, line) for path in python_files("tests") for line in waiting_sleeps(parsed(path))]
    assert not offences, f"{len(offences)} sleeps in tests:\n" + "\n".join(offences)


@pytest.mark.parametrize(
    ("source", "problem"),
    [
        ('"""What lives here."""\n', None),
        ('"""What lives here.\n\nMore about it,\nover two lines.\n"""\n', None),
        ("x = 1\n", "no module docstring"),
        ('"""What lives here,\nover two lines."""\n', "the first paragraph is 2 lines, not one"),
        ('"""' + "w" * 115 + '"""\n', "the summary line is 121 columns with its quotes, over 120"),
        ('"""' + "w" * 115 + '\n\nMore.\n"""\n', None),
    ],
)
def test_the_docstring_rule_reads_the_first_paragraph(source: str, problem: str | None) -> None:
    found = docstring_problem(ast.parse(source))
    assert (found[1] if found else None) == problem


def test_the_print_and_sleep_rules_find_what_they_should_and_nothing_else() -> None:
    source = "\n".join(
        [
            "import asyncio, time as clock",  # 1
            "from anyio import sleep as nap",  # 2
            "print('x')",  # 3: found
            "console.print('x')",  # 4: a method, not the builtin
            "'print(1)'",  # 5: text, not a call
            "asyncio.sleep(0)",  # 6: a yield point
            "asyncio.sleep(0.1)",  # 7: found
            "clock.sleep(1)",  # 8: found
            "nap(delay=0)",  # 9: a yield point
            "nap(delay)",  # 10: found
            "fake_clock.sleep(5)",  # 11: an injected clock
        ]
    )
    tree = ast.parse(source)
    assert print_calls(tree) == [3]
    assert waiting_sleeps(tree) == [7, 8, 10]
