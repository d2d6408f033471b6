"""The console's /metrics URL: shown once Nissa has bound the port, never for a port it could not bind."""

from __future__ import annotations

import io
import socket
from typing import TYPE_CHECKING

import pytest

from esper.run import start
from tests.test_e2e_run import tiny_config

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.timeout(120)


async def test_a_port_taken_after_the_starts_check_advertises_no_url(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two runs started together on one nissa.prometheus_port both passed the start's check; the one whose Nissa then
    could not bind printed the URL in its header anyway, advertising the other run's /metrics."""
    monkeypatch.setattr("esper.run_args.check_bindable", lambda *_args: None)  # the other run binds after the check
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        stream = io.StringIO()
        config = tiny_config(tmp_path, epochs=1)
        system = await start(config, tmp_path / "run", [f"nissa.prometheus_port={port}"], progress=stream)
        await system.wait()
    lines = stream.getvalue().splitlines()
    assert not [line for line in lines if line.startswith("  metrics:")]
    assert [line for line in lines if "no metrics" in line and "address already in use" in line.lower()]
    assert system.run_dir == tmp_path / "run"


async def test_a_bound_port_is_shown_once(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    stream = io.StringIO()
    system = await start(
        tiny_config(tmp_path, epochs=1), tmp_path / "run", [f"nissa.prometheus_port={port}"], progress=stream
    )
    await system.wait()
    shown = [line for line in stream.getvalue().splitlines() if line.startswith("  metrics:")]
    assert shown == [f"  metrics:  http://127.0.0.1:{port}/metrics"]
