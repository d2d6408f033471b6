"""From Tolaria's SystemStatePacket and the blueprint catalogue to the Observation every Tamiyo policy reads.

Slot facts, per SeedState of the packet:

- ``constraint``: how hard the layer in front of the slot is straining, as the gradient norm of that layer (the
  LayerSummary at the slot's ``layer_depth``, else ``layer_gradient_norms`` under the layer's or the slot's name)
  divided by the mean over every layer the packet reports. So 1.0 is an average layer, > 1 a layer carrying more
  gradient than most; 0 when the packet carries no gradient norms. Unitless, >= 0.
- ``embargoed``: the slot's ``embargo_until_epoch`` is after the packet's epoch (or its stage is EMBARGOED).

Seed contributions come from the last gate result Kasmina attached to a seed: its ``benefit_mean`` attribute (the
counterfactual validation-loss contribution, positive when the seed helps), when the gate measured one, with the
gate result's step naming the measurement. Only G4 measures one, and seldom: a PENDING verdict is not reported, so a
seed shows the G4 result that ended its SHADOWING (a pass: it is PROBATIONARY; a failure culls it), and in
PROBATIONARY G4 runs again only once a fossilization is requested. Epoch-end packets in between repeat that result.
Pure functions; any thread.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from actors.tamiyo.policy import BlueprintCandidate, Observation, SlotFacts, embargoed_at
from schemas.enums import SeedLifecycleStage

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Mapping

    from schemas.state import GateResult, SeedState, SystemStatePacket

BENEFIT_ATTRIBUTE = "benefit_mean"

# Stages whose seed is in the host's output at alpha 1 (esper.nn.slots: FULL).
_FULL_OUTPUT = frozenset({SeedLifecycleStage.SHADOWING, SeedLifecycleStage.PROBATIONARY})


def layer_gradient_norms(packet: SystemStatePacket) -> dict[int, float]:
    """Finite gradient norms by layer depth: the LayerSummary's own, else ``layer_gradient_norms[name]``."""
    by_depth: dict[int, float] = {}
    for layer in sorted(packet.layers, key=lambda lay: (lay.depth, lay.name)):
        norm = layer.gradient_norm
        if norm is None:
            norm = packet.layer_gradient_norms.get(layer.name)
        if norm is not None and math.isfinite(norm) and layer.depth not in by_depth:
            by_depth[layer.depth] = max(norm, 0.0)
    return by_depth


def mean_layer_norm(packet: SystemStatePacket, by_depth: Mapping[int, float]) -> float:
    """The mean of the layers' gradient norms that ``slot_constraint`` divides by (0.0 with none): every layer the
    packet reports a norm for (Tolaria's summaries cover only the layers with slots, and a mean over those alone
    would judge each slot against the others instead of against the whole host), else the summaries' own."""
    norms = [max(v, 0.0) for v in packet.layer_gradient_norms.values() if math.isfinite(v)] or list(by_depth.values())
    return math.fsum(norms) / len(norms) if norms else 0.0


def slot_constraint(
    state: SeedState, packet: SystemStatePacket, by_depth: Mapping[int, float], mean: float | None = None
) -> float:
    """The slot's constraint score (see the module docstring); ``mean``: ``mean_layer_norm``'s, if computed already."""
    if mean is None:
        mean = mean_layer_norm(packet, by_depth)
    if mean <= 0.0:
        return 0.0
    norm = by_depth.get(state.layer_depth)
    if norm is None:
        norm = packet.layer_gradient_norms.get(state.slot)
    if norm is None or not math.isfinite(norm):
        return 0.0
    return max(norm, 0.0) / mean


def _measured(packet: SystemStatePacket) -> Iterator[tuple[str, float, GateResult]]:
    for state in packet.seed_states:
        gate = state.last_gate
        if state.seed_id is None or gate is None:
            continue
        benefit = gate.attributes.get(BENEFIT_ATTRIBUTE)
        if benefit is not None and math.isfinite(benefit):
            yield state.seed_id, benefit, gate


def seed_contributions(packet: SystemStatePacket) -> dict[str, float]:
    """Seed id -> measured benefit, from each seed's last gate result (absent when unmeasured)."""
    return {seed_id: benefit for seed_id, benefit, _ in _measured(packet)}


def contribution_steps(packet: SystemStatePacket) -> dict[str, int]:
    """Seed id -> the step of the gate result its measured benefit comes from (absent when unmeasured)."""
    return {seed_id: gate.step for seed_id, _, gate in _measured(packet)}


def build_observation(
    packet: SystemStatePacket,
    blueprints: Iterable[BlueprintCandidate],
    *,
    contributions: Mapping[str, float] | None = None,
) -> Observation:
    """The Observation of one packet: slot facts in slot order, the candidates as given, and seed contributions.

    Args:
        packet: Tolaria's packet.
        blueprints: the candidate blueprints (Karn's catalogue facts), in the order the caller keeps them.
        contributions: seed id -> benefit measured elsewhere for this packet; overrides what the gate results say.
    """
    by_depth = layer_gradient_norms(packet)
    mean = mean_layer_norm(packet, by_depth)  # once: per slot it made a 512-slot observation quadratic
    slots = tuple(
        SlotFacts(
            slot=state.slot,
            constraint=slot_constraint(state, packet, by_depth, mean),
            embargoed=embargoed_at(state, packet.epoch),
        )
        for state in sorted(packet.seed_states, key=lambda s: s.slot)
    )
    measured = seed_contributions(packet)
    steps = contribution_steps(packet)
    if contributions is not None:
        measured.update(contributions)
        for seed_id in contributions:
            steps.pop(seed_id, None)
    return Observation(
        packet=packet,
        slots=slots,
        blueprints=tuple(blueprints),
        seed_contributions=measured,
        contribution_steps=steps,
    )


def has_candidate(observation: Observation) -> bool:
    """Whether any decision but NO_OP is possible: a live seed, or a free slot with a blueprint that fits it."""
    if observation.live_seeds():
        return True
    return any(observation.fitting(s.slot) for s in observation.free_slots())


def no_candidate_reason(observation: Observation) -> str:
    """The NO_OP reason when no other decision is possible (see has_candidate): ``no_free_slot`` when every slot is
    taken (a fossilized or initial seed in it, or a cull's embargo and reset), as the heuristic says with a live seed;
    ``no_candidate`` when a slot is free but no offered blueprint fits it."""
    return "no_candidate" if observation.free_slots() else "no_free_slot"


def implicated_seed(observation: Observation) -> str | None:
    """The seed a loss spike is blamed on, among those whose output the host sees: the BLENDING seed furthest into
    its ramp (highest alpha above 0, then the youngest), else the youngest SHADOWING or PROBATIONARY one (alpha 1);
    None if no seed shapes the host's output (the spike is then the host's own).

    A blend changes the function in proportion to alpha, so a seed that has only just started blending (alpha near 0)
    cannot have caused a spike that a seed further along could have. A seed at alpha 1 was in the previous
    validation's output too, so a blend under way is the likelier change; among those at alpha 1, the youngest came
    into the output last. A GERMINATED or TRAINING seed (alpha 0: the host's output is its own, esper.nn.slots), a
    BLENDING one whose ramp has not started and a paused one (the identity path) change nothing the validation sees,
    so they are never blamed.
    """
    blending: list[SeedState] = []
    full: list[SeedState] = []
    for state in observation.live_seeds():
        if state.seed_id is None or state.paused:
            continue
        if state.stage is SeedLifecycleStage.BLENDING and state.alpha > 0.0:
            blending.append(state)
        elif state.stage in _FULL_OUTPUT:
            full.append(state)
    if blending:
        return min(blending, key=lambda s: (-s.alpha, s.age_steps, s.slot)).seed_id
    if full:
        return min(full, key=lambda s: (s.age_steps, s.slot)).seed_id
    return None


def candidate(observation: Observation, blueprint_id: str | None) -> BlueprintCandidate | None:
    """The candidate named ``blueprint_id``, if it is one."""
    if blueprint_id is None:
        return None
    return next((bp for bp in observation.blueprints if bp.blueprint_id == blueprint_id), None)
