"""Tolaria's isolation monitor: a leaking seed is counted in the packets and reported CRITICAL.

Probing a healthy seed changes nothing about training (bitwise)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import pytest
import torch
from torch import Tensor, nn

from actors.tolaria.actor import TolariaControl, TolariaWiring, tolaria_spec
from actors.tolaria.boundary import RECIPE_ATTR
from actors.tolaria.build import load_data
from actors.tolaria.cell import TolariaCell, new_cell
from esper.runtime.clock import MonotonicClock
from esper.runtime.events import RecordingSink
from esper.runtime.handoff import Handoff
from esper.runtime.lanes import Lane
from esper.runtime.system import ActorSystem
from schemas.boundary import BoundaryPlan, SeedOp
from schemas.config import TolariaConfig
from schemas.telemetry import TelemetryEvent
from tests.test_tolaria_protocol import TINY, seed_module

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

    from actors.tolaria.loop import TrainingLoop
    from esper.nn.data import DataSplits
    from schemas.state import SystemStatePacket


class LeakySeed(nn.Module):
    """Reads a host weight behind the slot's back (found through the running loop), so its output has a gradient
    path into the host: exactly what the isolation probe must catch."""

    def __init__(self, cell: TolariaCell) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.zeros(1))

        # A function, not the cell: snapshots deep-copy seeds, and a function is copied by reference.
        def find_loop() -> TrainingLoop | None:
            return cell.last_loop

        self._loop = find_loop

    def forward(self, x: Tensor) -> Tensor:
        loop = self._loop()
        assert loop is not None
        host_weight = next(p for n, p in loop.trainee.model.named_parameters() if "esper_slot" not in n)
        out: Tensor = x * self.scale + 1e-6 * host_weight.sum()
        return out


@pytest.fixture(scope="module")
def data() -> DataSplits:
    return load_data(TolariaConfig(**TINY))  # type: ignore[arg-type]


@pytest.fixture
async def lane() -> AsyncIterator[Lane]:
    async with Lane("train", "cpu", num_threads=1) as train:
        yield train


async def train(
    data: DataSplits, lane: Lane, make_seed: Callable[[TolariaCell], nn.Module], probe_every: int
) -> tuple[list[SystemStatePacket], RecordingSink, dict[str, Tensor]]:
    config = TolariaConfig(**TINY)  # type: ignore[arg-type]
    system = ActorSystem(clock=MonotonicClock(), sink=RecordingSink())
    cell = new_cell(config)
    handoff: Handoff[nn.Module] = Handoff()
    seed = make_seed(cell)
    setattr(seed, RECIPE_ATTR, {})
    handle = handoff.put(seed)
    packets: list[SystemStatePacket] = []

    def answer(packet: SystemStatePacket) -> None:
        packets.append(packet)
        step = packet.global_step
        ops = (
            (SeedOp(kind="attach", slot="blocks.1", seed_id="s1", handle=handle, blueprint_id="x"),)
            if step == 4
            else ()
        )
        plan = BoundaryPlan(run_id="t", decided_on_step=step, effect_step=step + 8, ops=ops)
        system.ref("tolaria/control", TolariaControl).tell_nowait(plan)

    sink = RecordingSink()
    wiring = TolariaWiring(
        run_id="t",
        run_dir=None,
        lane=lane,
        cell=cell,
        sink=sink,
        handoff=handoff,
        subscribers=(answer,),
        expects_plans=True,
        data=data,
        isolation_probe_every_steps=probe_every,
    )
    await system.start(tolaria_spec(config, wiring))
    async with asyncio.timeout(60):
        await cell.wait_finished()
        await system.stop()
    loop = cell.last_loop
    assert loop is not None
    assert not any(p._backward_hooks for p in loop.trainee.model.parameters()), "sketch hooks live for one step only"
    weights = {k: v.clone() for k, v in loop.trainee.model.state_dict().items() if isinstance(v, Tensor)}
    return packets, sink, weights


async def test_a_leaking_seed_is_counted_in_packets_and_reported_critical(data: DataSplits, lane: Lane) -> None:
    packets, sink, _ = await train(data, lane, LeakySeed, probe_every=4)
    counted = [s.isolation_violations for p in packets for s in p.seed_states if s.seed_id == "s1"]
    assert counted, "the attached seed is reported"
    assert counted == sorted(counted), "a running total"
    assert counted[-1] > 0
    # The packet's own count is the run's total, what Nissa's gauge and alert and Tamiyo's rule 8 read.
    assert [p.isolation_violations for p in packets] == [
        sum(s.isolation_violations for s in p.seed_states) for p in packets
    ]
    assert packets[-1].isolation_violations == counted[-1]
    events = [e for e in sink.events if isinstance(e, TelemetryEvent) and e.name == "isolation_violation"]
    assert events
    assert events[0].attributes["seed_id"] == "s1"
    assert events[0].level.name == "CRITICAL"


async def test_probing_a_healthy_seed_changes_nothing_about_training(data: DataSplits, lane: Lane) -> None:
    with_probe, _, probed = await train(data, lane, lambda _cell: seed_module(), probe_every=1)
    without, _, plain = await train(data, lane, lambda _cell: seed_module(), probe_every=0)
    assert probed.keys() == plain.keys()
    assert all(torch.equal(probed[k], plain[k]) for k in probed)
    assert [p.training_loss for p in with_probe] == [p.training_loss for p in without]
    assert all(s.isolation_violations == 0 for p in with_probe for s in p.seed_states)


async def test_the_step_after_each_probe_is_sketched_by_backward_hooks(data: DataSplits, lane: Lane) -> None:
    packets, sink, _ = await train(data, lane, lambda _cell: seed_module(), probe_every=4)
    sketches = [e for e in sink.events if isinstance(e, TelemetryEvent) and e.name == "isolation_sketch"]
    assert sketches, "a live seed is sketched after every probe"
    packet_steps = {p.global_step for p in packets}
    for event in sketches:
        assert event.attributes["seed_id"] == "s1"
        # The probe at the packet of step P schedules the step that starts at global step P.
        assert int(event.attributes["step"]) in packet_steps
        seed_norm = event.attributes["seed_norm"]
        assert isinstance(seed_norm, float)
        assert seed_norm > 0, "the straight-through gradient reached the seed in training"
        cosine = event.attributes["cosine"]
        assert isinstance(cosine, float)
        assert -1.0 - 1e-6 <= cosine <= 1.0 + 1e-6
