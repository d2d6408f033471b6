"""The wire format of every contract is pinned by a golden file; decoding refuses unknown fields and wrong types.

Every Message and Record subclass defined anywhere in the ``schemas`` package must have an example below and a golden
file tests/golden/<TypeName>.json. After an intended change of the wire format, regenerate the goldens with
``ESPER_UPDATE_GOLDENS=1 pytest tests/test_contracts_wire.py`` and review the diff.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Union

import msgspec
import pytest

from schemas.base import Message, Record
from schemas.boundary import BoundaryApplied, BoundaryPlan, Decision, OpOutcome, SeedOp, TrainingRestored
from schemas.control import AdaptationCommand, BlendConfig, CommandResult, CommandSecurity
from schemas.domain_enums import (
    BlendMode,
    BlueprintTier,
    CommandKind,
    CommandRejectReason,
    CostTier,
    FieldReportOutcome,
    KernelErrorReason,
    PolicyAction,
    ScheduleMethod,
    TelemetryLevel,
    TensorDtype,
)
from schemas.enums import (
    ActorStatus,
    BreakerState,
    EmergencyLevel,
    HealthStatus,
    MessagePriority,
    SeedLifecycleGate,
    SeedLifecycleStage,
)
from schemas.kasmina import (
    GetKasminaStatistics,
    GetSeedStates,
    KasminaStatistics,
    PrefetchSeed,
    SeedStates,
    SeedValidation,
    SeedValidationReport,
)
from schemas.kernels import (
    BlueprintDescriptor,
    CompileRequest,
    CompileResult,
    KernelCatalogUpdate,
    KernelError,
    KernelPrefetchRequest,
    KernelReady,
    KernelRequest,
    ParameterBounds,
    SlotSignature,
)
from schemas.nissa import (
    ActiveAlert,
    AlertNotice,
    EvaluateAlerts,
    HealthReport,
    LifecycleRestored,
    MetricSample,
    NissaSnapshot,
    QueryNissa,
    SeedStageChanged,
    SloStatus,
)
from schemas.registry import contract_types
from schemas.reports import FieldReport, MitigationAction, PolicyUpdate, ValidationReport
from schemas.run import GrowthFigures, RunSummary, TrainingFigures
from schemas.runtime import (
    ActorState,
    BreakerTransition,
    ChildFailed,
    ChildRestarted,
    EmergencySignal,
    MailboxStatistics,
    SupervisorEscalated,
)
from schemas.state import GateResult, LayerSummary, SeedState, StepTimings, SystemStatePacket
from schemas.tamiyo import GetTamiyoState, GetTamiyoStatistics, TamiyoStatistics
from schemas.telemetry import MetricPoint, TelemetryEvent, TelemetryPacket

GOLDEN_DIR = Path(__file__).parent / "golden"
UPDATE_GOLDENS = os.environ.get("ESPER_UPDATE_GOLDENS") == "1"

COMMAND_ID = "3f1c2a9e-8b7d-4c6e-9a5f-0d1e2f3a4b5c"
SHA_A = "a" * 64
SHA_B = "0123456789abcdef" * 4


BLEND = BlendConfig(
    mode=BlendMode.CHANNEL,
    schedule=ScheduleMethod.COSINE,
    ramp_steps=32,
    temperature=1.5,
    window_start=0.1,
    window_end=0.9,
    channel_alpha=(0.25, 0.5, 1.0),
    confidence_k=4.0,
    confidence_tau=0.2,
    alpha_lo=0.05,
    alpha_hi=0.95,
)
GATE = GateResult(
    gate=SeedLifecycleGate.G2_STABILITY,
    passed=False,
    reason="loss_variance",
    seed_id="seed-0001",
    slot="features.3",
    step=1200,
    attributes={"loss_variance": 0.5, "window_steps": 20.0},
)
SEED = SeedState(
    slot="features.3",
    stage=SeedLifecycleStage.BLENDING,
    layer_depth=3,
    seed_id="seed-0001",
    blueprint_id="bp-conv-residual",
    artifact_sha256=SHA_A,
    alpha=0.5,
    alpha_steps=10,
    alpha_total_steps=20,
    alpha_temperature=2.0,
    blend_mode=BlendMode.CONVEX,
    blend_allowed=True,
    risk_tolerance=0.75,
    gradient_norm=0.125,
    learning_rate=0.001,
    age_epochs=2,
    age_steps=310,
    risk_score=0.25,
    isolation_violations=0,
    embargo_until_epoch=None,
    parameter_count=4096,
    paused=False,
    used_fallback=False,
    last_gate=GATE,
)
TIMINGS = StepTimings(
    data_wait_ms=0.5, host_to_device_ms=0.25, forward_ms=2.0, backward_ms=4.0, optimizer_ms=1.0, step_ms=7.75
)
LAYER = LayerSummary(
    name="features.3",
    depth=3,
    layer_type="Conv1d",
    parameter_count=12288,
    activation="relu",
    dropout=0.0,
    weight_norm=3.5,
    gradient_norm=0.25,
    latency_ms=0.125,
)
METRIC = MetricPoint(name="tolaria.training.loss", value=0.75, unit="", attributes={"split": "train"})
EVENT = TelemetryEvent(
    name="gate_failure",
    level=TelemetryLevel.WARNING,
    description="G2 refused seed-0001",
    attributes={"seed_id": "seed-0001", "gate": 3, "loss_variance": 0.5, "fallback": False},
)
SECURITY = CommandSecurity(
    signature=SHA_B, key_id="default", nonce=COMMAND_ID, issued_at=1700000000.25, freshness_window_s=60.0
)
BOUNDS = ParameterBounds(min_value=0.0, max_value=1.0, default=0.5)
SIGNATURE = SlotSignature(rank=3, dtype=TensorDtype.FLOAT32, kind="conv1d", features=16)
MITIGATION = MitigationAction(action_type="conservative_mode", rationale="loss spike after germination")
VALIDATION = ValidationReport(
    held_out_reports=128,
    average_reward=0.125,
    policy_loss=0.5,
    value_loss=2.0,
    param_loss=0.25,
    entropy=1.25,
    incumbent_average_reward=0.0625,
    heuristic_average_reward=0.03125,
    beats_incumbent=True,
    beats_heuristic=True,
    passed=True,
)

TRAINING_FIGURES = TrainingFigures(
    epochs=10,
    global_step=250,
    host_parameters=2782,
    seed_parameters=120,
    train_loss=1.25,
    train_accuracy=0.5,
    val_loss=1.5,
    val_accuracy=0.375,
    test_loss=1.5,
    test_accuracy=0.375,
    skipped_steps=1,
    stalls=2,
    stall_ms=3.5,
    rollbacks=0,
    emergency_level=1,
    halted=False,
    resumed_from_step=120,
    checkpoint="step-250.pt",
    fossilized_parameters=24,
)
GROWTH_FIGURES = GrowthFigures(
    baseline_val_accuracy=0.875,
    baseline_epoch=22,
    baseline_source="run",
    final_val_accuracy=0.9125,
    parameters_added=48,
    parameters_fossilized=24,
    seeds={"culled": 3, "fossilized": 2},
    decisions=250,
    decision_p50_ms=0.5,
    decision_p95_ms=5.25,
    emergency_events=0,
)

ATTACH = SeedOp(
    kind="attach",
    slot="features.3",
    seed_id="seed-7",
    stage=SeedLifecycleStage.TRAINING,
    handle="seed-7-1",
    blueprint_id="BP005",
    artifact_sha256=SHA_A,
    blend=BLEND,
    learning_rate=0.001,
    reason="germinate",
)

ACTIVE_ALERT = ActiveAlert(
    rule="training_latency_high",
    metric="tolaria.training.latency_ms",
    condition="> 18",
    threshold=18.0,
    value=25.5,
    level=EmergencyLevel.L1_NOTICE,
    since_s=120.0,
    breaches=3,
)
SLO_STATUS = SloStatus(
    name="epoch_hook_latency",
    metric="tolaria.epoch_hook.latency_ms",
    objective=18.0,
    window_s=2592000.0,
    samples=40,
    violations=4,
    burn=0.1,
    short_window_s=86400.0,
    short_samples=10,
    short_violations=4,
    short_burn=0.4,
    breached=True,
)
HEALTH = HealthReport(
    status=HealthStatus.DEGRADED,
    summary="DEGRADED: emergency L1_NOTICE; 1 alert(s) firing: training_latency_high",
    indicators={"alerts_active": "1", "emergency_level": "L1_NOTICE"},
)
METRIC_SAMPLE = MetricSample(
    name="kasmina.seed.alpha", value=0.5, kind="gauge", help="Blend alpha.", labels={"slot": "features.3"}
)

EXAMPLES: dict[type[Message] | type[Record], Message | Record] = {
    SeedOp: ATTACH,
    OpOutcome: OpOutcome(kind="attach", slot="features.3", seed_id="seed-7", applied=True),
    Decision: Decision(
        run_id="run-1",
        decided_on_step=1192,
        command=None,
        policy="heuristic",
        decision_ms=1.5,
        risk_reason="pause_triggered",
        reason="plateau",
        proposed="germinate",
    ),
    BoundaryPlan: BoundaryPlan(run_id="run-1", decided_on_step=1192, effect_step=1200, ops=(ATTACH,)),
    BoundaryApplied: BoundaryApplied(
        run_id="run-1",
        decided_on_step=1192,
        effect_step=1200,
        applied_step=1200,
        outcomes=(OpOutcome(kind="attach", slot="features.3", seed_id="seed-7", applied=True),),
        stall_ms=0.0,
        seed_parameters={"seed-7": 1234},
    ),
    BlendConfig: BLEND,
    CommandSecurity: SECURITY,
    AdaptationCommand: AdaptationCommand(
        command_id=COMMAND_ID,
        issued_at=1700000000.25,
        training_run_id="run-20250101-000000",
        kind=CommandKind.GERMINATE,
        decision_step=1192,
        policy_version="heuristic-1.0.0",
        security=SECURITY,
        target_slot="features.3",
        target_seed_id=None,
        blueprint_id="bp-conv-residual",
        blueprint_params={"alpha": 0.5},
        blend=BLEND,
        initial_alpha=0.0,
        lr_delta=None,
        reason="policy",
        priority=MessagePriority.NORMAL,
    ),
    CommandResult: CommandResult(
        command_id=COMMAND_ID,
        kind=CommandKind.GERMINATE,
        accepted=False,
        reason=CommandRejectReason.EMBARGOED,
        detail="slot features.3 embargoed until epoch 7",
        applied_step=None,
        target_slot="features.3",
        seed_id=None,
    ),
    GateResult: GATE,
    SeedState: SEED,
    GetSeedStates: GetSeedStates(slots=("features.3",)),
    SeedStates: SeedStates(states=(SEED,), step=1200),
    PrefetchSeed: PrefetchSeed(
        request_id="prefetch-1",
        blueprint_id="BP002",
        slot="features.3",
        seed_id="seed-7",
        blueprint_params={"rank": 4.0},
    ),
    SeedValidation: SeedValidation(seed_id="seed-7", loss_without_seed=(0.75, 0.5), loss_with_seed=(0.625, 0.5)),
    SeedValidationReport: SeedValidationReport(
        run_id="run-1",
        step=1200,
        seeds=(SeedValidation(seed_id="seed-7", loss_without_seed=(0.75,), loss_with_seed=(0.625,)),),
    ),
    GetKasminaStatistics: GetKasminaStatistics(request_id="stats-1"),
    KasminaStatistics: KasminaStatistics(
        boundaries=150,
        plans_sent=149,
        pending_packets=1,
        pending_decisions=0,
        accepted=12,
        request_id="stats-1",
        rejected={"embargoed": 2, "bad_signature": 1},
        preparations=6,
        preparation_failures=1,
        prefetches=3,
        cache_hits=2,
        cache_misses=4,
        cache_evictions=0,
        cache_size=4,
        cache_capacity=32,
        isolation_culls=1,
        illegal_transitions=0,
    ),
    GetTamiyoStatistics: GetTamiyoStatistics(request_id="stats-2"),
    GetTamiyoState: GetTamiyoState(request_id="state-1"),
    TamiyoStatistics: TamiyoStatistics(
        policy="gnn",
        policy_version="gnn-0.0.0",
        decisions=40,
        inference_breaker=BreakerState.HALF_OPEN,
        request_id="stats-2",
        decisions_by_action={"no_op": 38, "germinate": 2},
        fallbacks=4,
        timeouts=3,
        inference_failures=0,
        inference_skipped=1,
        vetoes=1,
        downgrades=0,
        breaker_opened=1,
        conservative=True,
        latency_window=40,
        latency_p50_ms=1.5,
        latency_p95_ms=4.25,
        field_reports=36,
        pending_outcomes=4,
    ),
    StepTimings: TIMINGS,
    LayerSummary: LAYER,
    SystemStatePacket: SystemStatePacket(
        run_id="run-20250101-000000",
        epoch=4,
        epochs_total=10,
        global_step=1200,
        epoch_progress=0.5,
        issued_at=1700000000.5,
        training_loss=0.75,
        training_accuracy=0.625,
        timings=TIMINGS,
        host_parameters=120000,
        seed_parameters=4096,
        samples_per_s=15000.0,
        hook_latency_ms=3.5,
        validation_loss=0.875,
        validation_accuracy=0.5625,
        loss_delta=-0.0625,
        gradient_norm=1.25,
        layer_gradient_norms={"features.0": 0.5, "features.3": 0.25},
        seed_gradient_norms={"seed-0001": 0.125},
        layers=(LAYER,),
        seed_states=(SEED,),
        isolation_violations=0,
        emergency_level=EmergencyLevel.L1_NOTICE,
        learning_rate=0.001,
        gpu_memory_bytes=None,
        gpu_memory_peak_bytes=None,
        effective_learning_rate=0.0005,
    ),
    MetricPoint: METRIC,
    TelemetryEvent: msgspec.structs.replace(EVENT, run_id="run-20250101-000000"),
    TelemetryPacket: TelemetryPacket(
        packet_id="kasmina-1200",
        source="kasmina",
        issued_at=1700000000.5,
        level=TelemetryLevel.WARNING,
        run_id="run-20250101-000000",
        global_step=1200,
        metrics=(METRIC,),
        events=(EVENT,),
        health=HealthStatus.DEGRADED,
    ),
    ParameterBounds: BOUNDS,
    SlotSignature: SIGNATURE,
    BlueprintDescriptor: BlueprintDescriptor(
        blueprint_id="bp-conv-residual",
        name="Residual conv block",
        family="conv",
        tier=BlueprintTier.EXPERIMENTAL,
        risk=0.25,
        cost_tier=CostTier.MEDIUM,
        description="A 3-tap Conv1d with a residual connection.",
        allowed_parameters={"alpha": BOUNDS},
        slot_signatures=(SIGNATURE,),
        stage=1,
        quarantine_only=False,
        approval_required=False,
    ),
    KernelRequest: KernelRequest(
        request_id="req-0001",
        blueprint_id="bp-conv-residual",
        training_run_id="run-20250101-000000",
        issued_at=1700000000.5,
        seed_id="seed-0001",
        slot="features.3",
        signature=SIGNATURE,
    ),
    KernelPrefetchRequest: KernelPrefetchRequest(
        request_id="req-0001",
        blueprint_id="bp-conv-residual",
        training_run_id="run-20250101-000000",
        issued_at=1700000000.5,
    ),
    KernelReady: KernelReady(
        request_id="req-0001",
        blueprint_id="bp-conv-residual",
        artifact_ref=SHA_A,
        checksum=SHA_A,
        guard_digest=SHA_B,
        issued_at=1700000000.75,
        prewarm_p50_ms=1.5,
        prewarm_p95_ms=2.25,
    ),
    KernelError: KernelError(
        request_id="req-0001",
        blueprint_id="bp-conv-residual",
        reason=KernelErrorReason.CHECKSUM_MISMATCH,
        issued_at=1700000000.75,
        detail="blob aaaa... hashes to 0123...",
    ),
    KernelCatalogUpdate: KernelCatalogUpdate(
        blueprint_id="bp-conv-residual",
        artifact_ref=SHA_A,
        checksum=SHA_A,
        guard_digest=SHA_B,
        issued_at=1700000000.0,
        compile_ms=850.5,
        prewarm_ms=12.25,
        eager_fallback=False,
        tags=("conv", "residual"),
    ),
    CompileRequest: CompileRequest(
        request_id="compile-0001",
        issued_at=1700000000.0,
        blueprint_ids=("bp-conv-residual",),
        signatures=(SIGNATURE,),
    ),
    CompileResult: CompileResult(
        request_id="compile-0001",
        issued_at=1700000001.5,
        compiled=1,
        failed=1,
        artifacts=(SHA_A,),
        failures={"bp-broken": "blueprint bp-broken on flat: output is not exactly zero at birth"},
    ),
    MitigationAction: MITIGATION,
    FieldReport: FieldReport(
        report_id=f"fr-{COMMAND_ID}-4+3",
        command_id=COMMAND_ID,
        training_run_id="run-20250101-000000",
        outcome=FieldReportOutcome.SUCCESS,
        observation_window_epochs=3,
        start_epoch=4,
        issued_at=1700000100.0,
        tamiyo_policy_version="heuristic-1.0.0",
        action=PolicyAction.GERMINATE,
        seed_id="seed-0001",
        blueprint_id="bp-conv-residual",
        metrics={"loss_delta_sum": -0.25, "loss_delta_min": -0.125, "loss_delta_max": 0.0},
        follow_up_actions=(MITIGATION,),
        notes="",
        log_prob=-1.5,
        value_estimate=0.25,
        reward=0.125,
        observation_ref="field_reports.wal#17",
    ),
    ValidationReport: VALIDATION,
    PolicyUpdate: PolicyUpdate(
        update_id="pu-0003",
        version="1.3.0",
        architecture_version="tamiyo_gnn_v1",
        training_run_id="run-20250101-000000",
        issued_at=1700000200.0,
        payload_ref=SHA_B,
        payload_sha256=SHA_B,
        registry_digests={"blueprint": SHA_A, "layer_type": SHA_B},
        validation=VALIDATION,
        signature=SHA_A,
        key_id="default",
        previous_version="1.2.0",
    ),
    MailboxStatistics: MailboxStatistics(
        capacity=1024, depth=3, sent=100, received=97, dropped=0, waiting_senders=0, closed=False
    ),
    ActorState: ActorState(
        actor="tamiyo",
        status=ActorStatus.RUNNING,
        mailbox_depth=1,
        mailbox_capacity=1024,
        handled=1200,
        failed=0,
        restarts=1,
        breaker=BreakerState.CLOSED,
        last_latency_ms=3.25,
    ),
    ChildFailed: ChildFailed(
        supervisor="weatherlight",
        child="tamiyo",
        error_type="RuntimeError",
        error="boom",
        run_id="run-20250101-000000",
        user_frame="mymodel.py:12 in forward",
        traceback="Traceback (most recent call last; the last 1 of 1 frames):\n"
        '  File "mymodel.py", line 12, in forward\n    raise RuntimeError("boom")\nRuntimeError: boom',
    ),
    ChildRestarted: ChildRestarted(supervisor="weatherlight", child="tamiyo", restarts=1, backoff_s=0.1),
    SupervisorEscalated: SupervisorEscalated(supervisor="weatherlight", child="tamiyo", restarts=6, window_s=30.0),
    BreakerTransition: BreakerTransition(
        breaker="tamiyo.inference",
        from_state=BreakerState.CLOSED,
        to_state=BreakerState.OPEN,
        reason="3 consecutive failures",
        at_s=12.5,
    ),
    EmergencySignal: EmergencySignal(
        level=EmergencyLevel.L2_ELEVATED,
        previous=EmergencyLevel.L1_NOTICE,
        reason="epoch_budget",
        origin="tolaria",
        monotonic_time_ms=12500.0,
        run_id="run-20250101-000000",
        step=160,
        epoch=10,
    ),
    RunSummary: RunSummary(
        run_id="20261122-014500-3f9a",
        run_dir="runs/20261122-014500-3f9a",
        status="completed",
        started_at="2026-11-22T01:45:00.000000Z",
        duration_s=12.5,
        exit_code=0,
        dead_letters=0,
        actors=(
            ActorState(
                actor="oona",
                status=ActorStatus.STOPPED,
                mailbox_depth=0,
                mailbox_capacity=2,
                handled=3,
                failed=0,
                restarts=0,
            ),
        ),
        error=None,
        training=TRAINING_FIGURES,
        growth=GROWTH_FIGURES,
        alerts_fired={"training_latency_high": 2},
    ),
    GrowthFigures: GROWTH_FIGURES,
    TrainingRestored: TrainingRestored(run_id="run-20250101-000000", step=620, tier="full", unapplied=(620,)),
    TrainingFigures: TRAINING_FIGURES,
    SeedStageChanged: SeedStageChanged(
        slot="features.3",
        from_stage=SeedLifecycleStage.TRAINING,
        to_stage=SeedLifecycleStage.BLENDING,
        step=1200,
        seed_id="seed-7",
        blueprint_id="BP005",
        epoch=4,
        reason="g2_passed",
        run_id="run-20250101-000000",
    ),
    LifecycleRestored: LifecycleRestored(run_id="run-20250101-000000", step=620, lag_steps=8),
    EvaluateAlerts: EvaluateAlerts(seq=3),
    QueryNissa: QueryNissa(include_metrics=False),
    AlertNotice: AlertNotice(
        rule="kasmina_isolation_violation",
        metric="kasmina.isolation.violations",
        condition=">= 3 within 300s",
        threshold=3.0,
        value=4.0,
        active=True,
        level=EmergencyLevel.L2_ELEVATED,
        breaches=1,
        at_s=301.5,
        routes=("pagerduty",),
    ),
    ActiveAlert: ACTIVE_ALERT,
    SloStatus: SLO_STATUS,
    HealthReport: HEALTH,
    MetricSample: METRIC_SAMPLE,
    NissaSnapshot: NissaSnapshot(
        health=HEALTH,
        alerts=(ACTIVE_ALERT,),
        slos=(SLO_STATUS,),
        metrics=(METRIC_SAMPLE,),
        epochs_written=5,
        last_epoch=4,
        final_figures={"val_loss": 0.25, "val_accuracy": 0.875},
        endpoint="127.0.0.1:9100",
    ),
}

ALL_TYPES = list(contract_types())


def _golden(cls: type) -> bytes:
    path = GOLDEN_DIR / f"{cls.__name__}.json"
    encoded = msgspec.json.encode(EXAMPLES[cls])
    if UPDATE_GOLDENS:
        GOLDEN_DIR.mkdir(exist_ok=True)
        path.write_bytes(encoded + b"\n")
    return path.read_bytes().removesuffix(b"\n")


def test_every_contract_type_has_an_example_and_a_golden() -> None:
    """A newly added Message or Record fails here until it gets an example and a checked-in golden file."""
    discovered = {cls.__name__ for cls in ALL_TYPES}
    assert discovered == {cls.__name__ for cls in EXAMPLES}, "add an example (and a golden) for each new contract"
    assert len(discovered) >= 30
    for cls in ALL_TYPES:
        assert (GOLDEN_DIR / f"{cls.__name__}.json").is_file() or UPDATE_GOLDENS, f"no golden for {cls.__name__}"


@pytest.mark.parametrize("cls", ALL_TYPES, ids=lambda cls: cls.__name__)
def test_encoding_matches_the_golden_bytes(cls: type[Message] | type[Record]) -> None:
    assert msgspec.json.encode(EXAMPLES[cls]) == _golden(cls)


@pytest.mark.parametrize("cls", ALL_TYPES, ids=lambda cls: cls.__name__)
def test_golden_decodes_to_an_equal_instance(cls: type[Message] | type[Record]) -> None:
    decoded = msgspec.json.decode(_golden(cls), type=cls)
    assert decoded == EXAMPLES[cls]
    assert type(decoded) is cls


@pytest.mark.parametrize("cls", ALL_TYPES, ids=lambda cls: cls.__name__)
def test_messages_carry_their_class_name_as_tag_and_records_carry_none(cls: type[Message] | type[Record]) -> None:
    fields = msgspec.json.decode(_golden(cls))
    if issubclass(cls, Message):
        assert fields["type"] == cls.__name__
    else:
        assert "type" not in fields


@pytest.mark.parametrize("cls", ALL_TYPES, ids=lambda cls: cls.__name__)
def test_an_unknown_field_is_refused(cls: type[Message] | type[Record]) -> None:
    fields = msgspec.json.decode(_golden(cls))
    fields["unexpected_field"] = 1
    with pytest.raises(msgspec.ValidationError, match="unknown field `unexpected_field`"):
        msgspec.json.decode(msgspec.json.encode(fields), type=cls)


@pytest.mark.parametrize("cls", ALL_TYPES, ids=lambda cls: cls.__name__)
def test_a_field_of_the_wrong_type_is_refused(cls: type[Message] | type[Record]) -> None:
    """Every field in turn gets an object that is the wrong type for it (or holds wrong types, for tables)."""
    fields = msgspec.json.decode(_golden(cls))
    for name in msgspec.structs.fields(cls):
        broken = dict(fields)
        broken[name.encode_name] = {"wrong": [None]}
        with pytest.raises(msgspec.ValidationError, match=rf"\$\.{name.encode_name}"):
            msgspec.json.decode(msgspec.json.encode(broken), type=cls)


@pytest.mark.parametrize("cls", ALL_TYPES, ids=lambda cls: cls.__name__)
def test_contracts_are_frozen(cls: type[Message] | type[Record]) -> None:
    example = EXAMPLES[cls]
    first = msgspec.structs.fields(cls)[0].name
    with pytest.raises(AttributeError):
        setattr(example, first, getattr(example, first))


def test_one_tagged_union_decodes_every_message_to_its_own_type() -> None:
    messages = tuple(cls for cls in ALL_TYPES if issubclass(cls, Message))
    decoder = msgspec.json.Decoder(Union[messages])  # noqa: UP007  # the union is built from types found at runtime
    for cls in messages:
        assert decoder.decode(_golden(cls)) == EXAMPLES[cls]


def _decode_with(cls: type[Message] | type[Record], **changes: object) -> None:
    fields = msgspec.json.decode(_golden(cls))
    fields.update(changes)
    msgspec.json.decode(msgspec.json.encode(fields), type=cls)


@pytest.mark.parametrize(
    ("cls", "changes", "error"),
    [
        (SeedState, {"alpha": 1.5}, r"<= 1.0 - at `\$.alpha`"),
        (SeedState, {"stage": 12}, r"Invalid enum value 12"),
        (SeedState, {"risk_score": -0.1}, r">= 0.0 - at `\$.risk_score`"),
        (BlendConfig, {"window_start": 0.95}, "window_start"),
        (BlendConfig, {"alpha_lo": 0.99}, "alpha_lo"),
        (BlendConfig, {"channel_alpha": None}, "CHANNEL blending needs channel_alpha"),
        (BlendConfig, {"channel_alpha": [1.0] * 65}, r"length <= 64"),
        (BlendConfig, {"mode": "delta"}, r"Invalid enum value 'delta'"),
        (BlendConfig, {"ramp_steps": 0}, r">= 1 - at `\$.ramp_steps`"),
        (AdaptationCommand, {"command_id": "not-a-uuid"}, r"command_id"),
        (AdaptationCommand, {"kind": "seed_op_germinate"}, r"Invalid enum value"),
        (AdaptationCommand, {"lr_delta": 5.0}, r"lr_delta"),
        (CommandResult, {"accepted": True}, "accepted command has no reject reason"),
        (KernelReady, {"checksum": "ABC"}, r"checksum"),
        (PolicyUpdate, {"version": "v1"}, r"version"),
        (ParameterBounds, {"min_value": 2.0}, "must not exceed max_value"),
        (BlueprintDescriptor, {"tier": 4}, r"Invalid enum value 4"),
        (FieldReport, {"observation_window_epochs": 0}, r"observation_window_epochs"),
    ],
)
def test_constraints_are_checked_at_decode(
    cls: type[Message] | type[Record], changes: dict[str, object], error: str
) -> None:
    with pytest.raises(msgspec.ValidationError, match=error):
        _decode_with(cls, **changes)


def test_command_security_must_match_the_command() -> None:
    with pytest.raises(msgspec.ValidationError, match=r"security\.nonce"):
        _decode_with(AdaptationCommand, command_id="00000000-0000-4000-8000-000000000000")
    with pytest.raises(ValueError, match=r"security\.issued_at"):
        msgspec.structs.replace(EXAMPLES[AdaptationCommand], issued_at=1.0)


def test_telemetry_priority_follows_the_worst_level() -> None:
    packet = EXAMPLES[TelemetryPacket]
    assert isinstance(packet, TelemetryPacket)
    levels = {
        TelemetryLevel.INFO: MessagePriority.NORMAL,
        TelemetryLevel.WARNING: MessagePriority.HIGH,
        TelemetryLevel.ERROR: MessagePriority.HIGH,
        TelemetryLevel.CRITICAL: MessagePriority.CRITICAL,
    }
    for level, priority in levels.items():
        assert msgspec.structs.replace(packet, level=level).priority is priority


def test_leyline_enum_numbers_are_kept() -> None:
    assert [int(v) for v in FieldReportOutcome] == [1, 2, 3, 4]
    assert [v.name for v in FieldReportOutcome] == ["SUCCESS", "NEUTRAL", "REGRESSION", "ABORTED"]
    assert [(v.name, int(v)) for v in BlueprintTier] == [("SAFE", 1), ("EXPERIMENTAL", 2), ("HIGH_RISK", 3)]
    assert [(v.name, int(v)) for v in TelemetryLevel] == [("INFO", 1), ("WARNING", 2), ("ERROR", 3), ("CRITICAL", 4)]


def test_a_training_restored_of_the_shape_before_unapplied_still_decodes() -> None:
    old = b'{"type":"TrainingRestored","run_id":"r","step":620,"tier":"full"}'
    assert msgspec.json.decode(old, type=TrainingRestored).unapplied == ()
