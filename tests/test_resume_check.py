"""--resume refuses a config that would train a different run than the one in the directory."""

from __future__ import annotations

import functools
import hashlib
import json
import re
from typing import TYPE_CHECKING

import msgspec
import numpy as np
import pytest

import esper
from actors.kasmina.spec import lifecycle_settings
from actors.nissa.csv_writer import header_line
from actors.tolaria.checkpoint_codec import safetensors_bytes
from actors.tolaria.data_cache import _digest as _cache_digest
from esper.config import apply_overrides, dump_config
from esper.data_fingerprint import check_same_data, record_data
from esper.resume import PLANNER_KEYS, check_resumable, check_resume_files
from esper.run import main
from esper.run_history import already_trained, finishing_halt
from esper.run_parser import EXIT_CONFIG_ERROR
from esper.runtime.emergency import RESTORED
from esper.runtime.errors import ConfigError
from schemas.config import KasminaConfig, RunConfig, TolariaConfig
from schemas.config_platform import SecurityConfig
from schemas.run import RunSummary, TrainingFigures

if TYPE_CHECKING:
    from pathlib import Path

    from schemas.run import RunStatus


def _run_dir(tmp_path: Path, *overrides: str) -> Path:
    directory = tmp_path / "run"
    (directory / "checkpoints").mkdir(parents=True)
    (directory / "config.toml").write_text(dump_config(apply_overrides(RunConfig(), overrides)), encoding="utf-8")
    return directory


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ('tolaria.host_model="mlp"', "tolaria.host_model"),
        ("tolaria.seed=7", "tolaria.seed"),
        ("tolaria.lr=0.1", "tolaria.lr"),
        # The rate at each step and the update's size: another schedule or clip trains another run from the checkpoint.
        ('tolaria.lr_schedule="cosine"', "tolaria.lr_schedule"),
        ("tolaria.warmup_steps=10", "tolaria.warmup_steps"),
        ("tolaria.grad_clip_norm=1.0", "tolaria.grad_clip_norm"),
        ('kasmina.slot_targets=["blocks.0"]', "kasmina.slot_targets"),
        ('tamiyo.policy="every_k"', "tamiyo.policy"),
        ("tolaria.command_lag_steps=4", "tolaria.command_lag_steps"),
        ("kasmina.stage_min_dwell_steps=200", "kasmina.stage_min_dwell_steps"),
        ("kasmina.breaker.failure_threshold=9", "kasmina.breaker"),
        # The resumed controller is offered the first start's blueprints: the new selection left it none, silently.
        ('karn.include=["BP004"]', "karn.include"),
        ('karn.exclude=["BP001"]', "karn.exclude"),
        # The journal's signed commands are verified with the key of this id, read from this variable.
        ('security.key_id="other"', "security.key_id"),
        ('security.secret_env="OTHER_SECRET"', "security.secret_env"),
    ],
)
def test_a_change_to_what_the_run_trains_is_refused(tmp_path: Path, override: str, key: str) -> None:
    directory = _run_dir(tmp_path)
    with pytest.raises(ConfigError, match=rf"^--resume {directory}: {key} is .* in the run and .* here; "):
        check_resumable(directory, apply_overrides(RunConfig(), [override]))


@pytest.mark.parametrize("setting", ["g4_max_step_latency_growth = 0.5", "confidence_k = 9.0", "confidence_tau = 0.7"])
def test_a_run_an_earlier_version_made_with_a_key_now_inert_resumes(tmp_path: Path, setting: str) -> None:
    """The key did nothing in that run either: its config.toml is read, not refused as one setting an inert key."""
    directory = _run_dir(tmp_path)
    config = directory / "config.toml"
    key = setting.split(" = ")[0]
    written = re.sub(rf"^{key} = .*$", setting, config.read_text(encoding="utf-8"), count=1, flags=re.MULTILINE)
    assert setting in written
    config.write_text(written, encoding="utf-8")
    check_resumable(directory, RunConfig())


@pytest.mark.parametrize(
    "override",
    ["tolaria.epochs=500", 'tolaria.device="cpu"', 'logging.level="debug"', "tamiyo.plateau_patience_epochs=5"],
)
def test_training_further_and_other_settings_may_change(tmp_path: Path, override: str) -> None:
    check_resumable(_run_dir(tmp_path), apply_overrides(RunConfig(), [override]))


@pytest.mark.parametrize("damage", ["unreadable", "missing", "empty"])
def test_a_run_directory_without_a_readable_config_is_refused(tmp_path: Path, damage: str) -> None:
    """Without its config.toml nothing says which run this is: a resume with another host model crashed at every
    restart and then rewrote config.toml with its own values, locking the right resume out."""
    directory = _run_dir(tmp_path)
    if damage == "missing":
        (directory / "config.toml").unlink()
    elif damage == "empty":
        (directory / "config.toml").write_text("", encoding="utf-8")  # read as all defaults, it blamed the user
    else:
        (directory / "config.toml").write_text("[tolaria\n", encoding="utf-8")
    with pytest.raises(ConfigError) as refused:
        check_resumable(directory, apply_overrides(RunConfig(), ['tolaria.host_model="mlp"']))
    text = str(refused.value)
    assert text.startswith(f"--resume {directory}: the run's config.toml cannot be read (")
    assert "\n" not in text


def test_the_cli_refuses_in_one_line_and_leaves_the_run_untouched(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = _run_dir(tmp_path)
    before = (directory / "config.toml").read_bytes()
    (tmp_path / "c.toml").write_text('[tolaria]\nhost_model = "mlp"\n', encoding="utf-8")
    assert main([str(tmp_path / "c.toml"), "--resume", str(directory)]) == EXIT_CONFIG_ERROR
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith(f"--resume {directory}: tolaria.host_model is 'cnn1d' in the run and 'mlp' here")
    assert (directory / "config.toml").read_bytes() == before
    assert sorted(p.name for p in directory.iterdir()) == ["checkpoints", "config.toml"]


@pytest.mark.parametrize("kind", ["missing", "file"])
def test_a_resume_path_that_is_no_directory_is_named_as_such(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    """Not the checkpoints' message, which tells the user to start a run at the mistyped path."""
    config = tmp_path / "c.toml"
    config.write_text(f'[urza]\nroot = "{tmp_path / "urza"}"\n[logging]\nconsole = false\n', encoding="utf-8")
    target = tmp_path / "no-such-run"
    if kind == "file":
        target.write_text("x", encoding="utf-8")
    assert main([str(config), "--resume", str(target)]) == EXIT_CONFIG_ERROR
    err = capsys.readouterr().err
    said = "no such run directory" if kind == "missing" else "not a directory"
    assert err == f"--resume {target}: {said} (give the directory of the run to resume)\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.toml"] + ([] if kind == "missing" else ["no-such-run"])


def test_a_run_whose_every_checkpoint_is_corrupt_is_refused_before_any_actor_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "c.toml"
    config.write_text(
        f'[tolaria]\nepochs = 2\ndataset_samples = 600\n[urza]\nroot = "{tmp_path / "urza"}"\n'
        "[logging]\nconsole = false\n",
        encoding="utf-8",
    )
    run_dir = tmp_path / "run"
    assert main([str(config), "--run-dir", str(run_dir)]) == 0
    for checkpoint in (run_dir / "checkpoints").glob("step-*.pt"):
        checkpoint.write_bytes(b"garbage")
    capsys.readouterr()
    assert main([str(config), "--set", "tolaria.epochs=4", "--resume", str(run_dir)]) == EXIT_CONFIG_ERROR
    err = capsys.readouterr().err
    listed = len(list((run_dir / "checkpoints").glob("step-*.pt")))
    assert err.endswith(
        f"--resume {run_dir}: {run_dir / 'checkpoints'}: no checkpoint passes its checksum ({listed} listed); nothing"
        " to resume from (a new run needs another --run-dir)\n"
    )
    events = (run_dir / "events.jsonl").read_text(encoding="utf-8")
    assert '"child_failed"' not in events
    assert '"checkpoint_corrupt"' in events


def test_a_corrupt_newest_checkpoint_is_said_once_on_a_resume(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One flipped byte in the newest checkpoint gave five checkpoint_corrupt warnings on the console, two before
    logging started (with a relative path): each lookup and check that read it said it."""
    config = tmp_path / "c.toml"
    config.write_text(f'[tolaria]\nepochs = 2\ndataset_samples = 600\n[urza]\nroot = "{tmp_path / "urza"}"\n')
    run_dir = tmp_path / "run"
    assert main([str(config), "--run-dir", str(run_dir)]) == 0
    (run_dir / "summary.json").unlink()  # killed before its summary: the resume finishes it from step-1's file
    newest = max((run_dir / "checkpoints").glob("step-*.pt"), key=lambda p: int(p.stem.removeprefix("step-")))
    data = bytearray(newest.read_bytes())
    data[len(data) // 2] ^= 0xFF
    newest.write_bytes(bytes(data))
    capsys.readouterr()
    assert main([str(config), "--resume", str(run_dir)]) == 0
    said = capsys.readouterr()
    assert (said.out + said.err).count("checkpoint_corrupt") == 1, said
    events = (run_dir / "events.jsonl").read_text(encoding="utf-8")
    assert events.count('"checkpoint_corrupt"') == 1


def test_only_the_first_checkpoints_file_without_its_manifest_starts_the_run_over(tmp_path: Path) -> None:
    """A kill between the first checkpoint's file and its manifest starts over; a later lone file (a manifest lost
    with tolaria.checkpoint_keep_last = 1) started over too, throwing the run's progress away: it is refused."""
    checkpoints = tmp_path / "checkpoints"
    checkpoints.mkdir()
    (checkpoints / "step-16.pt").write_bytes(b"weights")
    check = functools.partial(check_resume_files, tmp_path, run_id="r", key=None, security=SecurityConfig())
    check(first_checkpoint_step=16)  # the first checkpoint's file: starts over
    with pytest.raises(ConfigError, match=r"step-16\.pt present"):
        check(first_checkpoint_step=None)  # no periodic checkpoint: the lone file could be any
    (checkpoints / "step-16.pt").rename(checkpoints / "step-80.pt")
    with pytest.raises(ConfigError, match=r"step-80\.pt present.*nothing to resume from"):
        check(first_checkpoint_step=16)
    (checkpoints / "step-80.pt").rename(checkpoints / "step-7.pt")
    check(first_checkpoint_step=16)  # a stop's checkpoint in the first epoch, before any periodic one


def test_checkpoints_without_their_manifest_or_journal_are_refused_without_touching_anything(tmp_path: Path) -> None:
    checkpoints = tmp_path / "checkpoints"
    checkpoints.mkdir()
    check_resume_files(
        tmp_path, run_id="r", key=None, security=SecurityConfig()
    )  # stopped before its first checkpoint: it starts over
    (checkpoints / "step-200.pt").write_bytes(b"weights")
    (checkpoints / "step-220.pt").write_bytes(b"weights")
    with pytest.raises(ConfigError) as refused:
        check_resume_files(tmp_path, run_id="r", key=None, security=SecurityConfig())
    assert str(refused.value) == (
        f"--resume {tmp_path}: checkpoints/manifest.json is missing or lists no checkpoint (step-200.pt, step-220.pt"
        " present, but a checkpoint is loaded only once its SHA-256 matches the manifest); nothing to resume from:"
        " start a new run with another --run-dir"
    )
    (checkpoints / "manifest.json").write_text("{not json")
    with pytest.raises(ConfigError, match=r"manifest.json: unreadable manifest"):
        check_resume_files(tmp_path, run_id="r", key=None, security=SecurityConfig())
    # Stopped before the first step (a Ctrl-C while the actors start): a step-0 checkpoint and no journal resume.
    start = {"file": "step-0.pt", "sha256": "0" * 64, "size_bytes": 7, "global_step": 0, "epoch": 0, "batch_index": 0}
    (checkpoints / "manifest.json").write_text(json.dumps({"checkpoints": [start]}))
    check_resume_files(tmp_path, run_id="r", key=None, security=SecurityConfig())
    info = {"file": "step-220.pt", "sha256": "0" * 64, "size_bytes": 7, "global_step": 220, "epoch": 11}
    info["batch_index"] = 0
    (checkpoints / "manifest.json").write_text(json.dumps({"checkpoints": [start, info]}))
    with pytest.raises(ConfigError, match=r"kasmina_journal.jsonl is missing, so the seeds' lifecycle cannot be"):
        check_resume_files(tmp_path, run_id="r", key=None, security=SecurityConfig())
    journal = checkpoints / "kasmina_journal.jsonl"
    journal.write_text('{"type":"JournalReceipt","rec\n{"type":"JournalRec')  # a bad line, then a torn last one
    with pytest.raises(ConfigError) as corrupt:
        check_resume_files(tmp_path, run_id="r", key=None, security=SecurityConfig())
    assert str(corrupt.value).startswith(f"--resume {tmp_path}: {journal} line 1 does not decode (")
    assert str(corrupt.value).endswith("so the seeds' lifecycle cannot be rebuilt; nothing to resume from")
    journal.write_text('{"type":"JournalRec')  # only a torn last line: a crash mid-write, which a resume survives
    check_resume_files(tmp_path, run_id="r", key=None, security=SecurityConfig())
    metrics = tmp_path / "metrics.csv"
    metrics.write_text("epoch,something,else\n0,1,2\n", encoding="utf-8")  # not this version's columns
    with pytest.raises(ConfigError) as foreign:
        check_resume_files(tmp_path, run_id="r", key=None, security=SecurityConfig())
    assert str(foreign.value).startswith(f"--resume {tmp_path}: {metrics}: header 'epoch,something,else' differs")
    assert str(foreign.value).endswith("could not add its epochs to it (move it aside to start a new one)")
    metrics.write_text(header_line() + "3,", encoding="utf-8")  # a torn row only: Nissa cuts it
    check_resume_files(tmp_path, run_id="r", key=None, security=SecurityConfig())
    metrics.unlink()
    assert journal.read_text() == '{"type":"JournalRec'  # checked, not repaired: the refused resume changed nothing
    assert sorted(p.name for p in checkpoints.iterdir()) == [
        "kasmina_journal.jsonl",
        "manifest.json",
        "step-200.pt",
        "step-220.pt",
    ]


# A value other than the default for each KasminaConfig key the lifecycle planner is built from.
_PLANNER_CHANGES = {
    "stage_min_dwell_steps": 200,
    "embargo_epochs": 5,
    "max_active_seeds": 1,
    "seed_memory_budget_mb": 1.0,
    "g2_window_steps": 3,
    "g2_max_loss_variance": 0.5,
    "g2_max_gradient_norm": 7.0,
    "g4_min_improvement": 0.1,
    "gate_patience_steps": 1000,
}


def test_every_key_that_changes_the_lifecycle_planner_must_stay_the_same_on_resume() -> None:
    base = KasminaConfig()
    for key in base.__struct_fields__:
        changed = _PLANNER_CHANGES.get(key)
        if changed is None:
            continue
        settings = lifecycle_settings(msgspec.structs.replace(base, **{key: changed}))
        assert settings != lifecycle_settings(base), f"kasmina.{key} does not reach the planner"
        assert key in PLANNER_KEYS, f"kasmina.{key} changes the planner but a resume may change it"
    # ... and nothing else among the kasmina keys changes the planner's settings.
    others = [key for key in base.__struct_fields__ if key not in _PLANNER_CHANGES and key != "breaker"]
    for key in others:
        value = getattr(base, key)
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        altered = msgspec.structs.replace(base, **{key: value + 1})
        assert lifecycle_settings(altered) == lifecycle_settings(base), f"kasmina.{key} reaches the planner"


def test_a_resume_on_another_npz_file_is_refused(tmp_path: Path) -> None:
    """The README promises a resume refuses other data; the npz file's bytes were never compared (the same shapes
    trained on silently, other shapes ended in a restart storm)."""
    data = tmp_path / "data.npz"
    arrays = {"x_train": np.zeros((20, 3), np.float32), "y_train": np.arange(20) % 2}
    arrays |= {"x_test": np.zeros((4, 3), np.float32), "y_test": np.array([0, 1, 0, 1])}
    np.savez(data, **arrays)  # type: ignore[arg-type]  # numpy's stub wants ArrayLike values; these are arrays
    tolaria = TolariaConfig(dataset="npz", npz_path=str(data))
    run = tmp_path / "run"
    run.mkdir()
    record_data(run, tolaria)
    check_same_data(run, tolaria)
    arrays["x_train"] = np.ones((20, 3), np.float32)
    np.savez(data, **arrays)  # type: ignore[arg-type]  # as above
    with pytest.raises(ConfigError) as refused:
        check_same_data(run, tolaria)
    assert str(refused.value).startswith(f"--resume {run}: the run trained on {data} (SHA-256 ")
    assert str(refused.value).endswith("a resume continues the same training on the same data")
    assert f"and tolaria.npz_path = '{data}' is SHA-256 " in str(refused.value), "the setting is named"
    assert "... now;" in str(refused.value)
    moved = tmp_path / "moved.npz"
    data.rename(moved)
    with pytest.raises(ConfigError) as refused:
        check_same_data(run, TolariaConfig(dataset="npz", npz_path=str(moved)))
    assert f"and tolaria.npz_path = '{moved}' is SHA-256 " in str(refused.value), "the file it reads is named"
    data = moved.rename(data)
    (run / "data.json").write_text("garbage", encoding="utf-8")  # damaged: it must not wave other data through
    with pytest.raises(ConfigError, match=rf"^--resume {run}: {run / 'data.json'} cannot be read \("):
        check_same_data(run, tolaria)
    with pytest.raises(ConfigError, match=r"data.json is missing; it records the npz data the run trained on"):
        check_same_data(tmp_path, tolaria)  # an npz run without its record: deleting it must not wave data through
    check_same_data(tmp_path, TolariaConfig())  # a built-in data set records nothing: nothing to compare
    record_data(tmp_path / "mnist", TolariaConfig())
    assert not (tmp_path / "mnist").exists()


@pytest.mark.parametrize(
    ("override", "key", "before", "after"),
    [
        ('nissa.metrics_csv="m2.csv"', "nissa.metrics_csv", "metrics.csv", "m2.csv"),
        ('nissa.summary_json="s2.json"', "nissa.summary_json", "summary.json", "s2.json"),
        ('logging.json_file="e2.jsonl"', "logging.json_file", "events.jsonl", "e2.jsonl"),
    ],
)
def test_a_resume_that_renames_the_runs_files_is_refused(
    tmp_path: Path, override: str, key: str, before: str, after: str
) -> None:
    """The earlier sessions' history was read under the new names, missing: the summary forgot everything before the
    resume, and the history was split across two files."""
    directory = _run_dir(tmp_path)
    with pytest.raises(ConfigError) as refused:
        check_resumable(directory, apply_overrides(RunConfig(), [override]))
    assert str(refused.value) == (
        f"--resume {directory}: {key} is {before!r} in the run and {after!r} here; a resume continues the same"
        " training, in the same files, which hold its history (drop that change, or start a new run)"
    )


def test_every_differing_key_is_named_at_once(tmp_path: Path) -> None:
    directory = _run_dir(tmp_path)
    with pytest.raises(ConfigError) as refused:
        check_resumable(directory, apply_overrides(RunConfig(), ["tolaria.lr=0.1", "tolaria.seed=7"]))
    text = str(refused.value)
    assert text == (
        f"--resume {directory}: tolaria.seed is 0 in the run and 7 here, tolaria.lr is 0.001 in the run and 0.1 here;"
        " a resume continues the same training (drop those changes, or start a new run)"
    )


def _trained_100_epochs(tmp_path: Path, data: bytes = b"a checkpoint's bytes") -> Path:
    """A run directory whose one good checkpoint, step-300.pt (``data``), ended epoch 100 (no summary.json)."""
    run_dir = _run_dir(tmp_path)
    (run_dir / "checkpoints" / "step-300.pt").write_bytes(data)
    entry = {
        "file": "step-300.pt",
        "sha256": hashlib.sha256(data).hexdigest(),
        "size_bytes": len(data),
        "global_step": 300,
        "epoch": 100,
        "batch_index": 0,
    }
    (run_dir / "checkpoints" / "manifest.json").write_text(json.dumps({"checkpoints": [entry]}), encoding="utf-8")
    return run_dir


def _write_summary(run_dir: Path, status: RunStatus, step: int, epochs: int, **training: object) -> None:
    figures = TrainingFigures(epochs=epochs, global_step=step, host_parameters=10, seed_parameters=0)
    summary = RunSummary(
        run_id="r",
        run_dir=str(run_dir),
        status=status,
        started_at="2026-12-06T00:00:00Z",
        duration_s=1.0,
        exit_code=0,
        dead_letters=0,
        training=msgspec.structs.replace(figures, **training),
    )
    (run_dir / "summary.json").write_bytes(msgspec.json.encode(summary))


def test_the_nothing_to_resume_hint_counts_from_the_epochs_trained(tmp_path: Path) -> None:
    """Run r1b of the long sweep (100 epochs) resumed with tolaria.epochs = 60 was told to try 70: still nothing."""
    run_dir = _trained_100_epochs(tmp_path)
    _write_summary(run_dir, "completed", 300, 100, completed=True)
    notice = already_trained(run_dir, 60)
    assert notice is not None
    assert "already trained 100 epochs, more than tolaria.epochs = 60 epochs (step-300.pt)" in notice
    assert notice.endswith("(raise tolaria.epochs past 100, e.g. --set tolaria.epochs=110, to train further)")
    assert "already trained 100 of tolaria.epochs = 100 epochs" in (already_trained(run_dir, 100) or "")
    assert already_trained(run_dir, 101) is None


def test_a_run_killed_after_its_last_checkpoint_before_its_summary_is_left_to_the_resume_to_finish(
    tmp_path: Path,
) -> None:
    """Its resume was turned away as "already trained": the test split, scored only after the last checkpoint, was
    never scored and summary.json never written. Now only a run that trained more epochs than the resume names is
    turned away, told which tolaria.epochs finishes it (a summary of 60 epochs would misstate a run of 100)."""
    run_dir = _trained_100_epochs(tmp_path)
    assert already_trained(run_dir, 100) is None
    assert already_trained(run_dir, 101) is None
    notice = already_trained(run_dir, 60)
    assert notice is not None
    assert notice.endswith("; its summary was never written: --set tolaria.epochs=100 finishes it")


def test_an_earlier_sessions_summary_is_not_the_runs(tmp_path: Path) -> None:
    """Every session that ends writes summary.json: a Ctrl-C's (status interrupted, step 22, no test score) or that of
    a shorter run resumed with more epochs counted as the run's summary, and a resume killed after the last checkpoint
    could never be finished ("already trained"). Only a summary of the last good checkpoint counts."""
    run_dir = _trained_100_epochs(tmp_path)
    _write_summary(run_dir, "interrupted", 22, 0)
    assert already_trained(run_dir, 100) is None
    notice = already_trained(run_dir, 60)
    assert notice is not None
    assert notice.endswith(
        "; its summary is not that checkpoint's (summary.json is an earlier session's (status interrupted, step 22)):"
        " --set tolaria.epochs=100 finishes it"
    )
    _write_summary(run_dir, "completed", 12, 4, completed=True)  # the run before a --set tolaria.epochs=100
    assert already_trained(run_dir, 100) is None
    _write_summary(run_dir, "completed", 300, 100, completed=True)
    assert "already trained 100 of tolaria.epochs = 100 epochs (step-300.pt); nothing" in (
        already_trained(run_dir, 100) or ""
    )


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"", "summary.json is empty"),
        (b"\n", "summary.json is empty"),
        (b'{"run_id": "2026', "summary.json is torn or not a summary"),
        (b"{}", "summary.json is torn or not a summary"),
        (b"\xff\xfe", "summary.json is torn or not a summary"),
        (b'{"run_id": "r", "run_dir": "d", "status": "failed", "started_at": "", "duration_s": 1.0, "exit_code": 1,'
         b' "dead_letters": 0}', "summary.json is an earlier session's (status failed, no training figures)"),
    ],
)  # fmt: skip
def test_a_torn_or_empty_summary_is_no_summary(tmp_path: Path, data: bytes, problem: str) -> None:
    """A summary.json that existed counted as written, torn (a crash in its write) or empty: its resume said "nothing
    to resume" and the run kept no summary for good."""
    run_dir = _trained_100_epochs(tmp_path)
    (run_dir / "summary.json").write_bytes(data)
    assert already_trained(run_dir, 100) is None
    notice = already_trained(run_dir, 60)
    assert notice is not None
    assert f"; its summary is not that checkpoint's ({problem}" in notice


def test_the_notice_of_a_run_that_halted_at_its_end_says_so(tmp_path: Path) -> None:
    """A run halted at L4 at its last epoch end was told only "already trained ... nothing to resume"."""
    run_dir = _trained_100_epochs(tmp_path)
    reason = "3 failed epochs in a row (the last: hook_budget)"
    _write_summary(run_dir, "failed", 300, 100, halted=True, halt_reason=reason, emergency_level=4)
    notice = already_trained(run_dir, 100)
    assert notice is not None
    assert f"already trained 100 of tolaria.epochs = 100 epochs (step-300.pt), where it halted at L4 ({reason});" in (
        notice
    )


def _halts_checkpoint(
    tmp_path: Path, level: int, events: list[dict[str, object]], halt_reason: str | None = None
) -> Path:
    """A run directory whose checkpoint step-300.pt (epoch 100) holds ``level`` (and ``halt_reason`` when given, as
    the halt's checkpoint keeps it) in its header, with ``events``."""
    counters: dict[str, object] = {"emergency_level": level}
    if halt_reason is not None:
        counters["halt_reason"] = halt_reason
    header = {"counters": counters}
    run_dir = _trained_100_epochs(tmp_path, safetensors_bytes([], {"esper": json.dumps(header)}))
    lines = [json.dumps(event) for event in events]
    (run_dir / "events.jsonl").write_text("\n".join([*lines, '{"event": "training_fin']), "utf-8")  # torn at the end
    return run_dir


def test_the_halt_a_finishing_resume_keeps_gives_its_reason_on_record(tmp_path: Path) -> None:
    """A resume that finishes a run from the checkpoint an L4 halt wrote says the halt's reason: the trainer's
    training_finished line, else the L4 signal at that step, else one naming the step and L4."""
    reason = "3 failed epochs in a row (the last: hook_budget)"
    finished = {"event": "training_finished", "status": "halted", "global_step": 300, "halt_reason": reason}
    signal = {"event": "emergency_signal", "msg_level": 4, "step": 300, "reason": "failed_epochs_streak: 3"}
    restored = {"event": "emergency_signal", "msg_level": 4, "step": 300, "reason": RESTORED}
    earlier = {**finished, "global_step": 150, "halt_reason": "an earlier halt"}
    cases = [
        ([signal, finished, restored], reason),
        ([earlier, signal, restored], "L4 at step 300: failed_epochs_streak: 3"),
        ([earlier, restored], "an emergency halt (L4) at step 300, its reason not in events.jsonl"),
    ]
    for index, (events, want) in enumerate(cases):
        run_dir = _halts_checkpoint(tmp_path / str(index), 4, events)
        assert finishing_halt(run_dir, 300, 100) == want
        assert finishing_halt(run_dir, 300, 101) is None  # epochs are left to train: it trains on from L2
    assert finishing_halt(_halts_checkpoint(tmp_path / "l3", 3, [finished]), 300, 100) is None
    assert finishing_halt(run_dir, None, 100) is None


def test_the_reason_a_halts_checkpoint_keeps_is_the_one_a_finishing_resume_gives(tmp_path: Path) -> None:
    """A kill after the halt's checkpoint, before training_finished, left only the L4 signal's wording ("L4 at step
    300: failed_epochs_streak: 3 ..."), not the summary's: the checkpoint's own reason comes first."""
    reason = "3 failed epochs in a row (the last: hook_budget)"
    signal = {"event": "emergency_signal", "msg_level": 4, "step": 300, "reason": "failed_epochs_streak: 3"}
    for index, events in enumerate([[signal], []]):
        run_dir = _halts_checkpoint(tmp_path / str(index), 4, events, halt_reason=reason)
        assert finishing_halt(run_dir, 300, 100) == reason
    assert finishing_halt(_halts_checkpoint(tmp_path / "l3", 3, [], halt_reason=reason), 300, 100) is None


def test_a_halt_is_read_only_from_a_checkpoint_that_passes_its_checksum(tmp_path: Path) -> None:
    """checkpoint_halt read the header of a file that failed its SHA-256 (which the resume's load skips): an L3
    checkpoint whose level byte was damaged to 4 finished the run as halted."""
    run_dir = _halts_checkpoint(tmp_path, 3, [], halt_reason="a reason")
    assert finishing_halt(run_dir, 300, 100) is None
    checkpoint = run_dir / "checkpoints" / "step-300.pt"
    data = checkpoint.read_bytes()
    damaged = data.replace(b'emergency_level\\": 3', b'emergency_level\\": 4')
    assert damaged != data
    checkpoint.write_bytes(damaged)
    assert finishing_halt(run_dir, 300, 100) is None


def test_a_manifest_nested_past_the_recursion_limit_is_an_unreadable_manifest(tmp_path: Path) -> None:
    """The json module recursed once per "[" and ended the resume with a RecursionError traceback (exit 1)."""
    checkpoints = tmp_path / "checkpoints"
    checkpoints.mkdir()
    (checkpoints / "step-20.pt").write_bytes(b"weights")
    (checkpoints / "manifest.json").write_text('{"checkpoints": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(ConfigError) as refused:
        check_resume_files(tmp_path, run_id="r", key=None, security=SecurityConfig())
    assert str(refused.value).startswith(
        f"--resume {tmp_path}: {checkpoints / 'manifest.json'}: unreadable manifest: RecursionError: maximum recursion"
    )
    assert "\n" not in str(refused.value)


@pytest.mark.parametrize(
    ("what", "mark"),
    [
        # Another run's id: "the checkpoint ... was written by run '3026...'" (exit 2).
        ("run id", b'run_id\\":\\"'),
        # Another model: "it holds blocks.0.conv.weigh3, which the model no longer has" (exit 2).
        ("model key", b"blocks.0.conv.weigh"),
    ],
)
def test_a_damaged_header_of_the_newest_checkpoint_resumes_from_the_one_before(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], what: str, mark: bytes
) -> None:
    """One byte changed in the newest checkpoint's header: the resume's checks read the header before its SHA-256 and
    refused the run (another run's checkpoint, a model that no longer fits), where damage anywhere else in the file
    was skipped as corrupt and the run resumed from the checkpoint before."""
    config = tmp_path / "c.toml"
    config.write_text(f'[tolaria]\nepochs = 2\ndataset_samples = 600\n[urza]\nroot = "{tmp_path / "urza"}"\n')
    run_dir = tmp_path / "run"
    assert main([str(config), "--run-dir", str(run_dir)]) == 0
    manifest = json.loads((run_dir / "checkpoints" / "manifest.json").read_text(encoding="utf-8"))
    previous, newest = (run_dir / "checkpoints" / e["file"] for e in manifest["checkpoints"][-2:])
    data = bytearray(newest.read_bytes())
    at = bytes(data).index(mark) + len(mark)  # in the header: the first occurrence
    assert at < int.from_bytes(data[:8], "little"), what
    data[at] = ord("3") if data[at] != ord("3") else ord("4")
    newest.write_bytes(bytes(data))
    capsys.readouterr()
    assert main([str(config), "--set", "tolaria.epochs=3", "--resume", str(run_dir)]) == 0, capsys.readouterr().err
    said = capsys.readouterr()
    assert (said.out + said.err).count("checkpoint_corrupt") == 1, said
    summary = msgspec.json.decode((run_dir / "summary.json").read_bytes(), type=RunSummary)
    assert summary.training is not None
    assert summary.training.resumed_from_step == int(previous.stem.removeprefix("step-"))


def test_a_resume_over_a_changed_data_cache_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The data cache checks itself against a hash kept in the same file: labels shuffled and the hash recomputed
    trained on silently, and a resume compared nothing for a built-in data set."""
    cache = tmp_path / "cache"
    config = tmp_path / "c.toml"
    config.write_text(
        f'[tolaria]\nepochs = 1\ndataset_samples = 600\ndata_cache_dir = "{cache}"\n'
        f'[urza]\nroot = "{tmp_path / "urza"}"\n[logging]\nconsole = false\n',
        encoding="utf-8",
    )
    run_dir = tmp_path / "run"
    assert main([str(config), "--run-dir", str(run_dir)]) == 0
    record = json.loads((run_dir / "data.json").read_text(encoding="utf-8"))
    assert record["dataset"] == "mnist1d"
    assert len(record["splits_sha256"]) == 64
    # The same cache resumes.
    assert main([str(config), "--set", "tolaria.epochs=2", "--resume", str(run_dir)]) == 0
    [cached] = cache.glob("*.npz")
    with np.load(cached, allow_pickle=False) as stored:
        arrays = tuple(stored[name] for name in ("x_train", "y_train", "x_test", "y_test"))
    shuffled = (arrays[0], np.random.default_rng(1).permutation(arrays[1]), arrays[2], arrays[3])
    names = dict(zip(("x_train", "y_train", "x_test", "y_test"), shuffled, strict=True))
    np.savez(cached, **names, sha256=np.array(_cache_digest(shuffled)))
    capsys.readouterr()
    assert main([str(config), "--set", "tolaria.epochs=3", "--resume", str(run_dir)]) == EXIT_CONFIG_ERROR
    err = capsys.readouterr().err
    assert err.startswith(
        f"--resume {run_dir}: the run trained on mnist1d data of SHA-256 {record['splits_sha256'][:12]}"
    )
    assert f"(was {cache} changed?); a resume continues the same training on the same data\n" in err
    assert err.count("\n") == 1


async def test_a_resume_whose_npz_file_moved_says_how_to_name_it_anew(tmp_path: Path) -> None:
    """The run's written config names the file where it was: the refusal said only "file not found" (the API words
    --set as overrides)."""
    missing = tmp_path / "data.npz"
    config = RunConfig(tolaria=TolariaConfig(dataset="npz", npz_path=str(missing)))
    with pytest.raises(ConfigError) as refused:
        await esper.start(config, resume=tmp_path)
    assert str(refused.value) == (
        f"tolaria.npz_path = {str(missing)!r}: file not found"
        " (moved? overrides: tolaria.npz_path=<its path now>; the resume checks its bytes)"
    )
    with pytest.raises(ConfigError) as refused:
        await esper.start(config, run_dir=tmp_path / "run")
    assert str(refused.value) == f"tolaria.npz_path = {str(missing)!r}: file not found", "a new run has no earlier path"
