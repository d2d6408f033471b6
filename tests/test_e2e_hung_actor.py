"""End to end: an actor whose handler never returns is cancelled at the run's end, and the summary says so."""

from __future__ import annotations

import asyncio
import csv
from typing import TYPE_CHECKING, Any

import pytest

from actors.nissa.actor import Nissa
from esper.end_notes import end_notes, spans
from esper.run import start
from esper.summary_table import format_summary
from schemas.enums import ActorStatus
from schemas.state import SystemStatePacket
from tests.test_e2e_run import tiny_config

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.timeout(120)


async def test_a_nissa_hung_on_a_packet_is_counted_failed_and_the_summary_names_it_and_the_missing_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nissa's handler hung on a packet of epoch 3: cancelled at the shutdown deadline, the run still read
    "completed, exit 0" with "nissa stopped ... failed 0", and metrics.csv silently lacked epochs 3 and 4."""
    original = Nissa.handle
    hung: list[int] = []

    async def hanging(self: Nissa, msg: Any) -> None:
        if not hung and isinstance(msg, SystemStatePacket) and msg.global_step >= 2 * 16 + 4:
            hung.append(msg.global_step)
            await asyncio.Event().wait()
        await original(self, msg)

    monkeypatch.setattr(Nissa, "handle", hanging)
    run_dir = tmp_path / "run"
    overrides = ["weatherlight.shutdown_deadline_s=0.5"]
    summary = await (await start(tiny_config(tmp_path, epochs=4), run_dir, overrides)).wait()
    assert hung
    # Training completed: the run is completed (its figures are Tolaria's, whole); the table says what was lost.
    assert (summary.status, summary.exit_code) == ("completed", 0), summary.error
    nissa = {a.actor: a for a in summary.actors}["nissa"]
    assert (nissa.status, nissa.failed) == (ActorStatus.FAILED, 1)
    with (run_dir / "metrics.csv").open(encoding="utf-8") as file:
        assert [int(row["epoch"]) for row in csv.DictReader(file)] == [1, 2]
    assert summary.growth is not None
    assert summary.growth.end_notes == [
        "nissa did not stop within its shutdown deadline and was cancelled, with what it had not yet handled"
        " (events.jsonl: shutdown_deadline_exceeded)",
        "metrics.csv has no row for epochs 3-4 of the 4 trained (summary.json's training figures are complete)",
    ]
    table = format_summary(summary)
    assert "note: nissa did not stop within its shutdown deadline" in table
    assert "note: metrics.csv has no row for epochs 3-4 of the 4 trained" in table


def test_missing_epochs_are_said_as_ranges_and_a_complete_file_says_nothing(tmp_path: Path) -> None:
    assert spans([2, 5, 6, 7, 9]) == "2, 5-7, 9"
    metrics = tmp_path / "metrics.csv"
    metrics.write_text("epoch,train_loss\n1,0.5\n3,0.4\n", encoding="utf-8")
    assert end_notes([], metrics, 4) == [
        "metrics.csv has no row for epochs 2, 4 of the 4 trained (summary.json's training figures are complete)"
    ]
    assert end_notes([], metrics, 1) == []
    assert end_notes([], tmp_path / "absent.csv", 3) == [], "no file: nothing can be said"
