"""The growth cutoff near a run's end: no seed is grown that could not be kept before the run's last step."""

from __future__ import annotations

from typing import TYPE_CHECKING, final

import msgspec
import pytest

from actors.kasmina.lifecycle_settings import EvidenceCadence
from actors.tamiyo.every_k import EveryKConfig, EveryKPolicy
from actors.tamiyo.heuristic import HeuristicConfig, HeuristicPolicy
from actors.tamiyo.horizon import GrowthCutoff, GrowthHorizon
from actors.tamiyo.policy import Decision
from esper.assemble_inputs import growth_horizon
from esper.run_tally import RunTally
from esper.summary_table import growth_lines
from schemas.config import KasminaConfig, TamiyoConfig
from schemas.domain_enums import PolicyAction
from tests._tamiyo_harness import TamiyoHarness, packet
from tests.test_tamiyo_heuristic import observe

if TYPE_CHECKING:
    from pathlib import Path

    from actors.tamiyo.policy import Observation
    from esper.runtime.events import RecordingSink
    from schemas.state import SystemStatePacket

# The shipped config.toml: 20 steps an epoch, a packet every 4, a lag of 8, and its Kasmina timers.
SHIPPED_KASMINA = KasminaConfig(stage_min_dwell_steps=20, g2_window_steps=8, blend_ramp_steps=20, probation_epochs=2)
SHIPPED_CADENCE = EvidenceCadence(packet_every_steps=4, epoch_steps=20, validation_batches=16)


def packet_at(epoch: int, epochs_total: int) -> SystemStatePacket:
    return msgspec.structs.replace(observe(epoch, 1.0).packet, epochs_total=epochs_total)


def test_the_shipped_configs_horizon_is_what_its_first_kept_seed_took() -> None:
    """In a 50-epoch run of the shipped config a seed germinated at step 340 passed G4 at the epoch end of step 420
    and was fossilized, after two probation epochs, at step 468: the least the settings allow."""
    horizon = growth_horizon(SHIPPED_KASMINA, SHIPPED_CADENCE, lag_steps=8)
    # lag + a packet for G1, G2's 8 packets (over the 20-step dwell), lag + ramp, SHADOWING's 5-step dwell.
    assert horizon == GrowthHorizon(
        lead_steps=12 + 32 + 28 + 5, g4_epoch_ends=1, probation_dwell_steps=20, lag_steps=8, steps_per_epoch=20
    )
    assert horizon.verdict_step(packet_at(16, 50)) == 420
    assert horizon.kept_step(packet_at(16, 50), probation_epochs=2) == 468
    # The last epoch end (of 50, 1000 steps) such a seed can be kept from is the 43rd: fossilized at step 988.
    kept = [e for e in range(50) if horizon.fossilized_by(packet_at(e, 50), probation_epochs=2)]
    assert kept == list(range(43))
    assert horizon.kept_step(packet_at(42, 50), probation_epochs=2) == 988
    # A small validation split: G4's minimum of 8 batches takes three epoch ends of 3 (epochs of 100 steps here, so
    # the 77 steps before SHADOWING's end fit in the first).
    long_epochs = msgspec.structs.replace(SHIPPED_CADENCE, epoch_steps=100)
    small = msgspec.structs.replace(long_epochs, validation_batches=3)
    assert growth_horizon(SHIPPED_KASMINA, small, lag_steps=8).g4_epoch_ends == 3
    assert growth_horizon(SHIPPED_KASMINA, small, lag_steps=8).verdict_step(packet_at(16, 50)) == (17 + 3) * 100
    assert growth_horizon(SHIPPED_KASMINA, long_epochs, lag_steps=8).verdict_step(packet_at(16, 50)) == 18 * 100


def test_a_heuristic_grows_nothing_a_short_run_could_not_keep() -> None:
    """7 epochs of 12 steps, lag 8: a plateau at the end of epoch 4 grew a seed that reached TRAINING at step 68 and
    ended the run there, its 462 parameters added for nothing (the old cutoff counted the probation epochs only)."""
    cadence = EvidenceCadence(packet_every_steps=4, epoch_steps=12, validation_batches=16)
    horizon = growth_horizon(KasminaConfig(), cadence, lag_steps=8)
    config = HeuristicConfig(plateau_patience_epochs=1, fossilize_hold_epochs=2, horizon=horizon)
    policy = HeuristicPolicy(config)
    decisions = [policy.decide(msgspec.structs.replace(observe(e, 1.0), packet=packet_at(e, 7))) for e in range(7)]
    assert [d.reason for d in decisions[1:]] == ["too_late"] * 6
    assert all(d.action is PolicyAction.NO_OP for d in decisions)
    # The same plateau in a run long enough to keep the seed grows it.
    long_run = HeuristicPolicy(config)
    grown = [long_run.decide(msgspec.structs.replace(observe(e, 1.0), packet=packet_at(e, 30))) for e in range(2)]
    assert grown[1].action is PolicyAction.GERMINATE


def test_without_the_lifecycle_only_the_probation_epochs_count_as_before() -> None:
    """The default horizon knows no steps: no germination once no more than the probation epochs are left."""
    horizon = GrowthHorizon()
    allowed = [e for e in range(10) if horizon.fossilized_by(packet_at(e, 10), probation_epochs=2)]
    assert allowed == [e for e in range(10) if not 10 - e - 1 <= 2]
    assert [e for e in range(10) if horizon.judged_by(packet_at(e, 10))] == list(range(9))


def test_every_k_grafts_nothing_that_could_not_pass_g4_before_the_run_ends() -> None:
    horizon = growth_horizon(SHIPPED_KASMINA, SHIPPED_CADENCE, lag_steps=8)
    policy = EveryKPolicy(EveryKConfig(every_k_epochs=1, max_live_seeds=100, horizon=horizon))
    decisions = [policy.decide(msgspec.structs.replace(observe(e, 1.0), packet=packet_at(e, 10))) for e in range(10)]
    # A graft at step 100 passes G4 at step 180 at the earliest and enters probation at 188, within the 200 steps;
    # one at step 120 would be judged at the last step and enter probation after the run.
    assert [d.action is PolicyAction.GERMINATE for d in decisions] == [True] * 5 + [False] * 5
    assert {d.reason for d in decisions[5:]} == {"too_late"}
    assert (horizon.verdict_step(packet_at(4, 10)), horizon.verdict_step(packet_at(5, 10))) == (180, 200)


def test_a_horizon_refuses_negative_waits() -> None:
    with pytest.raises(ValueError, match="lead_steps"):
        GrowthHorizon(lead_steps=-1)
    with pytest.raises(ValueError, match="g4_epoch_ends"):
        GrowthHorizon(g4_epoch_ends=0)


def test_a_mid_epoch_germination_is_timed_from_its_own_step() -> None:
    """The GNN decides on every packet: one decided early in an epoch was timed as if decided at that epoch's end, so
    a seed that could still be kept was refused. Shipped config, 50 epochs: a seed germinated at step 862 (epoch 43,
    two steps in) passes G4 at the end of epoch 47 (step 940) and is fossilized at step 988, as one germinated at the
    end of epoch 42."""
    horizon = growth_horizon(SHIPPED_KASMINA, SHIPPED_CADENCE, lag_steps=8)
    early = msgspec.structs.replace(packet_at(43, 50), global_step=862, epoch_progress=0.1, validation_loss=None)
    assert horizon.verdict_step(early) == 940
    assert horizon.kept_step(early, probation_epochs=2) == 988
    assert horizon.fossilized_by(early, probation_epochs=2)
    later = msgspec.structs.replace(early, global_step=866, epoch_progress=0.3)
    assert not horizon.fossilized_by(later, probation_epochs=2)
    # The epoch end itself is timed as before.
    assert not horizon.fossilized_by(packet_at(43, 50), probation_epochs=2)


def test_a_cutoff_judges_by_the_policys_own_kind_of_keeping() -> None:
    horizon = growth_horizon(SHIPPED_KASMINA, SHIPPED_CADENCE, lag_steps=8)
    fossilizing, judged = GrowthCutoff(horizon=horizon, probation_epochs=2), GrowthCutoff(horizon=horizon)
    assert [e for e in range(50) if not fossilizing.too_late(packet_at(e, 50))] == list(range(43))
    assert [e for e in range(50) if not judged.too_late(packet_at(e, 50))] == [
        e for e in range(50) if horizon.judged_by(packet_at(e, 50))
    ]


@final
class AlwaysGerminates:
    """A policy that proposes a germination on every packet, as an untrained GNN may."""

    version = "always-1"

    def decide(self, observation: Observation) -> Decision:
        return Decision(action=PolicyAction.GERMINATE, target_slot="s0", blueprint_id="bp-small", reason="gnn")


async def test_the_gnn_policys_germinations_are_held_to_the_growth_horizon(tmp_path: Path, sink: RecordingSink) -> None:
    """The heuristic and every_k grew nothing that could not be kept; a germination the GNN proposed was sent
    whatever the epoch. The risk engine vetoes it (too_late) and the summary counts it among the vetoes. Here 20
    epochs, the epochs-only horizon: a seed germinated at the end of epoch 16 (0-based) is kept at the run's end."""
    tally = RunTally()
    async with TamiyoHarness(tmp_path, sink, config=TamiyoConfig(policy="gnn"), policy=AlwaysGerminates()) as h:
        kept = await h.decide(packet(170, 16, validation_loss=1.0))
        late = [await h.decide(p) for p in (packet(180, 17, validation_loss=1.0), packet(185, 18))]
    assert kept.command is not None
    assert kept.risk_reason == "policy"
    assert [(d.command, d.proposed, d.risk_reason, d.policy) for d in late] == [
        (None, "germinate", "too_late", "gnn")
    ] * 2
    for decision in (kept, *late):
        tally.on_decision(decision)
    growth = tally.figures(seed_parameters=0)
    assert growth.vetoed_reasons == {"too_late": 2}
    assert any(line.endswith("none (vetoed: too_late 2)") for line in growth_lines(growth))
