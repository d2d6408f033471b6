"""report.png's emergency panel draws the history a run trained through.

A rollback, a resume or a restart to a step takes back what the steps after it had drawn, as metrics.csv's
emergency_level has it."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from esper.report import load_run
from esper.report_digest import summary_lines
from esper.report_emergency import Halt, Ladder, LevelChange, Rollback
from esper.report_ladder import ladder_title, level_spans
from esper.runtime.emergency import RESTORED
from tests.test_report_emergency import LADDER_LINES, _run, _signal

if TYPE_CHECKING:
    from pathlib import Path

RUN_STARTED: dict[str, object] = {"event": "run_started", "run_id": "r", "actors": 12}


def _restored(step: int) -> dict[str, object]:
    return {"event": "lifecycle_restored", "step": step, "lag_steps": 8}


def _rolled_back(step: int) -> dict[str, object]:
    return {"event": "tolaria_rolled_back", "step": step, "reason": "non-finite steps", "rollbacks": 1}


def _ladder(lines: list[dict[str, object]]) -> Ladder:
    ladder = Ladder()
    for line in lines:
        ladder.add_entry(line)
    return ladder


def _level_at(ladder: Ladder, step: int) -> int:
    """The level the panel draws at ``step`` (a change at a step holds from it, as a metrics row's level does)."""
    level = 1
    for change in ladder.changes:
        if change.step <= step:
            level = change.level
    return level


# A run that went to L2 at 440, was killed and was resumed from the checkpoint of step 400 (at L1: no RESTORED signal),
# which never went to L2 again (as the review's run logged it), and its metrics.csv's (step, emergency_level) rows.
KILLED_AT_L2: list[dict[str, object]] = [
    RUN_STARTED,
    _signal(20, 1, 2, "failed epoch: hook_budget"),
    _signal(80, 2, 1, "clean dwell: 2 clean ticks over 0.216s"),
    _signal(100, 1, 2, "failed epoch: hook_budget"),
    _signal(220, 2, 1, "clean dwell: 2 clean ticks over 0.192s"),
    _signal(340, 1, 2, "failed epoch: hook_budget"),
    _signal(380, 2, 1, "clean dwell: 2 clean ticks over 0.200s"),
    _signal(440, 1, 2, "failed epoch: hook_budget"),
    RUN_STARTED,
    {"event": "tolaria_restored", "step": 400, "tier": "full"},
    {"event": "training_restored", "step": 400, "tier": "full"},
    _restored(400),
    {"event": "training_finished", "status": "completed", "global_step": 1000, "halt_reason": None},
]
KILLED_AT_L2_ROWS = [(step, 2 if 20 <= step < 80 or 100 <= step < 220 or 340 <= step < 380 else 1) for step in
                     range(20, 1001, 20)]  # fmt: skip


def test_a_resume_at_l1_does_not_draw_the_level_only_the_killed_session_had(tmp_path: Path) -> None:
    """report.png shaded L2 from 440 to 1000, where metrics.csv has L1 from 400 on."""
    data = _run(tmp_path, KILLED_AT_L2)
    assert level_spans(data.ladder, 1000.0) == [(20.0, 80.0, 2), (100.0, 220.0, 2), (340.0, 380.0, 2)]
    assert [(step, _level_at(data.ladder, step)) for step, _ in KILLED_AT_L2_ROWS] == KILLED_AT_L2_ROWS
    assert data.ladder.moves == data.emergency_events == 7  # the move the resume went back over did happen


def test_a_move_made_again_after_a_resume_is_drawn_once_and_counted_once() -> None:
    """Up at 160, down at 200, killed at 210, resumed from step 180 at its saved L2, down at 200 again: the counting
    dedup took the second move off the line, which then went back from 200 to 180 and stayed at L2 for good."""
    killed = [_signal(160, 1, 2, "failed epoch: hook_budget"), _signal(200, 2, 1, "clean dwell")]
    again = _signal(200, 2, 1, "clean dwell")
    for restore in ([_signal(180, 1, 2, RESTORED), _restored(180)], [_restored(180), _signal(180, 1, 2, RESTORED)]):
        ladder = _ladder([RUN_STARTED, *killed, RUN_STARTED, *restore, again])
        assert level_spans(ladder, 400.0) == [(160.0, 180.0, 2), (180.0, 200.0, 2)], restore
        steps = [change.step for change in ladder.changes]
        assert steps == sorted(steps)
        assert [(step, _level_at(ladder, step)) for step in (160, 180, 200, 220)] == [
            (160, 2),
            (180, 2),
            (200, 1),
            (220, 1),
        ]
        assert ladder.events == [
            LevelChange(160, 1, 2, "failed epoch: hook_budget"),
            LevelChange(200, 2, 1, "clean dwell"),
        ]
        assert ladder.moves == 2


# A run rolled back in-session (L3 at 70, back to 60, still at L3), killed, resumed from step 60 (at L1), rolled back
# again (L3 at 130, back to 120) and stepped down to L1 (as the review's run logged it), and its metrics.csv's rows.
ROLLED_BACK_TWICE: list[dict[str, object]] = [
    RUN_STARTED,
    _signal(70, 1, 3, "3 non-finite steps within 100 steps"),
    _rolled_back(60),
    _restored(60),
    _signal(100, 3, 2, "clean dwell: 2 clean ticks over 0.237s"),
    RUN_STARTED,
    _restored(60),
    _signal(130, 1, 3, "3 non-finite steps within 100 steps"),
    {"event": "training_restored", "step": 120, "tier": "fast"},
    _rolled_back(120),
    _restored(120),
    _signal(160, 3, 2, "clean dwell: 2 clean ticks over 0.251s"),
    _signal(200, 2, 1, "clean dwell: 2 clean ticks over 0.146s"),
]
ROLLED_BACK_TWICE_ROWS = [(step, 1) for step in range(20, 121, 20)] + [(140, 3), (160, 2), (180, 2), (200, 1), (220, 1)]


def test_the_steps_a_rollback_trains_again_are_drawn_at_the_level_they_ran_at() -> None:
    """A rollback keeps its level (L3 from the step it went back to); the resume from step 60 starts at L1 and takes
    back the killed session's rollback. The row of step 120 is left out: written before the rollback to it, it has
    the level the steps before the rollback ran at."""
    ladder = _ladder(ROLLED_BACK_TWICE)
    assert level_spans(ladder, 240.0) == [(120.0, 160.0, 3), (160.0, 200.0, 2)]
    drawn = [(step, _level_at(ladder, step)) for step, _ in ROLLED_BACK_TWICE_ROWS if step != 120]
    assert drawn == [row for row in ROLLED_BACK_TWICE_ROWS if row[0] != 120]
    assert ladder.rollbacks == [Rollback(120, "non-finite steps")]
    # The move the rollback went back over made the level the steps after it ran at: still marked, where it was made.
    assert [(change.step, change.level) for change in ladder.events] == [(130, 3), (160, 2), (200, 1)]
    assert ladder.moves == 5
    assert ladder_title(ladder) == "emergency level (5 changes, 1 rollback)"
    killed = _ladder(ROLLED_BACK_TWICE[:5])  # before the resume: the rollback keeps L3 until the step down at 100
    assert level_spans(killed, 120.0) == [(60.0, 100.0, 3), (100.0, 120.0, 2)]


def test_the_digest_counts_the_rollbacks_the_summary_counts(tmp_path: Path) -> None:
    """The killed session's rollback, which the resume went back over, was counted too: 2 where summary.json says 1."""
    assert summary_lines(_run(tmp_path / "a", ROLLED_BACK_TWICE))[-1] == "emergency events 5, rollbacks 1"
    data = _run(tmp_path / "b", ROLLED_BACK_TWICE)
    summary = json.loads((data.run_dir / "summary.json").read_text(encoding="utf-8"))
    (data.run_dir / "summary.json").write_text(json.dumps({**summary, "training": {"rollbacks": 3}}), encoding="utf-8")
    assert summary_lines(load_run(data.run_dir))[-1] == "emergency events 5, rollbacks 3"


def test_a_halted_run_resumed_and_killed_does_not_say_it_halted(tmp_path: Path) -> None:
    """The halt's session ended it; the resume taking its checkpoint back at L2 was killed before it finished."""
    resumed = [*LADDER_LINES, RUN_STARTED, _signal(460, 4, 2, f"{RESTORED}: resumed after an L4 halt"), _restored(460)]
    data = _run(tmp_path, resumed)
    assert data.ladder.last_halt is None
    assert data.ladder.halts == [Halt(460, "4 failed epochs in a row (the last: breaker_open)")]
    assert "halted" not in ladder_title(data.ladder)
    assert summary_lines(data)[-1] == "emergency events 5, rollbacks 1"
    assert level_spans(data.ladder, 500.0)[-1] == (460.0, 500.0, 2)


def test_a_restarted_trainer_starts_a_new_ladder_at_its_snapshots_level() -> None:
    """A trainer restart continues from its last epoch-end snapshot with a new ladder (L1, or the level a RESTORED
    signal re-announces); another actor's restart is no restore, and a rollback keeps its level."""
    went_up = [RUN_STARTED, _signal(20, 1, 2, "failed epoch: hook_budget"), _signal(50, 2, 3, "breaker_open")]
    restart = {"event": "child_restarted", "supervisor": "root", "child": "tolaria", "restarts": 1, "backoff_s": 0.1}
    assert level_spans(_ladder([*went_up, restart, _signal(40, 1, 2, RESTORED), _restored(40)]), 60.0) == [
        (20.0, 40.0, 2),
        (40.0, 60.0, 2),
    ]
    assert level_spans(_ladder([*went_up, restart, _restored(40), _signal(40, 1, 2, RESTORED)]), 60.0) == [
        (20.0, 40.0, 2),
        (40.0, 60.0, 2),
    ]
    other = {**restart, "child": "nissa"}
    assert level_spans(_ladder([*went_up, other, _rolled_back(40), _restored(40)]), 60.0) == [
        (20.0, 40.0, 2),
        (40.0, 60.0, 3),
    ]
