"""What a run directory says about the run in it, for ``--resume``: its id, its earlier figures, whether it is done."""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import msgspec

from actors.tolaria.checkpoint_codec import CheckpointError, checkpoint_counters
from actors.tolaria.checkpoint_verify import DigestMemo, latest_good, verified_checkpoint
from actors.tolaria.checkpoints import MANIFEST, read_manifest, read_written_by
from esper.log_levels import LEVEL_NUMBERS
from esper.run_files import run_files
from esper.runtime.emergency import re_announced
from esper.runtime.emergency_tally import EmergencyTally
from esper.runtime.stage_refusals import Transition
from schemas.enums import EmergencyLevel
from schemas.run import RunSummary

if TYPE_CHECKING:
    from pathlib import Path

    from actors.tolaria.checkpoints import CheckpointInfo
    from esper.decisions import Decision as DecisionRecord
    from esper.runtime.stage_refusals import Refusal
    from schemas.config import RunConfig
    from schemas.enums import SeedLifecycleStage


def previous_run_id(directory: Path) -> str:
    """The id of the run in ``directory`` (its summary, else its first ``run_started`` event, else its first
    ``run_starting``, else the directory's name): a resumed run keeps it, so its own earlier messages are recognised.
    ``run_started`` first: an attempt stopped while starting logged only ``run_starting``, under an id no checkpoint
    carries. The files are those the run's config.toml names. Blocking."""
    files = run_files(directory)
    try:
        summary = msgspec.json.decode((directory / files.summary).read_bytes(), type=dict[str, object])
        if isinstance(summary.get("run_id"), str):
            return str(summary["run_id"])
    except (OSError, msgspec.DecodeError):
        pass
    found = _first_values(directory / files.events, ("run_started", "run_starting"), "run_id")
    return found.get("run_started") or found.get("run_starting") or directory.name


def written_by(directory: Path) -> str | None:
    """The Esper version that wrote the run in ``directory``: its checkpoint manifest's ``esper_version``; with no
    manifest (the run stopped before its first checkpoint), the ``esper_version`` of its first ``run_starting`` event.
    None when neither says (a manifest of a version that recorded none, an unreadable one, no such event). Blocking.
    """
    checkpoints = directory / "checkpoints"
    if (checkpoints / MANIFEST).exists():
        return read_written_by(checkpoints)
    return _first_values(directory / run_files(directory).events, ("run_starting",), "esper_version").get(
        "run_starting"
    )


def _first_values(events: Path, names: tuple[str, ...], key: str) -> dict[str, str]:
    """The string ``key`` of the first event of each of ``names`` in the ``events`` file that has one, by event name;
    whatever cannot be read is left out."""
    markers = {f'"{name}"'.encode(): name for name in names}
    found: dict[str, str] = {}
    try:
        if not events.is_file():  # missing, or a device such as /dev/null that reads forever or nothing
            raise FileNotFoundError(events)
        with events.open("rb") as lines:
            for line in lines:
                for marker, name in markers.items():
                    if marker in line and name not in found:
                        entry = msgspec.json.decode(line, type=dict[str, object])
                        value = entry.get(key)
                        if entry.get("event") == name and isinstance(value, str):
                            found[name] = value
                if len(found) == len(names):
                    break
    except (OSError, msgspec.DecodeError):
        pass
    return found


class EarlierTally(NamedTuple):
    """What a resumed run's summary counts from its earlier sessions (see earlier_tally)."""

    stages: list[tuple[str, SeedLifecycleStage, int]]  # the seeds' transitions: (seed id, stage, step)
    epochs: list[tuple[int, int, float]]  # (epoch number from 1, step, validation accuracy)
    decisions: list[DecisionRecord]
    slot_transitions: list[Transition]  # every slot's, for slot_transitions_at
    emergencies: EmergencyTally  # the earlier sessions' emergency signals, each move of the ladder once
    # The stage ops the trainer refused and where they took effect (the summary counts each transition from there).
    refusals: tuple[Refusal, ...] = ()
    # What the summary will miss, one phrase per file that could not be read whole (the summary table prints them).
    incomplete: tuple[str, ...] = ()
    # Why metrics.csv could not be read (None: it was): its epochs come back from Kasmina's journal instead.
    metrics_problem: str | None = None
    # What the summary will miss of the earlier sessions with their seed transitions whole (their decisions, which
    # an earlier version did not log): said as ``incomplete`` is, but the host-only baseline is still known.
    partial: tuple[str, ...] = ()
    # The rule of each Nissa alert the earlier sessions fired (their alert_fired lines), in file order.
    alerts_fired: tuple[str, ...] = ()
    # The reason and id of each command Kasmina refused in the earlier sessions (their command_rejected lines).
    rejected_commands: tuple[tuple[str, str], ...] = ()


_LOST = "the earlier sessions' decisions, seed transitions (the host-only baseline's epoch) and emergency events"


def earlier_tally(directory: Path, config: RunConfig) -> EarlierTally:
    """What a resumed run's summary counts from its earlier sessions: the seeds' transitions, each epoch's figures,
    the decisions, every slot's transitions, the emergency signals, the refused stage ops and the alerts that fired.
    One read of each file; each is read on its own, so a metrics.csv gone does not cost the events' figures (the
    epochs it lacks are read back from Kasmina's journal: esper.resume_rows). An event log missing, unreadable, or
    ending epochs before the newest checkpoint (cut short, or written above info by an earlier version, which left
    out the records) is named in ``incomplete``. Blocking."""
    from esper.report_inputs import (  # matplotlib is not needed to resume
        ReportInputError,
        read_metrics,
        read_run_events,
    )

    events = directory / config.logging.json_file
    incomplete: list[str] = []
    try:
        found = read_run_events(events)
    except ReportInputError as err:
        found = None
        incomplete.append(f"{events.name} unreadable ({err}): {_LOST} are missing")
    metrics_problem: str | None = None
    try:
        rows = read_metrics(directory / config.nissa.metrics_csv)
    except ReportInputError as err:
        rows, metrics_problem = [], str(err)
    epochs = [
        (int(epoch), int(step), accuracy)  # metrics.csv counts epochs from 1, as the summary does
        for row in rows
        if (epoch := row.get("epoch")) is not None
        and (step := row.get("step")) is not None
        and (accuracy := row.get("val_accuracy")) is not None
    ]
    if found is None:
        return EarlierTally(
            [], epochs, [], [], EmergencyTally(), incomplete=tuple(incomplete), metrics_problem=metrics_problem
        )
    reached = _newest_checkpoint_epoch(directory)
    logged = found.last_epoch_end or 0
    # One epoch of slack: a kill -9 may come between an epoch's checkpoint and its line.
    if reached is not None and logged < reached - 1:
        # The resumed session's own log is open by now: a file deleted since holds its first lines alone.
        if logged:
            where = f"ends at epoch {logged} of the {reached} the checkpoints reached (cut short?): {_LOST} after it"
            where += " are"
        elif found.sessions == 0 and LEVEL_NUMBERS[config.logging.level] > LEVEL_NUMBERS["info"]:
            # Before every level kept the records a run reads back, a log above info had none of them (nor the
            # run_started line that every session now writes).
            where = (
                f"holds none of the {reached} epochs the checkpoints reached (an earlier version of Esper left them"
                f' out at logging.level = "{config.logging.level}", or the file was deleted or emptied): {_LOST} are'
            )
        else:
            where = f"holds none of the {reached} epochs the checkpoints reached (deleted or emptied?): {_LOST} are"
        incomplete.append(f"{events.name} {where} missing")
    partial: list[str] = []
    if not incomplete and logged and not found.decisions:
        # Every decision, a NO_OP's too, is logged since; a log of epochs without one is an earlier version's.
        partial.append(
            f"{events.name} holds no tamiyo_decision records for the {logged} epochs it logged (an earlier version"
            " of Esper did not write them): the earlier sessions' decisions are missing"
        )
    stages = [(e.seed_id, e.to_stage, e.step) for e in found.stages if e.seed_id is not None]
    slots = [Transition(e.slot, e.to_stage, e.step, e.seed_id) for e in found.stages]
    return EarlierTally(
        stages,
        epochs,
        found.decisions,
        slots,
        found.emergencies,
        found.refusals,
        tuple(incomplete),
        metrics_problem,
        tuple(partial),
        found.alerts_fired,
        found.rejected_commands,
    )


def _newest_checkpoint_epoch(directory: Path) -> int | None:
    """The epochs the newest checkpoint the manifest lists had ended (None without one, or an unreadable manifest)."""
    try:
        listed = read_manifest(directory / "checkpoints")
    except CheckpointError:
        return None
    return max((info.epoch for info in listed), default=None)


def slot_transitions_at(transitions: list[Transition], lag_steps: int, resume_step: int) -> list[Transition]:
    """The slot transitions decided at or before ``resume_step`` (a transition's event carries the step
    its plan takes effect, ``lag_steps`` later): what Nissa had heard when the run reached the checkpoint it resumes
    from. The resumed lifecycle's replay reports none of them again, so without them metrics.csv showed the trainer's
    coarser view of each seed until its next transition."""
    return [t for t in transitions if t.step - lag_steps <= resume_step]


def summary_problem(run_dir: Path, info: CheckpointInfo) -> str | None:
    """Why the run's summary.json is not the summary of the checkpoint ``info`` (a phrase for a notice), or None when
    it is: it decodes as a RunSummary whose training figures end at that checkpoint's step and epoch. Every session
    that ends writes one (a Ctrl-C's says interrupted, a failure's failed), so one that merely exists may be an
    earlier session's. A missing file's phrase starts with "no ". Blocking."""
    return _summary_of(run_dir, info)[1]


def _summary_of(run_dir: Path, info: CheckpointInfo) -> tuple[RunSummary | None, str | None]:
    """(the run's summary of the checkpoint ``info``, None), or (None, why summary.json is not it: summary_problem)."""
    name = run_files(run_dir).summary
    try:
        data = (run_dir / name).read_bytes()
    except FileNotFoundError:
        return None, f"no {name}"
    except OSError as err:
        return None, f"{name} cannot be read ({type(err).__name__})"
    if not data.strip():
        return None, f"{name} is empty"
    try:
        summary = msgspec.json.decode(data, type=RunSummary)
    except msgspec.DecodeError as err:
        return None, f"{name} is torn or not a summary ({err})"
    figures = summary.training
    if figures is None:
        return None, f"{name} is an earlier session's (status {summary.status}, no training figures)"
    if (figures.global_step, figures.epochs) != (info.global_step, info.epoch):
        return None, f"{name} is an earlier session's (status {summary.status}, step {figures.global_step})"
    return summary, None


def checkpoint_halt(run_dir: Path, info: CheckpointInfo, memo: DigestMemo | None = None) -> str | None:
    """Why the run halted, when the checkpoint ``info`` is one an L4 halt wrote (its emergency level, read from the
    file's header), else None: the reason the halt kept in that header, as the uninterrupted run's summary words it;
    for a checkpoint an earlier version wrote, the trainer's ``training_finished`` line for that step in
    events.jsonl, else its L4 emergency signal there, else a reason naming the step and L4 (a kill -9 can come before
    either line). Only a file that passes its size and SHA-256 is read (a damaged header could say anything).
    ``memo``: a start's checks' (see actors.tolaria.checkpoint_verify.DigestMemo). Blocking.
    """
    data = verified_checkpoint(run_dir / "checkpoints", info, memo=memo)
    if data is None:
        return None  # the resume's own load skips it, saying why
    try:
        counters = checkpoint_counters(data)
    except CheckpointError:
        return None  # the resume's own load refuses it, saying why
    level = counters.get("emergency_level")
    if not isinstance(level, int) or level < EmergencyLevel.L4_HALT:
        return None
    kept = counters.get("halt_reason")
    if isinstance(kept, str) and kept:
        return kept
    finished: str | None = None
    signalled: str | None = None
    events = run_dir / run_files(run_dir).events
    try:
        if not events.is_file():  # missing, or a device such as /dev/null
            raise FileNotFoundError(events)
        with events.open("rb") as lines:
            for line in lines:
                if b'"training_finished"' not in line and b'"emergency_signal"' not in line:
                    continue
                try:
                    entry = msgspec.json.decode(line, type=dict[str, object])
                except msgspec.DecodeError:
                    continue  # a torn last line
                reason = entry.get("halt_reason") if entry.get("event") == "training_finished" else entry.get("reason")
                if not isinstance(reason, str) or re_announced(reason):
                    continue
                if entry.get("status") == "halted" and entry.get("global_step") == info.global_step:
                    finished = reason
                elif entry.get("msg_level") == int(EmergencyLevel.L4_HALT) and entry.get("step") == info.global_step:
                    signalled = reason
    except OSError:
        pass
    if finished is not None:
        return finished
    if signalled is not None:
        return f"L4 at step {info.global_step}: {signalled}"
    return f"an emergency halt (L4) at step {info.global_step}, its reason not in {events.name}"


def finishing_halt(run_dir: Path, step: int | None, epochs: int, memo: DigestMemo | None = None) -> str | None:
    """Why the run halted, when a resume from the checkpoint at ``step`` only finishes the run (it ended the last of
    ``epochs`` epochs) and an L4 halt wrote it (see checkpoint_halt); else None. ``memo``: see checkpoint_halt.
    Blocking."""
    if step is None:
        return None
    info = next((e for e in read_manifest(run_dir / "checkpoints") if e.global_step == step), None)
    if info is None or info.epoch < epochs or info.batch_index != 0:
        return None
    return checkpoint_halt(run_dir, info, memo)


def already_trained(run_dir: Path, epochs: int) -> str | None:
    """A one-line notice when the run's last good checkpoint has already trained ``epochs`` epochs and the run wrote
    its summary of that checkpoint (a resume would have nothing to do and would only rewrite it), else None.
    Blocking: reads the manifest, and hashes the newest checkpoint only when the manifest says it is complete.

    A run whose last good checkpoint ended its last epoch but whose summary.json is missing, torn or an earlier
    session's (see summary_problem: killed between the two) gets None too: its resume finishes it from that
    checkpoint, training no step (its test split is scored only there).

    Raises:
        CheckpointError: checkpoints are listed but none passes its checksum.
    """
    checkpoints = run_dir / "checkpoints"
    listed = read_manifest(checkpoints) if checkpoints.is_dir() else []
    if not listed or listed[-1].epoch < epochs:
        return None  # without hashing anything: the resume verifies what it loads
    info = latest_good(checkpoints, quiet=True)  # a lookup: the resume's checks say a corrupt file, once logging runs
    if info is None or info.epoch < epochs:
        return None
    summary, problem = _summary_of(run_dir, info)
    if info.epoch == epochs and problem is not None:
        return None
    # The hint counts from what was trained: a run trained to 100 epochs and resumed with tolaria.epochs = 60 was
    # told to try 70, which has nothing to train either.
    trained = f"{info.epoch} of" if info.epoch == epochs else f"{info.epoch} epochs, more than"
    figures = summary.training if summary is not None else None
    halted = ""
    if figures is not None and figures.halted:
        halted = f", where it halted at L4 ({figures.halt_reason or 'no reason given'})"
    notice = (
        f"--resume {run_dir}: already trained {trained} tolaria.epochs = {epochs} epochs ({info.file}){halted};"
        f" nothing to resume (raise tolaria.epochs past {info.epoch}, e.g. --set tolaria.epochs={info.epoch + 10}, to"
        " train further)"
    )
    if problem is not None:
        # Finished with fewer epochs than it trained, its summary would misstate the run.
        written = "was never written" if problem.startswith("no ") else f"is not that checkpoint's ({problem})"
        notice += f"; its summary {written}: --set tolaria.epochs={info.epoch} finishes it"
    return notice
