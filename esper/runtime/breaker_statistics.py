"""The statistics record of a circuit breaker: its state and counters at one instant."""

from __future__ import annotations

from schemas.base import Record
from schemas.enums import BreakerState


class BreakerStatistics(Record, frozen=True):
    """A breaker at one instant. Returned by CircuitBreaker.statistics(), which never blocks or changes state."""

    name: str
    state: BreakerState
    consecutive_failures: int
    half_open_successes: int
    probe_in_flight: bool
    time_until_half_open_s: float
    allowed: int
    refused: int
    successes: int
    failures: int
    times_opened: int
