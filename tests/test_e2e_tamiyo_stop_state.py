"""A run's tamiyo_state.json damaged between sessions: the resume warns and takes the journaled state.

Or it stops in one line when there is none to take (a flipped byte that left valid JSON was the controller's state,
silently)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import pytest

from actors.tamiyo.state_journal import STATE_JOURNAL_FILENAME
from actors.tamiyo.stop_state import read_stop_state
from esper.run import start
from esper.runtime.errors import ConfigError
from tests.test_e2e_run import tiny_config

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.timeout(120)


def _flip_a_byte_in_the_state(path: Path) -> None:
    data = path.read_bytes()
    at = data.index(b'"last_step":') + len(b'"last_step":')  # a digit: still JSON, a state that decodes
    path.write_bytes(data[:at] + (b"1" if data[at : at + 1] != b"1" else b"2") + data[at + 1 :])


async def test_a_damaged_stop_state_resumes_from_the_journal_or_stops_in_one_line(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    assert (await (await start(tiny_config(tmp_path, epochs=2), run_dir)).wait()).status == "completed"
    state_file = run_dir / "checkpoints" / "tamiyo_state.json"
    saved = read_stop_state(state_file)
    assert saved is not None
    _flip_a_byte_in_the_state(state_file)

    resumed = await (await start(tiny_config(tmp_path, epochs=3), resume=run_dir)).wait()
    assert resumed.status == "completed", resumed.error
    lines = [json.loads(line) for line in (run_dir / "events.jsonl").read_text(encoding="utf-8").splitlines()]
    [warning] = [e for e in lines if e["event"] == "tamiyo_state_unreadable"]
    assert warning["level"] == "warning"
    assert "does not match the recorded" in warning["error"]
    # The journal's state after the same epoch-end packet: the state the damaged file held, read from elsewhere.
    [assembled] = [e for e in lines if e["event"] == "run_assembled" and e.get("tamiyo_state") != "fresh"]
    assert (assembled["tamiyo_state"], assembled["tamiyo_state_step"]) == ("journal", saved.last_step)
    assert not [e for e in lines if e["event"] == "tamiyo_state_behind"]

    # The resumed session's stop wrote a good file again; damaged once more, with no journal to fall back on.
    _flip_a_byte_in_the_state(state_file)
    (run_dir / "checkpoints" / STATE_JOURNAL_FILENAME).unlink()
    with pytest.raises(ConfigError) as refused:
        await start(tiny_config(tmp_path, epochs=4), resume=run_dir)
    message = str(refused.value)
    assert "\n" not in message
    assert f"{state_file}: damaged: sha256 " in message
    assert message.endswith("(remove the file to resume with a fresh controller)")
