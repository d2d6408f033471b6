"""Control-plane contracts: blend configuration, signed adaptation commands and their results."""

from __future__ import annotations

from typing import Annotated, Final

from msgspec import Meta, field

from schemas.base import Message, Record
from schemas.constraints import NonNegInt, PosFloat, PosInt, UnitFloat, UuidStr
from schemas.domain_enums import BlendMode, CommandKind, CommandRejectReason, ScheduleMethod
from schemas.enums import MessagePriority

ChannelAlpha = Annotated[tuple[float, ...], Meta(min_length=1, max_length=64)]
"""Per-channel alpha multipliers v for CHANNEL blending: alpha_eff = clamp(alpha * v, 0, 1) along dim 1."""

LR_DELTA_MIN: Final = -0.9
LR_DELTA_MAX: Final = 1.0
LrDelta = Annotated[float, Meta(ge=LR_DELTA_MIN, le=LR_DELTA_MAX)]
"""A relative learning-rate change: the new lr is lr * (1 + lr_delta)."""


class BlendConfig(Record, frozen=True):
    """How a seed is blended in; Tamiyo chooses it, Kasmina applies it and never picks one itself.

    The schedule advances once per optimizer step over ``ramp_steps`` steps; ``window_start``/``window_end`` are
    fractions of that ramp in [0, 1] (the ramp runs between them). ``confidence_k``/``confidence_tau`` shape the
    CONFIDENCE gate g = sigmoid(k * (margin - tau)), clamped into [alpha_lo, alpha_hi].

    Raises:
        ValueError: (on construction and decode) window_start > window_end, alpha_lo > alpha_hi, or CHANNEL mode
            without ``channel_alpha``. A wrong-length vector can only be checked against the slot, by Kasmina.
    """

    mode: BlendMode = BlendMode.CONVEX
    schedule: ScheduleMethod = ScheduleMethod.TANH
    ramp_steps: PosInt = 20
    temperature: PosFloat = 2.0
    window_start: UnitFloat = 0.0
    window_end: UnitFloat = 1.0
    channel_alpha: ChannelAlpha | None = None
    confidence_k: PosFloat = 4.0
    confidence_tau: float = 0.2
    alpha_lo: UnitFloat = 0.0
    alpha_hi: UnitFloat = 1.0

    def __post_init__(self) -> None:
        if self.window_start > self.window_end:
            raise ValueError(f"window_start ({self.window_start}) must not exceed window_end ({self.window_end})")
        if self.alpha_lo > self.alpha_hi:
            raise ValueError(f"alpha_lo ({self.alpha_lo}) must not exceed alpha_hi ({self.alpha_hi})")
        if self.mode is BlendMode.CHANNEL and self.channel_alpha is None:
            raise ValueError("CHANNEL blending needs channel_alpha")


class CommandSecurity(Record, frozen=True):
    """The signed part of a command: HMAC-SHA256 over the canonical encoding with ``signature`` set to "".

    ``nonce`` is the command id and ``issued_at`` the command's issue time (Unix seconds, issuer's wall clock);
    a verifier accepts it only within ``freshness_window_s`` of its own clock and at most the configured skew ahead.
    """

    signature: str
    key_id: str
    nonce: UuidStr
    issued_at: float
    freshness_window_s: PosFloat = 60.0


def germinated_seed_id(slot: str, decision_step: int) -> str:
    """The id of the seed a GERMINATE that names none (``target_seed_id``) germinates, when its receiver accepts it at
    the boundary of its ``decision_step``: the controller's field reports name the seed by it."""
    return f"seed-{slot}-{decision_step}"


class AdaptationCommand(Message, frozen=True):
    """One decision of Tamiyo, signed; decided on the state packet of ``decision_step``.

    Which optional fields a kind needs (GERMINATE: target_slot, blueprint_id, blend; seed verbs: target_seed_id;
    OPTIMIZER: lr_delta) is checked by the receiver, which rejects with MISSING_FIELDS rather than failing to decode.

    Raises:
        ValueError: (on construction and decode) the security block's nonce or issued_at differ from the command's.
    """

    command_id: UuidStr
    issued_at: float
    training_run_id: str
    kind: CommandKind
    decision_step: NonNegInt
    policy_version: str
    security: CommandSecurity
    target_slot: str | None = None
    target_seed_id: str | None = None
    blueprint_id: str | None = None
    blueprint_params: dict[str, float] = field(default_factory=dict)
    blend: BlendConfig | None = None
    initial_alpha: UnitFloat | None = None
    lr_delta: LrDelta | None = None
    reason: str = "policy"
    priority: MessagePriority = MessagePriority.NORMAL

    def __post_init__(self) -> None:
        if self.security.nonce != self.command_id:
            raise ValueError(f"security.nonce {self.security.nonce!r} differs from command_id {self.command_id!r}")
        if self.security.issued_at != self.issued_at:
            raise ValueError(f"security.issued_at {self.security.issued_at} differs from issued_at {self.issued_at}")


class CommandResult(Message, frozen=True):
    """The receiver's answer to a command: accepted (and at which step it took effect) or rejected with a reason.

    Raises:
        ValueError: (on construction and decode) ``accepted`` with a reject reason, or rejected without one.
    """

    command_id: str
    kind: CommandKind
    accepted: bool
    reason: CommandRejectReason | None = None
    detail: str = ""
    applied_step: NonNegInt | None = None
    target_slot: str | None = None
    seed_id: str | None = None

    def __post_init__(self) -> None:
        if self.accepted and self.reason is not None:
            raise ValueError(f"an accepted command has no reject reason (got {self.reason.value})")
        if not self.accepted and self.reason is None:
            raise ValueError("a rejected command needs a reason")
