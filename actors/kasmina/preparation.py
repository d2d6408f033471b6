"""Preparing seed modules off the training path: the SeedSource protocol, the ready-module LRU cache and prefetch.

Everything torch-heavy here runs on the ``io`` lane's thread: fetching or building a module, deep-copying a cached
one, moving it to the lane's device, probing it once and putting it into the handoff store. The event loop only
awaits ``Preparer.prepare`` / ``Preparer.prefetch``. Two seeds never share parameters: the cache keeps a pristine
module per key and hands out deep copies.
"""

from __future__ import annotations

import copy
import hashlib
import math
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, final

import torch

from esper.nn.blueprints import SourcedModule, build_blueprint, default_catalogue, probe_validate
from schemas.base import Record

if TYPE_CHECKING:
    from collections.abc import Mapping

    from torch import nn

    from esper.nn.blueprints import BlueprintDescriptor, Catalogue, SlotShape
    from esper.runtime.handoff import Handoff
    from esper.runtime.lanes import Lane

DEFAULT_CACHE_CAPACITY = 32
"""Ready modules kept per process and device (REFERENCE.md section 1)."""

_PROBE_SHAPES = {"conv1d": (2, 0, 8), "conv2d": (2, 0, 4, 4), "flat": (2, 0), "sequence": (2, 4, 0)}


class SeedSource(Protocol):
    """Where seed modules come from: the built-in catalogue now, Urza's verified artifacts later.

    ``describe`` runs on the event loop and must not block; ``fetch`` runs on the io lane's thread and may block.
    """

    def describe(self, blueprint_id: str) -> BlueprintDescriptor | None:
        """The blueprint's descriptor, or None when the source does not know it."""
        ...

    def fetch(self, blueprint_id: str, slot_shape: SlotShape, params: Mapping[str, float], seed: int) -> SourcedModule:
        """A fresh module for ``slot_shape`` (on the CPU), deterministic in ``seed``, never shared with anyone, and the
        artifact it came from (None: built from the catalogue).

        Raises:
            KeyError: the blueprint is unknown.
            ValueError: the parameters or the slot kind do not fit the blueprint.
        """
        ...


@final
class CatalogueSource:
    """A SeedSource over Karn's built-in catalogue (``esper.nn.blueprints.default_catalogue``) and its builders."""

    def __init__(self, catalogue: Catalogue | None = None) -> None:
        self._catalogue = catalogue if catalogue is not None else default_catalogue()

    def describe(self, blueprint_id: str) -> BlueprintDescriptor | None:
        return self._catalogue.get(blueprint_id) if blueprint_id in self._catalogue else None

    def fetch(self, blueprint_id: str, slot_shape: SlotShape, params: Mapping[str, float], seed: int) -> SourcedModule:
        return SourcedModule(build_blueprint(self._catalogue.get(blueprint_id), slot_shape, params, seed=seed))


def derive_build_seed(run_seed: int, seed_id: str) -> int:
    """The build seed of a seed module: a pure function of the run seed and the seed id, so a resume rebuilds it."""
    digest = hashlib.sha256(f"{run_seed}:{seed_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & ((1 << 63) - 1)


@final
@dataclass(frozen=True)
class CacheKey:
    """What makes two prepared modules identical: blueprint, slot shape, parameters and build seed."""

    blueprint_id: str
    kind: str
    features: int
    dtype: str
    params: tuple[tuple[str, float], ...]
    seed: int


def cache_key(blueprint_id: str, slot_shape: SlotShape, params: Mapping[str, float], seed: int) -> CacheKey:
    return CacheKey(
        blueprint_id=blueprint_id,
        kind=slot_shape.kind,
        features=slot_shape.features,
        dtype=str(slot_shape.dtype),
        params=tuple(sorted((k, float(v)) for k, v in params.items())),
        seed=seed,
    )


class CacheStatistics(Record, frozen=True):
    """The ready-module cache at one instant; never blocks, never changes state."""

    size: int
    capacity: int
    hits: int
    misses: int
    evictions: int


@final
class ModuleCache:
    """A bounded LRU of pristine ready modules; ``get`` returns a deep copy, so callers never share parameters.

    Thread-safe (one lock, held only for dictionary work; copies are made outside it: cached modules are never
    mutated). Used from the io lane's thread; ``statistics`` from any thread.
    """

    def __init__(self, capacity: int = DEFAULT_CACHE_CAPACITY) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1 module, got {capacity}")
        self._capacity = capacity
        self._items: OrderedDict[CacheKey, SourcedModule] = OrderedDict()
        self._lock = threading.Lock()
        self._hits = 0
        self._misses = 0
        self._evictions = 0

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._items

    def get(self, key: CacheKey) -> SourcedModule | None:
        """A deep copy of the module under ``key`` (now the most recently used) with its provenance, or None (counted
        as a miss)."""
        with self._lock:
            sourced = self._items.get(key)
            if sourced is None:
                self._misses += 1
                return None
            self._items.move_to_end(key)
            self._hits += 1
        return SourcedModule(copy.deepcopy(sourced.module), sourced.artifact_sha256)

    def put(self, key: CacheKey, module: SourcedModule) -> None:
        """Keep ``module`` (the caller gives it up) under ``key``, evicting the least recently used beyond capacity."""
        with self._lock:
            self._items[key] = module
            self._items.move_to_end(key)
            while len(self._items) > self._capacity:
                self._items.popitem(last=False)
                self._evictions += 1

    def statistics(self) -> CacheStatistics:
        with self._lock:
            return CacheStatistics(
                size=len(self._items),
                capacity=self._capacity,
                hits=self._hits,
                misses=self._misses,
                evictions=self._evictions,
            )


@final
@dataclass(frozen=True)
class PreparationRequest:
    """One seed module to prepare: for ``seed_id`` in ``slot`` of ``slot_shape``, built with ``build_seed``."""

    seed_id: str
    slot: str
    blueprint_id: str
    slot_shape: SlotShape
    params: tuple[tuple[str, float], ...]
    build_seed: int


@final
@dataclass(frozen=True)
class PreparedSeed:
    """A module waiting in the handoff store under ``handle``, with what the probe found.

    Attributes:
        param_names: the module's parameter names (relative to the seed module).
        memory_bytes: bytes of its parameters.
        probe_grad_norm: L2 norm of the seed's gradients from one probe forward/backward.
        probe_failures: one line per failed probe check (shape, dtype, finiteness, parameter count, zero output).
        fetch_ms: how long the module took to fetch from the seed source (Urza); 0 when the ready cache had it.
        artifact_sha256: the verified Urza artifact the module was loaded from; None: built from the catalogue.
    """

    seed_id: str
    handle: str
    param_names: tuple[str, ...]
    parameter_count: int
    memory_bytes: int
    probe_grad_norm: float
    probe_failures: tuple[str, ...]
    cache_hit: bool
    fetch_ms: float = 0.0
    artifact_sha256: str | None = None

    @property
    def interface_ok(self) -> bool:
        return not self.probe_failures


@final
class Preparer:
    """Gets seed modules ready on the io lane: cache or source, to the lane's device, probed, into the handoff store.

    ``prepare`` and ``prefetch`` are awaited on the event loop; their work runs on the lane's thread. Cancelling the
    awaiting task drops a job that has not started and waits for one that has (Lane semantics); a job that finished
    has already put its module into the handoff store, which the caller then owns.
    """

    def __init__(
        self, source: SeedSource, handoff: Handoff[nn.Module], lane: Lane, *, cache: ModuleCache | None = None
    ) -> None:
        self._source = source
        self._handoff = handoff
        self._lane = lane
        self._cache = cache if cache is not None else ModuleCache()

    @property
    def source(self) -> SeedSource:
        return self._source

    @property
    def cache(self) -> ModuleCache:
        return self._cache

    async def prepare(self, request: PreparationRequest) -> PreparedSeed:
        """Put a ready module for ``request`` into the handoff store and return its handle and probe report.

        Raises:
            KeyError, ValueError: from the source (unknown blueprint, parameters that do not fit).
            OverflowError: the handoff store is full.
        """
        return await self._lane.run(self._prepare_on_lane, request)

    def discard(self, handle: str) -> bool:
        """Drop a prepared module nobody will take (a journal replay re-prepares seeds already grafted)."""
        return self._handoff.discard(handle)

    async def prefetch(self, request: PreparationRequest) -> bool:
        """Warm the cache for ``request``; True if it was already warm.

        Raises:
            KeyError, ValueError: from the source.
        """
        return await self._lane.run(self._prefetch_on_lane, request)

    # ------------------------------------------------------------ lane thread

    def _prefetch_on_lane(self, request: PreparationRequest) -> bool:
        key = cache_key(request.blueprint_id, request.slot_shape, dict(request.params), request.build_seed)
        if key in self._cache:
            return True
        self._cache.put(key, self._fetch(request))
        return False

    def _fetch(self, request: PreparationRequest) -> SourcedModule:
        fetched = self._source.fetch(request.blueprint_id, request.slot_shape, dict(request.params), request.build_seed)
        return SourcedModule(fetched.module.to(self._lane.device), fetched.artifact_sha256)

    def _prepare_on_lane(self, request: PreparationRequest) -> PreparedSeed:
        key = cache_key(request.blueprint_id, request.slot_shape, dict(request.params), request.build_seed)
        sourced = self._cache.get(key)
        hit = sourced is not None
        fetch_ms = 0.0
        if sourced is None:
            started = time.perf_counter()
            pristine = self._fetch(request)
            fetch_ms = (time.perf_counter() - started) * 1e3
            # The cache keeps the pristine module; the seed gets a copy, so a later hit never shares its parameters.
            self._cache.put(key, pristine)
            sourced = SourcedModule(copy.deepcopy(pristine.module), pristine.artifact_sha256)
        module = sourced.module
        failures, grad_norm = self._probe(module, request)
        names = tuple(name for name, _ in module.named_parameters())
        count = sum(p.numel() for p in module.parameters())
        memory = sum(p.numel() * p.element_size() for p in module.parameters())
        handle = self._handoff.put(module, prefix=request.seed_id)
        return PreparedSeed(
            seed_id=request.seed_id,
            handle=handle,
            param_names=names,
            parameter_count=count,
            memory_bytes=memory,
            probe_grad_norm=grad_norm,
            probe_failures=failures,
            cache_hit=hit,
            fetch_ms=fetch_ms,
            artifact_sha256=sourced.artifact_sha256,
        )

    def _probe(self, module: nn.Module, request: PreparationRequest) -> tuple[tuple[str, ...], float]:
        descriptor = self._source.describe(request.blueprint_id)
        shape = request.slot_shape
        example = tuple(shape.features if d == 0 else d for d in _PROBE_SHAPES[shape.kind])
        failures: list[str] = []
        if descriptor is not None:
            report = probe_validate(module, descriptor, shape, example, seed=request.build_seed % (1 << 31))
            failures.extend(report.failures)
        # probe_validate leaves .grad untouched and reports no norm; G1 needs one, so take it on a private pass.
        generator = torch.Generator().manual_seed(request.build_seed % (1 << 31))
        params = list(module.parameters())
        device = params[0].device if params else torch.device("cpu")
        x = torch.randn(example, generator=generator).to(device=device, dtype=shape.dtype)
        weights = torch.randn(example, generator=generator).to(device=device, dtype=shape.dtype)
        # Scaled by the output's size: a random projection's gradient grows with the square root of the elements it
        # sums, so an unscaled probe failed the G1 bound on any slot a few hundred features wide.
        scale = math.sqrt(x.numel())
        grads = torch.autograd.grad((module(x) * weights).sum() / scale, params, allow_unused=True) if params else ()
        squares = [float(g.detach().double().pow(2).sum()) for g in grads if g is not None]
        norm = math.sqrt(math.fsum(squares)) if squares else 0.0
        return tuple(failures), norm
