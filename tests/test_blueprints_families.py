"""Every catalogue blueprint on every slot kind it claims: builds, probes clean, is zero at birth, and trains."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from esper.nn.blueprints import (
    FAMILIES,
    SLOT_KINDS,
    BlueprintDescriptor,
    SlotKind,
    SlotShape,
    build_blueprint,
    default_catalogue,
    param_count,
    param_count_range,
    probe_validate,
)

FEATURES = 6
# Tiny probe shapes per slot kind, batch first; the feature axis holds FEATURES.
SHAPES: dict[SlotKind, tuple[int, ...]] = {
    "conv1d": (2, FEATURES, 7),
    "conv2d": (2, FEATURES, 4, 5),
    "flat": (3, FEATURES),
    "sequence": (2, 5, FEATURES),
}
# The zero-initialised last layer of each family ("" is the module itself).
LAST_LAYER = {
    "residual_conv": "conv_out",
    "depthwise_separable": "pointwise",
    "squeeze_excite": "excite",
    "bottleneck_mlp": "down",
    "low_rank_adapter": "b",
    "gated_linear_unit": "out",
    "norm_scale": "",
    "self_attention": "out",
}

CATALOGUE = default_catalogue()
CLAIMED = [pytest.param(d, k, id=f"{d.blueprint_id}-{d.name}-{k}") for d in CATALOGUE for k in d.slot_kinds]
UNCLAIMED = [
    pytest.param(d, k, id=f"{d.blueprint_id}-{k}") for d in CATALOGUE for k in SLOT_KINDS if k not in d.slot_kinds
]


def _corner(descriptor: BlueprintDescriptor, which: str) -> dict[str, float]:
    bounds = descriptor.allowed_parameters
    if which == "default":
        return descriptor.defaults()
    return {n: (b.min_value if which == "min" else b.max_value) for n, b in bounds.items()}


def _build(descriptor: BlueprintDescriptor, kind: SlotKind, seed: int = 0) -> nn.Module:
    return build_blueprint(descriptor, SlotShape(kind, FEATURES), descriptor.defaults(), seed=seed)


def _linear(module: nn.Module, name: str) -> nn.Linear:
    layer = module.get_submodule(name)
    assert isinstance(layer, nn.Linear)
    return layer


def _input(kind: SlotKind, seed: int = 1) -> torch.Tensor:
    return torch.randn(SHAPES[kind], generator=torch.Generator().manual_seed(seed))


def test_catalogue_covers_at_least_eight_families_and_every_family() -> None:
    """The default catalogue uses every registered family, and there are at least 8 of them."""
    assert len(FAMILIES) >= 8
    assert {d.family for d in CATALOGUE} == set(FAMILIES)


@pytest.mark.parametrize(("descriptor", "kind"), CLAIMED)
def test_builds_and_passes_probe(descriptor: BlueprintDescriptor, kind: SlotKind) -> None:
    """A fresh module round-trips the probe shape, is finite, within its parameter bounds, and exactly zero."""
    slot = SlotShape(kind, FEATURES)
    module = _build(descriptor, kind)
    report = probe_validate(module, descriptor, slot, SHAPES[kind])
    assert report.ok, report.failures
    assert report.output_shape == SHAPES[kind]
    assert report.output_is_zero
    assert report.forward_ms >= 0.0
    assert all(p.grad is None for p in module.parameters()), "the probe must not leave gradients behind"


@pytest.mark.parametrize(("descriptor", "kind"), CLAIMED)
def test_function_preserving_at_birth(descriptor: BlueprintDescriptor, kind: SlotKind) -> None:
    """seed(x) is exactly zero, so h + alpha * seed(x) == h; the zero last layer still receives a non-zero gradient."""
    module = _build(descriptor, kind)
    last = module.get_submodule(LAST_LAYER[descriptor.family])
    assert all(torch.count_nonzero(p) == 0 for p in last.parameters())
    x = _input(kind)
    s = module(x)
    assert s.shape == x.shape
    assert torch.count_nonzero(s) == 0
    h = torch.randn(x.shape, generator=torch.Generator().manual_seed(7))
    assert torch.equal(h + 0.7 * s, h)
    torch.autograd.backward((s * torch.randn(s.shape, generator=torch.Generator().manual_seed(3))).sum())
    for name, p in last.named_parameters():
        assert p.grad is not None, name
        assert torch.count_nonzero(p.grad) > 0, f"last-layer parameter {name} got a zero gradient"


@pytest.mark.parametrize(("descriptor", "kind"), CLAIMED)
def test_one_sgd_step_moves_the_output_and_opens_every_gradient(
    descriptor: BlueprintDescriptor, kind: SlotKind
) -> None:
    """After one SGD step on a random target the output is non-zero and every parameter then receives gradient."""
    module = _build(descriptor, kind)
    x = _input(kind)
    target = torch.randn(x.shape, generator=torch.Generator().manual_seed(5))
    optimizer = torch.optim.SGD(module.parameters(), lr=0.1)
    torch.autograd.backward(nn.functional.mse_loss(module(x), target))
    optimizer.step()
    optimizer.zero_grad()
    y = module(x)
    assert torch.count_nonzero(y) > 0
    torch.autograd.backward(nn.functional.mse_loss(y, target))
    for name, p in module.named_parameters():
        assert p.grad is not None, name
        assert torch.count_nonzero(p.grad) > 0, f"{name} still gets no gradient after one step"


@pytest.mark.parametrize(("descriptor", "kind"), CLAIMED)
def test_param_count_matches_built_module(descriptor: BlueprintDescriptor, kind: SlotKind) -> None:
    """param_count predicts the built module's parameter count at the bounds' corners, inside param_count_range."""
    slot = SlotShape(kind, FEATURES)
    lo, hi = param_count_range(descriptor, slot)
    for which in ("min", "default", "max"):
        params = _corner(descriptor, which)
        built = sum(p.numel() for p in build_blueprint(descriptor, slot, params).parameters())
        assert param_count(descriptor, slot, params) == built, which
        assert lo <= built <= hi, which


@pytest.mark.parametrize(("descriptor", "kind"), CLAIMED)
def test_build_is_deterministic_and_leaves_global_rng_alone(descriptor: BlueprintDescriptor, kind: SlotKind) -> None:
    """Equal seeds (or a generator so seeded) give bitwise-equal weights; torch's global RNG is left untouched."""
    before = torch.get_rng_state()
    a = _build(descriptor, kind, seed=11).state_dict()
    b = _build(descriptor, kind, seed=11).state_dict()
    slot = SlotShape(kind, FEATURES)
    c = build_blueprint(descriptor, slot, descriptor.defaults(), seed=torch.Generator().manual_seed(11)).state_dict()
    assert torch.equal(before, torch.get_rng_state())
    assert a.keys() == b.keys() == c.keys()
    assert all(torch.equal(a[k], b[k]) and torch.equal(a[k], c[k]) for k in a)
    other = _build(descriptor, kind, seed=12).state_dict()
    random_layers = descriptor.family != "norm_scale"  # norm_scale has only ones and zeros
    assert any(not torch.equal(a[k], other[k]) for k in a) == random_layers


@pytest.mark.parametrize(("descriptor", "kind"), UNCLAIMED)
def test_unclaimed_slot_kind_is_refused(descriptor: BlueprintDescriptor, kind: SlotKind) -> None:
    """Building (or counting) a blueprint for a slot kind it does not claim raises ValueError naming the kind."""
    slot = SlotShape(kind, FEATURES)
    with pytest.raises(ValueError, match=f"does not fit slot kind '{kind}'"):
        build_blueprint(descriptor, slot, descriptor.defaults())
    with pytest.raises(ValueError, match="does not fit"):
        param_count(descriptor, slot, descriptor.defaults())


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_family_builders_refuse_kinds_they_cannot_fit(family: str) -> None:
    """Below the catalogue, each family's own builder refuses a slot kind outside its kinds."""
    spec = FAMILIES[family]
    descriptor = next(d for d in CATALOGUE if d.family == family)
    for kind in SLOT_KINDS:
        if kind in spec.kinds:
            continue
        with pytest.raises(ValueError, match=f"{family} fits slot kinds"):
            spec.build(SlotShape(kind, FEATURES), descriptor.defaults(), torch.Generator())


@pytest.mark.parametrize("blueprint_id", ["BP002", "BP005", "BP008"])
def test_bfloat16_slot_builds_a_zero_bf16_seed(blueprint_id: str) -> None:
    """A bf16 slot gets a bf16 module whose output is bf16 and exactly zero at birth."""
    descriptor = CATALOGUE.get(blueprint_id)
    kind = descriptor.slot_kinds[0]
    module = build_blueprint(descriptor, SlotShape(kind, FEATURES, torch.bfloat16), descriptor.defaults())
    assert {p.dtype for p in module.parameters()} == {torch.bfloat16}
    y = module(_input(kind).to(torch.bfloat16))
    assert y.dtype == torch.bfloat16
    assert torch.count_nonzero(y) == 0


def test_attention_is_causal_by_default_and_can_be_turned_off() -> None:
    """With causal=1 a change at the last position leaves earlier outputs unchanged; with causal=0 it does not."""
    descriptor = CATALOGUE.get("BP008")
    slot = SlotShape("sequence", FEATURES)
    x = _input("sequence")
    x2 = x.clone()
    x2[:, -1] += torch.randn(x2[:, -1].shape, generator=torch.Generator().manual_seed(2))
    for causal, leaks in ((1.0, False), (0.0, True)):
        module = build_blueprint(descriptor, slot, {**descriptor.defaults(), "causal": causal})
        with torch.no_grad():
            _linear(module, "out").weight.normal_(generator=torch.Generator().manual_seed(0))
            early, early2 = module(x)[:, :-1], module(x2)[:, :-1]
        assert (not torch.allclose(early, early2)) == leaks
