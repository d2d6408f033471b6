"""End to end: a run killed after its last checkpoint, before its summary, is finished by --resume."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
from typing import TYPE_CHECKING

import msgspec
import pytest

from actors.tolaria.checkpoint_verify import load_latest
from esper.resume_checkpoints import resume_point
from schemas.run import RunSummary
from tests.test_e2e_run import tiny_config

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

EPOCHS = 8  # long enough to grow: the controller grows only seeds it could keep before the run ends
LAST_STEP = EPOCHS * 16  # tiny_config's 16 steps an epoch

# The built-in host, killed (SIGKILL, as kill -9) at its first forward in eval mode once the file KILL_WHEN_EXISTS
# names exists (and Kasmina's journal holds that step's boundary: a barrier, no sleep): the run's last checkpoint is
# written just before the test split is scored, and no other eval-mode forward comes after it. With
# KILL_BEFORE_SUMMARY set, the process is killed instead as it starts writing summary.json (a halted run scores no
# test split: its end is the checkpoint, then the summary); with CTRL_C_AT_FORWARD=N, it gets SIGINT (Ctrl-C) at its
# Nth forward in training mode. Without the variables it is the plain CNN, so the same host_model trains the halted
# reference runs and finishes the killed ones (the uninterrupted reference run trains the built-in host, the same CNN,
# in the test's process: imported there, this module would patch the classes it hooks for every later test). With
# KILL_AFTER_CHECKPOINT naming a checkpoint file, it is killed as soon as the trainer has waited for that file to be
# written (and Kasmina's journal holds its boundary): an L4 halt's checkpoint, before the trainer's training_finished
# line.
_KILLING_HOST = """
import os
import signal
import threading
from pathlib import Path

import esper.session
from actors.kasmina.journal import BoundaryJournal, last_boundary_step
from actors.tolaria.checkpoints import CheckpointWriter
from esper.nn.hosts import CNN1dHost

_write = esper.session.atomic_write_bytes


def _kill_before_summary(path, data, **options):
    if os.environ.get("KILL_BEFORE_SUMMARY") and path.name == "summary.json":
        os.kill(os.getpid(), signal.SIGKILL)
    _write(path, data, **options)


esper.session.atomic_write_bytes = _kill_before_summary


_forwards = [0]


_MARK = os.environ.get("KILL_WHEN_EXISTS")
_AFTER = os.environ.get("KILL_AFTER_CHECKPOINT")
_MARK_STEP = int(Path(_MARK or _AFTER).stem.split("-")[1]) if _MARK or _AFTER else 0
_journaled = threading.Event()
_write_pending = BoundaryJournal.write_pending


def _journal_then_tell(self):
    _write_pending(self)
    if self.path is not None and (last_boundary_step(self.path) or -1) >= _MARK_STEP:
        _journaled.set()


if _MARK or _AFTER:
    BoundaryJournal.write_pending = _journal_then_tell


_flush = CheckpointWriter.flush


def _flush_then_kill(self):
    _flush(self)
    if os.path.exists(_AFTER):
        _journaled.wait(60)
        os.kill(os.getpid(), signal.SIGKILL)


if _AFTER:
    CheckpointWriter.flush = _flush_then_kill


def _kill_when_scoring(module, args):
    if _MARK and not module.training and os.path.exists(_MARK):
        # Once Kasmina's journal holds the checkpoint's boundary too (the last packet travels the pipeline while the
        # trainer writes the checkpoint): else the resume goes back to the checkpoint before (resume_point_behind).
        _journaled.wait(60)
        os.kill(os.getpid(), signal.SIGKILL)
    if module.training:
        _forwards[0] += 1
        if _forwards[0] == int(os.environ.get("CTRL_C_AT_FORWARD", "0")):
            os.kill(os.getpid(), signal.SIGINT)


def factory():
    host = CNN1dHost()
    host.register_forward_pre_hook(_kill_when_scoring)
    return host
"""


def esper_with_host(host: str, config: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m esper.run CONFIG ARGS`` with ``tolaria.host_model`` set to the factory of module ``host`` (a test
    host written beside the config, on ``env``'s PYTHONPATH); its exit status is the caller's to check."""
    return subprocess.run(
        [sys.executable, "-m", "esper.run", str(config), "--set", f'tolaria.host_model="{host}:factory"', *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


def _esper(config: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return esper_with_host("killinghost", config, env, *args)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def test_a_run_killed_after_its_last_checkpoint_is_finished_by_resume_without_training_a_step(
    tmp_path: Path,
) -> None:
    """--resume of it said "already trained" and pointed at esper.report: its test split, scored only after the last
    checkpoint, was never scored, and summary.json never written. It now loads that checkpoint, scores the test split
    and writes the summary (and report.png) an uninterrupted run writes, training nothing."""
    from esper.run import start

    (tmp_path / "killinghost.py").write_text(_KILLING_HOST, encoding="utf-8")
    config = tiny_config(tmp_path, epochs=EPOCHS)
    paths = [str(tmp_path), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": os.pathsep.join(paths)}
    killed_dir, reference_dir = tmp_path / "killed", tmp_path / "uninterrupted"
    last = killed_dir / "checkpoints" / f"step-{LAST_STEP}.pt"

    killed = _esper(config, {**env, "KILL_WHEN_EXISTS": str(last)}, "--run-dir", str(killed_dir))
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert not (killed_dir / "summary.json").exists()
    assert not (killed_dir / "report.png").exists()
    found = load_latest(killed_dir / "checkpoints")
    assert found is not None
    assert (found[2].file, found[2].epoch) == (last.name, EPOCHS)
    assert any(e.kind == "attach" for e in found[0].graft_log), "the run should grow to be a real test"
    # The last packet travels the pipeline while the trainer writes that checkpoint: the kill came after the planner
    # journaled its boundary (else the resume trains from the checkpoint before, resume_point_behind), on any machine
    # but a badly overloaded one. Whether Nissa had written its metrics.csv row does not matter: the resume writes it
    # (tests/test_e2e_resume_rows.py holds it back).
    assert resume_point(killed_dir / "checkpoints") == LAST_STEP
    checkpoint_sha = _sha256(last)
    manifest = (killed_dir / "checkpoints" / "manifest.json").read_bytes()
    events_before = len((killed_dir / "events.jsonl").read_text(encoding="utf-8").splitlines())

    reference = await (await start(config, reference_dir)).wait()
    assert reference.status == "completed", reference.error
    finished = _esper(config, env, "--resume", str(killed_dir))
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert (
        f"finishing from step {LAST_STEP} ({last.name}, the end of epoch {EPOCHS} of {EPOCHS}): no step to train;"
        " scoring the test split and writing the summary"
    ) in finished.stderr
    assert "already trained" not in finished.stderr

    summary = msgspec.json.decode((killed_dir / "summary.json").read_bytes(), type=RunSummary)
    want = msgspec.json.decode((reference_dir / "summary.json").read_bytes(), type=RunSummary)
    assert (summary.status, summary.exit_code) == ("completed", 0), summary.error
    assert summary.training is not None
    assert want.training is not None
    assert want.training.test_accuracy is not None
    assert summary.training.test_accuracy == want.training.test_accuracy
    assert summary.training.test_loss == want.training.test_loss
    # Every figure of the weights and the logs is the uninterrupted run's; the stalls are the killed session's
    # wall-clock waits for plans, and the resume point says the run was finished by a resume.
    assert summary.training.resumed_from_step == summary.training.global_step == LAST_STEP
    wall_clock = {"stalls": 0, "stall_ms": 0.0, "resumed_from_step": None}
    assert msgspec.structs.replace(summary.training, **wall_clock) == msgspec.structs.replace(
        want.training, **wall_clock
    )
    assert summary.growth is not None
    assert want.growth is not None
    latencies = {"decision_p50_ms": None, "decision_p95_ms": None}
    assert msgspec.structs.replace(summary.growth, **latencies) == msgspec.structs.replace(want.growth, **latencies)
    assert summary.growth.parameters_added > 0
    # What the normal end writes besides: the summary table on stdout, report.png and the run's last event.
    assert f"test   loss {want.training.test_loss:.4f}  accuracy {want.training.test_accuracy:.4f}" in finished.stdout
    assert (killed_dir / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len((killed_dir / "metrics.csv").read_text(encoding="utf-8").splitlines()) == 1 + EPOCHS
    lines = (killed_dir / "events.jsonl").read_text(encoding="utf-8").splitlines()
    last_event = json.loads(lines[-1])
    assert (last_event["event"], last_event["status"]) == ("run_finished", "completed")

    # No step trained: no epoch ended, and the checkpoint it verified and loaded is left exactly as it was.
    session = [json.loads(line) for line in lines[events_before:]]
    assert not [e for e in session if e["event"] in ("epoch_end", "checkpoint_written", "tamiyo_decision")]
    assert [(e["step"], e["tier"]) for e in session if e["event"] == "training_restored"] == [(LAST_STEP, "full")]
    assert _sha256(last) == checkpoint_sha
    assert (killed_dir / "checkpoints" / "manifest.json").read_bytes() == manifest


def _setup(tmp_path: Path, epochs: int) -> tuple[Path, dict[str, str]]:
    (tmp_path / "killinghost.py").write_text(_KILLING_HOST, encoding="utf-8")
    config = tiny_config(tmp_path, epochs=epochs)
    paths = [str(tmp_path), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return config, {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": os.pathsep.join(paths)}


def _summary(run_dir: Path) -> RunSummary:
    return msgspec.json.decode((run_dir / "summary.json").read_bytes(), type=RunSummary)


def test_an_earlier_sessions_summary_does_not_keep_a_resume_from_finishing_the_run(tmp_path: Path) -> None:
    """Every session that ends writes a summary.json: a completed 2-epoch run resumed with tolaria.epochs=3 and killed
    after its last checkpoint kept the 2-epoch summary, and its next --resume said "already trained 3 of 3 epochs
    ... nothing to resume": the 3-epoch run's test split was never scored, the stale summary its result for good (a
    Ctrl-C's "interrupted" summary did the same). A summary counts only when it is the last checkpoint's."""
    config, env = _setup(tmp_path, epochs=2)
    run_dir = tmp_path / "run"
    more = ("--set", "tolaria.epochs=3")
    last = run_dir / "checkpoints" / "step-48.pt"
    first = _esper(config, env, "--run-dir", str(run_dir))
    assert first.returncode == 0, first.stderr[-2000:]
    killed = _esper(config, {**env, "KILL_WHEN_EXISTS": str(last)}, "--resume", str(run_dir), *more)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    stale = _summary(run_dir)
    assert stale.training is not None
    assert (stale.status, stale.training.global_step) == ("completed", 32)
    assert resume_point(run_dir / "checkpoints") == 48

    finished = _esper(config, env, "--resume", str(run_dir), *more)
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert "already trained" not in finished.stderr
    assert (
        "finishing from step 48 (step-48.pt, the end of epoch 3 of 3): no step to train; scoring the test split and"
        " writing the summary, in place of the stale one (summary.json is an earlier session's (status completed,"
        " step 32))"
    ) in finished.stderr
    summary = _summary(run_dir)
    assert summary.training is not None
    assert (summary.status, summary.exit_code) == ("completed", 0), summary.error
    assert (summary.training.epochs, summary.training.global_step, summary.training.completed) == (3, 48, True)
    assert summary.training.test_accuracy is not None
    assert summary.training.test_accuracy != stale.training.test_accuracy
    # That summary is the checkpoint's: the next resume is the notice, and rewrites nothing.
    files = {path: path.read_bytes() for path in run_dir.rglob("*") if path.is_file()}
    again = _esper(config, env, "--resume", str(run_dir), *more)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "already trained 3 of tolaria.epochs = 3 epochs (step-48.pt); nothing to resume" in again.stderr
    assert {path: path.read_bytes() for path in run_dir.rglob("*") if path.is_file()} == files


def test_a_resume_from_an_epoch_end_checkpoint_with_no_step_to_train_reports_that_epochs_figures(
    tmp_path: Path,
) -> None:
    """A run killed in epoch 2 and resumed with tolaria.epochs=1 finishes from epoch 1's checkpoint: its summary's
    train and validation figures were None (an epoch end's state was captured before its own figures were set, so
    each carried the epoch before's). They are now epoch 1's, those of metrics.csv's last row."""
    config, env = _setup(tmp_path, epochs=2)
    run_dir = tmp_path / "run"
    killed = _esper(
        config, {**env, "KILL_WHEN_EXISTS": str(run_dir / "checkpoints" / "step-16.pt")}, "--run-dir", str(run_dir)
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert resume_point(run_dir / "checkpoints") == 16

    finished = _esper(config, env, "--resume", str(run_dir), "--set", "tolaria.epochs=1")
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert "finishing from step 16 (step-16.pt, the end of epoch 1 of 1): no step to train" in finished.stderr
    summary = _summary(run_dir)
    assert summary.training is not None
    assert (summary.status, summary.training.epochs, summary.training.completed) == ("completed", 1, True)
    with (run_dir / "metrics.csv").open(encoding="utf-8", newline="") as file:
        rows = list(csv.DictReader(file))
    assert [row["epoch"] for row in rows] == ["1"]
    figures = ("train_loss", "train_accuracy", "val_loss", "val_accuracy")
    assert [getattr(summary.training, name) for name in figures] == [float(rows[-1][name]) for name in figures]


def test_a_ctrl_c_sessions_summary_does_not_keep_a_resume_from_finishing_the_run(tmp_path: Path) -> None:
    """Ctrl-C (summary.json: interrupted, no test score), --resume, kill -9 after the last checkpoint: the next
    --resume said "already trained" and the interrupted summary stayed the run's result for good."""
    config, env = _setup(tmp_path, epochs=2)
    run_dir = tmp_path / "run"
    last = run_dir / "checkpoints" / "step-32.pt"
    stopped = _esper(config, {**env, "CTRL_C_AT_FORWARD": "21"}, "--run-dir", str(run_dir))
    assert stopped.returncode == 130, stopped.stderr[-2000:]
    interrupted = _summary(run_dir)
    assert interrupted.training is not None
    assert interrupted.status == "interrupted"
    assert interrupted.training.global_step < 32
    killed = _esper(config, {**env, "KILL_WHEN_EXISTS": str(last)}, "--resume", str(run_dir))
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert _summary(run_dir) == interrupted
    assert resume_point(run_dir / "checkpoints") == 32

    finished = _esper(config, env, "--resume", str(run_dir))
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert (
        "writing the summary, in place of the stale one (summary.json is an earlier session's (status interrupted,"
        f" step {interrupted.training.global_step}))"
    ) in finished.stderr
    summary = _summary(run_dir)
    assert summary.training is not None
    assert (summary.status, summary.training.global_step, summary.training.completed) == ("completed", 32, True)
    assert summary.training.test_accuracy is not None


def test_a_run_halted_at_its_last_epoch_end_is_finished_halted_by_resume(tmp_path: Path) -> None:
    """A run halted at L4 by the failed epochs of its last epoch end, killed between the halt's checkpoint and its
    summary: --resume "finished" it as completed (exit 0, halted false, level 2, a test score), the halt erased,
    because the loop ends whenever every epoch is trained. It now writes the summary the halt writes (exit 1)."""
    config, env = _setup(tmp_path, epochs=2)
    failing = ("--set", "tolaria.epoch_hook_budget_ms=0.000001", "--set", "tolaria.failed_epochs_to_halt=2")
    reference_dir, killed_dir = tmp_path / "halted", tmp_path / "killed"
    last = killed_dir / "checkpoints" / "step-32.pt"
    reference = _esper(config, env, *failing, "--run-dir", str(reference_dir))
    assert reference.returncode == 1, reference.stderr[-2000:]
    want = _summary(reference_dir)
    assert want.training is not None
    assert (want.training.halted, want.training.global_step, want.training.emergency_level) == (True, 32, 4)
    reason = _hook_halt(want.training.halt_reason)
    assert (want.status, want.error) == ("failed", f"emergency halt: {reason}")

    killed = _esper(config, {**env, "KILL_BEFORE_SUMMARY": "1"}, *failing, "--run-dir", str(killed_dir))
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert not (killed_dir / "summary.json").exists()
    found = load_latest(killed_dir / "checkpoints")
    assert found is not None
    assert (found[2].file, found[2].epoch, found[0].counters["emergency_level"]) == (last.name, 2, 4)
    # The killed run's own reason: its hook time is its own.
    reason = _hook_halt(str(found[0].counters["halt_reason"]))
    checkpoint_sha = _sha256(last)

    finished = _esper(config, env, *failing, "--resume", str(killed_dir))
    assert finished.returncode == reference.returncode, finished.stderr[-2000:]
    assert (
        f"finishing from step 32 (step-32.pt, the end of epoch 2 of 2), which an emergency halt at L4 wrote ({reason}):"
        " no step to train; writing the halted run's summary (no test score)"
    ) in finished.stderr
    summary = _summary(killed_dir)
    assert summary.training is not None
    assert (summary.status, summary.exit_code, summary.error) == (
        want.status,
        want.exit_code,
        f"emergency halt: {reason}",
    )
    assert summary.training.test_accuracy is None
    # Every figure the halted run wrote: halted at L4 for its reason, not completed, no test score.
    wall_clock = {"stalls": 0, "stall_ms": 0.0, "resumed_from_step": None}
    assert msgspec.structs.replace(
        summary.training, halt_reason=_timeless(summary.training.halt_reason), **wall_clock
    ) == msgspec.structs.replace(want.training, halt_reason=_timeless(want.training.halt_reason), **wall_clock)
    assert summary.training.resumed_from_step == 32
    assert _sha256(last) == checkpoint_sha

    # With its summary written, the resume is the notice, which says the run halted; no file changes.
    files = {path: path.read_bytes() for path in killed_dir.rglob("*") if path.is_file()}
    again = _esper(config, env, *failing, "--resume", str(killed_dir))
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"already trained 2 of tolaria.epochs = 2 epochs (step-32.pt), where it halted at L4 ({reason})" in (
        again.stderr
    )
    assert {path: path.read_bytes() for path in killed_dir.rglob("*") if path.is_file()} == files


async def test_the_report_is_rendered_before_the_summary_that_marks_the_run_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """summary.json is the run's end as written (--resume leaves a run with a current one alone), so what the end
    writes besides it comes first: a kill while report.png rendered (the end's longest part, about half a second)
    left the summary without a report for good, and --resume said "already trained"."""
    import esper.report
    from esper.run import start

    render = esper.report.render_report
    seen: list[bool] = []

    def recording(data: esper.report.RunData, *, last_step: int | None = None) -> Path:
        seen.append((data.run_dir / "summary.json").exists())
        return render(data, last_step=last_step)

    monkeypatch.setattr(esper.report, "render_report", recording)
    run_dir = tmp_path / "run"
    system = await start(tiny_config(tmp_path, epochs=1), run_dir)
    summary = await system.wait()
    assert summary.status == "completed", summary.error
    assert seen == [False]
    assert (run_dir / "report.png").is_file()
    assert (run_dir / "summary.json").is_file()


def _hook_halt(reason: str | None) -> str:
    """The halt's reason of a run whose two epochs failed their hook budget, checked: it names the last hook time
    (the machine's), the budget and its setting."""
    assert reason is not None
    pattern = (
        r"2 failed epochs in a row \(the last: hook_budget, hook_ms \d+\.\d over tolaria\.epoch_hook_budget_ms 1e-06\)"
    )
    assert re.fullmatch(pattern, reason), reason
    return reason


def _timeless(text: object) -> object:
    """``text`` with its hook time (the machine's, each run's own) left out, to compare two runs' halts."""
    return re.sub(r"hook_ms \d+\.\d ", "hook_ms N ", text) if isinstance(text, str) else text


def _events(run_dir: Path) -> list[dict[str, object]]:
    lines = (run_dir / "events.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


def test_a_halt_killed_before_training_finished_is_finished_with_the_uninterrupted_runs_reason(
    tmp_path: Path,
) -> None:
    """An L4 halt at the last epoch end killed after its checkpoint but before the trainer's training_finished line:
    the resume read the reason back from the L4 signal ("L4 at step 32: failed_epochs_streak: 2 failed epochs in a
    row") or named only the step, not the uninterrupted run's "2 failed epochs in a row (the last: hook_budget)".
    The halt's checkpoint now keeps its reason."""
    config, env = _setup(tmp_path, epochs=2)
    failing = ("--set", "tolaria.epoch_hook_budget_ms=0.000001", "--set", "tolaria.failed_epochs_to_halt=2")
    reference_dir, killed_dir = tmp_path / "halted", tmp_path / "killed"
    last = killed_dir / "checkpoints" / "step-32.pt"
    reference = _esper(config, env, *failing, "--run-dir", str(reference_dir))
    assert reference.returncode == 1, reference.stderr[-2000:]
    want = _summary(reference_dir)
    assert want.training is not None
    reason = _hook_halt(want.training.halt_reason)
    assert (want.training.halted, want.error) == (True, f"emergency halt: {reason}")

    killed = _esper(config, {**env, "KILL_AFTER_CHECKPOINT": str(last)}, *failing, "--run-dir", str(killed_dir))
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert not [e for e in _events(killed_dir) if e.get("event") == "training_finished"]
    found = load_latest(killed_dir / "checkpoints")
    assert found is not None
    assert (found[2].file, found[0].counters["emergency_level"]) == (last.name, 4)
    # The killed run's own reason (its hook time is its own), in the uninterrupted run's words.
    reason = _hook_halt(str(found[0].counters["halt_reason"]))

    finished = _esper(config, env, *failing, "--resume", str(killed_dir))
    assert finished.returncode == reference.returncode, finished.stderr[-2000:]
    assert f"which an emergency halt at L4 wrote ({reason}): no step to train" in finished.stderr
    assert f"error: emergency halt: {reason}" in finished.stdout
    summary = _summary(killed_dir)
    assert summary.training is not None
    assert (summary.status, summary.exit_code, summary.error) == (
        want.status,
        want.exit_code,
        f"emergency halt: {reason}",
    )
    assert (summary.training.halted, summary.training.halt_reason) == (True, reason)
    ends = [e for e in _events(killed_dir) if e.get("event") in ("training_finished", "run_finished")]
    assert [(e["event"], _timeless(e.get("halt_reason", e.get("error")))) for e in ends] == [
        (e["event"], _timeless(e.get("halt_reason", e.get("error"))))
        for e in _events(reference_dir)
        if e.get("event") in ("training_finished", "run_finished")
    ]


async def test_two_runs_in_one_process_each_stamp_their_own_run_id_on_every_event_line(tmp_path: Path) -> None:
    """Only a few events carried run_id (epoch_end, tamiyo_decision, checkpoint_written, training_finished,
    actor_state ... had none), so a sweep's logs merged could not be told apart: every line of each run's
    events.jsonl now names that run, one run after the other in the same process."""
    from esper.run import start

    config = tiny_config(tmp_path, epochs=1)
    for name in ("first", "second"):
        run_dir = tmp_path / name
        system = await start(config, run_dir, [f'run_id="sweep-{name}"', "nissa.report_png=false"])
        summary = await system.wait()
        assert summary.status == "completed", summary.error
        events = _events(run_dir)
        assert {"epoch_end", "actor_state", "checkpoint_written", "training_finished"} <= {e["event"] for e in events}
        assert {str(e.get("run_id")) for e in events} == {f"sweep-{name}"}
