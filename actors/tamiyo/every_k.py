"""The every-K policy: the growth literature's periodic baseline.

The next blueprint into the first free slot (in the model's order) every K epochs. Acts on the same packets as the
heuristic (actors.tamiyo.heuristic), and withdraws, counts and settles its grafts by the same rules (see that module's
docstring).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, final

import msgspec

from actors.tamiyo.horizon import GrowthHorizon
from actors.tamiyo.policy import NO_OP, Decision
from schemas.base import Record
from schemas.control import BlendConfig, germinated_seed_id
from schemas.domain_enums import PolicyAction
from schemas.enums import SeedLifecycleStage

if TYPE_CHECKING:
    from actors.tamiyo.policy import Observation


class EveryKConfig(Record, frozen=True):
    """Knobs of the every-K policy: cadence in epochs, budgets, the BlendConfig sent with a germination, and the
    growth horizon: no graft once a seed grafted now could not pass G4 into probation before the run's last step
    (NO_OP "too_late"; this policy never asks to fossilize, so that is as far as its seeds go)."""

    every_k_epochs: int = 3
    max_live_seeds: int = 4
    max_added_parameters: int | None = None
    blend: BlendConfig = msgspec.field(default_factory=BlendConfig)
    horizon: GrowthHorizon = msgspec.field(default_factory=GrowthHorizon)


class PendingGraft(Record, frozen=True):
    """every_k's last graft until a packet shows whether it took effect: the seed it named (Kasmina's id for it,
    schemas.control.germinated_seed_id), its slot, and the schedule from before it, which a graft that did not take
    effect puts back."""

    seed_id: str
    slot: str
    last_germination_epoch: int | None
    next_blueprint: int


class EveryKState(Record, frozen=True):
    """What the every-K policy remembers: epochs seen, the last graft, which blueprint comes next, and the last graft
    while it is not yet known to have taken effect (``pending``).

    ``first_epoch`` is no longer read or written (the cadence counts from the run's start, not from the first epoch
    end seen); the field stays so that states an earlier version wrote still decode."""

    first_epoch: int | None = None
    last_epoch: int | None = None
    last_germination_epoch: int | None = None
    next_blueprint: int = 0
    pending: PendingGraft | None = None


@final
class EveryKPolicy:
    """Graft the next blueprint (cycling through the candidates in the order given, passing over those that fit no
    free slot) into the first free slot it fits in the model's order (``layer_depth``, ties by name) every K epochs,
    within the seed and parameter budgets; never culls or fossilizes. A baseline for growth schedules. The grafts are
    decided at the ends of epochs K, 2K, 3K ... counting from the run's start (packet epochs K - 1, 2K - 1, ...). If a
    graft is impossible when due, or is withdrawn (vetoed by the risk engine), it tries again at the next epoch with
    the same blueprint, and the next one is due K epochs after the graft made. So is a graft that did not take effect,
    which the packets after it show: Kasmina refused the command (its seed never appears) or withdrew the germination
    (the trainer refused its attach at an emergency level: the seed leaves its slot without leaving GERMINATED).
    """

    def __init__(
        self, config: EveryKConfig | None = None, *, version: str = "every-k-1", state: EveryKState | None = None
    ) -> None:
        self._config = config if config is not None else EveryKConfig()
        self._version = version
        self._state = state if state is not None else EveryKState()
        # The graft last returned and the state from before it (what withdraw() puts back); never exported.
        self._grafted: tuple[Decision, EveryKState] | None = None
        # A graft of this policy's found not made (take_unmade), for the fallback that counted it; never exported.
        self._unmade = False

    @property
    def version(self) -> str:
        return self._version

    def export_state(self) -> EveryKState:
        return self._state

    def import_state(self, state: EveryKState) -> None:
        self._state = state
        self._grafted = None
        self._unmade = False

    def take_unmade(self) -> bool:
        """Whether a graft of this policy's was found not made (``_settle``) since the last call; resets it (see
        actors.tamiyo.policy.KnowsUnmade)."""
        unmade, self._unmade = self._unmade, False
        return unmade

    def withdraw(self, decision: Decision) -> None:
        """The graft last returned was not carried out: it is still due, with the same blueprint, at the next epoch
        end (see actors.tamiyo.policy.Withdrawable)."""
        grafted = self._grafted
        if grafted is None or grafted[0] is not decision:
            return
        self._grafted = None
        before = grafted[1]
        self._state = msgspec.structs.replace(
            self._state,
            last_germination_epoch=before.last_germination_epoch,
            next_blueprint=before.next_blueprint,
            pending=before.pending,
        )

    def count_germination(self, epoch: int) -> None:
        """The fallback's germination was carried out at the end of ``epoch``: the next graft is due K epochs after it
        (see actors.tamiyo.policy.Withdrawable)."""
        self._grafted = None
        state = self._state
        last, pending = state.last_germination_epoch, state.pending
        if pending is not None:
            # Should this policy's own pending graft turn out not to have taken effect, the fallback's still did.
            before = pending.last_germination_epoch
            pending = msgspec.structs.replace(
                pending, last_germination_epoch=epoch if before is None else max(before, epoch)
            )
        self._state = msgspec.structs.replace(
            state, last_germination_epoch=epoch if last is None else max(last, epoch), pending=pending
        )

    def decide(self, observation: Observation) -> Decision:
        self._grafted = None
        self._settle(observation)
        state, cfg, epoch = self._state, self._config, observation.epoch
        if not observation.opens_epoch_after(state.last_epoch):
            return msgspec.structs.replace(NO_OP, reason="not_epoch_end")
        self._state = state = msgspec.structs.replace(state, last_epoch=epoch)
        # Before any graft the count starts at the run's start, as if one had been made just before epoch 0 (whose
        # end is the first epoch's): counted from the first epoch end seen, every graft came one epoch late.
        since = state.last_germination_epoch if state.last_germination_epoch is not None else -1
        if epoch - since < cfg.every_k_epochs:
            return msgspec.structs.replace(NO_OP, reason="not_due")
        if len(observation.live_seeds()) >= cfg.max_live_seeds:
            return msgspec.structs.replace(NO_OP, reason="seed_budget")
        if not cfg.horizon.judged_by(observation.packet):
            return msgspec.structs.replace(NO_OP, reason="too_late")
        # The next free slot in the model's order (a slot's depth is its place in it): by name, blocks.10 came
        # before blocks.2.
        free = tuple(sorted(observation.free_slots(), key=lambda s: (s.layer_depth, s.slot)))
        candidates = observation.blueprints
        if not free or not candidates:
            return msgspec.structs.replace(NO_OP, reason="no_free_slot" if not free else "no_blueprint")
        for offset in range(len(candidates)):
            # A blueprint that fits no free slot (its slot kinds are all taken) is passed over in the cycle: grafted
            # into a slot of another kind it would only be refused.
            index = (state.next_blueprint + offset) % len(candidates)
            blueprint = candidates[index]
            slot = next((s.slot for s in free if blueprint.fits(s.slot)), None)
            if slot is not None:
                break
        else:
            return msgspec.structs.replace(NO_OP, reason="no_fitting_blueprint")
        if not observation.affords(blueprint, slot, cfg.max_added_parameters):
            return msgspec.structs.replace(NO_OP, reason="parameter_budget")
        pending = PendingGraft(
            seed_id=germinated_seed_id(slot, observation.packet.global_step),
            slot=slot,
            last_germination_epoch=state.last_germination_epoch,
            next_blueprint=state.next_blueprint,
        )
        self._state = msgspec.structs.replace(
            state, last_germination_epoch=epoch, next_blueprint=(index + 1) % len(candidates), pending=pending
        )
        decision = Decision(
            action=PolicyAction.GERMINATE,
            target_slot=slot,
            blueprint_id=blueprint.blueprint_id,
            blend=cfg.blend,
            reason="every_k",
        )
        self._grafted = (decision, state)
        return decision

    def _settle(self, observation: Observation) -> None:
        """Learn from the packet whether the pending graft took effect. Kasmina shows the packets after a decision's
        boundary only once that boundary is planned, so its seed is in its slot from the next packet on if the
        command was accepted. Past GERMINATED (in training, or culled at its attach's gate: it was grafted and
        judged), the graft was made; in GERMINATED, not yet known (its attach is still to come); gone from its slot,
        it was refused or withdrawn, and the schedule from before it comes back: the graft is due again at once,
        with the same blueprint."""
        pending = self._state.pending
        if pending is None:
            return
        shown = next((s for s in observation.seeds if s.slot == pending.slot), None)
        if shown is not None and shown.seed_id == pending.seed_id:
            if shown.stage is not SeedLifecycleStage.GERMINATED:
                self._state = msgspec.structs.replace(self._state, pending=None)
            return
        self._state = msgspec.structs.replace(
            self._state,
            last_germination_epoch=pending.last_germination_epoch,
            next_blueprint=pending.next_blueprint,
            pending=None,
        )
        self._unmade = True
