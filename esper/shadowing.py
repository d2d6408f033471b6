"""A folder or module of the user's named ``schemas`` or ``actors`` that Python would import instead of Esper's own."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Final

# Esper's top-level packages besides ``esper`` itself; their names are the design's, and common enough to collide.
SIBLINGS: Final = ("schemas", "actors")
EXIT_SHADOWED: Final = 2


def shadowing_problem(home: Path) -> str | None:
    """What shadows one of SIBLINGS, in one line naming the shadowing path and the way out; None when each resolves to
    the package beside ``esper`` in ``home`` (the directory holding the esper package). Finds, never imports: a
    ``find_spec`` per name (a few stats). A sibling not found at all is left to the import that needs it."""
    for name in SIBLINGS:
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):  # a module already half-imported, or a broken finder: the import will say
            continue
        if spec is None:
            continue
        ours = (home / name).resolve()
        if spec.origin is None:
            # A folder without __init__.py. Where Esper is on sys.path (PYTHONPATH, a regular install) Python passes
            # over it for Esper's regular package and find_spec never returns it; under an editable install, whose
            # finder comes after the path's, it becomes the package: its modules replace Esper's same-named ones
            # (an actors/oona.py: "'actors.oona' is not a package") and schemas.registry walks the wrong folder.
            places = [Path(place) for place in spec.submodule_search_locations or ()]
            if not places or any(place.resolve() == ours for place in places):
                continue
            return _refusal(name, places[0], "folder", home)
        found = Path(spec.origin)
        if found.parent.resolve() == ours:  # __init__.py, or __init__.pyc in a pyc-only install
            continue
        folder = spec.submodule_search_locations is not None
        shadow, kind = (found.parent, "folder") if folder else (found, "file")
        return _refusal(name, shadow, kind, home)
    return None


def _refusal(name: str, shadow: Path, kind: str, home: Path) -> str:
    return (
        f"esper: {shadow} hides Esper's own {name!r} package ({home / name}): Python finds it first (the working"
        f" directory comes first on sys.path under python -m and in notebooks); run from another directory, or"
        f" rename that {kind}"
    )


def module_run_target(orig_argv: list[str]) -> str | None:
    """The module a ``python [options] -m MODULE`` command line runs (``sys.orig_argv``), else None. sys.argv[0] is
    "-m" while ANY ``python -m`` imports its package, so it alone cannot tell Esper's tools from a user's module."""
    args, index = orig_argv[1:], 0
    while index < len(args):
        arg = args[index]
        if arg in ("-", "--") or not arg.startswith("-") or arg.startswith("--"):
            return None  # a script, stdin, or a long option: no -m before it in any launch of ours
        flags = arg[1:]
        for at, flag in enumerate(flags):
            if flag in "cmWX":  # the short options that take a value: the rest of the cluster, else the next word
                value = flags[at + 1 :] or (args[index + 1] if index + 1 < len(args) else "")
                if flag == "m":
                    return value
                if flag == "c":
                    return None
                index += 0 if flags[at + 1 :] else 1
                break
        index += 1
    return None


def _is_esper_tool(module: str | None) -> bool:
    return module is not None and (module == "esper" or module.startswith("esper."))


def refuse_shadowed_packages(home: Path) -> None:
    """Stop an import of esper whose ``schemas`` or ``actors`` would be the user's, before anything imports them (the
    failure was a ModuleNotFoundError traceback from deep inside, e.g. "No module named 'schemas.enums'").

    Under ``python -m esper.<tool>`` (sys.argv[0] is "-m" while the package of the module to run is imported, and
    sys.orig_argv names the tool) the line goes to stderr and the process exits with status 2, as the command line's
    other refusals do; any other importer (a script, a notebook, a test, a user's own ``python -m mysweep``) gets an
    ImportError carrying the same line.

    Raises:
        ImportError: a sibling package is shadowed and the import is not a ``python -m`` launch.
        SystemExit: (status 2) the same, under ``python -m esper.<tool>``.
    """
    problem = shadowing_problem(home)
    if problem is None:
        return
    if getattr(sys, "argv", [])[:1] == ["-m"] and _is_esper_tool(module_run_target(getattr(sys, "orig_argv", []))):
        if sys.stderr is not None:
            sys.stderr.write(f"{problem}\n")
            sys.stderr.flush()
        raise SystemExit(EXIT_SHADOWED)
    raise ImportError(problem)
