"""The growth benchmark's bookkeeping: an untimed warm-up run before the timed arms, and no gap_closed without a gap."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from tests._bench_scripts import load_script

if TYPE_CHECKING:
    from pathlib import Path
    from types import ModuleType


def _fake_runs(
    bench: ModuleType, monkeypatch: pytest.MonkeyPatch, accuracy: dict[str, float]
) -> list[tuple[str, list[str]]]:
    """Replace the benchmark's runs with instant ones of the given test accuracy per arm; returns the calls made."""
    calls: list[tuple[str, list[str]]] = []

    async def run(overrides: list[str], run_dir: Path) -> object:
        calls.append((run_dir.name, list(overrides)))
        arm = run_dir.name.split("-")[1]
        return bench.RunResult(
            test_accuracy=accuracy.get(arm, 0.5),
            parameters_added=0,
            wall_s=7.0 if arm == "warmup" else 1.0,
            status="completed",
            packets=[],
            grafts=[],
            fossilized=[],
            germinations=0,
            blueprints=[],
            probe=[],
            overrides=overrides,
        )

    monkeypatch.setattr(bench, "_run", run)
    return calls


def test_one_untimed_warm_up_run_on_the_same_store_comes_before_the_timed_arms(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    bench = load_script("bench_morphogenesis")
    calls = _fake_runs(bench, monkeypatch, {})
    record = bench.bench_dataset("digits", 2, 3, tmp_path)

    name, overrides = calls[0]
    assert name == "digits-warmup"
    assert [n for n, _ in calls].count("digits-warmup") == 1
    assert "tolaria.epochs=1" in overrides
    assert "tolaria.epochs=3" not in overrides
    assert "tolaria.seed=0" in overrides
    urza = f"urza.root={tmp_path / 'urza'}"
    assert all(urza in o for _, o in calls)
    # Timed arms: every arm once per seed, none of them the warm-up (its 7 s is reported apart, not averaged in).
    assert len(calls) == 1 + 2 * len(bench.ARMS)
    assert record["warmup_wall_s"] == 7.0
    assert all(figures["wall_s_mean"] == 1.0 for figures in record["arms"].values())


@pytest.mark.parametrize("static_full", [0.9601, 0.9647])
def test_gap_closed_is_null_when_static_full_is_not_above_the_host(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, static_full: float
) -> None:
    bench = load_script("bench_morphogenesis")
    # Esper below the host, static_full further below (or level): the old ratio read 2.109 (or divided by zero).
    _fake_runs(bench, monkeypatch, {"esper": 0.9550, "host": 0.9647, "static_full": static_full})
    record = bench.bench_dataset("digits", 1, 2, tmp_path)
    assert record["gap_closed"] is None
    assert record["targets_met"]["gap_closed_ge_0.75_with_params_ratio_le_0.6"] is False


def test_gap_closed_is_the_fraction_of_a_positive_span(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    bench = load_script("bench_morphogenesis")
    _fake_runs(bench, monkeypatch, {"esper": 0.93, "host": 0.90, "static_full": 0.94})
    record = bench.bench_dataset("digits", 1, 2, tmp_path)
    assert record["gap_closed"] == 0.75
