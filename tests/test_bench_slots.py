"""The slots benchmark's graft-stall p99 is the nearest-rank one and says how many trials it came from."""

from __future__ import annotations

import pytest

from tests._bench_scripts import load_script


@pytest.mark.parametrize(("n", "want"), [(1, 1.0), (100, 99.0), (200, 198.0)])
def test_p99_is_the_nearest_rank(n: int, want: float) -> None:
    bench = load_script("bench_slots")
    assert bench.p99([float(v) for v in range(n, 0, -1)]) == want


def test_the_graft_stall_p99_uses_it(monkeypatch: pytest.MonkeyPatch) -> None:
    bench = load_script("bench_slots")
    seen: list[list[float]] = []

    def fake_p99(values: list[float]) -> float:
        seen.append(list(values))
        return 0.0

    monkeypatch.setattr(bench, "p99", fake_p99)
    assert bench.graft_stall_ms_p99(5) == 0.0
    assert len(seen) == 1
    assert len(seen[0]) == 5
