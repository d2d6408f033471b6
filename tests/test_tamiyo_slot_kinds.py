"""On a host with slots of several kinds, every policy grafts a blueprint only into a slot it fits, sized there."""

from __future__ import annotations

import msgspec
import torch

from actors.tamiyo.every_k import EveryKConfig, EveryKPolicy
from actors.tamiyo.gnn_policy import GnnPolicy, registries_for, weights_sha256
from actors.tamiyo.heuristic import HeuristicConfig, HeuristicPolicy
from actors.tamiyo.observe import build_observation, has_candidate
from actors.tamiyo.policy import BlueprintCandidate, Decision, Observation, SlotFacts
from esper.nn.policy_contract import ACTION_NAMES
from esper.nn.policy_gnn import TamiyoGNNConfig, build_tamiyo_gnn
from schemas.domain_enums import CostTier, PolicyAction
from schemas.enums import SeedLifecycleStage
from schemas.state import SeedState
from tests._tamiyo_harness import packet

GERM = PolicyAction.GERMINATE
# "conv" is a conv1d slot; "fc" (32 wide) and "head" (24 wide) are flat slots.
CONV = BlueprintCandidate(
    blueprint_id="bp-conv",
    cost_tier=CostTier.MEDIUM,
    parameter_count=300,
    slot_kinds=("conv1d",),
    slot_parameters={"conv": 300},
)
FLAT = BlueprintCandidate(
    blueprint_id="bp-flat",
    cost_tier=CostTier.MEDIUM,
    parameter_count=800,
    slot_kinds=("flat",),
    slot_parameters={"fc": 800, "head": 400},
)
ANY = BlueprintCandidate(
    blueprint_id="bp-any",
    cost_tier=CostTier.LOW,
    parameter_count=16,
    slot_kinds=("conv1d", "flat"),
    slot_parameters={"conv": 16, "fc": 64, "head": 48},
)
MIXED = (CONV, ANY, FLAT)


def dormant(slot: str) -> SeedState:
    return SeedState(slot=slot, stage=SeedLifecycleStage.DORMANT, layer_depth=("conv", "fc", "head").index(slot))


def fossilized(slot: str) -> SeedState:
    state = dormant(slot)
    return SeedState(
        slot=slot, stage=SeedLifecycleStage.FOSSILIZED, layer_depth=state.layer_depth, seed_id=f"seed-{slot}"
    )


def observe(
    epoch: int,
    *,
    occupied: tuple[str, ...] = (),
    constraints: dict[str, float] | None = None,
    seed_parameters: int = 0,
    blueprints: tuple[BlueprintCandidate, ...] = MIXED,
) -> Observation:
    seeds = tuple(fossilized(s) if s in occupied else dormant(s) for s in ("conv", "fc", "head"))
    p = packet(epoch * 10, epoch, validation_loss=1.0, seeds=seeds, seed_parameters=seed_parameters)
    observation = build_observation(p, blueprints)
    if constraints is None:
        return observation
    slots = tuple(SlotFacts(slot=name, constraint=value) for name, value in constraints.items())
    return Observation(packet=p, slots=slots, blueprints=blueprints)


def heuristic(**config: object) -> HeuristicPolicy:
    """A heuristic that grows at the first epoch without improvement into any slot, with ``config`` on top."""
    base = HeuristicConfig(plateau_patience_epochs=1, germinate_cooldown_epochs=0, germinate_min_constraint=0.0)
    return HeuristicPolicy(msgspec.structs.replace(base, **config))


def first_germination(policy: HeuristicPolicy, observation: Observation) -> Decision:
    """The policy's decision on ``observation`` after one epoch that starts a plateau."""
    policy.decide(observe(0))
    return policy.decide(observation)


def test_the_heuristic_grows_the_preferred_blueprint_among_those_that_fit_the_slot() -> None:
    """The flat slot strained most and the preferred (medium) tier held a conv and a flat blueprint: the conv one (the
    smaller by its first slot's size) went into the flat slot, where Kasmina refused it."""
    constraints = {"conv": 0.5, "fc": 3.0, "head": 1.0}
    decision = first_germination(heuristic(preferred_cost_tier=CostTier.MEDIUM), observe(1, constraints=constraints))
    assert (decision.action, decision.target_slot, decision.blueprint_id) == (GERM, "fc", "bp-flat")


def test_the_heuristic_moves_on_to_the_next_strained_slot_a_blueprint_fits() -> None:
    """Only a conv blueprint offered, the most strained slots flat: the conv slot, strained too, grows instead."""
    constraints = {"conv": 1.5, "fc": 3.0, "head": 2.0}
    decision = first_germination(heuristic(), observe(1, constraints=constraints, blueprints=(CONV,)))
    assert (decision.action, decision.target_slot, decision.blueprint_id) == (GERM, "conv", "bp-conv")


def test_the_heuristic_says_when_no_acceptable_blueprint_fits_a_strained_slot() -> None:
    policy = heuristic(germinate_min_constraint=1.0)
    decision = first_germination(
        policy, observe(1, constraints={"conv": 0.2, "fc": 3.0, "head": 2.0}, blueprints=(CONV,))
    )
    assert (decision.action, decision.reason) == (PolicyAction.NO_OP, "no_fitting_blueprint")


def test_the_heuristic_budgets_a_blueprint_at_its_size_in_the_slot() -> None:
    """bp-flat is 800 parameters after fc but 400 after head: with 500 to spend it goes after head (it was judged at
    its first slot's size, 800, so nothing grew), and with 300 nowhere."""
    constraints = {"conv": 0.5, "fc": 3.0, "head": 2.0}
    policy = heuristic(preferred_cost_tier=CostTier.MEDIUM, max_added_parameters=500)
    decision = first_germination(policy, observe(1, occupied=("conv",), constraints=constraints, blueprints=(FLAT,)))
    assert (decision.action, decision.target_slot, decision.blueprint_id) == (GERM, "head", "bp-flat")
    policy = heuristic(preferred_cost_tier=CostTier.MEDIUM, max_added_parameters=300)
    decision = first_germination(policy, observe(1, occupied=("conv",), constraints=constraints, blueprints=(FLAT,)))
    assert (decision.action, decision.reason) == (PolicyAction.NO_OP, "parameter_budget")


def test_the_heuristic_orders_blueprints_by_their_size_in_the_chosen_slot() -> None:
    """Two flat blueprints of one tier whose sizes order differently in each slot: the smaller there is grown."""
    wide_first = BlueprintCandidate(
        blueprint_id="bp-a", parameter_count=100, slot_kinds=("flat",), slot_parameters={"fc": 100, "head": 900}
    )
    narrow_first = BlueprintCandidate(
        blueprint_id="bp-b", parameter_count=200, slot_kinds=("flat",), slot_parameters={"fc": 200, "head": 50}
    )
    blueprints = (wide_first, narrow_first)
    for slot, expected in (("fc", "bp-a"), ("head", "bp-b")):
        constraints = {"conv": 0.0, "fc": 0.0, "head": 0.0, slot: 2.0}
        decision = first_germination(heuristic(), observe(1, constraints=constraints, blueprints=blueprints))
        assert (decision.target_slot, decision.blueprint_id) == (slot, expected)


def test_every_k_passes_over_blueprints_that_fit_no_free_slot() -> None:
    """The cycle conv, any, flat with the conv slot taken: conv is passed over (it was sent into fc and refused, and the
    cycle moved on), each graft lands in the first free slot its blueprint fits, and the cycle goes on after it."""
    policy = EveryKPolicy(EveryKConfig(every_k_epochs=1, max_live_seeds=10))
    policy.decide(observe(0))
    first = policy.decide(observe(1, occupied=("conv",)))
    assert (first.action, first.target_slot, first.blueprint_id) == (GERM, "fc", "bp-any")
    assert policy.export_state().next_blueprint == 2
    taken = observe(2, occupied=("conv",))
    # Kasmina accepted the first graft: its seed trains in fc.
    trains = SeedState(slot="fc", stage=SeedLifecycleStage.TRAINING, layer_depth=1, seed_id="seed-fc-10")
    seeds = tuple(trains if s.slot == "fc" else s for s in taken.seeds)
    second = policy.decide(build_observation(msgspec.structs.replace(taken.packet, seed_states=seeds), MIXED))
    assert (second.action, second.target_slot, second.blueprint_id) == (GERM, "head", "bp-flat")
    assert policy.export_state().next_blueprint == 0


def test_every_k_grafts_the_next_blueprint_into_the_first_free_slot_it_fits() -> None:
    """bp-flat is due and conv (first by name) is free: it goes into fc."""
    policy = EveryKPolicy(EveryKConfig(every_k_epochs=1, max_live_seeds=10))
    decision = policy.decide(observe(1, blueprints=(FLAT, CONV)))
    assert (decision.action, decision.target_slot, decision.blueprint_id) == (GERM, "fc", "bp-flat")


def test_every_k_waits_when_no_blueprint_fits_a_free_slot_and_budgets_per_slot() -> None:
    policy = EveryKPolicy(EveryKConfig(every_k_epochs=1, max_live_seeds=10, max_added_parameters=500))
    policy.decide(observe(0))
    waiting = policy.decide(observe(1, occupied=("fc", "head"), blueprints=(FLAT,)))
    assert (waiting.action, waiting.reason) == (PolicyAction.NO_OP, "no_fitting_blueprint")
    # bp-flat's first free slot is fc, where it is 800 parameters: over the budget its size after head would meet.
    assert policy.decide(observe(2, blueprints=(FLAT,))).reason == "parameter_budget"
    decision = policy.decide(observe(3, occupied=("fc",), blueprints=(FLAT,)))
    assert (decision.action, decision.target_slot) == (GERM, "head")


def test_no_candidate_when_no_blueprint_fits_a_free_slot() -> None:
    """The actor skips the policy (``no_candidate``) when nothing could be grafted: a conv blueprint and only flat
    slots free is nothing."""
    assert not has_candidate(observe(1, occupied=("conv",), blueprints=(CONV,)))
    assert has_candidate(observe(1, occupied=("fc",), blueprints=(CONV,)))
    assert has_candidate(observe(1, occupied=("conv",), blueprints=(BlueprintCandidate(blueprint_id="unsized"),)))


SMALL = TamiyoGNNConfig(hidden=16, gat_hidden=8, heads=2, dropout=0.0)


def germinating_gnn(blueprints: tuple[BlueprintCandidate, ...]) -> GnnPolicy:
    """A small GNN that always germinates (its action head biased), the same network at every call."""
    model = build_tamiyo_gnn(SMALL, seed=7)
    with torch.no_grad():
        model.action_head.bias[ACTION_NAMES.index(GERM.name)] = 50.0
    return GnnPolicy(
        model,
        registries=registries_for([bp.blueprint_id for bp in blueprints], ("conv1d",), ("relu",)),
        weights_digest=weights_sha256(model),
    )


def unsized(blueprint: BlueprintCandidate) -> BlueprintCandidate:
    """The candidate as it was offered before: no slot kinds, so it fits every slot."""
    return BlueprintCandidate(
        blueprint_id=blueprint.blueprint_id,
        cost_tier=blueprint.cost_tier,
        parameter_count=blueprint.parameter_count,
    )


def test_the_gnn_picks_the_best_scoring_blueprint_that_fits_the_chosen_slot() -> None:
    """Whichever blueprint the network scores highest for a free slot, fitting no other: the pick is one that fits."""
    unrestricted = germinating_gnn(MIXED).decide(observe(1, occupied=("conv", "head"), blueprints=MIXED))
    assert (unrestricted.action, unrestricted.target_slot) == (GERM, "fc")
    top = unrestricted.blueprint_id
    # The same graph (sizes are not features of it), with the top blueprint fitting only the occupied conv slot.
    moved = tuple(
        BlueprintCandidate(
            blueprint_id=bp.blueprint_id,
            cost_tier=bp.cost_tier,
            parameter_count=bp.parameter_count,
            slot_kinds=("conv1d",) if bp.blueprint_id == top else ("flat",),
            slot_parameters={"conv": 10} if bp.blueprint_id == top else {"fc": 10, "head": 10},
        )
        for bp in MIXED
    )
    decision = germinating_gnn(moved).decide(observe(1, occupied=("conv", "head"), blueprints=moved))
    assert (decision.action, decision.target_slot) == (GERM, "fc")
    assert decision.blueprint_id != top
    assert decision.blueprint_id in {bp.blueprint_id for bp in moved if bp.fits("fc")}
    # The action's figures are the first inference's: the extra one only picks the blueprint.
    assert decision.log_prob == unrestricted.log_prob


def test_the_gnn_germinates_only_into_a_slot_some_blueprint_fits() -> None:
    """Only a flat blueprint offered: the seed head favours the conv slot (as it does with the blueprint unsized,
    fitting everywhere), which is no germination target; with the flat slots taken, GERMINATE is masked altogether."""
    anywhere = germinating_gnn((FLAT,)).decide(observe(1, blueprints=(unsized(FLAT),)))
    assert (anywhere.action, anywhere.target_slot) == (GERM, "conv")
    decision = germinating_gnn((FLAT,)).decide(observe(1, blueprints=(FLAT,)))
    assert decision.action is GERM
    assert decision.target_slot in {"fc", "head"}
    assert decision.blueprint_id == "bp-flat"
    blocked = germinating_gnn((FLAT,)).decide(observe(1, occupied=("fc", "head"), blueprints=(FLAT,)))
    assert blocked.action is not GERM
