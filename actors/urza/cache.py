"""Urza's ready-module cache: an LRU of verified, built modules per (artifact, device), with single-flight loads.

A fetch hands out an independent copy of the cached ready module, never the cached module itself: seeds are trained,
so two fetches must never share a parameter, and the cached copy must stay exactly the verified weights. Copies are
made ahead of time: each entry keeps a small pool of spare copies (``spares``), so a warm fetch only pops one; the
owner tops the pool up off the fetch path with ``refill()`` (the Urza actor does it by telling itself, after each
fetch). With the pool empty, a fetch copies on the spot (counted in ``copies_on_fetch``): on the event loop for CPU
modules, on the lane for CUDA modules so the device copy is stream-synchronised before the hand-over.

Everything here runs on the event loop except the blocking load (blob read, SHA-256, safetensors decode, build,
load_state_dict, move to device), which goes through the ``run_blocking`` callable the owner supplies (``Lane.run`` of
the ``io`` lane in production). No lock is held across I/O: concurrent fetches of one key share one in-flight future.
"""

from __future__ import annotations

import asyncio
import collections
import copy
import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, TypeVar, final

import torch
from torch import nn

from actors.urza.artifact import ArtifactCorrupt, FetchBudgetExceeded, ModuleMismatch, UrzaError
from schemas.base import Record
from schemas.domain_enums import TelemetryLevel
from schemas.kernels import KernelError, KernelPrefetchRequest, KernelReady, KernelRequest
from schemas.telemetry import TelemetryEvent

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from actors.urza.artifact import ArtifactMetadata
    from actors.urza.records import ArtifactEntry
    from actors.urza.store import UrzaStore
    from esper.runtime.clock import Clock
    from esper.runtime.events import EventSink

T = TypeVar("T")

DEFAULT_CAPACITY = 32
DEFAULT_BUDGET_MS = 10.0
QUARANTINE_EVENT = "urza_quarantine"


class RunBlocking(Protocol):
    """Runs a blocking callable off the event loop and awaits its result (``Lane.run`` of the io lane)."""

    def __call__(self, fn: Callable[[], T], /) -> Awaitable[T]: ...


class _LoadAbandoned(Exception):
    """Set on an in-flight future whose leading fetch was cancelled; waiters then retry the load themselves."""


class CacheStatistics(Record, frozen=True):
    """The cache at one instant. ``misses`` counts fetches that waited for a load, ``joined`` those of them that
    shared another fetch's load; ``loads`` counts completed blocking loads (hits + misses = fetches served)."""

    capacity: int
    size: int
    in_flight: int
    hits: int
    misses: int
    joined: int
    loads: int
    load_failures: int
    evictions: int
    integrity_failures: int
    over_budget: int
    prefetches: int
    spare_hits: int = 0
    copies_on_fetch: int = 0


@final
@dataclass(frozen=True, slots=True)
class Fetched:
    """A module handed over by fetch(): an independent copy, with how long the hand-over took (clock ms)."""

    module: nn.Module
    entry: ArtifactEntry
    device: torch.device
    latency_ms: float
    over_budget: bool
    cache_hit: bool

    @property
    def artifact(self) -> str:
        return self.entry.sha256

    @property
    def metadata(self) -> ArtifactMetadata:
        return self.entry.metadata


@final
@dataclass(frozen=True, slots=True)
class _Ready:
    module: nn.Module
    entry: ArtifactEntry
    spares: collections.deque[nn.Module]


def clone_module(module: nn.Module) -> nn.Module:
    """An independent copy: the same module classes and attributes, every parameter and buffer cloned.

    Several times cheaper than ``copy.deepcopy`` (no memo walk over every attribute), and enough for blueprint
    modules, whose only tensors are parameters and buffers.
    """
    new = copy.copy(module)
    # The hook dicts (_forward_hooks, _state_dict_hooks, ...) and _non_persistent_buffers_set are containers the
    # module mutates in place: shared, a hook registered on one copy would run on the cached module and every copy.
    new.__dict__ = {
        key: copy.copy(value) if isinstance(value, (dict, set)) else value for key, value in module.__dict__.items()
    }
    new._parameters = {
        name: None if param is None else nn.Parameter(param.detach().clone(), requires_grad=param.requires_grad)
        for name, param in module._parameters.items()
    }
    new._buffers = {name: None if buf is None else buf.clone() for name, buf in module._buffers.items()}
    new._modules = {name: None if child is None else clone_module(child) for name, child in module._modules.items()}
    return new


_Key = tuple[str, str]


@final
class ReadyCache:
    """LRU of ready modules keyed by (artifact SHA-256, device), one per process and device set.

    Event-loop only (not thread-safe); blocking work goes through ``run_blocking``.
    """

    def __init__(
        self,
        store: UrzaStore,
        build: Callable[[ArtifactMetadata], nn.Module],
        run_blocking: RunBlocking,
        *,
        clock: Clock,
        sink: EventSink,
        capacity: int = DEFAULT_CAPACITY,
        budget_ms: float = DEFAULT_BUDGET_MS,
        spares: int = 2,
    ) -> None:
        """Build an empty cache.

        Args:
            store: where artifacts come from; used only inside ``run_blocking``.
            build: builds an untrained module of the artifact's family, params and signature on the CPU (a known
                builder from esper.nn.blueprints); it runs on the lane. Its weights are then replaced by the
                artifact's.
            run_blocking: runs a blocking callable off the loop (``lane.run``).
            clock: measures fetch latency.
            sink: receives the ``urza_quarantine`` TelemetryEvent (CRITICAL) when a load finds a corrupt blob.
            capacity: modules kept (config ``urza.ready_cache_modules``), >= 1.
            budget_ms: fetch budget (config ``urza.fetch_budget_ms``), > 0.
            spares: ready copies kept per entry so a warm fetch copies nothing, >= 0.

        Raises:
            ValueError: capacity < 1, budget_ms <= 0 or spares < 0.
        """
        if spares < 0:
            raise ValueError(f"spares must be >= 0, got {spares}")
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        if not budget_ms > 0:
            raise ValueError(f"budget_ms must be > 0, got {budget_ms}")
        self._store = store
        self._build = build
        self._run_blocking = run_blocking
        self._clock = clock
        self._sink = sink
        self._capacity = capacity
        self._budget_ms = budget_ms
        self._entries: collections.OrderedDict[_Key, _Ready] = collections.OrderedDict()
        self._in_flight: dict[_Key, asyncio.Future[_Ready]] = {}
        self._hits = 0
        self._misses = 0
        self._joined = 0
        self._loads = 0
        self._load_failures = 0
        self._evictions = 0
        self._integrity_failures = 0
        self._over_budget = 0
        self._prefetches = 0
        self._spares = spares
        self._spare_hits = 0
        self._copies_on_fetch = 0

    @property
    def budget_ms(self) -> float:
        return self._budget_ms

    def statistics(self) -> CacheStatistics:
        """Counters and occupancy; never blocks, never changes state."""
        return CacheStatistics(
            capacity=self._capacity,
            size=len(self._entries),
            in_flight=len(self._in_flight),
            hits=self._hits,
            misses=self._misses,
            joined=self._joined,
            loads=self._loads,
            load_failures=self._load_failures,
            evictions=self._evictions,
            integrity_failures=self._integrity_failures,
            over_budget=self._over_budget,
            prefetches=self._prefetches,
            spare_hits=self._spare_hits,
            copies_on_fetch=self._copies_on_fetch,
        )

    def cached(self, artifact: str, device: torch.device | str) -> bool:
        """Whether a ready module for (artifact, device) is in the cache (does not touch LRU order)."""
        return (artifact, str(torch.device(device))) in self._entries

    def invalidate(self, artifact: str) -> int:
        """Drop every cached module of an artifact (all devices); returns how many. In-flight loads still finish."""
        keys = [key for key in self._entries if key[0] == artifact]
        for key in keys:
            del self._entries[key]
        return len(keys)

    async def fetch(self, artifact: str, device: torch.device | str, *, enforce_budget: bool = False) -> Fetched:
        """Hand over an independent copy of the verified module for ``artifact`` on ``device``.

        A hit copies the cached module; a miss loads it (once, however many fetches are waiting) on run_blocking.
        Latency is measured with the clock from call to hand-over; over ``budget_ms`` the result is flagged
        (``over_budget``) and counted, or with ``enforce_budget`` FetchBudgetExceeded is raised instead.

        Cancellation: a cancelled fetch leaves the cache consistent; if it was leading a load, another waiting fetch
        takes over the load. Retrying is safe.

        Raises:
            UrzaError: a typed error from the store (not found, missing blob, checksum mismatch, ...), ModuleMismatch,
                or FetchBudgetExceeded; ``err.to_kernel_error(...)`` gives the reply.
            ValueError: ``artifact`` is not a SHA-256 hex digest.
        """
        start = self._clock.now()
        target = torch.device(device)
        ready, hit = await self._ready((artifact, str(target)), target)
        if hit:
            self._hits += 1
        else:
            self._misses += 1
        if ready.spares:
            module = ready.spares.popleft()
            self._spare_hits += 1
        elif target.type == "cpu":
            module = clone_module(ready.module)
            self._copies_on_fetch += 1
        else:
            # Copy on the lane: its stream is synchronised before the copy is handed to another stream's user.
            module = await self._run_blocking(functools.partial(clone_module, ready.module))
            self._copies_on_fetch += 1
        latency_ms = (self._clock.now() - start) * 1000.0
        over = latency_ms > self._budget_ms
        if over:
            self._over_budget += 1
            if enforce_budget:
                raise FetchBudgetExceeded(
                    artifact, f"fetch of artifact {artifact} took {latency_ms:.2f} ms, over its {self._budget_ms} ms"
                )
        return Fetched(
            module=module, entry=ready.entry, device=target, latency_ms=latency_ms, over_budget=over, cache_hit=hit
        )

    async def refill(self, artifact: str, device: torch.device | str) -> int:
        """Top the spare pool of (artifact, device) up to ``spares`` copies, on run_blocking; returns copies made.

        Call it off the fetch path (after handing a module over). Does nothing for an entry not in the cache.
        """
        ready = self._entries.get((artifact, str(torch.device(device))))
        if ready is None:
            return 0
        missing = self._spares - len(ready.spares)
        if missing <= 0:
            return 0
        copies = await self._run_blocking(functools.partial(_clones, ready.module, missing))
        ready.spares.extend(copies[: self._spares - len(ready.spares)])
        return len(copies)

    async def prefetch(self, artifact: str, device: torch.device | str) -> ArtifactEntry:
        """Load and verify ``artifact`` into the cache for ``device`` if it is not there; returns its entry.

        Raises:
            UrzaError: as fetch(); ValueError: as fetch().
        """
        self._prefetches += 1
        target = torch.device(device)
        ready, _ = await self._ready((artifact, str(target)), target)
        return ready.entry

    async def prefetch_blueprint(
        self, blueprint_id: str, device: torch.device | str, *, signature_key: str | None = None
    ) -> ArtifactEntry:
        """Resolve a blueprint's newest ready artifact (for a slot signature) and prefetch it; returns its entry.

        Raises:
            BlueprintUnavailable, ArtifactNotFound: nothing to serve for the blueprint; UrzaError: as fetch().
        """
        entry = await self._run_blocking(functools.partial(self._store.resolve, blueprint_id, signature_key))
        return await self.prefetch(entry.sha256, device)

    # ------------------------------------------------------------------ single flight

    async def _ready(self, key: _Key, device: torch.device) -> tuple[_Ready, bool]:
        ready = self._entries.get(key)
        if ready is not None:
            self._entries.move_to_end(key)
            return ready, True
        joined = False
        while (pending := self._in_flight.get(key)) is not None:
            if not joined:
                self._joined += 1
                joined = True
            try:
                # Shielded: a waiter's cancellation must not cancel the load the others are waiting on.
                return await asyncio.shield(pending), False
            except _LoadAbandoned:
                continue
        return await self._lead_load(key, device), False

    async def _lead_load(self, key: _Key, device: torch.device) -> _Ready:
        future: asyncio.Future[_Ready] = asyncio.get_running_loop().create_future()
        self._in_flight[key] = future
        try:
            ready = await self._run_blocking(functools.partial(self._load_blocking, key[0], device))
        except BaseException as err:
            del self._in_flight[key]
            if isinstance(err, asyncio.CancelledError):
                future.set_exception(_LoadAbandoned(key[0]))
            else:
                self._load_failures += 1
                if isinstance(err, ArtifactCorrupt):
                    self._report_quarantine(err)
                future.set_exception(err)
            future.exception()  # retrieved here, so an unwaited failure is not logged as "never retrieved"
            raise
        del self._in_flight[key]
        self._loads += 1
        self._entries[key] = ready
        while len(self._entries) > self._capacity:
            self._entries.popitem(last=False)
            self._evictions += 1
        future.set_result(ready)
        return ready

    def _load_blocking(self, artifact: str, device: torch.device) -> _Ready:
        # Runs on the lane thread: read, verify, decode (store), then build and fill the module.
        loaded = self._store.load(artifact)
        metadata = loaded.metadata
        module = self._build(metadata)
        try:
            module.load_state_dict(loaded.tensors, strict=True)
        except RuntimeError as err:
            cause = " ".join(str(err).split())
            raise ModuleMismatch(
                artifact, f"artifact {artifact}: builder for {metadata.family!r} does not take its weights: {cause}"
            ) from err
        count = sum(param.numel() for param in module.parameters())
        if count != metadata.param_count:
            raise ModuleMismatch(
                artifact,
                f"artifact {artifact}: built module has {count} parameters, artifact says {metadata.param_count}",
            )
        ready_module = module.to(device)
        spares = collections.deque(_clones(ready_module, self._spares))
        return _Ready(module=ready_module, entry=loaded.entry, spares=spares)

    def _report_quarantine(self, err: ArtifactCorrupt) -> None:
        self._integrity_failures += 1
        self.invalidate(err.subject)
        self._sink.emit(
            TelemetryEvent(
                name=QUARANTINE_EVENT,
                level=TelemetryLevel.CRITICAL,
                description=err.detail,
                attributes={
                    "artifact": err.subject,
                    "blueprint_id": err.blueprint_id,
                    "reason": err.why,
                    "quarantine_path": str(err.quarantine_path),
                },
            )
        )


def _clones(module: nn.Module, count: int) -> list[nn.Module]:
    return [clone_module(module) for _ in range(count)]


def kernel_reply(
    request: KernelRequest | KernelPrefetchRequest, outcome: ArtifactEntry | UrzaError, *, issued_at: float
) -> KernelReady | KernelError:
    """The reply to a kernel (prefetch) request: KernelReady naming the artifact, or KernelError with the reason.

    ``issued_at`` is the reply's time on the caller's clock.
    """
    if isinstance(outcome, UrzaError):
        return outcome.to_kernel_error(
            request_id=request.request_id, blueprint_id=request.blueprint_id, issued_at=issued_at
        )
    return KernelReady(
        request_id=request.request_id,
        blueprint_id=request.blueprint_id,
        artifact_ref=outcome.sha256,
        checksum=outcome.sha256,
        guard_digest=outcome.metadata.guard_digest,
        issued_at=issued_at,
    )
