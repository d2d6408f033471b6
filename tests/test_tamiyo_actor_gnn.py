"""The GNN policy end to end on a small graph: valid Decisions with log-probabilities, masking, state round trip."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Literal

import msgspec
import pytest
import torch

from actors.tamiyo.field_reports import WAL_FILENAME, read_field_reports
from actors.tamiyo.gnn_policy import GnnPolicy, registries_for, weights_sha256
from actors.tamiyo.observe import build_observation
from actors.tamiyo.spec import GnnSettings
from esper.nn.policy_contract import ACTION_NAMES
from esper.nn.policy_gnn import TamiyoGNNConfig, build_tamiyo_gnn
from schemas.config import TamiyoConfig
from schemas.domain_enums import PolicyAction
from schemas.enums import SeedLifecycleStage
from schemas.state import SeedState
from tests._tamiyo_harness import BLUEPRINTS, TamiyoHarness, dormant, packet, plateau_run

if TYPE_CHECKING:
    from pathlib import Path

    from esper.runtime.events import RecordingSink

SMALL = TamiyoGNNConfig(hidden=16, gat_hidden=8, heads=2, dropout=0.0)
SETTINGS = GnnSettings(model_config=SMALL, seed=7, layer_types=("conv1d",), activations=("relu",))


def small_policy(favour: PolicyAction | None = None) -> GnnPolicy:
    model = build_tamiyo_gnn(SMALL, seed=7)
    if favour is not None:
        with torch.no_grad():
            model.action_head.bias[ACTION_NAMES.index(favour.name)] = 50.0
    return GnnPolicy(
        model,
        registries=registries_for([bp.blueprint_id for bp in BLUEPRINTS], ("conv1d",), ("relu",)),
        weights_digest=weights_sha256(model),
    )


@pytest.mark.parametrize("where", ["process", "thread"])
@pytest.mark.slow
async def test_the_gnn_policy_decides_end_to_end_with_a_log_prob(
    tmp_path: Path, sink: RecordingSink, where: Literal["process", "thread"]
) -> None:
    config = TamiyoConfig(policy="gnn", policy_process=where)
    async with TamiyoHarness(tmp_path, sink, config=config, gnn=SETTINGS) as h:
        # The whole run (2 epochs of 2): its stop ends it, so every open window is reported.
        decisions = await h.run([msgspec.structs.replace(p, epochs_total=2) for p in plateau_run(epochs=2)])
        stats = await h.stats()
    assert all(d.policy == "gnn" for d in decisions)
    assert all(d.feature_coverage is not None and 0.0 < d.feature_coverage <= 1.0 for d in decisions)
    assert stats.fallbacks == 0
    assert stats.policy_version == "gnn-0.0.0"
    scan = await read_field_reports(tmp_path / WAL_FILENAME)
    assert len(scan.reports) == len(decisions)
    for report in scan.reports:
        assert report.log_prob is not None
        assert math.isfinite(report.log_prob)
        assert report.log_prob <= 0.0
        assert report.value_estimate is not None


def test_a_germination_targets_a_free_slot_and_a_candidate_blueprint() -> None:
    policy = small_policy(PolicyAction.GERMINATE)
    seeds = (
        SeedState(
            slot="s0", stage=SeedLifecycleStage.TRAINING, layer_depth=0, seed_id="seed-a", blueprint_id="bp-small"
        ),
        dormant("s1"),
        SeedState(slot="s2", stage=SeedLifecycleStage.DORMANT, layer_depth=2, embargo_until_epoch=9),
    )
    decision = policy.decide(build_observation(packet(10, 1, validation_loss=1.0, seeds=seeds), BLUEPRINTS))
    assert decision.action is PolicyAction.GERMINATE
    assert decision.target_slot == "s1"  # s0 is occupied, s2 embargoed
    assert decision.blueprint_id in {bp.blueprint_id for bp in BLUEPRINTS}
    assert decision.blend is not None
    assert 0.0 <= decision.blend.window_start <= decision.blend.window_end <= 1.0
    assert decision.initial_alpha is not None
    assert 0.0 <= decision.initial_alpha <= 1.0
    assert decision.log_prob == pytest.approx(0.0, abs=1e-4)
    assert 0.0 <= decision.policy_risk <= 1.0


def test_actions_without_a_valid_target_are_masked() -> None:
    policy = small_policy(PolicyAction.CULL)
    decision = policy.decide(build_observation(packet(10, 1, validation_loss=1.0), BLUEPRINTS))
    assert decision.action is not PolicyAction.CULL  # every slot is dormant: nothing to cull
    seeds = (SeedState(slot="s0", stage=SeedLifecycleStage.BLENDING, layer_depth=0, seed_id="seed-a"), dormant("s1"))
    cull = policy.decide(build_observation(packet(20, 2, validation_loss=1.0, seeds=seeds), BLUEPRINTS))
    assert cull.action is PolicyAction.CULL
    assert (cull.target_slot, cull.target_seed_id) == ("s0", "seed-a")


def test_gnn_state_round_trips_and_refuses_other_weights() -> None:
    policy = small_policy()
    for step in range(1, 4):
        policy.decide(build_observation(packet(step * 10, step, validation_loss=1.0 / step), BLUEPRINTS))
    state = policy.export_state()
    assert state.normaliser
    assert state.decisions == 3
    fresh = small_policy()
    fresh.import_state(state)
    assert fresh.export_state() == state
    other = small_policy(PolicyAction.GERMINATE)
    with pytest.raises(ValueError, match="weights"):
        other.import_state(state)


@pytest.mark.slow
async def test_a_resumed_gnn_actor_decides_like_an_uninterrupted_one(tmp_path: Path, sink: RecordingSink) -> None:
    config = TamiyoConfig(policy="gnn")
    packets = plateau_run(epochs=4)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    async with TamiyoHarness(tmp_path / "a", sink, config=config, gnn=SETTINGS) as a:
        await a.run(packets[:4])
        state = await a.state()
        expected = await a.run(packets[4:])
        after_a = await a.state()
    assert state.gnn is not None
    assert state.gnn.normaliser
    async with TamiyoHarness(tmp_path / "b", sink, config=config, gnn=SETTINGS, state=state) as b:
        got = await b.run(packets[4:])
        after_b = await b.state()
    assert got == expected
    assert after_b.gnn == after_a.gnn, "the normaliser evolved identically"
    assert after_b.outcomes == after_a.outcomes


def test_the_machines_timings_do_not_reach_the_network() -> None:
    """Samples per second and hook and layer latencies vary with the machine's load: fed to the network, two runs of
    one config chose different blueprints, and a resumed run differed from an uninterrupted one."""
    base = packet(10, 1, validation_loss=1.0)
    quiet, loaded = small_policy(), small_policy()
    for speed, latency in ((1000.0, 1.0), (17.0, 250.0), (3000.0, 0.2)):  # the normaliser learns from each input
        busy = msgspec.structs.replace(
            base,
            samples_per_s=speed,
            hook_latency_ms=latency,
            layers=tuple(msgspec.structs.replace(layer, latency_ms=latency) for layer in base.layers),
        )
        assert quiet.decide(build_observation(base, BLUEPRINTS)) == loaded.decide(build_observation(busy, BLUEPRINTS))


@pytest.mark.parametrize(("compile_on", "process", "compiled"), [(True, "thread", True), (False, "thread", False)])
def test_tamiyo_compile_hands_the_policy_the_compiled_network(
    monkeypatch: pytest.MonkeyPatch, compile_on: bool, process: Literal["thread", "process"], compiled: bool
) -> None:
    """tamiyo.compile was accepted and read by nothing: the GNN never went through torch.compile, on CUDA either.
    maybe_compile (a no-op on a CPU, the same call on CUDA) now wraps the network the policy lane decides with."""
    from actors.tamiyo import spec
    from esper.nn import policy_decide
    from esper.runtime.lanes import Lane

    seen: list[str] = []

    def recording(model: object, device: torch.device | str) -> tuple[object, bool]:
        seen.append(str(device))
        return model, False

    monkeypatch.setattr(policy_decide, "maybe_compile", recording)
    config = TamiyoConfig(policy="gnn", compile=compile_on, policy_process=process)
    lane = Lane("policy", "cpu")
    try:
        policy = spec._gnn_factory(config, GnnSettings(), BLUEPRINTS, lane)()
    finally:
        lane.close()
    assert isinstance(policy, GnnPolicy)
    assert seen == (["cpu"] if compiled else [])
