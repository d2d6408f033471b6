"""Tests of tamiyo_gnn_v1 (esper.nn.policy_gnn and policy_fused), decide() and the compile wrapper (policy_decide)."""

from __future__ import annotations

import contextlib
from types import SimpleNamespace
from typing import TYPE_CHECKING, cast

import pytest
import torch
from torch_geometric.data import Batch, HeteroData

from esper.nn.policy_contract import (
    ACTION_NAMES,
    ARCHITECTURE_VERSION,
    HIGH_RISK_CLASSES,
    NO_OP,
    NUM_ACTIONS,
    EdgeType,
    PolicyOutput,
)
from esper.nn.policy_decide import CompileFallback, decide, maybe_compile
from esper.nn.policy_gnn import TamiyoGNN, TamiyoGNNConfig, build_tamiyo_gnn
from esper.nn.policy_graph import (
    BlueprintInput,
    GlobalInput,
    GraphCaps,
    GraphInputs,
    GraphRegistries,
    LayerInput,
    PolicyGraphBuilder,
    SeedInput,
)

if TYPE_CHECKING:
    from collections.abc import Mapping

SMALL = TamiyoGNNConfig(hidden=32, gat_hidden=16, heads=4)
REGISTRIES = GraphRegistries.of(
    blueprints=[f"bp{k}" for k in range(4)], layer_types=["linear", "conv2d"], activations=["relu", "gelu"]
)
ALL = [True] * NUM_ACTIONS


def graph(n_seeds: int, n_layers: int = 4, *, n_blueprints: int = 3, max_layers: int = 4) -> HeteroData:
    """A typical state: a few occupied slots among dormant ones, fully measured metrics."""
    metrics = GlobalInput(
        epoch=4,
        epochs_total=20,
        step=2000,
        epoch_progress=0.3,
        loss=0.7,
        validation_loss=0.75,
        training_loss=0.65,
        gradient_norm=1.2,
        samples_per_s=8000.0,
        hook_latency_ms=2.0,
    )
    layers = tuple(
        LayerInput(name=f"l{i}", depth=i, layer_type="linear", parameter_count=4096, activation="relu", latency_ms=0.1)
        for i in range(n_layers)
    )
    seeds = tuple(
        SeedInput(
            slot=f"s{i}",
            stage=3 if i % 3 == 0 else 1,
            layer_depth=i % max(n_layers, 1),
            occupied=i % 3 == 0,
            blueprint_id="bp1" if i % 3 == 0 else None,
            learning_rate=1e-3 if i % 3 == 0 else None,
            risk_score=0.1,
            age_epochs=2,
        )
        for i in range(n_seeds)
    )
    blueprints = tuple(
        BlueprintInput(blueprint_id=f"bp{k}", risk=0.1 * k, tier=1, parameter_count=1000) for k in range(n_blueprints)
    )
    builder = PolicyGraphBuilder(REGISTRIES, caps=GraphCaps(max_layers=max_layers))
    return builder.build(GraphInputs(metrics=metrics, layers=layers, seeds=seeds, blueprints=blueprints)).data


def run(model: TamiyoGNN, data: HeteroData, *, reference: bool = False) -> PolicyOutput:
    fn = model.forward_reference if reference else model
    with torch.no_grad():
        out: PolicyOutput = fn(data.x_dict, data.edge_index_dict, data.edge_attr_dict)
    return out


@pytest.fixture
def model() -> TamiyoGNN:
    """The small policy, seeded (seed 0) so failures replay."""
    return build_tamiyo_gnn(SMALL, seed=0)


@pytest.mark.parametrize(("n_seeds", "n_layers"), [(0, 4), (3, 0), (3, 4), (5, 32), (8, 128)])
def test_forward_output_shapes(model: TamiyoGNN, n_seeds: int, n_layers: int) -> None:
    data = graph(n_seeds, n_layers, max_layers=128)
    out = run(model, data)
    assert out.action_logits.shape == (1, NUM_ACTIONS)
    assert out.seed_scores.shape == (n_seeds,)
    assert out.blueprint_scores.shape == (3,)
    assert out.layer_scores.shape == (n_layers,)
    assert out.blend_logits.shape == (1, 3)
    assert out.schedule.shape == (1, 2)
    assert out.ramp.shape == (1,)
    assert out.params.shape == (1, 2)
    assert out.value.shape == (1,)
    assert out.risk_logits.shape == (1, 5)
    assert out.risk_score.shape == (1,)
    for t in out:
        assert torch.isfinite(t).all()
    start, end = out.schedule[0].tolist()
    assert 0.0 <= start <= end <= 1.0
    assert out.params.abs().max() <= 1.0


@pytest.mark.parametrize(
    ("config", "n_seeds", "n_layers"),
    [(SMALL, 0, 6), (SMALL, 6, 6), (SMALL, 3, 0), (TamiyoGNNConfig(hidden=16, gat_hidden=16, heads=2), 4, 6)],
)
def test_fused_forward_matches_the_pyg_reference(config: TamiyoGNNConfig, n_seeds: int, n_layers: int) -> None:
    """The fused path uses the HeteroConv weights and must compute what HeteroConv(SAGEConv / GATConv) computes."""
    net = build_tamiyo_gnn(config, seed=1)
    data = graph(n_seeds, n_layers, max_layers=6)
    fused, reference = run(net, data), run(net, data, reference=True)
    for name, a, b in zip(PolicyOutput._fields, fused, reference, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)


def test_a_cached_plan_serves_the_same_structure_with_new_edge_attributes(model: TamiyoGNN) -> None:
    """Decisions on an unchanged structure reuse its plan, yet read each graph's own edge attributes and features."""
    model.eval()
    first, second = graph(4, 4), graph(4, 4)
    et = ("global", "influences", "seed")
    second[et].edge_attr = second[et].edge_attr + 0.5
    second["seed"].x = second["seed"].x * 2.0
    out_first = run(model, first)
    hits = model._plans.hits
    out_second = run(model, second)
    assert model._plans.hits == hits + 1
    fresh = build_tamiyo_gnn(SMALL, seed=0).eval()
    fresh.load_state_dict(model.state_dict())
    expected = run(fresh, second)  # a cold cache: the plan is built from this graph alone
    assert fresh._plans.hits == 0
    for name, a, b in zip(PolicyOutput._fields, out_second, expected, strict=True):
        assert torch.equal(a, b), name
    assert not torch.equal(out_first.action_logits, out_second.action_logits)


def test_a_changed_structure_gets_its_own_plan(model: TamiyoGNN) -> None:
    model.eval()
    run(model, graph(4, 4))
    misses = model._plans.misses
    out = run(model, graph(5, 4))
    assert model._plans.misses == misses + 1
    assert out.seed_scores.shape == (5,)
    torch.testing.assert_close(out.seed_scores, run(model, graph(5, 4), reference=True).seed_scores)


def test_encoded_graph_and_its_heterodata_decide_alike(model: TamiyoGNN) -> None:
    model.eval()
    builder = PolicyGraphBuilder(REGISTRIES, caps=GraphCaps())
    inputs = GraphInputs(
        metrics=GlobalInput(epoch=1, epochs_total=4, step=10, epoch_progress=0.5, loss=0.9),
        layers=(LayerInput(name="l0", depth=0, layer_type="linear", parameter_count=64, activation="relu"),),
        seeds=(SeedInput(slot="s0", stage=1, layer_depth=0, occupied=False),),
        blueprints=(BlueprintInput(blueprint_id="bp0", risk=0.1, tier=1, parameter_count=10),),
    )
    encoded = builder.build(inputs, update_normaliser=False)
    data = encoded.data
    assert isinstance(data, HeteroData)
    for node_type, x in encoded.x_dict.items():
        assert data[node_type].x is x
    for edge_type, index in encoded.edge_index_dict.items():
        assert data[edge_type].edge_index is index
        assert data[edge_type].edge_attr is encoded.edge_attr_dict[edge_type]
    assert decide(model, encoded, ALL, device="cpu") == decide(model, data, ALL, device="cpu")
    moved = encoded.to("cpu")
    assert moved.seed_slots == encoded.seed_slots
    assert torch.equal(moved.x_dict["seed"], encoded.x_dict["seed"])


def test_fused_forward_trains(model: TamiyoGNN) -> None:
    """With grad enabled the fused path reaches every parameter of the message-passing layers."""
    model.train()
    data = graph(4)
    out = model(data.x_dict, data.edge_index_dict, data.edge_attr_dict)
    loss = sum(t.float().sum() for t in out)
    assert isinstance(loss, torch.Tensor)
    loss.backward()  # type: ignore[no-untyped-call]  # torch leaves Tensor.backward unannotated
    missing = [n for n, p in model.named_parameters() if p.grad is None and ("sage" in n or "gat" in n)]
    assert missing == []


def test_batched_forward_matches_single_graphs(model: TamiyoGNN) -> None:
    a, b = graph(2), graph(5, 3)
    batch = Batch.from_data_list([a, b])
    with torch.no_grad():
        out = model(batch.x_dict, batch.edge_index_dict, batch.edge_attr_dict, batch.batch_dict)
    single_a, single_b = run(model, a), run(model, b)
    torch.testing.assert_close(out.action_logits, torch.cat([single_a.action_logits, single_b.action_logits]))
    torch.testing.assert_close(out.seed_scores, torch.cat([single_a.seed_scores, single_b.seed_scores]))


def test_untrained_policy_picks_no_op_on_a_typical_graph() -> None:
    for config in (SMALL, TamiyoGNNConfig()):
        net = build_tamiyo_gnn(config, seed=0)
        for n_seeds in (0, 3, 16):
            decision = decide(net, graph(n_seeds), ALL, device="cpu")
            assert decision.action_index == NO_OP
            assert decision.action == "NO_OP"


def test_masked_action_is_never_chosen(model: TamiyoGNN) -> None:
    data = graph(3)
    only_cull = [name == "CULL" for name in ACTION_NAMES]
    assert decide(model, data, only_cull, device="cpu").action == "CULL"
    no_no_op = [name != "NO_OP" for name in ACTION_NAMES]
    assert decide(model, data, no_no_op, device="cpu").action != "NO_OP"
    gen = torch.Generator().manual_seed(5)
    allowed = [name in ("PAUSE", "RESUME") for name in ACTION_NAMES]
    seen = {decide(model, data, allowed, device="cpu", sample=True, generator=gen).action for _ in range(40)}
    assert seen <= {"PAUSE", "RESUME"}
    assert seen == {"PAUSE", "RESUME"}  # nearly uniform between the two, so 40 draws see both


def test_target_masks_are_respected(model: TamiyoGNN) -> None:
    data = graph(4)
    decision = decide(
        model, data, ALL, device="cpu", seed_mask=[False, False, True, False], blueprint_mask=[False, True, False]
    )
    assert decision.seed_index == 2
    assert decision.blueprint_index == 1
    none_allowed = decide(model, data, ALL, device="cpu", seed_mask=[False] * 4)
    assert none_allowed.seed_index is None
    assert decide(model, graph(0), ALL, device="cpu").seed_index is None


def test_a_decision_reads_the_network_output(model: TamiyoGNN) -> None:
    """decide's plain-Python masking and picking agree with the network's tensors."""
    data = graph(5)
    out = run(model, data)
    d = decide(model, data, torch.ones(NUM_ACTIONS, dtype=torch.bool), device="cpu")
    assert d.action_index == int(out.action_logits[0].argmax())
    assert d.log_prob == pytest.approx(float(torch.log_softmax(out.action_logits[0], -1)[d.action_index]), rel=1e-5)
    assert d.seed_index == int(out.seed_scores.argmax())
    assert d.layer_index == int(out.layer_scores.argmax())
    assert d.blueprint_index == int(out.blueprint_scores.argmax())
    assert d.blend_method == int(out.blend_logits[0].argmax())
    assert d.schedule == pytest.approx(tuple(out.schedule[0].tolist()))
    assert (d.ramp, d.value, d.risk_score) == pytest.approx(
        (out.ramp[0].item(), out.value[0].item(), out.risk_score[0].item())
    )
    assert (d.lr_delta, d.initial_alpha) == pytest.approx((out.params[0, 0].item(), (out.params[0, 1].item() + 1) / 2))
    with pytest.raises(ValueError, match="seed_mask"):
        decide(model, data, ALL, device="cpu", seed_mask=torch.ones(1, 5, dtype=torch.bool))


def test_non_finite_logits_are_an_error_not_a_choice(model: TamiyoGNN) -> None:
    data = graph(3)
    with torch.no_grad():
        model.action_head.bias[ACTION_NAMES.index("CULL")] = float("nan")
    with pytest.raises(FloatingPointError, match="not finite"):
        decide(model, data, ALL, device="cpu")
    only_no_op = [name == "NO_OP" for name in ACTION_NAMES]  # the broken logit is masked away: a decision again
    assert decide(model, data, only_no_op, device="cpu").action == "NO_OP"


def test_decide_rejects_bad_masks_and_training_mode(model: TamiyoGNN) -> None:
    data = graph(2)
    with pytest.raises(ValueError, match="no action"):
        decide(model, data, [False] * NUM_ACTIONS, device="cpu")
    with pytest.raises(ValueError, match="shape"):
        decide(model, data, [True] * 3, device="cpu")
    with pytest.raises(ValueError, match="seed_mask"):
        decide(model, data, ALL, device="cpu", seed_mask=[True])
    model.train()
    with pytest.raises(ValueError, match="eval mode"):
        decide(model, data, ALL, device="cpu")


def test_decision_holds_plain_python_numbers(model: TamiyoGNN) -> None:
    d = decide(model, graph(3), ALL, device="cpu")
    assert type(d.action_index) is int
    for value in (d.log_prob, d.value, d.risk_score, d.ramp, d.lr_delta, d.initial_alpha, *d.schedule):
        assert type(value) is float
    assert d.log_prob <= 0.0
    assert 0.0 <= d.initial_alpha <= 1.0
    assert -1.0 <= d.lr_delta <= 1.0
    assert d.blend_method in (0, 1, 2)
    assert type(d.seed_index) is int
    assert type(d.layer_index) is int
    assert type(d.blueprint_index) is int


def test_log_prob_is_that_of_the_masked_distribution(model: TamiyoGNN) -> None:
    data = graph(3)
    mask = [name in ("NO_OP", "CULL") for name in ACTION_NAMES]
    d = decide(model, data, mask, device="cpu")
    logits = run(model, data).action_logits[0]
    two = torch.log_softmax(logits[[0, 2]], dim=-1)
    assert d.log_prob == pytest.approx(two[0 if d.action == "NO_OP" else 1].item(), rel=1e-5)


def test_risk_score_is_probability_of_high_risk_classes_not_confidence(model: TamiyoGNN) -> None:
    with torch.no_grad():
        model.risk_head.bias.copy_(torch.tensor([3.0, 0.0, 0.0, 0.5, 0.2]))
    data = graph(3)
    out = run(model, data)
    probs = torch.softmax(out.risk_logits, dim=-1)[0]
    expected = probs[list(HIGH_RISK_CLASSES)].sum()
    torch.testing.assert_close(out.risk_score[0], expected)
    assert abs(out.risk_score[0].item() - probs.max().item()) > 0.3
    assert decide(model, data, ALL, device="cpu").risk_score == pytest.approx(expected.item(), rel=1e-5)


def test_state_dict_round_trip_gives_identical_outputs() -> None:
    a, b = build_tamiyo_gnn(SMALL, seed=1), build_tamiyo_gnn(SMALL, seed=2)
    data = graph(5)
    with torch.inference_mode():
        before = b(data.x_dict, data.edge_index_dict, data.edge_attr_dict)  # fills b's fused-weight cache
    assert not torch.equal(before.action_logits, run(a, data).action_logits)
    b.load_state_dict(a.state_dict())
    with torch.inference_mode():
        after = b(data.x_dict, data.edge_index_dict, data.edge_attr_dict)
    for x, y in zip(after, run(a, data), strict=True):
        assert torch.equal(x, y)


def test_parameters_put_in_place_are_watched_anew() -> None:
    """load_state_dict(assign=True) and a dtype change replace the Parameter objects; inference follows them."""
    a, b = build_tamiyo_gnn(SMALL, seed=1).eval(), build_tamiyo_gnn(SMALL, seed=2).eval()
    data = graph(5)
    run(b, data)  # fills b's caches with its own weights
    b.load_state_dict(a.state_dict(), assign=True)
    for x, y in zip(run(b, data), run(a, data), strict=True):
        assert torch.equal(x, y)
    b.double()
    x_dict = {k: v.double() for k, v in data.x_dict.items()}
    attr = {k: v.double() for k, v in data.edge_attr_dict.items()}
    with torch.no_grad():
        out = b(x_dict, data.edge_index_dict, attr)
        reference = b.forward_reference(x_dict, data.edge_index_dict, attr)
    assert out.action_logits.dtype == torch.float64
    torch.testing.assert_close(out.action_logits, reference.action_logits)


def test_a_change_through_data_needs_forget_fused() -> None:
    """torch does not version changes made through ``param.data``, so such a change is followed by forget_fused."""
    a, b = build_tamiyo_gnn(SMALL, seed=1).eval(), build_tamiyo_gnn(SMALL, seed=2).eval()
    data = graph(5)
    run(b, data)  # fills b's caches with its own weights
    for target, source in zip(b.parameters(), a.parameters(), strict=True):
        target.data.copy_(source.data)
    assert not torch.equal(run(b, data).action_logits, run(a, data).action_logits)  # the fused copies are stale
    b.forget_fused()
    for x, y in zip(run(b, data), run(a, data), strict=True):
        assert torch.equal(x, y)


def test_optimizer_step_refreshes_the_fused_weights(model: TamiyoGNN) -> None:
    """The cached fused weights follow in-place parameter updates, so inference after a step uses the new weights."""
    data = graph(3)
    with torch.inference_mode():
        before = model(data.x_dict, data.edge_index_dict, data.edge_attr_dict)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model.train()
    out = model(data.x_dict, data.edge_index_dict, data.edge_attr_dict)
    sum(t.float().sum() for t in out).backward()
    optimizer.step()
    model.eval()
    after, reference = run(model, data), run(model, data, reference=True)
    assert not torch.equal(before.action_logits, after.action_logits)
    torch.testing.assert_close(after.action_logits, reference.action_logits, rtol=1e-4, atol=1e-5)


def test_fixed_seed_is_deterministic() -> None:
    a, b = build_tamiyo_gnn(SMALL, seed=7), build_tamiyo_gnn(SMALL, seed=7)
    for (na, pa), (nb, pb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert na == nb
        assert torch.equal(pa, pb)
    data = graph(4)
    mask = [name != "NO_OP" for name in ACTION_NAMES]
    draws = []
    for net in (a, b):
        gen = torch.Generator().manual_seed(11)
        draws.append([decide(net, data, mask, device="cpu", sample=True, generator=gen) for _ in range(5)])
    assert draws[0] == draws[1]


def test_build_with_seed_leaves_the_global_rng_alone() -> None:
    torch.manual_seed(3)
    expected = torch.rand(1)
    torch.manual_seed(3)
    build_tamiyo_gnn(SMALL, seed=9)
    assert torch.equal(torch.rand(1), expected)


def test_build_with_seed_leaves_every_cuda_generator_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    # torch.manual_seed reseeds every CUDA device too, which fork_rng(devices=[]) does not put back: building the
    # policy reseeded the trainer's CUDA streams. The weights come from the CPU generator alone.
    reseeded: list[int] = []
    monkeypatch.setattr(torch.cuda, "manual_seed_all", reseeded.append)
    built = build_tamiyo_gnn(SMALL, seed=9)
    assert reseeded == []
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(9)
        expected = TamiyoGNN(SMALL)  # the weights torch.manual_seed(9) gave: saved policies keep theirs
    for (name, got), (_, want) in zip(built.state_dict().items(), expected.state_dict().items(), strict=True):
        assert torch.equal(got, want), name


@pytest.mark.parametrize(("capability", "autocast"), [((7, 5), False), ((8, 0), True), ((9, 0), True)])
def test_decide_autocasts_to_bf16_only_on_a_gpu_that_computes_it(
    model: TamiyoGNN, monkeypatch: pytest.MonkeyPatch, capability: tuple[int, int], autocast: bool
) -> None:
    # A T4 (7.5) emulates bf16, slower than fp32, though torch.cuda.is_bf16_supported() says True there. No GPU
    # here: the graph says it is on cuda:0 already, and the "GPU" forward is the CPU model's output.
    cuda = torch.device("cuda", 0)
    data = graph(3)
    output = run(model, data)

    class OnCuda:
        training = False

        def __call__(
            self,
            x_dict: Mapping[str, torch.Tensor],
            edge_index_dict: Mapping[EdgeType, torch.Tensor],
            edge_attr_dict: Mapping[EdgeType, torch.Tensor],
            batch_dict: Mapping[str, torch.Tensor] | None = None,
        ) -> PolicyOutput:
            return output

    class Where:
        device = cuda

    on_cuda = SimpleNamespace(x_dict={"global": Where()}, edge_index_dict={}, edge_attr_dict={})
    casts: list[tuple[str, torch.dtype]] = []

    def recorded(device_type: str, dtype: torch.dtype) -> contextlib.nullcontext[None]:
        casts.append((device_type, dtype))
        return contextlib.nullcontext()

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch, "autocast", recorded)
    decision = decide(OnCuda(), cast("HeteroData", on_cuda), ALL, device=cuda)
    assert casts == ([("cuda", torch.bfloat16)] if autocast else [])
    monkeypatch.undo()
    assert decision == decide(model, data, ALL, device="cpu")


def test_maybe_compile_is_eager_on_cpu(model: TamiyoGNN) -> None:
    module, compiled = maybe_compile(model, "cpu")
    assert module is model
    assert compiled is False


def test_compile_fallback_goes_eager_for_good_and_counts(model: TamiyoGNN) -> None:
    import torch._dynamo.exc

    calls = 0

    def broken(*args: object) -> PolicyOutput:
        nonlocal calls
        calls += 1
        raise torch._dynamo.exc.TorchDynamoException("backend exploded")

    wrapper = CompileFallback(model, broken)
    compiled_at_start = wrapper.compiled
    data = graph(3)
    first = decide(wrapper, data, ALL, device="cpu")
    second = decide(wrapper, data, ALL, device="cpu")
    assert first == second == decide(model, data, ALL, device="cpu")
    assert calls == 1
    assert wrapper.fallbacks == 1
    assert (compiled_at_start, wrapper.compiled) == (True, False)
    assert wrapper.last_error is not None
    assert "backend exploded" in wrapper.last_error


def test_compile_fallback_does_not_hide_other_errors(model: TamiyoGNN) -> None:
    def broken(*args: object) -> PolicyOutput:
        raise KeyError("not a compiler error")

    wrapper = CompileFallback(model, broken)
    with pytest.raises(KeyError):
        decide(wrapper, graph(1), ALL, device="cpu")
    assert wrapper.compiled


def test_architecture_version_and_no_lazy_parameters(model: TamiyoGNN) -> None:
    assert ARCHITECTURE_VERSION == "tamiyo_gnn_v1"
    uninitialised = torch.nn.parameter.UninitializedParameter
    assert not any(isinstance(p, uninitialised) for p in model.parameters())
    assert not model.training


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_decide_on_cuda_matches_cpu_action() -> None:
    net = build_tamiyo_gnn(SMALL, seed=0)
    data = graph(3)
    cpu = decide(net, data, ALL, device="cpu")
    gpu = decide(net.to("cuda"), data, ALL, device="cuda")
    assert gpu.action_index == cpu.action_index
