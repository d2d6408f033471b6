"""The Urza actor: answers KernelRequest / KernelPrefetchRequest with KernelReady or KernelError via the ready cache.

A request resolves the blueprint's newest ready artifact (for the request's slot signature when it names one) on the
io lane, then has the ReadyCache load, verify (SHA-256 before decoding) and build it, once however many ask. The
reply goes back to an ask and, when the actor has a reply-to ref, to that ref as a tell. A KernelRequest's hand-over
is timed on the clock against ``urza.fetch_budget_ms``: an overrun is counted, reported (``urza.fetch.over_budget``)
and answered with KernelError(latency_budget_exceeded), while the module stays cached so a retry is a hit.
Prefetches have no budget. Replayed request ids get KernelError(stale_request) and nothing is loaded.
"""

from __future__ import annotations

import collections
import functools
from typing import TYPE_CHECKING, assert_never, final

from actors.urza.artifact import UrzaError
from actors.urza.builders import build_from_metadata, signature_key
from actors.urza.cache import CacheStatistics, ReadyCache, kernel_reply
from esper.runtime.actor import Actor
from schemas.base import Record
from schemas.domain_enums import KernelErrorReason, TelemetryLevel
from schemas.kernels import KernelError, KernelPrefetchRequest, KernelReady, KernelRequest
from schemas.telemetry import TelemetryEvent

if TYPE_CHECKING:
    from actors.urza.store import UrzaStore
    from esper.nn.blueprints import Catalogue
    from esper.runtime.clock import Clock
    from esper.runtime.events import EventSink
    from esper.runtime.lanes import Lane
    from esper.runtime.ref import ActorRef
    from schemas.config import UrzaConfig

__all__ = ["OVER_BUDGET_EVENT", "Urza", "UrzaMessage", "UrzaReply", "UrzaStatistics"]

UrzaMessage = KernelRequest | KernelPrefetchRequest
"""Urza's inbox."""

UrzaReply = KernelReady | KernelError
"""What every request is answered with."""

OVER_BUDGET_EVENT = "urza.fetch.over_budget"
_SEEN_REQUESTS = 4096


class UrzaStatistics(Record, frozen=True):
    """The actor's counters (this incarnation) and its cache's; latencies in milliseconds of the clock."""

    requests: int
    prefetches: int
    ready: int
    errors: dict[str, int]
    over_budget: int
    replays: int
    last_latency_ms: float | None
    cache: CacheStatistics


@final
class Urza(Actor[UrzaMessage]):
    """Serves verified artifacts from the store through one ReadyCache (per incarnation, on the io lane's device).

    Event loop only; blocking work (SQLite, blob reads, hashing, builds) runs on ``lane``. Failure rules: every
    Urza error becomes a KernelError reply, never an exception; anything else fails the ask (or, for a tell, crashes
    the actor and the supervisor restarts it with an empty cache).
    """

    def __init__(
        self,
        *,
        store: UrzaStore,
        catalogue: Catalogue,
        lane: Lane,
        clock: Clock,
        sink: EventSink,
        config: UrzaConfig,
        reply_to: ActorRef[UrzaReply] | None = None,
        enforce_budget: bool = True,
        capacity: int = 1024,
    ) -> None:
        """Args:
        store: the artifact store (opened by the composition root, shared).
        catalogue: Karn's blueprints; their builders construct the modules that take the weights.
        lane: the io lane; modules are kept on its device.
        clock: times the hand-over and stamps the replies.
        sink: receives the cache's ``urza_quarantine`` CRITICAL events and ``urza.fetch.over_budget`` WARNINGs.
        config: ``ready_cache_modules`` and ``fetch_budget_ms``.
        reply_to: also tell every reply (but a replay's) to this ref (Kasmina's).
        enforce_budget: answer an over-budget KernelRequest with KernelError(latency_budget_exceeded).
        capacity: mailbox capacity.
        """
        super().__init__(inbox=(KernelRequest, KernelPrefetchRequest), capacity=capacity)
        self._store = store
        self._lane = lane
        self._clock = clock
        self._sink = sink
        self._reply_to = reply_to
        self._enforce_budget = enforce_budget
        self._cache = ReadyCache(
            store,
            functools.partial(build_from_metadata, catalogue),
            lane.run,
            clock=clock,
            sink=sink,
            capacity=config.ready_cache_modules,
            budget_ms=config.fetch_budget_ms,
        )
        self._seen: collections.deque[str] = collections.deque(maxlen=_SEEN_REQUESTS)
        self._seen_set: set[str] = set()
        self._requests = 0
        self._prefetches = 0
        self._ready = 0
        self._errors: collections.Counter[str] = collections.Counter()
        self._over_budget = 0
        self._replays = 0
        self._last_latency_ms: float | None = None

    @property
    def cache(self) -> ReadyCache:
        return self._cache

    def statistics(self) -> UrzaStatistics:
        """Counters of this incarnation; never blocks."""
        return UrzaStatistics(
            requests=self._requests,
            prefetches=self._prefetches,
            ready=self._ready,
            errors=dict(self._errors),
            over_budget=self._over_budget,
            replays=self._replays,
            last_latency_ms=self._last_latency_ms,
            cache=self._cache.statistics(),
        )

    async def handle(self, msg: UrzaMessage) -> UrzaReply:
        if msg.request_id in self._seen_set:
            self._replays += 1
            return KernelError(
                request_id=msg.request_id,
                blueprint_id=msg.blueprint_id,
                reason=KernelErrorReason.STALE_REQUEST,
                issued_at=self._clock.now(),
                detail=f"request {msg.request_id!r} was already served; replay dropped",
            )
        self._remember(msg.request_id)
        match msg:
            case KernelRequest():
                self._requests += 1
                reply = await self._serve(msg, budgeted=True)
            case KernelPrefetchRequest():
                self._prefetches += 1
                reply = await self._serve(msg, budgeted=False)
            case _:
                assert_never(msg)
        if isinstance(reply, KernelReady):
            self._ready += 1
        else:
            self._errors[reply.reason.value] += 1
        if self._reply_to is not None:
            await self._reply_to.tell(reply)
        return reply

    def _remember(self, request_id: str) -> None:
        if len(self._seen) == self._seen.maxlen:
            self._seen_set.discard(self._seen[0])
        self._seen.append(request_id)
        self._seen_set.add(request_id)

    async def _serve(self, msg: UrzaMessage, *, budgeted: bool) -> UrzaReply:
        start = self._clock.now()
        try:
            key = None if msg.signature is None else signature_key(msg.signature)
        except ValueError as err:
            return KernelError(
                request_id=msg.request_id,
                blueprint_id=msg.blueprint_id,
                reason=KernelErrorReason.NOT_FOUND,
                issued_at=self._clock.now(),
                detail=f"request {msg.request_id}: {err}",
            )
        try:
            entry = await self._lane.run(self._store.resolve, msg.blueprint_id, key)
            entry = await self._cache.prefetch(entry.sha256, self._lane.device)
        except UrzaError as err:
            return kernel_reply(msg, err, issued_at=self._clock.now())
        latency_ms = (self._clock.now() - start) * 1e3
        self._last_latency_ms = latency_ms
        budget_ms = self._cache.budget_ms
        if budgeted and latency_ms > budget_ms:
            self._over_budget += 1
            detail = f"kernel {entry.sha256} of {msg.blueprint_id!r} took {latency_ms:.2f} ms, over {budget_ms} ms"
            self._sink.emit(
                TelemetryEvent(
                    name=OVER_BUDGET_EVENT,
                    level=TelemetryLevel.WARNING,
                    description=detail,
                    attributes={"blueprint_id": msg.blueprint_id, "artifact": entry.sha256, "latency_ms": latency_ms},
                )
            )
            if self._enforce_budget:
                return KernelError(
                    request_id=msg.request_id,
                    blueprint_id=msg.blueprint_id,
                    reason=KernelErrorReason.LATENCY_BUDGET_EXCEEDED,
                    issued_at=self._clock.now(),
                    detail=detail,
                )
        return kernel_reply(msg, entry, issued_at=self._clock.now())
