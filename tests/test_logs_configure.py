"""configure_logging: one JSON object per flushed line with the required keys, contextvars, levels, console, close."""

from __future__ import annotations

import io
import json
import re
from typing import TYPE_CHECKING

import pytest

from esper.log_events import StructlogSink, log_actor_state
from esper.log_levels import parse_level
from esper.logs import (
    LoggingHandle,
    bind_log_context,
    configure_logging,
    get_logger,
    log_context,
    reset_logging,
)
from schemas.domain_enums import TelemetryLevel
from schemas.enums import ActorStatus
from schemas.runtime import ActorState
from schemas.telemetry import TelemetryEvent

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

ISO_UTC = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z")


@pytest.fixture
def console() -> io.StringIO:
    return io.StringIO()


@pytest.fixture
def handle(tmp_path: Path, console: io.StringIO) -> Iterator[LoggingHandle]:
    logging = configure_logging(tmp_path / "run", level="debug", console_level="warning", console_stream=console)
    try:
        yield logging
    finally:
        logging.close()
        reset_logging()


def read_lines(handle: LoggingHandle) -> list[dict[str, object]]:
    assert handle.json_path is not None
    lines = handle.json_path.read_text().splitlines()
    objects = [json.loads(line) for line in lines]
    assert all(isinstance(obj, dict) for obj in objects)
    return objects


def test_every_line_is_one_object_with_timestamp_level_event(handle: LoggingHandle) -> None:
    log = get_logger()
    log.info("first", x=1)
    log.debug("second", path=handle.json_path)  # a value msgspec cannot encode is written as str()
    log.warning("third", items=[1, 2], nested={"a": None})
    lines = read_lines(handle)  # read before close(): every line is already flushed
    assert [line["event"] for line in lines] == ["first", "second", "third"]
    assert [line["level"] for line in lines] == ["info", "debug", "warning"]
    for line in lines:
        assert isinstance(line["timestamp"], str)
        assert ISO_UTC.fullmatch(line["timestamp"])
        assert list(line)[:3] == ["timestamp", "level", "event"]
    assert lines[1]["path"] == str(handle.json_path)
    assert lines[2]["items"] == [1, 2]
    assert lines[2]["nested"] == {"a": None}


def test_context_is_bound_through_contextvars(handle: LoggingHandle) -> None:
    log = get_logger()
    bind_log_context(run_id="run-7")
    with log_context(actor="tolaria", step=12):
        log.info("inside")
        log.info("explicit_actor_wins", actor="kasmina")
    log.info("outside")
    inside, explicit, outside = read_lines(handle)
    assert (inside["actor"], inside["run_id"], inside["step"]) == ("tolaria", "run-7", 12)
    assert list(inside)[:6] == ["timestamp", "level", "event", "actor", "run_id", "step"]
    assert explicit["actor"] == "kasmina"
    assert "actor" not in outside
    assert outside["run_id"] == "run-7"


def test_exceptions_are_written_as_text(handle: LoggingHandle) -> None:
    log = get_logger()
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        log.exception("failed")
    (line,) = read_lines(handle)
    assert line["level"] == "error"
    assert isinstance(line["exception"], str)
    assert "RuntimeError: boom" in line["exception"]
    assert "exc_info" not in line


def test_console_has_its_own_level(handle: LoggingHandle, console: io.StringIO) -> None:
    log = get_logger()
    log.info("quiet_on_console")
    log.error("loud_on_console", actor="urza")
    text = console.getvalue()
    assert "loud_on_console" in text
    assert "urza" in text
    assert "quiet_on_console" not in text
    assert "\x1b[" not in text  # a StringIO is not a terminal: no colour
    assert [line["event"] for line in read_lines(handle)] == ["quiet_on_console", "loud_on_console"]


def test_level_filters_the_file_too(tmp_path: Path) -> None:
    logging = configure_logging(tmp_path, level="warning", console=False)
    try:
        log = get_logger()
        log.info("dropped")
        log.warning("kept")
        log.critical("kept_too")
        assert [line["event"] for line in read_lines(logging)] == ["kept", "kept_too"]
    finally:
        logging.close()
        reset_logging()


def test_a_level_above_info_keeps_the_records_a_run_reads_back(tmp_path: Path) -> None:
    """At logging.level = "warning" the file lost every epoch_end, decision and lifecycle line: a resumed run's
    summary dropped the earlier sessions and esper.report drew no seed. The records stay; the level filters the rest,
    on the console too."""
    console = io.StringIO()
    logging = configure_logging(tmp_path, level="warning", console_stream=console)
    try:
        log = get_logger()
        log.info("epoch_end", epoch=1)
        log.info("tamiyo_decision", step=4)
        log.info("seed_stage_changed", slot="s", to_stage="TRAINING")
        log.info("telemetry_event", name="seed_op_retried")
        log.info("telemetry_event", name="alert_fired")  # an L1 alert's, which a resume's summary counts
        log.info("telemetry_event", name="seed_transition")  # not read back: filtered as before
        log.info("actor_started")
        log.debug("run_finished")  # below info: no record is logged there, and the floor stays at info
        log.warning("kept")
        assert [(line["event"], line.get("name")) for line in read_lines(logging)] == [
            ("epoch_end", None),
            ("tamiyo_decision", None),
            ("seed_stage_changed", None),
            ("telemetry_event", "seed_op_retried"),
            ("telemetry_event", "alert_fired"),
            ("kept", None),
        ]
        shown = console.getvalue()
        assert "kept" in shown
        assert "epoch_end" not in shown
        assert "tamiyo_decision" not in shown
    finally:
        logging.close()
        reset_logging()


def test_a_level_above_info_keeps_where_the_metrics_endpoint_listens(tmp_path: Path) -> None:
    """At logging.level = "warning" events.jsonl had no metrics_endpoint_listening line, though README says the file
    tells where the endpoint is (its port may be any, or another after a restart: metrics_endpoint_moved)."""
    logging = configure_logging(tmp_path, level="warning", console_stream=io.StringIO())
    try:
        sink = StructlogSink(get_logger())
        url = "http://127.0.0.1:9555/metrics"
        sink.emit(TelemetryEvent(name="metrics_endpoint_listening", level=TelemetryLevel.INFO, attributes={"url": url}))
        sink.emit(TelemetryEvent(name="metrics_endpoint_moved", level=TelemetryLevel.WARNING))
        sink.emit(TelemetryEvent(name="seed_transition", level=TelemetryLevel.INFO))  # not a record: filtered
        names = [line.get("name") for line in read_lines(logging)]
        assert names == ["metrics_endpoint_listening", "metrics_endpoint_moved"]
    finally:
        logging.close()
        reset_logging()


def test_a_level_above_warning_keeps_the_rollbacks_the_report_draws(tmp_path: Path) -> None:
    """report.png draws each rollback where it went back to, from its tolaria_rolled_back warning: at
    logging.level = "error" the file had none."""
    logging = configure_logging(tmp_path, level="error", console_stream=io.StringIO())
    try:
        log = get_logger()
        log.warning("tolaria_rolled_back", reason="failed epoch: hook_budget", step=440, rollbacks=1)
        log.warning("epoch_failed", action="rollback", epoch=23)  # not read back: filtered as before
        assert [line["event"] for line in read_lines(logging)] == ["tolaria_rolled_back"]
    finally:
        logging.close()
        reset_logging()


def test_close_stops_file_writes_and_is_idempotent(tmp_path: Path) -> None:
    console = io.StringIO()
    logging = configure_logging(tmp_path, console_stream=console, json_file="custom.jsonl")
    try:
        assert logging.json_path == tmp_path / "custom.jsonl"
        get_logger().info("before")
        logging.close()
        logging.close()
        get_logger().info("after")
        assert [line["event"] for line in read_lines(logging)] == ["before"]
        assert "after" in console.getvalue()
    finally:
        reset_logging()


def test_without_run_dir_only_the_console_is_written(console: io.StringIO) -> None:
    logging = configure_logging(None, console_stream=console)
    try:
        assert logging.json_path is None
        get_logger().info("console_only", k="v")
        assert "console_only" in console.getvalue()
    finally:
        logging.close()
        reset_logging()


def test_bad_level_names_the_parameter(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="level must be one of"):
        configure_logging(tmp_path, level="loud")
    with pytest.raises(ValueError, match="console_level must be one of"):
        configure_logging(tmp_path, console_level="verbose")
    assert parse_level("WARN") == "warning"
    assert parse_level(" Error ") == "error"


def test_console_may_show_more_than_the_file(tmp_path: Path) -> None:
    console = io.StringIO()
    logging = configure_logging(tmp_path, level="warning", console_level="debug", console_stream=console)
    try:
        get_logger().debug("console_only_detail")
        get_logger().error("both")
        assert "console_only_detail" in console.getvalue()
        assert [line["event"] for line in read_lines(logging)] == ["both"]
    finally:
        logging.close()
        reset_logging()


def test_the_console_leaves_out_the_events_another_view_shows_and_the_file_keeps_them(tmp_path: Path) -> None:
    console = io.StringIO()
    logging = configure_logging(tmp_path, level="info", console_stream=console, console_omit=("telemetry_event",))
    try:
        get_logger().warning("telemetry_event", name="loss_spike")
        get_logger().warning("other_warning")
        assert "telemetry_event" not in console.getvalue()
        assert "other_warning" in console.getvalue()
        assert [line["event"] for line in read_lines(logging)] == ["telemetry_event", "other_warning"]
    finally:
        logging.close()
        reset_logging()


def test_each_runs_file_stamps_its_own_run_id_on_every_line(tmp_path: Path, console: io.StringIO) -> None:
    """run_id was only on the lines that passed it (telemetry_event, run_starting, emergency_signal): epoch_end,
    actor_state, checkpoint_written ... had none, so several runs' logs merged could not be told apart. Two runs in
    turn in one process, with one module-level logger: each file's lines carry that run's id; an event naming its own
    run keeps it, and the console shows no id per line."""
    log = get_logger()
    for run_id in ("run-a", "run-b"):
        handle = configure_logging(tmp_path / run_id, console_stream=console, run_id=run_id)
        try:
            log.info("epoch_end", epoch=1)
            log_actor_state(
                log,
                ActorState(
                    actor="nissa",
                    status=ActorStatus.RUNNING,
                    mailbox_depth=0,
                    mailbox_capacity=8,
                    handled=1,
                    failed=0,
                    restarts=0,
                ),
            )
            StructlogSink(log).emit(TelemetryEvent(name="alert_fired", level=TelemetryLevel.INFO))
            log.info("foreign", run_id="fault-injection")
            lines = read_lines(handle)
        finally:
            handle.release()
        assert [line["run_id"] for line in lines] == [run_id, run_id, run_id, "fault-injection"]
        assert list(lines[0])[:4] == ["timestamp", "level", "event", "run_id"]
        assert list(lines[1])[:5] == ["timestamp", "level", "event", "actor", "run_id"]
    assert "run-a" not in console.getvalue()
