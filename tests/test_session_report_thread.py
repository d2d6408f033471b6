"""The run's end renders its report off the event loop: matplotlib's import included, which held it half a second."""

from __future__ import annotations

import importlib.abc
import sys
import threading
from typing import TYPE_CHECKING

from structlog.testing import capture_logs

import esper
from esper.run_report import render_run_report
from tests.test_run_embedded import quiet_config

if TYPE_CHECKING:
    from collections.abc import Sequence
    from importlib.machinery import ModuleSpec
    from pathlib import Path
    from types import ModuleType

    import pytest


class _ImportedOn(importlib.abc.MetaPathFinder):
    """Notes the thread each import of ``name`` runs on, and leaves finding it to the other finders."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.threads: list[int] = []

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if fullname == self.name:
            self.threads.append(threading.get_ident())
        return None


async def test_the_reports_import_and_render_run_on_a_worker_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``python -X dev`` warned "EsperSystem._finish_once() took 0.842 seconds": esper.report (matplotlib) was
    imported on the loop's thread at the run's end, and a signal sent meanwhile waited."""
    spy = _ImportedOn("esper.report")
    # Imported afresh here (restored afterwards), as in a run's process, where nothing imported it before its end.
    monkeypatch.delitem(sys.modules, "esper.report", raising=False)
    monkeypatch.delattr(esper, "report", raising=False)
    monkeypatch.setattr(sys, "meta_path", [spy, *sys.meta_path])
    with capture_logs() as logs:
        await render_run_report(tmp_path, None)  # an empty directory: no report, said in a warning
    assert spy.threads, "esper.report was not imported"
    assert threading.get_ident() not in spy.threads
    assert [log["event"] for log in logs] == ["report_not_rendered"]


async def test_a_runs_end_imports_the_report_off_the_loop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Through a real run's end, not the helper alone: the run's end must go through it."""
    spy = _ImportedOn("esper.report")
    monkeypatch.delitem(sys.modules, "esper.report", raising=False)
    monkeypatch.delattr(esper, "report", raising=False)
    monkeypatch.setattr(sys, "meta_path", [spy, *sys.meta_path])
    summary = await (await esper.start(quiet_config(tmp_path), run_dir=tmp_path / "run")).wait()
    assert summary.status == "completed", summary.error
    assert spy.threads, "esper.report was not imported"
    assert threading.get_ident() not in spy.threads
    assert (tmp_path / "run" / "report.png").is_file()
