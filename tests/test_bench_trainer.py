"""The trainer benchmark measures the shipped tolaria configuration and reports nearest-rank percentiles."""

from __future__ import annotations

import tomllib

import msgspec
import pytest

from esper.config import load_config
from tests._bench_scripts import SCRIPTS, load_script

CONFIG = SCRIPTS.parent / "config.toml"


def test_the_benchmark_runs_the_shipped_tolaria_section_with_only_its_own_overrides() -> None:
    bench = load_script("bench_trainer")
    shipped = load_config(CONFIG).tolaria
    config = bench.bench_config(6)
    assert config == msgspec.structs.replace(shipped, epochs=6, device="cpu")
    # The packet cadence users run (config.toml ships 4; the schema default is 8).
    assert config.state_every_steps == tomllib.loads(CONFIG.read_text())["tolaria"]["state_every_steps"]
    assert config.dataset_samples == 4000


def test_the_json_names_the_non_default_keys_with_the_cadence() -> None:
    bench = load_script("bench_trainer")
    listed = bench.non_default(bench.bench_config(6))
    assert listed["state_every_steps"] == 4
    assert listed["epochs"] == 6
    assert listed["device"] == "cpu"
    assert "batch_size" not in listed  # equal to the default


@pytest.mark.parametrize(("n", "want"), [(1, 1.0), (30, 30.0), (100, 99.0), (200, 198.0), (1000, 990.0)])
def test_p99_is_the_nearest_rank(n: int, want: float) -> None:
    bench = load_script("bench_trainer")
    # Shuffled order: the helper sorts.
    values = [float(v) for v in range(n, 0, -1)]
    assert bench.p99(values) == want
