"""UrzaSeedSource: seed modules from Urza's verified artifacts, for Kasmina's SeedSource protocol (structurally).

Kasmina asks ``describe`` on its event loop and ``fetch`` on the io lane. ``describe`` answers from Karn's catalogue
(the esper.nn descriptors) minus every blueprint the store marks failed or quarantined; ``fetch`` resolves the newest
ready artifact of the blueprint for the slot, has the store verify its SHA-256 before anything is decoded, loads the
weights into a module the blueprint's own builder constructs, and hands out an independent copy. A missing, failed,
quarantined or corrupt artifact raises an UrzaError naming the reason; there is never a fallback to another blueprint
or to a freshly built module.

The weights are the artifact's (Tezzeret built them with its own seed), so ``fetch``'s ``seed`` does not change them:
the same store gives the same module for any seed, and two seeds of one blueprint on one slot start equal (and
independent). This module never imports actors.kasmina: the protocol is structural.
"""

from __future__ import annotations

import collections
import threading
from types import MappingProxyType
from typing import TYPE_CHECKING, final

from actors.urza.artifact import ArtifactNotFound, ModuleMismatch
from actors.urza.builders import build_from_metadata, signature_key
from actors.urza.cache import clone_module
from esper.nn.blueprints import SourcedModule, default_catalogue, validate_params
from schemas.base import Record

if TYPE_CHECKING:
    from collections.abc import Mapping

    from torch import nn

    from actors.urza.records import ArtifactEntry, BlueprintState
    from actors.urza.store import UrzaStore
    from esper.nn.blueprints import BlueprintDescriptor, Catalogue, SlotShape

__all__ = ["SeedSourceStatistics", "UrzaSeedSource", "load_module"]

DEFAULT_CAPACITY = 32


class SeedSourceStatistics(Record, frozen=True):
    """Counters of one UrzaSeedSource: fetches served from the verified-module memo (hits) or loaded from the store."""

    capacity: int
    size: int
    hits: int
    loads: int
    failures: int
    unavailable: tuple[str, ...]


def load_module(store: UrzaStore, catalogue: Catalogue, entry: ArtifactEntry) -> nn.Module:
    """Verify and decode an artifact (``store.load`` checks the SHA-256 first) into a module its builder constructs.

    Blocking (disk, hashing, build): the io lane.

    Raises:
        UrzaError: from the store (missing, corrupt and now quarantined, failed, ...) or ModuleMismatch when the
            builder's module does not take the weights.
    """
    sha = entry.sha256
    loaded = store.load(sha)
    module = build_from_metadata(catalogue, loaded.metadata)
    try:
        module.load_state_dict(loaded.tensors, strict=True)
    except RuntimeError as err:
        cause = " ".join(str(err).split())
        raise ModuleMismatch(
            entry.sha256, f"artifact {entry.sha256}: builder does not take its weights: {cause}"
        ) from err
    count = sum(p.numel() for p in module.parameters())
    if count != loaded.metadata.param_count:
        raise ModuleMismatch(
            entry.sha256,
            f"artifact {entry.sha256}: module has {count} parameters, artifact says {loaded.metadata.param_count}",
        )
    return module


@final
class UrzaSeedSource:
    """A SeedSource over an UrzaStore and Karn's catalogue, with an LRU memo of verified modules by artifact.

    Thread-safe: ``describe`` reads an immutable snapshot of blueprint standings (event loop, never blocks);
    ``fetch`` and ``refresh`` block (io lane). The memo's lock is never held across I/O or copies.
    """

    def __init__(
        self, store: UrzaStore, catalogue: Catalogue | None = None, *, capacity: int = DEFAULT_CAPACITY
    ) -> None:
        """Blocks: reads every blueprint's standing from the store (build it in the composition root or on a lane).

        Args:
            store: the artifact store.
            catalogue: Karn's blueprints (default: ``esper.nn.blueprints.default_catalogue()``).
            capacity: verified modules kept in memory, >= 1.

        Raises:
            ValueError: capacity < 1.
        """
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self._store = store
        self._catalogue = catalogue if catalogue is not None else default_catalogue()
        self._capacity = capacity
        self._lock = threading.Lock()
        self._memo: collections.OrderedDict[str, nn.Module] = collections.OrderedDict()
        self._hits = 0
        self._loads = 0
        self._failures = 0
        self._unavailable: Mapping[str, BlueprintState] = MappingProxyType({})
        self.refresh()

    @property
    def catalogue(self) -> Catalogue:
        return self._catalogue

    def refresh(self) -> None:
        """Re-read every blueprint's standing from the store (blocking: a lane or start-up)."""
        unavailable: dict[str, BlueprintState] = {}
        for blueprint_id in self._catalogue.ids:
            status = self._store.blueprint_status(blueprint_id)
            if status is not None and status.state != "ok":
                unavailable[blueprint_id] = status.state
        # One reference swap: describe() on the loop sees the old or the new snapshot, never a half-built one.
        self._unavailable = MappingProxyType(unavailable)

    def describe(self, blueprint_id: str) -> BlueprintDescriptor | None:
        """The blueprint's descriptor, or None when it is unknown or marked failed/quarantined (as of the last
        ``refresh`` or ``fetch``). Event loop; never blocks."""
        if blueprint_id not in self._catalogue or blueprint_id in self._unavailable:
            return None
        return self._catalogue.get(blueprint_id)

    def fetch(self, blueprint_id: str, slot_shape: SlotShape, params: Mapping[str, float], seed: int) -> SourcedModule:
        """An independent copy of the verified module of the newest ready artifact for (blueprint, slot, params),
        with that artifact's SHA-256.

        ``seed`` does not change the weights (see the module docstring). Runs on the io lane and blocks.

        Raises:
            KeyError: the blueprint is not in the catalogue.
            ValueError: the params do not fit the blueprint's bounds, or the slot kind is not one it claims.
            BlueprintUnavailable: the blueprint is marked failed or quarantined (it is then no longer described).
            ArtifactNotFound: no ready artifact for this slot with these params (compile it with Tezzeret).
            UrzaError: the artifact is missing, corrupt (quarantined now), failed, or does not fit its builder.
        """
        descriptor = self._catalogue.get(blueprint_id)
        if not descriptor.fits(slot_shape.kind):
            raise ValueError(
                f"blueprint {blueprint_id} does not fit slot kind {slot_shape.kind!r}; it fits {descriptor.slot_kinds}"
            )
        wanted = validate_params(descriptor, params, fill_defaults=True)
        try:
            entry = self._resolve(blueprint_id, signature_key(slot_shape), wanted)
            module = self._verified(entry)
        except Exception:
            with self._lock:
                self._failures += 1
            self.refresh()
            raise
        return SourcedModule(clone_module(module), entry.sha256)

    def statistics(self) -> SeedSourceStatistics:
        """Counters and memo occupancy; never blocks on I/O."""
        with self._lock:
            return SeedSourceStatistics(
                capacity=self._capacity,
                size=len(self._memo),
                hits=self._hits,
                loads=self._loads,
                failures=self._failures,
                unavailable=tuple(sorted(self._unavailable)),
            )

    def _resolve(self, blueprint_id: str, key: str, params: Mapping[str, float]) -> ArtifactEntry:
        newest = self._store.resolve(blueprint_id, key)
        if _same_params(newest.metadata.params, params):
            return newest
        for entry in reversed(self._store.entries(blueprint_id)):
            if entry.status == "ready" and entry.signature_key == key and _same_params(entry.metadata.params, params):
                return entry
        raise ArtifactNotFound(
            blueprint_id,
            f"blueprint {blueprint_id!r} has no ready artifact for slot {key!r} with params {dict(params)} "
            f"in {self._store.catalog_path}",
        )

    def _verified(self, entry: ArtifactEntry) -> nn.Module:
        with self._lock:
            module = self._memo.get(entry.sha256)
            if module is not None:
                self._memo.move_to_end(entry.sha256)
                self._hits += 1
                return module
        module = load_module(self._store, self._catalogue, entry)
        with self._lock:
            self._loads += 1
            self._memo[entry.sha256] = module
            while len(self._memo) > self._capacity:
                self._memo.popitem(last=False)
        return module


def _same_params(stored: Mapping[str, float | int], wanted: Mapping[str, float]) -> bool:
    return stored.keys() == wanted.keys() and all(float(stored[k]) == float(wanted[k]) for k in wanted)
