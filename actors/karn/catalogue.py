"""Karn's catalogue as the contracts see it: esper.nn descriptors translated to schemas.kernels records.

Each blueprint comes with its standing from Urza's store, tier rules, approvals, and the deterministic pick.

Pure: a ``KarnCatalogue`` is an immutable snapshot. Reading standings from the store blocks (SQLite), so
``read_standings`` runs on a lane (or at start-up) and its result is applied with ``with_standings``; every query
after that is a dictionary lookup, safe on the event loop.

What is offered for a slot kind (``offered``): blueprints that claim the kind; never one marked failed or quarantined
in the store, nor one that is ``quarantine_only``; HIGH_RISK only when ``karn.allow_high_risk``; SAFE only in
conservative mode; ``approval_required`` only with a recorded approval. The pick (``select``) is the SHA-256 of the
context, modulo the number of candidates, over the candidates in catalogue order.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Literal, Protocol, final

from schemas.domain_enums import BlueprintTier, CostTier, TensorDtype
from schemas.kernels import SLOT_RANKS, BlueprintDescriptor, ParameterBounds, SlotKind, SlotSignature

if TYPE_CHECKING:
    from collections.abc import Collection, Iterator, Mapping

    from esper.nn.blueprints import BlueprintDescriptor as NnDescriptor
    from esper.nn.blueprints import Catalogue
    from schemas.config import KarnConfig

__all__ = [
    "BlueprintEntry",
    "KarnCatalogue",
    "Standing",
    "StatusLookup",
    "TierPolicy",
    "read_standings",
    "to_schema",
]

Standing = Literal["ok", "failed", "quarantined"]


class _Status(Protocol):
    @property
    def state(self) -> str: ...

    @property
    def reason(self) -> str: ...


class StatusLookup(Protocol):
    """Where standings come from: ``actors.urza.store.UrzaStore`` satisfies it. Blocking (a lane)."""

    def blueprint_status(self, blueprint_id: str) -> _Status | None: ...


def read_standings(lookup: StatusLookup, blueprint_ids: Collection[str]) -> dict[str, tuple[Standing, str]]:
    """Every non-ok standing among ``blueprint_ids``: id -> (state, reason). Blocking: call it on a lane.

    Raises:
        ValueError: the store holds a state other than ok, failed or quarantined.
    """
    found: dict[str, tuple[Standing, str]] = {}
    for blueprint_id in blueprint_ids:
        status = lookup.blueprint_status(blueprint_id)
        if status is None or status.state == "ok":
            continue
        if status.state == "failed":
            found[blueprint_id] = ("failed", status.reason)
        elif status.state == "quarantined":
            found[blueprint_id] = ("quarantined", status.reason)
        else:
            raise ValueError(f"blueprint {blueprint_id!r} has unknown standing {status.state!r}")
    return found


_TIERS: Mapping[str, BlueprintTier] = MappingProxyType(
    {"SAFE": BlueprintTier.SAFE, "EXPERIMENTAL": BlueprintTier.EXPERIMENTAL, "HIGH_RISK": BlueprintTier.HIGH_RISK}
)
_COSTS: Mapping[str, CostTier] = MappingProxyType(
    {"low": CostTier.LOW, "medium": CostTier.MEDIUM, "high": CostTier.HIGH}
)


def to_schema(descriptor: NnDescriptor) -> BlueprintDescriptor:
    """The contract record of an esper.nn descriptor, field by field (signatures carry their kind and rank)."""
    return BlueprintDescriptor(
        blueprint_id=descriptor.blueprint_id,
        name=descriptor.name,
        family=descriptor.family,
        tier=_TIERS[descriptor.tier],
        risk=descriptor.risk,
        cost_tier=_COSTS[descriptor.cost_tier],
        description=descriptor.description,
        allowed_parameters={
            name: ParameterBounds(min_value=b.min_value, max_value=b.max_value, default=b.default, integer=b.integer)
            for name, b in descriptor.allowed_parameters.items()
        },
        slot_signatures=tuple(
            SlotSignature(rank=SLOT_RANKS[s.kind], dtype=TensorDtype(s.dtype), kind=s.kind)
            for s in descriptor.slot_signatures
        ),
        stage=descriptor.stage,
        quarantine_only=descriptor.quarantine_only,
        approval_required=descriptor.approval_required,
    )


@final
@dataclass(frozen=True)
class TierPolicy:
    """Which blueprints may be offered: HIGH_RISK only if allowed, SAFE only when conservative, approvals by id."""

    allow_high_risk: bool = False
    conservative: bool = False
    approvals: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def from_config(
        cls, config: KarnConfig, *, conservative: bool = False, approvals: Collection[str] = ()
    ) -> TierPolicy:
        return cls(allow_high_risk=config.allow_high_risk, conservative=conservative, approvals=frozenset(approvals))

    def admits(self, descriptor: BlueprintDescriptor) -> bool:
        """Whether the tier rules and approvals let this blueprint be offered (standing aside)."""
        if self.conservative and descriptor.tier is not BlueprintTier.SAFE:
            return False
        if descriptor.tier is BlueprintTier.HIGH_RISK and not self.allow_high_risk:
            return False
        return not (descriptor.approval_required and descriptor.blueprint_id not in self.approvals)


@final
@dataclass(frozen=True)
class BlueprintEntry:
    """One blueprint in Karn's view: its contract record and its standing in Urza's store, with the reason."""

    descriptor: BlueprintDescriptor
    standing: Standing = "ok"
    reason: str = ""

    @property
    def blueprint_id(self) -> str:
        return self.descriptor.blueprint_id

    @property
    def servable(self) -> bool:
        """Neither marked failed or quarantined in the store, nor ``quarantine_only``."""
        return self.standing == "ok" and not self.descriptor.quarantine_only

    def fits(self, kind: SlotKind) -> bool:
        return any(s.kind == kind for s in self.descriptor.slot_signatures)


@final
class KarnCatalogue:
    """An immutable, ordered view of Karn's blueprints as contract records with their standings."""

    __slots__ = ("_entries",)

    def __init__(self, entries: tuple[BlueprintEntry, ...]) -> None:
        """Raises: ValueError: two entries share an id."""
        by_id: dict[str, BlueprintEntry] = {}
        for entry in entries:
            if entry.blueprint_id in by_id:
                raise ValueError(f"karn catalogue: blueprint id {entry.blueprint_id!r} appears twice")
            by_id[entry.blueprint_id] = entry
        self._entries: Mapping[str, BlueprintEntry] = MappingProxyType(by_id)

    @classmethod
    def from_catalogue(
        cls,
        catalogue: Catalogue,
        *,
        standings: Mapping[str, tuple[Standing, str]] | None = None,
        include: Collection[str] = (),
        exclude: Collection[str] = (),
    ) -> KarnCatalogue:
        """Translate an esper.nn catalogue; ``include`` (empty: all) and ``exclude`` filter it by id.

        Raises:
            ValueError: ``include`` or ``exclude`` names an id the catalogue does not have (a typo is not silent).
        """
        unknown = [b for b in (*include, *exclude) if b not in catalogue]
        if unknown:
            known = ", ".join(catalogue.ids)
            raise ValueError(f"karn.include / karn.exclude name unknown blueprints {unknown}; known: {known}")
        chosen = tuple(
            d for d in catalogue if (not include or d.blueprint_id in include) and d.blueprint_id not in exclude
        )
        view = cls(tuple(BlueprintEntry(to_schema(d)) for d in chosen))
        return view.with_standings(standings or {})

    @classmethod
    def from_config(
        cls, catalogue: Catalogue, config: KarnConfig, *, standings: Mapping[str, tuple[Standing, str]] | None = None
    ) -> KarnCatalogue:
        """``from_catalogue`` with ``karn.include`` / ``karn.exclude``."""
        return cls.from_catalogue(catalogue, standings=standings, include=config.include, exclude=config.exclude)

    def with_standings(self, standings: Mapping[str, tuple[Standing, str]]) -> KarnCatalogue:
        """A new view where each listed blueprint takes the given standing and every other one is ok.

        Ids the view does not hold are ignored (the store is shared with other catalogues).
        """
        return KarnCatalogue(
            tuple(
                BlueprintEntry(e.descriptor, *standings.get(e.blueprint_id, ("ok", ""))) for e in self._entries.values()
            )
        )

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[BlueprintEntry]:
        return iter(self._entries.values())

    def __contains__(self, blueprint_id: object) -> bool:
        return blueprint_id in self._entries

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def entry(self, blueprint_id: str) -> BlueprintEntry:
        """Raises: KeyError: no such blueprint."""
        try:
            return self._entries[blueprint_id]
        except KeyError:
            raise KeyError(f"no blueprint {blueprint_id!r} in Karn's catalogue") from None

    def descriptors(self) -> tuple[BlueprintDescriptor, ...]:
        """Every blueprint's contract record, whatever its standing, in catalogue order."""
        return tuple(e.descriptor for e in self._entries.values())

    def offered(self, kind: SlotKind, policy: TierPolicy) -> tuple[BlueprintDescriptor, ...]:
        """The blueprints that may be offered for a slot of ``kind`` under ``policy``, in catalogue order."""
        return tuple(
            e.descriptor for e in self._entries.values() if e.servable and e.fits(kind) and policy.admits(e.descriptor)
        )

    def select(self, kind: SlotKind, policy: TierPolicy, context: str | bytes) -> BlueprintDescriptor | None:
        """The deterministic pick among ``offered(kind, policy)``: SHA-256 of ``context`` modulo their count.

        Returns None when nothing may be offered (never a fallback blueprint).
        """
        candidates = self.offered(kind, policy)
        if not candidates:
            return None
        data = context.encode() if isinstance(context, str) else context
        return candidates[int.from_bytes(hashlib.sha256(data).digest(), "big") % len(candidates)]
