"""A whole compiled run with seeds growing in several slots trains as the eager run does, epoch by epoch.

A lifecycle change in a slot after the first is traced anew (dynamo alone reused a graph traced before it, from epoch 4
here). torch.compile runs with the "aot_eager" backend (a test-only patch, no production setting): the stale graph is
dynamo's doing, and inductor takes seconds per recompile on a CPU (the same run under inductor matched eager within
3.2e-7 per epoch, in about 30 s)."""

from __future__ import annotations

import csv
import functools
from typing import TYPE_CHECKING

import pytest
import torch

from esper.run import start
from tests.far_budgets import far_budgets

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


def write_config(tmp_path: Path, *, compile: bool) -> Path:
    """Six short epochs; every_k grafts BP001 into the next free slot at every epoch end, and the lifecycle's timers
    are short, so blocks.0 and blocks.1 are both grown and both change modes while the other is live. Its wall-clock
    budgets are far above any real time (tests/far_budgets.py)."""
    path = tmp_path / f"compile_{compile}.toml"
    path.write_text(
        f"""
[tolaria]
epochs = 6
dataset_samples = 600
batch_size = 64
state_every_steps = 4
command_lag_steps = 2
compile = {str(compile).lower()}
{far_budgets("tolaria")}

[kasmina]
stage_min_dwell_steps = 1
g2_window_steps = 1
blend_ramp_steps = 1
{far_budgets("kasmina")}

[tamiyo]
policy = "every_k"
every_k_epochs = 1
{far_budgets("tamiyo")}

[karn]
include = ["BP001"]

[urza]
root = "{tmp_path / "urza"}"

[logging]
console = false
state_interval_s = 60.0
""",
        encoding="utf-8",
    )
    return path


async def run(tmp_path: Path, *, compile: bool) -> list[dict[str, str]]:
    run_dir = tmp_path / f"run_{compile}"
    summary = await (await start(write_config(tmp_path, compile=compile), run_dir)).wait()
    assert summary.status == "completed", summary.error
    with (run_dir / "metrics.csv").open(encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


async def test_a_compiled_run_growing_several_slots_trains_as_the_eager_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    eager = await run(tmp_path, compile=False)
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    torch.compiler.reset()
    compiled = await run(tmp_path, compile=True)
    # The run did grow more than one slot, with modes changing in each.
    assert max(int(row["seeds_active"]) for row in eager) >= 2
    assert [row["epoch"] for row in compiled] == [row["epoch"] for row in eager]
    for e, c in zip(eager, compiled, strict=True):
        assert abs(float(e["train_loss"]) - float(c["train_loss"])) <= 1e-5, f"epoch {e['epoch']}"
