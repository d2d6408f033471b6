"""What every Tamiyo policy sees and says: the Observation, the Decision, and the Policy protocol."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import msgspec

from schemas.base import Record
from schemas.control import AdaptationCommand, BlendConfig, CommandSecurity
from schemas.domain_enums import BlueprintTier, CommandKind, CostTier, PolicyAction
from schemas.enums import LIVE_STAGES, MessagePriority, SeedLifecycleStage
from schemas.kernels import SlotKind
from schemas.state import SeedState, SystemStatePacket

_ACTION_KIND = {
    PolicyAction.GERMINATE: CommandKind.GERMINATE,
    PolicyAction.CULL: CommandKind.CULL,
    PolicyAction.FOSSILIZE: CommandKind.FOSSILIZE,
    PolicyAction.PAUSE: CommandKind.PAUSE,
    PolicyAction.RESUME: CommandKind.RESUME,
    PolicyAction.LR_TWEAK: CommandKind.OPTIMIZER,
}


class SlotFacts(Record, frozen=True):
    """What the policy knows about one slot beyond its SeedState.

    Attributes:
        slot: the slot name (as in SeedState.slot).
        constraint: how much the host is straining at this point (e.g. activation saturation or the gradient norm of
            the layer the slot follows); larger means a seed there is more likely to help. Unitless, >= 0.
        embargoed: an embargo known to the caller that the SeedState does not show.
    """

    slot: str
    constraint: float = 0.0
    embargoed: bool = False


class BlueprintCandidate(Record, frozen=True):
    """A blueprint the policy may graft, as Karn describes it, and the host's slots it fits.

    Attributes:
        parameter_count: its size in the first slot it fits (the GNN's blueprint feature).
        slot_kinds: the host's slot kinds it fits (``conv1d``, ``flat`` ...), in slot order.
        slot_parameters: each slot of the host it fits (by name, as in SeedState.slot), with its size there. Empty:
            a candidate described without the host's slots fits every slot, at ``parameter_count``. A slot it does
            not fit would refuse its graft (Kasmina: ``does not fit slot kind``), so no policy picks it there.
    """

    blueprint_id: str
    cost_tier: CostTier = CostTier.LOW
    risk: float = 0.0
    parameter_count: int = 0
    tier: BlueprintTier = BlueprintTier.SAFE
    quarantine_only: bool = False
    slot_kinds: tuple[SlotKind, ...] = ()
    slot_parameters: dict[str, int] = msgspec.field(default_factory=dict)

    def fits(self, slot: str) -> bool:
        """Whether a seed of this blueprint may be grafted into ``slot``."""
        return not self.slot_parameters or slot in self.slot_parameters

    def parameters_in(self, slot: str) -> int:
        """Its size in ``slot`` (``parameter_count`` where its slots are not known)."""
        return self.slot_parameters.get(slot, self.parameter_count)


def embargoed_at(state: SeedState, epoch: int) -> bool:
    """Whether the slot of ``state`` may not germinate at ``epoch``: embargoed now, or until a later epoch."""
    if state.stage is SeedLifecycleStage.EMBARGOED:
        return True
    return state.embargo_until_epoch is not None and epoch < state.embargo_until_epoch


class Observation(Record, frozen=True):
    """One decision's input: Tolaria's packet plus slot facts, blueprint candidates and per-seed contributions.

    ``seed_contributions`` maps a seed id to its measured benefit, in validation-loss units (positive: the model is
    better with the seed); a seed without a measurement is absent. ``contribution_steps`` names the measurement behind
    a contribution by the step of the gate result it came from: the same step at two epoch ends is one measurement
    seen twice (Kasmina's G4 measures seldom, see actors.tamiyo.observe). A contribution without a step there was
    measured for this packet.
    """

    packet: SystemStatePacket
    slots: tuple[SlotFacts, ...] = ()
    blueprints: tuple[BlueprintCandidate, ...] = ()
    seed_contributions: dict[str, float] = msgspec.field(default_factory=dict)
    contribution_steps: dict[str, int] = msgspec.field(default_factory=dict)

    @property
    def epoch(self) -> int:
        return self.packet.epoch

    @property
    def seeds(self) -> tuple[SeedState, ...]:
        return self.packet.seed_states

    def opens_epoch_after(self, last_epoch: int | None) -> bool:
        """Whether this is the first packet of an epoch after ``last_epoch`` that carries a validation loss (the one
        packet an epoch at which the heuristic policies act)."""
        packet = self.packet
        return packet.validation_loss is not None and (last_epoch is None or packet.epoch > last_epoch)

    def affords(self, candidate: BlueprintCandidate, slot: str, limit: int | None) -> bool:
        """Whether ``candidate`` grafted into ``slot`` keeps the seeds' parameters within ``limit`` (None: no limit)."""
        return limit is None or self.packet.seed_parameters + candidate.parameters_in(slot) <= limit

    def free_slots(self) -> tuple[SeedState, ...]:
        """DORMANT, non-embargoed slots, in slot-name order."""
        # One pass over the slot facts, not one per slot: a 512-slot host spent most of a decision here.
        embargoed = {facts.slot for facts in self.slots if facts.embargoed}
        free = (
            s
            for s in self.seeds
            if s.stage is SeedLifecycleStage.DORMANT and s.slot not in embargoed and not embargoed_at(s, self.epoch)
        )
        return tuple(sorted(free, key=lambda s: s.slot))

    def fitting(self, slot: str) -> tuple[BlueprintCandidate, ...]:
        """The candidates that fit ``slot``, in their order."""
        return tuple(bp for bp in self.blueprints if bp.fits(slot))

    def live_seeds(self) -> tuple[SeedState, ...]:
        """Seeds in GERMINATED to PROBATIONARY, in slot-name order."""
        return tuple(sorted((s for s in self.seeds if s.stage in LIVE_STAGES), key=lambda s: s.slot))

    def constraint(self, slot: str) -> float:
        """The slot's constraint score: from its SlotFacts, else the packet's gradient norm for that name, else 0."""
        for facts in self.slots:
            if facts.slot == slot:
                return facts.constraint
        return self.packet.layer_gradient_norms.get(slot, 0.0)

    def constraints(self) -> dict[str, float]:
        """Every slot's ``constraint``, by slot name, in one pass (for a policy that ranks all of them)."""
        scores = {state.slot: self.packet.layer_gradient_norms.get(state.slot, 0.0) for state in self.seeds}
        scores.update((facts.slot, facts.constraint) for facts in self.slots)
        return scores


class Decision(Record, frozen=True):
    """What a policy chose, before the risk engine; NO_OP is the default.

    ``policy_risk`` is the policy's probability that the action is high-risk (the GNN's risk head, P(high-risk
    classes), not its confidence); the heuristic reports 0. ``reason`` is a short snake_case word for audit.
    """

    action: PolicyAction = PolicyAction.NO_OP
    target_slot: str | None = None
    target_seed_id: str | None = None
    blueprint_id: str | None = None
    blend: BlendConfig | None = None
    initial_alpha: float | None = None
    lr_delta: float | None = None
    policy_risk: float = 0.0
    reason: str = "no_op"
    log_prob: float | None = None
    value_estimate: float | None = None
    feature_coverage: float | None = None  # the GNN's: the share of the inputs the state should carry it was given

    @property
    def command_kind(self) -> CommandKind | None:
        """The command this decision becomes; None for NO_OP, which is only reported."""
        return _ACTION_KIND.get(self.action)

    @property
    def is_growth(self) -> bool:
        """GERMINATE, FOSSILIZE, RESUME, or an lr increase: what conservative mode blocks."""
        if self.action is PolicyAction.LR_TWEAK:
            return self.lr_delta is not None and self.lr_delta > 0
        return self.action in (PolicyAction.GERMINATE, PolicyAction.FOSSILIZE, PolicyAction.RESUME)

    @property
    def is_protective(self) -> bool:
        """CULL or PAUSE: actions that shed risk, which no risk rule vetoes."""
        return self.action in (PolicyAction.CULL, PolicyAction.PAUSE)


NO_OP = Decision()


def build_command(
    decision: Decision,
    *,
    command_id: str,
    issued_at: float,
    training_run_id: str,
    decision_step: int,
    policy_version: str,
    reason: str,
    priority: MessagePriority = MessagePriority.NORMAL,
) -> AdaptationCommand | None:
    """The unsigned command for ``decision`` (None for NO_OP); pass it to esper.runtime.signing.sign_command.

    ``command_id`` doubles as the nonce; ``reason`` is the risk engine's risk_reason (``policy`` when it let the
    decision through, then followed by the policy's own reason: ``policy:paused``) and ``priority`` its verdict's
    priority.
    """
    kind = decision.command_kind
    if kind is None:
        return None
    if reason == "policy" and decision.reason:
        reason = f"policy:{decision.reason}"
    return AdaptationCommand(
        command_id=command_id,
        issued_at=issued_at,
        training_run_id=training_run_id,
        kind=kind,
        decision_step=decision_step,
        policy_version=policy_version,
        security=CommandSecurity(signature="", key_id="", nonce=command_id, issued_at=issued_at),
        target_slot=decision.target_slot,
        target_seed_id=decision.target_seed_id,
        blueprint_id=decision.blueprint_id,
        blend=decision.blend,
        initial_alpha=decision.initial_alpha,
        lr_delta=decision.lr_delta,
        reason=reason,
        priority=priority,
    )


class Policy(Protocol):
    """A decision maker over observations; the heuristic, every-K and GNN policies all implement it.

    ``decide`` runs on the event loop (heuristics) or a policy lane (the GNN); it must be deterministic given the
    policy's state and the observation, and must not raise for a well-formed observation.
    """

    @property
    def version(self) -> str:
        """Reported as the policy version in commands and field reports."""
        ...

    def decide(self, observation: Observation) -> Decision: ...


@runtime_checkable
class Withdrawable(Protocol):
    """A policy that keeps account of its germinations (a cooldown, a schedule) and is told when its decision was not
    carried out (the risk engine vetoed or replaced it, or it came past its deadline and was discarded) and when the
    fallback's germination was carried out in its place."""

    def withdraw(self, decision: Decision) -> None:
        """``decision``, the last one ``decide`` returned (that very object), was not carried out: decide on as if it
        had not been made. Event loop, between decisions; any other decision changes nothing."""
        ...

    def count_germination(self, epoch: int) -> None:
        """A germination this policy did not propose (the fallback's; the fallback is told of the policy's) was carried
        out at the end of ``epoch``: count it as if it had been its own (the cooldown or schedule runs from there).
        Event loop, between decisions."""
        ...


@runtime_checkable
class KnowsUnmade(Protocol):
    """A policy that learns from the packets after its germination whether it was made (every-K: Kasmina may refuse
    the command, or withdraw the germination when the trainer refuses its attach), so the fallback, which counted it
    at once, can take it back."""

    def take_unmade(self) -> bool:
        """Whether one of this policy's own germinations was found not made since the last call (then reset). Event
        loop, between decisions (never while a decision of the policy's runs on its lane)."""
        ...
