"""A whole run with tolaria.initial_seeds: the controller grows only the free slot.

The summary counts the initial seeds with the host (its baseline) rather than as parameters added or culled seeds."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import pytest
import torch

from actors.tolaria.build import build_trainee, load_data
from esper.config import load_config
from esper.run import start
from schemas.enums import SeedLifecycleStage
from tests.far_budgets import far_budgets

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.timeout(120)


def write_config(tmp_path: Path, *, max_active_seeds: int = 4) -> Path:
    """Five epochs of a few steps; every_k grafts BP001 into the first free slot (by name) at every epoch end, and
    blocks.0 and blocks.1 hold initial seeds, so blocks.2 is the only slot it may grow. The lifecycle's timers are
    short, so a graft at the first epoch ends could still pass G4 before the run ends (every_k grafts nothing that
    could not). Its wall-clock budgets are far above any real time (tests/far_budgets.py): a loaded machine must not
    fail the graft."""
    path = tmp_path / "initial.toml"
    path.write_text(
        f"""
[tolaria]
epochs = 5
dataset_samples = 600
batch_size = 64
state_every_steps = 4
command_lag_steps = 2
initial_seeds = ["blocks.0=BP001", "blocks.1=BP001"]
{far_budgets("tolaria")}

[kasmina]
max_active_seeds = {max_active_seeds}
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


def initial_seed_parameters(config_path: Path) -> int:
    tolaria = load_config(config_path).tolaria
    trainee = build_trainee(tolaria, load_data(tolaria), (), torch.device("cpu"))
    return sum(trainee.seed_parameters().values())


def events(run_dir: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in (run_dir / "events.jsonl").read_text(encoding="utf-8").splitlines()]


async def test_the_controller_grows_only_the_slot_no_initial_seed_holds(tmp_path: Path) -> None:
    """Every germination went into blocks.0, the first slot by name, which held an initial seed: the attach failed
    (an ERROR), the seed was culled as attach_failed and counted as a culled seed, and blocks.2 never grew."""
    path = write_config(tmp_path)
    run_dir = tmp_path / "run"
    summary = await (await start(path, run_dir)).wait()
    assert summary.status == "completed", summary.error
    log = events(run_dir)
    assert [e for e in log if e.get("name") == "seed_op_failed" or e["level"] == "error"] == []
    germinated = [
        e["slot"]
        for e in log
        if e["event"] == "seed_stage_changed" and e["to_stage"] == SeedLifecycleStage.GERMINATED.value
    ]
    assert germinated == ["blocks.2"]
    growth, training = summary.growth, summary.training
    assert growth is not None
    assert training is not None
    assert "culled" not in growth.seeds
    initial = initial_seed_parameters(path)
    assert initial > 0
    # The training line counts every seed; growth added only the grafted one.
    assert 0 < growth.parameters_added == training.seed_parameters - initial
    assert training.fossilized_parameters is not None
    assert growth.parameters_fossilized == training.fossilized_parameters - initial  # the initial ones are host


async def test_a_run_that_grows_nothing_added_no_parameters_beside_its_host_only_accuracy(tmp_path: Path) -> None:
    """The summary's host-only accuracy (no seed was grafted) stood beside the initial seeds' parameters as added."""
    path = write_config(tmp_path, max_active_seeds=0)
    summary = await (await start(path, tmp_path / "run")).wait()
    assert summary.status == "completed", summary.error
    growth, training = summary.growth, summary.training
    assert growth is not None
    assert training is not None
    assert (growth.baseline_source, growth.seeds, growth.parameters_added) == ("host_only", {}, 0)
    assert training.seed_parameters == initial_seed_parameters(path) > 0
