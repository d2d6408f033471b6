"""A clock-injected circuit breaker: closed, open, half-open, with every transition emitted as an event."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, TypeVar, TypeVarTuple, final

from esper.runtime.breaker_guard import BreakerGuard
from esper.runtime.breaker_statistics import BreakerStatistics
from esper.runtime.errors import BreakerOpen, ProbeDeadlineExceeded
from schemas.config import BreakerConfig
from schemas.enums import BreakerState
from schemas.runtime import BreakerTransition

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from esper.runtime.clock import Clock
    from esper.runtime.events import EventSink

T = TypeVar("T")
Ts = TypeVarTuple("Ts")

DEADLINE_EXCEEDED = "deadline_exceeded"
PROBE_DEADLINE_EXCEEDED = "probe_deadline_exceeded"

_CLOSED = BreakerState.CLOSED
_OPEN = BreakerState.OPEN
_HALF_OPEN = BreakerState.HALF_OPEN


@final
class CircuitBreaker:
    """Closed / open / half-open breaker; a pure, synchronous state machine that reads time from a clock.

    CLOSED counts consecutive failures (a deadline overrun is a failure); ``failure_threshold`` of them open it.
    OPEN refuses every call for ``open_s`` seconds; the move to HALF_OPEN happens at the first ``allow()`` after that
    (no timers). HALF_OPEN admits exactly one probe at a time and refuses everyone else; ``success_threshold``
    probe successes close it, one failure reopens it. A probe that reports nothing within ``probe_deadline_s`` is
    counted as failed the next time anyone asks, so a hung probe never wedges the breaker; ``call()`` also cancels it.

    Every state change, forced ones and each half-open probe success included, is emitted to the sink as a
    BreakerTransition. Event-loop thread only (or any single thread): it holds no lock.

    Two ways to use it:
      - bare: ``if breaker.allow(): ...`` (or ``acquire()``, which raises BreakerOpen), then ``record_success()`` or
        ``record_failure(reason)`` / ``record_deadline_overrun()``;
      - wrapped: ``await breaker.call(fn, *args)`` or ``async with breaker.guard(): ...`` (also a plain ``with``),
        which record the outcome themselves and ignore an outcome that arrives after the state has moved on.
    """

    __slots__ = (
        "_allowed",
        "_clock",
        "_failure_threshold",
        "_failures",
        "_generation",
        "_half_open_successes",
        "_name",
        "_open_s",
        "_opened_at_s",
        "_probe_deadline_s",
        "_probe_in_flight",
        "_probe_started_s",
        "_refused",
        "_sink",
        "_state",
        "_success_threshold",
        "_successes",
        "_times_opened",
        "_total_failures",
    )

    def __init__(
        self,
        name: str,
        *,
        clock: Clock,
        sink: EventSink,
        failure_threshold: int = 3,
        open_s: float = 30.0,
        success_threshold: int = 2,
        probe_deadline_s: float = 5.0,
    ) -> None:
        """Build a closed breaker.

        Args:
            name: reported in every event and error (usually the owning actor and dependency).
            clock: source of time, in seconds.
            sink: receives a BreakerTransition for every state change; must not block.
            failure_threshold: consecutive failures that open the breaker (>= 1).
            open_s: seconds the breaker stays open before admitting a probe (>= 0).
            success_threshold: half-open probe successes that close it (>= 1).
            probe_deadline_s: seconds a half-open probe may run before it counts as failed (> 0).

        Raises:
            ValueError: a threshold or duration is out of range.
        """
        if failure_threshold < 1:
            raise ValueError(f"failure_threshold must be >= 1, got {failure_threshold}")
        if success_threshold < 1:
            raise ValueError(f"success_threshold must be >= 1, got {success_threshold}")
        if open_s < 0:
            raise ValueError(f"open_s must be >= 0, got {open_s}")
        if probe_deadline_s <= 0:
            raise ValueError(f"probe_deadline_s must be > 0, got {probe_deadline_s}")
        self._name = name
        self._clock = clock
        self._sink = sink
        self._failure_threshold = failure_threshold
        self._open_s = open_s
        self._success_threshold = success_threshold
        self._probe_deadline_s = probe_deadline_s
        self._state = _CLOSED
        # Bumped on every transition; wrapped calls remember it so a late outcome from an older state is ignored.
        self._generation = 0
        self._failures = 0
        self._half_open_successes = 0
        self._opened_at_s = 0.0
        self._probe_in_flight = False
        self._probe_started_s = 0.0
        self._allowed = 0
        self._refused = 0
        self._successes = 0
        self._total_failures = 0
        self._times_opened = 0

    @classmethod
    def configured(cls, name: str, config: BreakerConfig | None, *, clock: Clock, sink: EventSink) -> CircuitBreaker:
        """A breaker with a config section's thresholds (``[...breaker]`` tables); None: the defaults."""
        cfg = config if config is not None else BreakerConfig()
        return cls(
            name,
            clock=clock,
            sink=sink,
            failure_threshold=cfg.failure_threshold,
            open_s=cfg.open_s,
            success_threshold=cfg.success_threshold,
        )

    # ------------------------------------------------------------------ queries

    @property
    def name(self) -> str:
        return self._name

    @property
    def state(self) -> BreakerState:
        """The recorded state. An OPEN breaker whose open time has elapsed turns HALF_OPEN at the next allow()."""
        return self._state

    @property
    def probe_deadline_s(self) -> float:
        return self._probe_deadline_s

    def time_until_half_open_s(self) -> float:
        """Seconds until an open breaker admits a probe; 0.0 when it is not open or already may."""
        if self._state is not _OPEN:
            return 0.0
        return max(0.0, self._opened_at_s + self._open_s - self._clock.now())

    def statistics(self) -> BreakerStatistics:
        """A snapshot of state and counters; never blocks, never changes state."""
        return BreakerStatistics(
            name=self._name,
            state=self._state,
            consecutive_failures=self._failures,
            half_open_successes=self._half_open_successes,
            probe_in_flight=self._probe_in_flight,
            time_until_half_open_s=self.time_until_half_open_s(),
            allowed=self._allowed,
            refused=self._refused,
            successes=self._successes,
            failures=self._total_failures,
            times_opened=self._times_opened,
        )

    # ------------------------------------------------------------------ admission

    def allow(self) -> bool:
        """Whether a call may go ahead now. In HALF_OPEN a True makes the caller the probe, who must report back."""
        state = self._state
        if state is _CLOSED:
            self._allowed += 1
            return True
        now = self._clock.now()
        if state is _OPEN:
            if now - self._opened_at_s < self._open_s:
                self._refused += 1
                return False
            self._transition(_HALF_OPEN, "open_elapsed", now)
        elif self._probe_in_flight:
            if now - self._probe_started_s < self._probe_deadline_s:
                self._refused += 1
                return False
            self._expire_probe(now)
            self._refused += 1
            return False
        self._probe_in_flight = True
        self._probe_started_s = now
        self._allowed += 1
        return True

    def acquire(self) -> None:
        """Like allow(), but raises instead of returning False.

        Raises:
            BreakerOpen: the breaker is open, or half-open with its probe already in flight.
        """
        if not self.allow():
            raise BreakerOpen(self._refusal_message())

    # ------------------------------------------------------------------ outcomes

    def record_success(self) -> None:
        """Report a successful call. Closed: clears the failure streak. Half-open: counts the probe's success."""
        self._successes += 1
        state = self._state
        if state is _CLOSED:
            self._failures = 0
        elif state is _HALF_OPEN and self._probe_in_flight:
            self._probe_in_flight = False
            self._half_open_successes += 1
            now = self._clock.now()
            if self._half_open_successes >= self._success_threshold:
                self._transition(_CLOSED, f"probe_succeeded {self._half_open_successes}/{self._success_threshold}", now)
            else:
                self._transition(
                    _HALF_OPEN, f"probe_succeeded {self._half_open_successes}/{self._success_threshold}", now
                )
        # OPEN, or HALF_OPEN without a probe: a late result from before the breaker opened proves nothing.

    def record_failure(self, reason: str = "failure") -> None:
        """Report a failed call. Closed: the streak grows and may open the breaker. Half-open: reopens it."""
        self._total_failures += 1
        state = self._state
        if state is _CLOSED:
            self._failures += 1
            if self._failures >= self._failure_threshold:
                self._open(f"{self._failures} consecutive failures, last: {reason}", self._clock.now())
        elif state is _HALF_OPEN:
            # Even a failure that is not the probe's shows the dependency is still sick.
            self._open(f"half-open failure: {reason}", self._clock.now())

    def record_deadline_overrun(self) -> None:
        """Report a call that missed its deadline; it counts as a failure."""
        self.record_failure(DEADLINE_EXCEEDED)

    def release_probe(self) -> None:
        """Give back a half-open probe slot without an outcome (the probe was cancelled, not failed)."""
        if self._state is _HALF_OPEN:
            self._probe_in_flight = False

    # ------------------------------------------------------------------ forced transitions

    def force_open(self, reason: str = "forced") -> None:
        """Open the breaker now (emits an event even if it was already open: the open time restarts)."""
        self._open(f"forced: {reason}", self._clock.now())

    def force_closed(self, reason: str = "forced") -> None:
        """Close the breaker now, clearing the failure streak."""
        self._transition(_CLOSED, f"forced: {reason}", self._clock.now())

    def reset(self) -> None:
        """Back to a fresh closed breaker: state and streaks cleared (lifetime counters kept)."""
        self._transition(_CLOSED, "reset", self._clock.now())

    def restore(self, state: BreakerState, failures: int, reason: str = "restored") -> None:
        """Back to a saved breaker's state and failure streak (``statistics()``'s ``consecutive_failures``): CLOSED as
        it was, OPEN or HALF_OPEN freshly opened (their timing does not carry across processes). Lifetime counters are
        kept."""
        if state is _CLOSED:
            self.reset()
        else:
            self.force_open(reason)
        self._failures = failures

    # ------------------------------------------------------------------ wrapped calls

    async def call(self, fn: Callable[[*Ts], Awaitable[T]], *args: *Ts) -> T:
        """Run ``await fn(*args)`` through the breaker and record its outcome.

        Runs on the caller's event loop. Any Exception from fn is a failure and is re-raised to the caller. A half-open
        probe runs in a child task under the breaker's probe deadline (read from the clock); past it the probe is
        cancelled, counted as failed, and ProbeDeadlineExceeded is raised. Deadlines of ordinary calls belong to the
        caller (``asyncio.timeout``): a cancelled call records no outcome, so a caller that wants its overrun counted
        calls ``record_deadline_overrun()`` after catching its TimeoutError.

        Raises:
            BreakerOpen: refused without calling fn.
            ProbeDeadlineExceeded: the half-open probe ran past its deadline and was cancelled.
        """
        if not self.allow():
            raise BreakerOpen(self._refusal_message())
        generation = self._generation
        if self._state is _HALF_OPEN:
            return await self._probe(generation, fn, args)
        try:
            result = await fn(*args)
        except Exception as exc:
            if self._generation == generation:
                self.record_failure(type(exc).__name__)
            raise
        if self._generation == generation:
            self.record_success()
        return result

    def guard(self) -> BreakerGuard:
        """A context manager (``with`` or ``async with``) that acquires on entry and records the outcome on exit.

        Entry raises BreakerOpen when refused. An Exception leaving the block is a failure (and propagates); a clean
        exit is a success; cancellation (or any other BaseException) releases a half-open probe slot and records
        nothing. An outcome reported after the breaker changed state is ignored.
        """
        return BreakerGuard(self)

    # ------------------------------------------------------------------ internals

    async def _probe(self, generation: int, fn: Callable[[*Ts], Awaitable[T]], args: tuple[*Ts]) -> T:
        outcome: list[T] = []
        error: list[Exception] = []
        timed_out = False

        async def body() -> None:
            try:
                outcome.append(await fn(*args))
            except Exception as exc:  # noqa: BLE001 - handed back to the caller below, never dropped
                error.append(exc)

        async def watchdog(probe: asyncio.Task[None]) -> None:
            nonlocal timed_out
            await self._clock.sleep(self._probe_deadline_s)
            timed_out = True
            probe.cancel()

        try:
            async with asyncio.TaskGroup() as group:
                probe = group.create_task(body())
                dog = group.create_task(watchdog(probe))
                probe.add_done_callback(lambda _: dog.cancel())
        except BaseException:
            # Our caller was cancelled (or worse): the probe never finished, so give the slot back unjudged.
            if self._generation == generation:
                self.release_probe()
            raise
        current = self._generation == generation
        if timed_out and not outcome and not error:
            if current:
                self._expire_probe(self._clock.now())
            raise ProbeDeadlineExceeded(
                f"breaker {self._name!r}: half-open probe exceeded its {self._probe_deadline_s}s deadline"
            )
        if error:
            if current:
                self.record_failure(type(error[0]).__name__)
            raise error[0]
        if not outcome:
            # fn raised CancelledError itself (it awaited something another task cancelled) and nobody cancelled us:
            # as in CLOSED, no outcome is recorded and the cancellation goes on to the caller.
            if current:
                self.release_probe()
            raise asyncio.CancelledError(f"breaker {self._name!r}: the half-open probe's call was cancelled")
        if current:
            self.record_success()
        return outcome[0]

    def _expire_probe(self, now: float) -> None:
        self._total_failures += 1
        self._open(PROBE_DEADLINE_EXCEEDED, now)

    def _open(self, reason: str, now: float) -> None:
        self._transition(_OPEN, reason, now)

    def _transition(self, to_state: BreakerState, reason: str, now: float) -> None:
        from_state = self._state
        self._state = to_state
        self._generation += 1
        if to_state is _OPEN:
            self._opened_at_s = now
            self._times_opened += 1
            self._probe_in_flight = False
            self._half_open_successes = 0
        elif to_state is _CLOSED:
            self._failures = 0
            self._probe_in_flight = False
            self._half_open_successes = 0
        elif from_state is not _HALF_OPEN:
            self._half_open_successes = 0
            self._probe_in_flight = False
        self._sink.emit(
            BreakerTransition(breaker=self._name, from_state=from_state, to_state=to_state, reason=reason, at_s=now)
        )

    def _refusal_message(self) -> str:
        if self._state is _OPEN:
            return f"breaker {self._name!r} is open; half-open in {self.time_until_half_open_s():.3f}s"
        return f"breaker {self._name!r} is half-open with its probe in flight"
