"""A resume whose earlier sessions' event log or metrics.csv is gone or cut short says what its summary misses.

One file lost does not cost the other's figures."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import msgspec

from actors.nissa.metrics import METRICS_COLUMNS
from esper.run_history import earlier_tally
from esper.run_tally import RunTally
from esper.summary_table import growth_lines
from schemas.config import RunConfig

if TYPE_CHECKING:
    from pathlib import Path

EPOCHS = 10  # 20 steps each; the newest checkpoint ended epoch 10


def _run(tmp_path: Path) -> Path:
    """An interrupted run's files: a decision per epoch end, a seed germinated at step 100, its manifest."""
    lines: list[dict[str, object]] = [{"event": "run_starting", "run_id": "r"}, {"event": "run_started", "run_id": "r"}]
    for epoch in range(1, EPOCHS + 1):
        step = 20 * epoch
        lines.append({"event": "epoch_end", "step": step, "epoch": epoch, "val_acc": 0.5})
        lines.append({"event": "tamiyo_decision", "step": step, "decision_ms": 1.0, "command": False, "reason": "x"})
    (tmp_path / "events.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    rows = [",".join(METRICS_COLUMNS)]
    index = {name: i for i, name in enumerate(METRICS_COLUMNS)}
    for epoch in range(1, EPOCHS + 1):
        cells = [""] * len(METRICS_COLUMNS)
        cells[index["epoch"]], cells[index["step"]], cells[index["val_accuracy"]] = str(epoch), str(20 * epoch), "0.5"
        rows.append(",".join(cells))
    (tmp_path / "metrics.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    info = {"file": "step-200.pt", "sha256": "0" * 64, "size_bytes": 7, "global_step": 200, "epoch": EPOCHS}
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "manifest.json").write_text(
        json.dumps({"checkpoints": [{**info, "batch_index": 0}]}), encoding="utf-8"
    )
    return tmp_path


def test_whole_files_leave_nothing_out(tmp_path: Path) -> None:
    before = earlier_tally(_run(tmp_path), RunConfig())
    assert (len(before.decisions), len(before.epochs), before.incomplete, before.metrics_problem) == (
        EPOCHS, EPOCHS, (), None
    )  # fmt: skip


def test_a_missing_metrics_csv_keeps_the_events_figures(tmp_path: Path) -> None:
    """metrics.csv gone cost the events' figures too: 99 decisions instead of 150, the baseline from the wrong epoch
    (no seed known to have trained), and no word of it."""
    run = _run(tmp_path)
    (run / "metrics.csv").unlink()
    before = earlier_tally(run, RunConfig())
    assert len(before.decisions) == EPOCHS  # the event log's, though metrics.csv is gone
    assert before.epochs == []  # read back from Kasmina's journal by the resume (esper.resume_rows)
    assert before.metrics_problem == f"no metrics.csv in {run}"
    assert before.incomplete == ()


def test_a_missing_event_log_is_said_and_in_the_summary(tmp_path: Path) -> None:
    run = _run(tmp_path)
    (run / "events.jsonl").unlink()
    before = earlier_tally(run, RunConfig())
    assert len(before.epochs) == EPOCHS  # metrics.csv's, though the log is gone
    assert before.incomplete == (
        f"events.jsonl unreadable (no events.jsonl in {run}): the earlier sessions' decisions, seed transitions (the"
        " host-only baseline's epoch) and emergency events are missing",
    )
    tally = RunTally()
    tally.preload(before.stages, before.epochs, before.decisions, incomplete=before.incomplete)
    figures = tally.figures(0)
    assert figures.earlier_incomplete == list(before.incomplete)
    assert growth_lines(figures)[-1] == f"earlier sessions' figures incomplete: {before.incomplete[0]}"


def test_an_event_log_cut_short_is_said(tmp_path: Path) -> None:
    run = _run(tmp_path)
    text = (run / "events.jsonl").read_text(encoding="utf-8")
    (run / "events.jsonl").write_text(text[: len(text) // 2], encoding="utf-8")  # truncate -s
    before = earlier_tally(run, RunConfig())
    assert len(before.incomplete) == 1
    assert before.incomplete[0].startswith(
        "events.jsonl ends at epoch 5 of the 10 the checkpoints reached (cut short?)"
    )
    (run / "events.jsonl").write_text('{"event": "run_starting"}\n', encoding="utf-8")  # deleted, then reopened
    assert (
        earlier_tally(run, RunConfig())
        .incomplete[0]
        .startswith("events.jsonl holds none of the 10 epochs the checkpoints reached (deleted or emptied?)")
    )


def test_a_log_one_epoch_behind_its_checkpoint_is_not_called_cut_short(tmp_path: Path) -> None:
    run = _run(tmp_path)
    lines = (run / "events.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
    (run / "events.jsonl").write_text("".join(lines[:-2]), encoding="utf-8")  # a kill -9 before the last epoch's line
    assert earlier_tally(run, RunConfig()).incomplete == ()


def test_a_log_an_earlier_version_kept_above_info_is_said_to_lack_the_records(tmp_path: Path) -> None:
    """Such a log has none of the records (epoch_end, decisions, transitions): the check was skipped above info, and
    the summary silently dropped the earlier sessions (culled 1 instead of 2, 119 decisions instead of 250)."""
    run = _run(tmp_path)
    (run / "events.jsonl").write_text('{"event": "loss_spike", "level": "warning"}\n', encoding="utf-8")
    config = RunConfig()
    quiet = msgspec.structs.replace(config, logging=msgspec.structs.replace(config.logging, level="warning"))
    assert earlier_tally(run, quiet).incomplete == (
        "events.jsonl holds none of the 10 epochs the checkpoints reached (an earlier version of Esper left them out"
        ' at logging.level = "warning", or the file was deleted or emptied): the earlier sessions\' decisions, seed'
        " transitions (the host-only baseline's epoch) and emergency events are missing",
    )
    # A log this version wrote has its run_started line, whatever the level: without its epochs it was cut.
    (run / "events.jsonl").write_text('{"event": "run_started", "run_id": "r"}\n', encoding="utf-8")
    assert (
        earlier_tally(run, quiet)
        .incomplete[0]
        .startswith("events.jsonl holds none of the 10 epochs the checkpoints reached (deleted or emptied?)")
    )


def test_a_log_of_epochs_without_decisions_is_said_to_miss_them_and_keeps_the_baseline(tmp_path: Path) -> None:
    """b6026c2 logged its epochs but no tamiyo_decision record: the resumed summary counted the new session's
    decisions alone and said nothing (the note came only above info)."""
    run = _run(tmp_path)
    lines = (run / "events.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
    (run / "events.jsonl").write_text("".join(line for line in lines if "tamiyo_decision" not in line), "utf-8")
    before = earlier_tally(run, RunConfig())
    assert before.incomplete == ()
    assert before.partial == (
        "events.jsonl holds no tamiyo_decision records for the 10 epochs it logged (an earlier version of Esper did"
        " not write them): the earlier sessions' decisions are missing",
    )
    tally = RunTally()
    tally.preload(before.stages, before.epochs, before.decisions, incomplete=before.incomplete, partial=before.partial)
    figures = tally.figures(0)
    assert figures.earlier_incomplete == list(before.partial)
    assert (figures.baseline_source, figures.baseline_epoch) == ("host_only", EPOCHS)  # the transitions are whole
    assert growth_lines(figures)[-1] == f"earlier sessions' figures incomplete: {before.partial[0]}"
