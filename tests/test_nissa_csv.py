"""metrics.csv: header and rows, exact values, resume after a restart without a second header, torn lines cut."""

from __future__ import annotations

import csv
from typing import TYPE_CHECKING

import pytest

from actors.nissa.csv_writer import MetricsCsvWriter, MetricsFileError, format_cell, header_line
from actors.nissa.metrics import METRICS_COLUMNS, epoch_row
from tests.nissa_packets import packet

if TYPE_CHECKING:
    from pathlib import Path


def _rows(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(path.read_text(encoding="utf-8").splitlines()))


async def test_header_then_one_row_per_append(tmp_path: Path) -> None:
    path = tmp_path / "metrics.csv"
    writer = MetricsCsvWriter(path)
    assert await writer.open() is None
    await writer.append(epoch_row(packet(32, epoch=0, val=0.9), wall_time_s=1.5))
    await writer.append(epoch_row(packet(64, epoch=1, val=0.1 + 0.2), wall_time_s=3.0))
    # Flushed per row: the file is complete before close().
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines[0] == ",".join(METRICS_COLUMNS)
    rows = _rows(path)
    assert [row["epoch"] for row in rows] == ["1", "2"]  # counted from 1, as the console and the report do
    assert float(rows[1]["val_loss"]) == 0.1 + 0.2  # repr keeps every digit
    assert rows[0]["test_loss"] == ""
    assert writer.rows_written == 2
    await writer.close()
    await writer.close()


async def test_append_after_restart_keeps_rows_and_writes_no_second_header(tmp_path: Path) -> None:
    path = tmp_path / "metrics.csv"
    first = MetricsCsvWriter(path)
    await first.open()
    await first.append(epoch_row(packet(32, epoch=0, val=0.9), wall_time_s=1.0))
    await first.close()

    second = MetricsCsvWriter(path)
    assert await second.open() == 1
    assert second.rows_written == 1
    await second.append(epoch_row(packet(64, epoch=1, val=0.8), wall_time_s=2.0))
    await second.close()

    text = path.read_text(encoding="utf-8")
    assert text.count(header_line()) == 1
    assert [row["epoch"] for row in _rows(path)] == ["1", "2"]


async def test_a_torn_last_line_is_cut_on_open(tmp_path: Path) -> None:
    path = tmp_path / "metrics.csv"
    writer = MetricsCsvWriter(path)
    await writer.open()
    await writer.append(epoch_row(packet(32, epoch=0, val=0.9), wall_time_s=1.0))
    await writer.close()
    with path.open("a", encoding="utf-8") as torn:
        torn.write("2,64,0.5")  # a crash mid-row
    resumed = MetricsCsvWriter(path)
    assert await resumed.open() == 1
    await resumed.append(epoch_row(packet(64, epoch=1, val=0.8), wall_time_s=2.0))
    await resumed.close()
    assert [row["epoch"] for row in _rows(path)] == ["1", "2"]


async def test_a_foreign_header_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "metrics.csv"
    path.write_text("epoch,loss\n0,1.0\n", encoding="utf-8")
    with pytest.raises(MetricsFileError, match=r"metrics.csv: header 'epoch,loss' differs"):
        await MetricsCsvWriter(path).open()


def test_cells_format_none_ints_floats_and_non_finite() -> None:
    assert [format_cell(v) for v in (None, 3, 0.25, float("nan"), float("inf"), float("-inf"))] == [
        "",
        "3",
        "0.25",
        "nan",
        "inf",
        "-inf",
    ]
