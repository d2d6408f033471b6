"""Training-state contracts: seed states, gate results and the SystemStatePacket Tolaria sends Tamiyo."""

from __future__ import annotations

from msgspec import field

from schemas.base import Message, Record
from schemas.constraints import NonNegFloat, NonNegInt, PosInt, UnitFloat
from schemas.domain_enums import BlendMode
from schemas.enums import EmergencyLevel, SeedLifecycleGate, SeedLifecycleStage


class GateResult(Message, frozen=True):
    """One evaluation of a lifecycle gate for one seed, at an optimizer step.

    ``reason`` is a short snake_case word (``embargoed``, ``fallback``, ``fossilize``, ...); ``attributes`` carries the
    evidence the gate looked at (loss variance, latency in ms, ...), by name.
    """

    gate: SeedLifecycleGate
    passed: bool
    reason: str
    seed_id: str
    slot: str
    step: NonNegInt
    attributes: dict[str, float] = field(default_factory=dict)


class SeedState(Message, frozen=True):
    """One slot as Kasmina reports it; a DORMANT slot has no seed_id and no blueprint.

    Alpha counters are in optimizer steps since BLENDING began; ``embargo_until_epoch`` is the first epoch at which
    the slot may germinate again. ``risk_tolerance`` is how much risk the slot still admits, in [0, 1].
    """

    slot: str
    stage: SeedLifecycleStage
    layer_depth: NonNegInt
    seed_id: str | None = None
    blueprint_id: str | None = None
    artifact_sha256: str | None = None
    alpha: UnitFloat = 0.0
    alpha_steps: NonNegInt = 0
    alpha_total_steps: NonNegInt = 0
    alpha_temperature: NonNegFloat = 0.0
    blend_mode: BlendMode | None = None
    blend_allowed: bool = False
    risk_tolerance: UnitFloat = 1.0
    gradient_norm: float | None = None
    learning_rate: float | None = None
    age_epochs: NonNegInt = 0
    age_steps: NonNegInt = 0
    risk_score: UnitFloat = 0.0
    isolation_violations: NonNegInt = 0
    embargo_until_epoch: NonNegInt | None = None
    parameter_count: NonNegInt = 0
    paused: bool = False
    used_fallback: bool = False
    last_gate: GateResult | None = None


class StepTimings(Record, frozen=True):
    """Where the time of recent optimizer steps went, in milliseconds (means over the reporting interval)."""

    data_wait_ms: NonNegFloat
    host_to_device_ms: NonNegFloat
    forward_ms: NonNegFloat
    backward_ms: NonNegFloat
    optimizer_ms: NonNegFloat
    step_ms: NonNegFloat


class LayerSummary(Record, frozen=True, omit_defaults=True):
    """A host layer as the policy graph sees it (one ``layer`` node). Fields at their defaults are not encoded: a
    packet carries one summary per slot, and a wide host's packet must stay under ``oona.max_payload_bytes``."""

    name: str
    depth: NonNegInt
    layer_type: str
    parameter_count: NonNegInt
    activation: str | None = None
    dropout: UnitFloat = 0.0
    weight_norm: float | None = None
    gradient_norm: float | None = None
    latency_ms: NonNegFloat | None = None


class SystemStatePacket(Message, frozen=True):
    """Tolaria's view of training at ``global_step``: sent at epoch end and every K steps; Tamiyo decides on it.

    Losses, accuracies, timings and throughput are over the reporting interval; an epoch-end packet also carries the
    whole epoch's (``epoch_training_loss``, ``epoch_training_accuracy``, ``epoch_timings``, ``epoch_samples_per_s``),
    which the metrics and the console report per epoch.
    ``loss_delta`` is the change of validation loss since the previous validation (None before the second one).
    Gradient norms are L2 norms keyed by layer name and seed id.
    ``isolation_violations`` is the session's running total over every seed (a rollback does not lower it; it starts
    from 0 at a resume or a restart of the trainer, like the other counters); each SeedState carries its own seed's
    total since its graft, which goes on from the restored state's after a resume, restart or rollback.
    ``learning_rate`` is the host group's base rate (what boundary ops and the controller's tweak set);
    ``effective_learning_rate`` the rate the interval's last optimizer step used (the step of index ``global_step``
    - 1): the base times the rate schedule's factor at that step (the base without a schedule; None from an earlier
    version).
    ``hook_latency_ms`` is the latest epoch end's whole time (the one metrics.csv reports); ``hook_capture_ms`` the
    part of it spent copying the model and optimizer state, which the hook budget and the risk engine's hook veto do
    not count (an O(model size) copy the run cannot skip): they judge ``hook_latency_ms - hook_capture_ms``.
    """

    run_id: str
    epoch: NonNegInt
    epochs_total: PosInt
    global_step: NonNegInt
    epoch_progress: UnitFloat
    issued_at: float
    training_loss: float
    training_accuracy: UnitFloat
    timings: StepTimings
    host_parameters: NonNegInt
    seed_parameters: NonNegInt
    samples_per_s: NonNegFloat
    hook_latency_ms: NonNegFloat
    validation_loss: float | None = None
    validation_accuracy: UnitFloat | None = None
    loss_delta: float | None = None
    gradient_norm: float | None = None
    layer_gradient_norms: dict[str, float] = field(default_factory=dict)
    seed_gradient_norms: dict[str, float] = field(default_factory=dict)
    layers: tuple[LayerSummary, ...] = ()
    seed_states: tuple[SeedState, ...] = ()
    isolation_violations: NonNegInt = 0
    emergency_level: EmergencyLevel = EmergencyLevel.L1_NOTICE
    learning_rate: float | None = None
    gpu_memory_bytes: NonNegInt | None = None
    gpu_memory_peak_bytes: NonNegInt | None = None
    epoch_training_loss: float | None = None
    epoch_training_accuracy: UnitFloat | None = None
    epoch_timings: StepTimings | None = None
    epoch_samples_per_s: NonNegFloat | None = None
    effective_learning_rate: float | None = None
    hook_capture_ms: NonNegFloat = 0.0
