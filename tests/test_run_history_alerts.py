"""A resumed run's summary counts the alerts every session fired, not only its own."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from esper.run_history import earlier_tally
from esper.run_tally import RunTally
from schemas.config import RunConfig
from schemas.domain_enums import TelemetryLevel
from schemas.telemetry import TelemetryEvent

if TYPE_CHECKING:
    from pathlib import Path


def _fired(rule: str) -> dict[str, object]:
    return {"event": "telemetry_event", "name": "alert_fired", "attributes": {"rule": rule, "value": 20.0}}


def _two_sessions(tmp_path: Path) -> Path:
    """Two sessions' events.jsonl, each firing alerts (and clearing one, which is no firing)."""
    lines: list[object] = [
        {"event": "run_started", "run_id": "r"},
        _fired("training_latency_high"),
        {"event": "telemetry_event", "name": "alert_cleared", "attributes": {"rule": "training_latency_high"}},
        _fired("training_latency_high"),
        {"event": "epoch_end", "step": 20, "epoch": 1, "val_acc": 0.5},
        {"event": "run_finished", "status": "interrupted"},
        {"event": "run_started", "run_id": "r"},
        _fired("oona_queue_depth"),
        {"event": "telemetry_event", "name": "alert_fired", "attributes": {"rule": 7}},  # no rule: not counted
        {"event": "telemetry_event", "name": "alert_fired"},
        _fired("training_latency_high"),
    ]
    text = "".join(json.dumps(line) + "\n" for line in lines) + '{"event": "telemetry_event", "name": "alert_f'
    (tmp_path / "events.jsonl").write_text(text, encoding="utf-8")
    return tmp_path


def test_every_earlier_sessions_alert_firings_are_read_back(tmp_path: Path) -> None:
    before = earlier_tally(_two_sessions(tmp_path), RunConfig())
    assert before.alerts_fired == ("training_latency_high", "training_latency_high", "oona_queue_depth",
                                   "training_latency_high")  # fmt: skip


def test_the_resumed_sessions_firings_add_to_the_earlier_ones(tmp_path: Path) -> None:
    """summary.json's alerts_fired counted the last session's firings alone after a --resume."""
    before = earlier_tally(_two_sessions(tmp_path), RunConfig())
    tally = RunTally()
    tally.preload(before.stages, before.epochs, before.decisions, alerts_fired=before.alerts_fired)
    tally.emit(
        TelemetryEvent(name="alert_fired", level=TelemetryLevel.WARNING, attributes={"rule": "oona_queue_depth"})
    )
    assert tally.alerts_fired == {"training_latency_high": 3, "oona_queue_depth": 2}
