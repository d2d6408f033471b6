"""Stage arithmetic of a slot: straight-through incubation, the four blend modes, alpha schedules, mode rules."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import Tensor, nn

from esper.nn import SlotMode, find_slots, wrap
from esper.nn.blending import (
    AlphaSchedule,
    BlendMode,
    BlendSpec,
    ScheduleMethod,
    blend,
    sigmoid_ramp,
)
from esper.nn.hosts import CNN1dHost
from esper.nn.slots import SeedSlot, SlotStateError


def _conv_seed(width: int = 12) -> nn.Module:
    return nn.Sequential(nn.Conv1d(width, width, 3, padding=1), nn.Tanh())


def _grown_pair(mode: SlotMode) -> tuple[nn.Module, nn.Module, nn.Module]:
    torch.manual_seed(0)
    plain = CNN1dHost()
    grown = wrap(copy.deepcopy(plain), plain.slot_targets)
    seed = _conv_seed()
    find_slots(grown)["blocks.1"].attach(seed, mode, seed_id="s1")
    return plain, grown, seed


def test_training_is_straight_through_host_bitwise_unchanged_seed_learns() -> None:
    """Seeded: output and every host gradient equal the seedless step bitwise; the seed's gradients are non-zero."""
    plain, grown, seed = _grown_pair(SlotMode.TRAINING)
    x = torch.randn(16, 40)
    target = torch.randint(0, 10, (16,))
    y_plain = plain(x)
    y_grown = grown(x)
    assert torch.equal(y_plain, y_grown)
    torch.autograd.backward(nn.functional.cross_entropy(y_plain, target))
    torch.autograd.backward(nn.functional.cross_entropy(y_grown, target))
    grown_params = dict(grown.named_parameters())
    for name, p in plain.named_parameters():
        g = grown_params[name].grad
        assert p.grad is not None
        assert g is not None
        assert torch.equal(p.grad, g), name
    for p in seed.parameters():
        assert p.grad is not None
        assert bool(p.grad.abs().sum() > 0)


@pytest.mark.parametrize("mode", [SlotMode.TRAINING, SlotMode.BLENDING, SlotMode.FULL])
def test_seed_contribution_puts_no_gradient_on_host_parameters(mode: SlotMode) -> None:
    _, grown, seed = _grown_pair(mode)
    captured: list[Tensor] = []
    seed.register_forward_hook(lambda _m, _i, out: captured.append(out))
    grown(torch.randn(4, 40))
    host_params = [p for n, p in grown.named_parameters() if ".seed." not in n]
    grads = torch.autograd.grad(captured[0].sum(), host_params, allow_unused=True)
    assert all(g is None for g in grads)


def test_fossilized_seed_is_host_and_keeps_the_full_output() -> None:
    _, grown, _ = _grown_pair(SlotMode.FULL)
    x = torch.randn(4, 40)
    full = grown(x)
    slot = find_slots(grown)["blocks.1"]
    slot.set_mode(SlotMode.FOSSILIZED)
    fossil = grown(x)
    assert torch.equal(full, fossil)
    fossil.sum().backward()
    first_conv = grown.get_parameter("blocks.0.conv.weight")
    assert first_conv.grad is not None
    assert bool(first_conv.grad.abs().sum() > 0)
    with pytest.raises(SlotStateError, match="FOSSILIZED"):
        slot.detach()
    with pytest.raises(SlotStateError, match="cannot return"):
        slot.set_mode(SlotMode.BLENDING)


def _hs(shape: tuple[int, ...] = (5, 4, 3)) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(3)
    return torch.randn(shape, generator=g), torch.randn(shape, generator=g)


@pytest.mark.parametrize("a", [0.0, 0.3, 1.0])
def test_convex_and_residual_match_reference_formulas(a: float) -> None:
    h, s = _hs()
    alpha = torch.tensor(a)
    torch.testing.assert_close(blend(h, s, alpha, BlendSpec()), a * s + (1 - a) * h)
    torch.testing.assert_close(blend(h, s, alpha, BlendSpec(mode=BlendMode.RESIDUAL)), h + a * s)


def test_convex_at_alpha_one_is_exactly_the_seed() -> None:
    h, s = _hs()
    assert torch.equal(blend(h, s, torch.tensor(1.0), BlendSpec()), s)


def test_channel_mode_clamps_alpha_times_v_per_channel() -> None:
    h, s = _hs()
    v = (0.5, 3.0, -1.0, 1.0)
    spec = BlendSpec(mode=BlendMode.CHANNEL, channel_weights=v)
    alpha = torch.tensor(0.6)
    out = blend(h, s, alpha, spec, torch.tensor(v))
    eff = torch.tensor([min(1.0, max(0.0, 0.6 * w)) for w in v]).view(1, 4, 1)
    torch.testing.assert_close(out, eff * s + (1 - eff) * h)
    assert float(alpha) == pytest.approx(0.6)  # the shared alpha is never clamped in place
    with pytest.raises(ValueError, match="channel dim 1"):
        blend(h, s, alpha, spec, torch.tensor(v[:3]))
    with pytest.raises(ValueError, match="1 to 64"):
        BlendSpec(mode=BlendMode.CHANNEL, channel_weights=(1.0,) * 65)
    with pytest.raises(ValueError, match="1 to 64"):
        BlendSpec(mode=BlendMode.CHANNEL)
    with pytest.raises(ValueError, match="only CHANNEL"):
        BlendSpec(channel_weights=(1.0,))


def test_confidence_mode_gates_by_logit_margin_within_bounds() -> None:
    h = torch.zeros(3, 4)
    s = torch.tensor([[5.0, 0.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0], [2.0, 1.5, 0.0, 0.0]])
    spec = BlendSpec(mode=BlendMode.CONFIDENCE, confidence_k=4.0, confidence_tau=0.5, alpha_lo=0.1, alpha_hi=0.9)
    out = blend(h, s, torch.tensor(1.0), spec)
    margins = [5.0, 0.0, 0.5]
    eff = torch.tensor([min(0.9, max(0.1, 1 / (1 + math.exp(-4.0 * (m - 0.5))))) for m in margins]).unsqueeze(-1)
    torch.testing.assert_close(out, eff * s)
    with pytest.raises(ValueError, match=">= 2 classes"):
        blend(torch.zeros(3, 1), torch.zeros(3, 1), torch.tensor(1.0), spec)
    with pytest.raises(ValueError, match="alpha_lo"):
        BlendSpec(mode=BlendMode.CONFIDENCE, alpha_lo=0.8, alpha_hi=0.2)


def test_channel_length_mismatch_is_refused_at_the_slot() -> None:
    slot = SeedSlot("x")
    slot.attach(
        nn.Identity(), SlotMode.BLENDING, blend_spec=BlendSpec(mode=BlendMode.CHANNEL, channel_weights=(1.0,) * 3)
    )
    assert slot(torch.ones(2, 3, 5)).shape == (2, 3, 5)
    with pytest.raises(ValueError, match="channel dim 1"):
        slot(torch.ones(2, 4, 5))


def test_channel_mode_weighs_the_channel_dim_the_slot_names() -> None:
    """A sequence slot ([batch, seq, features], channel_dim 2) takes one entry per feature, as Kasmina admits."""
    torch.manual_seed(0)
    h, s = torch.randn(2, 5, 3), torch.randn(2, 5, 3)
    v = (0.5, 3.0, -1.0)
    spec = BlendSpec(mode=BlendMode.CHANNEL, channel_weights=v)
    out = blend(h, s, torch.tensor(0.6), spec, torch.tensor(v), channel_dim=2)
    eff = torch.tensor([0.3, 1.0, 0.0]).view(1, 1, 3)
    torch.testing.assert_close(out, eff * s + (1 - eff) * h)
    with pytest.raises(ValueError, match=r"\(2, 5, 3\) activation's channel dim 3"):
        blend(h, s, torch.tensor(0.6), spec, torch.tensor(v), channel_dim=3)
    slot = SeedSlot("x")
    slot.attach(nn.Identity(), SlotMode.FULL, blend_spec=BlendSpec(mode=BlendMode.CHANNEL, channel_weights=(1.0,) * 8))
    with pytest.raises(ValueError, match="channel dim 1"):
        slot(torch.ones(2, 5, 8))
    slot.channel_dim = 2
    assert slot(torch.ones(2, 5, 8)).shape == (2, 5, 8)


def test_tanh_schedule_values_and_snap() -> None:
    sched = AlphaSchedule()
    assert sched.value(0) == pytest.approx(0.00669, abs=1e-4)
    assert sched.value(10) == 0.5
    assert sched.value(19) == pytest.approx(0.9890, abs=1e-4)
    assert sigmoid_ramp(20, 20, 2.0) == pytest.approx(0.99331, abs=1e-4)
    assert sched.value(20) == 1.0
    assert sched.value(500) == 1.0
    values = [sched.value(s) for s in range(21)]
    assert values == sorted(values)


def test_linear_cosine_and_window_schedules() -> None:
    lin = AlphaSchedule(method=ScheduleMethod.LINEAR, total_steps=10)
    assert [lin.value(s) for s in (0, 5, 10)] == [0.0, 0.5, 1.0]
    cos = AlphaSchedule(method=ScheduleMethod.COSINE, total_steps=10)
    assert cos.value(5) == pytest.approx(0.5)
    assert cos.value(2) == pytest.approx(0.5 * (1 - math.cos(math.pi * 0.2)))
    win = AlphaSchedule(method=ScheduleMethod.LINEAR, total_steps=20, start=0.25, end=0.75)
    assert [win.value(s) for s in (0, 4, 5, 10, 14, 15)] == [0.0, 0.0, 0.0, 0.5, 0.9, 1.0]
    with pytest.raises(ValueError, match="start/end"):
        AlphaSchedule(start=0.6, end=0.5)
    with pytest.raises(ValueError, match="total_steps"):
        AlphaSchedule(total_steps=0)


def test_advance_alpha_writes_the_buffer_in_place_and_only_while_blending() -> None:
    slot = SeedSlot("x")
    buffer = slot.alpha
    slot.attach(nn.Identity(), SlotMode.TRAINING)
    assert slot.advance_alpha() == 0.0
    slot.set_mode(SlotMode.BLENDING)
    seen = [slot.alpha_value] + [slot.advance_alpha() for _ in range(20)]
    assert seen[0] == pytest.approx(0.00669, abs=1e-4)
    assert seen[10] == 0.5
    assert seen[20] == 1.0
    assert slot.alpha is buffer
    assert float(buffer) == 1.0
    assert not isinstance(slot.alpha, nn.Parameter)
    slot.set_mode(SlotMode.FULL)
    assert slot.advance_alpha() == 1.0
    slot.detach()
    assert slot.alpha_value == 0.0
    assert slot.mode is SlotMode.DORMANT


def test_attach_and_mode_errors() -> None:
    slot = SeedSlot("blocks.1")
    with pytest.raises(SlotStateError, match="attach one first"):
        slot.set_mode(SlotMode.BLENDING)
    with pytest.raises(SlotStateError, match="DORMANT"):
        slot.attach(nn.Identity(), SlotMode.DORMANT)
    with pytest.raises(SlotStateError, match="cannot detach"):
        slot.detach()
    slot.attach(nn.Identity(), seed_id="a")
    with pytest.raises(SlotStateError, match="already holds seed 'a'"):
        slot.attach(nn.Identity(), seed_id="b")
    with pytest.raises(SlotStateError, match="detach"):
        slot.set_mode(SlotMode.DORMANT)


def test_seed_with_wrong_output_shape_is_refused() -> None:
    slot = SeedSlot("blocks.1")
    slot.attach(nn.Linear(4, 3))
    with pytest.raises(ValueError, match=r"seed output \(2, 3\)"):
        slot(torch.ones(2, 4))
