"""A ``schemas`` or ``actors`` of the user's ahead of Esper's on sys.path: one line naming it, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from esper.shadowing import EXIT_SHADOWED, module_run_target

REPO = Path(__file__).resolve().parent.parent
TOOLS = ("esper.run", "esper.tail", "esper.report", "esper.field_reports")


def python(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``python ARGS`` in ``cwd``, finding this checkout's esper after whatever ``cwd`` holds."""
    paths = [str(REPO), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60, check=False
    )


@pytest.mark.parametrize("tool", TOOLS)
def test_a_schemas_folder_in_the_working_directory_stops_each_tool_in_one_line(tmp_path: Path, tool: str) -> None:
    """Every command died with ``ModuleNotFoundError: No module named 'schemas.enums'`` from deep inside."""
    (tmp_path / "schemas").mkdir()
    (tmp_path / "schemas" / "__init__.py").write_text("#\n")
    (tmp_path / "config.toml").write_text("")
    result = python("-m", tool, "config.toml", cwd=tmp_path)
    assert result.returncode == EXIT_SHADOWED
    assert result.stdout == ""
    assert result.stderr == (
        f"esper: {tmp_path / 'schemas'} hides Esper's own 'schemas' package ({REPO / 'schemas'}): Python finds it"
        " first (the working directory comes first on sys.path under python -m and in notebooks); run from another"
        " directory, or rename that folder\n"
    )


def test_an_actors_module_stops_an_import_of_esper_with_an_import_error(tmp_path: Path) -> None:
    """A script or a notebook gets an ImportError naming the file, not a SystemExit out of its import."""
    (tmp_path / "actors.py").write_text("")
    probe = "try:\n    import esper\nexcept ImportError as err:\n    print(err)\nelse:\n    print('imported')\n"
    result = python("-c", probe, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"esper: {tmp_path / 'actors.py'} hides Esper's own 'actors' package ("), (
        result.stdout
    )
    assert result.stdout.endswith("run from another directory, or rename that file\n")
    assert result.stdout.count("\n") == 1


def test_a_plain_folder_of_that_name_shadows_nothing(tmp_path: Path) -> None:
    """With Esper's packages on sys.path (here PYTHONPATH; a regular install alike), a folder without ``__init__.py``
    (say, the user's JSON schemas) is a namespace package, which Python passes over for Esper's regular one: no
    refusal. (An editable install is another matter: see the tests below.)"""
    (tmp_path / "schemas").mkdir()
    (tmp_path / "schemas" / "run.json").write_text("{}")
    result = python("-m", "esper.field_reports", "missing-run", cwd=tmp_path)
    assert "hides Esper's own" not in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("esper.field_reports: "), result.stderr


@pytest.mark.parametrize(
    ("command_line", "target"),
    [
        (["python", "-m", "esper.run", "config.toml"], "esper.run"),
        (["python", "-X", "dev", "-W", "error", "-m", "esper.tail", "-m"], "esper.tail"),
        (["python", "-Bmesper.report", "x"], "esper.report"),
        (["python", "-Im", "mysweep"], "mysweep"),
        (["python", "-c", "import esper", "-m", "esper.run"], None),
        (["python", "script.py", "-m", "esper.run"], None),
        (["python"], None),
    ],
)
def test_the_module_a_command_line_runs(command_line: list[str], target: str | None) -> None:
    assert module_run_target(command_line) == target


def test_a_users_own_python_m_importing_esper_gets_an_import_error_not_an_exit(tmp_path: Path) -> None:
    """sys.argv[0] is "-m" while any ``python -m`` imports its package: a user's ``python -m mysweep`` importing esper
    was ended with status 2, not given the ImportError its own code can catch."""
    (tmp_path / "actors.py").write_text("")
    (tmp_path / "mysweep").mkdir()
    (tmp_path / "mysweep" / "__init__.py").write_text(
        "try:\n    import esper\nexcept ImportError as err:\n    print('caught', err)\n"
    )
    (tmp_path / "mysweep" / "__main__.py").write_text("")
    result = python("-m", "mysweep", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"caught esper: {tmp_path / 'actors.py'} hides Esper's own 'actors' package (")


# setuptools' editable install (pip install -e .) imports Esper through a finder appended to sys.meta_path, after the
# path's own finder: a folder without __init__.py in the working directory is then found first, as a namespace
# package. This probe builds that layout for this checkout, whichever one the interpreter's own install points at,
# and drops any sys.path entry holding an esper package (PYTHONPATH and a regular install put Esper's packages on the
# path, which hides the problem: there Python passes over a namespace folder for a regular package).
_EDITABLE_PROBE = """
import importlib.machinery, importlib.util, os, sys
repo = sys.argv[1]
sys.path[:] = [p for p in sys.path if not os.path.isfile(os.path.join(p or '.', 'esper', '__init__.py'))]
class Editable:
    @staticmethod
    def find_spec(fullname, path=None, target=None):
        if fullname in ('esper', 'schemas', 'actors'):
            return importlib.util.spec_from_file_location(
                fullname, os.path.join(repo, fullname, '__init__.py'),
                submodule_search_locations=[os.path.join(repo, fullname)])
        parent = fullname.rpartition('.')[0]
        if parent in ('esper', 'schemas', 'actors'):
            return importlib.machinery.PathFinder.find_spec(fullname, [os.path.join(repo, parent)])
        return None
sys.meta_path.insert(sys.meta_path.index(importlib.machinery.PathFinder) + 1, Editable)
try:
    import esper
    import esper.run
    import schemas.registry
    print('imported', len(schemas.registry.message_types()))
except ImportError as err:
    print(type(err).__name__, err)
"""


def _editable_import(cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    return subprocess.run(
        [sys.executable, "-c", _EDITABLE_PROBE, str(REPO)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.slow
def test_the_editable_probe_imports_esper_from_this_checkout(tmp_path: Path) -> None:
    result = _editable_import(tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("imported "), result.stdout
    assert int(result.stdout.split()[1]) > 0


@pytest.mark.parametrize(
    ("name", "entry"),
    [("actors", "oona.py"), ("schemas", "run.json")],
)
def test_a_folder_without_init_under_an_editable_install_is_refused(tmp_path: Path, name: str, entry: str) -> None:
    """Under ``pip install -e .`` a cwd ``actors/`` holding oona.py became the actors package: ``python -m esper.run``
    died with "ModuleNotFoundError: No module named 'actors.oona.publisher'"; a ``schemas/`` of JSON files imported,
    but schemas.registry then found no message types in it (the Redis bus could decode nothing)."""
    (tmp_path / name).mkdir()
    (tmp_path / name / entry).write_text("")
    result = _editable_import(tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == (
        f"ImportError esper: {tmp_path / name} hides Esper's own {name!r} package ({REPO / name}): Python finds it"
        " first (the working directory comes first on sys.path under python -m and in notebooks); run from another"
        " directory, or rename that folder\n"
    )
