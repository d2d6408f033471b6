"""Admission of commands: the security reasons, G0 refusals as reject reasons, blend configs and blueprint facts.

Pure functions of their arguments, called by the boundary planner on the Kasmina actor's loop.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from actors.kasmina.evidence import BlueprintFacts, ParameterBound
from esper.nn.blueprints import param_count, validate_params
from schemas.domain_enums import BlendMode, CommandRejectReason

if TYPE_CHECKING:
    from collections.abc import Mapping

    from esper.nn.blueprints import BlueprintDescriptor, SlotShape
    from schemas.control import BlendConfig

_MAX_CHANNELS = 64

SECURITY_REASONS = frozenset(
    {
        CommandRejectReason.MISSING_FIELDS,
        CommandRejectReason.BAD_SIGNATURE,
        CommandRejectReason.NONCE_REPLAYED,
        CommandRejectReason.ISSUED_IN_FUTURE,
        CommandRejectReason.STALE,
        CommandRejectReason.NONCE_LEDGER_FULL,
        CommandRejectReason.DECISION_MISMATCH,
    }
)
"""Rejections the CommandVerifier (or the Kasmina actor, pairing a command with its decision) decides and reports at
CRITICAL itself; the rest are reported at WARNING."""

_G0_REASONS: Mapping[str, CommandRejectReason] = {
    "embargoed": CommandRejectReason.EMBARGOED,
    "germination_pending": CommandRejectReason.SLOT_OCCUPIED,
    "slot_retiring": CommandRejectReason.SLOT_OCCUPIED,
    "slot_occupied": CommandRejectReason.SLOT_OCCUPIED,
    "invalid_seed_id": CommandRejectReason.MISSING_FIELDS,
    "duplicate_seed_id": CommandRejectReason.ILLEGAL_TRANSITION,
    "unknown_blueprint": CommandRejectReason.UNKNOWN_BLUEPRINT,
    "blueprint_not_stored": CommandRejectReason.UNKNOWN_BLUEPRINT,
    "quarantine_only": CommandRejectReason.QUARANTINED,
    "high_risk_disabled": CommandRejectReason.TIER_NOT_ALLOWED,
    "approval_missing": CommandRejectReason.APPROVAL_MISSING,
    "seed_budget": CommandRejectReason.SEED_BUDGET_EXCEEDED,
    "memory_budget": CommandRejectReason.MEMORY_BUDGET_EXCEEDED,
}

_MAX_CHANNELS = 64


def g0_reject_reason(g0_reason: str) -> CommandRejectReason:
    """The CommandRejectReason for a G0 failure token (``parameter_*`` tokens are PARAMETER_OUT_OF_BOUNDS)."""
    if g0_reason.startswith("parameter_"):
        return CommandRejectReason.PARAMETER_OUT_OF_BOUNDS
    return _G0_REASONS.get(g0_reason, CommandRejectReason.ILLEGAL_TRANSITION)


def blend_problem(blend: BlendConfig, slot: SlotShape) -> str | None:
    """What is wrong with a blend config for this slot (one line), or None when it fits.

    Checks what decoding checks (a command built in process skips decoding) and what only the slot can tell: a
    CHANNEL vector needs one finite entry per slot feature (at most 64); no other mode takes a vector.
    """
    if not 0.0 <= blend.window_start <= blend.window_end <= 1.0:
        return f"window [{blend.window_start}, {blend.window_end}] is not inside [0, 1] in order"
    if not 0.0 <= blend.alpha_lo <= blend.alpha_hi <= 1.0:
        return f"alpha bounds [{blend.alpha_lo}, {blend.alpha_hi}] are not inside [0, 1] in order"
    if blend.ramp_steps < 1 or not (math.isfinite(blend.temperature) and blend.temperature > 0):
        return f"ramp_steps {blend.ramp_steps} / temperature {blend.temperature} must be positive"
    vector = blend.channel_alpha
    if blend.mode is BlendMode.CHANNEL:
        if vector is None:
            return "CHANNEL blending needs channel_alpha"
        if len(vector) != slot.features or len(vector) > _MAX_CHANNELS:
            return f"channel_alpha has {len(vector)} entries; slot has {slot.features} channels (at most 64)"
        if not all(math.isfinite(v) for v in vector):
            return "channel_alpha holds a non-finite entry"
    elif vector is not None:
        return f"channel_alpha given for {blend.mode.value} blending"
    if blend.mode is BlendMode.CONFIDENCE and not (math.isfinite(blend.confidence_k) and blend.confidence_k > 0):
        return f"confidence_k {blend.confidence_k} must be positive"
    return None


def blueprint_facts(
    blueprint_id: str, descriptor: BlueprintDescriptor | None, slot: SlotShape, params: Mapping[str, float]
) -> BlueprintFacts:
    """What G0 needs to know about a blueprint on this slot; unknown blueprints are ``known=False``."""
    if descriptor is None:
        return BlueprintFacts(blueprint_id=blueprint_id, known=False, stored=False)
    bounds = tuple(
        ParameterBound(name=n, min_value=b.min_value, max_value=b.max_value)
        for n, b in descriptor.allowed_parameters.items()
    )
    try:
        element_bytes = slot.dtype.itemsize
        memory = param_count(descriptor, slot, params) * element_bytes
    except ValueError:
        memory = 0  # G0 refuses these parameters itself, with the precise reason
    return BlueprintFacts(
        blueprint_id=blueprint_id,
        known=True,
        stored=True,
        high_risk=descriptor.tier == "HIGH_RISK",
        quarantine_only=descriptor.quarantine_only,
        approval_required=descriptor.approval_required,
        parameter_bounds=bounds,
        estimated_memory_bytes=memory,
    )


def checked_params(
    descriptor: BlueprintDescriptor | None, blueprint_id: str, shape: SlotShape, params: Mapping[str, float]
) -> dict[str, float] | str:
    """The blueprint's parameters validated for this slot (defaults filled in), or one line saying what is wrong."""
    if descriptor is None:
        return f"unknown blueprint {blueprint_id!r}"
    if not descriptor.fits(shape.kind):
        return f"blueprint {blueprint_id} does not fit slot kind {shape.kind!r}"
    try:
        return validate_params(descriptor, params, fill_defaults=True)
    except ValueError as err:
        return str(err)
