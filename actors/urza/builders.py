"""From artifact metadata back to a module: slot signatures and keys, and building a known blueprint to take weights.

An artifact names its blueprint, family, builder parameters and concrete slot (``SlotSignature`` with kind and
features); the blueprint's builder from ``esper.nn.blueprints`` constructs the module and the artifact's verified
weights replace its initial ones. Nothing here reads a file: the store verifies and decodes, this only builds.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import TYPE_CHECKING

import torch

from actors.urza.artifact import ModuleMismatch
from esper.nn.blueprints import SlotShape, build_blueprint
from schemas.domain_enums import TensorDtype
from schemas.kernels import SLOT_RANKS, SlotSignature

if TYPE_CHECKING:
    from collections.abc import Mapping

    from torch import nn

    from actors.urza.artifact import ArtifactMetadata
    from esper.nn.blueprints import Catalogue

__all__ = ["build_from_metadata", "signature_key", "slot_shape", "slot_signature"]

_TO_SCHEMA: Mapping[torch.dtype, TensorDtype] = MappingProxyType(
    {
        torch.float32: TensorDtype.FLOAT32,
        torch.float16: TensorDtype.FLOAT16,
        torch.bfloat16: TensorDtype.BFLOAT16,
        torch.float64: TensorDtype.FLOAT64,
    }
)
_TO_TORCH: Mapping[TensorDtype, torch.dtype] = MappingProxyType({v: k for k, v in _TO_SCHEMA.items()})


def slot_signature(slot: SlotShape) -> SlotSignature:
    """The contract form of a concrete slot: rank, dtype, kind and features.

    Raises:
        ValueError: the slot's dtype is not one of float32, float16, bfloat16, float64.
    """
    dtype = _TO_SCHEMA.get(slot.dtype)
    if dtype is None:
        raise ValueError(f"slot dtype {slot.dtype} is not one of {[str(d) for d in _TO_SCHEMA]}")
    return SlotSignature(rank=SLOT_RANKS[slot.kind], dtype=dtype, kind=slot.kind, features=slot.features)


def slot_shape(signature: SlotSignature) -> SlotShape:
    """The concrete slot a signature names.

    Raises:
        ValueError: the signature lacks its kind or features, or its rank does not match its kind.
    """
    if signature.kind is None or signature.features is None:
        raise ValueError(f"slot signature {signature} names no concrete slot: kind and features are required")
    if SLOT_RANKS[signature.kind] != signature.rank:
        raise ValueError(f"slot signature {signature}: kind {signature.kind!r} has rank {SLOT_RANKS[signature.kind]}")
    return SlotShape(signature.kind, signature.features, _TO_TORCH[signature.dtype])


def signature_key(signature: SlotSignature | SlotShape) -> str:
    """The catalogue key of a concrete slot, ``"<kind>/<features>/<dtype>"`` (e.g. ``"flat/64/float32"``).

    Raises:
        ValueError: as ``slot_signature`` / ``slot_shape``.
    """
    sig = slot_signature(signature) if isinstance(signature, SlotShape) else signature
    shape = slot_shape(sig)
    return f"{shape.kind}/{shape.features}/{sig.dtype.value}"


def build_from_metadata(catalogue: Catalogue, metadata: ArtifactMetadata) -> nn.Module:
    """An untrained module of the artifact's blueprint, built for its slot with its params, on the CPU.

    The caller then loads the artifact's weights into it (strict). Runs on any thread; CPU work only (a lane).

    Raises:
        ModuleMismatch: the blueprint is not in ``catalogue``, its family differs from the artifact's, or the
            builder refuses the artifact's slot or params (the catalogue changed since the artifact was made).
    """
    who = metadata.blueprint_id
    if who not in catalogue:
        raise ModuleMismatch(who, f"artifact of {metadata.blueprint_id!r}: no such blueprint in the catalogue")
    descriptor = catalogue.get(metadata.blueprint_id)
    if descriptor.family != metadata.family:
        raise ModuleMismatch(
            who,
            f"artifact of {metadata.blueprint_id!r} is family {metadata.family!r}, the catalogue says "
            f"{descriptor.family!r}",
        )
    try:
        slot = slot_shape(metadata.signature)
        return build_blueprint(descriptor, slot, {k: float(v) for k, v in metadata.params.items()})
    except ValueError as err:
        raise ModuleMismatch(who, f"artifact of {who!r} no longer fits its builder: {err}") from err
