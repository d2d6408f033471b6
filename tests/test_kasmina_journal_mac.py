"""A journaled verdict's MAC: an edited STALE, a MAC removed or moved are refused; a journal with none replays."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import msgspec
import pytest

from actors.kasmina.journal import JOURNAL_FILENAME, JournalBoundary, read_journal
from esper.resume import check_resume_files
from esper.run_key import RunKey
from esper.runtime.errors import ConfigError
from schemas.config_platform import SecurityConfig
from schemas.domain_enums import CommandKind, CommandRejectReason
from schemas.enums import SeedLifecycleStage as Stage
from schemas.runtime import ChildFailed
from tests._kasmina_harness import KEY, KEY_ID, RUN, running_kasmina, signed_germinate

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from esper.runtime.clock import ManualClock
    from esper.runtime.events import RecordingSink

Line = dict[str, object]


async def _stale_then_accepted(clock: ManualClock, sink: RecordingSink, checkpoints: Path) -> tuple[str, str]:
    """A run whose journal holds a genuinely signed GERMINATE refused as STALE at step 2 and one accepted at step 3;
    returns their command ids."""
    async with running_kasmina(clock, sink, lag=2, journal_dir=checkpoints) as h:
        await h.boundary(1)
        clock.advance(1000.0)  # past the verifier's freshness window: a command issued at 0 is stale
        stale = signed_germinate(2)
        refused = await h.boundary(2, stale)
        assert refused.command_results[0].reason is CommandRejectReason.STALE
        accepted = h.germinate()
        await h.boundary(3, accepted)
    return stale.command_id, accepted.command_id


def _edit(path: Path, step: int, change: Callable[[Line], None]) -> None:
    """Change the journal's boundary line of ``step`` (decoded as JSON) in place; every other line's bytes kept."""
    lines = path.read_bytes().splitlines(keepends=True)
    for i, raw in enumerate(lines):
        line = msgspec.json.decode(raw)
        if line["type"] == "JournalBoundary" and line["packet"]["global_step"] == step:
            change(line)
            lines[i] = msgspec.json.encode(line) + b"\n"
    path.write_bytes(b"".join(lines))


def _mac(path: Path, step: int) -> str:
    [entry] = [e for e in read_journal(path) if isinstance(e, JournalBoundary) and e.packet.global_step == step]
    assert entry.verdict_mac is not None
    return entry.verdict_mac


def _accept(line: Line) -> None:
    line["security"] = None


def _strip(line: Line) -> None:
    line.pop("verdict_mac", None)


def _check_resume(run_dir: Path) -> None:
    """esper.resume's check of the journal, beside a manifest listing a checkpoint (as tests/test_run_key.py's)."""
    info = {"file": "step-3.pt", "sha256": "0" * 64, "size_bytes": 7, "global_step": 3, "epoch": 0, "batch_index": 3}
    (run_dir / "checkpoints" / "manifest.json").write_text(json.dumps({"checkpoints": [info]}), encoding="utf-8")
    key = RunKey(secret=KEY, env="ESPER_LEYLINE_SECRET", stored=False)
    check_resume_files(run_dir, run_id=RUN, key=key, security=SecurityConfig(key_id=KEY_ID))


async def _replay_refusal(clock: ManualClock, sink: RecordingSink, checkpoints: Path) -> str:
    """What Kasmina's replay of the journal (a resume to step 3) fails with."""
    sink.events.clear()
    async with running_kasmina(clock, sink, lag=2, journal_dir=checkpoints, resume_step=3) as h:
        failed = sink.of_type(ChildFailed)
        assert failed, "the replay must refuse the journal"
        assert failed[0].error_type == "JournalTampered"
        assert h.plans.empty()
        return failed[0].error


async def test_a_stale_refusal_edited_to_accepted_is_refused_on_replay_and_resume(
    clock: ManualClock, sink: RecordingSink, tmp_path: Path
) -> None:
    """The command's HMAC holds and STALE was judged on arrival only: edited to accepted, the replay grafted it."""
    checkpoints = tmp_path / "checkpoints"
    stale, _ = await _stale_then_accepted(clock, sink, checkpoints)
    path = checkpoints / JOURNAL_FILENAME
    _check_resume(tmp_path)  # genuine: passes
    _edit(path, 2, _accept)
    said = (
        f"step 2: the germinate command {stale}: the journal records it accepted, but its verdict MAC does not match"
        " that verdict at this run and step with the run's key"
    )
    assert await _replay_refusal(clock, sink, checkpoints) == f"{path}: {said}"
    with pytest.raises(ConfigError) as refused:
        _check_resume(tmp_path)
    assert str(refused.value).startswith(f"--resume {tmp_path}: checkpoints/{JOURNAL_FILENAME}: {said} (the run's key:")
    assert "\n" not in str(refused.value)


async def test_a_mac_removed_from_one_line_of_a_maced_journal_is_refused(
    clock: ManualClock, sink: RecordingSink, tmp_path: Path
) -> None:
    checkpoints = tmp_path / "checkpoints"
    _, accepted = await _stale_then_accepted(clock, sink, checkpoints)
    path = checkpoints / JOURNAL_FILENAME
    genuine = path.read_bytes()
    _edit(path, 3, _strip)  # a later line's: its edit would go unchecked
    said = (
        f"step 3: the germinate command {accepted}: the journal records it accepted without a verdict MAC, which the"
        " journal's commands carry from step 2 on"
    )
    assert await _replay_refusal(clock, sink, checkpoints) == f"{path}: {said}"
    path.write_bytes(genuine)
    _edit(path, 2, _strip)  # the first line's, to pass the journal as unsealed, and its verdict edited
    _edit(path, 2, _accept)
    said = (
        f"step 3: the germinate command {accepted}: the journal records it accepted with a verdict MAC, but its"
        " command at step 2 carries none (a MAC removed)"
    )
    assert await _replay_refusal(clock, sink, checkpoints) == f"{path}: {said}"
    with pytest.raises(ConfigError, match="carries none"):
        _check_resume(tmp_path)


async def test_a_mac_copied_from_another_step_does_not_verify(
    clock: ManualClock, sink: RecordingSink, tmp_path: Path
) -> None:
    """Step 3's MAC of an accepted verdict, put on step 2's stale line edited to accepted: it covers step 3 and
    another command."""
    checkpoints = tmp_path / "checkpoints"
    stale, _ = await _stale_then_accepted(clock, sink, checkpoints)
    path = checkpoints / JOURNAL_FILENAME
    mac = _mac(path, 3)

    def graft(line: Line) -> None:
        _accept(line)
        line["verdict_mac"] = mac

    _edit(path, 2, graft)
    assert await _replay_refusal(clock, sink, checkpoints) == (
        f"{path}: step 2: the germinate command {stale}: the journal records it accepted, but its verdict MAC does"
        " not match that verdict at this run and step with the run's key"
    )
    with pytest.raises(ConfigError, match="does not match that verdict"):
        _check_resume(tmp_path)


async def test_a_journal_without_any_mac_replays_and_is_continued_without_one(
    clock: ManualClock, sink: RecordingSink, tmp_path: Path
) -> None:
    """An earlier version's journal (no MAC on any line) resumes as before; the resumed session journals its commands
    without MACs too, so the journal never mixes the two (which is refused) and resumes again."""
    checkpoints = tmp_path / "checkpoints"
    await _stale_then_accepted(clock, sink, checkpoints)
    path = checkpoints / JOURNAL_FILENAME
    for step in (2, 3):
        _edit(path, step, _strip)
    _check_resume(tmp_path)
    sink.events.clear()
    async with running_kasmina(clock, sink, lag=2, journal_dir=checkpoints, resume_step=3) as h:
        assert await h.stage("a") is Stage.GERMINATED
        await h.boundary(4, h.command(CommandKind.GERMINATE, slot="b", blueprint_id="BP002"))
        assert not sink.of_type(ChildFailed)
    commands = [e for e in read_journal(path) if isinstance(e, JournalBoundary) and e.command is not None]
    assert [e.packet.global_step for e in commands] == [2, 3, 4]
    assert all(e.verdict_mac is None for e in commands)
    _check_resume(tmp_path)
    sink.events.clear()
    async with running_kasmina(clock, sink, lag=2, journal_dir=checkpoints, resume_step=4) as h:
        assert await h.stage("a") is Stage.GERMINATED
        assert not sink.of_type(ChildFailed)
