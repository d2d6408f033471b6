"""Tamiyo's saved stop state on --resume: tamiyo_state.json carries its SHA-256.

A damaged, truncated or unreadable file is a warning, and the journaled state (the one a kill leaves) is used instead,
or a one-line error when there is none. An unreadable file used to end the resume with a traceback, and a flipped byte
that left valid JSON was taken as the controller's state, silently."""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio
import msgspec
import pytest
from structlog.testing import capture_logs

import esper.tamiyo_resume
from actors.tamiyo.heuristic import HeuristicState
from actors.tamiyo.outcomes import OutcomeState
from actors.tamiyo.state import TamiyoCounters, TamiyoState
from actors.tamiyo.state_journal import STATE_JOURNAL_FILENAME, TamiyoStateJournal
from actors.tamiyo.stop_state import StopStateDamaged, encode_stop_state, read_stop_state, write_stop_state
from esper.runtime.errors import ConfigError
from esper.tamiyo_resume import TAMIYO_STATE_FILE, load_tamiyo_state, tamiyo_resume_state

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path


def _state(step: int, decisions: int = 0) -> TamiyoState:
    return TamiyoState(
        policy="heuristic",
        policy_version="heuristic-1",
        fallback=HeuristicState(),
        outcomes=OutcomeState(),
        counters=TamiyoCounters(decisions=decisions),
        last_step=step,
    )


def _flip_a_digit(data: bytes) -> bytes:
    """The state's decision count changed by one digit: still valid JSON, a state that decodes, the wrong one."""
    at = data.index(b'"decisions":7') + len(b'"decisions":')
    return data[:at] + b"8" + data[at + 1 :]


def test_the_stop_state_round_trips_with_its_sha256(tmp_path: Path) -> None:
    path = tmp_path / TAMIYO_STATE_FILE
    assert read_stop_state(path) is None  # absent
    write_stop_state(path, _state(40, decisions=7))
    assert read_stop_state(path) == _state(40, decisions=7)
    assert b'"sha256":"' in path.read_bytes()


@pytest.mark.parametrize(
    ("damage", "why"),
    [
        (_flip_a_digit, "does not match the recorded"),
        (lambda data: data[: len(data) // 2], "not a checksummed controller state: Input data was truncated"),
        (lambda data: b"", "not a checksummed controller state: Input data was truncated"),
        (lambda data: data.replace(b'"sha256":"', b'"sha256":"\\n', 1), "the recorded sha256 '\\\\n"),
        # An older version's file: the bare state, no digest to check it by (the decoder's words said nothing of it).
        (
            lambda _: msgspec.json.encode(_state(40, decisions=7)),
            r"^written by an earlier version of Esper \(a controller state without a checksum\), which this version"
            " does not read$",
        ),
    ],
    ids=["flipped-byte", "truncated", "empty", "not-a-digest", "no-digest"],
)
def test_a_damaged_stop_state_is_refused_in_one_line(
    tmp_path: Path, damage: Callable[[bytes], bytes], why: str
) -> None:
    path = tmp_path / TAMIYO_STATE_FILE
    path.write_bytes(damage(encode_stop_state(_state(40, decisions=7))))
    with pytest.raises(StopStateDamaged, match=why) as refused:
        read_stop_state(path)
    assert "\n" not in str(refused.value)
    with capture_logs() as logs:
        state, damaged = load_tamiyo_state(path, "heuristic")
    assert (state, damaged) == (None, str(refused.value))
    assert [(e["event"], e["log_level"], e["file"], e["error"]) for e in logs] == [
        ("tamiyo_state_unreadable", "warning", str(path), str(refused.value))
    ]


def test_an_unreadable_stop_state_is_a_warning_and_no_state(tmp_path: Path) -> None:
    path = tmp_path / TAMIYO_STATE_FILE
    path.mkdir()  # a directory where the file should be: reading it fails
    with capture_logs() as logs:
        assert load_tamiyo_state(path, "heuristic") == (None, "cannot be read: Is a directory")
    assert [e["event"] for e in logs] == ["tamiyo_state_unreadable"]


def _checkpoints(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, step: int) -> Path:
    checkpoints = tmp_path / "run" / "checkpoints"
    checkpoints.mkdir(parents=True)
    monkeypatch.setattr(esper.tamiyo_resume, "resume_point", lambda _checkpoints, _memo=None: step)
    return checkpoints


def test_a_damaged_stop_state_resumes_from_the_journaled_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    checkpoints = _checkpoints(tmp_path, monkeypatch, step=48)
    write_stop_state(checkpoints / TAMIYO_STATE_FILE, _state(48, decisions=7))
    journal = TamiyoStateJournal(checkpoints / STATE_JOURNAL_FILENAME)
    for step in (16, 32):
        anyio.run(journal.append, step, _state(step, decisions=step))
    assert tamiyo_resume_state(checkpoints, 4, "heuristic") == (
        _state(48, decisions=7),
        "graceful_stop",
        48,
    )  # intact: used
    path = checkpoints / TAMIYO_STATE_FILE
    path.write_bytes(_flip_a_digit(path.read_bytes()))
    with capture_logs() as logs:
        assert tamiyo_resume_state(checkpoints, 4, "heuristic") == (_state(32, decisions=32), "journal", 48)
    assert [e["event"] for e in logs] == ["tamiyo_state_unreadable"]


def test_a_damaged_stop_state_with_no_journaled_state_is_a_one_line_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    checkpoints = _checkpoints(tmp_path, monkeypatch, step=48)
    path = checkpoints / TAMIYO_STATE_FILE
    path.write_bytes(encode_stop_state(_state(48, decisions=7))[:-20])
    with pytest.raises(ConfigError) as refused:
        tamiyo_resume_state(checkpoints, 4, "heuristic")
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith(f"--resume {checkpoints.parent}: {path}: not a checksummed controller state")
    assert message.endswith(
        f"{STATE_JOURNAL_FILENAME} holds no controller state at or before step 48 to use instead"
        " (remove the file to resume with a fresh controller)"
    )
    path.unlink()  # the operator's choice: a fresh controller (the resume's tamiyo_state_behind warning says so)
    assert tamiyo_resume_state(checkpoints, 4, "heuristic") == (None, "fresh", 48)


def test_a_damaged_stop_state_before_the_first_packet_costs_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A checkpoint before the first state packet leaves the controller nothing to restore: a fresh one is right."""
    checkpoints = _checkpoints(tmp_path, monkeypatch, step=2)
    (checkpoints / TAMIYO_STATE_FILE).write_bytes(b"{")
    with capture_logs():
        assert tamiyo_resume_state(checkpoints, 4, "heuristic") == (None, "fresh", 2)


def test_a_stop_state_of_another_policy_is_passed_over_for_the_journaled_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tamiyo_state.json with a valid digest but "policy": "gnn", resumed under the heuristic, stopped the run when
    the controller refused it at its build (exit 1); README: an unusable state file is passed over with a warning."""
    checkpoints = _checkpoints(tmp_path, monkeypatch, step=48)
    path = checkpoints / TAMIYO_STATE_FILE
    write_stop_state(path, msgspec.structs.replace(_state(48, decisions=7), policy="gnn"))
    anyio.run(TamiyoStateJournal(checkpoints / STATE_JOURNAL_FILENAME).append, 32, _state(32, decisions=32))
    with capture_logs() as logs:
        assert tamiyo_resume_state(checkpoints, 4, "heuristic") == (_state(32, decisions=32), "journal", 48)
    why = "it is the state of policy 'gnn', this run's tamiyo.policy is 'heuristic'"
    assert [(e["event"], e["file"], e["error"]) for e in logs] == [("tamiyo_state_unreadable", str(path), why)]


def test_a_journaled_state_of_another_policy_is_a_one_line_refusal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    checkpoints = _checkpoints(tmp_path, monkeypatch, step=48)
    journal = checkpoints / STATE_JOURNAL_FILENAME
    anyio.run(TamiyoStateJournal(journal).append, 32, msgspec.structs.replace(_state(32), policy="gnn"))
    with pytest.raises(ConfigError) as refused:
        tamiyo_resume_state(checkpoints, 4, "heuristic")
    assert str(refused.value) == (
        f"--resume {checkpoints.parent}: {journal}: its controller state at or before step 48 is of policy 'gnn',"
        " this run's tamiyo.policy is 'heuristic'"
    )
