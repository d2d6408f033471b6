"""A run's command key survives --resume, and a resume verifies every journaled command with it before replaying."""

from __future__ import annotations

import json
import re
import stat
from typing import TYPE_CHECKING

import msgspec
import pytest

from actors.kasmina.journal import JOURNAL_FILENAME, JournalBoundary, read_journal
from esper.resume import check_resume_files
from esper.run import main
from esper.run_key import KEY_FILE, RunKey, env_key, keep_run_key, new_run_key, read_run_key
from esper.run_parser import EXIT_CONFIG_ERROR
from esper.runtime.errors import ConfigError
from schemas.config import RunConfig
from schemas.config_platform import SecurityConfig
from tests._kasmina_harness import make_packet, signed_germinate
from tests.test_e2e_run import tiny_config

if TYPE_CHECKING:
    from pathlib import Path

    from schemas.control import AdaptationCommand

pytestmark = pytest.mark.timeout(120)

ENV = "ESPER_LEYLINE_SECRET"
RUN = "run-kasmina"  # make_packet's run


def germinate(step: int, key: bytes, run_id: str = RUN) -> AdaptationCommand:
    return signed_germinate(step, key, key_id=SecurityConfig().key_id, run_id=run_id)


def write_journal(directory: Path, entries: list[JournalBoundary]) -> Path:
    """The journal, beside a manifest listing a checkpoint (a run stopped before its first is started over, its journal
    unread)."""
    path = directory / "checkpoints" / JOURNAL_FILENAME
    path.parent.mkdir(parents=True, exist_ok=True)
    info = {"file": "step-8.pt", "sha256": "0" * 64, "size_bytes": 7, "global_step": 8, "epoch": 0, "batch_index": 8}
    (path.parent / "manifest.json").write_text(json.dumps({"checkpoints": [info]}), encoding="utf-8")
    encoder = msgspec.json.Encoder()
    path.write_bytes(b"".join(encoder.encode(entry) + b"\n" for entry in entries))
    return path


def check(directory: Path, key: RunKey | None) -> None:
    check_resume_files(directory, run_id=RUN, key=key, security=SecurityConfig())


def test_the_run_key_file_is_written_atomically_for_its_owner_alone_and_read_back(tmp_path: Path) -> None:
    key = new_run_key()
    assert key.secret.hex() not in repr(key)  # a key in a log line or a traceback's locals is a key given away
    keep_run_key(tmp_path, key)
    path = tmp_path / KEY_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_bytes() == key.secret
    assert sorted(p.name for p in tmp_path.iterdir()) == [KEY_FILE]  # no temp file left
    again = read_run_key(tmp_path)
    assert again is not None
    assert (again.secret, again.env, again.stored) == (key.secret, None, True)
    assert read_run_key(tmp_path / "elsewhere") is None


def test_a_key_from_the_environment_stays_out_of_the_run_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV, "operator-secret-0123456789")
    (tmp_path / KEY_FILE).write_bytes(b"k" * 32)  # an earlier attempt's, without the variable
    key = env_key(RunConfig())
    assert key is not None
    assert (key.secret, key.env) == (b"operator-secret-0123456789", ENV)
    keep_run_key(tmp_path, key)
    assert not (tmp_path / KEY_FILE).exists()
    monkeypatch.delenv(ENV)
    assert env_key(RunConfig()) is None


def test_a_secret_shorter_than_16_bytes_is_refused_before_the_run_directory_is_made(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A 1-byte secret was accepted: 256 tries forge any command from one signed line of the journal."""
    monkeypatch.setenv(ENV, "x")
    with pytest.raises(ConfigError) as refused:
        env_key(RunConfig())
    assert str(refused.value) == (
        f"security.secret_env: the environment variable {ENV} holds 1 bytes, fewer than the 16 a command-signing key"
        " needs (use e.g. 32 random bytes, hex-encoded)"
    )
    monkeypatch.setenv(ENV, "s3cr3t-of-15-by")  # its value is never said
    config = tmp_path / "c.toml"
    config.write_text(f'[tolaria]\nepochs = 1\n[urza]\nroot = "{tmp_path / "urza"}"\n', encoding="utf-8")
    assert main([str(config), "--run-dir", str(tmp_path / "run")]) == EXIT_CONFIG_ERROR
    err = capsys.readouterr().err
    assert f"{ENV} holds 15 bytes" in err
    assert "s3cr3t" not in err
    assert not (tmp_path / "run").exists()
    monkeypatch.setenv(ENV, "é" * 8)  # bytes, not characters: 16 bytes of UTF-8
    key = env_key(RunConfig())
    assert key is not None
    assert len(key.secret) == 16


def test_a_key_file_that_holds_no_key_is_refused_in_one_line(tmp_path: Path) -> None:
    (tmp_path / KEY_FILE).write_bytes(b"short")
    with pytest.raises(ConfigError) as refused:
        read_run_key(tmp_path)
    assert str(refused.value) == (
        f"--resume {tmp_path}: {KEY_FILE} holds 5 bytes, not a 32-byte key: it is not the key this run signed its"
        " commands with"
    )


def test_a_resume_check_refuses_a_forged_or_tampered_command_and_names_the_step(tmp_path: Path) -> None:
    key = new_run_key()
    genuine = germinate(8, key.secret)
    entries = [JournalBoundary(packet=make_packet(4)), JournalBoundary(packet=make_packet(8), command=genuine)]
    path = write_journal(tmp_path, entries)
    check(tmp_path, key)
    forged = germinate(8, b"f" * 32)
    for command in (forged, msgspec.structs.replace(genuine, target_slot="b")):
        write_journal(tmp_path, [entries[0], JournalBoundary(packet=make_packet(8), command=command)])
        with pytest.raises(ConfigError) as refused:
            check(tmp_path, key)
        assert str(refused.value) == (
            f"--resume {tmp_path}: checkpoints/{JOURNAL_FILENAME}: step 8: the germinate command {command.command_id}:"
            f" its signature does not match the run's key, but the journal records it accepted (the run's key:"
            f" {KEY_FILE}); replaying it would act on a command this run did not accept: restore the journal, or start"
            " a new run"
        )
    assert path.read_bytes().count(b"\n") == 2  # checked, never rewritten


def test_a_resume_check_refuses_a_journal_whose_boundaries_go_backwards(tmp_path: Path) -> None:
    """Two processes training into one directory interleaved the journal: the resume replayed it into Kasmina,
    which failed on the earlier step again at every restart (RestartIntensityExceeded) instead of saying why."""
    key = new_run_key()
    steps = [4, 8, 12, 8, 16]
    write_journal(tmp_path, [JournalBoundary(packet=make_packet(step)) for step in steps])
    with pytest.raises(ConfigError) as refused:
        check(tmp_path, key)
    assert str(refused.value) == (
        f"--resume {tmp_path}: checkpoints/{JOURNAL_FILENAME}: the boundary of step 8 follows that of step 12"
        " (boundaries must go forwards), so the seeds' lifecycle cannot be rebuilt; restore the journal, or start a"
        " new run"
    )
    write_journal(tmp_path, [JournalBoundary(packet=make_packet(step)) for step in (4, 8, 12, 16)])
    check(tmp_path, key)


def test_a_resume_check_refuses_journaled_commands_without_the_runs_key(tmp_path: Path) -> None:
    """A run without the environment variable and without its key file: nothing could verify its commands. One an
    earlier version wrote (its manifest names no version) may have signed with a random key it never saved (it was
    told to set the variable "to the key the run was started with", a key that never existed), or, written after
    command.key came, have lost its key file (it was told no key could verify it, when a backup's would)."""
    write_journal(tmp_path, [JournalBoundary(packet=make_packet(4))])
    check(tmp_path, None)  # no command: nothing to verify, the resume draws a new key
    write_journal(tmp_path, [JournalBoundary(packet=make_packet(4), command=germinate(4, b"k" * 32))])
    missing = (
        f"--resume {tmp_path}: checkpoints/{JOURNAL_FILENAME}: step 4 holds a signed command (germinate) and the run's"
        f" key is missing (no {KEY_FILE} in the run directory, {ENV} unset), so it cannot be verified"
    )
    with pytest.raises(ConfigError) as refused:
        check(tmp_path, None)
    # Its checkpoints do not say when it was written: a run from after command.key whose key file was deleted is told
    # to restore it, not that no key can verify it.
    assert str(refused.value) == (
        f"{missing}: restore its {KEY_FILE} (from a backup) or set {ENV} to the key it was started with; if a version"
        f" from before {KEY_FILE} was kept started it without {ENV}, that version signed with a random key it never"
        " saved and no key can verify it: finish it with that version, or start a new run"
    )
    manifest = tmp_path / "checkpoints" / "manifest.json"
    manifest.write_text(  # this version's: it keeps a key it draws, so the variable held the one
        json.dumps({**json.loads(manifest.read_text(encoding="utf-8")), "esper_version": "0.1.0"}), encoding="utf-8"
    )
    with pytest.raises(ConfigError) as refused:
        check(tmp_path, None)
    assert str(refused.value) == f"{missing}: set {ENV} to the key the run was started with, or start a new run"


RESUMED_EPOCHS = 8


def grown_config(tmp_path: Path) -> Path:
    """The e2e tiny run, grown by every_k at its first epoch end: its journal holds a GERMINATE. Four epochs and
    short lifecycle timers: every_k grafts no seed that could not pass G4 before the run ends (a resume to
    ``RESUMED_EPOCHS`` grafts one more)."""
    config = tiny_config(tmp_path, epochs=4)
    text = config.read_text(encoding="utf-8").replace(
        "[tamiyo]\n", '[tamiyo]\npolicy = "every_k"\nevery_k_epochs = 1\n'
    )
    for key in ("stage_min_dwell_steps", "g2_window_steps", "blend_ramp_steps"):
        text = re.sub(rf"^{key} = \d+$", f"{key} = 1", text, count=1, flags=re.MULTILINE)
    config.write_text(text, encoding="utf-8")
    return config


def _commands(run_dir: Path) -> list[JournalBoundary]:
    return [
        e
        for e in read_journal(run_dir / "checkpoints" / JOURNAL_FILENAME)
        if isinstance(e, JournalBoundary) and e.command
    ]


def test_a_forged_journal_is_refused_on_resume_and_the_kept_key_resumes_the_genuine_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The security review's repro: a GERMINATE copied into the journal's last boundary with a made-up signature was
    replayed by --resume and grew a seed. Without the variable a run now keeps its random key (0600) and a resume
    verifies every journaled command with it."""
    monkeypatch.delenv(ENV, raising=False)
    config = grown_config(tmp_path)
    run_dir = tmp_path / "run"
    assert main([str(config), "--run-dir", str(run_dir)]) == 0
    assert stat.S_IMODE((run_dir / KEY_FILE).stat().st_mode) == 0o600
    key_bytes = (run_dir / KEY_FILE).read_bytes()
    assert key_bytes.hex() not in (run_dir / "events.jsonl").read_text(encoding="utf-8")
    assert _commands(run_dir), "every_k germinates at the first epoch end: the journal holds a command"
    journal = run_dir / "checkpoints" / JOURNAL_FILENAME
    genuine = journal.read_bytes()
    lines = [json.loads(line) for line in genuine.splitlines()]
    last = max(i for i, e in enumerate(lines) if e["type"] == "JournalBoundary")
    step = lines[last]["packet"]["global_step"]
    run_id = lines[last]["packet"]["run_id"]
    forged = germinate(step, b"f" * 32, run_id=run_id)
    lines[last]["command"] = json.loads(msgspec.json.encode(forged))
    lines[last]["security"] = None
    journal.write_text("".join(json.dumps(e) + "\n" for e in lines), encoding="utf-8")
    forged_bytes = journal.read_bytes()
    capsys.readouterr()
    assert (
        main([str(config), "--set", f"tolaria.epochs={RESUMED_EPOCHS}", "--resume", str(run_dir)]) == EXIT_CONFIG_ERROR
    )
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith(
        f"--resume {run_dir}: checkpoints/{JOURNAL_FILENAME}: step {step}: the germinate command {forged.command_id}:"
        " its signature does not match the run's key, but the journal records it accepted"
    )
    assert journal.read_bytes() == forged_bytes  # refused before the claim: nothing touched
    journal.write_bytes(genuine)
    assert main([str(config), "--set", f"tolaria.epochs={RESUMED_EPOCHS}", "--resume", str(run_dir)]) == 0
    assert (run_dir / KEY_FILE).read_bytes() == key_bytes


def test_a_run_keyed_by_the_environment_resumes_with_it_and_is_refused_without_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(ENV, "operator-secret-0123456789")
    config = grown_config(tmp_path)
    run_dir = tmp_path / "run"
    assert main([str(config), "--run-dir", str(run_dir)]) == 0
    assert not (run_dir / KEY_FILE).exists()  # the key stays out of the run directory
    [first, *_] = _commands(run_dir)
    step = first.packet.global_step
    capsys.readouterr()
    monkeypatch.delenv(ENV)
    assert (
        main([str(config), "--set", f"tolaria.epochs={RESUMED_EPOCHS}", "--resume", str(run_dir)]) == EXIT_CONFIG_ERROR
    )
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith(f"--resume {run_dir}: checkpoints/{JOURNAL_FILENAME}: step {step} holds a signed command")
    assert f"no {KEY_FILE} in the run directory, {ENV} unset" in err
    monkeypatch.setenv(ENV, "another-secret-0123456789")
    assert (
        main([str(config), "--set", f"tolaria.epochs={RESUMED_EPOCHS}", "--resume", str(run_dir)]) == EXIT_CONFIG_ERROR
    )
    err = capsys.readouterr().err
    assert f"step {step}: the {first.command.kind.value if first.command else ''} command" in err
    assert f"(the run's key: the environment variable {ENV})" in err
    assert f"give {ENV} the value the run started with" in err  # the likely cause, not a forged journal
    monkeypatch.setenv(ENV, "operator-secret-0123456789")
    assert main([str(config), "--set", f"tolaria.epochs={RESUMED_EPOCHS}", "--resume", str(run_dir)]) == 0
    assert not (run_dir / KEY_FILE).exists()


def test_a_run_that_kept_its_own_key_resumes_with_it_when_the_variable_is_set_since(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run started without the variable signed its commands with the key it kept; resumed with the variable set,
    its genuine journal was refused as forged (and, with no command journaled yet, the key file was deleted)."""
    monkeypatch.delenv(ENV, raising=False)
    config = grown_config(tmp_path)
    run_dir = tmp_path / "run"
    assert main([str(config), "--run-dir", str(run_dir)]) == 0
    key_bytes = (run_dir / KEY_FILE).read_bytes()
    assert _commands(run_dir)
    monkeypatch.setenv(ENV, "operator-secret-0123456789")
    assert main([str(config), "--set", f"tolaria.epochs={RESUMED_EPOCHS}", "--resume", str(run_dir)]) == 0
    assert (run_dir / KEY_FILE).read_bytes() == key_bytes  # the run keeps the key it started with
    commands = _commands(run_dir)
    assert len(commands) > 1  # the resumed session signed more, and they verify with the same key


def test_a_run_an_earlier_version_started_with_a_short_secret_resumes_with_it_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run started with an 8-byte secret (earlier versions took one) signed its journal with it: refusing the secret
    on --resume, while any other secret fails the journal's signatures, left the run with no way to finish."""
    monkeypatch.setenv(ENV, "shortkey")
    config = grown_config(tmp_path)
    run_dir = tmp_path / "run"
    monkeypatch.setattr("esper.run_key.MIN_SECRET_BYTES", 1)  # the earlier version's rule
    assert main([str(config), "--run-dir", str(run_dir)]) == 0
    assert _commands(run_dir)
    monkeypatch.undo()
    monkeypatch.setenv(ENV, "shortkey")
    assert main([str(config), "--set", f"tolaria.epochs={RESUMED_EPOCHS}", "--resume", str(run_dir)]) == 0
    lines = [json.loads(line) for line in (run_dir / "events.jsonl").read_text(encoding="utf-8").splitlines()]
    [warning] = [line for line in lines if line.get("event") == "run_secret_short"]
    assert (warning["env"], warning["secret_bytes"]) == (ENV, 8)
    assert "shortkey" not in (run_dir / "events.jsonl").read_text(encoding="utf-8")
    with pytest.raises(ConfigError, match="holds 8 bytes"):
        env_key(RunConfig())  # a new run is still refused it


def test_a_short_secret_cannot_slip_in_by_resuming_a_run_that_signed_nothing_yet(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The resume's allowance for a short secret is for a run whose journal is signed with it: a run that signed no
    command yet (started with a proper secret, or none) was resumed with a 5-byte one, which then signed every later
    command."""
    monkeypatch.setenv(ENV, "operator-secret-0123456789")
    config = tiny_config(tmp_path, epochs=1)
    run_dir = tmp_path / "run"
    quiet = ["--set", "tamiyo.plateau_patience_epochs=100"]
    assert main([str(config), *quiet, "--run-dir", str(run_dir)]) == 0
    assert not _commands(run_dir)
    capsys.readouterr()
    monkeypatch.setenv(ENV, "short")
    resumed = [str(config), *quiet, "--set", "tolaria.epochs=2", "--resume", str(run_dir)]
    assert main(resumed) == EXIT_CONFIG_ERROR
    err = capsys.readouterr().err
    assert f"{ENV} holds 5 bytes, fewer than the 16" in err
    assert err.rstrip().endswith("this run signed no command yet, so any secret of at least 16 bytes resumes it")
    monkeypatch.setenv(ENV, "operator-secret-0123456789")
    assert main(resumed) == 0


def test_a_resume_with_another_key_id_is_refused_for_the_key_id_not_as_a_forged_journal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The journal's check ran before the config's: a changed security.key_id read as commands whose signatures do
    not match, blaming the secret or the journal."""
    monkeypatch.setenv(ENV, "operator-secret-0123456789")
    config = grown_config(tmp_path)
    run_dir = tmp_path / "run"
    assert main([str(config), "--run-dir", str(run_dir)]) == 0
    assert _commands(run_dir)
    capsys.readouterr()
    resumed = [str(config), "--set", f"tolaria.epochs={RESUMED_EPOCHS}", "--set", 'security.key_id="k2"']
    assert main([*resumed, "--resume", str(run_dir)]) == EXIT_CONFIG_ERROR
    err = capsys.readouterr().err
    assert "security.key_id is 'default' in the run and 'k2' here" in err
    assert "signature" not in err
