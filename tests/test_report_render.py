"""report.png renders from a run directory alone: curves, lifecycle markers and the seed timeline; lanes and events."""

from __future__ import annotations

import json
import struct
from typing import TYPE_CHECKING

import pytest

from esper.report import curves_from, load_run, render_report
from esper.report_digest import summary_lines
from esper.report_entries import parse_stage, pause_event, stage_event
from esper.report_inputs import ReportInputError, read_metrics, read_run_events, read_stage_events
from esper.report_plot import PauseEvent, StageEvent
from esper.report_timeline import paused_spans, seed_lanes
from esper.summary_table import seed_outcomes
from schemas.enums import SeedLifecycleStage as Stage
from tests.report_fixtures import TRANSITIONS, write_run

if TYPE_CHECKING:
    from pathlib import Path

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == PNG_SIGNATURE
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_a_run_with_seeds_renders_a_png(tmp_path: Path) -> None:
    run = write_run(tmp_path / "run-a")
    path = render_report(load_run(run))
    assert path == run / "report.png"
    data = path.read_bytes()
    assert _png_size(data) == (1200, 1000)
    assert len(data) > 20_000  # curves, markers and lanes, not a blank canvas


def test_a_run_without_seeds_still_renders_its_curves(tmp_path: Path) -> None:
    run = write_run(tmp_path / "run-b", lifecycle=False, summary=False)
    data = load_run(run)
    assert data.events == []
    assert data.summary is None
    assert _png_size(render_report(data).read_bytes()) == (1200, 1000)


def test_an_empty_metrics_file_renders(tmp_path: Path) -> None:
    run = write_run(tmp_path / "run-c", epochs=0)
    assert load_run(run).rows == []
    assert render_report(load_run(run)).is_file()


def test_lifecycle_events_are_read_from_events_jsonl_in_either_stage_form(tmp_path: Path) -> None:
    run = write_run(tmp_path / "run-d")
    events = read_stage_events(run / "events.jsonl")
    assert len(events) == len(TRANSITIONS)
    assert events[0] == StageEvent(
        step=300,
        slot="features.1",
        to_stage=Stage.GERMINATED,
        from_stage=Stage.DORMANT,
        seed_id="seed-1",
        blueprint_id="BP001",
    )
    # A line damaged on disk (a byte that is not UTF-8) is skipped like a torn one; it does not cost the report.
    with (run / "events.jsonl").open("ab") as file:
        file.write(b'{"event": "seed_stage_changed", "slot": "caf\xe9"}\n')
    assert len(read_stage_events(run / "events.jsonl")) == len(TRANSITIONS)
    numeric = {"event": "seed_stage_changed", "slot": "s", "step": 7, "to_stage": 4, "from_stage": 3}
    assert stage_event(numeric) == StageEvent(step=7, slot="s", to_stage=Stage.BLENDING, from_stage=Stage.TRAINING)
    assert stage_event({"event": "seed_stage", "slot": "s", "step": "7", "to_stage": 4}) is None
    assert stage_event({"event": "gate_event", "slot": "s", "step": 7, "to_stage": 4}) is None
    assert (parse_stage("blending"), parse_stage(99), parse_stage(True), parse_stage(None)) == (
        Stage.BLENDING,
        None,
        None,
        None,
    )


def test_a_rollback_line_takes_back_the_transitions_it_undid(tmp_path: Path) -> None:
    """events.jsonl keeps every line: the report drew a transition a rollback undid (twice when it recurred)."""
    stage = "seed_stage_changed"
    lines = [
        {"event": stage, "slot": "a", "step": 60, "to_stage": "BLENDING", "from_stage": "TRAINING"},
        {"event": stage, "slot": "a", "step": 72, "to_stage": "SHADOWING", "from_stage": "BLENDING"},
        {"event": stage, "slot": "b", "step": 73, "to_stage": "GERMINATED", "from_stage": "DORMANT"},
        {"event": "lifecycle_restored", "step": 64, "lag_steps": 4},
        {"event": stage, "slot": "a", "step": 72, "to_stage": "SHADOWING", "from_stage": "BLENDING"},
    ]
    path = tmp_path / "events.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    assert [(e.slot, e.step, e.to_stage) for e in read_stage_events(path)] == [
        ("a", 60, Stage.BLENDING),
        ("a", 72, Stage.SHADOWING),
    ]


def test_a_pause_a_rollback_took_back_and_the_trainer_then_refused_is_not_drawn(tmp_path: Path) -> None:
    """Paused at 68, rolled back to 64, the pause sent again and refused at L3: the seed trained on unpaused (the
    console said so), but report.png hatched it as paused from 68."""
    failed = {
        "event": "telemetry_event",
        "name": "seed_op_failed",
        "attributes": {"slot": "b", "seed_id": "s2", "op": "pause", "step": 68},
    }
    lines = [
        _command_result("pause", 68, "s2"),
        _command_result("pause", 90, "s3"),
        {"event": "lifecycle_restored", "step": 80, "lag_steps": 4},  # takes back s3's pause at 90 (decided at 86)
        {"event": "lifecycle_restored", "step": 64, "lag_steps": 4},  # s2's at 68 was decided on 64: sent again
        failed,
    ]
    path = tmp_path / "events.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    assert read_run_events(path).pauses == []


def test_lanes_follow_each_seed_and_slot_only_events_join_the_slots_latest_seed() -> None:
    events = [
        StageEvent(step=10, slot="a", to_stage=Stage.GERMINATED, seed_id="s1", blueprint_id="BP1"),
        StageEvent(step=20, slot="a", to_stage=Stage.CULLED, seed_id="s1"),
        StageEvent(step=25, slot="a", to_stage=Stage.EMBARGOED),
        StageEvent(step=40, slot="a", to_stage=Stage.DORMANT),
        StageEvent(step=50, slot="a", to_stage=Stage.GERMINATED, seed_id="s2"),
    ]
    lanes = seed_lanes(events, end_step=60)
    assert list(lanes) == ["a · s1 (BP1)", "a · s2"]
    assert [(s.stage, s.start, s.end) for s in lanes["a · s1 (BP1)"]] == [
        (Stage.GERMINATED, 10, 20),
        (Stage.CULLED, 20, 25),
        (Stage.EMBARGOED, 25, 40),
    ]
    assert [(s.stage, s.start, s.end) for s in lanes["a · s2"]] == [(Stage.GERMINATED, 50, 60)]


def test_a_withdrawn_germination_is_no_seed_outcome_and_its_lane_ends_where_its_slot_is_dormant_again() -> None:
    """A germination whose attach the emergency level refused (after a rollback, at L3) goes back to DORMANT: it was
    counted among the culled seeds while it was culled, and would count as a "dormant" seed now."""
    transitions = [
        ("s1", 52, Stage.GERMINATED),
        ("s1", 60, Stage.DORMANT),
        ("s2", 36, Stage.GERMINATED),
        ("s2", 44, Stage.TRAINING),
    ]
    assert seed_outcomes(transitions, None) == {"training": 1}
    events = [
        StageEvent(step=52, slot="a", to_stage=Stage.GERMINATED, seed_id="s1"),
        StageEvent(step=60, slot="a", to_stage=Stage.DORMANT, seed_id="s1"),
    ]
    assert [(s.stage, s.start, s.end) for s in seed_lanes(events, end_step=100)["a · s1"]] == [
        (Stage.GERMINATED, 52, 60)
    ]


def test_the_summary_names_status_final_figures_and_seed_outcomes(tmp_path: Path) -> None:
    lines = summary_lines(load_run(write_run(tmp_path / "run-e")))
    assert lines[0] == "run run-e: status completed, exit code 0, 45.0 s, dead letters 0"
    # The fixture counts epochs from 0, as versions before 402fcbe wrote them: read as epochs 1 to 18.
    assert lines[1].startswith("epochs 18 (last epoch 18, step 1800): train loss 0.3059")
    assert lines[2] == "seeds 3: culled 1, fossilized 1, shadowing 1"


def test_seed_outcomes_leave_out_transitions_after_the_last_trained_step(tmp_path: Path) -> None:
    lines = summary_lines(load_run(write_run(tmp_path / "run-g", last_step=1500)))
    # seed-3's SHADOWING at step 1600 was planned for after the run's last step (1500): it never took effect.
    assert (
        lines[2]
        == "seeds 3: blending 1, culled 1, fossilized 1 (1 transition planned for after step 1500, not applied)"
    )


def test_missing_inputs_raise_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(ReportInputError, match="no such run directory"):
        load_run(tmp_path / "absent")
    run = write_run(tmp_path / "run-f")
    (run / "events.jsonl").unlink()
    with pytest.raises(ReportInputError, match=r"no events\.jsonl in"):
        load_run(run)


def _command_result(kind: str, step: int, seed_id: str, *, accepted: bool = True) -> dict[str, object]:
    return {"event": "command_result", "kind": kind, "accepted": accepted, "applied_step": step, "seed_id": seed_id}


def test_accepted_pauses_and_resumes_are_read_and_everything_else_is_not() -> None:
    assert pause_event(_command_result("pause", 208, "seed-2")) == PauseEvent(step=208, seed_id="seed-2")
    assert pause_event(_command_result("resume", 300, "seed-2")) == PauseEvent(300, "seed-2", resumed=True)
    assert pause_event(_command_result("pause", 208, "seed-2", accepted=False)) is None
    assert pause_event(_command_result("cull", 208, "seed-2")) is None
    assert pause_event({**_command_result("pause", 208, "seed-2"), "applied_step": True}) is None
    assert pause_event({**_command_result("pause", 208, "seed-2"), "seed_id": None}) is None


def test_a_pause_lasts_until_its_resume_else_the_seeds_next_change_else_the_end() -> None:
    events = [
        StageEvent(step=100, slot="a", to_stage=Stage.BLENDING, seed_id="s1"),
        StageEvent(step=400, slot="a", to_stage=Stage.CULLED, seed_id="s1"),
        StageEvent(step=100, slot="b", to_stage=Stage.BLENDING, seed_id="s2"),
        StageEvent(step=100, slot="c", to_stage=Stage.TRAINING, seed_id="s3"),
    ]
    pauses = [
        PauseEvent(150, "s1"),
        PauseEvent(120, "s2"),
        PauseEvent(180, "s2", resumed=True),
        PauseEvent(250, "s2"),
        PauseEvent(300, "s3"),
    ]
    assert paused_spans(pauses, events, end_step=1000) == {
        "s1": [(150.0, 400.0)],
        "s2": [(120.0, 180.0), (250.0, 1000.0)],
        "s3": [(300.0, 1000.0)],
    }


def test_a_run_with_a_paused_seed_reads_the_pause_and_renders_it(tmp_path: Path) -> None:
    run = write_run(tmp_path / "run-p")
    with (run / "events.jsonl").open("a", encoding="utf-8") as events:
        events.write("\n" + json.dumps(_command_result("pause", 650, "seed-2")) + "\n")
    data = load_run(run)
    assert data.pauses == [PauseEvent(step=650, seed_id="seed-2")]
    assert _png_size(render_report(data).read_bytes()) == (1200, 1000)


def test_the_digest_says_which_live_seeds_ended_paused(tmp_path: Path) -> None:
    """The run's own summary said "shadowing 1 (1 paused)"; the report's digest of the same run said "shadowing 1"."""
    run = write_run(tmp_path / "run-q", summary=False)
    lines = [_command_result("pause", 650, "seed-2"), _command_result("pause", 1500, "seed-3")]
    with (run / "events.jsonl").open("a", encoding="utf-8") as events:
        events.write("\n" + "".join(json.dumps(line) + "\n" for line in lines))
    [seeds] = [line for line in summary_lines(load_run(run)) if line.startswith("seeds ")]
    assert seeds == "seeds 3: culled 1, fossilized 1, shadowing 1 (1 paused)"  # seed-2 was culled while paused
    with (run / "events.jsonl").open("a", encoding="utf-8") as events:
        events.write(json.dumps(_command_result("resume", 1650, "seed-3")) + "\n")
    [seeds] = [line for line in summary_lines(load_run(run)) if line.startswith("seeds ")]
    assert seeds == "seeds 3: culled 1, fossilized 1, shadowing 1"


def test_metrics_rows_longer_or_shorter_than_the_header_read_as_far_as_they_match(tmp_path: Path) -> None:
    path = tmp_path / "metrics.csv"
    path.write_text("epoch,step,val_accuracy\n1,16,0.5,extra,cells\n2,32\n3,48,0.7\n", encoding="utf-8")
    assert read_metrics(path) == [
        {"epoch": 1.0, "step": 16.0, "val_accuracy": 0.5},
        {"epoch": 2.0, "step": 32.0, "val_accuracy": None},
        {"epoch": 3.0, "step": 48.0, "val_accuracy": 0.7},
    ]


@pytest.mark.parametrize(
    "torn",
    [
        "2,48,1.2e-0",  # cut mid-number: 1.2e-05 would have read as 1.2
        "2,4",  # cut mid-row, no newline
        "2,48\n",  # cut mid-row, with a newline (fewer cells than the header)
    ],
)
def test_a_torn_last_metrics_row_is_not_read_as_data(tmp_path: Path, torn: str) -> None:
    """A crash mid-write leaves half a row; it was read as a real epoch (its cut number as a value)."""
    path = tmp_path / "metrics.csv"
    path.write_text(f"epoch,step,val_accuracy\n1,32,0.5\n{torn}", encoding="utf-8")
    assert read_metrics(path) == [{"epoch": 1.0, "step": 32.0, "val_accuracy": 0.5}]


def test_a_row_without_its_step_is_a_gap_on_the_step_axis_the_seed_timeline_shares() -> None:
    """One row without a step put the curves on an epoch axis (1..20) while the lifecycle markers and the seed
    timeline stayed at their steps (148..392): the curves were squashed into the left edge."""
    rows: list[dict[str, float | None]] = [
        {"epoch": 1.0, "step": 20.0, "val_accuracy": 0.5},
        {"epoch": 2.0, "step": None, "val_accuracy": 0.6},
        {"epoch": 3.0, "step": 60.0, "val_accuracy": 0.7},
    ]
    curves = curves_from(rows)
    assert curves.x_label == "step"
    assert (curves.x[0], curves.x[2]) == (20.0, 60.0)
    assert curves.x[1] != curves.x[1]  # NaN: the point is left out
    assert curves_from([{"epoch": 1.0, "step": None}]).x_label == "epoch"  # no step anywhere: epochs
