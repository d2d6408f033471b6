"""examples/notebook.ipynb runs headless in a real kernel.

It starts a run, shows actors and events, and stops it while it trains, leaving a checkpoint a resume continues from."""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import nbformat
import pytest

from esper.resume import check_resume_files
from esper.resume_checkpoints import resume_point
from esper.run_key import read_run_key
from schemas.config_platform import SecurityConfig
from schemas.enums import ActorStatus

if TYPE_CHECKING:
    from nbformat import NotebookNode

REPO = Path(__file__).resolve().parent.parent
NOTEBOOK = REPO / "examples" / "notebook.ipynb"
KERNEL = "esper-notebook-test"


def read_notebook(path: Path) -> NotebookNode:
    notebook: NotebookNode = nbformat.read(path, as_version=4)  # type: ignore[no-untyped-call]  # nbformat is unannotated
    return notebook


def tagged(notebook: NotebookNode, tag: str) -> NotebookNode:
    cells = [cell for cell in notebook.cells if tag in cell.metadata.get("tags", [])]
    assert len(cells) == 1, f"expected one cell tagged {tag!r}, found {len(cells)}"
    cell: NotebookNode = cells[0]
    return cell


def result_data(cell: NotebookNode, mime: str) -> str:
    """The cell's execute_result in the given MIME type."""
    results = [out for out in cell.outputs if out.output_type == "execute_result"]
    assert len(results) == 1, f"cell {cell.metadata.get('tags')} has {len(results)} results"
    text: str = results[0].data[mime]
    return text


def table_rows(markdown: str) -> dict[str, tuple[str, int, int]]:
    """actor -> (status, handled, restarts) from the notebook's Markdown actor table."""
    rows: dict[str, tuple[str, int, int]] = {}
    for match in re.finditer(r"^\| (\S+) \| (\w+) \| (\d+) \| (\d+) \|$", markdown, re.MULTILINE):
        actor, status, handled, restarts = match.groups()
        rows[actor] = (status, int(handled), int(restarts))
    return rows


@pytest.fixture
def isolated_jupyter(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A kernelspec for this interpreter, and Jupyter's and IPython's files kept under tmp_path; the kernel's name."""
    # Opt in to platformdirs locations: before 5.9, jupyter_core raised a DeprecationWarning while this was unset, as
    # jupyter_client.connect was imported. The test imports nbclient (which imports that) only after this is set.
    monkeypatch.setenv("JUPYTER_PLATFORM_DIRS", "1")
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "jupyter-runtime"))
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    spec = tmp_path / "jupyter" / "kernels" / KERNEL
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": KERNEL, "language": "python"}))
    # The kernel must be the interpreter running the tests, whatever kernelspecs the machine has installed.
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    return KERNEL


def test_committed_notebook_carries_no_outputs() -> None:
    notebook = read_notebook(NOTEBOOK)
    nbformat.validate(notebook)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code, "the notebook has code cells"
    assert all(cell.outputs == [] and cell.execution_count is None for cell in code), "clear the outputs"


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_notebook_starts_a_run_shows_actors_and_events_and_stops_it_resumably(
    tmp_path: Path, isolated_jupyter: str
) -> None:
    from nbclient import NotebookClient  # imported once the fixture has set JUPYTER_PLATFORM_DIRS

    # The repository's layout in miniature, so the notebook's relative config path and runs/ resolve under tmp_path.
    shutil.copy(REPO / "config.toml", tmp_path / "config.toml")
    (tmp_path / "examples").mkdir()
    notebook = read_notebook(NOTEBOOK)
    client = NotebookClient(
        notebook,
        kernel_name=isolated_jupyter,
        timeout=90,
        resources={"metadata": {"path": str(tmp_path / "examples")}},
    )
    client.execute()

    outputs = [out for cell in notebook.cells if cell.cell_type == "code" for out in cell.outputs]
    assert [out for out in outputs if out.output_type == "error"] == []

    started = tagged(notebook, "start")
    run_id = result_data(started, "text/plain").strip("'")

    during = table_rows(result_data(tagged(notebook, "snapshot"), "text/markdown"))
    assert "tolaria" in during, during
    assert {status for status, _, _ in during.values()} <= {status.value for status in ActorStatus}
    assert during["tolaria"][0] == ActorStatus.RUNNING.value, "the snapshot is taken while training runs"

    # Which events come first depends on the actors wired in; the state reporter guarantees there are some.
    events = re.findall(r"\('(\w+)', '[^']*'\)", result_data(tagged(notebook, "events"), "text/plain"))
    assert len(events) == 6, events

    summary = result_data(tagged(notebook, "summary"), "text/markdown")
    assert f"**run {run_id}: stopped**" in summary, summary  # stopped while it trained, not run to its end
    assert "(exit 0)" in summary, summary
    after = table_rows(summary)
    assert set(after) >= set(during), "every actor seen running is in the summary"
    assert {status for status, _, _ in after.values()} == {ActorStatus.STOPPED.value}

    run_dir = tmp_path / "examples" / "runs" / run_id
    on_disk = json.loads((run_dir / "summary.json").read_text())
    assert on_disk["status"] == "stopped"
    training = on_disk["training"]
    assert 0 < training["epochs"] < 500
    assert not training["completed"]
    # The stop's checkpoint is the one a --resume continues from, and the files that rebuild the run are whole.
    assert training["checkpoint"] == f"step-{training['global_step']}.pt"
    assert resume_point(run_dir / "checkpoints") == training["global_step"]
    # The notebook sets no secret variable, so the run kept its command key beside the journal it verifies.
    check_resume_files(run_dir, run_id=run_id, key=read_run_key(run_dir), security=SecurityConfig())
