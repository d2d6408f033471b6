"""README's table of metrics.csv's columns names every column the writer emits, in the writer's order, and no other."""

from __future__ import annotations

import re
from pathlib import Path

from actors.nissa.metrics import METRICS_COLUMNS, epoch_row
from tests.nissa_packets import packet

README = Path(__file__).resolve().parent.parent / "README.md"
TABLE_INTRO = "metrics.csv's columns, in order"


def readme_columns() -> list[str]:
    """The backquoted names in the first cell of each row of the table after TABLE_INTRO, in order."""
    text = README.read_text(encoding="utf-8")
    lines = text[text.index(TABLE_INTRO) :].splitlines()
    start = next(index for index, line in enumerate(lines) if line.startswith("|"))
    names: list[str] = []
    for line in lines[start + 2 :]:  # past the header and its |---| line
        if not line.startswith("|"):
            break
        names += re.findall(r"`([^`]+)`", line.split("|")[1])
    return names


def test_the_readme_table_names_every_metrics_csv_column_in_order() -> None:
    """The README listed only some of the columns (the seeds_* counts, isolation_violations and wall_time_s had no
    word on their unit or scope)."""
    written = list(epoch_row(packet(20, val=0.5), wall_time_s=1.0))
    assert written == list(METRICS_COLUMNS)
    assert readme_columns() == written
