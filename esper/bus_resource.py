"""Oona's bus for one run, opened from the config.

In-process by default, Redis Streams with ``oona.backend = "redis"`` (one-line errors naming the key, the password
masked)."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, final

from esper.runtime.bus import BusLimits
from esper.runtime.bus_inproc import InProcessBus
from esper.runtime.bus_redis import redacted
from esper.runtime.bus_redis_open import open_redis_bus
from esper.runtime.errors import ConfigError

if TYPE_CHECKING:
    from esper.runtime.bus import Bus
    from esper.runtime.clock import Clock
    from schemas.config import RunConfig


@final
class BusResource:
    """Oona's bus for one run: in-process by default, Redis Streams with ``oona.backend = "redis"``; a session resource
    closed after the actors have stopped."""

    def __init__(self) -> None:
        self._stack = contextlib.AsyncExitStack()
        self.bus: Bus | None = None

    async def open(self, config: RunConfig, clock: Clock, limits: BusLimits) -> Bus:
        """Open the configured backend.

        Raises:
            ConfigError: the Redis backend is configured but its package is missing or the server does not answer.
        """
        oona = config.oona
        if oona.backend == "inproc":
            self.bus = InProcessBus(clock, limits=limits)
            return self.bus
        try:
            self.bus = await self._stack.enter_async_context(
                open_redis_bus(
                    oona.redis_url,
                    clock,
                    prefix=oona.stream_prefix,
                    limits=limits,
                    max_payload_bytes=oona.max_payload_bytes,
                )
            )
        except ModuleNotFoundError as err:
            raise ConfigError(
                f"oona.backend: \"redis\" needs the redis package (pip install 'esper-morphogenesis[redis]'): {err}"
            ) from err
        except OSError as err:
            raise ConfigError(f"oona.redis_url: {redacted(oona.redis_url)} does not answer: {err}") from err
        except ValueError as err:  # not a Redis URL, or one the server refuses
            raise ConfigError(f"oona.redis_url: {redacted(oona.redis_url)!r}: {err}") from err
        return self.bus

    async def aclose(self) -> None:
        if self.bus is not None and isinstance(self.bus, InProcessBus):
            await self.bus.close()
        await self._stack.aclose()


def bus_limits(config: RunConfig) -> BusLimits:
    """The bus's limits from the oona section."""
    oona = config.oona
    return BusLimits(
        depth_high=oona.queue_depth_high,
        depth_recovery=oona.queue_depth_recovery,
        capacity=oona.topic_capacity,
        emergency_rate_per_min=float(oona.emergency_rate_per_min),
        claim_idle_s=oona.claim_idle_s,
        claim_batch=oona.claim_batch,
        max_attempts=oona.dead_letter_attempts,
        ttl_s=oona.message_ttl_s,
    )
