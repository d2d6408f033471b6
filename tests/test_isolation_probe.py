"""The isolation probe finds no host gradient from a healthy seed, finds a leaking one, and skips other stages."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from esper.nn import SlotMode, find_slots, wrap
from esper.nn.hosts import CNN1dHost
from esper.nn.isolation import MONITORED_MODES, host_parameters_of, live_seed_slots, probe_isolation


class TinySeed(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.conv(x)
        return out


class LeakySeed(nn.Module):
    """Reads a host weight behind the slot's back: its output depends on a host parameter."""

    def __init__(self, channels: int, host_weight: Tensor) -> None:
        super().__init__()
        self.conv = nn.Conv1d(channels, channels, 3, padding=1)
        self._host_weight = [host_weight]  # a plain list: not registered, so the host still owns it

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.conv(x) + 1e-3 * self._host_weight[0].sum()
        return out


def grown(*, leaky: bool = False) -> tuple[nn.Module, str]:
    torch.manual_seed(0)
    host = CNN1dHost(width=8)
    model = wrap(host, host.slot_targets)
    name, slot = next(iter(find_slots(model).items()))
    channels = 8
    first_weight = next(p for n, p in model.named_parameters() if "esper_slot" not in n)
    seed = LeakySeed(channels, first_weight) if leaky else TinySeed(channels)
    slot.attach(seed, SlotMode.TRAINING, seed_id="seed-1")
    return model, name


def test_a_healthy_seed_is_isolated_in_every_probed_stage() -> None:
    model, name = grown()
    slot = find_slots(model)[name]
    x = torch.randn(8, 40)
    for mode in (SlotMode.TRAINING, SlotMode.BLENDING, SlotMode.FULL):
        slot.set_mode(mode)
        results = probe_isolation(model, lambda: model(x))
        assert [r.slot for r in results] == [name]
        assert results[0].isolated, results[0]
        assert results[0].seed_id == "seed-1"
    assert all(p.grad is None for p in model.parameters()), "the probe accumulates nothing into .grad"


def test_a_seed_reading_a_host_parameter_is_a_violation() -> None:
    model, _ = grown(leaky=True)
    results = probe_isolation(model, lambda: model(torch.randn(4, 40)))
    assert results[0].violations == 1
    assert results[0].max_abs_host_grad > 0
    assert len(results[0].offenders) == 1
    assert "esper_slot" not in results[0].offenders[0]


def test_dormant_and_fossilized_slots_are_not_probed() -> None:
    model, name = grown()
    slot = find_slots(model)[name]
    slot.set_mode(SlotMode.FOSSILIZED)
    assert probe_isolation(model, lambda: model(torch.randn(2, 40))) == []
    plain = wrap(CNN1dHost(width=8), CNN1dHost(width=8).slot_targets)
    assert probe_isolation(plain, lambda: plain(torch.randn(2, 40))) == []


def test_the_monitor_modes_skip_a_full_seed_but_keep_it_out_of_the_host() -> None:
    model, name = grown()
    slot = find_slots(model)[name]
    slot.set_mode(SlotMode.FULL)
    x = torch.randn(4, 40)
    assert probe_isolation(model, lambda: model(x), modes=MONITORED_MODES) == []
    assert [r.slot for r in probe_isolation(model, lambda: model(x))] == [name], "the default probes every live seed"
    seed = slot.seed_module
    assert seed is not None
    host = {id(p) for _, p in host_parameters_of(model, live_seed_slots(model).values())}
    assert not any(id(p) in host for p in seed.parameters()), "a live seed's parameters are never host parameters"
