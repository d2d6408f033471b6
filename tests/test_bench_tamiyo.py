"""The decision benchmark times Tamiyo's real path (observation, GnnPolicy.decide, risk), its arms alternated."""

from __future__ import annotations

from typing import TYPE_CHECKING

from actors.tamiyo.gnn_policy import weights_sha256
from actors.tamiyo.risk import RiskContext, RiskThresholds, RiskVerdict
from esper.nn.policy_gnn import TamiyoGNNConfig, build_tamiyo_gnn
from schemas.config import TamiyoConfig
from tests._bench_scripts import load_script

if TYPE_CHECKING:
    import pytest

SMALL = TamiyoGNNConfig(hidden=16, gat_hidden=8, heads=2, dropout=0.0)


def test_a_headline_sample_is_observation_then_gnn_policy_decide_then_the_risk_engine(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bench = load_script("bench_tamiyo")
    model = build_tamiyo_gnn(SMALL, seed=0).eval()
    counted = bench.CountedModel(model)
    policy = bench.make_policy(counted, weights_sha256(model), TamiyoConfig())
    judged: list[RiskContext] = []
    real_assess = bench.assess

    def assess(decision: object, context: RiskContext, thresholds: object) -> object:
        judged.append(context)
        return real_assess(decision, context, thresholds)

    monkeypatch.setattr(bench, "assess", assess)
    verdict = bench.real_decision(policy, bench.make_packet(32), RiskThresholds())()
    assert isinstance(verdict, RiskVerdict)
    assert policy.export_state().decisions == 1  # GnnPolicy.decide ran, not a bare network call
    assert counted.calls >= 1
    assert len(judged) == 1
    # The context is the packet's, as Tamiyo's Decider.judge builds it: latencies, loss delta, implicated seed.
    context = judged[0]
    assert context.step_latency_ms == 3.6
    assert context.hook_latency_ms == 4.2
    assert context.loss_delta == -0.01
    assert context.implicated_seed_id is not None


def test_the_graph_holds_every_slot_but_at_most_max_layer_nodes_layers() -> None:
    bench = load_script("bench_tamiyo")
    nodes = bench.graph_nodes(bench.make_packet(512), TamiyoConfig())
    assert nodes["seed"] == 512
    assert nodes["layer"] == TamiyoConfig().max_layer_nodes == 4
    assert nodes["blueprint"] == bench.N_BLUEPRINTS


def test_the_arms_alternate_block_by_block() -> None:
    bench = load_script("bench_tamiyo")
    ran: list[str] = []
    arms = {name: bench.Arm(lambda name=name: ran.append(name), 2) for name in ("gnn", "mlp", "reference")}
    order = bench.alternate(arms, 3)
    assert order == ["gnn", "mlp", "reference", "mlp", "reference", "gnn", "reference", "gnn", "mlp"]
    assert ran == [name for name in order for _ in range(2)]
    assert all(len(arm.samples) == 6 for arm in arms.values())


def test_every_size_reports_its_sample_counts_network_calls_and_proposals() -> None:
    bench = load_script("bench_tamiyo")
    figures = bench.bench_size(bench.Setup(SMALL), 8, blocks=10)
    assert figures.samples == {"gnn": 100, "mlp": 100, "reference": 30}
    assert sum(figures.network_calls.values()) == 100
    assert all(int(calls) >= 1 for calls in figures.network_calls)
    assert sum(figures.proposed_actions.values()) == 100
    assert figures.graph_nodes["layer"] == 4
    assert set(figures.latency_ms) == {"p50", "p95", "p99"}


def test_percentiles_are_nearest_rank() -> None:
    bench = load_script("bench_tamiyo")
    # 1..100 ms, shuffled: the nearest-rank p99 is 99 (an interpolating quantile gives 99.01).
    seconds = [v / 1000 for v in range(100, 0, -1)]
    assert bench.percentiles(seconds) == {"p50": 50.0, "p95": 95.0, "p99": 99.0}


def test_fewer_than_100_iterations_is_a_one_line_error() -> None:
    bench = load_script("bench_tamiyo")
    assert bench.check_iterations(100) is None
    message = bench.check_iterations(99)
    assert message is not None
    assert "\n" not in message
    assert "--iterations must be >= 100" in message
