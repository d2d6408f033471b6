"""End to end: a growing run with a learning-rate schedule, killed and resumed, ends as if uninterrupted.

A growing run with a cosine schedule, warm-up and gradient clipping, killed mid-run (kill -9) and resumed, ends bitwise
equal to the same run uninterrupted, run in the test's process (the schedule is a function of the step: no state of its
own to lose)."""

from __future__ import annotations

import json
import os
import sys
from typing import TYPE_CHECKING

import msgspec
import pytest

from esper.resume_checkpoints import resume_point
from esper.run import start
from schemas.run import RunSummary
from tests.test_e2e_run import assert_same_grown_weights, kill_when_said, run_esper, tiny_config

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

EPOCHS = 8  # long enough to grow: the controller grows only seeds it could keep before the run ends
STEPS_PER_EPOCH = 16
TUNING = 'lr = 0.003\nlr_schedule = "cosine"\nwarmup_steps = 20\nlr_min_factor = 0.1\ngrad_clip_norm = 1.0\n'


async def test_kill_9_then_resume_with_a_schedule_and_clipping_ends_bitwise_equal_to_an_uninterrupted_run(
    tmp_path: Path,
) -> None:
    config = tiny_config(tmp_path, epochs=EPOCHS)
    text = config.read_text(encoding="utf-8")
    assert text.count("lr = 0.003\n") == 1
    config.write_text(text.replace("lr = 0.003\n", TUNING), encoding="utf-8")
    run_dir = tmp_path / "run"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    kill_when_said([sys.executable, "-m", "esper.run", str(config), "--run-dir", str(run_dir)], env, "epoch   4/")
    step = resume_point(run_dir / "checkpoints")
    assert step is not None
    assert 0 < step < EPOCHS * STEPS_PER_EPOCH
    run_esper(config, env, "--resume", str(run_dir))
    summary = msgspec.json.decode((run_dir / "summary.json").read_bytes(), type=RunSummary)
    assert summary.status == "completed"
    assert summary.training is not None
    assert summary.training.resumed_from_step == step
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text(encoding="utf-8").splitlines()]
    said = [e for e in events if e.get("event") == "lr_schedule"]
    assert said
    assert said[-1]["schedule"] == "cosine"
    assert (said[-1]["warmup_steps"], said[-1]["total_steps"]) == (20, EPOCHS * STEPS_PER_EPOCH)
    assert (said[-1]["lr_min_factor"], said[-1]["grad_clip_norm"]) == (0.1, 1.0)

    reference_dir = tmp_path / "uninterrupted"
    reference = await (await start(config, reference_dir)).wait()
    assert reference.status == "completed", reference.error
    # The run grows, so seed groups are scheduled and clipped too.
    assert_same_grown_weights(run_dir / "checkpoints", reference_dir / "checkpoints", steps=EPOCHS * STEPS_PER_EPOCH)
