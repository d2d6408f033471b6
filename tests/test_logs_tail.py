"""The tail's pure part: malformed lines counted and skipped, filters, rendering, and the --state table."""

from __future__ import annotations

import io
import json
from typing import TYPE_CHECKING

import pytest

from esper.tail import main
from esper.tail_render import (
    ActorStateTable,
    EventFilter,
    LogEvent,
    TailSession,
    parse_actor_state,
    parse_line,
    render_event,
)
from schemas.enums import ActorStatus, BreakerState

if TYPE_CHECKING:
    from pathlib import Path


def line(event: str, *, level: str = "info", actor: str | None = None, ts: str = "12:00:00", **fields: object) -> str:
    record: dict[str, object] = {"timestamp": f"2026-01-02T{ts}.123456Z", "level": level, "event": event}
    if actor is not None:
        record["actor"] = actor
    record.update(fields)
    return json.dumps(record)


def state_line(actor: str, *, ts: str = "12:00:00", **overrides: object) -> str:
    fields: dict[str, object] = {
        "status": "running",
        "mailbox_depth": 0,
        "mailbox_capacity": 64,
        "handled": 0,
        "failed": 0,
        "restarts": 0,
        "breaker": None,
        "last_latency_ms": None,
    }
    fields.update(overrides)
    record: dict[str, object] = {"timestamp": f"2026-01-02T{ts}.123456Z", "level": "info", "event": "actor_state"}
    return json.dumps({**record, "actor": actor, **fields})


MALFORMED = [
    "not json at all",
    "[1, 2, 3]",
    '"a string"',
    "",
    json.dumps({"level": "info", "event": "no_timestamp"}),
    json.dumps({"timestamp": "2026-01-02T12:00:00Z", "event": "no_level"}),
    json.dumps({"timestamp": "2026-01-02T12:00:00Z", "level": "info"}),
    json.dumps({"timestamp": "2026-01-02T12:00:00Z", "level": "shouting", "event": "bad_level"}),
    json.dumps({"timestamp": 5, "level": "info", "event": "number_timestamp"}),
    json.dumps({"timestamp": "2026-01-02T12:00:00Z", "level": "info", "event": "x", "actor": 3}),
    '{"timestamp": "2026-01-02T12:00:00Z", "level": "inf',
]


@pytest.mark.parametrize("text", MALFORMED)
def test_malformed_lines_parse_to_none(text: str) -> None:
    assert parse_line(text) is None


def test_parse_keeps_fields_in_order() -> None:
    event = parse_line(line("step", level="WARNING", actor="tolaria", loss=0.5, note="a b"))
    assert event == LogEvent(
        timestamp="2026-01-02T12:00:00.123456Z",
        level="warning",
        event="step",
        actor="tolaria",
        fields={"loss": 0.5, "note": "a b"},
    )


def test_malformed_lines_are_counted_and_skipped_and_valid_ones_shown() -> None:
    session = TailSession(event_filter=EventFilter())
    lines = [line("first", actor="urza"), *MALFORMED, line("second", k="v")]
    shown = session.feed(lines)
    assert session.malformed == len(MALFORMED)
    assert len(shown) == 2
    assert "first" in shown[0]
    assert "urza" in shown[0]
    assert "second" in shown[1]
    assert session.summary() == f"esper.tail: {len(MALFORMED)} malformed lines skipped"


def test_render_shows_time_level_actor_event_and_pairs() -> None:
    event = parse_line(line("kernel_ready", actor="urza", sha="ab12", note="two words", n=3, flag=True, none=None))
    assert event is not None
    text = TailSession(event_filter=EventFilter()).feed([line("x")])[0]
    assert text.startswith("2026-01-02 12:00:00.123Z info")
    rendered = render_event(event)
    assert rendered.split()[:5] == ["2026-01-02", "12:00:00.123Z", "info", "urza", "kernel_ready"]
    assert 'sha=ab12 note="two words" n=3 flag=true none=null' in rendered
    assert "\x1b[" not in rendered
    assert "\x1b[" in render_event(event, color=True)


def test_a_runs_id_is_shown_on_its_first_line_and_again_only_when_it_changes() -> None:
    session = TailSession(event_filter=EventFilter())
    lines = [
        line("started", run_id="aaaa1111", k=1),
        line("epoch_end", run_id="aaaa1111", k=2),
        line("other_run", run_id="bbbb2222"),
        line("no_id"),
        line("back", run_id="bbbb2222"),
    ]
    shown = session.feed(lines)
    assert ["run_id=" in text for text in shown] == [True, False, True, False, True]
    assert "run_id=aaaa1111 k=1" in shown[0]
    assert shown[1].endswith("epoch_end k=2")
    assert "run_id=bbbb2222" in shown[2]


def test_control_characters_in_an_event_or_actor_name_reach_the_terminal_escaped() -> None:
    """A log line's event name went raw to the terminal: ESC and OSC sequences could recolour or retitle it."""
    event = parse_line(line("x\x1b[31mRED\x1b]0;title\x07", actor="ur\x1bza"))
    assert event is not None
    rendered = render_event(event)
    assert "\x1b" not in rendered
    assert "\x07" not in rendered
    assert "x\\x1b[31mRED\\x1b]0;title\\x07" in rendered
    assert "ur\\x1bza" in rendered


def test_exception_field_is_shown_indented_below() -> None:
    event = parse_line(line("failed", level="error", exception="Traceback:\n  frame\nValueError: x"))
    assert event is not None
    assert render_event(event).splitlines()[1:] == ["    Traceback:", "      frame", "    ValueError: x"]


def test_filter_by_actor_and_minimum_level() -> None:
    lines = [
        line("a", level="debug", actor="tolaria"),
        line("b", level="info", actor="tolaria"),
        line("c", level="warning", actor="kasmina"),
        line("d", level="error", actor="tolaria"),
        line("e", level="critical"),
    ]

    def shown(event_filter: EventFilter) -> list[str]:
        return [text.split()[4] for text in TailSession(event_filter=event_filter).feed(lines)]

    assert shown(EventFilter()) == ["a", "b", "c", "d", "e"]
    assert shown(EventFilter(actor="tolaria")) == ["a", "b", "d"]
    assert shown(EventFilter(min_level="warning")) == ["c", "d", "e"]
    assert shown(EventFilter(actor="tolaria", min_level="info")) == ["b", "d"]


def test_the_actor_filter_keeps_its_failures_and_restarts() -> None:
    """The supervisor logs them with ``child=``, not ``actor=``: ``--actor tamiyo`` hid that tamiyo crashed."""
    lines = [
        line("child_failed", level="warning", supervisor="root", child="tamiyo", error_type="ValueError"),
        line("child_restarted", supervisor="root", child="tamiyo", restarts=1),
        line("child_restarted", supervisor="root", child="tolaria", restarts=1),
        line("tamiyo_decision", actor="tamiyo"),
    ]
    shown = [text.split()[4] for text in TailSession(event_filter=EventFilter(actor="tamiyo")).feed(lines)]
    assert shown == ["child_failed", "child_restarted", "tamiyo_decision"]


def test_state_table_keeps_the_latest_state_per_actor() -> None:
    session = TailSession(event_filter=EventFilter(), state=True)
    shown = session.feed(
        [
            state_line("tolaria", ts="12:00:00", handled=10, mailbox_depth=5),
            line("unrelated", actor="tolaria"),
            state_line("kasmina", ts="12:00:01", handled=3, breaker="open", last_latency_ms=2.5),
            state_line("tolaria", ts="12:00:02", handled=42, mailbox_depth=1, restarts=2, last_latency_ms=12.25),
            "garbage",
            line("actor_state", actor="urza", status="running"),  # missing the counters: malformed
        ]
    )
    assert shown == []
    assert session.malformed == 2
    tolaria = session.table.latest("tolaria")
    assert tolaria is not None
    assert (tolaria.handled, tolaria.mailbox_depth, tolaria.restarts, tolaria.last_latency_ms) == (42, 1, 2, 12.25)
    kasmina = session.table.latest("kasmina")
    assert kasmina is not None
    assert kasmina.breaker is BreakerState.OPEN
    assert session.table.latest("urza") is None

    header, first, second, footer = session.render_state().splitlines()
    assert header.split() == [
        "actor",
        "status",
        "mailbox",
        "handled",
        "failed",
        "restarts",
        "breaker",
        "latency_ms",
        "updated",
    ]
    assert first.split() == ["kasmina", "running", "0/64", "3", "0", "0", "open", "2.50", "12:00:01.123Z"]
    assert second.split() == ["tolaria", "running", "1/64", "42", "0", "2", "-", "12.25", "12:00:02.123Z"]
    assert footer == "2 actors, 2 malformed lines skipped"


def test_state_table_respects_the_actor_filter_and_starts_empty() -> None:
    session = TailSession(event_filter=EventFilter(actor="kasmina", min_level="critical"), state=True)
    assert session.render_state().splitlines()[-2:] == [
        "(no actor_state events yet)",
        "0 actors, 0 malformed lines skipped",
    ]
    session.feed([state_line("tolaria"), state_line("kasmina", status="failed")])
    assert len(session.table) == 1
    kasmina = session.table.latest("kasmina")
    assert kasmina is not None
    assert kasmina.status is ActorStatus.FAILED


def test_parse_actor_state_ignores_context_keys() -> None:
    event = parse_line(state_line("simic", run_id="r9", step=4, handled=7))
    assert event is not None
    state = parse_actor_state(event)
    assert state is not None
    assert (state.actor, state.handled) == ("simic", 7)


def test_table_render_is_plain_without_colour() -> None:
    table = ActorStateTable()
    assert "\x1b[" not in table.render()


def test_main_prints_filtered_events_and_reports_malformed(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join([line("keep", level="error", actor="urza"), "junk", line("drop", actor="urza")]) + "\n")
    out, err = io.StringIO(), io.StringIO()
    assert main([str(path), "--level", "WARNING", "--color", "never"], out=out, err=err) == 0
    assert out.getvalue().count("\n") == 1
    assert "keep" in out.getvalue()
    assert err.getvalue() == "esper.tail: 1 malformed line skipped\n"


def test_main_state_reads_a_run_directory_and_the_last_line_without_newline(tmp_path: Path) -> None:
    (tmp_path / "events.jsonl").write_text(state_line("tolaria", handled=1) + "\n" + state_line("tolaria", handled=9))
    out, err = io.StringIO(), io.StringIO()
    assert main([str(tmp_path), "--state"], out=out, err=err) == 0
    rows = out.getvalue().splitlines()
    assert rows[1].split()[:4] == ["tolaria", "running", "0/64", "9"]
    assert rows[-1] == "1 actor, 0 malformed lines skipped"
    assert err.getvalue() == ""


def test_main_missing_file_is_one_line_and_exit_2(tmp_path: Path) -> None:
    out, err = io.StringIO(), io.StringIO()
    assert main([str(tmp_path / "nope.jsonl")], out=out, err=err) == 2
    assert err.getvalue() == f"esper.tail: no such file: {tmp_path / 'nope.jsonl'}\n"
    assert out.getvalue() == ""


def test_help_documents_every_option(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for option in ("--follow", "--actor", "--level", "--state", "--color", "--interval", "path"):
        assert option in text
