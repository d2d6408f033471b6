"""Files written atomically get the mode the umask gives a plain open(), but for the run's key and config.

That mode is for a run directory or a shared urza.root others read; the run's key and resolved config stay 0600.
mkstemp's 0600 used to survive the rename for all.
"""

from __future__ import annotations

import os
import stat
from typing import TYPE_CHECKING

import pytest
import torch

from actors.nissa.csv_writer import MetricsCsvWriter
from actors.nissa.metrics import epoch_row
from actors.tamiyo.heuristic import HeuristicState
from actors.tamiyo.outcomes import OutcomeState
from actors.tamiyo.state import TamiyoCounters, TamiyoState
from actors.tamiyo.stop_state import write_stop_state
from actors.tolaria.checkpoints import MANIFEST, CheckpointWriter
from actors.tolaria.snapshots import TrainState, rng_state
from actors.urza.store import UrzaStore
from esper.run_dir import write_run_config
from esper.run_key import KEY_FILE, keep_run_key, new_run_key
from esper.runtime.atomic_write import atomic_write_bytes, atomic_write_text, current_umask
from tests.nissa_packets import packet
from tests.test_e2e_run import tiny_config
from tests.test_urza_artifact import linear_blob

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_umask_is_read_without_changing_it(umask_022: None) -> None:
    assert current_umask() == 0o022
    os.umask(0o027)
    assert current_umask() == 0o027


def test_without_proc_the_umask_seen_at_import_is_used(tmp_path: Path) -> None:
    no_umask_line = tmp_path / "status"
    no_umask_line.write_text("Name:\tpython\n")
    expected = os.umask(0o022)
    os.umask(expected)
    # The module was imported under this process's umask, which the test run does not change between tests.
    assert current_umask(no_umask_line) == expected
    assert current_umask(tmp_path / "missing") == expected


@pytest.mark.parametrize(("umask", "expected"), [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_a_shared_atomic_write_follows_the_umask(tmp_path: Path, umask: int, expected: int) -> None:
    old = os.umask(umask)
    try:
        atomic_write_bytes(tmp_path / "a.bin", b"a", shared=True)
        atomic_write_text(tmp_path / "b.txt", "b", shared=True)
        atomic_write_bytes(tmp_path / "private.bin", b"p")
    finally:
        os.umask(old)
    assert (mode(tmp_path / "a.bin"), mode(tmp_path / "b.txt")) == (expected, expected)
    assert mode(tmp_path / "private.bin") == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin", "b.txt", "private.bin"]  # no temp file left


def test_the_run_key_and_the_resolved_config_stay_private(tmp_path: Path, umask_022: None) -> None:
    keep_run_key(tmp_path, new_run_key())
    write_run_config(tmp_path, 'run_id = "r"\n')
    assert mode(tmp_path / KEY_FILE) == 0o600
    assert mode(tmp_path / "config.toml") == 0o600


def _train_state(step: int) -> TrainState:
    return TrainState(
        global_step=step,
        epoch=0,
        batch_index=step,
        model={"layer.weight": torch.zeros(2, 3)},
        optimizer={"groups": [{"name": "host", "param_names": ["layer.weight"]}], "state": {}},
        rng=rng_state(),
        graft_log=[],
        paused={},
        counters={},
    )


def test_checkpoints_their_manifest_and_tamiyos_state_follow_the_umask(tmp_path: Path, umask_022: None) -> None:
    writer = CheckpointWriter(tmp_path, keep_last=2)
    writer.submit(_train_state(5))
    writer.close()  # the barrier: everything submitted is on disk
    state = TamiyoState(
        policy="heuristic",
        policy_version="heuristic-1",
        fallback=HeuristicState(),
        outcomes=OutcomeState(),
        counters=TamiyoCounters(),
        last_step=5,
    )
    write_stop_state(tmp_path / "tamiyo_state.json", state)
    assert mode(tmp_path / "step-5.pt") == 0o644
    assert mode(tmp_path / MANIFEST) == 0o644
    assert mode(tmp_path / "tamiyo_state.json") == 0o644


def test_urza_blobs_follow_the_umask(tmp_path: Path, umask_022: None) -> None:
    with UrzaStore(tmp_path / "urza", now=lambda: 1000.0) as store:
        sha = store.put(linear_blob()).sha256
        assert mode(store.blob_path(sha)) == 0o644


async def test_a_runs_outputs_follow_the_umask_but_its_key_and_config_do_not(tmp_path: Path, umask_022: None) -> None:
    from esper.run import start

    run_dir = tmp_path / "run"
    system = await start(tiny_config(tmp_path, epochs=1), run_dir)
    summary = await system.wait()
    assert summary.status == "completed", summary.error
    modes = {str(path.relative_to(run_dir)): mode(path) for path in run_dir.rglob("*") if path.is_file()}
    private = {"command.key", "config.toml"}
    assert {name: 0o600 for name in private} == {name: modes[name] for name in private}
    written_whole = ["summary.json", "report.png", "checkpoints/manifest.json", "checkpoints/tamiyo_state.json"]
    assert {name: modes[name] for name in written_whole} == dict.fromkeys(written_whole, 0o644)
    assert any(name.startswith("checkpoints/step-") for name in modes)
    assert {name: m for name, m in modes.items() if name not in private and m != 0o644} == {}


async def test_metrics_csv_cut_after_a_rollback_keeps_the_umasks_mode(tmp_path: Path, umask_022: None) -> None:
    path = tmp_path / "metrics.csv"
    writer = MetricsCsvWriter(path)
    await writer.open()
    await writer.append(epoch_row(packet(32, epoch=0, val=0.9), wall_time_s=1.0))
    await writer.append(epoch_row(packet(64, epoch=1, val=0.8), wall_time_s=2.0))
    assert await writer.cut_after(32) == 1
    await writer.close()
    assert mode(path) == 0o644


def test_a_file_system_that_refuses_modes_still_gets_the_write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Some mounts (CIFS, vfat) refuse chmod: the shared mode is best effort, the checkpoint or summary is written."""

    def refuse(fd: int, mode: int) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "fchmod", refuse)
    target = tmp_path / "summary.json"
    atomic_write_bytes(target, b"{}", shared=True)
    assert target.read_bytes() == b"{}"
