"""The blueprint families, Karn's default catalogue, and building a blueprint for a slot.

Nothing here is mutable shared state: ``FAMILIES`` is a read-only table of functions, and ``default_catalogue()``
builds a fresh immutable ``Catalogue`` on every call, so two systems in one process never share a catalogue.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, final

from esper.nn.blueprints import attention, conv, features
from esper.nn.blueprints.descriptors import (
    BlueprintDescriptor,
    ParamBounds,
    SlotKind,
    SlotShape,
    SlotSignature,
    Tier,
    validate_params,
)
from esper.nn.blueprints.weights import as_generator

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = [
    "FAMILIES",
    "Catalogue",
    "Family",
    "build_blueprint",
    "default_catalogue",
    "param_count",
    "param_count_range",
]

Builder = Callable[[SlotShape, Mapping[str, float], "torch.Generator"], "nn.Module"]
Counter = Callable[[SlotShape, Mapping[str, float]], int]


@final
@dataclass(frozen=True)
class Family:
    """A blueprint family: the slot kinds it can fit, its builder and its exact parameter-count formula.

    ``build(slot, params, generator)`` and ``count(slot, params)`` expect params already validated against a
    descriptor and raise ValueError for a slot kind outside ``kinds``.
    """

    name: str
    kinds: tuple[SlotKind, ...]
    build: Builder
    count: Counter


FAMILIES: Mapping[str, Family] = MappingProxyType(
    {
        f.name: f
        for f in (
            Family("residual_conv", conv.CONV_KINDS, conv.build_residual_conv, conv.count_residual_conv),
            Family(
                "depthwise_separable",
                conv.CONV_KINDS,
                conv.build_depthwise_separable,
                conv.count_depthwise_separable,
            ),
            Family("squeeze_excite", conv.CONV_KINDS, conv.build_squeeze_excite, conv.count_squeeze_excite),
            Family(
                "bottleneck_mlp", features.TOKEN_KINDS, features.build_bottleneck_mlp, features.count_bottleneck_mlp
            ),
            Family(
                "low_rank_adapter",
                features.ALL_KINDS,
                features.build_low_rank_adapter,
                features.count_low_rank_adapter,
            ),
            Family(
                "gated_linear_unit",
                features.TOKEN_KINDS,
                features.build_gated_linear_unit,
                features.count_gated_linear_unit,
            ),
            Family("norm_scale", features.ALL_KINDS, features.build_norm_scale, features.count_norm_scale),
            Family(
                "self_attention",
                attention.ATTENTION_KINDS,
                attention.build_self_attention,
                attention.count_self_attention,
            ),
        )
    }
)


def _family(descriptor: BlueprintDescriptor, slot: SlotShape) -> Family:
    family = FAMILIES.get(descriptor.family)
    if family is None:
        raise ValueError(f"blueprint {descriptor.blueprint_id}: unknown family {descriptor.family!r}")
    if not descriptor.fits(slot.kind):
        raise ValueError(
            f"blueprint {descriptor.blueprint_id} ({descriptor.name}) does not fit slot kind {slot.kind!r};"
            f" it fits {descriptor.slot_kinds}"
        )
    return family


def build_blueprint(
    descriptor: BlueprintDescriptor,
    slot: SlotShape,
    params: Mapping[str, float],
    *,
    seed: int | torch.Generator = 0,
    fill_defaults: bool = False,
) -> nn.Module:
    """Build a blueprint's module for a slot: ``[batch, features, ...]`` in, the same shape out, zero at birth.

    The module is on the CPU in ``slot.dtype``, in training mode, with every parameter requiring grad. Building is
    deterministic in ``seed`` (an int or a CPU generator, which is advanced) and never touches torch's global RNG.
    Runs on any thread; CPU work only.

    Raises:
        ValueError: invalid params (see ``validate_params``), an unknown family, or a slot kind the blueprint does
            not claim.
    """
    family = _family(descriptor, slot)
    checked = validate_params(descriptor, params, fill_defaults=fill_defaults)
    return family.build(slot, checked, as_generator(seed))


def param_count(
    descriptor: BlueprintDescriptor, slot: SlotShape, params: Mapping[str, float], *, fill_defaults: bool = False
) -> int:
    """Number of parameter elements ``build_blueprint(descriptor, slot, params)`` would have, without building it.

    Raises:
        ValueError: as ``build_blueprint``.
    """
    family = _family(descriptor, slot)
    return family.count(slot, validate_params(descriptor, params, fill_defaults=fill_defaults))


def param_count_range(descriptor: BlueprintDescriptor, slot: SlotShape) -> tuple[int, int]:
    """The smallest and largest parameter count the descriptor's bounds allow on this slot.

    Every family's count is monotone in each parameter (increasing or decreasing), so the extremes lie on the
    corners of the parameter box, which are enumerated (at most 2 ** n for n parameters).

    Raises:
        ValueError: the blueprint does not fit the slot kind.
    """
    family = _family(descriptor, slot)
    names = list(descriptor.allowed_parameters)
    corners = itertools.product(*((b.min_value, b.max_value) for b in descriptor.allowed_parameters.values()))
    counts = [family.count(slot, dict(zip(names, corner, strict=True))) for corner in corners]
    return min(counts), max(counts)


@final
class Catalogue:
    """An immutable, ordered set of blueprint descriptors with lookup by id and filters returning new catalogues.

    Raises:
        ValueError: (on construction) two descriptors share an id, or one names an unknown family or claims a slot
            kind its family cannot fit.
    """

    __slots__ = ("_by_id",)

    def __init__(self, descriptors: tuple[BlueprintDescriptor, ...]) -> None:
        by_id: dict[str, BlueprintDescriptor] = {}
        for d in descriptors:
            if d.blueprint_id in by_id:
                raise ValueError(f"catalogue: blueprint id {d.blueprint_id!r} appears twice")
            family = FAMILIES.get(d.family)
            if family is None:
                raise ValueError(f"catalogue: blueprint {d.blueprint_id} names unknown family {d.family!r}")
            unfit = [k for k in d.slot_kinds if k not in family.kinds]
            if unfit:
                raise ValueError(f"catalogue: blueprint {d.blueprint_id} claims {unfit}, family {d.family} cannot fit")
            by_id[d.blueprint_id] = d
        self._by_id: Mapping[str, BlueprintDescriptor] = MappingProxyType(by_id)

    def __len__(self) -> int:
        return len(self._by_id)

    def __iter__(self) -> Iterator[BlueprintDescriptor]:
        return iter(self._by_id.values())

    def __contains__(self, blueprint_id: object) -> bool:
        return blueprint_id in self._by_id

    def __repr__(self) -> str:
        return f"Catalogue({list(self._by_id)})"

    @property
    def ids(self) -> tuple[str, ...]:
        """Every blueprint id, in catalogue order."""
        return tuple(self._by_id)

    def get(self, blueprint_id: str) -> BlueprintDescriptor:
        """The descriptor with this id.

        Raises:
            KeyError: no blueprint has this id.
        """
        try:
            return self._by_id[blueprint_id]
        except KeyError:
            raise KeyError(f"no blueprint {blueprint_id!r} in the catalogue") from None

    def for_kind(self, kind: SlotKind) -> Catalogue:
        """The blueprints that claim slots of ``kind``."""
        return Catalogue(tuple(d for d in self if d.fits(kind)))

    def with_tiers(self, *tiers: Tier) -> Catalogue:
        """The blueprints whose tier is one of ``tiers``."""
        return Catalogue(tuple(d for d in self if d.tier in tiers))

    def excluding_quarantined(self) -> Catalogue:
        """The blueprints that are not ``quarantine_only``."""
        return Catalogue(tuple(d for d in self if not d.quarantine_only))


def _p(lo: float, hi: float, default: float, *, integer: bool = False) -> ParamBounds:
    return ParamBounds(lo, hi, default, integer)


def _sigs(*kinds: SlotKind) -> tuple[SlotSignature, ...]:
    return tuple(SlotSignature(kind=k) for k in kinds)


def default_catalogue() -> Catalogue:
    """A fresh copy of the built-in catalogue: every family at a SAFE or EXPERIMENTAL size, plus large variants."""
    conv_kinds, token_kinds, all_kinds = conv.CONV_KINDS, features.TOKEN_KINDS, features.ALL_KINDS
    attn: dict[str, ParamBounds] = {
        "heads": _p(1, 4, 2, integer=True),
        "head_dim": _p(4, 32, 8, integer=True),
        "causal": _p(0, 1, 1, integer=True),
    }
    return Catalogue(
        (
            BlueprintDescriptor(
                blueprint_id="BP001",
                name="norm_scale",
                family="norm_scale",
                tier="SAFE",
                risk=0.05,
                description="Layer norm over features with a zero-initialised per-feature gain and shift.",
                slot_signatures=_sigs(*all_kinds),
            ),
            BlueprintDescriptor(
                blueprint_id="BP002",
                name="low_rank_adapter",
                family="low_rank_adapter",
                tier="SAFE",
                risk=0.1,
                description="Rank-r update B A x on the feature axis, B zero-initialised.",
                allowed_parameters={"rank": _p(1, 16, 4, integer=True)},
                slot_signatures=_sigs(*all_kinds),
            ),
            BlueprintDescriptor(
                blueprint_id="BP003",
                name="bottleneck_mlp",
                family="bottleneck_mlp",
                tier="SAFE",
                risk=0.15,
                description="Per-position two-layer MLP through a narrower hidden layer.",
                allowed_parameters={"width": _p(0.125, 1.0, 0.5)},
                slot_signatures=_sigs(*token_kinds),
            ),
            BlueprintDescriptor(
                blueprint_id="BP004",
                name="squeeze_excite",
                family="squeeze_excite",
                tier="SAFE",
                risk=0.1,
                description="Per-channel tanh gate from spatially pooled features (learns a channel rescaling).",
                allowed_parameters={"reduction": _p(1, 16, 4, integer=True)},
                slot_signatures=_sigs(*conv_kinds),
            ),
            BlueprintDescriptor(
                blueprint_id="BP005",
                name="residual_conv",
                family="residual_conv",
                tier="SAFE",
                risk=0.2,
                cost_tier="medium",
                description="Conv, group norm, GELU, conv: the branch of a residual block.",
                allowed_parameters={"width": _p(0.25, 1.0, 0.5), "kernel_radius": _p(0, 2, 1, integer=True)},
                slot_signatures=_sigs(*conv_kinds),
            ),
            BlueprintDescriptor(
                blueprint_id="BP006",
                name="depthwise_separable",
                family="depthwise_separable",
                tier="EXPERIMENTAL",
                risk=0.25,
                description="Depthwise conv then a pointwise channel mix.",
                allowed_parameters={
                    "kernel_radius": _p(1, 3, 1, integer=True),
                    "depth_multiplier": _p(1, 4, 1, integer=True),
                },
                slot_signatures=_sigs(*conv_kinds),
            ),
            BlueprintDescriptor(
                blueprint_id="BP007",
                name="gated_linear_unit",
                family="gated_linear_unit",
                tier="EXPERIMENTAL",
                risk=0.3,
                cost_tier="medium",
                description="Per-position gated linear unit: value times sigmoid gate, projected back.",
                allowed_parameters={"width": _p(0.25, 2.0, 1.0)},
                slot_signatures=_sigs(*token_kinds),
            ),
            BlueprintDescriptor(
                blueprint_id="BP008",
                name="self_attention",
                family="self_attention",
                tier="EXPERIMENTAL",
                risk=0.35,
                cost_tier="high",
                description="Pre-norm multi-head self-attention over positions (causal by default).",
                allowed_parameters=attn,
                slot_signatures=_sigs("sequence", "conv1d"),
            ),
            BlueprintDescriptor(
                blueprint_id="BP009",
                name="wide_residual_conv",
                family="residual_conv",
                tier="HIGH_RISK",
                risk=0.6,
                cost_tier="high",
                description="Residual conv branch wider than its slot with kernels up to 7.",
                allowed_parameters={"width": _p(1.0, 4.0, 2.0), "kernel_radius": _p(0, 3, 1, integer=True)},
                slot_signatures=_sigs(*conv_kinds),
                approval_required=True,
            ),
            BlueprintDescriptor(
                blueprint_id="BP010",
                name="expanding_mlp",
                family="bottleneck_mlp",
                tier="HIGH_RISK",
                risk=0.5,
                cost_tier="high",
                description="Per-position MLP with a hidden layer wider than its slot.",
                allowed_parameters={"width": _p(1.0, 8.0, 4.0)},
                slot_signatures=_sigs(*token_kinds),
                approval_required=True,
            ),
            BlueprintDescriptor(
                blueprint_id="BP011",
                name="wide_self_attention",
                family="self_attention",
                tier="HIGH_RISK",
                risk=0.8,
                cost_tier="high",
                description="Many-head self-attention; quarantined until it has a clean record.",
                allowed_parameters={
                    **attn,
                    "heads": _p(4, 16, 8, integer=True),
                    "head_dim": _p(8, 64, 16, integer=True),
                },
                slot_signatures=_sigs("sequence", "conv1d"),
                quarantine_only=True,
                approval_required=True,
            ),
        )
    )
