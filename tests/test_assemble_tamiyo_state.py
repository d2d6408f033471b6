"""Tamiyo's saved stop state on --resume: an unreadable tamiyo_state.json is a warning, and the journaled state (the
one a kill leaves) is used instead; it used to end the resume with a traceback."""

from __future__ import annotations

from typing import TYPE_CHECKING

from structlog.testing import capture_logs

from esper.assemble import TAMIYO_STATE_FILE, _load_tamiyo_state

if TYPE_CHECKING:
    from pathlib import Path


def test_an_unreadable_stop_state_is_a_warning_and_no_state(tmp_path: Path) -> None:
    path = tmp_path / TAMIYO_STATE_FILE
    assert _load_tamiyo_state(path) is None  # absent: nothing to say
    path.write_text('{"broken', encoding="utf-8")
    with capture_logs() as logs:
        assert _load_tamiyo_state(path) is None
    expected = [("tamiyo_state_unreadable", "warning", str(path))]
    assert [(e["event"], e["log_level"], e["file"]) for e in logs] == expected
    assert "DecodeError" in logs[0]["error"]
