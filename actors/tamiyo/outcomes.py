"""Field-report outcome tracking: each decision's window of epochs, its outcome and its reward (REFERENCE.md s. 10).

A window opens at the decision and closes at the ``window_epochs``-th epoch-end packet after it (a packet with a
validation loss). Over the window it aggregates the sum, min and max of ``loss_delta`` and of hook latency, the
validation loss at its start (the latest one known at the decision) and at its end, the seed parameters added, and
whether any CRITICAL event happened (a CRITICAL risk event on a packet of the window, or Tolaria at L3 or above).
A report names the seed and blueprint its decision concerned: a seed verb's target seed and that seed's blueprint as
the decision's packet showed it; a GERMINATE's blueprint, and its seed once a packet of the window shows the seed
Kasmina germinated for it (``schemas.control.germinated_seed_id``; none when Kasmina refused the command).

Outcome: REGRESSION if the validation loss worsened over the window or any CRITICAL event happened; SUCCESS if it
improved (by more than ``neutral_band``) and nothing was CRITICAL; NEUTRAL otherwise (including an unknown loss at
either end, missing or not finite, whose delta then counts as 0 in the reward and is left out of the metrics);
ABORTED when a rollback (a packet whose step does not move forward) or the end of the run cuts the window short.

The trainer going back (a rollback, a restart) has the steps after its restore point trained and decided again, under
the same command ids (they are a function of the run and the step, so a resume issues the uninterrupted run's): the
decisions made after the n-th time it went back carry ``-r<n>`` at the end of their report id, so the remade
decision's report does not take the aborted one's id.

Reward (ABORTED windows get None, so Simic excludes them)::

    r = -(val_end - val_start) - lambda_size * (params_added / host_params) - lambda_critical * [any CRITICAL]

``params_added`` is the growth of the packet's seed parameters over the window (never negative); windows overlap, so
a graft counts against every decision whose window saw it. Pure and synchronous; one owner (the actor) calls it.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, final

import msgspec

from schemas.base import Record
from schemas.domain_enums import FieldReportOutcome, PolicyAction
from schemas.enums import EmergencyLevel
from schemas.reports import FieldReport, MitigationAction

if TYPE_CHECKING:
    from schemas.state import SystemStatePacket


class OutcomeSettings(Record, frozen=True):
    """Window length in epochs (TamiyoConfig.field_report_window_epochs) and the reward lambdas (SimicConfig)."""

    window_epochs: int = 3
    lambda_size: float = 0.1
    lambda_critical: float = 1.0
    neutral_band: float = 0.0


class OutcomeWindow(Record, frozen=True):
    """One decision's open window: what was decided and what the packets since have shown."""

    command_id: str
    training_run_id: str
    decided_on_step: int
    start_epoch: int
    issued_at: float
    policy_version: str
    action: PolicyAction
    seed_id: str | None = None
    blueprint_id: str | None = None
    log_prob: float | None = None
    value_estimate: float | None = None
    notes: str = ""
    follow_up: tuple[str, ...] = ()
    start_validation_loss: float | None = None
    start_seed_parameters: int = 0
    host_parameters: int = 0
    epochs_seen: int = 0
    loss_deltas: tuple[float, ...] = ()
    hook_latencies_ms: tuple[float, ...] = ()
    critical_events: int = 0
    end_validation_loss: float | None = None
    end_seed_parameters: int = 0
    rollbacks: int = 0  # how many times the trainer had gone back when this decision was made (its report id's -r<n>)
    # A GERMINATE's: the id its seed gets if Kasmina accepts it; seed_id once a packet of the window shows that seed.
    germinating: str | None = None


class OutcomeState(Record, frozen=True):
    """The tracker's state for checkpoints: open windows, in decision order, the latest figures seen, the reports
    written and how many times the trainer went back (a state an earlier version saved has 0: none it knew of)."""

    windows: tuple[OutcomeWindow, ...] = ()
    last_step: int | None = None
    last_validation_loss: float | None = None
    reports: int = 0
    rollbacks: int = 0


def report_id(command_id: str, start_epoch: int, window_epochs: int, rollbacks: int = 0) -> str:
    """``fr-<command_id>-<start_epoch>+<window_epochs>`` (REFERENCE.md section 10), with ``-r<rollbacks>`` after it
    for a decision made after the trainer went back ``rollbacks`` times (see the module docstring)."""
    base = f"fr-{command_id}-{start_epoch}+{window_epochs}"
    return f"{base}-r{rollbacks}" if rollbacks else base


def _known(loss: float | None) -> float | None:
    return loss if loss is not None and math.isfinite(loss) else None


def _germinated(window: OutcomeWindow, packet: SystemStatePacket) -> str | None:
    """The seed a GERMINATE's window was waiting for, once ``packet`` shows it (a refused one never appears)."""
    wanted = window.germinating
    if wanted is None or not any(seed.seed_id == wanted for seed in packet.seed_states):
        return None
    return wanted


def _stats(name: str, values: tuple[float, ...]) -> dict[str, float]:
    if not values:
        return {}
    return {f"{name}_sum": math.fsum(values), f"{name}_min": min(values), f"{name}_max": max(values)}


@final
class OutcomeTracker:
    """Opens a window per decision, feeds it the following packets, and turns closed windows into FieldReports."""

    def __init__(self, settings: OutcomeSettings, *, state: OutcomeState | None = None) -> None:
        """Raises: ValueError: window_epochs < 1 or a negative lambda."""
        if settings.window_epochs < 1:
            raise ValueError(f"window_epochs must be >= 1, got {settings.window_epochs}")
        if settings.lambda_size < 0 or settings.lambda_critical < 0:
            raise ValueError(f"reward lambdas must be >= 0, got {settings.lambda_size}, {settings.lambda_critical}")
        self._settings = settings
        self._state = state if state is not None else OutcomeState()

    @property
    def pending(self) -> int:
        return len(self._state.windows)

    @property
    def last_validation_loss(self) -> float | None:
        return self._state.last_validation_loss

    def export_state(self) -> OutcomeState:
        return self._state

    def import_state(self, state: OutcomeState) -> None:
        self._state = state

    def is_rollback(self, packet: SystemStatePacket) -> bool:
        """Whether ``packet`` goes back in steps (Tolaria restored a snapshot): open windows must be aborted."""
        last = self._state.last_step
        return last is not None and packet.global_step <= last

    def observe(self, packet: SystemStatePacket, *, critical: bool) -> list[FieldReport]:
        """Feed one packet to every open window; returns the reports of windows it closed, in decision order.

        Args:
            packet: the next packet (after ``is_rollback`` was checked and handled).
            critical: a CRITICAL event happened on this packet (Tamiyo's risk engine, or anything the caller saw).
        """
        critical = critical or packet.emergency_level >= EmergencyLevel.L3_CONSERVATIVE
        epoch_end = packet.validation_loss is not None
        still_open: list[OutcomeWindow] = []
        closed: list[FieldReport] = []
        for window in self._state.windows:
            updated = msgspec.structs.replace(
                window,
                seed_id=window.seed_id if window.seed_id is not None else _germinated(window, packet),
                critical_events=window.critical_events + int(critical),
                end_seed_parameters=packet.seed_parameters,
                host_parameters=packet.host_parameters or window.host_parameters,
            )
            if epoch_end:
                deltas = window.loss_deltas
                if packet.loss_delta is not None and math.isfinite(packet.loss_delta):
                    deltas = (*deltas, packet.loss_delta)
                updated = msgspec.structs.replace(
                    updated,
                    epochs_seen=window.epochs_seen + 1,
                    loss_deltas=deltas,
                    hook_latencies_ms=(*window.hook_latencies_ms, packet.hook_latency_ms),
                    end_validation_loss=packet.validation_loss,
                )
            if updated.epochs_seen >= self._settings.window_epochs:
                closed.append(self._report(updated, aborted=False))
            else:
                still_open.append(updated)
        self._state = msgspec.structs.replace(
            self._state,
            windows=tuple(still_open),
            last_step=packet.global_step,
            last_validation_loss=(
                packet.validation_loss if packet.validation_loss is not None else self._state.last_validation_loss
            ),
            reports=self._state.reports + len(closed),
        )
        return closed

    def open(self, window: OutcomeWindow) -> None:
        """Start tracking a decision; call it after ``observe`` of the decision's own packet."""
        start = msgspec.structs.replace(
            window,
            rollbacks=self._state.rollbacks,
            start_validation_loss=self._state.last_validation_loss,
            end_validation_loss=self._state.last_validation_loss,
            end_seed_parameters=window.start_seed_parameters,
        )
        self._state = msgspec.structs.replace(self._state, windows=(*self._state.windows, start))

    def abort_all(self, reason: str) -> list[FieldReport]:
        """Close every open window as ABORTED (a rollback or the end of the run); returns their reports."""
        reports = [
            self._report(msgspec.structs.replace(w, notes=f"{w.notes}; aborted: {reason}".lstrip("; ")), aborted=True)
            for w in self._state.windows
        ]
        self._state = msgspec.structs.replace(self._state, windows=(), reports=self._state.reports + len(reports))
        return reports

    def rollback(self, reason: str) -> list[FieldReport]:
        """The trainer went back (a rollback or a restart): abort every open window, as ``abort_all``, and count it,
        so the decisions made from now on get report ids of their own."""
        reports = self.abort_all(reason)
        self._state = msgspec.structs.replace(self._state, rollbacks=self._state.rollbacks + 1)
        return reports

    def _report(self, window: OutcomeWindow, *, aborted: bool) -> FieldReport:
        settings = self._settings
        # A non-finite loss (a diverged epoch) is unknown, like a missing one: a NaN delta made the reward NaN.
        start, end = _known(window.start_validation_loss), _known(window.end_validation_loss)
        delta = None if start is None or end is None else end - start
        added = max(0, window.end_seed_parameters - window.start_seed_parameters)
        critical = window.critical_events > 0
        metrics: dict[str, float] = {
            **_stats("loss_delta", window.loss_deltas),
            **_stats("hook_latency_ms", window.hook_latencies_ms),
            "parameters_added": float(added),
            "critical_events": float(window.critical_events),
            "epochs_observed": float(window.epochs_seen),
        }
        if start is not None:
            metrics["validation_loss_start"] = start
        if end is not None:
            metrics["validation_loss_end"] = end
        if delta is not None:
            metrics["validation_loss_delta"] = delta
        reward: float | None = None
        if aborted:
            outcome = FieldReportOutcome.ABORTED
        else:
            if critical or (delta is not None and delta > settings.neutral_band):
                outcome = FieldReportOutcome.REGRESSION
            elif delta is not None and delta < -settings.neutral_band:
                outcome = FieldReportOutcome.SUCCESS
            else:
                outcome = FieldReportOutcome.NEUTRAL
            size = added / window.host_parameters if window.host_parameters > 0 else 0.0
            reward = -(delta or 0.0) - settings.lambda_size * size - settings.lambda_critical * float(critical)
            metrics["reward"] = reward
        return FieldReport(
            report_id=report_id(window.command_id, window.start_epoch, settings.window_epochs, window.rollbacks),
            command_id=window.command_id,
            training_run_id=window.training_run_id,
            outcome=outcome,
            observation_window_epochs=settings.window_epochs,
            start_epoch=window.start_epoch,
            issued_at=window.issued_at,
            tamiyo_policy_version=window.policy_version,
            action=window.action,
            seed_id=window.seed_id,
            blueprint_id=window.blueprint_id,
            metrics=metrics,
            follow_up_actions=tuple(MitigationAction(action_type=name) for name in window.follow_up),
            notes=window.notes,
            log_prob=window.log_prob,
            value_estimate=window.value_estimate,
            reward=reward,
        )
