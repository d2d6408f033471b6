"""New run ids: sortable by their start, and unique among the runs a sweep starts in the same second."""

from __future__ import annotations

import datetime as dt
import re

from esper.run_args import new_run_id


def test_run_ids_of_one_second_are_unique_and_sortable() -> None:
    """4 random hex digits (16 bits): of 300 runs started in one second, two shared an id about half the time, and
    the second was refused its directory."""
    moment = dt.datetime(2026, 12, 7, 5, 30, 0, tzinfo=dt.UTC)
    ids = [new_run_id(moment) for _ in range(300)]
    assert all(re.fullmatch(r"20261207-053000-[0-9a-f]{8}", run_id) for run_id in ids)
    assert len(set(ids)) == len(ids)
    assert new_run_id(moment + dt.timedelta(seconds=1)) > max(ids)
