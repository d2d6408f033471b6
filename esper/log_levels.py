"""Log levels and the record events: what a run reads back from its own log whatever the level filters."""

from __future__ import annotations

from typing import TYPE_CHECKING, Final, Literal

from schemas.nissa import SEED_STAGE_EVENT_NAMES

if TYPE_CHECKING:
    from structlog.typing import EventDict


LogLevel = Literal["debug", "info", "warning", "error", "critical"]

LEVEL_NUMBERS: Final[dict[LogLevel, int]] = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}
"""Numeric rank of each level, the same numbers as the stdlib's logging module."""

RESERVED_KEYS: Final = frozenset({"timestamp", "level", "event"})
"""Keys the pipeline owns; a message field with one of these names is logged as ``msg_<name>``."""

RECORD_EVENTS: Final = frozenset(
    {
        *SEED_STAGE_EVENT_NAMES,
        "command_result",  # a pause or resume the report draws
        "tamiyo_decision",
        "emergency_signal",
        "lifecycle_restored",
        "tolaria_rolled_back",  # where a rollback went back to: report.png draws it
        "epoch_end",
        "run_starting",
        "run_started",
        "run_finished",
        "training_finished",
    }
)
"""The events a run reads back from its own log (a --resume's summary of the earlier sessions, ``esper.report``, the
run's id and an L4 halt's reason): events.jsonl gets them whatever ``logging.level`` says, which filters the rest."""

# Where a refused stage change took effect, and the alerts that fired (a resume's summary counts every session's; an
# alert at L1 is logged at info); and where the metrics endpoint listens (README: events.jsonl says so, for any port).
_RECORD_TELEMETRY: Final = frozenset(
    {"seed_op_failed", "seed_op_retried", "alert_fired", "metrics_endpoint_listening", "metrics_endpoint_moved"}
)


def is_record(event_dict: EventDict) -> bool:
    """Whether the event is one a run reads back from its log (RECORD_EVENTS, the stage ops' and alerts' telemetry)."""
    event = event_dict.get("event")
    if event == "telemetry_event":
        return event_dict.get("name") in _RECORD_TELEMETRY
    return event in RECORD_EVENTS


def parse_level(level: str, *, parameter: str = "level") -> LogLevel:
    """The LogLevel named by ``level`` (case-insensitive; ``warn`` means warning).

    Raises:
        ValueError: the name is not a level; the message names ``parameter``.
    """
    name = level.strip().lower()
    if name == "warn":
        name = "warning"
    for known in LEVEL_NUMBERS:
        if known == name:
            return known
    raise ValueError(f"{parameter} must be one of {', '.join(LEVEL_NUMBERS)}, got {level!r}")
