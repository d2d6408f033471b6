"""The layering of ARCHITECTURE.md holds: the import-linter contracts in pyproject.toml are all kept."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def test_import_contracts_are_kept() -> None:
    lint_imports = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    assert lint_imports is not None, "import-linter is a dev dependency"
    result = subprocess.run(
        [lint_imports, "--no-cache"], cwd=REPO, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_importing_the_runtime_and_schemas_pulls_in_no_torch() -> None:
    code = (
        "import sys, esper, esper.runtime.system, esper.runtime.bus_inproc, esper.runtime.breaker, schemas.config;"
        "assert 'torch' not in sys.modules, 'torch imported'; assert 'actors' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


@pytest.mark.slow
def test_the_composition_root_loads_pyg_only_for_a_gnn_policy() -> None:
    """PyTorch Geometric costs seconds to import; a heuristic run (the default) never needs it."""
    code = (
        "import sys, esper.run, esper.assemble, actors.tamiyo.spec, actors.tamiyo.state;"
        "assert 'torch_geometric' not in sys.modules, 'torch_geometric imported';"
        "from actors.tamiyo.gnn_state import GnnPolicyBase, PolicyWorker;"
        "from actors.tamiyo.gnn_process import RemoteGnnPolicy;"
        "from actors.tamiyo.gnn_policy import GnnPolicy;"
        "assert issubclass(GnnPolicy, GnnPolicyBase) and issubclass(RemoteGnnPolicy, GnnPolicyBase);"
        "assert issubclass(RemoteGnnPolicy, PolicyWorker) and not issubclass(GnnPolicy, PolicyWorker);"
        "assert 'torch_geometric' in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_every_esper_module_is_named_in_each_contract_that_lists_them() -> None:
    """A module added under esper/ but left out of a contract's list escapes that contract unnoticed."""
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    modules = {f"esper.{path.stem}" for path in (REPO / "esper").glob("*.py") if path.stem != "__init__"}
    checked = 0
    for contract in config["tool"]["importlinter"]["contracts"]:
        for key in ("source_modules", "forbidden_modules"):
            listed = set(contract.get(key, ()))
            if "esper.assemble" not in listed:
                continue  # a list that does not enumerate the top-level modules
            expected = modules - set(contract.get("forbidden_modules", ())) if key == "source_modules" else modules
            if key == "forbidden_modules":
                expected = expected - set(contract.get("source_modules", ()))
            assert expected <= listed, f"{contract['name']}: {key} lacks {sorted(expected - listed)}"
            checked += 1
    assert checked >= 4
