"""The Tamiyo actor's decision path: one signed Decision per packet in order, risk vetoes, conservative mode, state."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

import msgspec
import pytest

from actors.tamiyo import state_codec
from actors.tamiyo.actor import command_id_for
from actors.tamiyo.heuristic import HeuristicState
from actors.tamiyo.outcomes import OutcomeState
from actors.tamiyo.state import TamiyoCounters, TamiyoState
from esper.runtime.clock import ManualClock
from esper.runtime.signing import CommandVerifier
from schemas.config import TamiyoConfig
from schemas.domain_enums import CommandKind
from schemas.enums import BreakerState, EmergencyLevel, SeedLifecycleStage
from schemas.state import SeedState
from schemas.telemetry import MetricPoint, TelemetryEvent
from tests._tamiyo_harness import (
    BLUEPRINTS,
    KEY,
    KEY_ID,
    RUN_ID,
    WALL_START_S,
    TamiyoHarness,
    dormant,
    packet,
    plateau_run,
)

if TYPE_CHECKING:
    from pathlib import Path

    from esper.runtime.events import RecordingSink


async def test_one_decision_per_packet_in_packet_order_no_op_included(tmp_path: Path, sink: RecordingSink) -> None:
    packets = plateau_run(epochs=5)
    async with TamiyoHarness(tmp_path, sink) as h:
        decisions = await h.run(packets)
        stats = await h.stats()
    assert [d.decided_on_step for d in decisions] == [p.global_step for p in packets]
    assert all(d.run_id == RUN_ID and d.policy == "heuristic" for d in decisions)
    assert sum(d.command is None for d in decisions) >= len(packets) - 2
    assert stats.decisions == len(packets)
    assert sum(stats.decisions_by_action.values()) == len(packets)
    assert stats.latency_window == len(packets)
    assert stats.latency_p50_ms == 0.0  # the manual clock did not move


async def test_a_plateau_germinates_with_a_signed_command_that_verifies(tmp_path: Path, sink: RecordingSink) -> None:
    async with TamiyoHarness(tmp_path, sink) as h:
        decisions = await h.run(plateau_run(epochs=4))
        verifier = CommandVerifier({KEY_ID: KEY}, ManualClock(WALL_START_S))
    commands = [d.command for d in decisions if d.command is not None]
    assert len(commands) == 1
    command = commands[0]
    assert command.kind is CommandKind.GERMINATE
    assert command.target_slot is not None
    assert command.blueprint_id == "bp-small"
    assert command.blend is not None
    assert command.issued_at == WALL_START_S
    assert command.security.key_id == KEY_ID
    assert command.command_id == command_id_for(RUN_ID, command.decision_step)
    assert uuid.UUID(command.command_id).version == 5
    assert verifier.verify(command) is None
    assert verifier.verify(command) is not None  # the nonce is now spent: a replay is refused


async def test_a_risk_veto_shows_in_the_decision(tmp_path: Path, sink: RecordingSink) -> None:
    flat = plateau_run(epochs=3)
    # The germination epoch's packet reports a hook latency over the 50 ms budget: rule 7 vetoes the growth.
    flat[-1] = packet(flat[-1].global_step, flat[-1].epoch, validation_loss=1.0, loss_delta=0.0, hook_latency_ms=80.0)
    async with TamiyoHarness(tmp_path, sink) as h:
        decisions = await h.run(flat)
        stats = await h.stats()
    last = decisions[-1]
    assert last.command is None
    assert last.risk_reason == "hook_budget"
    assert stats.vetoes == 1
    assert any(e.name == "hook_budget" for e in sink.of_type(TelemetryEvent))


async def test_conservative_mode_entered_on_a_loss_spike_and_left_after_two_clean_epochs(
    tmp_path: Path, sink: RecordingSink
) -> None:
    async with TamiyoHarness(tmp_path, sink) as h:
        await h.decide(packet(10, 0, validation_loss=1.0))
        spike = await h.decide(packet(20, 1, validation_loss=1.3, loss_delta=0.3))
        assert (await h.stats()).conservative
        await h.decide(packet(30, 2, validation_loss=1.2, loss_delta=-0.1))
        assert (await h.stats()).conservative, "one clean epoch is not enough"
        await h.decide(packet(40, 3, validation_loss=1.1, loss_delta=-0.1))
        assert not (await h.stats()).conservative
    assert spike.risk_reason in ("policy", "loss_spike")
    names = [e.name for e in sink.of_type(TelemetryEvent)]
    assert names.count("conservative_entered") == 1
    assert names.count("conservative_exited") == 1
    assert names.index("loss_spike") < names.index("conservative_entered") < names.index("conservative_exited")
    gauges = [m.value for m in sink.of_type(MetricPoint) if m.name == "tamiyo.conservative_mode"]
    assert gauges == [0.0, 1.0, 1.0, 0.0]


async def test_a_spike_while_the_only_seed_trains_pauses_nothing(tmp_path: Path, sink: RecordingSink) -> None:
    """The host alone spiked (its host-only run had the same validation losses) while a seed trained at alpha 0: the
    seed was paused for it, blocked growth while paused and was culled. Now the spike is a plain veto."""
    training = SeedState(
        slot="s2", stage=SeedLifecycleStage.TRAINING, layer_depth=2, seed_id="seed-s2-48", blueprint_id="bp-small"
    )
    seeds = (dormant("s0"), dormant("s1"), training)
    async with TamiyoHarness(tmp_path, sink) as h:
        await h.decide(packet(10, 0, validation_loss=1.0, seeds=seeds))
        spike = await h.decide(packet(20, 1, validation_loss=1.2, loss_delta=0.171, seeds=seeds))
        stats = await h.stats()
    assert spike.command is None
    assert spike.risk_reason == "policy"
    assert stats.conservative
    assert stats.decisions_by_action.get("pause", 0) == 0
    assert any(e.name == "loss_spike" for e in sink.of_type(TelemetryEvent))


async def test_conservative_mode_blocks_a_germination(tmp_path: Path, sink: RecordingSink) -> None:
    packets = plateau_run(epochs=3)
    # A spike at epoch 1 enters conservative mode; the plateau germination of epoch 2 is blocked (rule 2).
    packets[-3] = packet(packets[-3].global_step, packets[-3].epoch, validation_loss=1.0, loss_delta=0.2)
    async with TamiyoHarness(tmp_path, sink) as h:
        decisions = await h.run(packets)
    assert all(d.command is None for d in decisions)
    assert decisions[-1].risk_reason == "pause_triggered"


async def test_a_vetoed_germination_is_tried_again_at_the_next_epoch_end(tmp_path: Path, sink: RecordingSink) -> None:
    """A germination conservative mode vetoed started the heuristic's cooldown: the next epoch said 'cooldown'."""
    packets = plateau_run(epochs=5)
    packets[3] = packet(packets[3].global_step, packets[3].epoch, validation_loss=1.0, loss_delta=0.2)
    async with TamiyoHarness(tmp_path, sink) as h:
        decisions = await h.run(packets)
    ends = decisions[1::2]
    assert [(d.reason, d.risk_reason) for d in ends[2:4]] == [("plateau", "pause_triggered")] * 2
    assert ends[4].command is not None
    assert ends[4].command.kind is CommandKind.GERMINATE


async def test_a_vetoed_every_k_graft_uses_up_no_blueprint(tmp_path: Path, sink: RecordingSink) -> None:
    packets = plateau_run(epochs=3)
    packets[1] = packet(packets[1].global_step, packets[1].epoch, validation_loss=1.0, hook_latency_ms=80.0)
    # Kasmina accepts the graft at step 20: the packets after it show its seed training in s0.
    trains = SeedState(slot="s0", stage=SeedLifecycleStage.TRAINING, layer_depth=0, seed_id="seed-s0-20")
    shown = (trains, dormant("s1"), dormant("s2"))
    packets[4:] = [msgspec.structs.replace(p, seed_states=shown) for p in packets[4:]]
    config = TamiyoConfig(policy="every_k", every_k_epochs=1)
    async with TamiyoHarness(tmp_path, sink, config=config) as h:
        decisions = await h.run(packets)
    ends = decisions[1::2]
    assert (ends[0].reason, ends[0].risk_reason, ends[0].command) == ("every_k", "hook_budget", None)
    grafts = [d.command for d in ends[1:]]
    assert [c.blueprint_id if c is not None else None for c in grafts] == ["bp-small", "bp-wide"]


async def test_the_epoch_end_that_raises_l2_germinates_nothing(tmp_path: Path, sink: RecordingSink) -> None:
    """The packet's emergency level entered conservative mode only after the decision on that very packet: the epoch
    end that failed (L2) germinated a seed, which the trainer refused to attach and Kasmina then culled."""
    packets = plateau_run(epochs=3)
    last = packets[-1]
    packets[-1] = packet(
        last.global_step, last.epoch, validation_loss=1.0, loss_delta=0.0, emergency=EmergencyLevel.L2_ELEVATED
    )
    async with TamiyoHarness(tmp_path, sink) as h:
        decisions = await h.run(packets)
    assert all(d.command is None for d in decisions)
    (tmp_path / "l1").mkdir()
    async with TamiyoHarness(tmp_path / "l1", sink) as h:  # the same run at L1 germinates there
        assert (await h.run(plateau_run(epochs=3)))[-1].command is not None


async def test_export_then_import_gives_identical_following_decisions(tmp_path: Path, sink: RecordingSink) -> None:
    config = TamiyoConfig(plateau_patience_epochs=2, germinate_cooldown_epochs=1)
    packets = plateau_run(epochs=9)
    head, tail = packets[:7], packets[7:]
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    async with TamiyoHarness(tmp_path / "a", sink, config=config) as uninterrupted:
        await uninterrupted.run(head)
        state = await uninterrupted.state()
        expected = await uninterrupted.run(tail)
    async with TamiyoHarness(tmp_path / "b", sink, config=config, state=state) as resumed:
        assert await resumed.state() == state
        got = await resumed.run(tail)
    assert got == expected
    assert any(d.command is not None for d in got), "the tail should contain a germination to be a real test"


@pytest.mark.parametrize(("budget", "grows"), [(None, True), (50, False)])
async def test_the_tamiyo_parameter_budget_reaches_the_every_k_policy(
    tmp_path: Path, sink: RecordingSink, budget: int | None, grows: bool
) -> None:
    """tamiyo.max_added_parameters reaches the policy the spec builds (the blueprints offered have 100 and 500)."""
    config = TamiyoConfig(policy="every_k", every_k_epochs=1, max_added_parameters=budget)
    async with TamiyoHarness(tmp_path, sink, config=config) as h:
        decisions = await h.run(plateau_run(epochs=3))
    assert any(d.command is not None for d in decisions) is grows


_SEEN = HeuristicState(
    first_epoch=0,
    last_epoch=5,
    best_validation_loss=0.5,
    epochs_without_improvement=1,
    weak_epochs={"x": 1, "y": 0},
    benefit_epochs={"x": 0, "y": 2},
    measured_steps={"x": 40, "y": 60},
    held_epochs={"x": 0, "y": 3},
    decisions=6,
)
_SAVED = TamiyoState(
    policy="heuristic",
    policy_version="heuristic-1",
    fallback=_SEEN,
    outcomes=OutcomeState(),
    counters=TamiyoCounters(decisions=12, fallbacks=2),
    heuristic=_SEEN,
    last_step=120,
    blueprints=tuple(bp.blueprint_id for bp in BLUEPRINTS),
)


@pytest.mark.parametrize(
    "saved",
    [
        # Left conservative mode after a loss spike: the reason was dropped on import (uninterrupted 'loss_spike',
        # resumed ''), so a resumed run's tamiyo_state.json differed from the uninterrupted run's.
        msgspec.structs.replace(_SAVED, conservative_reason="loss_spike"),
        msgspec.structs.replace(_SAVED, conservative_active=True, conservative_reason="loss_spike"),
        msgspec.structs.replace(_SAVED, conservative_active=True, conservative_clean_epochs=1, conservative_reason="x"),
        msgspec.structs.replace(_SAVED, conservative_active=True, conservative_dirty=True, conservative_reason="x"),
        msgspec.structs.replace(_SAVED, conservative_active=True),  # came back with the reason 'restored'
        msgspec.structs.replace(_SAVED, breaker_state=BreakerState.OPEN, breaker_failures=3),  # came back with 0
        msgspec.structs.replace(_SAVED, breaker_failures=2),
        msgspec.structs.replace(_SAVED, heuristic=HeuristicState(), fallback=HeuristicState()),
    ],
)
async def test_a_state_imported_then_exported_is_the_state_saved(
    tmp_path: Path, sink: RecordingSink, saved: TamiyoState
) -> None:
    """export(import(x)) == x through the file's codec: a resumed run's tamiyo_state.json reads as the uninterrupted
    run's."""
    decoded = state_codec.decoder(TamiyoState).decode(state_codec.encode(saved))
    async with TamiyoHarness(tmp_path, sink, state=decoded) as h:
        assert await h.state() == saved
