"""The report draws a lifecycle change where it took effect: refused then applied later, or never, or after the end."""

from __future__ import annotations

import dataclasses
import json
from typing import TYPE_CHECKING

from matplotlib.collections import PolyCollection

from esper.report import curves_from, drawn, load_run
from esper.report_digest import summary_lines
from esper.report_inputs import read_stage_events
from esper.report_plot import StageEvent, report_figure
from esper.report_receipts import Refusal, RefusalLog, took_effect
from esper.report_timeline import seed_lanes
from schemas.enums import SeedLifecycleStage as Stage
from tests.report_fixtures import write_run

if TYPE_CHECKING:
    from pathlib import Path

SEED = "seed-blocks.1-140"
REFUSED = "adaptation paused (emergency level L3 or above)"


def _stage(step: int, to_stage: str, from_stage: str, seed_id: str | None = SEED) -> dict[str, object]:
    return {
        "event": "seed_stage_changed",
        "step": step,
        "slot": "blocks.1",
        "from_stage": from_stage,
        "to_stage": to_stage,
        "seed_id": seed_id,
        "blueprint_id": "BP005",
    }


def _refused(step: int, op: str = "set_stage") -> dict[str, object]:
    """Kasmina's line for a stage op the trainer refused at ``step`` (as in run c1 of the sweep)."""
    return {
        "event": "telemetry_event",
        "name": "seed_op_failed",
        "description": f"{op} of seed {SEED} in slot blocks.1 failed: {REFUSED}; sent again until it takes effect",
        "attributes": {"slot": "blocks.1", "seed_id": SEED, "op": op, "step": step},
    }


def _took_effect(step: int, planned: int, op: str = "set_stage") -> dict[str, object]:
    return {
        "event": "telemetry_event",
        "name": "seed_op_retried",
        "description": f"{op} of seed {SEED} in slot blocks.1, planned for step {planned}, took effect at step {step}",
        "attributes": {"slot": "blocks.1", "seed_id": SEED, "op": op, "step": step, "planned_step": planned},
    }


def _run(tmp_path: Path, lines: list[dict[str, object]], *, last_step: int = 1800) -> Path:
    """A synthetic run (epochs of 100 steps, to ``last_step``) whose events.jsonl holds ``lines`` instead of the usual
    seeds."""
    run = write_run(tmp_path / "run", epochs=last_step // 100, lifecycle=False, last_step=last_step)
    (run / "events.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return run


GERMINATED_TO_BLENDING = [
    _stage(148, "GERMINATED", "DORMANT"),
    _stage(160, "TRAINING", "GERMINATED"),
    _stage(192, "BLENDING", "TRAINING"),
]


def test_a_stage_change_refused_at_l3_is_drawn_where_it_took_effect(tmp_path: Path) -> None:
    """Run c1: blending planned for step 192 was refused (L3) and took effect at 204; the timeline, the markers and the
    digest showed it at 192, which only a later "took effect" line contradicted."""
    run = _run(
        tmp_path, [*GERMINATED_TO_BLENDING, _refused(192), _took_effect(204, 192), _stage(308, "CULLED", "BLENDING")]
    )
    data = load_run(run)
    blending = StageEvent(204, "blocks.1", Stage.BLENDING, Stage.TRAINING, SEED, "BP005", planned_step=192)
    assert [e for e in data.events if e.to_stage is Stage.BLENDING] == [blending]
    lane = seed_lanes(data.events, end_step=1800)[f"blocks.1 · {SEED} (BP005)"]
    assert [(s.stage, s.start, s.end) for s in lane] == [
        (Stage.GERMINATED, 148, 160),
        (Stage.TRAINING, 160, 204),
        (Stage.BLENDING, 204, 308),
        (Stage.CULLED, 308, 1800),
    ]
    assert blending in drawn(data).events
    # The events themselves keep the step planned (a resume's tally and a rollback's undo count by it).
    assert [e.step for e in read_stage_events(run / "events.jsonl")] == [148, 160, 192, 308]


def test_later_changes_refused_in_the_meantime_take_effect_with_the_receipt(tmp_path: Path) -> None:
    """The lifecycle moved on while the trainer refused: every stage change planned from the refusal until the receipt
    took effect at the receipt's step; one planned for that step or later stands where it is."""
    lines = [
        *GERMINATED_TO_BLENDING,
        _stage(200, "SHADOWING", "BLENDING"),
        _refused(192),
        _took_effect(212, 192),
        _stage(212, "PROBATIONARY", "SHADOWING"),
        _stage(240, "FOSSILIZED", "PROBATIONARY"),
    ]
    events = load_run(_run(tmp_path, lines)).events
    assert [(e.to_stage, e.step, e.planned_step) for e in events[2:]] == [
        (Stage.BLENDING, 212, 192),
        (Stage.SHADOWING, 212, 200),
        (Stage.PROBATIONARY, 212, None),
        (Stage.FOSSILIZED, 240, None),
    ]


def test_a_refused_change_that_never_took_effect_is_not_drawn(tmp_path: Path) -> None:
    """Culled while the trainer still refused its blending: the seed never blended; the digest counts it culled."""
    run = _run(tmp_path, [*GERMINATED_TO_BLENDING, _refused(192), _stage(260, "CULLED", "BLENDING")])
    data = load_run(run)
    assert [(e.to_stage, e.step) for e in data.events] == [
        (Stage.GERMINATED, 148),
        (Stage.TRAINING, 160),
        (Stage.CULLED, 260),
    ]
    assert summary_lines(data)[2] == "seeds 1: culled 1"


def test_a_rollback_takes_back_the_refusals_and_receipts_after_the_step_it_restored() -> None:
    log = RefusalLog()
    for entry in (_refused(192), _took_effect(204, 192)):
        assert log.add_entry(entry)
    assert not log.add_entry(_stage(300, "CULLED", "BLENDING"))
    assert log.refusals() == (Refusal(SEED, 192, 204),)
    log.restore(200)  # the receipt's step is undone: the op is sent again, its refusal stands
    assert log.refusals() == (Refusal(SEED, 192),)
    log.restore(180)  # so is the refusal's
    assert log.refusals() == ()
    # A refused fossilize counts; a refused attach (the seed is culled for it) or a line without a step does not.
    for entry in (_refused(400, "fossilize"), _refused(300, "attach"), {**_refused(500), "attributes": {"op": "x"}}):
        assert log.add_entry(entry)
    assert log.refusals() == (Refusal(SEED, 400),)


def test_an_older_log_whose_refusals_name_no_step_draws_its_changes_as_planned() -> None:
    """Logs written before the refusal named its step: the receipt alone cannot say which changes it moved."""
    log = RefusalLog()
    old_refusal = {**_refused(192), "attributes": {"slot": "blocks.1", "seed_id": SEED, "op": "set_stage"}}
    old_receipt = _took_effect(204, 192)
    old_receipt["attributes"] = {"slot": "blocks.1", "seed_id": SEED, "op": "set_stage", "step": 204}
    for entry in (old_refusal, old_receipt):
        assert log.add_entry(entry)
    assert log.refusals() == ()
    events = [StageEvent(192, "blocks.1", Stage.BLENDING, seed_id=SEED)]
    assert took_effect(events, log.refusals()) == events


def test_a_transition_planned_after_the_last_trained_step_is_not_drawn(tmp_path: Path) -> None:
    """Run c1 (800 steps): a cull planned for step 808 was drawn in report.png as if it happened, while the summary and
    the digest said it was not applied. The digest counted the seed's transitions and the timeline's title every one
    (a cull's embargo carries no seed id): 2 against 7 in run r2 of the long sweep; both count every one now."""
    lines = [
        _stage(688, "GERMINATED", "DORMANT"),
        _stage(700, "TRAINING", "GERMINATED"),
        _stage(808, "CULLED", "TRAINING"),
        _stage(812, "EMBARGOED", "CULLED", seed_id=None),
        {"event": "command_result", "kind": "pause", "accepted": True, "applied_step": 804, "seed_id": SEED},
    ]
    data = load_run(_run(tmp_path, lines, last_step=800))
    shown = drawn(data)
    assert [(e.to_stage, e.step) for e in shown.events] == [(Stage.GERMINATED, 688), (Stage.TRAINING, 700)]
    assert shown.pauses == []
    assert shown.timeline_note == "2 transitions planned for after step 800, not applied, not drawn"
    assert summary_lines(data)[2] == "seeds 1: training 1 (2 transitions planned for after step 800, not applied)"
    curves = curves_from(data.rows)
    figure = report_figure(curves, shown.events, title="t", pauses=shown.pauses, timeline_note=shown.timeline_note)
    lane_ax = figure.axes[2]
    assert (
        lane_ax.get_title(loc="left")
        == "seed timeline (2 transitions planned for after step 800, not applied, not drawn)"
    )
    [bars] = [c for c in lane_ax.collections if isinstance(c, PolyCollection)]
    assert len(bars.get_paths()) == 2, "germinated and training: no culled bar"
    assert bars.get_datalim(lane_ax.transData).x1 <= 800
    # A run still going (or killed) has no last step to cut at: everything read is drawn.
    live = drawn(dataclasses.replace(data, live=True))
    assert [e.step for e in live.events] == [688, 700, 808, 812]
