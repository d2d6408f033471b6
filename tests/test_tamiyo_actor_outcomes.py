"""Field reports: every decision's window, outcome and reward, written to the WAL and read back with recovery."""

from __future__ import annotations

import io
import json
import math
from typing import TYPE_CHECKING, final

import msgspec
import pytest
import structlog

from actors.tamiyo.actor import command_id_for
from actors.tamiyo.field_reports import MAGIC, WAL_FILENAME, read_field_reports
from actors.tamiyo.outcomes import OutcomeSettings, OutcomeState, OutcomeTracker, OutcomeWindow
from actors.tamiyo.policy import NO_OP, Decision
from actors.tamiyo.state_journal import state_at
from esper.field_reports import main as field_reports_main
from schemas.config import SimicConfig, TamiyoConfig
from schemas.control import BlendConfig, germinated_seed_id
from schemas.domain_enums import FieldReportOutcome, PolicyAction
from schemas.enums import EmergencyLevel, SeedLifecycleStage
from schemas.state import SeedState
from tests._tamiyo_harness import RUN_ID, SLOTS, TamiyoHarness, dormant, packet

if TYPE_CHECKING:
    from pathlib import Path

    from actors.tamiyo.policy import Observation
    from esper.runtime.events import RecordingSink
    from schemas.state import SystemStatePacket

WINDOW = 2
LOSSES = (1.0, 0.9, 0.8, 0.85, 0.95)
SEED_PARAMS = (0, 0, 100, 100, 100)


async def test_reports_carry_outcomes_and_rewards_and_survive_a_torn_tail(tmp_path: Path, sink: RecordingSink) -> None:
    config = TamiyoConfig(field_report_window_epochs=WINDOW, plateau_patience_epochs=10)
    simic = SimicConfig(reward_lambda_size=0.5, reward_lambda_critical=1.0)
    packets = _epochs(range(len(LOSSES)))
    async with TamiyoHarness(tmp_path, sink, config=config, simic=simic) as h:
        await h.run(packets)
        stats = await h.stats()
    assert stats.field_reports == len(LOSSES) - WINDOW
    assert stats.pending_outcomes == WINDOW

    path = tmp_path / WAL_FILENAME
    scan = await read_field_reports(path)
    reports = {r.start_epoch: r for r in scan.reports}
    assert len(scan.reports) == len(LOSSES), "the stop after the last epoch aborted the open windows and reported them"
    for epoch in range(len(LOSSES) - WINDOW):
        report = reports[epoch]
        cid = command_id_for(RUN_ID, packets[epoch].global_step)
        assert report.command_id == cid
        assert report.report_id == f"fr-{cid}-{epoch}+{WINDOW}"
        assert report.action is PolicyAction.NO_OP
        delta = LOSSES[epoch + WINDOW] - LOSSES[epoch]
        added = SEED_PARAMS[epoch + WINDOW] - SEED_PARAMS[epoch]
        assert report.reward == pytest.approx(-delta - 0.5 * added / 10_000)
        assert report.metrics["validation_loss_delta"] == pytest.approx(delta)
        assert report.metrics["loss_delta_sum"] == pytest.approx(delta)
        expected = FieldReportOutcome.SUCCESS if delta < 0 else FieldReportOutcome.REGRESSION
        assert report.outcome is expected
        assert report.issued_at > 0
        assert report.tamiyo_policy_version == "heuristic-1"
    for epoch in range(len(LOSSES) - WINDOW, len(LOSSES)):
        assert reports[epoch].outcome is FieldReportOutcome.ABORTED
        assert reports[epoch].reward is None

    # A crash mid-append leaves a partial frame: readers skip it and keep every whole record.
    with path.open("ab") as file:
        file.write(MAGIC + b"\x00\x00\x01\x00partial")
    torn = await read_field_reports(path)
    assert torn.torn == 1
    assert torn.reports == scan.reports


def _epochs(epochs: range) -> list[SystemStatePacket]:
    """The epoch-end packets of a run of len(LOSSES) epochs."""
    return [
        msgspec.structs.replace(
            packet(10 * (e + 1), e, validation_loss=LOSSES[e], loss_delta=None if e == 0 else LOSSES[e] - LOSSES[e - 1],
                   seed_parameters=SEED_PARAMS[e]),
            epochs_total=len(LOSSES),
        )
        for e in epochs
    ]  # fmt: skip


async def test_a_stop_before_the_last_epoch_keeps_the_open_windows_for_the_resume(
    tmp_path: Path, sink: RecordingSink
) -> None:
    """A Ctrl-C is not the end of the run: the open windows stay in the state the resume starts from and are judged
    there, so every decision gets one report with its real outcome (they were all ABORTED as end_of_run)."""
    config = TamiyoConfig(field_report_window_epochs=WINDOW, plateau_patience_epochs=10)
    async with TamiyoHarness(tmp_path, sink, config=config) as h:
        await h.run(_epochs(range(3)))
        stopped_with = await h.state()
    assert len(stopped_with.outcomes.windows) == WINDOW
    async with TamiyoHarness(tmp_path, sink, config=config, state=stopped_with) as h:
        await h.run(_epochs(range(3, len(LOSSES))))
    reports = (await read_field_reports(tmp_path / WAL_FILENAME)).reports
    assert sorted(r.start_epoch for r in reports) == list(range(len(LOSSES)))  # one report per decision
    outcomes = {r.start_epoch: r.outcome for r in reports}
    assert [outcomes[e] for e in range(len(LOSSES) - WINDOW)] == [
        FieldReportOutcome.SUCCESS,
        FieldReportOutcome.SUCCESS,
        FieldReportOutcome.REGRESSION,
    ]
    assert {outcomes[e] for e in range(len(LOSSES) - WINDOW, len(LOSSES))} == {FieldReportOutcome.ABORTED}


def _window(step: int, epoch: int) -> OutcomeWindow:
    return OutcomeWindow(
        command_id=command_id_for(RUN_ID, step),
        training_run_id=RUN_ID,
        decided_on_step=step,
        start_epoch=epoch,
        issued_at=1.0,
        policy_version="p",
        action=PolicyAction.GERMINATE,
        start_seed_parameters=0,
        host_parameters=10_000,
    )


def test_a_critical_event_in_the_window_is_a_regression_with_its_penalty() -> None:
    tracker = OutcomeTracker(OutcomeSettings(window_epochs=1, lambda_size=0.0, lambda_critical=1.0))
    tracker.observe(packet(10, 0, validation_loss=1.0), critical=False)
    tracker.open(_window(10, 0))
    (report,) = tracker.observe(
        packet(20, 1, validation_loss=0.9, emergency=EmergencyLevel.L3_CONSERVATIVE), critical=False
    )
    assert report.outcome is FieldReportOutcome.REGRESSION
    assert report.reward == pytest.approx(0.1 - 1.0)


@pytest.mark.parametrize(("start", "end"), [(math.nan, 1.0), (1.0, math.nan), (math.inf, 1.0), (1.0, -math.inf)])
def test_a_non_finite_validation_loss_is_unknown_neutral_with_a_finite_reward(start: float, end: float) -> None:
    """A diverged epoch's NaN loss made the delta NaN, and the reward ``-(delta or 0.0)`` NaN in the WAL."""
    tracker = OutcomeTracker(OutcomeSettings(window_epochs=1, lambda_size=0.0))
    tracker.observe(packet(10, 0, validation_loss=start), critical=False)
    tracker.open(_window(10, 0))
    (report,) = tracker.observe(packet(20, 1, validation_loss=end), critical=False)
    assert report.outcome is FieldReportOutcome.NEUTRAL
    assert report.reward == 0.0
    assert all(math.isfinite(value) for value in report.metrics.values()), report.metrics
    assert "validation_loss_delta" not in report.metrics


def test_mid_epoch_packets_do_not_count_towards_the_window() -> None:
    tracker = OutcomeTracker(OutcomeSettings(window_epochs=1))
    tracker.observe(packet(10, 0, validation_loss=1.0), critical=False)
    tracker.open(_window(10, 0))
    assert tracker.observe(packet(15, 1), critical=False) == []
    (report,) = tracker.observe(packet(20, 1, validation_loss=1.0), critical=False)
    assert report.outcome is FieldReportOutcome.NEUTRAL
    assert report.reward == pytest.approx(0.0)


def test_a_rollback_aborts_every_open_window() -> None:
    tracker = OutcomeTracker(OutcomeSettings(window_epochs=3))
    tracker.observe(packet(10, 0, validation_loss=1.0), critical=False)
    tracker.open(_window(10, 0))
    tracker.observe(packet(20, 1, validation_loss=0.9), critical=False)
    tracker.open(_window(20, 1))
    rolled_back = packet(15, 0)
    assert tracker.is_rollback(rolled_back)
    reports = tracker.abort_all("rollback")
    assert [r.outcome for r in reports] == [FieldReportOutcome.ABORTED] * 2
    assert all(r.reward is None and "rollback" in r.notes for r in reports)
    assert tracker.pending == 0


async def test_a_damaged_wal_is_reported_when_tamiyo_opens_it(tmp_path: Path, sink: RecordingSink) -> None:
    """Damaged records were skipped and a torn tail cut without a word."""
    config = TamiyoConfig(field_report_window_epochs=WINDOW, plateau_patience_epochs=10)
    async with TamiyoHarness(tmp_path, sink, config=config) as h:
        await h.run(_epochs(range(len(LOSSES))))
    torn = MAGIC + b"\x00\x00\x01\x00partial"
    with (tmp_path / WAL_FILENAME).open("ab") as file:
        file.write(torn)
    with structlog.testing.capture_logs() as logs:
        async with TamiyoHarness(tmp_path, sink, config=config) as h:
            await h.stats()
    [damaged] = [e for e in logs if e["event"] == "field_reports_damaged"]
    assert (damaged["corrupt_records_skipped"], damaged["torn_tail_bytes_cut"], damaged["kept"]) == (
        0,
        len(torn),
        len(LOSSES),
    )


async def test_a_decision_remade_after_a_rollback_gets_a_report_of_its_own(tmp_path: Path, sink: RecordingSink) -> None:
    """The rerun decides step 15 again under the same command id (exact resume needs it): its report took the id of
    the one the rollback aborted, and the reader printed only the aborted one. The abort names the first packet's
    step after the restore and the controller state's, not a restore point Tamiyo is not told (next test)."""
    config = TamiyoConfig(field_report_window_epochs=1, plateau_patience_epochs=10)
    journal = tmp_path / "states.jsonl"
    run = [packet(5, 0), packet(10, 0, validation_loss=1.0), packet(15, 1)]
    async with TamiyoHarness(tmp_path, sink, config=config, state_journal=journal) as h:
        await h.run(run)
        # The trainer restored step 10 and trains epoch 1 again (the window of step 15 closes at its end).
        await h.run([packet(15, 1), packet(20, 1, validation_loss=0.9, loss_delta=-0.1)])
        state = await h.state()
    reports = (await read_field_reports(tmp_path / WAL_FILENAME)).reports
    cid = command_id_for(RUN_ID, 15)
    of_15 = [r for r in reports if r.command_id == cid]
    assert [(r.report_id, r.outcome) for r in of_15] == [
        (f"fr-{cid}-1+1", FieldReportOutcome.ABORTED),
        (f"fr-{cid}-1+1-r1", FieldReportOutcome.SUCCESS),
    ]
    assert of_15[0].notes.endswith("aborted: rollback before step 15 (controller state of step 10)")
    out, err = io.StringIO(), io.StringIO()
    assert field_reports_main([str(tmp_path)], out=out, err=err) == 0
    printed = [json.loads(line)["report_id"] for line in out.getvalue().splitlines()]
    assert printed == [r.report_id for r in reports]
    assert len(set(printed)) == len(printed)
    assert state.outcomes.rollbacks == 1
    journaled = state_at(journal, 20)
    assert journaled is not None
    assert journaled.state.outcomes.rollbacks == 1  # a resume from there keeps the count, and so the report ids


async def test_a_mid_epoch_restore_is_not_named_as_the_controllers_state_step(
    tmp_path: Path, sink: RecordingSink
) -> None:
    """The abort note said "rollback to step 10", the step of the state Tamiyo journaled, for a trainer that went back
    to its mid-epoch snapshot of step 15."""
    config = TamiyoConfig(field_report_window_epochs=1, plateau_patience_epochs=10)
    run = [packet(5, 0), packet(10, 0, validation_loss=1.0), packet(15, 1), packet(20, 1)]
    async with TamiyoHarness(tmp_path, sink, config=config, state_journal=tmp_path / "states.jsonl") as h:
        await h.run(run)
        await h.run([packet(20, 1)])  # the first packet after the restore of step 15
    reports = (await read_field_reports(tmp_path / WAL_FILENAME)).reports
    aborted = [r for r in reports if r.outcome is FieldReportOutcome.ABORTED]
    assert [r.command_id for r in aborted] == [command_id_for(RUN_ID, step) for step in (10, 15, 20)]
    assert {r.notes.rsplit("; ", 1)[1] for r in aborted} == {
        "aborted: rollback before step 20 (controller state of step 10)"
    }


def test_the_rollback_count_survives_a_state_an_earlier_version_saved() -> None:
    """A state saved before the count existed reads as no rollback: its decisions keep the ids they had."""
    tracker = OutcomeTracker(OutcomeSettings(window_epochs=1), state=OutcomeState())
    tracker.rollback("rollback to step 0")
    tracker.observe(packet(10, 0, validation_loss=1.0), critical=False)
    tracker.open(_window(10, 0))
    (report,) = tracker.observe(packet(20, 1, validation_loss=1.0), critical=False)
    assert report.report_id.endswith("+1-r1")
    old = msgspec.json.decode(b'{"windows": [], "reports": 3}', type=OutcomeState)
    assert old.rollbacks == 0


@final
class _ScriptedPolicy:
    """Decides what ``script`` says for a packet's step, NO_OP otherwise."""

    version = "scripted-1"

    def __init__(self, script: dict[int, Decision]) -> None:
        self._script = script

    def decide(self, observation: Observation) -> Decision:
        return self._script.get(observation.packet.global_step, NO_OP)


def _seed(slot: str, seed_id: str, blueprint_id: str, stage: SeedLifecycleStage) -> SeedState:
    return SeedState(slot=slot, stage=stage, layer_depth=SLOTS.index(slot), seed_id=seed_id, blueprint_id=blueprint_id)


async def test_reports_name_the_seed_and_the_blueprint_of_their_decision(tmp_path: Path, sink: RecordingSink) -> None:
    """A germinate's report had seed_id null and a fossilize's blueprint_id null: a report could not say which seed it
    judged without joining its command id to Kasmina's command results. A germinate Kasmina refused names no seed."""
    old = _seed("s1", "seed-s1-0", "bp-wide", SeedLifecycleStage.PROBATIONARY)
    grown = _seed("s0", germinated_seed_id("s0", 10), "bp-small", SeedLifecycleStage.TRAINING)
    germinate = Decision(
        action=PolicyAction.GERMINATE, target_slot="s0", blueprint_id="bp-small", blend=BlendConfig(), reason="t"
    )
    refused = msgspec.structs.replace(germinate, target_slot="s2")  # Kasmina refuses it: no seed-s2-15 appears
    fossilize = Decision(action=PolicyAction.FOSSILIZE, target_slot="s1", target_seed_id="seed-s1-0", reason="t")
    policy = _ScriptedPolicy({10: germinate, 15: fossilize, 20: refused})
    config = TamiyoConfig(field_report_window_epochs=1)
    before = (dormant("s0"), old, dormant("s2"))
    after = (grown, old, dormant("s2"))
    async with TamiyoHarness(tmp_path, sink, config=config, policy=policy) as h:
        decisions = await h.run(
            [
                packet(10, 0, validation_loss=1.0, seeds=before),
                packet(15, 1, seeds=after),
                packet(20, 1, validation_loss=0.9, loss_delta=-0.1, seeds=after),
                packet(25, 2, seeds=after),
                packet(30, 2, validation_loss=0.8, loss_delta=-0.1, seeds=after),
            ]
        )
    assert [d.command is not None for d in decisions] == [True, True, True, False, False], "no risk veto in the way"
    reports = {r.command_id: r for r in (await read_field_reports(tmp_path / WAL_FILENAME)).reports}
    named = {step: reports[command_id_for(RUN_ID, step)] for step in (10, 15, 20)}
    assert (named[10].action, named[10].seed_id, named[10].blueprint_id) == (
        PolicyAction.GERMINATE,
        "seed-s0-10",
        "bp-small",
    )
    assert (named[15].action, named[15].seed_id, named[15].blueprint_id) == (
        PolicyAction.FOSSILIZE,
        "seed-s1-0",
        "bp-wide",
    )
    assert (named[20].seed_id, named[20].blueprint_id) == (None, "bp-small")


def test_a_germinate_window_names_its_seed_once_a_packet_shows_it() -> None:
    tracker = OutcomeTracker(OutcomeSettings(window_epochs=2))
    tracker.observe(packet(10, 0, validation_loss=1.0), critical=False)
    tracker.open(msgspec.structs.replace(_window(10, 0), germinating="seed-s0-10", blueprint_id="bp-small"))
    assert tracker.observe(packet(15, 1), critical=False) == []
    assert tracker.export_state().windows[0].seed_id is None  # not germinated yet in this packet
    shown = (_seed("s0", "seed-s0-10", "bp-small", SeedLifecycleStage.CULLED), dormant("s1"), dormant("s2"))
    tracker.observe(packet(20, 1, validation_loss=0.9, seeds=shown), critical=False)
    (report,) = tracker.observe(packet(30, 2, validation_loss=0.8), critical=False)
    assert report.seed_id == "seed-s0-10", "a seed culled or gone since stays named"
