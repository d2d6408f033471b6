"""Tamiyo's own messages: the statistics query and its reply."""

from __future__ import annotations

from msgspec import field

from schemas.base import Message
from schemas.constraints import NonNegFloat, NonNegInt
from schemas.enums import BreakerState


class GetTamiyoStatistics(Message, frozen=True):
    """Ask Tamiyo for its counters (answered with TamiyoStatistics carrying the same ``request_id``)."""

    request_id: str = ""


class GetTamiyoState(Message, frozen=True):
    """Ask Tamiyo for its controller state (for a checkpoint); answered with the actor's TamiyoState record."""

    request_id: str = ""


class TamiyoStatistics(Message, frozen=True):
    """Tamiyo's counters at one instant.

    ``decisions_by_action`` counts final decisions (after the risk engine) by PolicyAction value, NO_OP included.
    ``fallbacks`` counts decisions the fallback policy made because the configured one overran its deadline, failed
    or was refused by its open breaker; ``timeouts`` counts the overruns alone. Latency percentiles (nearest rank,
    milliseconds of the monotonic clock, from packet handling to the decision) cover the last ``latency_window``
    decisions; None before the first.
    """

    policy: str
    policy_version: str
    decisions: NonNegInt
    inference_breaker: BreakerState
    request_id: str = ""
    decisions_by_action: dict[str, int] = field(default_factory=dict)
    fallbacks: NonNegInt = 0
    timeouts: NonNegInt = 0
    inference_failures: NonNegInt = 0
    inference_skipped: NonNegInt = 0
    vetoes: NonNegInt = 0
    downgrades: NonNegInt = 0
    breaker_opened: NonNegInt = 0
    conservative: bool = False
    latency_window: NonNegInt = 0
    latency_p50_ms: NonNegFloat | None = None
    latency_p95_ms: NonNegFloat | None = None
    field_reports: NonNegInt = 0
    pending_outcomes: NonNegInt = 0
