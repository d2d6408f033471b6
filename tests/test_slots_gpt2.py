"""Seed slots in a real Hugging Face GPT-2 built from a config (nothing downloaded): identity, isolation, blending."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from esper.nn import SlotMode, find_slots, wrap

transformers = pytest.importorskip("transformers")  # a dev dependency; skipped only where it is not installed
GPT2Config = transformers.GPT2Config
GPT2Model = transformers.GPT2Model
GPT2Block = transformers.models.gpt2.modeling_gpt2.GPT2Block

EMBED = 32


def _gpt2() -> nn.Module:
    torch.manual_seed(0)
    config = GPT2Config(
        n_layer=2, n_embd=EMBED, n_head=2, n_positions=16, vocab_size=50, bos_token_id=0, eos_token_id=0
    )
    model: nn.Module = GPT2Model(config)
    return model


def _tokens() -> torch.Tensor:
    return torch.randint(0, 50, (2, 8), generator=torch.Generator().manual_seed(1))


def _hidden(model: nn.Module, seed: int = 3) -> torch.Tensor:
    torch.manual_seed(seed)  # dropout draws the same masks in both models
    out: torch.Tensor = model(_tokens()).last_hidden_state
    return out


def test_wrap_finds_every_gpt2_block_and_dormant_slots_are_bitwise_identity() -> None:
    plain = _gpt2()
    wrapped = wrap(copy.deepcopy(plain), GPT2Block)
    assert list(find_slots(wrapped)) == ["h.0", "h.1"]
    assert isinstance(wrapped.get_submodule("h.0"), GPT2Block)
    for mode in ("train", "eval"):
        plain.train(mode == "train")
        wrapped.train(mode == "train")
        assert torch.equal(_hidden(wrapped), _hidden(plain)), mode


def test_an_incubating_seed_changes_nothing_for_the_host_and_still_learns() -> None:
    plain = _gpt2()
    wrapped = wrap(copy.deepcopy(plain), GPT2Block)
    plain.eval()
    wrapped.eval()
    seed = nn.Sequential(nn.Linear(EMBED, EMBED), nn.Tanh())
    find_slots(wrapped)["h.0"].attach(seed, SlotMode.TRAINING, seed_id="s1")
    out_plain = _hidden(plain)
    out_wrapped = _hidden(wrapped)
    assert torch.equal(out_wrapped, out_plain)  # straight-through: the forward value is the host's
    out_plain.square().mean().backward()  # type: ignore[no-untyped-call]  # torch leaves it unannotated
    out_wrapped.square().mean().backward()  # type: ignore[no-untyped-call]
    host_grads = dict(plain.named_parameters())
    for name, p in wrapped.named_parameters():
        if ".esper_slot." in name:
            continue
        reference = host_grads[name].grad
        assert (p.grad is None) == (reference is None), name
        if p.grad is not None and reference is not None:
            assert torch.equal(p.grad, reference), name  # the isolation invariant, exactly
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in seed.parameters())


def test_a_blending_seed_moves_the_output_by_alpha() -> None:
    plain = _gpt2()
    wrapped = wrap(copy.deepcopy(plain), GPT2Block)
    plain.eval()
    wrapped.eval()
    seed = nn.Sequential(nn.Linear(EMBED, EMBED), nn.Tanh())
    slot = find_slots(wrapped)["h.1"]
    slot.attach(seed, SlotMode.BLENDING, seed_id="s1")
    with torch.no_grad():
        start = slot.alpha_value
        early = (_hidden(wrapped) - _hidden(plain)).abs().max().item()
        for _ in range(slot.schedule.total_steps):
            slot.advance_alpha()
        late = (_hidden(wrapped) - _hidden(plain)).abs().max().item()
    assert start < 0.01  # the sigmoid ramp starts near 0 and ends near 1
    assert slot.alpha_value > 0.99
    assert 0.0 < early < late  # the seed's share grows with alpha
