"""Records of a whole run: the summary written to summary.json and returned by ``await system.wait()``."""

from __future__ import annotations

from typing import Literal

from msgspec import field

from schemas.base import Record
from schemas.runtime import ActorState

RunStatus = Literal["completed", "stopped", "interrupted", "failed"]
"""completed: the run ended on its own; stopped: stop() was called; interrupted: a stop signal (SIGINT, SIGTERM, SIGHUP
or SIGUSR1: RunSummary.signal names it); failed: the root supervisor gave up."""


class TrainingFigures(Record, frozen=True):
    """What training achieved: the last epoch's figures, the held-out test figures and the control-plane counters.

    Losses are mean cross-entropy; accuracies are fractions in [0, 1]. ``stalls`` counts boundaries at which the step
    loop waited for a late plan, ``stall_ms`` their total duration; ``resumed_from_step`` is the step a resumed run
    continued from (None for a fresh run).
    """

    epochs: int
    global_step: int
    host_parameters: int
    seed_parameters: int
    train_loss: float | None = None
    train_accuracy: float | None = None
    val_loss: float | None = None
    val_accuracy: float | None = None
    test_loss: float | None = None
    test_accuracy: float | None = None
    skipped_steps: int = 0
    stalls: int = 0
    stall_ms: float = 0.0
    rollbacks: int = 0
    emergency_level: int = 1
    halted: bool = False
    halt_reason: str | None = None
    resumed_from_step: int | None = None
    checkpoint: str | None = None
    completed: bool = False  # training ran every epoch it was given (not stopped, halted or failed)
    # Of seed_parameters, those of the seeds fossilized into the host at the end (None: an earlier version's summary).
    fossilized_parameters: int | None = None


class GrowthFigures(Record, frozen=True):
    """What the controller did to the host and whether it paid off.

    ``baseline_val_accuracy`` is the host-only validation accuracy: the last epoch before the germination of the first
    seed that reached training took effect (``baseline_source`` "run"; a seed culled before, at its attach's gate,
    never changed the host's output), the final one when no seed reached training ("host_only"), or the final one of
    a recorded host-only run of the same training, ``nissa.baseline_run`` ("recorded"; its id in ``baseline_run`` and
    its epochs in ``baseline_epoch``), or none when a resumed run's earlier event log was lost or cut short ("unknown":
    its seed transitions, hence the host-only epochs, are not known). ``parameters_added`` counts the parameters of
    every seed the controller grafted that is in the model at the end, whose final accuracy was measured with them:
    fossilized ones (``parameters_fossilized``) and those not fossilized yet (training, blending, shadowing, on
    probation); a culled seed's are gone, and initial seeds count as host. ``seeds`` counts seeds by the lifecycle stage
    they ended training in (lower-case stage name); ``unapplied_transitions`` counts lifecycle transitions (a seed's,
    and a slot's embargo and reset) planned at the last boundaries for a step after the last one, which never took
    effect;
    ``no_op_reasons`` counts the controller's NO_OP decisions by the policy's reason (why nothing was grown), and
    ``vetoed_reasons`` those its risk engine made of a proposed germination (in conservative mode, say), by the risk
    engine's reason (``pause_triggered``), which they are not counted under the first; a NO_OP it made of another
    proposal (a fossilize, an lr tweak) is counted in neither, as it says nothing of growth; decision
    latencies are nearest-rank percentiles in milliseconds over every Tamiyo decision, ``fallback_decisions`` those its
    fallback made instead of the configured policy, ``fallback_reasons`` them by why (the Decision's
    ``fallback_reason``; ``unrecorded`` for a decision logged before the reason was); ``emergency_events`` counts the
    emergency ladder's moves in every session of the run, each (step, previous level, level) once (a resumed run
    trains the steps after its checkpoint again), re-announced levels left out. ``earlier_incomplete`` says, one
    phrase per file, what a resumed run's earlier sessions' files could not tell (an event log gone or cut short):
    the figures above then leave those out. ``end_notes`` says, one phrase each, what went wrong as this session
    ended that the figures do not show (an actor cancelled past its shutdown deadline, metrics.csv rows missing).
    ``rejected_commands`` counts the commands Kasmina refused, by reason (``memory_budget_exceeded``, ``stale``).
    """

    baseline_val_accuracy: float | None = None
    baseline_epoch: int | None = None
    baseline_source: str = "run"
    baseline_run: str | None = None
    final_val_accuracy: float | None = None
    parameters_added: int = 0
    seeds: dict[str, int] = field(default_factory=dict)
    unapplied_transitions: int = 0
    no_op_reasons: dict[str, int] = field(default_factory=dict)
    decisions: int = 0
    decision_p50_ms: float | None = None
    decision_p95_ms: float | None = None
    fallback_decisions: int = 0
    emergency_events: int = 0
    fallback_reasons: dict[str, int] = field(default_factory=dict)
    worker_hangs: int = 0  # GNN worker processes killed because they stopped answering (tamiyo_gnn_worker_hung)
    earlier_incomplete: list[str] = field(default_factory=list)
    # Of parameters_added, those of the seeds fossilized into the host (None: not known, an earlier version's summary).
    parameters_fossilized: int | None = None
    vetoed_reasons: dict[str, int] = field(default_factory=dict)
    end_notes: list[str] = field(default_factory=list)
    # The commands Kasmina (or its command verifier) refused, by reason (command_rejected events, every session's):
    # a refused germination grows nothing (an earlier version's summary has none).
    rejected_commands: dict[str, int] = field(default_factory=dict)
    # Of ``seeds``, those the trainer held paused at the run's last state packet, by the same stage name: a paused
    # seed passes the host's output through (an earlier version's summary has none).
    paused_seeds: dict[str, int] = field(default_factory=dict)


class RunSummary(Record, frozen=True):
    """The final figures of a run; later issues add training figures as optional fields."""

    run_id: str
    run_dir: str
    status: RunStatus
    started_at: str
    duration_s: float  # from the session's start until the summary is written (the report's render included)
    exit_code: int
    dead_letters: int
    bus_dropped: int = 0  # events meant for the bus's observers that never reached it (Oona's BusLosses)
    actors: tuple[ActorState, ...] = ()
    error: str | None = None
    error_traceback: str | None = None  # a failed run's: the last frames of the failure that ended it (ChildFailed's)
    training: TrainingFigures | None = None
    growth: GrowthFigures | None = None
    # Nissa's alerts that fired, by rule (an SLO's is slo_<name>), a resumed run's earlier sessions' included; a rule
    # that never fired is absent.
    alerts_fired: dict[str, int] = field(default_factory=dict)
    # The signal that interrupted the run ("SIGINT": a Ctrl-C; "SIGTERM", "SIGHUP", "SIGUSR1"), with status
    # "interrupted" (exit code 130 for each); None otherwise.
    signal: str | None = None
