"""Blueprint descriptors as plain frozen records, the slot shapes they fit, and parameter validation (G0).

These mirror ``schemas.kernels.BlueprintDescriptor`` field for field (esper.nn may not import schemas), so Karn can
translate one into the other by name. Two additions the schema lacks: ``SlotSignature.kind`` (rank alone cannot tell a
conv1d slot ``[batch, channels, length]`` from a sequence slot ``[batch, seq, hidden]``) and ``ParamBounds.integer``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Literal, final, get_args

import torch

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = [
    "SLOT_KINDS",
    "BlueprintDescriptor",
    "CostTier",
    "ParamBounds",
    "SlotKind",
    "SlotShape",
    "SlotSignature",
    "Tier",
    "validate_params",
]

SlotKind = Literal["conv1d", "conv2d", "flat", "sequence"]
Tier = Literal["SAFE", "EXPERIMENTAL", "HIGH_RISK"]
CostTier = Literal["low", "medium", "high"]

SLOT_KINDS: tuple[SlotKind, ...] = get_args(SlotKind)

_RANK: Mapping[SlotKind, int] = MappingProxyType({"conv1d": 3, "conv2d": 4, "flat": 2, "sequence": 3})
# Which axis carries the features the seed may mix: channels for convolutions, the last axis otherwise.
_FEATURE_AXIS: Mapping[SlotKind, int] = MappingProxyType({"conv1d": 1, "conv2d": 1, "flat": 1, "sequence": 2})
_TIERS: tuple[Tier, ...] = get_args(Tier)
_COST_TIERS: tuple[CostTier, ...] = get_args(CostTier)


def slot_rank(kind: SlotKind) -> int:
    """Tensor rank of a slot of this kind, batch included."""
    return _RANK[kind]


def feature_axis(kind: SlotKind) -> int:
    """The axis of a slot tensor that holds its features (channels, features or hidden)."""
    return _FEATURE_AXIS[kind]


@final
@dataclass(frozen=True, kw_only=True)
class SlotSignature:
    """A slot kind a blueprint fits, with the rank (batch included) and dtype it requires (schema: SlotSignature).

    Builders produce float32 modules; ``module.to(torch.bfloat16)`` gives a bf16 seed of identical structure.
    """

    kind: SlotKind
    dtype: str = "float32"

    @property
    def rank(self) -> int:
        """Tensor rank of the slot, batch included: conv1d 3, conv2d 4, flat 2, sequence 3."""
        return slot_rank(self.kind)


@final
@dataclass(frozen=True)
class SlotShape:
    """The concrete slot a seed is built for: its kind and the size of its feature axis.

    Shapes by kind: conv1d ``[batch, features, length]``, conv2d ``[batch, features, height, width]``,
    flat ``[batch, features]``, sequence ``[batch, seq, features]``.

    Raises:
        ValueError: features < 1, or an unknown kind.
    """

    kind: SlotKind
    features: int
    dtype: torch.dtype = torch.float32

    def __post_init__(self) -> None:
        if self.kind not in _RANK:
            raise ValueError(f"slot kind {self.kind!r} is not one of {SLOT_KINDS}")
        if self.features < 1:
            raise ValueError(f"slot features must be >= 1, got {self.features}")

    @property
    def rank(self) -> int:
        """Tensor rank of the slot, batch included."""
        return slot_rank(self.kind)

    @property
    def feature_axis(self) -> int:
        """The axis that holds the features."""
        return feature_axis(self.kind)


@final
@dataclass(frozen=True)
class ParamBounds:
    """Inclusive bounds of one blueprint parameter, its default (None: the caller must give it), and integrality.

    Raises:
        ValueError: a non-finite bound, min_value > max_value, or a default outside the bounds.
    """

    min_value: float
    max_value: float
    default: float | None = None
    integer: bool = False

    def __post_init__(self) -> None:
        if not (math.isfinite(self.min_value) and math.isfinite(self.max_value)):
            raise ValueError(f"bounds must be finite, got [{self.min_value}, {self.max_value}]")
        if not self.min_value <= self.max_value:
            raise ValueError(f"min_value ({self.min_value}) must not exceed max_value ({self.max_value})")
        if self.default is not None and not self.min_value <= self.default <= self.max_value:
            raise ValueError(f"default {self.default} outside [{self.min_value}, {self.max_value}]")


@final
@dataclass(frozen=True, kw_only=True)
class BlueprintDescriptor:
    """One entry of Karn's catalogue; the fields match schemas.kernels.BlueprintDescriptor by name.

    ``family`` names the builder (see ``esper.nn.blueprints.registry.FAMILIES``); ``risk`` is in [0, 1]; ``stage`` is
    the blueprint's maturity, not a seed stage. ``allowed_parameters`` is stored read-only.

    Raises:
        ValueError: an empty id, a risk outside [0, 1], an unknown tier or cost tier, no slot signature, or a slot
            kind listed twice.
    """

    blueprint_id: str
    name: str
    family: str
    tier: Tier
    risk: float
    cost_tier: CostTier = "low"
    description: str = ""
    allowed_parameters: Mapping[str, ParamBounds] = field(default_factory=dict, hash=False)
    slot_signatures: tuple[SlotSignature, ...] = ()
    stage: int = 0
    quarantine_only: bool = False
    approval_required: bool = False

    def __post_init__(self) -> None:
        if not self.blueprint_id:
            raise ValueError("blueprint_id must not be empty")
        if not 0.0 <= self.risk <= 1.0:
            raise ValueError(f"blueprint {self.blueprint_id}: risk {self.risk} outside [0, 1]")
        if self.tier not in _TIERS:
            raise ValueError(f"blueprint {self.blueprint_id}: tier {self.tier!r} is not one of {_TIERS}")
        if self.cost_tier not in _COST_TIERS:
            raise ValueError(f"blueprint {self.blueprint_id}: cost_tier {self.cost_tier!r} not in {_COST_TIERS}")
        kinds = [s.kind for s in self.slot_signatures]
        if not kinds:
            raise ValueError(f"blueprint {self.blueprint_id}: needs at least one slot signature")
        if len(set(kinds)) != len(kinds):
            raise ValueError(f"blueprint {self.blueprint_id}: a slot kind is listed twice in {kinds}")
        object.__setattr__(self, "allowed_parameters", MappingProxyType(dict(self.allowed_parameters)))

    @property
    def slot_kinds(self) -> tuple[SlotKind, ...]:
        """The slot kinds this blueprint claims to fit, in declaration order."""
        return tuple(s.kind for s in self.slot_signatures)

    def fits(self, kind: SlotKind) -> bool:
        """Whether this blueprint claims slots of ``kind``."""
        return kind in self.slot_kinds

    def defaults(self) -> dict[str, float]:
        """Every parameter that has a default, mapped to it."""
        return {n: b.default for n, b in self.allowed_parameters.items() if b.default is not None}


def validate_params(
    descriptor: BlueprintDescriptor, params: Mapping[str, float], *, fill_defaults: bool = False
) -> dict[str, float]:
    """Check a parameter set against a blueprint's bounds (gate G0) and return it as a fresh dict.

    Every bounded parameter must be present (with ``fill_defaults``, a missing one takes its default when it has
    one), finite, within ``[min_value, max_value]`` and integral when the bound says so. Unknown names are rejected
    so a typo never silently becomes a default.

    Raises:
        ValueError: one line naming the blueprint, the parameter and the value at fault.
    """
    who = f"blueprint {descriptor.blueprint_id} ({descriptor.name})"
    bounds = descriptor.allowed_parameters
    for name in params:
        if name not in bounds:
            raise ValueError(f"{who}: unknown parameter {name!r} (allowed: {sorted(bounds)})")
    checked: dict[str, float] = {}
    for name, bound in bounds.items():
        if name in params:
            raw = params[name]
        elif fill_defaults and bound.default is not None:
            raw = bound.default
        else:
            raise ValueError(f"{who}: parameter {name!r} is missing")
        if isinstance(raw, bool) or not isinstance(raw, int | float):
            raise ValueError(f"{who}: parameter {name!r} = {raw!r} is not a number")
        value = float(raw)
        if not math.isfinite(value):
            raise ValueError(f"{who}: parameter {name!r} = {value} is not finite")
        if not bound.min_value <= value <= bound.max_value:
            raise ValueError(f"{who}: parameter {name!r} = {value} outside [{bound.min_value}, {bound.max_value}]")
        if bound.integer and not value.is_integer():
            raise ValueError(f"{who}: parameter {name!r} = {value} must be an integer")
        checked[name] = value
    return checked
