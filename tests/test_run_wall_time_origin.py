"""metrics.csv's wall_time_s and the summary's duration_s count from one moment: the run's start."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

import esper.assemble
import esper.run
from actors.nissa.spec import nissa_spec
from esper.run import start
from esper.session import EsperSystem
from tests.test_e2e_run import tiny_config

if TYPE_CHECKING:
    from pathlib import Path

    from esper.runtime.child_spec import ChildSpec

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


async def test_nissa_counts_wall_time_from_the_moment_the_summary_counts_its_duration_from(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nissa's rows counted from when its spec was built during assembly, seconds after the start the summary's
    duration_s counts from: a 3-epoch run's last row said 7.27 s where duration_s said 12.97."""
    given: dict[str, Any] = {}

    def spy_spec(*args: Any, **kwargs: Any) -> ChildSpec:
        given["nissa"] = kwargs.get("started_s")
        return nissa_spec(*args, **kwargs)

    def spy_system(**kwargs: Any) -> EsperSystem:
        given["summary"] = kwargs["started_s"]
        return EsperSystem(**kwargs)

    monkeypatch.setattr(esper.assemble, "nissa_spec", spy_spec)
    monkeypatch.setattr(esper.run, "EsperSystem", spy_system)
    system = await start(tiny_config(tmp_path, epochs=1), tmp_path / "run")
    summary = await system.wait()
    assert summary.status == "completed", summary.error
    assert isinstance(given["summary"], float)
    assert given["nissa"] == given["summary"]
