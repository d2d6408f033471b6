"""``python -m esper.run`` answers --help, a usage error and a refused config before it imports torch (seconds)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from esper.run_parser import EXIT_CONFIG_ERROR, EXIT_OK

REPO = Path(__file__).resolve().parent.parent
# ``python -X importtime`` logs each import on stderr as "import time: <self> | <cumulative> | <indent><module>".
_IMPORT_LOG = "import time:"


def run_command(
    *args: str, cwd: Path, stdin: str | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """``python ARGS`` with this tree's esper first on the path and no run secret from the environment."""
    env = {k: v for k, v in os.environ.items() if k != "ESPER_LEYLINE_SECRET"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)  # this tree's esper
    return subprocess.run(
        [sys.executable, *args],
        input=stdin,
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def run_logging_imports(*args: str, cwd: Path) -> tuple[int, str, str, set[str]]:
    """Run the command line with its imports logged: its status, stdout, stderr without the import log, and the
    top-level packages it imported."""
    done = run_command("-X", "importtime", "-m", "esper.run", *args, cwd=cwd)
    said, imported = [], set()
    for line in done.stderr.splitlines(keepends=True):
        if line.startswith(_IMPORT_LOG):
            imported.add(line.rsplit("|", 1)[-1].strip().split(".")[0])
        else:
            said.append(line)
    assert "esper" in imported, "the import log was read"  # the check below would pass on a log it failed to parse
    return done.returncode, done.stdout, "".join(said), imported


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[tolaria]\nepochs = -1\n", "c.toml: tolaria.epochs: expected an integer >= 1, got -1\n"),
        ("[tolaria]\nepochz = 3\n", "c.toml: tolaria.epochz: unknown key (did you mean epochs? known keys: "),
    ],
)
def test_a_refused_config_is_said_before_torch_loads(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "c.toml").write_text(text, encoding="utf-8")
    status, out, err, imported = run_logging_imports("c.toml", "--run-dir", str(tmp_path / "r"), cwd=tmp_path)
    assert status == EXIT_CONFIG_ERROR, err
    assert err.count("\n") == 1, err
    assert err.startswith(message), err
    assert out == ""
    assert "torch" not in imported
    assert "actors" not in imported
    assert not (tmp_path / "r").exists()


def test_a_missing_config_file_is_said_before_torch_loads(tmp_path: Path) -> None:
    status, _out, err, imported = run_logging_imports("missing.toml", cwd=tmp_path)
    assert (status, err) == (EXIT_CONFIG_ERROR, "missing.toml: file not found\n")
    assert "torch" not in imported


def test_a_bad_set_is_blamed_before_torch_loads(tmp_path: Path) -> None:
    (tmp_path / "c.toml").write_text("", encoding="utf-8")
    status, _out, err, imported = run_logging_imports("c.toml", "--set", "tolaria.epochs=abc", cwd=tmp_path)
    assert (status, err) == (
        EXIT_CONFIG_ERROR,
        '--set tolaria.epochs=abc: tolaria.epochs: expected an integer >= 1, got "abc"\n',
    )
    assert "torch" not in imported


def test_help_answers_before_torch_loads(tmp_path: Path) -> None:
    status, out, err, imported = run_logging_imports("--help", cwd=tmp_path)
    assert (status, err) == (EXIT_OK, "")
    assert out.startswith("usage: python -m esper.run")
    for option in ("--set", "--run-dir", "--resume"):
        assert option in out
    assert "torch" not in imported


def test_a_usage_error_answers_before_torch_loads(tmp_path: Path) -> None:
    status, _out, err, imported = run_logging_imports(cwd=tmp_path)
    assert status == EXIT_CONFIG_ERROR
    assert err.endswith("python -m esper.run: error: the following arguments are required: config\n"), err
    assert "torch" not in imported


def test_a_config_read_from_a_pipe_is_read_once(tmp_path: Path) -> None:
    """A second read of a pipe finds it empty: the run went on with every key at its default. This config names an
    npz file that is not there, which only the full check after the imports refuses: so main read the piped text."""
    missing = tmp_path / "missing.npz"
    piped = f'[tolaria]\ndataset = "npz"\nnpz_path = "{missing}"\n'
    done = run_command(
        "-m", "esper.run", "/dev/stdin", "--run-dir", str(tmp_path / "r"), cwd=tmp_path, stdin=piped, timeout=120
    )
    assert done.returncode == EXIT_CONFIG_ERROR, done.stderr
    assert f"tolaria.npz_path = '{missing}': file not found" in done.stderr
