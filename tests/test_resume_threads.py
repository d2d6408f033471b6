"""The trainer's torch thread count across resumes.

An earlier version's unset count is kept at the one thread it trained on, and a run at two threads killed and resumed
ends bitwise equal to an uninterrupted one at two threads."""

from __future__ import annotations

import json
import os
import sys
from typing import TYPE_CHECKING

import pytest

from esper.resume import threads_as_trained
from esper.resume_changes import resume_changes
from esper.run import start
from esper.start_checks import available_cpus
from schemas.config import RunConfig, TolariaConfig
from tests.test_e2e_run import assert_same_grown_weights, kill_when_said, run_esper, tiny_config
from tests.test_run_key import grown_config

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


def _manifest(run_dir: Path, **extra: object) -> Path:
    """A manifest listing one checkpoint, with ``extra`` keys (an earlier version's records no esper_version)."""
    checkpoints = run_dir / "checkpoints"
    checkpoints.mkdir(parents=True, exist_ok=True)
    entry = {"file": "step-32.pt", "sha256": "0" * 64, "size_bytes": 1, "global_step": 32, "epoch": 2}
    path = checkpoints / "manifest.json"
    path.write_text(json.dumps({"checkpoints": [entry | {"batch_index": 0}], **extra}), encoding="utf-8")
    return path


def _threads(num_threads: int | None) -> RunConfig:
    return RunConfig(tolaria=TolariaConfig(num_threads=num_threads))


def test_an_unset_thread_count_is_read_as_one_for_a_run_whose_checkpoints_name_no_version(tmp_path: Path) -> None:
    """Until the lanes fix an unset tolaria.num_threads trained on one thread, and the manifests of those versions
    record no esper_version: resumed on every core, the run silently trained on other threads than it had."""
    assert threads_as_trained(tmp_path, _threads(None)).tolaria.num_threads is None  # no checkpoint: starts over
    _manifest(tmp_path)
    assert threads_as_trained(tmp_path, _threads(None)).tolaria.num_threads == 1
    assert threads_as_trained(tmp_path, _threads(3)).tolaria.num_threads == 3  # set: as set
    _manifest(tmp_path, esper_version="0.1.0 (commit 0123abcd)")
    assert threads_as_trained(tmp_path, _threads(None)).tolaria.num_threads is None  # this version's: every core


def test_the_kept_count_is_no_change_of_the_resume(tmp_path: Path) -> None:
    """The run trained on one thread and goes on on one: no ``changed`` line; a count given with the resume is one."""
    _manifest(tmp_path)
    (tmp_path / "config.toml").write_text("[tolaria]\nepochs = 3\n", encoding="utf-8")
    kept = RunConfig(tolaria=TolariaConfig(epochs=3, num_threads=1))
    assert resume_changes(tmp_path, kept) == []
    [changed] = resume_changes(tmp_path, RunConfig(tolaria=TolariaConfig(epochs=3, num_threads=2)))
    assert changed.description == "tolaria.num_threads: 1 in the run, 2 now"


def _train_threads(run_dir: Path) -> list[int]:
    """Each session's trainer thread count, as its run_assembled line says."""
    lines = (run_dir / "events.jsonl").read_text(encoding="utf-8").splitlines()
    return [entry["train_threads"] for line in lines if (entry := json.loads(line)).get("event") == "run_assembled"]


def test_an_earlier_versions_run_resumed_on_its_own_config_trains_on_one_thread(tmp_path: Path) -> None:
    """The reviewer's case end to end: a run dir from before esper_version was recorded, its config.toml leaving
    num_threads unset, resumed from that config.toml where torch starts with every core."""
    cpus = available_cpus()
    if cpus is None or cpus < 2:
        pytest.skip("one CPU: every core is one thread, so the resume would train on one either way")
    config = tiny_config(tmp_path, epochs=2)
    run_dir = tmp_path / "run"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    run_esper(config, env, "--run-dir", str(run_dir))
    manifest_path = run_dir / "checkpoints" / "manifest.json"
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    del manifest["esper_version"]  # as an earlier version wrote it
    manifest_path.write_text(json.dumps(manifest), encoding="utf-8")
    assert "num_threads" not in (run_dir / "config.toml").read_text(encoding="utf-8")
    every_core = {key: value for key, value in env.items() if key != "OMP_NUM_THREADS"}

    run_esper(run_dir / "config.toml", every_core, "--resume", str(run_dir), "--set", "tolaria.epochs=3")

    assert _train_threads(run_dir) == [1, 1]
    events = (run_dir / "events.jsonl").read_text(encoding="utf-8")
    assert "tolaria.num_threads" not in events  # no change said: the run goes on as it trained
    assert "num_threads = 1" in (run_dir / "config.toml").read_text(encoding="utf-8")


async def test_kill_9_then_resume_at_two_threads_ends_bitwise_equal_to_an_uninterrupted_run_at_two(
    tmp_path: Path,
) -> None:
    """The suite pins one torch thread (tests/conftest.py); this run sets two in its config, which the trainer's lane
    takes over the environment's (and over the test process's own, where the uninterrupted run trains), and a resume
    after kill -9 still ends bitwise equal at that count."""
    config = grown_config(tmp_path)  # 4 epochs, every_k grafting from the first epoch end
    config.write_text(
        config.read_text(encoding="utf-8").replace("[tolaria]\n", "[tolaria]\nnum_threads = 2\n", 1), encoding="utf-8"
    )
    run_dir = tmp_path / "run"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    kill_when_said([sys.executable, "-m", "esper.run", str(config), "--run-dir", str(run_dir)], env, "epoch   3/")
    run_esper(config, env, "--resume", str(run_dir))
    reference_dir = tmp_path / "uninterrupted"
    reference = await (await start(config, reference_dir)).wait()
    assert reference.status == "completed", reference.error

    assert _train_threads(run_dir) == [2, 2]
    assert _train_threads(reference_dir) == [2]
    assert_same_grown_weights(run_dir / "checkpoints", reference_dir / "checkpoints", steps=4 * 16)
