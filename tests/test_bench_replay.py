"""The replay benchmark warms up untimed, alternates its arms' order, and refuses fewer than three repeats."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from tests._bench_scripts import load_script

if TYPE_CHECKING:
    from pathlib import Path


def test_an_untimed_warm_up_then_the_arms_alternate_which_runs_first_each_after_a_collection(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    bench = load_script("bench_replay")
    full = bench.journal(800)
    journals = {
        "small": bench.write_journal(full[:200], tmp_path / "small"),
        "large": bench.write_journal(full, tmp_path / "large"),
    }
    ran: list[str] = []
    collected: list[int] = []

    async def replay(directory: Path) -> float:
        ran.append(directory.name)
        return float(len(ran))  # the call's position, so the samples say which calls were timed

    monkeypatch.setattr(bench, "replay", replay)
    # The garbage of the replay before is collected ahead of each timed one (it was charged to the next arm).

    def collect() -> int:
        collected.append(len(ran))
        return 0

    monkeypatch.setattr(bench.gc, "collect", collect)
    frozen: list[int] = []
    monkeypatch.setattr(bench.gc, "freeze", lambda: frozen.append(len(ran)))
    small, large = bench.measure(journals, 4)
    assert ran == ["small", "small", "large", "large", "small", "small", "large", "large", "small"]
    # The first call (the warm-up) is in neither arm's samples.
    assert small == [2.0, 5.0, 6.0, 9.0]
    assert large == [3.0, 4.0, 7.0, 8.0]
    assert collected == [1, 1, 2, 3, 4, 5, 6, 7, 8]  # after the warm-up: once to freeze the heap, then before each
    assert frozen == [1]
    assert (tmp_path / "large" / bench.JOURNAL_FILENAME).read_bytes().count(b"\n") == 800


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
