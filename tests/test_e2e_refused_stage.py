"""A stage change the trainer refused at L3: the summary, the table and metrics.csv count it where it took effect."""

from __future__ import annotations

import csv
import json
from typing import TYPE_CHECKING, Any

import pytest

from esper.report import load_run
from esper.report_digest import summary_lines
from esper.run import start
from esper.summary_table import format_summary
from tests.test_e2e_run import tiny_config
from tests.tolaria_factories import NanForThreeSteps

if TYPE_CHECKING:
    from pathlib import Path

    from schemas.run import RunSummary

# Whole runs: on a loaded 2-core machine one took over the 30 s default.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

HOST = 'tolaria.host_model="tests.tolaria_factories:nan_for_three_steps"'
FOSSILIZED_SEED = "seed-host.blocks.2-32"  # its fossilize is planned for step 100 (decided at 96)


async def _rolled_back_at_100(tmp_path: Path, epochs: int) -> tuple[RunSummary, Path, list[dict[str, Any]]]:
    """A run whose training calls 100-102 give NaN: three non-finite steps, L3 and a rollback to step 96, after which
    the trainer refuses the fossilize planned for step 100 (adaptation paused) until the level steps down."""
    NanForThreeSteps.calls, NanForThreeSteps.first = 0, 100
    run_dir = tmp_path / "run"
    summary = await (await start(tiny_config(tmp_path, epochs=epochs), run_dir, [HOST])).wait()
    assert summary.status == "completed", summary.error
    assert summary.training is not None
    assert summary.training.rollbacks == 1
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text(encoding="utf-8").splitlines()]
    telemetry = [e["attributes"] for e in events if e["event"] == "telemetry_event"]
    refused = [a["step"] for a in telemetry if a.get("op") == "fossilize" and a.get("seed_id") == FOSSILIZED_SEED]
    assert refused[:1] == [100], "the fossilize at step 100 must be refused to be a real test"
    return summary, run_dir, events


def _rows(run_dir: Path) -> dict[int, dict[str, str]]:
    with (run_dir / "metrics.csv").open(encoding="utf-8") as file:
        return {int(row["step"]): row for row in csv.DictReader(file)}


def _seeds(row: dict[str, str]) -> dict[str, int]:
    stages = ("shadowing", "probationary", "fossilized")
    return {stage: int(row[f"seeds_{stage}"]) for stage in stages if int(row[f"seeds_{stage}"])}


async def test_a_fossilize_refused_until_the_run_ended_is_not_counted_as_fossilized(tmp_path: Path) -> None:
    """The run ends at step 112 before the refused fossilize is applied: the summary (and its table) said
    "fossilized 1, shadowing 1" and the last metrics.csv row counted it fossilized, while the report (and the model's
    graft log) had it probationary."""
    summary, run_dir, events = await _rolled_back_at_100(tmp_path, epochs=7)
    assert not [e for e in events if e.get("name") == "seed_op_retried"], "the run must end before the retry"
    # (A second seed, too late to be kept in 7 epochs, is not grown: tamiyo's growth horizon.)
    assert summary.growth is not None
    assert summary.growth.seeds == {"probationary": 1}
    written = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    assert written["growth"]["seeds"] == {"probationary": 1}
    assert "probationary 1" in format_summary(summary)
    assert "fossilized" not in format_summary(summary).split("seeds by outcome")[1].splitlines()[0]
    assert _seeds(_rows(run_dir)[112]) == {"probationary": 1}
    # The report, read from the run directory alone, says the same.
    assert any(line.startswith("seeds 1: probationary 1") for line in summary_lines(load_run(run_dir)))


async def test_each_row_counts_a_refused_stage_change_from_the_step_it_took_effect(tmp_path: Path) -> None:
    """Both seeds' stage ops refused at L3 (the fossilize planned for 100, the probation planned for 116) took effect
    at step 132: rows 7 and 8 counted them at their planned steps (fossilized at 112, probationary at 128), against
    README's "each seed in the stage in effect at the row's step"."""
    summary, run_dir, events = await _rolled_back_at_100(tmp_path, epochs=12)
    retried = [e["attributes"] for e in events if e.get("name") == "seed_op_retried"]
    assert sorted((a["planned_step"], a["step"]) for a in retried) == [(100, 132), (116, 132)]
    rows = _rows(run_dir)
    assert _seeds(rows[112]) == {"probationary": 1, "shadowing": 1}
    assert _seeds(rows[128]) == {"probationary": 1, "shadowing": 1}
    assert _seeds(rows[144]) == {"probationary": 1, "fossilized": 1}
    assert summary.growth is not None
    assert summary.growth.seeds == {"fossilized": 1, "probationary": 1}
