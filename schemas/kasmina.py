"""Kasmina's own messages: seed-state and statistics queries, seed prefetch, and per-seed validation evidence."""

from __future__ import annotations

from msgspec import field

from schemas.base import Message, Record
from schemas.constraints import NonEmptyStr, NonNegInt
from schemas.state import SeedState


class GetSeedStates(Message, frozen=True):
    """Ask Kasmina for the current SeedState of the named slots, or of every slot when ``slots`` is empty."""

    slots: tuple[str, ...] = ()


class SeedStates(Message, frozen=True):
    """Every slot as Kasmina sees it, in slot order; ``step`` is the last boundary planned (None before the first)."""

    states: tuple[SeedState, ...]
    step: NonNegInt | None = None


class PrefetchSeed(Message, frozen=True):
    """Prepare the module a later GERMINATE will need, off the training path, and keep it in the ready cache.

    The cache is keyed by blueprint, slot shape, parameters and the build seed derived from the run seed and
    ``seed_id``, so the controller names the seed id it will use in the GERMINATE (``target_seed_id``).
    Requests seen before (by ``request_id``) are dropped.
    """

    request_id: NonEmptyStr
    blueprint_id: NonEmptyStr
    slot: NonEmptyStr
    seed_id: NonEmptyStr
    blueprint_params: dict[str, float] = field(default_factory=dict)


class SeedValidation(Record, frozen=True):
    """One seed's counterfactual validation: per batch, the loss with the slot at alpha 0 and with the seed.

    Raises:
        ValueError: (on construction and decode) the two tuples differ in length.
    """

    seed_id: str
    loss_without_seed: tuple[float, ...]
    loss_with_seed: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.loss_without_seed) != len(self.loss_with_seed):
            raise ValueError(
                f"seed {self.seed_id}: {len(self.loss_without_seed)} losses without the seed but "
                f"{len(self.loss_with_seed)} with it"
            )


class SeedValidationReport(Message, frozen=True):
    """Tolaria's per-seed validation at ``step`` (an epoch end); told to Kasmina before the packet of that step.

    A stand-in until SystemStatePacket carries ``seed_validation: tuple[SeedValidation, ...]`` itself.
    """

    run_id: str
    step: NonNegInt
    seeds: tuple[SeedValidation, ...] = ()


class GetKasminaStatistics(Message, frozen=True):
    """Ask Kasmina for its counters (answered with KasminaStatistics carrying the same ``request_id``)."""

    request_id: str = ""


class KasminaStatistics(Message, frozen=True):
    """Kasmina's counters at one instant. ``rejected`` counts commands by CommandRejectReason value."""

    boundaries: NonNegInt
    plans_sent: NonNegInt
    pending_packets: NonNegInt
    pending_decisions: NonNegInt
    accepted: NonNegInt
    request_id: str = ""
    rejected: dict[str, int] = field(default_factory=dict)
    preparations: NonNegInt = 0
    preparation_failures: NonNegInt = 0
    prefetches: NonNegInt = 0
    cache_hits: NonNegInt = 0
    cache_misses: NonNegInt = 0
    cache_evictions: NonNegInt = 0
    cache_size: NonNegInt = 0
    cache_capacity: NonNegInt = 0
    isolation_culls: NonNegInt = 0
    illegal_transitions: NonNegInt = 0
