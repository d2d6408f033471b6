"""A run directory whose files are symbolic links, or whose metrics.csv is foreign, is refused in one line."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

import esper.run_dir
from esper.logs import reset_logging
from esper.run import main
from esper.run_dir import LOCK_NAME, claim_run_dir
from esper.run_files import RunFiles
from esper.run_key import KEY_FILE
from esper.run_parser import EXIT_CONFIG_ERROR
from esper.runtime.errors import ConfigError

if TYPE_CHECKING:
    from pathlib import Path


@pytest.fixture(autouse=True)
def _fresh_logging() -> None:
    reset_logging()


@pytest.mark.parametrize("resume", [False, True])
@pytest.mark.parametrize(
    "name", [LOCK_NAME, KEY_FILE, "events.jsonl", "metrics.csv", "summary.json", "field_reports.wal", "config.toml"]
)
def test_a_run_file_that_is_a_link_is_refused_and_its_target_kept(tmp_path: Path, name: str, resume: bool) -> None:
    """A planted run.lock link had the pid written over its target; an events.jsonl link took the whole event log."""
    target = tmp_path / "target"
    target.write_text("keep\n")
    run = tmp_path / "run"
    run.mkdir()
    (run / name).symlink_to(target)
    with pytest.raises(ConfigError) as refused:
        claim_run_dir(run, resume=resume)
    assert str(refused.value) == (
        f"run directory {run}: {name} is a symbolic link (to {target}), which the run would write through; remove it,"
        " or choose another --run-dir"
    )
    assert target.read_text() == "keep\n"


def test_the_names_the_config_gives_are_checked_and_a_dangling_link_too(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "log.jsonl").symlink_to(tmp_path / "nowhere")  # opening it for append would create the target
    with pytest.raises(ConfigError, match=r"log\.jsonl is a symbolic link"):
        claim_run_dir(run, resume=False, files=RunFiles(events="log.jsonl"))
    assert not (tmp_path / "nowhere").exists()
    claim_run_dir(run, resume=False).release()  # a name this run does not write is left alone


def test_a_checkpoints_link_or_a_link_inside_it_is_refused(tmp_path: Path) -> None:
    """A checkpoints link put the run's checkpoints and journals in another directory."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoints").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(ConfigError, match=r": checkpoints is a symbolic link \(to "):
        claim_run_dir(run, resume=True)
    (run / "checkpoints").unlink()
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "kasmina_journal.jsonl").symlink_to(elsewhere / "journal")
    with pytest.raises(ConfigError, match=r": checkpoints/kasmina_journal\.jsonl is a symbolic link"):
        claim_run_dir(run, resume=True)
    assert list(elsewhere.iterdir()) == []


def test_a_run_directory_that_is_itself_a_link_is_a_users_choice(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "run").symlink_to(real, target_is_directory=True)
    claim_run_dir(tmp_path / "run", resume=False).release()
    assert (real / LOCK_NAME).is_file()


def test_the_lock_is_never_opened_through_a_link_planted_after_the_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "target"
    target.write_text("keep\n")
    run = tmp_path / "run"
    run.mkdir()
    (run / LOCK_NAME).symlink_to(target)
    monkeypatch.setattr(esper.run_dir, "check_no_links", lambda directory, files: None)  # the link comes later
    with pytest.raises(ConfigError, match=rf"^run directory {run}: cannot write there: Too many levels of symbolic"):
        claim_run_dir(run, resume=False)
    assert target.read_text() == "keep\n"


def test_a_new_run_refuses_a_metrics_csv_it_could_not_append_to(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A stray metrics.csv with another header failed Nissa's open: 40 restarts, RestartIntensityExceeded, exit 1."""
    run = tmp_path / "stray"
    run.mkdir()
    (run / "metrics.csv").write_text("a,b,c\n1,2,3\n")  # with a row, it was taken for a run's (--resume it: failed)
    (tmp_path / "c.toml").write_text("[tolaria]\nepochs = 1\n")
    assert main([str(tmp_path / "c.toml"), "--run-dir", str(run)]) == EXIT_CONFIG_ERROR
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith(f"run directory {run}: {run / 'metrics.csv'}: header 'a,b,c' differs from the expected")
    assert err.endswith("; a new run would add its epochs to it: move it aside, or choose another --run-dir\n")
    assert (run / "metrics.csv").read_text() == "a,b,c\n1,2,3\n"
    (run / "metrics.csv").write_text("epoch,step\n")  # a refused attempt's header under another name is checked too
    with pytest.raises(ConfigError, match="header 'epoch,step' differs"):
        claim_run_dir(run, resume=False)
    claim_run_dir(run, resume=False, files=RunFiles(metrics="m.csv")).release()
