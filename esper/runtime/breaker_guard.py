"""The context manager CircuitBreaker.guard() returns: acquire on entry, record the outcome on exit."""

from __future__ import annotations

from typing import TYPE_CHECKING, final

if TYPE_CHECKING:
    from types import TracebackType

    from esper.runtime.breaker import CircuitBreaker


@final
class BreakerGuard:
    """What CircuitBreaker.guard() returns; see there. One use only."""

    __slots__ = ("_breaker", "_generation")

    def __init__(self, breaker: CircuitBreaker) -> None:
        self._breaker = breaker
        self._generation = -1

    def __enter__(self) -> None:
        self._breaker.acquire()
        self._generation = self._breaker._generation

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        breaker = self._breaker
        current = breaker._generation == self._generation
        if not current:
            return
        if exc is None:
            breaker.record_success()
        elif isinstance(exc, Exception):
            breaker.record_failure(type(exc).__name__)
        else:
            breaker.release_probe()

    async def __aenter__(self) -> None:
        self.__enter__()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.__exit__(exc_type, exc, tb)
