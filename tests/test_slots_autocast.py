"""Every catalogue blueprint's seed trains in a slot under CPU bf16 autocast, with the host's gradients isolated."""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

import pytest
import torch
from torch import Tensor, nn

from esper.nn import SlotMode, find_slots, wrap
from esper.nn.blending import BlendMode, BlendSpec
from esper.nn.blueprints import SlotShape, build_blueprint, default_catalogue
from esper.nn.hosts import CNN1dHost, CNN2dHost, MLPHost

if TYPE_CHECKING:
    from collections.abc import Callable

    from esper.nn.blueprints import SlotKind


class _SequenceHost(nn.Module):
    """``[batch, seq, 6]`` in, a ``[batch, seq, 16]`` block (the slot target), mean over the sequence, 3 classes."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(6, 16)
        self.block = nn.Sequential(nn.Linear(16, 16), nn.GELU())
        self.head = nn.Linear(16, 3)

    def forward(self, x: Tensor) -> Tensor:
        y: Tensor = self.head(self.block(self.embed(x)).mean(1))
        return y


# kind -> (host factory, slot target, slot features, input factory)
_HOSTS: dict[str, tuple[Callable[[], nn.Module], str, int, Callable[[], Tensor]]] = {
    "flat": (MLPHost, "blocks.1", 64, lambda: torch.randn(4, 40)),
    "conv1d": (CNN1dHost, "blocks.1", 12, lambda: torch.randn(4, 40)),
    "conv2d": (lambda: CNN2dHost(widths=(4, 8, 8, 8)), "blocks.1", 8, lambda: torch.randn(2, 3, 16, 16)),
    "sequence": (_SequenceHost, "block", 16, lambda: torch.randn(2, 5, 6)),
}

_CASES = [(d.blueprint_id, kind) for d in default_catalogue() for kind in d.slot_kinds]


def _loss(model: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out: Tensor = model(x)
    loss = nn.functional.cross_entropy(out.float(), torch.zeros(len(x), dtype=torch.long))
    return out, loss


def _grown(blueprint_id: str, kind: SlotKind, mode: SlotMode) -> tuple[nn.Module, nn.Module, nn.Module, Tensor]:
    factory, target, features, sample = _HOSTS[kind]
    torch.manual_seed(0)
    plain = factory()
    grown = wrap(copy.deepcopy(plain), [target])
    descriptor = next(d for d in default_catalogue() if d.blueprint_id == blueprint_id)
    seed = build_blueprint(descriptor, SlotShape(kind, features), {}, seed=0, fill_defaults=True)
    spec = BlendSpec(mode=BlendMode.RESIDUAL)
    find_slots(grown)[target].attach(seed, mode, seed_id="s", blend_spec=spec)
    return plain, grown, seed, sample()


def _assert_seed_learns(seed: nn.Module) -> None:
    grads = [p.grad for p in seed.parameters()]
    assert all(g is not None and bool(torch.isfinite(g).all()) for g in grads)
    assert any(g is not None and bool(g.abs().sum() > 0) for g in grads)


@pytest.mark.parametrize(("blueprint_id", "kind"), _CASES)
def test_incubating_seed_under_autocast_learns_and_leaves_the_host_bitwise_alone(
    blueprint_id: str, kind: SlotKind
) -> None:
    plain, grown, seed, x = _grown(blueprint_id, kind, SlotMode.TRAINING)
    y_plain, loss_plain = _loss(plain, x)
    y_grown, loss_grown = _loss(grown, x)
    assert torch.equal(y_grown, y_plain)
    torch.autograd.backward(loss_plain)
    torch.autograd.backward(loss_grown)
    grown_params = dict(grown.named_parameters())
    for name, p in plain.named_parameters():
        g = grown_params[name].grad
        assert p.grad is not None
        assert g is not None
        assert torch.equal(g, p.grad), name
    _assert_seed_learns(seed)


@pytest.mark.parametrize(("blueprint_id", "kind"), _CASES)
def test_fossilized_seed_under_autocast_runs_forward_and_backward(blueprint_id: str, kind: SlotKind) -> None:
    plain, grown, seed, x = _grown(blueprint_id, kind, SlotMode.FOSSILIZED)
    y_plain, _ = _loss(plain, x)
    y_grown, loss = _loss(grown, x)
    assert y_grown.dtype == y_plain.dtype
    assert torch.equal(y_grown, y_plain)  # a residual seed is exactly zero at birth
    torch.autograd.backward(loss)
    _assert_seed_learns(seed)
    assert all(p.grad is not None for n, p in grown.named_parameters() if ".seed." not in n)


def test_fp32_seed_output_is_used_as_is() -> None:
    """Without autocast the seed's own output tensor is the slot's output: no cast, so fp32 runs are unchanged."""
    captured: list[Tensor] = []
    seed = nn.Linear(4, 4)
    seed.register_forward_hook(lambda _m, _i, out: captured.append(out))
    host = wrap(nn.Sequential(nn.Linear(4, 4)), ["0"])
    find_slots(host)["0"].attach(seed, SlotMode.FOSSILIZED, seed_id="s")
    assert host(torch.randn(2, 4)) is captured[0]


def test_a_non_float_seed_output_is_still_refused() -> None:
    class Rounding(nn.Module):
        def forward(self, h: Tensor) -> Tensor:
            return h.long()

    host = wrap(nn.Sequential(nn.Linear(4, 4)), ["0"])
    find_slots(host)["0"].attach(Rounding(), seed_id="s")
    with pytest.raises(ValueError, match=r"seed output \(2, 4\) torch\.int64 must match host \(2, 4\) torch\.float32"):
        host(torch.randn(2, 4))
