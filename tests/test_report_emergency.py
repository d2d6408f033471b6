"""report.png and the digest show a run's emergencies: each level change with its reason, rollbacks and a halt."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import numpy as np
from matplotlib.collections import LineCollection, PathCollection
from matplotlib.colors import to_rgba
from matplotlib.legend import Legend

from esper.report import load_run, render_report
from esper.report_digest import summary_lines
from esper.report_emergency import Halt, LevelChange, Rollback
from esper.report_ladder import HALT_COLOUR, ROLLBACK_COLOUR, level_spans
from esper.report_plot import Curves, report_figure
from esper.runtime.emergency import RESTORED
from tests.report_fixtures import write_run

if TYPE_CHECKING:
    from pathlib import Path

    from matplotlib.axes import Axes

    from esper.report import RunData


def _signal(step: int, previous: int, level: int, reason: str) -> dict[str, object]:
    return {
        "event": "emergency_signal",
        "level": "warning",
        "step": step,
        "msg_level": level,
        "previous": previous,
        "reason": reason,
        "origin": "tolaria",
        "monotonic_time_ms": 1.0,
    }


# As the sweep's run logged them: L2 three times (once back to L1 between), L3 with a rollback, then an L4 halt.
LADDER_LINES: list[dict[str, object]] = [
    _signal(80, 1, 2, "failed epoch: hook_budget"),
    _signal(120, 2, 1, "clean dwell: 2 clean ticks over 0.147s"),
    _signal(420, 1, 2, "failed epoch: hook_budget"),
    {"event": "tolaria_rolled_back", "step": 440, "reason": "failed epoch: hook_budget", "rollbacks": 1},
    _signal(460, 2, 3, "breaker_open after hook_budget"),
    _signal(460, 3, 4, "failed_epochs_streak: 4 failed epochs in a row"),
    {
        "event": "training_finished",
        "status": "halted",
        "global_step": 460,
        "halt_reason": "4 failed epochs in a row (the last: breaker_open)",
    },
]


def _run(tmp_path: Path, extra: list[dict[str, object]]) -> RunData:
    run = write_run(tmp_path / "run-e", epochs=5)
    events = run / "events.jsonl"
    kept = events.read_text(encoding="utf-8").rpartition("\n")[0] + "\n"  # without the fixture's torn last line
    events.write_text(kept + "".join(json.dumps(line) + "\n" for line in extra), encoding="utf-8")
    return load_run(run)


LADDER_LINES_CHANGES = [
    LevelChange(80, 1, 2, "failed epoch: hook_budget"),
    LevelChange(120, 2, 1, "clean dwell: 2 clean ticks over 0.147s"),
    LevelChange(420, 1, 2, "failed epoch: hook_budget"),
    LevelChange(460, 2, 3, "breaker_open after hook_budget"),
    LevelChange(460, 3, 4, "failed_epochs_streak: 4 failed epochs in a row"),
]


def test_the_run_data_keep_every_level_change_with_its_reason_the_rollback_and_the_halt(tmp_path: Path) -> None:
    data = _run(tmp_path, LADDER_LINES)
    assert data.ladder.changes == LADDER_LINES_CHANGES
    assert data.ladder.rollbacks == [Rollback(440, "failed epoch: hook_budget")]
    assert data.ladder.last_halt == Halt(460, "4 failed epochs in a row (the last: breaker_open)")
    assert data.emergency_events == 5
    assert level_spans(data.ladder, 500.0) == [
        (80.0, 120.0, 2),
        (420.0, 460.0, 2),
        (460.0, 460.0, 3),
        (460.0, 500.0, 4),
    ]


def test_the_digest_counts_emergency_events_and_rollbacks_and_names_the_halt(tmp_path: Path) -> None:
    assert summary_lines(_run(tmp_path / "a", LADDER_LINES))[-1] == (
        "emergency events 5, rollbacks 1; halted at step 460: 4 failed epochs in a row (the last: breaker_open)"
    )
    assert summary_lines(_run(tmp_path / "b", []))[-1] == "emergency events 0, rollbacks 0"


def test_a_move_made_again_and_a_resumes_restored_level_are_no_new_events(tmp_path: Path) -> None:
    """A session that trains a step again makes its move again (counted once, as the summary counts it, and drawn
    where it made it again); a resume taking its saved level back sets the level the run trains at but is no event;
    a later session that completes leaves the halt drawn but not the run's ending."""
    started: dict[str, object] = {"event": "run_started", "run_id": "r"}
    resumed_halt = [*LADDER_LINES, started, _signal(460, 4, 2, RESTORED), {"event": "lifecycle_restored", "step": 460}]
    data = _run(tmp_path / "a", resumed_halt)
    assert data.ladder.changes[-1] == LevelChange(460, 4, 2, RESTORED, counted=False)
    assert data.ladder.moves == data.emergency_events == 5
    lines = [
        *resumed_halt,
        started,  # killed, then resumed from the checkpoint of step 400 (at L1): the rollback at 440 is gone over
        {"event": "lifecycle_restored", "step": 400},
        _signal(420, 1, 2, "failed epoch: hook_budget"),
        {"event": "training_finished", "status": "completed", "global_step": 500},
    ]
    data = _run(tmp_path / "b", lines)
    assert data.ladder.changes == LADDER_LINES_CHANGES[:3]
    assert data.ladder.moves == data.emergency_events == 5
    assert data.ladder.last_halt is None
    assert data.ladder.halts == [Halt(460, "4 failed epochs in a row (the last: breaker_open)")]
    assert summary_lines(data)[-1] == "emergency events 5, rollbacks 0"


def _texts(ax: Axes) -> list[str]:
    return [text.get_text().strip() for text in ax.texts if text.get_text().strip()]


def _has_lines_of(ax: Axes, colour: str) -> bool:
    wanted = np.asarray(to_rgba(colour))[:3]
    rows = [np.asarray(c.get_colors(), dtype=float) for c in ax.collections if isinstance(c, LineCollection)]
    return any(np.allclose(row[:3], wanted) for colours in rows for row in colours)


def test_the_ladder_panel_labels_each_move_the_rollback_and_the_halt_with_a_legend(tmp_path: Path) -> None:
    """report.png showed a run that escalated three times, rolled back and halted as a normal run that stopped."""
    data = _run(tmp_path, LADDER_LINES)
    render_report(data)  # the PNG itself renders
    figure = report_figure(_curves(), [], title="t", ladder=data.ladder)  # as render_report draws it
    loss_ax, acc_ax, lane_ax, ladder_ax = figure.axes
    assert lane_ax.get_xlabel() == "step"
    assert _texts(ladder_ax) == [
        "rolled back to 440 (failed epoch: hook_budget)",
        "halted",
        "L1 clean dwell: 2 clean ticks over 0.147s",
        "L2 failed epoch: hook_budget",
        "L2 failed epoch: hook_budget",
        "L3 breaker_open after hook_budget",
        "L4 failed_epochs_streak: 4 failed epochs in a row",
    ]
    assert ladder_ax.get_title(loc="left") == (
        "emergency level (5 changes, 1 rollback; halted at step 460: 4 failed epochs in a row (the last: breaker_open))"
    )
    legend = ladder_ax.get_legend()
    assert isinstance(legend, Legend)
    assert [text.get_text() for text in legend.get_texts()] == [
        "L2 elevated",
        "L3 conservative",
        "L4 halt",
        "rollback",
        "halt",
    ]
    # Four markers: three moves up (triangles up), one down.
    markers = [c for c in ladder_ax.collections if isinstance(c, PathCollection)]
    assert sorted(len(np.asarray(c.get_offsets())) for c in markers) == [1, 4]
    for curves_ax in (loss_ax, acc_ax):
        # The rollback and the halt cross the curves, and the steps spent above L1 are shaded there.
        assert _has_lines_of(curves_ax, ROLLBACK_COLOUR)
        assert _has_lines_of(curves_ax, HALT_COLOUR)
        shaded = [patch for patch in curves_ax.patches if patch.get_alpha() == 0.12]
        assert len(shaded) == 4


def test_a_run_without_emergencies_keeps_its_three_panels(tmp_path: Path) -> None:
    data = _run(tmp_path, [_signal(0, 1, 1, RESTORED)])  # a resume's re-announced L1: nothing to draw
    figure = report_figure(_curves(), [], title="t", ladder=data.ladder)
    assert len(figure.axes) == 3
    assert not any(patch.get_alpha() == 0.12 for patch in figure.axes[0].patches)


def test_many_moves_keep_their_labels_apart(tmp_path: Path) -> None:
    """A run that went up and down forty times: labels that would overlap are dropped, never drawn over each other."""
    lines = [_signal(10 * i + 10, 1 + i % 2, 2 - i % 2, f"reason number {i}") for i in range(40)]
    data = _run(tmp_path, lines)
    figure = report_figure(_curves(), [], title="t", ladder=data.ladder)
    ladder_ax = figure.axes[3]
    figure.draw_without_rendering()
    labels = [text for text in ladder_ax.texts if text.get_text().strip()]
    assert labels
    boxes = [text.get_window_extent() for text in labels]
    for i, first in enumerate(boxes):
        for second in boxes[i + 1 :]:
            assert not first.overlaps(second)


def _curves() -> Curves:
    xs = [100.0 * (i + 1) for i in range(5)]
    return Curves(x=xs, train_loss=[1.0] * 5, val_loss=[1.0] * 5, train_accuracy=[0.5] * 5, val_accuracy=[0.5] * 5)
