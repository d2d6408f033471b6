"""The step-probe hook: the growth benchmark's fixed-set loss sees every step and leaves training bitwise untouched."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import torch

from esper import start
from esper.wiring import RunHooks
from tests.test_e2e_run import _final_weights, tiny_config

if TYPE_CHECKING:
    from types import ModuleType

# Whole runs (several in some tests): on a loaded 2-core machine one test took over the 30 s default.
pytestmark = pytest.mark.timeout(120)

BENCH = Path(__file__).resolve().parent.parent / "scripts" / "bench_morphogenesis.py"


def _bench_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_morphogenesis", BENCH)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, module)  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
async def test_the_benchmark_probe_sees_every_step_and_leaves_a_growing_run_bitwise_unchanged(tmp_path: Path) -> None:
    bench = _bench_module()
    config = tiny_config(tmp_path, epochs=8)  # long enough to grow seeds it could keep
    # BP005 starts with random weights, so a graft moves the function and the probe has something to see. The first
    # run meets a cold artifact store, the second a warm one: tiny_config's far budgets keep a slow minute from
    # failing the first run's germination (a bounded wait, then a failed preparation) and not the second's.
    overrides = ['karn.include=["BP005"]']
    plain = await start(config, tmp_path / "plain", overrides=overrides)
    assert (await plain.wait()).status == "completed"
    probe = bench.LossProbe()
    probed = await start(config, tmp_path / "probed", overrides=overrides, hooks=RunHooks(step_probe=probe))
    summary = await probed.wait()
    assert summary.status == "completed", summary.error
    assert summary.training is not None

    log, want = _final_weights(tmp_path / "plain")
    log_probed, got = _final_weights(tmp_path / "probed")
    assert any(kind == "attach" for kind, _ in log), "the run should grow to be a real test"
    assert log_probed == log
    assert got.keys() == want.keys()
    for key, value in want.items():
        assert torch.equal(got[key], value), key
    # The probe set is the first PROBE_BATCHES batches, so it measures from that step to the last.
    steps = summary.training.global_step
    assert sorted(probe.losses) == list(range(bench.PROBE_BATCHES, steps + 1))
    assert all(math.isfinite(v) and v > 0 for v in probe.losses.values())


def test_the_jump_statistic_reads_the_probe_from_the_step_before_the_graft() -> None:
    bench = _bench_module()
    losses = [(step, 1.0) for step in range(0, 60)]
    # A graft applied after step 10: the loss after step 15 rises by 30 %, a rise after the window does not count.
    risen = [(s, 1.3 if s == 15 else 2.0 if s == 40 else v) for s, v in losses]
    assert math.isclose(bench.loss_jump_pct(risen, [10]), 30.0)
    # Against a host whose loss rose the same way on those steps, nothing is left.
    assert bench.loss_jump_pct(risen, [10], risen) == 0.0
