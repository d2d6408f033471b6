"""The state packet's run-level isolation count reaches Nissa's gauge, metrics row and alert, and Tamiyo's rule 8."""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec
import torch

from actors.nissa.alerts import DEFAULT_RULES, AlertEvaluator
from actors.nissa.metrics import MetricsAggregator
from actors.tamiyo.policy import Decision
from actors.tamiyo.risk import RiskContext, RiskEffect, assess
from actors.tolaria.build import Trainee, build_trainee, load_data
from actors.tolaria.telemetry import IntervalStats, PacketBuilder
from schemas.config import TolariaConfig
from schemas.domain_enums import PolicyAction
from schemas.enums import EmergencyLevel, SeedLifecycleStage
from schemas.state import SeedState, SystemStatePacket
from tests._kasmina_harness import running_kasmina

if TYPE_CHECKING:
    from esper.runtime.clock import ManualClock
    from esper.runtime.events import RecordingSink

METRIC = "kasmina.isolation.violations_total"
GERMINATE = Decision(action=PolicyAction.GERMINATE, target_slot="s0", blueprint_id="bp", reason="plateau")


def trainee() -> Trainee:
    config = TolariaConfig(dataset_samples=400)
    return build_trainee(config, load_data(config), (), torch.device("cpu"))


def build(model: Trainee, step: int) -> SystemStatePacket:
    return PacketBuilder(model).build(
        IntervalStats(),
        run_id="r",
        epoch=0,
        epochs_total=1,
        global_step=step,
        epoch_progress=1.0,
        hook_latency_ms=0.0,
        emergency_level=EmergencyLevel.L1_NOTICE,
        validation=(1.0, 0.5),
    )


def test_the_packet_carries_the_runs_total_to_nissas_gauge_row_and_alert() -> None:
    model = trainee()
    # What the isolation monitor records: per-seed running totals, including seeds no longer in a slot.
    model.isolation_violations.update({"seed-1": 2, "seed-2": 3})
    packet = build(model, 4)
    assert packet.isolation_violations == 5
    aggregator = MetricsAggregator()
    row, _ = aggregator.observe_state(packet, wall_time_s=1.0)
    assert row is not None
    assert row["isolation_violations"] == 5
    gauge = aggregator.registry.value(METRIC)
    assert gauge == 5
    alerts = AlertEvaluator(DEFAULT_RULES)
    alerts.observe(METRIC, gauge, 0.0)
    assert [n.rule for n in alerts.evaluate(0.0, [METRIC])] == ["kasmina_isolation_violation"]


def test_the_total_never_falls_so_the_windowed_alert_counts_only_new_violations() -> None:
    model = trainee()
    model.isolation_violations["seed-1"] = 1
    first = build(model, 4)
    model.isolation_violations["seed-2"] = 1
    second = build(model, 8)
    assert (first.isolation_violations, second.isolation_violations) == (1, 2)
    alerts = AlertEvaluator(DEFAULT_RULES)
    alerts.observe(METRIC, first.isolation_violations, 0.0)
    alerts.evaluate(0.0, [METRIC])
    alerts.observe(METRIC, second.isolation_violations, 10.0)
    assert alerts.evaluate(10.0, [METRIC]) == [], "two violations in the window, under the threshold of three"


def test_tamiyo_vetoes_growth_while_a_live_seed_carries_violations() -> None:
    model = trainee()
    model.isolation_violations["seed-1"] = 2
    packet = build(model, 4)
    live = SeedState(
        slot="s1", stage=SeedLifecycleStage.BLENDING, layer_depth=1, seed_id="seed-1", isolation_violations=2
    )
    with_live = msgspec.structs.replace(packet, seed_states=(*packet.seed_states, live))
    verdict = assess(GERMINATE, RiskContext.from_packet(with_live, conservative=False))
    assert (verdict.effect, verdict.risk_reason) == (RiskEffect.VETO, "isolation_violations")
    # Once the breaker has culled the seed its count stays in the run's total, but no longer blocks growth.
    culled = msgspec.structs.replace(live, stage=SeedLifecycleStage.CULLED)
    after = msgspec.structs.replace(packet, seed_states=(*packet.seed_states, culled))
    assert after.isolation_violations == 2
    assert assess(GERMINATE, RiskContext.from_packet(after, conservative=False)).effect is RiskEffect.NONE


async def test_kasmina_passes_the_total_on_to_the_controller(clock: ManualClock, sink: RecordingSink) -> None:
    shown: list[SystemStatePacket] = []

    async def controller(packet: SystemStatePacket) -> None:
        shown.append(packet)

    async with running_kasmina(clock, sink, observer=controller) as h:
        await h.ref.tell(msgspec.structs.replace(h.packet(1), isolation_violations=4))
        await h.ref.tell(h.decision(1))
        await h.next_plan()  # a barrier: the packet was planned, so it was shown first
    assert [p.isolation_violations for p in shown] == [4]
