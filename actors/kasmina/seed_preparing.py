"""Preparing a seed for the Kasmina actor: a bounded wait for an artifact not stored yet, and the errors that fail it.

Those errors fail that seed alone (it is culled), not the actor.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, final

from esper.runtime.errors import EsperError, NotYetAvailable
from schemas.domain_enums import TelemetryLevel

if TYPE_CHECKING:
    from collections.abc import Callable

    from actors.kasmina.preparation import PreparationRequest, PreparedSeed, Preparer
    from esper.runtime.clock import Clock

# Preparation failures a source may raise for one seed; anything else is a bug and crashes the actor.
# OSError: a read that failed (EIO) fails this seed's preparation (it is culled), not the actor.
PREPARATION_ERRORS = (KeyError, ValueError, RuntimeError, OverflowError, OSError, EsperError)


@final
class WaitingPreparer:
    """Prepares seeds with a Preparer; a module NotYetAvailable is retried on ``clock`` for up to ``wait_s``."""

    def __init__(
        self,
        preparer: Preparer,
        *,
        clock: Clock | None,
        wait_s: float,
        event: Callable[[str, TelemetryLevel, str], None],
    ) -> None:
        """``event`` reports the wait (its first retry, then every hundredth); None or 0 for ``clock`` / ``wait_s``:
        a NotYetAvailable fails at once."""
        self._preparer = preparer
        self._clock = clock
        self._artifact_wait_s = wait_s
        self._event = event
        self._artifact_waits = 0

    async def prepare(self, request: PreparationRequest) -> PreparedSeed:
        """The seed prepared by the Preparer (see Preparer.prepare), once its artifact is there.

        Raises:
            NotYetAvailable: still not stored when the wait is spent. Anything Preparer.prepare raises.
        """
        # A germination can race Tezzeret's start-up pass on a cold store. Waiting for the artifact (on the injected
        # clock, bounded) keeps the outcome independent of that race: the seed grows as if the store had been warm.
        clock, budget = self._clock, self._artifact_wait_s
        started = clock.now() if clock is not None else 0.0
        delay = 0.005
        while True:
            try:
                return await self._preparer.prepare(request)
            except NotYetAvailable as err:
                if clock is None or clock.now() - started >= budget:
                    raise
                self._artifact_waits += 1
                if self._artifact_waits == 1 or self._artifact_waits % 100 == 0:
                    self._event("artifact_wait", TelemetryLevel.WARNING, f"seed {request.seed_id} waits: {err}")
                await clock.sleep(min(delay, budget - (clock.now() - started)))
                delay *= 2
