"""The step-boundary protocol between Tamiyo, Kasmina and Tolaria: decisions, boundary plans and their receipts.

The pipeline, once per state packet (every K steps and at each epoch end):

1. Tolaria sends SystemStatePacket(global_step=s) to Tamiyo and Kasmina and keeps training.
2. Tamiyo answers exactly one Decision(decided_on_step=s) to Kasmina, NO_OP included (command None).
3. Kasmina, holding the packet and the decision of s, runs its lifecycle boundary for s, verifies and applies the
   command, prepares any seed module off the training path (putting it in the shared handoff store under a handle)
   and sends exactly one BoundaryPlan(decided_on_step=s, effect_step=s + lag) to Tolaria, empty plans included.
4. Tolaria applies the plan between steps when its step counter reaches effect_step (waiting for it there if it is
   late: a counted stall) and answers BoundaryApplied with the step at which it took effect.

5. When Tolaria continues from a snapshot or checkpoint (a restart, a rollback or ``--resume``) it sends
   TrainingRestored(step): Kasmina rebuilds its lifecycle as it stood at that boundary (from its journal) and sends
   again the plans decided up to it that take effect after it, which Tolaria expects again.

Because every packet yields exactly one plan and every plan takes effect at a step fixed in advance, the step at
which anything changes never depends on thread timing: runs are reproducible and can be resumed exactly.
"""

from __future__ import annotations

from typing import Literal

from msgspec import field

from schemas.base import Message, Record
from schemas.constraints import NonNegFloat, NonNegInt, UnitFloat
from schemas.control import AdaptationCommand, BlendConfig, CommandResult
from schemas.enums import SeedLifecycleStage

SeedOpKind = Literal["attach", "set_stage", "fossilize", "detach", "pause", "resume", "scale_lr"]
"""attach: take the prepared module ``handle`` from the handoff store, attach it in ``slot`` and add its param group;
set_stage: move an attached seed to ``stage`` (TRAINING, BLENDING, SHADOWING, PROBATIONARY); fossilize: make the
seed part of the host and merge its param group into the host's, moments kept; detach: remove the seed and drop its
param group and optimizer state (a cull); pause / resume: swap the seed out for the identity path and back;
scale_lr: multiply every group's learning rate by ``lr_scale``."""


class SeedOp(Record, frozen=True):
    """One change Tolaria makes to the model or optimizer at a step boundary."""

    kind: SeedOpKind
    slot: str | None = None
    seed_id: str | None = None
    stage: SeedLifecycleStage | None = None
    handle: str | None = None
    blueprint_id: str | None = None
    artifact_sha256: str | None = None
    blend: BlendConfig | None = None
    learning_rate: float | None = None
    lr_scale: float | None = None
    reason: str = ""


FALLBACK_SUFFIX = " (fallback)"
"""Ends ``Decision.policy`` when Tamiyo's fallback decided instead of its policy: ``"heuristic (fallback)"``."""


class Decision(Message, frozen=True):
    """Tamiyo's one answer to the packet of ``decided_on_step``; ``command`` is None for NO_OP.

    ``reason`` is the policy's own word for its choice (``plateau``, ``no_strained_slot``, ``cooldown`` ...), before
    the risk engine; ``risk_reason`` is the risk engine's (``policy`` when it let the choice through);
    ``fallback_reason`` says why the fallback decided instead of the policy (``timeout_inference``, ``policy_error``,
    ``policy_restarting``, ``policy_busy``: still deciding an earlier packet, ``breaker_open``), empty when the policy
    decided; ``proposed`` is the action it proposed (a PolicyAction value: ``germinate``, ``fossilize`` ...), before
    the risk engine, so a NO_OP it made of a germination is told from one it made of other growth.
    """

    run_id: str
    decided_on_step: NonNegInt
    command: AdaptationCommand | None = None
    policy: str = "heuristic"
    decision_ms: NonNegFloat = 0.0
    risk_reason: str = "policy"
    reason: str = ""
    feature_coverage: UnitFloat | None = None  # the GNN's share of the inputs the state should carry; None otherwise
    # The decided packet's issued_at: Kasmina pairs the decision with that very packet only (after a restore the same
    # step's packet comes again, and a decision on the undone one was paired with the rerun's).
    packet_issued_at: float | None = None
    fallback_reason: str = ""
    proposed: str = ""  # empty from a Tamiyo of an earlier version


class BoundaryPlan(Message, frozen=True):
    """What Tolaria applies between steps when it reaches ``effect_step``; empty ``ops`` are a valid plan."""

    run_id: str
    decided_on_step: NonNegInt
    effect_step: NonNegInt
    ops: tuple[SeedOp, ...] = ()
    command_results: tuple[CommandResult, ...] = ()


class OpOutcome(Record, frozen=True):
    """How one SeedOp went; ``error`` names what failed (the op then changed nothing). ``level_refused``: not a failure
    of the op but the emergency level refusing it (L2: no new grafts; L3 and above: adaptation paused)."""

    kind: SeedOpKind
    slot: str | None
    seed_id: str | None
    applied: bool
    error: str | None = None
    level_refused: bool = False


class BoundaryApplied(Message, frozen=True):
    """Tolaria's receipt for a plan: the step at which it took effect and what each op did."""

    run_id: str
    decided_on_step: NonNegInt
    effect_step: NonNegInt
    applied_step: NonNegInt
    outcomes: tuple[OpOutcome, ...] = ()
    stall_ms: NonNegFloat = 0.0
    seed_parameters: dict[str, int] = field(default_factory=dict)


class TrainingRestored(Message, frozen=True):
    """Tolaria continues from the state it had after optimizer step ``step`` (``tier``: "fast" snapshot or "full"
    checkpoint, or "none" at step 0: a restart or resume found nothing to continue from and trains again from the
    start); it again expects the plans decided up to ``step`` that take effect after it, and those of ``unapplied``
    (their decided_on_steps), which take effect at ``step`` itself: with command_lag_steps = 0 an epoch end's state is
    captured before the plan decided on its own packet is applied at that step, so a receipt applied at ``step`` for
    one of them came from a session that went on past the restored state."""

    run_id: str
    step: NonNegInt
    tier: str = "full"
    unapplied: tuple[NonNegInt, ...] = ()
