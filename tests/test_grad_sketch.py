"""Gradient sketches: the backward hooks fold a real step's gradients into preallocated buffers.

They do so exactly as the offline projection does, change nothing about training, and stop when disarmed."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from esper.nn import SlotMode, find_slots, wrap
from esper.nn.grad_sketch import GradientSketcher, gradient_sketch
from esper.nn.hosts import CNN1dHost
from esper.nn.isolation import host_parameters_of, live_seed_slots


def grown() -> tuple[nn.Module, str, list[Tensor], list[Tensor]]:
    torch.manual_seed(0)
    host = CNN1dHost(width=8)
    model = wrap(host, host.slot_targets)
    name, slot = next(iter(find_slots(model).items()))
    seed = nn.Sequential(nn.Conv1d(8, 8, 3, padding=1), nn.ReLU(), nn.Conv1d(8, 8, 3, padding=1))
    slot.attach(seed, SlotMode.TRAINING, seed_id="seed-1")
    live = live_seed_slots(model)
    host_params = [p for _, p in host_parameters_of(model, live.values())]
    return model, name, host_params, list(seed.parameters())


def backward(model: nn.Module, x: Tensor, y: Tensor) -> None:
    nn.functional.cross_entropy(model(x), y).backward()  # type: ignore[no-untyped-call]


def test_the_hooks_fill_the_same_sketch_as_the_offline_projection() -> None:
    model, name, host, seed = grown()
    x, y = torch.randn(16, 40), torch.randint(0, 10, (16,))
    sketcher = GradientSketcher(size=64)
    sketcher.arm(host, {name: seed})
    backward(model, x, y)
    sketcher.disarm()
    assert sketcher.filled
    hooked = sketcher.read()[name]
    offline = gradient_sketch([p.grad for p in host], [p.grad for p in seed], size=64)
    assert abs(hooked.dot - offline.dot) <= 1e-5 * max(1.0, abs(offline.dot))
    assert abs(hooked.host_norm - offline.host_norm) <= 1e-5 * offline.host_norm
    assert abs(hooked.seed_norm - offline.seed_norm) <= 1e-5 * offline.seed_norm
    assert hooked.seed_norm > 0, "the straight-through gradient reaches the seed"
    assert -1.0 <= hooked.cosine <= 1.0


def test_the_projection_is_linear_so_accumulated_backwards_sketch_their_sum() -> None:
    model, name, host, seed = grown()
    sketcher = GradientSketcher(size=32)
    sketcher.arm(host, {name: seed})
    for _ in range(2):  # gradient accumulation: .grad holds the sum of both passes
        backward(model, torch.randn(8, 40), torch.randint(0, 10, (8,)))
    sketcher.disarm()
    hooked = sketcher.read()[name]
    offline = gradient_sketch([p.grad for p in host], [p.grad for p in seed], size=32)
    assert abs(hooked.cosine - offline.cosine) <= 1e-5


def test_buffers_are_preallocated_and_disarming_stops_the_hooks() -> None:
    model, name, host, seed = grown()
    x, y = torch.randn(8, 40), torch.randint(0, 10, (8,))
    sketcher = GradientSketcher(size=32)
    sketcher.arm(host, {name: seed})
    buffers = {id(b) for b in sketcher._buffers.values()} | {id(sketcher._host)}
    backward(model, x, y)
    sketcher.disarm()
    first = sketcher.read()[name]
    backward(model, x, y)  # disarmed: the buffers keep the armed step's figures
    assert sketcher.read()[name] == first
    assert not sketcher.armed
    sketcher.arm(host, {name: seed})  # re-arming zeroes the same buffers in place
    assert {id(b) for b in sketcher._buffers.values()} | {id(sketcher._host)} == buffers
    assert not sketcher.filled
    assert sketcher.read()[name].seed_norm == 0.0
    sketcher.disarm()


def test_sketching_changes_nothing_about_training_and_leaves_the_rng_alone() -> None:
    def train(sketch: bool) -> tuple[dict[str, Tensor], Tensor]:
        model, name, host, seed = grown()
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        sketcher = GradientSketcher()
        torch.manual_seed(1)
        for step in range(4):
            if sketch and step % 2 == 0:
                sketcher.arm(host, {name: seed})
            opt.zero_grad()
            backward(model, torch.randn(8, 40), torch.randint(0, 10, (8,)))
            opt.step()
            sketcher.disarm()
        return {k: v.clone() for k, v in model.state_dict().items() if isinstance(v, Tensor)}, torch.get_rng_state()

    plain, plain_rng = train(False)
    sketched, sketched_rng = train(True)
    assert plain.keys() == sketched.keys()
    assert all(torch.equal(plain[k], sketched[k]) for k in plain)
    assert torch.equal(plain_rng, sketched_rng)


def test_identical_and_opposite_gradients_and_empty_sets() -> None:
    g = [torch.randn(10, 30), torch.randn(7), torch.randn(300)]
    assert abs(gradient_sketch(g, [t.clone() for t in g]).cosine - 1.0) < 1e-6
    assert abs(gradient_sketch(g, [-t for t in g]).cosine + 1.0) < 1e-6
    assert gradient_sketch([None], g).cosine == 0.0
    assert GradientSketcher().read() == {}


def test_projection_tables_are_a_small_fraction_of_the_parameters() -> None:
    big = nn.Linear(1000, 1000)
    sketcher = GradientSketcher(size=256)
    sketcher.arm([big.weight, big.bias], {"s": [big.bias]})
    sketcher.disarm()
    stored = sum(t.numel() for _, p in sketcher._projections.values() for t in (p.row_signs, p.tail_buckets))
    assert stored <= (big.weight.numel() + big.bias.numel()) // 256 + 2 * 256
