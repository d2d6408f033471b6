"""The heuristic and every-K policies on crafted epoch sequences: growth triggers, cull, fossilize, budgets, state."""

from __future__ import annotations

import msgspec
import pytest

from actors.tamiyo import state_codec
from actors.tamiyo.every_k import EveryKConfig, EveryKPolicy, EveryKState
from actors.tamiyo.heuristic import HeuristicConfig, HeuristicPolicy, HeuristicState
from actors.tamiyo.observe import build_observation, implicated_seed
from actors.tamiyo.policy import BlueprintCandidate, Decision, Observation, Policy, SlotFacts
from schemas.config import TamiyoConfig
from schemas.control import germinated_seed_id
from schemas.domain_enums import BlueprintTier, CostTier, PolicyAction
from schemas.enums import SeedLifecycleGate, SeedLifecycleStage
from schemas.state import GateResult, SeedState, StepTimings, SystemStatePacket

TIMINGS = StepTimings(
    data_wait_ms=1.0, host_to_device_ms=0.0, forward_ms=2.0, backward_ms=3.0, optimizer_ms=1.0, step_ms=7.0
)
BLUEPRINTS = (
    BlueprintCandidate(blueprint_id="bp-wide", cost_tier=CostTier.MEDIUM, parameter_count=500),
    BlueprintCandidate(blueprint_id="bp-small", cost_tier=CostTier.LOW, parameter_count=100, risk=0.1),
    BlueprintCandidate(blueprint_id="bp-tiny", cost_tier=CostTier.LOW, parameter_count=100, risk=0.1),
)
SLOTS = ("s0", "s1", "s2")


def dormant(slot: str, *, embargo_until_epoch: int | None = None) -> SeedState:
    return SeedState(
        slot=slot,
        stage=SeedLifecycleStage.DORMANT,
        layer_depth=SLOTS.index(slot),
        embargo_until_epoch=embargo_until_epoch,
    )


def seed(slot: str, seed_id: str, stage: SeedLifecycleStage, **fields: object) -> SeedState:
    state = SeedState(slot=slot, stage=stage, layer_depth=SLOTS.index(slot), seed_id=seed_id, blueprint_id="bp-small")
    return msgspec.structs.replace(state, **fields)


def observe(
    epoch: int,
    loss: float | None,
    seeds: tuple[SeedState, ...] | None = None,
    *,
    contributions: dict[str, float] | None = None,
    constraints: dict[str, float] | None = None,
    seed_parameters: int = 0,
    blueprints: tuple[BlueprintCandidate, ...] = BLUEPRINTS,
) -> Observation:
    packet = SystemStatePacket(
        run_id="run-1",
        epoch=epoch,
        epochs_total=50,
        global_step=epoch * 10,
        epoch_progress=1.0,
        issued_at=float(epoch),
        training_loss=1.0,
        training_accuracy=0.5,
        timings=TIMINGS,
        host_parameters=10_000,
        seed_parameters=seed_parameters,
        samples_per_s=1000.0,
        hook_latency_ms=1.0,
        validation_loss=loss,
        seed_states=seeds if seeds is not None else tuple(dormant(s) for s in SLOTS),
    )
    slots = tuple(SlotFacts(slot=name, constraint=value) for name, value in (constraints or {}).items())
    return Observation(packet=packet, slots=slots, blueprints=blueprints, seed_contributions=contributions or {})


def run(policy: Policy, observations: list[Observation]) -> list[Decision]:
    return [policy.decide(o) for o in observations]


def actions(decisions: list[Decision]) -> list[PolicyAction]:
    return [d.action for d in decisions]


NOOP, GERM, CULL, FOSS = PolicyAction.NO_OP, PolicyAction.GERMINATE, PolicyAction.CULL, PolicyAction.FOSSILIZE


def test_plateau_germinates_into_the_most_constrained_slot_with_the_cheapest_blueprint() -> None:
    policy = HeuristicPolicy(HeuristicConfig(plateau_patience_epochs=2, plateau_min_delta=0.01))
    constraints = {"s0": 0.2, "s1": 3.0, "s2": 1.0}
    losses = [1.0, 0.9, 0.895, 0.893]
    decisions = run(policy, [observe(e, loss, constraints=constraints) for e, loss in enumerate(losses)])
    assert actions(decisions) == [NOOP, NOOP, NOOP, GERM]
    germ = decisions[-1]
    assert (germ.target_slot, germ.blueprint_id, germ.reason) == ("s1", "bp-small", "plateau")
    assert germ.blend is not None


def test_a_non_finite_validation_loss_is_no_plateau() -> None:
    """A model whose eval pass gives NaN: every epoch read as one without improvement, so the heuristic grew seeds
    on a plateau it could not have seen."""
    policy = HeuristicPolicy(HeuristicConfig(plateau_patience_epochs=2, plateau_min_delta=0.01))
    constraints = {"s0": 0.2, "s1": 3.0, "s2": 1.0}
    nan = float("nan")
    decisions = run(policy, [observe(e, loss, constraints=constraints) for e, loss in enumerate([1.0, nan, nan, nan])])
    assert actions(decisions) == [NOOP] * 4


def test_growth_goes_only_where_the_layer_strains_and_waits_while_none_does() -> None:
    policy = HeuristicPolicy(HeuristicConfig(plateau_patience_epochs=1, germinate_min_constraint=1.0))
    relaxed = {"s0": 0.6, "s1": 0.9, "s2": 0.8}
    decisions = run(policy, [observe(e, 1.0, constraints=relaxed) for e in range(3)])
    assert [d.reason for d in decisions] == ["steady", "no_strained_slot", "no_strained_slot"]
    assert actions(decisions) == [NOOP] * 3
    # The plateau is still pending: the first epoch a free slot strains, the seed goes there and only there.
    strained = policy.decide(observe(3, 1.0, constraints={"s0": 0.6, "s1": 0.9, "s2": 1.0}))
    assert (strained.action, strained.target_slot, strained.reason) == (GERM, "s2", "plateau")


def test_the_strain_threshold_is_ignored_when_the_packet_carries_no_gradient_norms() -> None:
    policy = HeuristicPolicy(HeuristicConfig(plateau_patience_epochs=1, germinate_min_constraint=1.0))
    decisions = run(policy, [observe(e, 1.0) for e in range(2)])
    assert (decisions[-1].action, decisions[-1].target_slot) == (GERM, "s0")


def test_no_germination_once_a_seed_could_not_be_kept_before_the_end() -> None:
    # epochs_total is 50 and fossilization needs fossilize_hold_epochs (2) probation epochs after this one.
    def plateau_at(last_epoch: int) -> Decision:
        policy = HeuristicPolicy(HeuristicConfig(plateau_patience_epochs=2, plateau_min_delta=0.01))
        start = last_epoch - 3
        return run(policy, [observe(start + i, loss) for i, loss in enumerate([1.0, 0.9, 0.9, 0.9])])[-1]

    assert plateau_at(46).action is GERM, "three epochs left: enough for a full probation"
    late = plateau_at(47)
    assert (late.action, late.reason) == (NOOP, "too_late")
    assert plateau_at(49).reason == "too_late"


def test_steady_improvement_is_no_op() -> None:
    policy = HeuristicPolicy()
    decisions = run(policy, [observe(e, 1.0 - 0.05 * e) for e in range(8)])
    assert actions(decisions) == [NOOP] * 8
    assert {d.reason for d in decisions} == {"steady"}


def test_mid_epoch_and_repeated_packets_change_nothing() -> None:
    policy = HeuristicPolicy(HeuristicConfig(plateau_patience_epochs=1))
    assert policy.decide(observe(0, 1.0)).action is NOOP
    before = policy.export_state()
    assert policy.decide(observe(1, None)).reason == "not_epoch_end"
    assert policy.decide(observe(0, 5.0)).reason == "not_epoch_end"
    assert policy.export_state() == before
    assert policy.decide(observe(1, 1.0)).action is GERM


def test_constraint_ties_break_by_slot_name_and_gradient_norms_are_the_fallback() -> None:
    policy = HeuristicPolicy(HeuristicConfig(plateau_patience_epochs=1))
    policy.decide(observe(0, 1.0))
    assert policy.decide(observe(1, 1.0)).target_slot == "s0"
    policy = HeuristicPolicy(HeuristicConfig(plateau_patience_epochs=1))
    policy.decide(observe(0, 1.0))
    obs = observe(1, 1.0)
    obs = msgspec.structs.replace(
        obs, packet=msgspec.structs.replace(obs.packet, layer_gradient_norms={"s2": 5.0, "s1": 1.0})
    )
    assert policy.decide(obs).target_slot == "s2"


def test_embargo_is_honoured() -> None:
    policy = HeuristicPolicy(HeuristicConfig(plateau_patience_epochs=1))
    constraints = {"s0": 9.0, "s1": 5.0, "s2": 1.0}
    seeds = (
        dormant("s0", embargo_until_epoch=5),
        SeedState(slot="s1", stage=SeedLifecycleStage.EMBARGOED, layer_depth=1),
        dormant("s2"),
    )
    policy.decide(observe(0, 1.0, seeds, constraints=constraints))
    assert policy.decide(observe(1, 1.0, seeds, constraints=constraints)).target_slot == "s2"
    # An embargo the caller knows of through SlotFacts counts too; with every slot embargoed nothing grows.
    policy = HeuristicPolicy(HeuristicConfig(plateau_patience_epochs=1))
    blocked = msgspec.structs.replace(observe(0, 1.0, seeds), slots=(SlotFacts(slot="s2", embargoed=True),))
    policy.decide(blocked)
    blocked = msgspec.structs.replace(observe(1, 1.0, seeds), slots=(SlotFacts(slot="s2", embargoed=True),))
    assert policy.decide(blocked).reason == "no_free_slot"
    # Once the embargo epoch arrives the slot is free again.
    later = (dormant("s0", embargo_until_epoch=5), dormant("s1"), dormant("s2"))
    policy = HeuristicPolicy(HeuristicConfig(plateau_patience_epochs=1))
    policy.decide(observe(4, 1.0, later, constraints=constraints))
    assert policy.decide(observe(5, 1.0, later, constraints=constraints)).target_slot == "s0"


def test_cooldown_spaces_germinations() -> None:
    policy = HeuristicPolicy(HeuristicConfig(plateau_patience_epochs=1, germinate_cooldown_epochs=3))
    decisions = run(policy, [observe(e, 1.0) for e in range(8)])
    assert actions(decisions) == [NOOP, GERM, NOOP, NOOP, GERM, NOOP, NOOP, GERM]
    assert [d.reason for d in decisions[2:4]] == ["cooldown", "cooldown"]


def test_every_k_in_the_heuristic() -> None:
    policy = HeuristicPolicy(HeuristicConfig(plateau_patience_epochs=100, germinate_every_k_epochs=3))
    decisions = run(policy, [observe(e, 1.0 - 0.1 * e) for e in range(10)])
    assert actions(decisions) == [NOOP, NOOP, NOOP, GERM, NOOP, NOOP, GERM, NOOP, NOOP, GERM]
    assert decisions[3].reason == "every_k"


def test_seed_budget_is_honoured() -> None:
    policy = HeuristicPolicy(HeuristicConfig(plateau_patience_epochs=1, max_live_seeds=2))
    seeds = (
        seed("s0", "a", SeedLifecycleStage.TRAINING),
        seed("s1", "b", SeedLifecycleStage.BLENDING),
        dormant("s2"),
    )
    policy.decide(observe(0, 1.0, seeds))
    assert policy.decide(observe(1, 1.0, seeds)).reason == "seed_budget"
    # A fossilized seed no longer counts as live.
    seeds = (seeds[0], seed("s1", "b", SeedLifecycleStage.FOSSILIZED), dormant("s2"))
    decision = policy.decide(observe(2, 1.0, seeds))
    assert (decision.action, decision.target_slot) == (GERM, "s2")


def test_parameter_budget_is_honoured() -> None:
    config = HeuristicConfig(plateau_patience_epochs=1, max_added_parameters=1000)
    policy = HeuristicPolicy(config)
    policy.decide(observe(0, 1.0, seed_parameters=950))
    assert policy.decide(observe(1, 1.0, seed_parameters=950)).reason == "parameter_budget"
    # With room for the small blueprints only, the cheap one is chosen.
    policy = HeuristicPolicy(config)
    policy.decide(observe(0, 1.0, seed_parameters=900))
    assert policy.decide(observe(1, 1.0, seed_parameters=900)).blueprint_id == "bp-small"
    # When only the expensive tier fits, it is used.
    only_wide = (BlueprintCandidate(blueprint_id="bp-wide", cost_tier=CostTier.HIGH, parameter_count=50),)
    policy = HeuristicPolicy(config)
    policy.decide(observe(0, 1.0, seed_parameters=900, blueprints=only_wide))
    assert policy.decide(observe(1, 1.0, seed_parameters=900, blueprints=only_wide)).blueprint_id == "bp-wide"


def test_a_preferred_cost_tier_picks_the_nearest_tier_ties_going_to_the_cheaper() -> None:
    def grown(preferred: CostTier, blueprints: tuple[BlueprintCandidate, ...] = BLUEPRINTS) -> str | None:
        policy = HeuristicPolicy(HeuristicConfig(plateau_patience_epochs=1, preferred_cost_tier=preferred))
        policy.decide(observe(0, 1.0, blueprints=blueprints))
        return policy.decide(observe(1, 1.0, blueprints=blueprints)).blueprint_id

    assert grown(CostTier.LOW) == "bp-small"
    assert grown(CostTier.MEDIUM) == "bp-wide"
    # No HIGH blueprint: MEDIUM is nearest.
    assert grown(CostTier.HIGH) == "bp-wide"
    # Preferring MEDIUM with only LOW and HIGH on offer: both are one tier away, the cheaper wins.
    low_and_high = (
        BlueprintCandidate(blueprint_id="bp-big", cost_tier=CostTier.HIGH, parameter_count=50),
        BlueprintCandidate(blueprint_id="bp-small", cost_tier=CostTier.LOW, parameter_count=100),
    )
    assert grown(CostTier.MEDIUM, low_and_high) == "bp-small"
    # The parameter budget still rules: when the preferred tier does not fit, the nearest affordable one is grown.
    policy = HeuristicPolicy(
        HeuristicConfig(plateau_patience_epochs=1, preferred_cost_tier=CostTier.MEDIUM, max_added_parameters=1000)
    )
    policy.decide(observe(0, 1.0, seed_parameters=800))
    assert policy.decide(observe(1, 1.0, seed_parameters=800)).blueprint_id == "bp-small"


def test_the_config_names_the_preferred_cost_tier() -> None:
    assert HeuristicConfig.from_config(TamiyoConfig()).preferred_cost_tier is CostTier.LOW
    config = TamiyoConfig(blueprint_cost_tier="medium")
    assert HeuristicConfig.from_config(config).preferred_cost_tier is CostTier.MEDIUM


def test_risky_quarantined_and_high_risk_blueprints_are_skipped() -> None:
    candidates = (
        BlueprintCandidate(blueprint_id="a-risky", risk=0.5),
        BlueprintCandidate(blueprint_id="b-quarantine", quarantine_only=True),
        BlueprintCandidate(blueprint_id="c-tier", tier=BlueprintTier.HIGH_RISK),
        BlueprintCandidate(blueprint_id="d-ok", cost_tier=CostTier.HIGH, parameter_count=10_000),
    )
    policy = HeuristicPolicy(HeuristicConfig(plateau_patience_epochs=1))
    policy.decide(observe(0, 1.0, blueprints=candidates))
    assert policy.decide(observe(1, 1.0, blueprints=candidates)).blueprint_id == "d-ok"
    policy = HeuristicPolicy(HeuristicConfig(plateau_patience_epochs=1))
    policy.decide(observe(0, 1.0, blueprints=candidates[:3]))
    assert policy.decide(observe(1, 1.0, blueprints=candidates[:3])).reason == "no_blueprint"


def test_non_contributing_seed_is_culled_after_n_epochs_not_before() -> None:
    policy = HeuristicPolicy(HeuristicConfig(plateau_patience_epochs=100, cull_after_epochs=3))
    seeds = (seed("s0", "weak", SeedLifecycleStage.BLENDING), seed("s1", "good", SeedLifecycleStage.BLENDING))
    contributions = {"weak": -0.01, "good": 0.05}
    losses = [1.0 - 0.1 * e for e in range(4)]
    decisions = run(policy, [observe(e, loss, seeds, contributions=contributions) for e, loss in enumerate(losses)])
    assert actions(decisions) == [NOOP, NOOP, CULL, CULL]
    assert (decisions[2].target_seed_id, decisions[2].target_slot, decisions[2].reason) == ("weak", "s0", "no_benefit")


def test_a_paused_seed_is_culled_after_n_paused_epochs_though_nothing_measures_it() -> None:
    # The risk engine paused the blending seed for a loss spike: its identity path contributes nothing and no gate
    # result measures it, and this policy never resumes it, so it must not sit half-blended until a gate times out.
    policy = HeuristicPolicy(HeuristicConfig(plateau_patience_epochs=100, cull_after_epochs=3))
    paused = (
        seed("s0", "spiky", SeedLifecycleStage.BLENDING, paused=True),
        seed("s1", "good", SeedLifecycleStage.BLENDING),
    )
    decisions = run(policy, [observe(e, 1.0 - 0.1 * e, paused, contributions={"good": 0.05}) for e in range(4)])
    assert actions(decisions) == [NOOP, NOOP, CULL, CULL]
    assert (decisions[2].target_seed_id, decisions[2].reason) == ("spiky", "paused")
    # Resumed (by another policy or an operator) before that, it is not culled for the epochs it was paused alone.
    policy = HeuristicPolicy(HeuristicConfig(plateau_patience_epochs=100, cull_after_epochs=3))
    resumed = (seed("s0", "spiky", SeedLifecycleStage.BLENDING),)
    series = [paused[:1], paused[:1], resumed, resumed]
    decisions = run(policy, [observe(e, 1.0 - 0.1 * e, seeds) for e, seeds in enumerate(series)])
    assert actions(decisions) == [NOOP] * 4


def test_a_good_epoch_or_a_missing_measurement_does_not_finish_a_cull() -> None:
    policy = HeuristicPolicy(HeuristicConfig(plateau_patience_epochs=100, cull_after_epochs=2))
    seeds = (seed("s0", "x", SeedLifecycleStage.TRAINING),)
    series: list[dict[str, float]] = [{"x": 0.0}, {"x": 0.02}, {"x": 0.0}, {}, {"x": -0.1}]
    decisions = run(policy, [observe(e, 1.0 - 0.1 * e, seeds, contributions=c) for e, c in enumerate(series)])
    assert actions(decisions) == [NOOP, NOOP, NOOP, NOOP, CULL]


def test_probationary_seed_whose_benefit_held_is_fossilized() -> None:
    policy = HeuristicPolicy(HeuristicConfig(plateau_patience_epochs=100, fossilize_hold_epochs=2))
    blending = (seed("s0", "x", SeedLifecycleStage.BLENDING),)
    probation = (seed("s0", "x", SeedLifecycleStage.PROBATIONARY),)
    gains = {"x": 0.03}
    obs = [
        observe(0, 1.0, blending, contributions=gains),
        observe(1, 0.9, probation, contributions=gains),
        observe(2, 0.8, probation, contributions=gains),
    ]
    decisions = run(policy, obs)
    assert actions(decisions) == [NOOP, NOOP, FOSS]
    assert (decisions[2].target_seed_id, decisions[2].reason) == ("x", "benefit_held")


def test_no_fossilize_when_benefit_lapsed_or_last_gate_failed() -> None:
    policy = HeuristicPolicy(HeuristicConfig(plateau_patience_epochs=100, fossilize_hold_epochs=2))
    probation = (seed("s0", "x", SeedLifecycleStage.PROBATIONARY),)
    series = [{"x": 0.03}, {"x": -0.01}, {"x": 0.03}, {"x": 0.03}]
    decisions = run(policy, [observe(e, 1.0 - 0.1 * e, probation, contributions=c) for e, c in enumerate(series)])
    assert actions(decisions) == [NOOP, NOOP, NOOP, FOSS]
    failed_gate = GateResult(
        gate=SeedLifecycleGate.G4_SYSTEM_IMPACT, passed=False, reason="latency", seed_id="x", slot="s0", step=1
    )
    gated = (seed("s0", "x", SeedLifecycleStage.PROBATIONARY, last_gate=failed_gate),)
    policy = HeuristicPolicy(HeuristicConfig(plateau_patience_epochs=100, fossilize_hold_epochs=1))
    assert policy.decide(observe(0, 1.0, gated, contributions={"x": 0.03})).action is NOOP


def test_cull_takes_precedence_over_growth() -> None:
    policy = HeuristicPolicy(HeuristicConfig(plateau_patience_epochs=1, cull_after_epochs=1))
    seeds = (seed("s0", "x", SeedLifecycleStage.BLENDING), dormant("s1"), dormant("s2"))
    policy.decide(observe(0, 1.0, seeds, contributions={"x": 0.03}))
    assert policy.decide(observe(1, 1.0, seeds, contributions={"x": 0.0})).action is CULL


def test_state_export_import_round_trip_gives_identical_decisions() -> None:
    config = HeuristicConfig(plateau_patience_epochs=2, cull_after_epochs=2, germinate_every_k_epochs=4)
    seeds = (seed("s0", "x", SeedLifecycleStage.BLENDING), dormant("s1"), dormant("s2"))
    history = [observe(e, 1.0 - 0.001 * e, seeds, contributions={"x": 0.01}) for e in range(3)]
    future = [observe(e, 1.0 - 0.001 * e, seeds, contributions={"x": 0.0 if e % 2 else 0.01}) for e in range(3, 12)]
    original = HeuristicPolicy(config)
    run(original, history)
    encoded = msgspec.msgpack.encode(original.export_state())
    restored = HeuristicPolicy(config, state=msgspec.msgpack.decode(encoded, type=HeuristicState))
    assert restored.export_state() == original.export_state()
    assert run(restored, future) == run(original, future)
    assert original.export_state().decisions == 12


def test_from_config_reads_the_tamiyo_section() -> None:
    config = HeuristicConfig.from_config(TamiyoConfig(), max_live_seeds=3, periodic=True)
    assert (config.plateau_patience_epochs, config.germinate_cooldown_epochs, config.cull_after_epochs) == (2, 2, 4)
    assert (config.germinate_every_k_epochs, config.max_live_seeds, config.max_blueprint_risk) == (3, 3, 0.5)


def grafted(decision: Decision, epoch: int, stage: SeedLifecycleStage = SeedLifecycleStage.TRAINING) -> SeedState:
    """The seed of ``decision``, a germination at the end of ``epoch`` (an ``observe`` packet's), as Kasmina shows it
    once it accepted the command (TRAINING: its attach took effect)."""
    slot = decision.target_slot or ""
    return seed(slot, germinated_seed_id(slot, epoch * 10), stage)


def grafting_run(policy: Policy, epochs: range) -> list[Decision]:
    """Each epoch end's decision; the packet after a germination shows its seed in TRAINING (Kasmina accepted it and
    the trainer attached it), the other slots dormant."""
    decisions: list[Decision] = []
    shown: SeedState | None = None
    for epoch in epochs:
        seeds = tuple(shown if shown is not None and shown.slot == s else dormant(s) for s in SLOTS)
        decision = policy.decide(observe(epoch, 1.0, seeds))
        decisions.append(decision)
        shown = grafted(decision, epoch) if decision.action is GERM else None
    return decisions


def test_every_k_policy_cadence_slots_and_blueprint_rotation() -> None:
    policy = EveryKPolicy(EveryKConfig(every_k_epochs=2, max_live_seeds=10))
    seeds = [dormant(s) for s in SLOTS]
    decisions: list[Decision] = []
    for epoch in range(7):
        decision = policy.decide(observe(epoch, 1.0, tuple(seeds)))
        decisions.append(decision)
        if decision.action is GERM:
            seeds[SLOTS.index(decision.target_slot or "")] = grafted(decision, epoch)
    assert actions(decisions) == [NOOP, GERM, NOOP, GERM, NOOP, GERM, NOOP]
    assert [d.target_slot for d in decisions if d.action is GERM] == ["s0", "s1", "s2"]
    assert [d.blueprint_id for d in decisions if d.action is GERM] == ["bp-wide", "bp-small", "bp-tiny"]
    # No free slot left: it waits and tries again each epoch.
    assert policy.decide(observe(8, 1.0, tuple(seeds))).reason == "no_free_slot"
    assert policy.decide(observe(9, 1.0, tuple(seeds))).reason == "no_free_slot"


def test_every_k_fills_the_next_free_slot_in_the_model_s_order_not_by_name() -> None:
    """On a 12-block host the slots went blocks.0, blocks.1, blocks.10, blocks.11 (name order); a slot's layer_depth is
    its place in the model (module registration order), ties by name."""
    names = [f"blocks.{i}" for i in range(12)]
    states = {n: SeedState(slot=n, stage=SeedLifecycleStage.DORMANT, layer_depth=i) for i, n in enumerate(names)}
    policy = EveryKPolicy(EveryKConfig(every_k_epochs=1, max_live_seeds=10))
    targets: list[str | None] = []
    for epoch in range(4):
        decision = policy.decide(observe(epoch, 1.0, tuple(states[n] for n in sorted(names))))
        targets.append(decision.target_slot)
        slot = decision.target_slot or ""
        sid = germinated_seed_id(slot, epoch * 10)
        states[slot] = msgspec.structs.replace(states[slot], stage=SeedLifecycleStage.TRAINING, seed_id=sid)
    assert targets == ["blocks.0", "blocks.1", "blocks.2", "blocks.3"]


def test_every_k_takes_the_shallowest_free_slot_ties_by_name() -> None:
    def first(*slots: tuple[str, int]) -> str | None:
        seeds = tuple(SeedState(slot=n, stage=SeedLifecycleStage.DORMANT, layer_depth=d) for n, d in slots)
        return EveryKPolicy(EveryKConfig(every_k_epochs=1)).decide(observe(0, 1.0, seeds)).target_slot

    assert first(("a", 1), ("head", 0)) == "head"
    assert first(("b", 0), ("a", 0)) == "a"


@pytest.mark.parametrize(("k", "graft_epochs"), [(1, [1, 2, 3, 4, 5, 6]), (3, [3, 6]), (4, [4])])
def test_every_k_grafts_at_the_ends_of_epochs_k_2k_3k(k: int, graft_epochs: list[int]) -> None:
    """Counted from the first epoch end seen, every graft came an epoch late: K=1 first grafted at the end of epoch 2,
    K=3 at 4, 7, 10. Epochs here count from 1, as the console's (a packet's epoch is that minus 1)."""
    policy = EveryKPolicy(EveryKConfig(every_k_epochs=k, max_live_seeds=10))
    decisions = grafting_run(policy, range(6))
    assert [epoch + 1 for epoch, d in enumerate(decisions) if d.action is GERM] == graft_epochs


def test_every_k_policy_budgets_and_state_round_trip() -> None:
    policy = EveryKPolicy(EveryKConfig(every_k_epochs=1, max_live_seeds=1, max_added_parameters=550))
    one_live = (seed("s0", "x", SeedLifecycleStage.TRAINING), dormant("s1"), dormant("s2"))
    assert policy.decide(observe(0, 1.0, one_live)).reason == "seed_budget"
    assert policy.decide(observe(1, 1.0, seed_parameters=100)).reason == "parameter_budget"
    assert policy.decide(observe(2, 1.0, seed_parameters=0)).blueprint_id == "bp-wide"
    state = msgspec.json.decode(msgspec.json.encode(policy.export_state()), type=EveryKState)
    twin = EveryKPolicy(EveryKConfig(every_k_epochs=1, max_live_seeds=1, max_added_parameters=550), state=state)
    assert twin.decide(observe(3, 1.0)) == policy.decide(observe(3, 1.0))


def test_an_every_k_state_restored_mid_run_decides_as_the_uninterrupted_run() -> None:
    """A resume (or a rewind) imports the state exported at an epoch end: the rest of the schedule is the same."""
    config = EveryKConfig(every_k_epochs=3, max_live_seeds=10)
    straight = EveryKPolicy(config)
    # Each graft goes into s0 and shows in the next epoch end's packet (a restore right after it keeps it pending).
    shown = {3: "seed-s0-20", 6: "seed-s0-50", 9: "seed-s0-80"}
    observations = [
        observe(e, 1.0, (seed("s0", shown[e], SeedLifecycleStage.TRAINING), dormant("s1"), dormant("s2")))
        if e in shown
        else observe(e, 1.0)
        for e in range(10)
    ]
    expected = [straight.decide(o) for o in observations]
    assert [e for e, d in enumerate(expected) if d.action is GERM] == [2, 5, 8]
    for cut in range(10):
        first = EveryKPolicy(config)
        head = [first.decide(o) for o in observations[:cut]]
        state = msgspec.json.decode(msgspec.json.encode(first.export_state()), type=EveryKState)
        resumed = EveryKPolicy(config, state=state)
        assert head + [resumed.decide(o) for o in observations[cut:]] == expected, cut


def test_a_withdrawn_germination_starts_no_cooldown_and_is_tried_again_next_epoch() -> None:
    """Conservative mode vetoed the plateau's germination, yet it started the cooldown and reset the plateau: the
    summary then blamed 'cooldown' for growth nobody had made."""
    config = HeuristicConfig(plateau_patience_epochs=1, germinate_cooldown_epochs=2)
    policy, kept = HeuristicPolicy(config), HeuristicPolicy(config)
    for p in (policy, kept):
        p.decide(observe(0, 1.0))
    first = policy.decide(observe(1, 1.0))
    assert (first.action, first.reason) == (GERM, "plateau")
    assert kept.decide(observe(1, 1.0)) == first
    policy.withdraw(first)
    again = policy.decide(observe(2, 1.0))
    assert (again.action, again.target_slot, again.reason) == (GERM, first.target_slot, "plateau")
    assert kept.decide(observe(2, 1.0)).reason == "cooldown"  # a germination carried out does start it
    # Only the germination last returned is withdrawn, once.
    policy.withdraw(first)
    assert policy.export_state().last_germination_epoch == 2
    policy.withdraw(again)
    policy.withdraw(again)
    assert policy.export_state().last_germination_epoch is None
    assert policy.export_state().decisions == 3


def test_a_withdrawn_every_k_graft_is_due_again_next_epoch_with_the_same_blueprint() -> None:
    """A vetoed graft counted as made: the next came K epochs later, and each veto used up a blueprint of the cycle."""
    policy = EveryKPolicy(EveryKConfig(every_k_epochs=2, max_live_seeds=10))
    assert policy.decide(observe(0, 1.0)).reason == "not_due"
    vetoed = policy.decide(observe(1, 1.0))
    assert (vetoed.action, vetoed.blueprint_id) == (GERM, "bp-wide")
    policy.withdraw(vetoed)
    retried = policy.decide(observe(2, 1.0))
    assert (retried.action, retried.blueprint_id) == (GERM, "bp-wide")
    # Carried out: the next is due K epochs after it, with the next blueprint.
    shown = (grafted(retried, 2), dormant("s1"), dormant("s2"))
    assert policy.decide(observe(3, 1.0, shown)).reason == "not_due"
    assert policy.decide(observe(4, 1.0, shown)).blueprint_id == "bp-small"


def _mid_epoch(epoch: int, seeds: tuple[SeedState, ...]) -> Observation:
    observation = observe(epoch, None, seeds)
    packet = msgspec.structs.replace(observation.packet, global_step=epoch * 10 + 5, epoch_progress=0.5)
    return msgspec.structs.replace(observation, packet=packet)


@pytest.mark.parametrize("fate", ["refused", "withdrawn"])
def test_an_every_k_graft_that_did_not_take_effect_stays_due(fate: str) -> None:
    """every_k counted a germination Kasmina refused (its seed never appears: no free slot after all, say) or withdrew
    (the trainer refused its attach at an emergency level: GERMINATED, then the slot dormant again) as made: the next
    graft waited another K epochs. The packets after it tell: it is due again at once, with the same blueprint."""
    policy = EveryKPolicy(EveryKConfig(every_k_epochs=3, max_live_seeds=10))
    assert [d.reason for d in (policy.decide(observe(e, 1.0)) for e in (0, 1))] == ["not_due"] * 2
    first = policy.decide(observe(2, 1.0))
    assert (first.action, first.target_slot, first.blueprint_id) == (GERM, "s0", "bp-wide")
    if fate == "withdrawn":
        planned = (grafted(first, 2, SeedLifecycleStage.GERMINATED), dormant("s1"), dormant("s2"))
        assert policy.decide(_mid_epoch(3, planned)).reason == "not_epoch_end"
        assert policy.export_state().pending is not None  # GERMINATED: its attach is still to come
    again = policy.decide(observe(3, 1.0))
    assert (again.action, again.target_slot, again.blueprint_id) == (GERM, "s0", "bp-wide")
    # This one took effect (its seed trains): the next is due 3 epochs after it, with the next blueprint.
    shown = (grafted(again, 3), dormant("s1"), dormant("s2"))
    assert [policy.decide(observe(e, 1.0, shown)).reason for e in (4, 5)] == ["not_due"] * 2
    assert policy.decide(observe(6, 1.0, shown)).blueprint_id == "bp-small"


def test_an_every_k_graft_still_germinated_is_not_yet_known() -> None:
    """A graft whose seed waits for its attach (GERMINATED, a long command lag) has neither taken effect nor failed:
    the schedule stands until the seed moves on or leaves its slot; a culled seed was grafted."""
    policy = EveryKPolicy(EveryKConfig(every_k_epochs=2, max_live_seeds=10))
    policy.decide(observe(0, 1.0))
    first = policy.decide(observe(1, 1.0))
    waiting = (grafted(first, 1, SeedLifecycleStage.GERMINATED), dormant("s1"), dormant("s2"))
    assert policy.decide(observe(2, 1.0, waiting)).reason == "not_due"
    culled = (grafted(first, 1, SeedLifecycleStage.CULLED), dormant("s1"), dormant("s2"))
    assert policy.decide(observe(3, 1.0, culled)).blueprint_id == "bp-small"  # due at 3 after the graft at 1
    assert policy.export_state().pending is not None  # the new graft's


def test_a_fallback_graft_counts_when_every_ks_own_did_not_take_effect() -> None:
    """The fallback's germination, counted while every_k's own graft was pending, still counts once that graft turns
    out refused: the next is due K epochs after the fallback's."""
    policy = EveryKPolicy(EveryKConfig(every_k_epochs=2, max_live_seeds=10))
    policy.decide(observe(0, 1.0))
    assert policy.decide(observe(1, 1.0)).action is GERM
    policy.count_germination(2)  # the fallback decided epoch 2 and grew a seed (every_k's breaker open)
    assert policy.decide(observe(3, 1.0)).reason == "not_due"  # every_k's own graft refused, the fallback's stands
    assert policy.decide(observe(4, 1.0)).action is GERM


def test_every_k_says_once_that_its_graft_was_not_made() -> None:
    """The fallback counted every_k's graft when it was made; every_k alone learns (from the packets after it) that
    Kasmina refused it, and says so once, for the fallback to take its count back."""
    policy = EveryKPolicy(EveryKConfig(every_k_epochs=2, max_live_seeds=10))
    policy.decide(observe(0, 1.0))
    made = policy.decide(observe(1, 1.0))
    assert policy.take_unmade() is False  # not known yet
    shown = (grafted(made, 1), dormant("s1"), dormant("s2"))
    policy.decide(observe(2, 1.0, shown))
    assert policy.take_unmade() is False  # it took effect
    refused = policy.decide(observe(3, 1.0, shown))
    assert refused.action is GERM
    policy.decide(observe(4, 1.0, shown))  # its seed never appears in s1
    assert (policy.take_unmade(), policy.take_unmade()) == (True, False)


def test_the_fallback_takes_back_the_count_of_a_germination_not_made() -> None:
    """every_k's graft started the fallback's cooldown at once; refused by Kasmina, it left the fallback waiting out a
    cooldown for a seed never made. Taken back, the plateau stands again; once the fallback has decided since, what it
    decided under the cooldown stands."""
    config = HeuristicConfig(plateau_patience_epochs=1, germinate_cooldown_epochs=3)
    fallback = HeuristicPolicy(config)
    fallback.decide(observe(0, 1.0))
    fallback.count_germination(1)
    fallback.uncount_germination()
    assert (fallback.decide(observe(1, 1.0)).reason, fallback.export_state().last_germination_epoch) == ("plateau", 1)
    fallback.count_germination(2)
    assert fallback.decide(observe(2, 1.0)).reason == "cooldown"
    fallback.uncount_germination()  # decided since: the count stands
    assert fallback.export_state().last_germination_epoch == 2
    fallback.uncount_germination()  # nothing counted: nothing changes
    assert fallback.decide(observe(3, 1.0)).reason == "cooldown"


def test_the_fallbacks_germination_counts_as_the_policys_own() -> None:
    """A germination the fallback made in the policy's place (its own decision discarded as late, or never asked
    for) started neither policy's cooldown or schedule: each germinated again at the next epoch end it could."""
    heuristic = HeuristicPolicy(HeuristicConfig(plateau_patience_epochs=1, germinate_cooldown_epochs=3))
    heuristic.decide(observe(0, 1.0))
    late = heuristic.decide(observe(1, 1.0))
    assert (late.action, late.reason) == (GERM, "plateau")
    heuristic.withdraw(late)  # discarded: the fallback germinated at epoch 1 instead
    heuristic.count_germination(1)
    assert [heuristic.decide(observe(e, 1.0)).reason for e in (2, 3, 4)] == ["cooldown", "cooldown", "plateau"]
    every_k = EveryKPolicy(EveryKConfig(every_k_epochs=2, max_live_seeds=10))
    assert every_k.decide(observe(0, 1.0)).reason == "not_due"
    every_k.count_germination(0)  # the fallback grafted at epoch 0 while every_k's breaker was open
    assert [every_k.decide(observe(e, 1.0)).reason for e in (1, 2)] == ["not_due", "every_k"]
    # An older germination does not move the count back.
    every_k.count_germination(1)
    assert every_k.export_state().last_germination_epoch == 2


def test_a_loss_spike_is_blamed_on_the_blending_seed_furthest_into_its_ramp() -> None:
    blending = SeedLifecycleStage.BLENDING

    def blamed(*seeds: SeedState) -> str | None:
        return implicated_seed(observe(3, 1.0, tuple(seeds)))

    old = seed("s0", "old", blending, alpha=0.6, age_steps=40)
    young = seed("s1", "young", blending, alpha=0.01, age_steps=12)
    # The seed that has only just started its ramp cannot have moved the loss much: the older, further one is blamed.
    assert blamed(old, young, dormant("s2")) == "old"
    # Equal alpha: the youngest; a paused seed is never blamed again.
    assert blamed(old, msgspec.structs.replace(young, alpha=0.6), dormant("s2")) == "young"
    assert blamed(msgspec.structs.replace(old, paused=True), young, dormant("s2")) == "young"
    # Nothing blending: the seed at alpha 1 that came into the output last; nothing live: nobody.
    training = seed("s0", "t", SeedLifecycleStage.TRAINING, age_steps=30)
    probation = seed("s1", "p", SeedLifecycleStage.PROBATIONARY, alpha=1.0, age_steps=90)
    shadowing = seed("s2", "sh", SeedLifecycleStage.SHADOWING, alpha=1.0, age_steps=60)
    assert blamed(training, probation, shadowing) == "sh"
    assert blamed(training, probation, dormant("s2")) == "p"
    # A blend under way is the likelier change than a seed already at alpha 1 in the previous validation.
    assert blamed(msgspec.structs.replace(young, slot="s0"), probation, shadowing) == "young"
    assert blamed(dormant("s0"), dormant("s1"), dormant("s2")) is None


def test_a_seed_the_host_output_does_not_see_is_never_blamed_for_a_loss_spike() -> None:
    """An alpha-0 TRAINING seed was blamed for (and paused by) a spike the host-only run shows bit for bit: the
    fallback blamed the youngest live seed in any stage, which the heuristic then culled as paused."""

    def blamed(*seeds: SeedState) -> str | None:
        return implicated_seed(observe(3, 1.0, tuple(seeds)))

    training = seed("s0", "t", SeedLifecycleStage.TRAINING, age_steps=30)
    germinated = seed("s1", "g", SeedLifecycleStage.GERMINATED, age_steps=4)
    unramped = seed("s2", "b", SeedLifecycleStage.BLENDING, alpha=0.0, age_steps=50)
    assert blamed(training, germinated, unramped) is None
    assert blamed(training, dormant("s1"), dormant("s2")) is None
    paused = seed("s1", "p", SeedLifecycleStage.PROBATIONARY, alpha=1.0, paused=True)
    assert blamed(training, paused, dormant("s2")) is None


def test_the_parameter_budget_is_a_tamiyo_key_unset_by_default() -> None:
    """Issue 6's budget of added parameters could not be set: from_config always left it None."""
    assert HeuristicConfig.from_config(TamiyoConfig()).max_added_parameters is None
    config = HeuristicConfig.from_config(TamiyoConfig(plateau_patience_epochs=1, max_added_parameters=1000))
    assert config.max_added_parameters == 1000
    policy = HeuristicPolicy(config)
    policy.decide(observe(0, 1.0, seed_parameters=950))
    assert policy.decide(observe(1, 1.0, seed_parameters=950)).reason == "parameter_budget"


def g4_passed(slot: str, seed_id: str, stage: SeedLifecycleStage, *, benefit: float, step: int) -> SeedState:
    """A seed as Kasmina shows it after G4 passed at ``step``: the result stays its last_gate until G4 runs again."""
    gate = GateResult(
        gate=SeedLifecycleGate.G4_SYSTEM_IMPACT,
        passed=True,
        reason="benefit",
        seed_id=seed_id,
        slot=slot,
        step=step,
        attributes={"benefit_mean": benefit, "benefit_sem": 0.01},
    )
    return seed(slot, seed_id, stage, last_gate=gate)


def observe_gates(epoch: int, *seeds: SeedState) -> Observation:
    """The observation Tamiyo builds from a packet (contributions from the seeds' gate results)."""
    return build_observation(observe(epoch, 1.0 - 0.1 * epoch, seeds).packet, BLUEPRINTS)


def test_the_observation_names_each_contribution_by_its_gate_result_s_step() -> None:
    measured = g4_passed("s0", "x", SeedLifecycleStage.PROBATIONARY, benefit=0.2, step=420)
    packet = observe(21, 1.0, (measured, seed("s1", "y", SeedLifecycleStage.TRAINING))).packet
    observation = build_observation(packet, BLUEPRINTS)
    assert (observation.seed_contributions, observation.contribution_steps) == ({"x": 0.2}, {"x": 420})
    # A contribution measured elsewhere for this packet has no gate step: it is a new measurement.
    observation = build_observation(packet, BLUEPRINTS, contributions={"x": 0.3, "y": 0.1})
    assert (observation.seed_contributions, observation.contribution_steps) == ({"x": 0.3, "y": 0.1}, {})


def test_one_g4_measurement_seen_at_several_epoch_ends_is_one_weak_epoch() -> None:
    """Kasmina repeats a seed's last gate result in every packet until G4 measures again: the rule counted it at
    each epoch end, so one weak measurement culled a seed after cull_after_epochs epochs."""
    config = HeuristicConfig(
        plateau_patience_epochs=100, cull_after_epochs=2, cull_max_contribution=0.05, fossilize_min_benefit=0.05
    )
    policy = HeuristicPolicy(config)
    weak_at_40 = g4_passed("s0", "x", SeedLifecycleStage.PROBATIONARY, benefit=0.01, step=40)
    decisions = run(policy, [observe_gates(e, weak_at_40) for e in range(5, 9)])
    assert actions(decisions) == [NOOP] * 4
    assert policy.export_state().weak_epochs == {"x": 1}
    assert policy.export_state().measured_steps == {"x": 40}
    # A new measurement (G4 again, at step 90) counts, and is the second weak one.
    weak_at_90 = g4_passed("s0", "x", SeedLifecycleStage.PROBATIONARY, benefit=0.02, step=90)
    cull = policy.decide(observe_gates(9, weak_at_90))
    assert (cull.action, cull.target_seed_id, cull.reason) == (CULL, "x", "no_benefit")
    # An epoch with no measurement at all neither adds nor resets; a paused seed still counts each epoch.
    policy = HeuristicPolicy(config)
    paused = msgspec.structs.replace(weak_at_40, paused=True)
    decisions = run(policy, [observe_gates(5, weak_at_40), observe_gates(6, paused), observe_gates(7, paused)])
    assert actions(decisions) == [NOOP, CULL, CULL]
    assert decisions[1].reason == "paused"


def test_one_g4_pass_counts_once_and_fossilization_waits_the_probation_epochs() -> None:
    """The shipped run: G4 passes once as the seed leaves SHADOWING (step 420) and the seed shows that result at
    each probation epoch end; Kasmina measures it again only when asked to fossilize."""
    policy = HeuristicPolicy(HeuristicConfig(plateau_patience_epochs=100, fossilize_hold_epochs=3))
    passed = g4_passed("s0", "x", SeedLifecycleStage.PROBATIONARY, benefit=0.4, step=420)
    decisions = run(policy, [observe_gates(e, passed) for e in (21, 22, 23)])
    assert actions(decisions) == [NOOP, NOOP, FOSS]
    assert (decisions[-1].target_seed_id, decisions[-1].reason) == ("x", "benefit_held")
    state = policy.export_state()
    assert (state.benefit_epochs, state.held_epochs, state.measured_steps) == ({"x": 1}, {"x": 3}, {"x": 420})
    # A new measurement without benefit ends the standing; the next beneficial one starts it again.
    config = HeuristicConfig(plateau_patience_epochs=100, fossilize_hold_epochs=2, fossilize_min_benefit=0.05)
    policy = HeuristicPolicy(config)
    lapsed = g4_passed("s0", "x", SeedLifecycleStage.PROBATIONARY, benefit=0.01, step=440)
    again = g4_passed("s0", "x", SeedLifecycleStage.PROBATIONARY, benefit=0.3, step=480)
    series = [passed, lapsed, lapsed, again, again]
    decisions = run(policy, [observe_gates(21 + i, s) for i, s in enumerate(series)])
    assert actions(decisions) == [NOOP, NOOP, NOOP, NOOP, FOSS]
    # Held benefit before probation does not count as probation epochs.
    policy = HeuristicPolicy(HeuristicConfig(plateau_patience_epochs=100, fossilize_hold_epochs=2))
    shadowing = msgspec.structs.replace(passed, stage=SeedLifecycleStage.SHADOWING)
    decisions = run(policy, [observe_gates(20, shadowing), observe_gates(21, passed), observe_gates(22, passed)])
    assert actions(decisions) == [NOOP, NOOP, FOSS]


def test_the_counted_measurements_survive_a_checkpoint_and_old_states_still_load() -> None:
    config = HeuristicConfig(
        plateau_patience_epochs=100, cull_after_epochs=2, cull_max_contribution=0.05, fossilize_min_benefit=0.05
    )
    weak = g4_passed("s0", "x", SeedLifecycleStage.PROBATIONARY, benefit=0.01, step=40)
    held = g4_passed("s1", "y", SeedLifecycleStage.PROBATIONARY, benefit=0.4, step=40)
    history = [observe_gates(e, weak, held) for e in (5, 6)]
    future = [observe_gates(e, weak, held) for e in (7, 8)]
    future.append(observe_gates(9, msgspec.structs.replace(weak, last_gate=None), held))
    future.append(observe_gates(10, g4_passed("s0", "x", SeedLifecycleStage.PROBATIONARY, benefit=0.0, step=200)))
    original = HeuristicPolicy(config)
    run(original, history)
    saved = original.export_state()
    assert (saved.measured_steps, saved.held_epochs) == ({"x": 40, "y": 40}, {"x": 0, "y": 2})
    restored = HeuristicPolicy(config, state=state_codec.decoder(HeuristicState).decode(state_codec.encode(saved)))
    assert restored.export_state() == saved
    ahead = run(original, future)
    assert run(restored, future) == ahead
    assert actions(ahead) == [FOSS, FOSS, FOSS, CULL]
    # A state written before these fields existed loads with them empty.
    old = msgspec.json.decode(state_codec.encode(saved))
    del old["measured_steps"], old["held_epochs"]
    loaded = state_codec.decoder(HeuristicState).decode(msgspec.json.encode(old))
    assert (loaded.measured_steps, loaded.held_epochs, loaded.weak_epochs) == ({}, {}, saved.weak_epochs)
