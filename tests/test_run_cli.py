"""python -m esper.run: --help, --set, --run-dir, and every bad-config class exiting 2 with one line."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import esper.run_args
from actors.urza.store import UrzaStore
from esper.config import load_config
from esper.run import main
from esper.run_parser import EXIT_CONFIG_ERROR

# real runs in subprocesses: a slow, loaded machine may need more than the default 30 s hang guard.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]


REPO = Path(__file__).resolve().parent.parent
ACTORS = {
    "oona",
    "oona-publisher",
    "urza",
    "nissa",
    "nissa-tick",
    "tezzeret",
    "kasmina",
    "tamiyo",
    "tolaria",
    "tolaria/control",
    "tolaria/trainer",
    "weatherlight",
}
# Runs in these tests train for real, so they train little: one epoch on 500 MNIST-1D samples.
TINY = ("--set", "tolaria.epochs=1", "--set", "tolaria.dataset_samples=500")


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "ESPER_LEYLINE_SECRET"}
    return subprocess.run(
        [sys.executable, "-m", "esper.run", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_shipped_config_runs_and_writes_the_run_directory(tmp_path: Path) -> None:
    result = run_cli(str(REPO / "config.toml"), "--run-dir", str(tmp_path / "run"), *TINY, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    run = tmp_path / "run"
    assert {p.name for p in run.iterdir()} >= {"config.toml", "events.jsonl", "summary.json"}
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert {a["actor"] for a in summary["actors"]} == ACTORS
    events = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]
    names = [e["event"] for e in events]
    assert names.index("run_started") < names.index("run_finished")
    assert {e["actor"] for e in events if e["event"] == "actor_started"} == ACTORS
    assert "completed" in result.stdout


def test_piped_stderr_shows_progress_and_warnings_not_the_info_log(tmp_path: Path) -> None:
    """On a pipe (CI, nohup, a scheduler) stderr carries the epoch and lifecycle lines; the info log is in
    events.jsonl, and logging.console_level brings it to stderr on request."""
    quiet = run_cli(str(REPO / "config.toml"), "--run-dir", str(tmp_path / "quiet"), *TINY, cwd=tmp_path)
    assert quiet.returncode == 0, quiet.stderr
    assert "epoch   1/1" in quiet.stderr
    assert "[info" not in quiet.stderr
    assert '"run_started"' in (tmp_path / "quiet" / "events.jsonl").read_text()
    loud = run_cli(
        str(REPO / "config.toml"),
        "--run-dir",
        str(tmp_path / "loud"),
        *TINY,
        "--set",
        'logging.console_level="info"',
        cwd=tmp_path,
    )
    assert loud.returncode == 0, loud.stderr
    assert "epoch   1/1" in loud.stderr
    assert "run_started" in loud.stderr


def test_default_run_dir_is_under_runs_with_the_run_id(tmp_path: Path) -> None:
    (tmp_path / "c.toml").write_text('run_id = "abc"\n')
    result = run_cli("c.toml", *TINY, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "runs" / "abc" / "summary.json").read_text(encoding="utf-8"))
    # Absolute, so the file still says where the run is when read from another directory.
    assert Path(summary["run_dir"]).is_absolute()
    assert Path(summary["run_dir"]).resolve() == (tmp_path / "runs" / "abc").resolve()


def test_set_overrides_reach_the_resolved_config(tmp_path: Path) -> None:
    (tmp_path / "c.toml").write_text("")
    code = main(
        [
            str(tmp_path / "c.toml"),
            "--run-dir",
            str(tmp_path / "r"),
            "--set",
            "tolaria.epochs=1",
            "--set",
            "tolaria.dataset_samples=500",
            "--set",
            "tamiyo.policy=gnn",
            "--set",
            "logging.console=false",
        ]
    )
    assert code == 0
    resolved = (tmp_path / "r" / "config.toml").read_text()
    assert "epochs = 1" in resolved
    assert 'policy = "gnn"' in resolved


def test_help_documents_every_option(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for option in ("config", "--set", "SECTION.KEY=VALUE", "--run-dir"):
        assert option in text
    # The default run directory follows the config's runs_dir (it said runs/<run-id>).
    assert "<runs_dir>/<run-id>" in " ".join(text.split())


BAD_CONFIGS = [
    pytest.param("[tamyo]\npolicy = 'gnn'\n", "c.toml: tamyo: unknown section", id="unknown-section"),
    pytest.param(
        "[tamiyo]\ndecison_budget_ms = 4\n", "c.toml: tamiyo.decison_budget_ms: unknown key", id="unknown-key"
    ),
    pytest.param(
        '[tamiyo]\ndecision_budget_ms = "fast"\n',
        'c.toml: tamiyo.decision_budget_ms: expected a number > 0, got "fast"',
        id="wrong-type",
    ),
    pytest.param(
        "[tamiyo]\ndecision_budget_ms = -5\n",
        "c.toml: tamiyo.decision_budget_ms: expected a number > 0, got -5",
        id="out-of-range",
    ),
    pytest.param("[tamiyo\n", "c.toml: invalid TOML at line 1", id="unreadable-toml"),
    pytest.param("[tolaria]\nlr = inf\n", "c.toml: tolaria.lr: expected a finite number, got inf", id="infinite"),
    pytest.param(
        '[kasmina]\nslot_targets = ["blocks.0", " "]\n',
        "c.toml: kasmina.slot_targets: expected module names, got an empty one in ['blocks.0', ' ']",
        id="empty-slot-target",
    ),
    pytest.param(
        '[tolaria]\nnpz_path = "data.npz"\n',
        "c.toml: tolaria.npz_path: is read only with dataset = \"npz\", and dataset is 'mnist1d'",
        id="npz-path-unused",
    ),
    pytest.param(
        "[tolaria]\ndataset_samples = 15\n",
        "c.toml: tolaria.dataset_samples: expected a multiple of 10 for mnist1d, got 15",
        id="mnist1d-samples",
    ),
    pytest.param(
        '[tolaria]\ndataset = "digits"\ndataset_samples = 500\n',
        "c.toml: tolaria.dataset_samples: is read only with dataset = \"mnist1d\", and dataset is 'digits'",
        id="samples-unused",
    ),
    pytest.param(
        '[tamiyo]\ngnn_checkpoint = "policy.safetensors"\n',
        "c.toml: tamiyo.gnn_checkpoint: is read only with policy = \"gnn\", and policy is 'heuristic'",
        id="gnn-checkpoint-unused",
    ),
    pytest.param(
        "[tamiyo]\npolicy_worker_silence_s = 2.0\n",
        "c.toml: tamiyo.policy_worker_silence_s: is read only with policy = \"gnn\", and policy is 'heuristic'",
        id="gnn-worker-silence-unused",
    ),
    pytest.param(
        "[tamiyo]\ncompile = true\n",
        "c.toml: tamiyo.compile: is read only with policy = \"gnn\", and policy is 'heuristic'",
        id="tamiyo-compile-unused",
    ),
    pytest.param('run_id = "a/b"\n', "c.toml: run_id: expected letters, digits, '.', '_' or '-'", id="run-id"),
    pytest.param(
        '[nissa]\nsummary_json = "../other-run/summary.json"\n',
        "c.toml: nissa.summary_json: expected a file name inside the run directory (no directories), got '../other",
        id="summary-outside-the-run",
    ),
    pytest.param(
        '[logging]\njson_file = "/tmp/events.jsonl"\n',
        "c.toml: logging.json_file: expected a file name inside the run directory (no directories), got '/tmp/",
        id="event-log-outside-the-run",
    ),
    pytest.param(
        '[nissa]\nmetrics_csv = "config.toml"\n',
        "c.toml: nissa.metrics_csv: 'config.toml' is a file the run directory already holds; choose another name",
        id="metrics-over-the-config",
    ),
    pytest.param(
        '[nissa]\nsummary_json = "events.jsonl"\n',
        "c.toml: nissa.summary_json: 'events.jsonl' is also the name of another of the run's files",
        id="summary-over-the-event-log",
    ),
    pytest.param(
        '[tamiyo]\ndevice = "cuda"\n',
        'c.toml: tamiyo.device: set to "cuda", but this version does not act on it (the policy runs on the trainer\'s',
        id="tamiyo-device",
    ),
    pytest.param(
        '[tolaria]\namp = true\nprecision = "fp32"\n',
        'c.toml: tolaria.amp: true asks for bf16 autocast, but tolaria.precision = "fp32" asks for none: set amp = '
        'false for fp32, or precision = "bf16"\n',
        id="amp-with-fp32",  # trained in bf16 without a word
    ),
]


@pytest.mark.parametrize(("text", "message"), BAD_CONFIGS)
def test_bad_config_exits_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, text: str, message: str
) -> None:
    (tmp_path / "c.toml").write_text(text)
    monkeypatch.chdir(tmp_path)
    assert main(["c.toml", "--run-dir", str(tmp_path / "r")]) == EXIT_CONFIG_ERROR
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith(message)
    assert not (tmp_path / "r").exists(), "nothing is written for a bad config"


def test_missing_file_and_bad_override_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path / "missing.toml")]) == EXIT_CONFIG_ERROR
    assert capsys.readouterr().err == f"{tmp_path / 'missing.toml'}: file not found\n"
    (tmp_path / "c.toml").write_text("")
    assert main([str(tmp_path / "c.toml"), "--set", "tolaria.epochs=abc"]) == EXIT_CONFIG_ERROR
    assert capsys.readouterr().err == '--set tolaria.epochs=abc: tolaria.epochs: expected an integer >= 1, got "abc"\n'


def test_bad_config_as_a_subprocess_prints_no_traceback(tmp_path: Path) -> None:
    (tmp_path / "c.toml").write_text('[tamiyo]\ndecision_budget_ms = "fast"\n')
    result = run_cli("c.toml", cwd=tmp_path)
    assert result.returncode == EXIT_CONFIG_ERROR
    assert result.stderr == 'c.toml: tamiyo.decision_budget_ms: expected a number > 0, got "fast"\n'
    assert result.stdout == ""


def test_required_secret_missing_is_a_config_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "c.toml").write_text("[weatherlight]\nrequire_secret = true\n")
    env_name = "ESPER_TEST_SECRET_THAT_IS_NOT_SET"
    assert env_name not in os.environ
    overrides = ["--set", f'security.secret_env="{env_name}"']
    assert main([str(tmp_path / "c.toml"), *overrides]) == EXIT_CONFIG_ERROR
    assert capsys.readouterr().err == (f"weatherlight.require_secret: the environment variable {env_name} is not set\n")


# Sends this process a SIGINT when `torch` starts to load, then runs `python -m esper.run` as the command line does:
# a Ctrl-C during the seconds of imports, at a point that does not depend on the machine's speed.
_CTRL_C_WHILE_IMPORTING = """
import importlib.abc, os, runpy, signal, sys

class CtrlC(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "torch":
            sys.meta_path.remove(self)
            os.kill(os.getpid(), signal.SIGINT)
        return None

sys.meta_path.insert(0, CtrlC())
sys.argv = ["esper.run", sys.argv[1]]
runpy.run_module("esper.run", run_name="__main__", alter_sys=True)
"""


def test_ctrl_c_while_importing_exits_130_without_a_traceback(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text("[tolaria]\nepochs = 1\n", encoding="utf-8")
    done = subprocess.run(
        [sys.executable, "-c", _CTRL_C_WHILE_IMPORTING, str(config)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        check=False,
    )
    assert done.returncode == 130, done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "runs").exists()  # stopped before anything was made


# A signal while a --resume's checks read the run (its newest checkpoint's digest: seconds for a large one).
_SIGNAL_WHILE_CHECKING = """
import os, runpy, signal, sys
import esper.run_args

SIGNAL = getattr(signal, sys.argv[3])

def checking(*args):
    os.kill(os.getpid(), SIGNAL)
    raise AssertionError("the signal did not stop the checks")

esper.run_args.check_resume_file_kinds = checking
sys.argv = ["esper.run", sys.argv[1], "--resume", sys.argv[2]]
runpy.run_module("esper.run", run_name="__main__", alter_sys=True)
"""


@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM"])
def test_a_signal_while_a_resume_is_checked_exits_130_without_a_traceback(tmp_path: Path, signame: str) -> None:
    """The checks ran after the import-time handlers were replaced and before the loop's: a Ctrl-C printed a
    KeyboardInterrupt traceback, a SIGTERM killed the process (143) without a word."""
    config = tmp_path / "c.toml"
    config.write_text("[tolaria]\nepochs = 1\n", encoding="utf-8")
    (tmp_path / "run").mkdir()
    done = subprocess.run(
        [sys.executable, "-c", _SIGNAL_WHILE_CHECKING, str(config), str(tmp_path / "run"), signame],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        check=False,
    )
    assert done.returncode == 130, done.stderr
    assert done.stderr == ""
    assert sorted(path.name for path in (tmp_path / "run").iterdir()) == []  # nothing written


def test_a_ctrl_c_while_main_checks_a_resume_returns_130(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Called in-process (no import-time handlers), a KeyboardInterrupt in the checks is the interrupted status."""

    def interrupted(*_args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(esper.run_args, "check_resume_file_kinds", interrupted)
    (tmp_path / "c.toml").write_text("", encoding="utf-8")
    (tmp_path / "run").mkdir()
    assert main([str(tmp_path / "c.toml"), "--resume", str(tmp_path / "run")]) == 130


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("catalogue", r"the catalogue .*catalog\.sqlite cannot be used \(file is not a database\); move it aside"),
        ("file", r"is a file, not a directory: point urza\.root elsewhere$"),  # checked before the run directory
    ],
)
def test_an_unusable_artifact_store_is_one_line_naming_urza_root(tmp_path: Path, damage: str, message: str) -> None:
    root = tmp_path / "store"
    if damage == "catalogue":
        root.mkdir()
        (root / "catalog.sqlite").write_bytes(b"this is not a SQLite database, only some bytes long enough" * 4)
    else:
        root.write_text("a file where the store should be", encoding="utf-8")
    (tmp_path / "c.toml").write_text(f'[tolaria]\nepochs = 1\n[urza]\nroot = "{root}"\n', encoding="utf-8")
    result = run_cli("c.toml", "--run-dir", "run", cwd=tmp_path)
    assert result.returncode == EXIT_CONFIG_ERROR
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"c.toml: urza.root = '{root}': ")  # led by the file the value came from
    assert re.search(message, last)


def _communicated(process: subprocess.Popen[str]) -> tuple[str, str]:
    """The process's output once it has exited; killed first if it has not within a minute (its factory may still
    wait on the FIFO), so no test leaves it running."""
    try:
        return process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        raise


# A user host whose first build (the config check, on a worker thread) waits until the test writes to a FIFO: a
# start-up step that takes as long as the test wants, like a large data set's generation.
_SLOW_FACTORY = """
import os, sys
from torch import nn

WAITED = []

def factory():
    if not WAITED:
        WAITED.append(True)
        print("factory: waiting", file=sys.stderr, flush=True)
        with open(os.environ["FACTORY_FIFO"]) as fifo:
            fifo.read()
    model = nn.Sequential(nn.Flatten(), nn.Linear(40, 16), nn.ReLU(), nn.Linear(16, 10))
    model.slot_targets = ("1",)
    return model
"""


def test_ctrl_c_while_starting_is_heard_at_once_and_exits_130(tmp_path: Path) -> None:
    """A Ctrl-C during a long start-up step (it was silent until the step ended, and a second one printed a
    traceback): one line at once, then exit 130 without a traceback; the step in its thread is not waited for."""
    (tmp_path / "slowhost.py").write_text(_SLOW_FACTORY, encoding="utf-8")
    fifo = tmp_path / "release"
    os.mkfifo(fifo)
    config = tmp_path / "c.toml"
    config.write_text('[tolaria]\nepochs = 1\nhost_model = "slowhost:factory"\n', encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "FACTORY_FIFO": str(fifo), "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "esper.run", str(config), "--run-dir", str(tmp_path / "run")]
    with subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env) as process:
        assert process.stderr is not None
        assert process.stderr.readline() == "factory: waiting\n"  # the barrier: the start-up step is under way
        process.send_signal(signal.SIGINT)
        assert process.stderr.readline() == (
            "interrupted by SIGINT while starting: stopping what has started (Ctrl-C again to exit at once)\n"
        )
        # The factory may still hold the FIFO (the process is exiting) or be gone with it: released without
        # blocking either way (a blocking open here waited for good, by the race, once the process had exited).
        try:
            release = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:  # no reader left
            release = None
        if release is not None:
            with contextlib.suppress(OSError):  # the reader left meanwhile
                os.write(release, b"go")
            os.close(release)
        out, err = _communicated(process)
    assert process.returncode == 130, err
    assert "Traceback" not in err
    assert out == ""


# The same host, waiting at its third build instead: the run's own probe of the host, once its log is open (the
# config check builds it twice, the second time to see it gets a new model).
_SLOW_PROBED_FACTORY = _SLOW_FACTORY.replace("if not WAITED:", "CALLS.append(1)\n    if len(CALLS) == 3:").replace(
    "WAITED = []", "WAITED = []\nCALLS = []"
)


def test_a_scheduler_stopping_a_run_while_it_starts_is_named_in_its_last_event(tmp_path: Path) -> None:
    """Stopped while starting, a run writes no summary.json; its run_finished line, the only record, named no
    signal, so a wrapper could not tell a scheduler's stop from a user's Ctrl-C there."""
    (tmp_path / "slowhost.py").write_text(_SLOW_PROBED_FACTORY, encoding="utf-8")
    fifo = tmp_path / "release"
    os.mkfifo(fifo)
    config = tmp_path / "c.toml"
    config.write_text(
        '[tolaria]\nepochs = 1\nhost_model = "slowhost:factory"\n[logging]\nconsole = false\n', encoding="utf-8"
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "FACTORY_FIFO": str(fifo), "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "esper.run", str(config), "--run-dir", str(tmp_path / "run")]
    with subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env) as process:
        assert process.stderr is not None
        # The barrier: the run's log is open (its "run <id> in <dir>" line comes first).
        assert "factory: waiting\n" in iter(process.stderr.readline, "")
        process.send_signal(signal.SIGTERM)
        assert process.stderr.readline().startswith("interrupted by SIGTERM while starting: ")
        try:
            release = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:  # no reader left
            release = None
        if release is not None:
            with contextlib.suppress(OSError):
                os.write(release, b"go")
            os.close(release)
        _communicated(process)
    assert process.returncode == 130
    last = json.loads((tmp_path / "run" / "events.jsonl").read_text(encoding="utf-8").splitlines()[-1])
    assert (last["event"], last["status"], last["started"], last["signal"]) == (
        "run_finished",
        "interrupted",
        False,
        "SIGTERM",
    )


def test_a_signal_once_the_summary_prints_keeps_the_runs_own_exit_status(tmp_path: Path) -> None:
    """A scheduler's SIGTERM in the second between the summary and the process's end recorded a completed run as
    killed (143)."""
    config = tmp_path / "c.toml"
    config.write_text("[tolaria]\nepochs = 1\ndataset_samples = 500\n[logging]\nconsole = false\n", encoding="utf-8")
    command = [sys.executable, "-m", "esper.run", str(config), "--run-dir", str(tmp_path / "run")]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) as process:
        assert process.stdout is not None
        first = process.stdout.readline()  # the barrier: the summary is printing
        assert " completed in " in first, first
        process.send_signal(signal.SIGTERM)
        _communicated(process)
    assert process.returncode == 0


def test_resume_and_run_dir_together_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A resume continues the run in its own directory; a --run-dir beside it was silently ignored (and the user's
    other run extended in place)."""
    with pytest.raises(SystemExit) as exited:
        main(["c.toml", "--resume", str(tmp_path / "a"), "--run-dir", str(tmp_path / "b")])
    assert exited.value.code == EXIT_CONFIG_ERROR
    assert "argument --run-dir: not allowed with argument --resume" in capsys.readouterr().err


def test_a_config_saved_with_a_byte_order_mark_reads(tmp_path: Path) -> None:
    """Some editors start a UTF-8 file with a BOM; it was "invalid TOML at line 1"."""
    path = tmp_path / "c.toml"
    path.write_bytes(b"\xef\xbb\xbf[tolaria]\nepochs = 3\n")
    assert load_config(path).tolaria.epochs == 3


def test_a_checked_value_names_the_set_that_gave_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A value checked when the run starts (a device, a port, a data file) is charged to the --set that set it, or
    else to the config file (it named neither)."""
    (tmp_path / "c.toml").write_text("[tolaria]\nepochs = 1\n", encoding="utf-8")
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        setting = f"nissa.prometheus_port={port}"
        code = main([str(tmp_path / "c.toml"), "--run-dir", str(tmp_path / "r"), "--set", setting])
    assert code == EXIT_CONFIG_ERROR
    assert capsys.readouterr().err.startswith(f"--set {setting}: nissa.prometheus_port = {port}: cannot listen on ")


def test_a_read_only_artifact_store_is_called_that_not_a_damaged_catalogue(tmp_path: Path) -> None:
    """A sound catalogue on a read-only mount was reported as unusable, with the advice to move it aside (losing its
    blueprint quarantines for nothing)."""
    store = tmp_path / "store"
    UrzaStore(store).close()
    view = tmp_path / "read_only"
    view.mkdir()
    if subprocess.run(["mount", "--bind", str(store), str(view)], capture_output=True, check=False).returncode:
        pytest.skip("bind mounts need privileges this machine does not give")
    try:
        remounted = subprocess.run(
            ["mount", "-o", "remount,bind,ro", str(view)], capture_output=True, check=False
        ).returncode
        if remounted:
            pytest.skip("a read-only remount needs privileges this machine does not give")
        (tmp_path / "c.toml").write_text(f'[tolaria]\nepochs = 1\n[urza]\nroot = "{view}"\n', encoding="utf-8")
        result = run_cli("c.toml", "--run-dir", "run", cwd=tmp_path)
    finally:
        subprocess.run(["umount", str(view)], capture_output=True, check=False)
    assert result.returncode == EXIT_CONFIG_ERROR
    assert "the store is not writable" in result.stderr
    assert "move it aside" not in result.stderr
