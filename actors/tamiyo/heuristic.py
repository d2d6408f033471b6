"""The heuristic policy: plateau- or cadence-triggered growth with cull and fossilize rules (every-K: every_k.py).

It is deterministic and auditable: the same state and observation give the same decision, every Decision names
its rule in ``reason``, and the whole state exports to a Record for checkpoints. It acts once per epoch, on the
first packet of an epoch that carries a validation loss; other packets (mid-epoch, repeats) give NO_OP and leave the
state alone. A germination counts as made when it is returned, unless the controller withdraws it (``withdraw``: the
risk engine vetoed or replaced it, or it was discarded as late): a withdrawn germination starts no cooldown, resets
no plateau and moves no schedule, so it is tried again at the next epoch end (every-K: with the same blueprint; so is
an every-K graft the packets after it show did not take effect, refused or withdrawn by Kasmina). A
germination the fallback made in the policy's place counts as the policy's own (``count_germination``), and the
policy's as the fallback's, which takes it back (``uncount_germination``) should every-K find it not made.
"""

from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING, final

import msgspec

from actors.tamiyo.horizon import GrowthHorizon
from actors.tamiyo.policy import NO_OP, Decision
from schemas.base import Record
from schemas.control import BlendConfig
from schemas.domain_enums import BlueprintTier, CostTier, PolicyAction
from schemas.enums import SeedLifecycleStage

if TYPE_CHECKING:
    from actors.tamiyo.policy import BlueprintCandidate, Observation
    from schemas.config import TamiyoConfig
    from schemas.state import SeedState

_COST_RANK = {CostTier.LOW: 0, CostTier.MEDIUM: 1, CostTier.HIGH: 2}


class HeuristicConfig(Record, frozen=True):
    """Knobs of the heuristic policy; epochs count validation epochs.

    Attributes:
        plateau_patience_epochs / plateau_min_delta: a plateau is this many epochs in a row without the validation
            loss dropping more than min_delta below its best.
        germinate_every_k_epochs: also germinate when this many epochs passed since the last germination (or the
            first epoch seen); None: plateau only.
        germinate_cooldown_epochs: at least this many epochs between two germinations.
        cull_after_epochs / cull_max_contribution: cull a live seed whose measured contribution was <= the maximum
            in this many distinct measurements in a row (one measurement seen at several epoch ends counts once; an
            epoch without a new one neither adds nor resets); an epoch a seed spends paused counts as one.
        fossilize_hold_epochs / fossilize_min_benefit: request fossilization of a PROBATIONARY seed whose measured
            contribution has stood > the minimum for this many probation epochs: its latest distinct measurement was
            above it and none in those epochs was not (an epoch without a new one keeps the standing). These are
            epochs, not measurements: Kasmina's G4 measures a PROBATIONARY seed only once asked to fossilize it, over
            the probation epochs' validation, and its verdict decides whether the benefit held.
        horizon: how long a seed takes before it can be kept (the lifecycle's waits, from the composition root): no
            germination once a seed grown now could not be fossilized, after fossilize_hold_epochs probation epochs,
            before the run's last step (NO_OP "too_late"); it would only spend compute and parameters.
        germinate_min_constraint: germinate only into a slot whose constraint (its layer's gradient norm over the
            mean layer's, see actors.tamiyo.observe) is at least this: growth goes where the network strains, and
            stops when no free slot does. Ignored when the packet carries no gradient norms (every constraint 0).
        max_live_seeds: at most this many seeds in GERMINATED..PROBATIONARY.
        max_added_parameters: the packet's seed_parameters plus the new blueprint's size must stay within this.
        max_blueprint_risk: only blueprints with risk below this (the risk engine downgrades from 0.5).
        allowed_cost_tiers / allow_high_risk_tier: which blueprints are acceptable at all.
        preferred_cost_tier: among acceptable, affordable blueprints, grow one whose cost tier is nearest this
            (ties to the cheaper tier), then the smallest, the least risky, by id. LOW grows the cheapest; MEDIUM
            reaches for blueprints that add capacity (a plateau usually means the host lacks it).
        blend: the BlendConfig sent with a germination.
    """

    plateau_patience_epochs: int = 2
    plateau_min_delta: float = 1e-3
    germinate_every_k_epochs: int | None = None
    germinate_cooldown_epochs: int = 2
    germinate_min_constraint: float = 1.0
    cull_after_epochs: int = 4
    cull_max_contribution: float = 0.0
    fossilize_hold_epochs: int = 2
    fossilize_min_benefit: float = 0.0
    max_live_seeds: int = 4
    max_added_parameters: int | None = None
    max_blueprint_risk: float = 0.5
    allowed_cost_tiers: tuple[CostTier, ...] = (CostTier.LOW, CostTier.MEDIUM, CostTier.HIGH)
    allow_high_risk_tier: bool = False
    preferred_cost_tier: CostTier = CostTier.LOW
    blend: BlendConfig = msgspec.field(default_factory=BlendConfig)
    horizon: GrowthHorizon = msgspec.field(default_factory=GrowthHorizon)

    @classmethod
    def from_config(
        cls,
        config: TamiyoConfig,
        *,
        max_live_seeds: int = 4,
        probation_epochs: int = 2,
        periodic: bool = False,
        horizon: GrowthHorizon | None = None,
    ) -> HeuristicConfig:
        """From TamiyoConfig plus what other sections own (Kasmina's max_active_seeds, probation_epochs, and the
        lifecycle's waits as a GrowthHorizon)."""
        return cls(
            plateau_patience_epochs=config.plateau_patience_epochs,
            plateau_min_delta=config.plateau_min_delta,
            germinate_every_k_epochs=config.every_k_epochs if periodic else None,
            germinate_cooldown_epochs=config.germinate_cooldown_epochs,
            germinate_min_constraint=config.germinate_min_constraint,
            cull_after_epochs=config.cull_after_epochs,
            fossilize_hold_epochs=probation_epochs,
            max_live_seeds=max_live_seeds,
            max_added_parameters=config.max_added_parameters,
            max_blueprint_risk=config.blueprint_risk_downgrade,
            preferred_cost_tier=CostTier(config.blueprint_cost_tier),
            horizon=horizon if horizon is not None else GrowthHorizon(),
        )


class HeuristicState(Record, frozen=True):
    """Everything the heuristic remembers between decisions; a checkpoint stores it and import_state() restores it.

    Per live seed: ``weak_epochs`` and ``benefit_epochs`` count distinct measurements in a row at most / above the
    thresholds (plus paused epochs as weak ones), ``measured_steps`` the step naming the last measurement seen, so a
    repeat of it counts no more, and ``held_epochs`` the probation epochs its benefit has stood.
    """

    first_epoch: int | None = None
    last_epoch: int | None = None
    best_validation_loss: float | None = None
    epochs_without_improvement: int = 0
    last_germination_epoch: int | None = None
    weak_epochs: dict[str, int] = msgspec.field(default_factory=dict)
    benefit_epochs: dict[str, int] = msgspec.field(default_factory=dict)
    decisions: int = 0
    measured_steps: dict[str, int] = msgspec.field(default_factory=dict)
    held_epochs: dict[str, int] = msgspec.field(default_factory=dict)


@final
class HeuristicPolicy:
    """Grow on a plateau (or every K epochs), cull what does not help, fossilize what held; see HeuristicConfig.

    Per epoch it returns at most one action, in this order of precedence: CULL (the seed weak longest, then the
    lowest contribution, then seed id), FOSSILIZE (PROBATIONARY seeds whose benefit held and whose last gate did
    not fail, by seed id), GERMINATE (into the most constrained free, non-embargoed slot that an acceptable,
    affordable blueprint fits, ties by slot name, with the fitting blueprint nearest the preferred cost tier, then the
    smallest in that slot, the least risky, by id), else NO_OP. Event-loop thread; never raises for a well-formed
    observation.
    """

    def __init__(
        self,
        config: HeuristicConfig | None = None,
        *,
        version: str = "heuristic-1",
        state: HeuristicState | None = None,
    ) -> None:
        self._config = config if config is not None else HeuristicConfig()
        self._version = version
        self._state = state if state is not None else HeuristicState()
        # The germination last returned, with the state's last_germination_epoch and epochs_without_improvement from
        # before it: what withdraw() puts back. Never exported: it is withdrawn, or not, before the state is.
        self._germinated: tuple[Decision, int | None, int] | None = None
        # The state before and after the last count_germination: what uncount_germination() puts back, if the state is
        # still the one it left. Never exported: a restarted controller keeps the count (the cooldown is kept).
        self._counted: tuple[HeuristicState, HeuristicState] | None = None

    @property
    def version(self) -> str:
        return self._version

    def export_state(self) -> HeuristicState:
        return self._state

    def import_state(self, state: HeuristicState) -> None:
        self._state = state
        self._germinated = None
        self._counted = None

    def withdraw(self, decision: Decision) -> None:
        """The germination last returned was not carried out: it starts no cooldown and leaves the plateau standing,
        so it is tried again at the next epoch end (see actors.tamiyo.policy.Withdrawable)."""
        germinated = self._germinated
        if germinated is None or germinated[0] is not decision:
            return
        self._germinated = None
        _, last, stalled = germinated
        self._state = msgspec.structs.replace(
            self._state, last_germination_epoch=last, epochs_without_improvement=stalled
        )

    def count_germination(self, epoch: int) -> None:
        """A germination this policy did not propose was carried out at the end of ``epoch``: the fallback's, when this
        is the configured policy, or the configured policy's, when this is the fallback. The cooldown runs from there
        and the plateau it answered is over, as after this policy's own (see actors.tamiyo.policy.Withdrawable);
        ``uncount_germination`` takes it back."""
        self._germinated = None
        before = self._state
        last = before.last_germination_epoch
        self._state = msgspec.structs.replace(
            before,
            last_germination_epoch=epoch if last is None else max(last, epoch),
            epochs_without_improvement=0,
        )
        self._counted = (before, self._state)

    def uncount_germination(self) -> None:
        """The germination last counted with ``count_germination`` was not made after all (every-K's, which Kasmina
        refused or withdrew): the cooldown and the plateau are again what they were before it, unless this policy has
        decided or counted since (what it did under the cooldown stands). Event loop, between decisions."""
        counted, self._counted = self._counted, None
        if counted is not None and self._state is counted[1]:
            self._state = counted[0]

    def decide(self, observation: Observation) -> Decision:
        self._germinated = None
        if not observation.opens_epoch_after(self._state.last_epoch):
            return msgspec.structs.replace(NO_OP, reason="not_epoch_end")
        self._observe(observation)
        decision = self._cull(observation) or self._fossilize(observation) or self._germinate(observation)
        if decision is None:
            decision = msgspec.structs.replace(NO_OP, reason="steady")
        self._state = msgspec.structs.replace(self._state, decisions=self._state.decisions + 1)
        return decision

    def _observe(self, observation: Observation) -> None:
        cfg, state = self._config, self._state
        loss = observation.packet.validation_loss
        assert loss is not None  # opens_epoch_after checked it
        best, stalled = state.best_validation_loss, state.epochs_without_improvement
        if not math.isfinite(loss):
            pass  # no evidence either way: a NaN validation loss counted as an epoch without improvement (a plateau)
        elif best is None or loss < best - cfg.plateau_min_delta:
            best, stalled = loss, 0
        else:
            stalled += 1
        weak: dict[str, int] = {}
        benefit: dict[str, int] = {}
        measured: dict[str, int] = {}
        held: dict[str, int] = {}
        for seed in observation.live_seeds():
            seed_id = seed.seed_id
            if seed_id is None:
                continue
            weak[seed_id] = state.weak_epochs.get(seed_id, 0)
            benefit[seed_id] = state.benefit_epochs.get(seed_id, 0)
            held[seed_id] = state.held_epochs.get(seed_id, 0)
            contribution = observation.seed_contributions.get(seed_id)
            new = False
            if contribution is not None:
                # G4 measures a seed seldom and Kasmina repeats its last result in every packet: counting it at each
                # epoch end would turn one measurement into cull_after_epochs weak (or benefit) ones.
                step = observation.contribution_steps.get(seed_id, observation.packet.global_step)
                new = state.measured_steps.get(seed_id) != step
                measured[seed_id] = step
            elif seed_id in state.measured_steps:
                measured[seed_id] = state.measured_steps[seed_id]
            if seed.paused:
                # A paused seed runs the identity path, so it contributes nothing, and this policy never resumes one
                # (the risk engine paused it for a loss spike): each paused epoch is a weak one, so it is culled
                # after cull_after_epochs instead of sitting half-blended until its gate times out.
                weak[seed_id] += 1
                continue
            if new:
                assert contribution is not None  # only a contribution is a new measurement
                weak[seed_id] = weak[seed_id] + 1 if contribution <= cfg.cull_max_contribution else 0
                benefit[seed_id] = benefit[seed_id] + 1 if contribution > cfg.fossilize_min_benefit else 0
            if seed.stage is not SeedLifecycleStage.PROBATIONARY or benefit[seed_id] == 0:
                held[seed_id] = 0
            else:
                # Time, not measurements: the probation window G4 judges at a fossilize request fills at epoch ends.
                held[seed_id] += 1
        self._state = msgspec.structs.replace(
            state,
            first_epoch=observation.epoch if state.first_epoch is None else state.first_epoch,
            last_epoch=observation.epoch,
            best_validation_loss=best,
            epochs_without_improvement=stalled,
            weak_epochs=weak,
            benefit_epochs=benefit,
            measured_steps=measured,
            held_epochs=held,
        )

    def _cull(self, observation: Observation) -> Decision | None:
        weak = self._state.weak_epochs
        due = [
            seed
            for seed in observation.live_seeds()
            if weak.get(seed.seed_id or "", 0) >= self._config.cull_after_epochs
        ]
        if not due:
            return None
        contributions = observation.seed_contributions

        def rank(seed: SeedState) -> tuple[int, float, str]:
            seed_id = seed.seed_id or ""
            return (-weak[seed_id], contributions.get(seed_id, 0.0), seed_id)

        victim = min(due, key=rank)
        return Decision(
            action=PolicyAction.CULL,
            target_slot=victim.slot,
            target_seed_id=victim.seed_id,
            reason="paused" if victim.paused else "no_benefit",
        )

    def _fossilize(self, observation: Observation) -> Decision | None:
        held = self._state.held_epochs
        for seed in observation.live_seeds():
            seed_id = seed.seed_id
            if seed.stage is not SeedLifecycleStage.PROBATIONARY or seed_id is None:
                continue
            if seed.last_gate is not None and not seed.last_gate.passed:
                continue
            if held.get(seed_id, 0) >= self._config.fossilize_hold_epochs:
                return Decision(
                    action=PolicyAction.FOSSILIZE, target_slot=seed.slot, target_seed_id=seed_id, reason="benefit_held"
                )
        return None

    def _germinate(self, observation: Observation) -> Decision | None:
        cfg, state, epoch = self._config, self._state, observation.epoch
        trigger = self._trigger(epoch)
        if trigger is None:
            return None
        last = state.last_germination_epoch
        if last is not None and epoch - last < cfg.germinate_cooldown_epochs:
            return msgspec.structs.replace(NO_OP, reason="cooldown")
        if len(observation.live_seeds()) >= cfg.max_live_seeds:
            return msgspec.structs.replace(NO_OP, reason="seed_budget")
        # A seed that could not be fossilized before the run ends (the lifecycle's waits, then fossilize_hold_epochs
        # probation epochs) would only spend compute and parameters.
        if not cfg.horizon.fossilized_by(observation.packet, probation_epochs=cfg.fossilize_hold_epochs):
            return msgspec.structs.replace(NO_OP, reason="too_late")
        free = observation.free_slots()
        if not free:
            return msgspec.structs.replace(NO_OP, reason="no_free_slot")
        constraint = observation.constraints()
        if any(constraint[s.slot] > 0.0 for s in observation.seeds):
            free = tuple(s for s in free if constraint[s.slot] >= cfg.germinate_min_constraint)
            if not free:
                return msgspec.structs.replace(NO_OP, reason="no_strained_slot")
        acceptable = [bp for bp in observation.blueprints if self._acceptable(bp)]
        if not acceptable:
            return msgspec.structs.replace(NO_OP, reason="no_blueprint")
        over_budget = False
        # A blueprint grafted into a slot of another kind is refused, so the growth goes to the most constrained slot
        # that an acceptable, affordable blueprint fits.
        for slot in sorted(free, key=lambda s: (-constraint[s.slot], s.slot)):
            fitting = [bp for bp in acceptable if bp.fits(slot.slot)]
            affordable = [bp for bp in fitting if observation.affords(bp, slot.slot, cfg.max_added_parameters)]
            over_budget = over_budget or len(affordable) < len(fitting)
            if not affordable:
                continue
            blueprint = min(affordable, key=functools.partial(self._preference, slot=slot.slot))
            self._state = msgspec.structs.replace(state, last_germination_epoch=epoch, epochs_without_improvement=0)
            decision = Decision(
                action=PolicyAction.GERMINATE,
                target_slot=slot.slot,
                blueprint_id=blueprint.blueprint_id,
                blend=cfg.blend,
                reason=trigger,
            )
            self._germinated = (decision, state.last_germination_epoch, state.epochs_without_improvement)
            return decision
        return msgspec.structs.replace(NO_OP, reason="parameter_budget" if over_budget else "no_fitting_blueprint")

    def _trigger(self, epoch: int) -> str | None:
        cfg, state = self._config, self._state
        if state.epochs_without_improvement >= cfg.plateau_patience_epochs:
            return "plateau"
        k = cfg.germinate_every_k_epochs
        if k is not None:
            since = state.last_germination_epoch if state.last_germination_epoch is not None else state.first_epoch
            if since is not None and epoch - since >= k:
                return "every_k"
        return None

    def _preference(self, blueprint: BlueprintCandidate, slot: str) -> tuple[int, int, int, float, str]:
        """The germination's order among fitting blueprints: nearest the preferred cost tier (ties to the cheaper),
        then the smallest in ``slot``, the least risky, by id."""
        tier = _COST_RANK[blueprint.cost_tier]
        preferred = _COST_RANK[self._config.preferred_cost_tier]
        return (abs(tier - preferred), tier, blueprint.parameters_in(slot), blueprint.risk, blueprint.blueprint_id)

    def _acceptable(self, blueprint: BlueprintCandidate) -> bool:
        cfg = self._config
        if blueprint.quarantine_only or blueprint.risk >= cfg.max_blueprint_risk:
            return False
        if blueprint.tier is BlueprintTier.HIGH_RISK and not cfg.allow_high_risk_tier:
            return False
        return blueprint.cost_tier in cfg.allowed_cost_tiers
