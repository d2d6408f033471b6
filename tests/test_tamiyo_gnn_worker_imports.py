"""The GNN policy's worker process leaves out the packages PyG would import for code the policy never runs."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import TYPE_CHECKING

import pytest

from actors.tamiyo.gnn_worker_main import UNUSED_PACKAGES
from schemas.domain_enums import PolicyAction
from tests.test_tamiyo_gnn_process import _local, _model, _observations, _remote

if TYPE_CHECKING:
    from pathlib import Path


def _marking_package(tmp_path: Path, name: str) -> Path:
    """A package ``name`` on its own path entry whose import writes a marker file; returns the marker's path."""
    marker = tmp_path / f"{name}-imported"
    package = tmp_path / "site" / name
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(f"open({str(marker)!r}, 'w').close()\n", encoding="utf-8")
    return marker


@pytest.mark.slow
def test_the_worker_decides_without_importing_transformers_which_pyg_imports_elsewhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PyG's package import reached Hugging Face transformers (installed beside a user's models) in every worker start
    and restart: about a fifth of the worker's start-up, for LLM helpers the policy never runs."""
    assert "transformers" in UNUSED_PACKAGES
    marker = _marking_package(tmp_path, "transformers")
    inherited = os.environ.get("PYTHONPATH")
    site = str(tmp_path / "site")
    monkeypatch.setenv("PYTHONPATH", site if not inherited else f"{site}{os.pathsep}{inherited}")

    # Anywhere else, importing PyG imports it (so this test would see a worker that did).
    plain = subprocess.run([sys.executable, "-P", "-c", "import torch_geometric"], check=False, capture_output=True)
    assert plain.returncode == 0, plain.stderr[-2000:]
    assert marker.exists()
    marker.unlink()

    model = _model(PolicyAction.GERMINATE)
    reference = _local(model)
    remote = _remote(model, _local(model))
    try:
        for observation in _observations():
            assert remote.decide(observation) == reference.decide(observation)
        assert remote.restarts == 0
    finally:
        remote.close()
    assert not marker.exists()
