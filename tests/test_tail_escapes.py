"""Nothing a log line holds reaches the terminal raw: timestamps, keys, values, tracebacks and --state's table."""

from __future__ import annotations

import io
import json
from typing import TYPE_CHECKING

from esper.tail import main
from esper.tail_render import EventFilter, TailSession

if TYPE_CHECKING:
    from pathlib import Path

ESCAPE_LINES = [
    # The kinds of /tmp/sweep_sec/esc.jsonl: an OSC retitle and a screen clear in the timestamp, a colour in a key, a
    # clear and a cursor move in a traceback's line; and what JSON leaves raw in a value (DEL, the C1 CSI, U+2028).
    {"timestamp": "2026-01-01T00:00:00Z\x1b]0;pwned\x07\x1b[2J", "level": "info", "event": "ok", "actor": "a"},
    {"timestamp": "\x1b[2J", "level": "info", "event": "ok", "actor": "a"},
    {"timestamp": "2026-01-01T00:00:00Z", "level": "error", "event": "ok", "actor": "a", "\x1b[31mkey": 1},
    {"timestamp": "2026-01-01T00:00:00Z", "level": "error", "event": "ok", "traceback": "x\n\x1b[2J\x1b[Hfake\tline"},
    {"timestamp": "2026-01-01T00:00:00Z", "level": "info", "event": "ok", "text": "a\x7fb\x9b2Jc\u2028d"},
    {"timestamp": "2026-01-01T00:00:00Z", "level": "info", "event": "ok", "nested": {"k\x9b": ["\x9b31m"]}},
]


def _raw_controls(text: str) -> set[str]:
    return {char for char in text if not char.isprintable() and char != "\n"}


def test_every_field_of_an_event_reaches_the_terminal_escaped() -> None:
    shown = "\n".join(TailSession(event_filter=EventFilter()).feed([json.dumps(r) for r in ESCAPE_LINES[:3]]))
    shown += "\n" + "\n".join(TailSession(event_filter=EventFilter()).feed([json.dumps(r) for r in ESCAPE_LINES[4:]]))
    assert _raw_controls(shown) == set()
    assert shown.startswith("2026-01-01 00:00:00Z\\x1b]0 info")  # the short form cuts it, escaped first
    assert "\n\\x1b[2J info" in shown  # a timestamp of another form is shown whole
    assert "\\x1b[31mkey=1" in shown
    assert "a\\x7fb\\x9b2Jc\\u2028d" in shown
    assert "k\\x9b" in shown
    assert "\\x9b31m" in shown


def test_a_tracebacks_lines_are_escaped_but_keep_their_tabs() -> None:
    (shown,) = TailSession(event_filter=EventFilter()).feed([json.dumps(ESCAPE_LINES[3])])
    assert shown.splitlines()[1:] == ["    x", "    \\x1b[2J\\x1b[Hfake\tline"]
    assert _raw_controls(shown) == {"\t"}


def test_the_state_table_shows_an_actors_name_and_timestamp_escaped(tmp_path: Path) -> None:
    fields = {"status": "running", "mailbox_depth": 0, "mailbox_capacity": 8, "handled": 1, "failed": 0, "restarts": 0}
    records = [
        {"timestamp": "\x1b]0;t\x07", "level": "info", "event": "actor_state", "actor": "u\x1b[2Jrza", **fields},
        {"timestamp": "2026-01-01T00:00:00\x9b2J", "level": "info", "event": "actor_state", "actor": "k", **fields},
    ]
    path = tmp_path / "events.jsonl"
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    out, err = io.StringIO(), io.StringIO()
    assert main([str(path), "--state", "--color", "never"], out=out, err=err) == 0
    table = out.getvalue()
    assert _raw_controls(table) == set()
    assert "u\\x1b[2Jrza" in table
    assert "\\x9b2J" in table
