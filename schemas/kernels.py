"""Blueprint and kernel contracts: Karn's descriptors, Urza's requests, ready/error replies and catalogue updates."""

from __future__ import annotations

from types import MappingProxyType
from typing import Literal

from msgspec import field

from schemas.base import Message, Record
from schemas.constraints import NonEmptyStr, NonNegFloat, NonNegInt, PosInt, Sha256Hex, UnitFloat
from schemas.domain_enums import BlueprintTier, CostTier, KernelErrorReason, TensorDtype


class ParameterBounds(Record, frozen=True):
    """Inclusive bounds of one blueprint parameter; G0 requires every bounded parameter present, finite, in range.

    Raises:
        ValueError: (on construction and decode) min_value > max_value, or a default outside the bounds.
    """

    min_value: float
    max_value: float
    default: float | None = None
    integer: bool = False

    def __post_init__(self) -> None:
        if not self.min_value <= self.max_value:
            raise ValueError(f"min_value ({self.min_value}) must not exceed max_value ({self.max_value})")
        if self.default is not None and not self.min_value <= self.default <= self.max_value:
            raise ValueError(f"default {self.default} outside [{self.min_value}, {self.max_value}]")
        if self.integer and self.default is not None and not float(self.default).is_integer():
            raise ValueError(f"default {self.default} of an integer parameter is not an integer")


SlotKind = Literal["conv1d", "conv2d", "flat", "sequence"]
"""conv1d ``[batch, channels, length]``, conv2d ``[batch, channels, height, width]``, flat ``[batch, features]``,
sequence ``[batch, seq, hidden]``; rank alone cannot tell conv1d from sequence."""

SLOT_RANKS: MappingProxyType[SlotKind, int] = MappingProxyType({"conv1d": 3, "conv2d": 4, "flat": 2, "sequence": 3})


class SlotSignature(Record, frozen=True):
    """What a slot must look like for a blueprint to fit: tensor rank (batch included), dtype, and optionally its kind
    and the size of its feature axis (channels, features or hidden). A descriptor's signatures name a kind; a
    concrete slot (an artifact's, a kernel request's) names kind and features too.

    Raises:
        ValueError: (on construction and decode) ``rank`` is not the rank of ``kind``.
    """

    rank: PosInt
    dtype: TensorDtype = TensorDtype.FLOAT32
    kind: SlotKind | None = None
    features: PosInt | None = None

    def __post_init__(self) -> None:
        if self.kind is not None and SLOT_RANKS.get(self.kind) != self.rank:
            raise ValueError(f"slot kind {self.kind!r} has rank {SLOT_RANKS.get(self.kind)}, not {self.rank}")


class BlueprintDescriptor(Message, frozen=True):
    """One entry of Karn's catalogue. ``risk`` is in [0, 1]; ``stage`` is the blueprint's maturity, not a seed stage."""

    blueprint_id: NonEmptyStr
    name: str
    family: str
    tier: BlueprintTier
    risk: UnitFloat
    cost_tier: CostTier = CostTier.LOW
    description: str = ""
    allowed_parameters: dict[str, ParameterBounds] = field(default_factory=dict)
    slot_signatures: tuple[SlotSignature, ...] = ()
    stage: NonNegInt = 0
    quarantine_only: bool = False
    approval_required: bool = False


class KernelRequest(Message, frozen=True):
    """Ask for a ready, verified module for a blueprint now (the 10 ms fetch path); replied with KernelReady/Error.

    ``signature`` (kind and features set) picks the artifact for one concrete slot; None takes the newest of any slot.
    """

    request_id: NonEmptyStr
    blueprint_id: NonEmptyStr
    training_run_id: NonEmptyStr
    issued_at: float
    seed_id: str | None = None
    slot: str | None = None
    signature: SlotSignature | None = None


class KernelPrefetchRequest(Message, frozen=True):
    """Ask Urza to load and verify a blueprint's artifact off the critical path; replays are dropped by request_id.

    ``signature`` (kind and features set) picks the artifact for one concrete slot; None takes the newest of any slot.
    """

    request_id: NonEmptyStr
    blueprint_id: NonEmptyStr
    training_run_id: NonEmptyStr
    issued_at: float
    signature: SlotSignature | None = None


class KernelReady(Message, frozen=True):
    """The artifact for a request is verified and in the ready cache. ``artifact_ref`` is its content address.

    ``checksum`` is the artifact's SHA-256 (equal to the blob name), ``guard_digest`` the SHA-256 of its guard spec.
    The prewarm figures (milliseconds) are reserved for Tezzeret's prewarm timings, which this version does not
    measure: they stay 0.0.
    """

    request_id: str
    blueprint_id: str
    artifact_ref: str
    checksum: Sha256Hex
    guard_digest: Sha256Hex
    issued_at: float
    prewarm_p50_ms: NonNegFloat = 0.0
    prewarm_p95_ms: NonNegFloat = 0.0


class KernelError(Message, frozen=True):
    """No kernel for a request, with a precise reason; there is never a silent fallback kernel."""

    request_id: str
    blueprint_id: str
    reason: KernelErrorReason
    issued_at: float
    detail: str = ""


class KernelCatalogUpdate(Message, frozen=True):
    """Tezzeret stored a (re)compiled artifact for a blueprint in Urza; timings in milliseconds."""

    blueprint_id: str
    artifact_ref: str
    checksum: Sha256Hex
    guard_digest: Sha256Hex
    issued_at: float
    compile_ms: NonNegFloat = 0.0
    prewarm_ms: NonNegFloat = 0.0
    eager_fallback: bool = False
    tags: tuple[str, ...] = ()


class CompileRequest(Message, frozen=True):
    """Ask Tezzeret to compile blueprints into Urza now; answered (to an ask) with CompileResult.

    Empty ``blueprint_ids`` means every blueprint of the catalogue; empty ``signatures`` means the run's slots. Each
    signature must name its kind and features.
    """

    request_id: NonEmptyStr
    issued_at: float
    blueprint_ids: tuple[str, ...] = ()
    signatures: tuple[SlotSignature, ...] = ()


class CompileResult(Message, frozen=True):
    """What a compile pass did: artifacts stored (content addresses) and blueprints that failed, with the reason.

    A failed blueprint is marked failed in Urza's catalogue; it is never replaced by another kernel.
    """

    request_id: str
    issued_at: float
    compiled: NonNegInt
    failed: NonNegInt
    artifacts: tuple[Sha256Hex, ...] = ()
    failures: dict[str, str] = field(default_factory=dict)
