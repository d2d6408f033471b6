"""The run's summary tally across a --resume: earlier decisions read from events.jsonl, counted once."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import msgspec
import pytest

from actors.nissa.actor import ALERT_CLEARED, ALERT_FIRED
from esper.decisions import Decision as Read
from esper.report_inputs import ReportInputError, read_decisions, read_run_events
from esper.run_tally import RunTally
from esper.runtime.stage_refusals import Refusal, Transition
from esper.summary_table import format_summary, growth_lines
from schemas.boundary import BoundaryApplied, Decision, OpOutcome, TrainingRestored
from schemas.domain_enums import TelemetryLevel
from schemas.enums import SeedLifecycleStage
from schemas.nissa import LifecycleRestored, SeedStageChanged
from schemas.run import GrowthFigures, RunSummary, TrainingFigures
from schemas.state import SeedState
from schemas.telemetry import TelemetryEvent
from tests.nissa_packets import packet

if TYPE_CHECKING:
    from pathlib import Path


def _decision(step: int, ms: float, reason: str = "plateau_wait", policy: str = "heuristic") -> Decision:
    return Decision(run_id="r", decided_on_step=step, decision_ms=ms, reason=reason, policy=policy)


def test_earlier_decisions_count_until_the_step_this_session_decided_first() -> None:
    tally = RunTally()
    # The interrupted session decided at steps 4..16; its checkpoint was at step 8, so 12 and 16 are decided again.
    tally.preload(
        [], [], [Read(4, 1.0, "cooldown"), Read(8, 2.0, None), Read(12, 50.0, "cooldown"), Read(16, 60.0, "cooldown")]
    )
    tally.on_decision(_decision(12, 3.0))
    tally.on_decision(_decision(16, 4.0))
    figures = tally.figures(seed_parameters=0)
    assert figures.decisions == 4
    assert figures.decision_p95_ms == 4.0  # 50 and 60 ms were the killed session's, made again since
    assert figures.no_op_reasons == {"cooldown": 1, "plateau_wait": 2}


def test_without_a_decision_of_its_own_every_earlier_decision_counts() -> None:
    tally = RunTally()
    tally.preload([], [], [Read(4, 1.0, "cooldown"), Read(8, 2.0, None)])
    figures = tally.figures(seed_parameters=0)
    assert (figures.decisions, figures.decision_p50_ms) == (2, 1.0)
    assert figures.no_op_reasons == {"cooldown": 1}


def test_growth_the_risk_engine_vetoed_is_named_by_its_reason_not_the_policys() -> None:
    """A GNN run in conservative mode summed up as 'the controller's reasons: steady 24, cooldown 2, plateau 2': the
    two plateaus were germinations conservative mode vetoed (risk_reason pause_triggered), counted under the reason
    the policy wanted to grow for."""
    tally = RunTally()
    tally.preload([], [], [Read(4, 1.0, "plateau", vetoed_by="pause_triggered"), Read(8, 1.0, "steady")])
    vetoed = Decision(run_id="r", decided_on_step=12, reason="plateau", risk_reason="pause_triggered")
    tally.on_decision(vetoed)
    tally.on_decision(Decision(run_id="r", decided_on_step=16, reason="steady", risk_reason="policy"))
    figures = tally.figures(seed_parameters=0)
    assert figures.no_op_reasons == {"steady": 2}
    assert figures.vetoed_reasons == {"pause_triggered": 2}
    line = next(line for line in growth_lines(figures) if line.startswith("seeds by outcome"))
    assert line.endswith("none (the controller's reasons: steady 2; vetoed: pause_triggered 2)")
    only_vetoed = GrowthFigures(vetoed_reasons={"hook_budget": 1})
    line = next(line for line in growth_lines(only_vetoed) if line.startswith("seeds by outcome"))
    assert line.endswith("none (vetoed: hook_budget 1)")


def test_only_a_vetoed_germination_is_named_among_the_reasons_nothing_was_grown(tmp_path: Path) -> None:
    """Any NO_OP the risk engine made (a GNN's lr tweak over the hook budget, say) was listed as 'vetoed: hook_budget'
    under why nothing was grown, and a vetoed fossilize the same; they are not growth of the host."""
    tally = RunTally()
    tally.preload([], [], [Read(4, 1.0, "gnn_lr_tweak", vetoed_other=True)])
    for step, proposed, reason in ((8, "lr_tweak", "gnn_lr_tweak"), (12, "germinate", "gnn_germinate")):
        tally.on_decision(
            Decision(run_id="r", decided_on_step=step, reason=reason, risk_reason="hook_budget", proposed=proposed)
        )
    tally.on_decision(Decision(run_id="r", decided_on_step=16, reason="steady", proposed="no_op"))
    figures = tally.figures(seed_parameters=0)
    assert (figures.vetoed_reasons, figures.no_op_reasons, figures.decisions) == ({"hook_budget": 1}, {"steady": 1}, 4)
    line = next(line for line in growth_lines(figures) if line.startswith("seeds by outcome"))
    assert line.endswith("none (the controller's reasons: steady 1; vetoed: hook_budget 1)")
    path = tmp_path / "events.jsonl"
    lines = [
        {"event": "tamiyo_decision", "step": 4, "decision_ms": 0.5, "command": False, "reason": "benefit_held",
         "proposed": "fossilize", "risk_reason": "hook_budget"},
        {"event": "tamiyo_decision", "step": 8, "decision_ms": 0.5, "command": False, "reason": "plateau",
         "proposed": "germinate", "risk_reason": "pause_triggered"},
    ]  # fmt: skip
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    assert read_decisions(path) == [
        Read(4, 0.5, "benefit_held", vetoed_other=True),
        Read(8, 0.5, "plateau", vetoed_by="pause_triggered"),
    ]


def test_read_decisions_reads_the_risk_engines_veto(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    lines = [
        {"event": "tamiyo_decision", "step": 4, "decision_ms": 0.5, "command": False, "reason": "plateau",
         "risk_reason": "pause_triggered"},
        {"event": "tamiyo_decision", "step": 8, "decision_ms": 0.5, "command": True, "reason": "too_late",
         "risk_reason": "loss_spike"},
        {"event": "tamiyo_decision", "step": 12, "decision_ms": 0.5, "command": False, "reason": "steady",
         "risk_reason": "policy"},
    ]  # fmt: skip
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    assert read_decisions(path) == [
        Read(4, 0.5, "plateau", vetoed_by="pause_triggered"),
        Read(8, 0.5, None),  # a loss spike's PAUSE is a command, not a veto of growth
        Read(12, 0.5, "steady"),
    ]


def test_read_decisions_keeps_well_formed_decision_lines_only(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    lines = [
        {"event": "tamiyo_decision", "step": 4, "decision_ms": 0.5, "command": False, "reason": "cooldown"},
        {"event": "epoch_end", "step": 5},
        {"event": "tamiyo_decision", "step": 8, "decision_ms": 1, "command": True, "reason": "plateau"},
        {"event": "tamiyo_decision", "step": "9", "decision_ms": 1.0, "command": False},
        {"event": "tamiyo_decision", "step": 10, "decision_ms": True, "command": False},
        {"event": "tamiyo_decision", "step": 12, "decision_ms": 2.5, "command": False, "reason": ""},
        {"event": "tamiyo_decision", "step": 16, "decision_ms": 0.4, "reason": "x", "policy": "heuristic (fallback)"},
    ]
    text = "\n".join(json.dumps(line) for line in lines) + '\n{"event": "tamiyo_decision", "step": 1'  # torn tail
    path.write_text(text, encoding="utf-8")
    assert read_decisions(path) == [
        Read(4, 0.5, "cooldown"),
        Read(8, 1.0, None),
        Read(12, 2.5, "no_op"),
        Read(16, 0.4, "x", fallback=True),
    ]
    with pytest.raises(ReportInputError, match=r"no events\.jsonl"):
        read_decisions(tmp_path / "missing" / "events.jsonl")


def test_read_decisions_counts_each_decision_once_across_resumed_sessions(tmp_path: Path) -> None:
    def decision(step: int, ms: float) -> dict[str, object]:
        return {"event": "tamiyo_decision", "step": step, "decision_ms": ms, "command": False, "reason": "cooldown"}

    lines = [
        {"event": "run_starting"},
        *(decision(step, 1.0) for step in (4, 8, 12, 16, 20)),  # killed after step 20; checkpoint at step 8
        {"event": "run_starting"},
        *(decision(step, 2.0) for step in (12, 16, 20, 24, 28)),  # killed again; checkpoint at step 20
        {"event": "run_starting"},
        *(decision(step, 3.0) for step in (24, 28, 32)),
    ]
    path = tmp_path / "events.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    got = read_decisions(path)
    assert [(d.step, d.ms) for d in got] == [
        (4, 1.0), (8, 1.0), (12, 2.0), (16, 2.0), (20, 2.0), (24, 3.0), (28, 3.0), (32, 3.0)
    ]  # fmt: skip


def test_a_restart_in_the_session_counts_each_replayed_step_once_as_its_latest_decision() -> None:
    tally = RunTally()
    for step, ms in ((4, 1.0), (8, 2.0), (12, 3.0)):
        tally.on_decision(_decision(step, ms, reason="cooldown"))
    # Tamiyo (or the trainer) restarted: the packets from step 8 on come again and are decided again.
    tally.on_decision(_decision(8, 20.0))
    tally.on_decision(_decision(12, 30.0, policy="heuristic (fallback)"))
    tally.on_decision(_decision(16, 4.0))
    figures = tally.figures(seed_parameters=0)
    assert figures.decisions == 4
    assert [(d.step, d.ms) for d in tally.decisions] == [(4, 1.0), (8, 20.0), (12, 30.0), (16, 4.0)]
    assert figures.no_op_reasons == {"cooldown": 1, "plateau_wait": 3}
    assert figures.fallback_decisions == 1


def test_the_report_counts_a_step_decided_again_within_one_session_once(tmp_path: Path) -> None:
    def decision(step: int, ms: float) -> dict[str, object]:
        return {"event": "tamiyo_decision", "step": step, "decision_ms": ms, "command": False, "reason": "cooldown"}

    lines = [{"event": "run_starting"}, *(decision(s, 1.0) for s in (4, 8, 12)), *(decision(s, 2.0) for s in (8, 12))]
    path = tmp_path / "events.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    assert [(d.step, d.ms) for d in read_decisions(path)] == [(4, 1.0), (8, 2.0), (12, 2.0)]


def test_decisions_the_fallback_made_are_counted_across_a_resume() -> None:
    tally = RunTally()
    tally.preload([], [], [Read(4, 1.0, "cooldown", fallback=True), Read(8, 2.0, None), Read(12, 3.0, "x", True)])
    tally.on_decision(_decision(12, 3.0, policy="heuristic (fallback)"))  # made again: the earlier one drops out
    tally.on_decision(_decision(16, 4.0, policy="gnn"))
    tally.on_decision(_decision(20, 4.0, policy="no_op (fallback)"))
    figures = tally.figures(seed_parameters=0)
    assert (figures.decisions, figures.fallback_decisions) == (5, 3)


def test_fallback_decisions_are_counted_by_why_across_a_resume(tmp_path: Path) -> None:
    """The summary blamed every fallback decision on a wall-clock budget, a worker restart's included: each is now
    counted by the Decision's fallback_reason, the interrupted session's read back from its tamiyo_decision lines
    (those written before the reason was are unrecorded)."""
    path = tmp_path / "events.jsonl"
    fell_back = {"event": "tamiyo_decision", "decision_ms": 1.0, "command": False, "policy": "heuristic (fallback)"}
    lines = [
        {**fell_back, "step": 4},
        {**fell_back, "step": 8, "fallback_reason": "policy_restarting"},
        {**fell_back, "step": 12, "fallback_reason": "policy_restarting"},
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    earlier = read_decisions(path)
    assert [d.fallback_reason for d in earlier] == ["", "policy_restarting", "policy_restarting"]
    tally = RunTally()
    tally.preload([], [], earlier)
    timeout = msgspec.structs.replace(
        _decision(12, 3.0, policy="heuristic (fallback)"), fallback_reason="timeout_inference"
    )
    tally.on_decision(timeout)  # decided again: the earlier one drops out
    tally.on_decision(_decision(16, 4.0, policy="gnn"))
    figures = tally.figures(seed_parameters=0)
    assert figures.fallback_decisions == 3
    assert figures.fallback_reasons == {"unrecorded": 1, "policy_restarting": 1, "timeout_inference": 1}


def _stage(seed: str, to: SeedLifecycleStage, step: int) -> SeedStageChanged:
    dormant = SeedLifecycleStage.DORMANT
    return SeedStageChanged(slot="blocks.1", from_stage=dormant, to_stage=to, step=step, seed_id=seed)


def test_seeds_are_counted_in_the_stage_they_ended_training_in() -> None:
    tally = RunTally()
    tally.preload([("a", SeedLifecycleStage.GERMINATED, 100)], [], [])  # from the interrupted session
    for event in (
        _stage("a", SeedLifecycleStage.TRAINING, 112),
        _stage("a", SeedLifecycleStage.BLENDING, 150),
        # Planned at the last boundary, with an effect step after the last trained step (280): never applied.
        _stage("a", SeedLifecycleStage.CULLED, 288),
        _stage("b", SeedLifecycleStage.GERMINATED, 276),
        _stage("b", SeedLifecycleStage.TRAINING, 284),
        # A cull's embargo names no seed: counted too, as report.png's timeline counts what it leaves out.
        SeedStageChanged(
            slot="blocks.2", from_stage=SeedLifecycleStage.CULLED, to_stage=SeedLifecycleStage.EMBARGOED, step=286
        ),
    ):
        tally.emit(event)
    ended = tally.figures(seed_parameters=462, last_step=280)
    assert ended.seeds == {"blending": 1, "germinated": 1}
    assert ended.unapplied_transitions == 3
    assert "blending 1, germinated 1 (3 transitions planned for after step 280, not applied)" in "\n".join(
        growth_lines(ended, last_step=280)
    )
    assert tally.figures(seed_parameters=462).seeds == {"culled": 1, "training": 1}  # no last step: the latest


def test_a_germination_before_any_epoch_ended_is_said_in_words_not_epoch_none() -> None:
    growth = GrowthFigures(baseline_val_accuracy=None, baseline_epoch=None, baseline_source="run", decisions=3)
    [_, baseline_line, *_] = growth_lines(growth)
    assert "None" not in baseline_line
    assert "the first seed that trained came before any epoch ended" in baseline_line


def test_a_germination_never_built_leaves_the_baseline_at_the_final_epoch() -> None:
    """A seed culled before it was built (its module could not be fetched) added nothing: the summary compared the
    final accuracy with an epoch 'before the first germination' as if growth had happened."""
    tally = RunTally()
    tally.preload([], [(1, 10, 0.5), (2, 20, 0.6), (3, 30, 0.7)], [])
    tally.emit(_stage("a", SeedLifecycleStage.GERMINATED, 12))
    tally.emit(_stage("a", SeedLifecycleStage.CULLED, 16))
    figures = tally.figures(seed_parameters=0)
    assert (figures.baseline_epoch, figures.baseline_source, figures.baseline_val_accuracy) == (3, "host_only", 0.7)
    tally.emit(_stage("b", SeedLifecycleStage.GERMINATED, 24))
    tally.emit(_stage("b", SeedLifecycleStage.TRAINING, 28))
    grown = tally.figures(seed_parameters=64)
    assert (grown.baseline_epoch, grown.baseline_source) == (2, "run")  # the last epoch before b's germination
    assert "epoch 2, before the first seed that trained" in growth_lines(grown)[1]


def test_a_resume_whose_earlier_events_were_lost_says_its_baseline_is_unknown_not_host_only() -> None:
    """events.jsonl deleted before --resume: the summary called the grown model (924 parameters added) the host-only
    baseline, "no seed was grafted", baseline_source host_only and baseline equal to final."""
    lost = "events.jsonl holds none of the 3 epochs the checkpoints reached (deleted or emptied?): ... are missing"
    tally = RunTally()
    tally.preload([], [(1, 10, 0.5), (2, 20, 0.6), (3, 30, 0.7)], [], incomplete=[lost])
    figures = tally.figures(seed_parameters=924)
    assert (figures.baseline_epoch, figures.baseline_source, figures.baseline_val_accuracy) == (None, "unknown", None)
    assert (figures.final_val_accuracy, figures.parameters_added, figures.seeds) == (0.7, 924, {})
    lines = "\n".join(growth_lines(figures))
    assert "no seed was grafted" not in lines
    assert "host-only val accuracy      - (unknown: the earlier sessions' event log was lost" in lines
    assert "seeds by outcome            none recorded (the earlier sessions' seed transitions were lost)" in lines
    # A seed this session grafted is not the first: one the lost log held may have trained long before it.
    tally.emit(_stage("b", SeedLifecycleStage.GERMINATED, 24))
    tally.emit(_stage("b", SeedLifecycleStage.TRAINING, 28))
    grown = tally.figures(seed_parameters=988)
    assert (grown.baseline_epoch, grown.baseline_source, grown.baseline_val_accuracy) == (None, "unknown", None)


def test_seeds_culled_at_their_attach_are_not_called_never_grafted() -> None:
    """Run r7 of the long sweep: 115 seeds were attached and culled at G1, and the summary said "no seed was grafted".
    None reached training, so the baseline is still the final epoch (the host's output was its own throughout)."""
    tally = RunTally()
    tally.preload([], [(1, 10, 0.5), (2, 20, 0.6), (3, 30, 0.7)], [])
    for seed, step in (("a", 12), ("b", 22)):
        tally.emit(_stage(seed, SeedLifecycleStage.GERMINATED, step))
        tally.emit(_stage(seed, SeedLifecycleStage.CULLED, step + 3))  # G1_GRADIENT_HEALTH:probe_grad_exceeded
    # Germinated at 28, in training only after the last trained step (30): never trained.
    tally.emit(_stage("c", SeedLifecycleStage.GERMINATED, 28))
    tally.emit(_stage("c", SeedLifecycleStage.TRAINING, 32))
    figures = tally.figures(seed_parameters=0, last_step=30)
    assert (figures.baseline_epoch, figures.baseline_source, figures.baseline_val_accuracy) == (3, "host_only", 0.7)
    assert growth_lines(figures)[1].endswith("0.7000 (no seed reached training)")
    assert growth_lines(GrowthFigures(baseline_source="host_only"))[1].endswith("(no seed was grafted)")


def test_the_summary_table_says_how_many_steps_were_skipped_and_rolled_back() -> None:
    """Rollbacks and skipped non-finite steps were only in summary.json: a run rolled back 658 times printed
    'completed' with nothing but 'emergency events 3'."""
    figures = TrainingFigures(
        epochs=3, global_step=60, host_parameters=100, seed_parameters=0, skipped_steps=1976, rollbacks=658
    )
    summary = RunSummary(
        run_id="r",
        run_dir="runs/r",
        status="completed",
        started_at="t",
        duration_s=1.0,
        exit_code=0,
        dead_letters=0,
        training=figures,
    )
    assert "  skipped 1976 non-finite steps, rolled back 658 times" in format_summary(summary)
    quiet = msgspec.structs.replace(summary, training=msgspec.structs.replace(figures, skipped_steps=0, rollbacks=0))
    assert "rolled back" not in format_summary(quiet)
    once = msgspec.structs.replace(summary, training=msgspec.structs.replace(figures, rollbacks=1))
    assert "rolled back 1 time " in format_summary(once)
    # A NaN validation loss (kept as None) was left out, its accuracy line with it, so 0.10 read as a real figure.
    nan_val = msgspec.structs.replace(summary, training=msgspec.structs.replace(figures, val_accuracy=0.1016))
    assert "  val    loss not finite  accuracy 0.1016" in format_summary(nan_val)


def test_a_rollback_drops_the_seeds_and_outcomes_it_undid() -> None:
    """A seed germinated after the state a rollback (or a restart) went back to, and not again after it, was counted
    in the summary with the stage it reached before the rollback."""
    tally = RunTally()
    for event in (
        _stage("a", SeedLifecycleStage.GERMINATED, 36),
        _stage("a", SeedLifecycleStage.TRAINING, 44),
        _stage("b", SeedLifecycleStage.GERMINATED, 68),  # decided at 64: the rollback to 64 keeps it
        _stage("a", SeedLifecycleStage.CULLED, 70),  # decided at 66: undone
        _stage("c", SeedLifecycleStage.GERMINATED, 72),  # decided at 68: undone, never decided again
    ):
        tally.emit(event)
    tally.emit(LifecycleRestored(run_id="r", step=64, lag_steps=4))
    tally.emit(_stage("a", SeedLifecycleStage.BLENDING, 76))
    assert tally.figures(seed_parameters=0).seeds == {"blending": 1, "germinated": 1}


def test_a_resume_drops_the_killed_sessions_epochs_past_its_checkpoint() -> None:
    """Killed in epoch 9 with its checkpoint at epoch 5, resumed with tolaria.epochs = 7: the summary's final (and
    host-only) accuracy was epoch 8's, read back from metrics.csv, not the last epoch the run trained."""
    tally = RunTally()
    tally.preload([], [(epoch, 20 * epoch, epoch / 10) for epoch in range(1, 9)], [])
    tally.emit(TrainingRestored(run_id="r", step=100, tier="full"))  # the checkpoint at the end of epoch 5
    figures = tally.figures(seed_parameters=0)
    assert (figures.final_val_accuracy, figures.baseline_epoch, figures.baseline_val_accuracy) == (0.5, 5, 0.5)
    assert sorted(tally.epoch_step) == [1, 2, 3, 4, 5]
    tally.emit(TrainingRestored(run_id="r", step=0, tier="none"))  # no checkpoint to load: training starts over
    assert (tally.epoch_val_accuracy, tally.epoch_step) == ({}, {})
    assert tally.figures(seed_parameters=0).final_val_accuracy is None


def test_the_standing_slot_transitions_are_every_one_that_stands() -> None:
    """What a restarted Nissa starts from: each slot's latest standing transition, the earlier sessions' included."""
    tally = RunTally()
    tally.preload([], [], [], [Transition("blocks.0", SeedLifecycleStage.FOSSILIZED, 40)])
    tally.emit(_stage("a", SeedLifecycleStage.PROBATIONARY, 60))
    tally.emit(
        SeedStageChanged(
            slot="blocks.2", from_stage=SeedLifecycleStage.CULLED, to_stage=SeedLifecycleStage.EMBARGOED, step=62
        )
    )
    tally.emit(_stage("a", SeedLifecycleStage.FOSSILIZED, 72))  # decided at 68: undone below
    tally.emit(LifecycleRestored(run_id="r", step=64, lag_steps=4))
    assert tally.standing_slot_transitions() == [
        Transition("blocks.0", SeedLifecycleStage.FOSSILIZED, 40),
        Transition("blocks.1", SeedLifecycleStage.PROBATIONARY, 60, "a"),
        Transition("blocks.2", SeedLifecycleStage.EMBARGOED, 62),
    ]


def test_the_summary_table_says_how_many_events_never_reached_the_bus() -> None:
    """The events lost while Redis was down or hung were in a warning at most, the full mailbox's in none."""
    summary = RunSummary(
        run_id="r", run_dir="runs/r", status="completed", started_at="t", duration_s=1.0, exit_code=0, dead_letters=0
    )
    assert "bus:" not in format_summary(summary)
    lost = msgspec.structs.replace(summary, bus_dropped=1183)
    assert "bus: 1183 events never reached its observers (training was unaffected)" in format_summary(lost)


def test_a_resumed_run_counts_a_refused_stage_change_from_the_receipt_that_applied_it() -> None:
    """The earlier session's fossilize was refused at step 100 (its events.jsonl says so) and never applied before the
    kill: the seed is probationary until the resumed trainer's receipt applies the op again (step 132)."""
    tally = RunTally()
    tally.preload(
        [("a", SeedLifecycleStage.PROBATIONARY, 84), ("a", SeedLifecycleStage.FOSSILIZED, 100)],
        [],
        refusals=[Refusal("a", 100)],
    )
    assert tally.figures(seed_parameters=0, last_step=128).seeds == {"probationary": 1}
    applied = OpOutcome(kind="fossilize", slot="blocks.1", seed_id="a", applied=True)
    tally.on_receipt(
        BoundaryApplied(run_id="r", decided_on_step=128, effect_step=132, applied_step=132, outcomes=(applied,))
    )
    assert tally.figures(seed_parameters=0, last_step=128).seeds == {"probationary": 1}
    assert tally.figures(seed_parameters=0, last_step=144).seeds == {"fossilized": 1}


def test_parameters_added_says_how_many_are_fossilized() -> None:
    """r1's "parameters added 72" counted two seeds still on trial beside the one fossilized (24) and did not say so."""
    growth = GrowthFigures(parameters_added=72, parameters_fossilized=24, decisions=3)
    assert f"{'parameters added':<28}72 (24 fossilized, 48 in seeds not yet fossilized)" in growth_lines(growth)
    # A summary an earlier version wrote does not know; nothing added has nothing to split.
    assert f"{'parameters added':<28}72" in growth_lines(msgspec.structs.replace(growth, parameters_fossilized=None))
    assert f"{'parameters added':<28}0" in growth_lines(GrowthFigures(parameters_fossilized=0))
    # Every grafted seed kept (the shipped run's 924): nothing left to split.
    kept = GrowthFigures(parameters_added=924, parameters_fossilized=924)
    assert f"{'parameters added':<28}924 (all fossilized)" in growth_lines(kept)


def test_a_one_epoch_run_is_not_called_1_epochs_in_the_summary() -> None:
    """The start's warnings were fixed; the summary table still said "training: 1 epochs"."""
    summary = RunSummary(
        run_id="r",
        run_dir="runs/r",
        status="completed",
        started_at="2026-12-07T00:00:00Z",
        duration_s=1.0,
        exit_code=0,
        dead_letters=0,
        training=TrainingFigures(epochs=1, global_step=16, host_parameters=2782, seed_parameters=0),
    )
    assert "training: 1 epoch, 16 steps, 2782 parameters (0 in seeds)" in format_summary(summary)


def test_the_summary_counts_the_alerts_fired_by_rule() -> None:
    """An alert that fired and cleared left no trace in summary.json: its alert_fired events are counted by rule."""
    tally = RunTally()
    for rule in ("training_latency_high", "slo_tamiyo_decision_latency", "training_latency_high"):
        tally.emit(TelemetryEvent(name=ALERT_FIRED, level=TelemetryLevel.INFO, attributes={"rule": rule}))
    tally.emit(
        TelemetryEvent(name=ALERT_CLEARED, level=TelemetryLevel.INFO, attributes={"rule": "training_latency_high"})
    )
    assert tally.alerts_fired == {"training_latency_high": 2, "slo_tamiyo_decision_latency": 1}
    summary = RunSummary(
        run_id="r",
        run_dir="runs/r",
        status="completed",
        started_at="t",
        duration_s=1.0,
        exit_code=0,
        dead_letters=0,
        alerts_fired=dict(tally.alerts_fired),
    )
    assert msgspec.json.decode(msgspec.json.encode(summary))["alerts_fired"] == tally.alerts_fired
    [line] = [line for line in format_summary(summary).splitlines() if line.startswith("alerts fired")]
    assert line == "alerts fired: slo_tamiyo_decision_latency 1, training_latency_high 2 (events.jsonl: alert_fired)"
    quiet = msgspec.structs.replace(summary, alerts_fired={})
    assert "alerts fired" not in format_summary(quiet)


def test_commands_kasmina_refused_are_counted_by_reason_and_named_as_why_nothing_grew(tmp_path: Path) -> None:
    """A memory budget too small refused 24 germinations: the summary said 'seeds by outcome none (the controller's
    reasons: steady 22, cooldown 8, too_late 6)', the cooldown being the refused germinations', and summary.json did
    not count them."""
    path = tmp_path / "events.jsonl"
    earlier = {"event": "telemetry_event", "name": "command_rejected", "attributes": {"reason": "stale"}}
    path.write_text(json.dumps(earlier) + "\n", encoding="utf-8")
    tally = RunTally()
    tally.preload([], [], [Read(4, 1.0, "cooldown")], rejected_commands=read_run_events(path).rejected_commands)
    for reason in ("memory_budget_exceeded", "memory_budget_exceeded", "nonce_ledger_full"):
        tally.emit(TelemetryEvent(name="command_rejected", level=TelemetryLevel.WARNING, attributes={"reason": reason}))
    figures = tally.figures(seed_parameters=0)
    assert figures.rejected_commands == {"memory_budget_exceeded": 2, "nonce_ledger_full": 1, "stale": 1}
    lines = growth_lines(figures)
    seeds = next(line for line in lines if line.startswith("seeds by outcome"))
    assert seeds.endswith(
        "none (commands rejected: memory_budget_exceeded 2, nonce_ledger_full 1, stale 1;"
        " the controller's reasons: cooldown 1)"
    )
    [rejected] = [line for line in lines if line.startswith("commands rejected")]
    assert rejected.endswith(
        "memory_budget_exceeded 2, nonce_ledger_full 1, stale 1 (by Kasmina; events.jsonl: command_rejected)"
    )
    decoded = msgspec.json.decode(msgspec.json.encode(figures))
    assert decoded["rejected_commands"] == figures.rejected_commands
    # An earlier version's summary.json, without the field, still reads.
    del decoded["rejected_commands"]
    assert msgspec.json.decode(msgspec.json.encode(decoded), type=GrowthFigures).rejected_commands == {}
    assert not any(line.startswith("commands rejected") for line in growth_lines(GrowthFigures()))


def test_a_command_refused_again_in_the_steps_a_resume_trained_again_is_counted_once(tmp_path: Path) -> None:
    """A kill -9 after a refusal: the resume trained those steps again, the controller sent the same command (its id is
    reproducible) and Kasmina refused it again: 13 rejections in a run whose uninterrupted twin had 12."""
    path = tmp_path / "events.jsonl"
    lines = [
        {"event": "telemetry_event", "name": "command_rejected", "attributes": {"reason": "memory", "command_id": c}}
        for c in ("a", "b")
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    tally = RunTally()
    tally.preload([], [], [], rejected_commands=read_run_events(path).rejected_commands)
    for command_id in ("b", "c", "c"):  # b refused again after the resume; c twice in this session (a rollback)
        attributes: dict[str, str | int | float | bool] = {"reason": "memory", "command_id": command_id}
        tally.emit(TelemetryEvent(name="command_rejected", level=TelemetryLevel.WARNING, attributes=attributes))
    tally.emit(TelemetryEvent(name="command_rejected", level=TelemetryLevel.WARNING, attributes={"reason": "stale"}))
    assert tally.figures(seed_parameters=0).rejected_commands == {"memory": 3, "stale": 1}


def test_the_seeds_line_says_how_many_seeds_ended_paused() -> None:
    """Under every_k, seeds paused for a loss spike stay paused (it never culls): the summary said "probationary 4"
    although all four passed the host's output through."""
    tally = RunTally()
    for index, seed_id in enumerate("abcd"):
        tally.emit(_stage(seed_id, SeedLifecycleStage.GERMINATED, 10 + index))
        tally.emit(_stage(seed_id, SeedLifecycleStage.PROBATIONARY, 100 + index))
    tally.emit(_stage("e", SeedLifecycleStage.GERMINATED, 20))
    tally.emit(_stage("e", SeedLifecycleStage.CULLED, 40))

    def held(seed_id: str, paused: bool) -> SeedState:
        # The trainer's view: a probationary seed's slot reads as shadowing.
        stage = SeedLifecycleStage.SHADOWING
        return SeedState(slot=f"s.{seed_id}", stage=stage, layer_depth=1, seed_id=seed_id, paused=paused)

    # A culled seed's id the packet still names paused (a cull planned after the packet) is no paused outcome.
    seeds = (held("a", True), held("b", True), held("c", True), held("d", False), held("e", True))
    tally.on_packet(packet(200, seeds=seeds))
    ended = tally.figures(seed_parameters=400, last_step=200)
    assert (ended.seeds, ended.paused_seeds) == ({"culled": 1, "probationary": 4}, {"probationary": 3})
    assert "culled 1, probationary 4 (3 paused)" in "\n".join(growth_lines(ended, last_step=200))
    # The last packet decides: the seeds resumed before the end are not called paused.
    tally.on_packet(packet(210, seeds=tuple(held(seed_id, False) for seed_id in "abcd")))
    resumed = tally.figures(seed_parameters=400, last_step=210)
    assert resumed.paused_seeds == {}
    assert "culled 1, probationary 4\n" in "\n".join(growth_lines(resumed, last_step=210)) + "\n"
