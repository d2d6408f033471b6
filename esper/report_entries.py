"""One events.jsonl entry as the report reads it: a stage change, a pause or resume, a rollback, an alert, an end."""

from __future__ import annotations

from typing import NamedTuple

from esper.report_plot import PauseEvent, StageEvent
from schemas.enums import SeedLifecycleStage
from schemas.nissa import SEED_STAGE_EVENT_NAMES


def parse_stage(value: object) -> SeedLifecycleStage | None:
    """A stage from its number or its name (any case); None for anything else."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        try:
            return SeedLifecycleStage(value)
        except ValueError:
            return None
    if isinstance(value, str):
        try:
            return SeedLifecycleStage[value.strip().upper()]
        except KeyError:
            return None
    return None


def stage_event(entry: dict[str, object]) -> StageEvent | None:
    """The lifecycle transition in one events.jsonl entry, or None if it is not one (or lacks a field)."""
    if entry.get("event") not in SEED_STAGE_EVENT_NAMES:
        return None
    slot, step, to_stage = entry.get("slot"), entry.get("step"), parse_stage(entry.get("to_stage"))
    if not isinstance(slot, str) or not isinstance(step, int) or isinstance(step, bool) or to_stage is None:
        return None
    seed_id, blueprint_id = entry.get("seed_id"), entry.get("blueprint_id")
    return StageEvent(
        step=step,
        slot=slot,
        to_stage=to_stage,
        from_stage=parse_stage(entry.get("from_stage")),
        seed_id=seed_id if isinstance(seed_id, str) else None,
        blueprint_id=blueprint_id if isinstance(blueprint_id, str) else None,
    )


def pause_event(entry: dict[str, object]) -> PauseEvent | None:
    """The pause or resume an accepted command put into effect, from its ``command_result`` line; else None."""
    if entry.get("event") != "command_result" or entry.get("accepted") is not True:
        return None
    kind, step, seed_id = entry.get("kind"), entry.get("applied_step"), entry.get("seed_id")
    if kind not in ("pause", "resume") or not isinstance(step, int) or isinstance(step, bool):
        return None
    if not isinstance(seed_id, str):
        return None
    return PauseEvent(step=step, seed_id=seed_id, resumed=kind == "resume")


def refused_pause(entry: dict[str, object]) -> PauseEvent | None:
    """The pause or resume the trainer refused (a ``seed_op_failed`` line: sent again after a rollback and refused at
    L3, it is not in effect, and nothing sends it again); else None."""
    if entry.get("event") != "telemetry_event" or entry.get("name") != "seed_op_failed":
        return None
    attributes = entry.get("attributes")
    if not isinstance(attributes, dict) or attributes.get("op") not in ("pause", "resume"):
        return None
    step, seed_id = attributes.get("step"), attributes.get("seed_id")
    if not isinstance(step, int) or isinstance(step, bool) or not isinstance(seed_id, str):
        return None
    return PauseEvent(step=step, seed_id=seed_id, resumed=attributes["op"] == "resume")


def fired_alert(entry: dict[str, object]) -> str | None:
    """The rule of the Nissa alert that fired, from its ``alert_fired`` telemetry line; else None."""
    if entry.get("event") != "telemetry_event" or entry.get("name") != "alert_fired":
        return None
    attributes = entry.get("attributes")
    rule = attributes.get("rule") if isinstance(attributes, dict) else None
    return rule if isinstance(rule, str) else None


def rejected_command(entry: dict[str, object]) -> tuple[str, str] | None:
    """Why Kasmina (or its verifier) refused a command and the command's id ("" when the line names none), from its
    ``command_rejected`` telemetry line; else None."""
    if entry.get("event") != "telemetry_event" or entry.get("name") != "command_rejected":
        return None
    attributes = entry.get("attributes")
    if not isinstance(attributes, dict) or not isinstance(reason := attributes.get("reason"), str):
        return None
    command_id = attributes.get("command_id")
    return reason, command_id if isinstance(command_id, str) else ""


class Restored(NamedTuple):
    """A ``lifecycle_restored`` line: the lifecycle went back to the boundary of ``step`` (see LifecycleRestored)."""

    step: int
    lag_steps: int

    def undoes(self, transition_step: int) -> bool:
        """Whether a transition planned to take effect at ``transition_step`` was undone."""
        return transition_step - self.lag_steps > self.step


def restored_point(entry: dict[str, object]) -> Restored | None:
    """The step a ``lifecycle_restored`` entry went back to, with its lag; else None."""
    if entry.get("event") != "lifecycle_restored":
        return None
    step, lag = entry.get("step"), entry.get("lag_steps")
    if not isinstance(step, int) or isinstance(step, bool) or not isinstance(lag, int) or isinstance(lag, bool):
        return None
    return Restored(step, lag)


class SessionEnd(NamedTuple):
    """A ``run_finished`` line: how a session (or an attempt to start one) ended."""

    status: str | None
    error: str | None
    duration_s: float | None  # set when the session wrote its summary.json; None when it ended without one


def session_end(entry: dict[str, object]) -> SessionEnd | None:
    """The ``run_finished`` line's ending, or None for any other entry."""
    if entry.get("event") != "run_finished":
        return None
    status, error, duration = entry.get("status"), entry.get("error"), entry.get("duration_s")
    return SessionEnd(
        status=status if isinstance(status, str) else None,
        error=error if isinstance(error, str) else None,
        duration_s=float(duration) if isinstance(duration, int | float) and not isinstance(duration, bool) else None,
    )
