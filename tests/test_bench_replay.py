"""The replay benchmark warms up untimed, alternates its arms' order, and refuses fewer than three repeats."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from tests._bench_scripts import load_script

if TYPE_CHECKING:
    from pathlib import Path


def test_an_untimed_warm_up_then_the_arms_alternate_which_runs_first(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    bench = load_script("bench_replay")
    full = bench.journal(800)
    quarter = full[:200]
    ran: list[int] = []

    async def replay(entries: list[object], directory: Path) -> float:
        ran.append(len(entries))
        return float(len(ran))  # the call's position, so the samples say which calls were timed

    monkeypatch.setattr(bench, "replay", replay)
    small, large = bench.measure(quarter, full, 4, tmp_path)
    assert ran == [200, 200, 800, 800, 200, 200, 800, 800, 200]
    # The first call (the warm-up) is in neither arm's samples.
    assert small == [2.0, 5.0, 6.0, 9.0]
    assert large == [3.0, 4.0, 7.0, 8.0]


@pytest.mark.parametrize("repeats", [0, 1, 2])
def test_fewer_than_three_repeats_is_a_one_line_error(monkeypatch: pytest.MonkeyPatch, repeats: int) -> None:
    bench = load_script("bench_replay")
    monkeypatch.setattr("sys.argv", ["bench_replay.py", "--entries", "400", "--repeats", str(repeats)])
    with pytest.raises(SystemExit) as exited:
        bench.main()
    message = exited.value.code
    assert isinstance(message, str)
    assert "\n" not in message
    assert "--repeats must be >= 3" in message
    assert message.endswith(f"got {repeats}")


def test_three_repeats_and_enough_entries_are_accepted() -> None:
    bench = load_script("bench_replay")
    assert bench.check_args(400, 3) is None
    assert bench.check_args(399, 3) == "bench_replay.py: --entries must be >= 400, got 399"
