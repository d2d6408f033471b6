"""A short real training run: a seed is attached, trained, blended to alpha 1, fossilized; the model keeps training."""

from __future__ import annotations

import math

import torch
from torch import nn

from esper.nn import SlotMode, find_slots, wrap
from esper.nn.hosts import CNN1dHost
from esper.nn.optim_migration import add_seed_group, check_param_groups, fossilize_seed_group
from esper.nn.ownership import HOST, ParameterRegistry
from esper.nn.wrap import slot_path


def test_seed_lifecycle_in_a_real_training_loop() -> None:
    """Seed 0, random data: losses stay finite in every stage; after fossilizing, the host group trains the seed."""
    torch.manual_seed(0)
    model = wrap(CNN1dHost(width=8), CNN1dHost(width=8).slot_targets)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    registry = ParameterRegistry()
    registry.register_host(model)
    x = torch.randn(64, 40)
    y = torch.randint(0, 10, (64,))
    losses: list[float] = []

    def step() -> None:
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        torch.autograd.backward(loss)
        opt.step()
        losses.append(float(loss.detach()))

    for _ in range(3):
        step()
    slot = find_slots(model)["blocks.1"]
    conv = nn.Conv1d(8, 8, 3, padding=1)
    seed = nn.Sequential(conv, nn.Tanh())
    slot.attach(seed, SlotMode.TRAINING, seed_id="s1")
    prefix = slot_path("blocks.1") + ".seed."
    registry.register("s1", [(prefix + n, p) for n, p in seed.named_parameters()])
    add_seed_group(opt, "s1", seed.parameters(), lr=1e-2)
    check_param_groups(opt, model.named_parameters())
    registry.check_model(model)
    before = [p.detach().clone() for p in seed.parameters()]
    for _ in range(3):
        step()
    assert all(not torch.equal(b, p) for b, p in zip(before, seed.parameters(), strict=True))
    slot.set_mode(SlotMode.BLENDING)
    while slot.alpha_value < 1.0:
        step()
        slot.advance_alpha()
    assert slot.alpha_steps == 20
    slot.set_mode(SlotMode.FULL)
    step()
    slot.set_mode(SlotMode.FOSSILIZED)
    fossilize_seed_group(opt, "s1")
    registry.transfer_to_host("s1")
    check_param_groups(opt, model.named_parameters())
    assert registry.owner_of(conv.weight) == HOST
    assert len(opt.param_groups) == 1
    before = [p.detach().clone() for p in seed.parameters()]
    for _ in range(5):
        step()
    assert all(not torch.equal(b, p) for b, p in zip(before, seed.parameters(), strict=True))
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0]
