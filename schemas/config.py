"""The run configuration: one frozen section per subsystem, every key defaulted (REFERENCE.md section 1 budgets).

An empty TOML file is a valid config. Optional keys always default to None, because TOML has no null: a dump omits
them and a reload restores None. esper.config loads, overrides and dumps these Structs; actors receive their section
(or plain values from it) from the composition root and never read files themselves.
"""

from __future__ import annotations

from typing import Literal

from msgspec import field

from schemas.base import ConfigSection
from schemas.config_platform import LoggingConfig, SecurityConfig, WeatherlightConfig
from schemas.config_types import (
    BlendTemperature,
    DatasetSamples,
    Device,
    Fraction,
    HostModel,
    InitialSeed,
    MemoryBudgetMB,
    MemoryCapMB,
    Millis,
    NonNegMillis,
    NumThreads,
    Port,
    RunSeed,
    Seconds,
)
from schemas.constraints import NonEmptyStr, NonNegFloat, NonNegInt, PosFloat, PosInt, UnitFloat

INITIAL_SEED_PREFIX = "initial-"
"""An initial seed's id is this prefix plus its slot's name: Tolaria attaches it under that id, Kasmina reports it."""


def initial_seed_id(slot: str) -> str:
    """The seed id of the initial seed in ``slot``."""
    return INITIAL_SEED_PREFIX + slot


class BreakerConfig(ConfigSection, frozen=True):
    """A circuit breaker: opens after ``failure_threshold`` consecutive failures, stays open ``open_s`` seconds,
    then admits ``half_open_probes`` probes; ``success_threshold`` successes close it."""

    failure_threshold: PosInt = 3
    open_s: Seconds = 30.0
    half_open_probes: PosInt = 1
    success_threshold: PosInt = 2


class TolariaConfig(ConfigSection, frozen=True):
    """Training: data, host model, optimizer, step loop, budgets, snapshots and checkpoints."""

    epochs: PosInt = 10
    seed: RunSeed = 0
    dataset: Literal["mnist1d", "digits", "npz"] = "mnist1d"
    dataset_samples: DatasetSamples = 4000
    npz_path: str | None = None
    validation_fraction: Fraction = 0.2
    batch_size: PosInt = 128
    lr: PosFloat = 1e-3
    optimizer: Literal["adamw", "adam", "sgd"] = "adamw"
    momentum: NonNegFloat = 0.9
    weight_decay: NonNegFloat = 0.0
    # A grafted seed's learning rate as a multiple of the host's (a command's explicit rate wins). While TRAINING a
    # seed learns from the straight-through gradient without seeing its own effect, so a smaller step keeps it from
    # drifting before the blend; but a slower seed is also judged less useful and culled more often, and 0.3 lost
    # accuracy on the growth benchmark (BENCHMARKS.md), so the default leaves the rate alone.
    seed_lr_scale: PosFloat = 1.0
    # The seed's rate while TRAINING (incubation) as a multiple of its own rate, restored when it leaves TRAINING. It
    # calms the first blend (0.3: 1-4 % above the host instead of 10-19 %) but cost accuracy on the growth benchmark
    # (BENCHMARKS.md), so by default incubation learns at the seed's full rate.
    incubation_lr_scale: NonNegFloat = 1.0
    # The learning-rate schedule over the run's steps (epochs x steps an epoch): a factor on each optimizer group's
    # own rate (the host's, each seed's) at each step. "constant" keeps the rates; "cosine" and "linear" decay them to
    # lr_min_factor x the rate by the run's end. warmup_steps ramps the factor linearly from 1/warmup_steps up to 1
    # first (a warm-up as long as the run, or longer, never reaches the full rate: a warning at the start says so).
    lr_schedule: Literal["constant", "cosine", "linear"] = "constant"
    warmup_steps: NonNegInt = 0
    lr_min_factor: UnitFloat = 0.0
    # Clip each optimizer group's gradient norm (the host's and each seed's on its own, so a seed never scales the
    # host's update) to this before the step; unset: no clipping.
    grad_clip_norm: PosFloat | None = None
    host_model: HostModel = "cnn1d"
    device: Device = "auto"
    command_lag_steps: NonNegInt = 8
    state_every_steps: NonNegInt = 8
    decision_deadline_ms: Millis = 1000.0
    epoch_hook_target_ms: Millis = 18.0
    epoch_hook_budget_ms: Millis = 50.0
    epoch_budget_ms: Millis | None = None
    failed_epochs_to_halt: PosInt = 3
    snapshot_memory_cap_mb: MemoryCapMB = 32.0
    rollback_fast_target_ms: Millis = 500.0
    rollback_full_deadline_s: Seconds = 12.0
    checkpoint_every_epochs: NonNegInt = 1
    checkpoint_keep_last: PosInt = 3
    compile: bool = False
    # amp = true is bf16 autocast on every device (refused with precision = "fp32"); "auto" precision is bf16 on a CUDA
    # GPU of compute capability 8.0 or newer (with TF32 matmuls, as under "bf16") and fp32 elsewhere (an older GPU
    # emulates bf16); "fp32" turns on neither autocast nor TF32.
    amp: bool = False
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    # Above the machine's CPU count the run starts with a warning (threads then contend for cores).
    num_threads: NumThreads | None = None
    breaker: BreakerConfig = field(default_factory=BreakerConfig)
    nonfinite_window_steps: PosInt = 100
    nonfinite_to_rollback: PosInt = 3
    emergency_clean_dwell_epochs: PosInt = 2
    drop_last: bool = False
    channels_last: bool = True
    # Where generated data sets (MNIST-1D) are kept between runs; "" generates them on every load.
    data_cache_dir: str = "~/.cache/esper"
    # Seeds present from step 0, fossilized (part of the host, in the host's optimizer group); static baselines.
    initial_seeds: tuple[InitialSeed, ...] = ()

    def __post_init__(self) -> None:
        if self.dataset == "npz" and self.npz_path is None:
            raise ValueError('dataset = "npz" needs npz_path')
        slots = [spec.partition("=")[0] for spec in self.initial_seeds]
        if len(set(slots)) != len(slots):
            raise ValueError(f"initial_seeds names a slot twice: {list(self.initial_seeds)}")

    def initial_seed_blueprints(self) -> dict[str, str]:
        """Each initial seed's slot -> its blueprint id, in the order given."""
        return {slot: blueprint for slot, _, blueprint in (spec.partition("=") for spec in self.initial_seeds)}


class KasminaConfig(ConfigSection, frozen=True):
    """Seed slots: where they go, the lifecycle timers (steps or epochs, never seconds), gates and isolation."""

    slot_targets: tuple[str, ...] = ()
    # 0 turns growth off: a host-only run, e.g. the baseline that nissa.baseline_run compares against.
    max_active_seeds: NonNegInt = 4
    embargo_epochs: NonNegInt = 2
    stage_min_dwell_steps: NonNegInt = 20
    probation_epochs: PosInt = 2
    blend_ramp_steps: PosInt = 20
    blend_temperature: BlendTemperature = 2.0
    confidence_k: PosFloat = 4.0
    confidence_tau: float = 0.2
    alpha_hysteresis: UnitFloat = 0.02
    g2_window_steps: PosInt = 20
    g2_max_loss_variance: PosFloat = 1.0
    g2_max_gradient_norm: PosFloat = 100.0
    g4_min_improvement: float = 0.0
    g4_max_step_latency_growth: NonNegFloat = 0.15
    # A gate of GERMINATED..SHADOWING still undecided this many steps after its dwell and the time its evidence takes
    # to arrive (the command lag, a window of packets, the blend ramp, the epoch ends of G4's validation) culls the
    # seed with "timeout:<why>".
    gate_patience_steps: NonNegInt = 500
    seed_memory_budget_mb: MemoryBudgetMB | None = None
    isolation_probe_every_steps: PosInt = 10
    isolation_alert_violations: PosInt = 3
    isolation_alert_window_s: Seconds = 300.0
    prefetch_timeout_ms: Millis = 2000.0
    # How long a seed preparation waits for an artifact not stored yet (a germination racing Tezzeret's start-up
    # pass) before it fails; keep it below tolaria.decision_deadline_ms, or the trainer gives up on the plan first.
    artifact_wait_ms: NonNegMillis = 500.0
    allow_fallback_kernel: bool = False
    breaker: BreakerConfig = field(default_factory=BreakerConfig)


class TamiyoConfig(ConfigSection, frozen=True):
    """The controller: which policy, its deadline, risk thresholds, conservative mode and field reports."""

    policy: Literal["heuristic", "gnn", "every_k"] = "heuristic"
    decision_budget_ms: Millis = 45.0
    decision_p95_target_ms: Millis = 5.0
    metadata_budget_ms: Millis = 20.0
    deadline_fallback: Literal["heuristic", "no_op"] = "heuristic"
    device: Device = "auto"
    gnn_checkpoint: str | None = None
    compile: bool = False
    # Where the GNN policy's inference runs: "process" (a worker process, so on a CPU it does not contend with
    # training for the GIL), "thread" (the policy lane's thread), "auto" (process on a CPU lane, thread on CUDA).
    policy_process: Literal["auto", "thread", "process"] = "auto"
    # A decision takes milliseconds; a GNN worker process silent this long on one is hung (stopped, swapped out,
    # deadlocked): it is killed and started again. Keep it well under tolaria.decision_deadline_ms, so the packets
    # queued behind the hung decision are still answered before the trainer gives up on their plans.
    policy_worker_silence_s: Seconds = 0.5
    every_k_epochs: PosInt = 3
    germinate_cooldown_epochs: NonNegInt = 2
    plateau_patience_epochs: PosInt = 2
    plateau_min_delta: NonNegFloat = 1e-3
    # Grow only into slots whose layer carries at least this multiple of the mean layer's gradient norm.
    germinate_min_constraint: NonNegFloat = 1.0
    # The heuristic grows the acceptable blueprint whose cost tier is nearest this one (ties to the cheaper tier).
    blueprint_cost_tier: Literal["low", "medium", "high"] = "low"
    cull_after_epochs: PosInt = 4
    # The heuristic and every_k grow no blueprint that would take the seeds' parameters (the packet's seed_parameters)
    # past this; None: no budget.
    max_added_parameters: PosInt | None = None
    policy_risk_critical: UnitFloat = 0.98
    policy_risk_elevated: UnitFloat = 0.85
    blueprint_risk_veto: UnitFloat = 0.8
    blueprint_risk_downgrade: UnitFloat = 0.5
    loss_spike_veto: PosFloat = 0.15
    loss_spike_warn: PosFloat = 0.075
    hook_latency_veto_ms: Millis = 50.0
    step_latency_veto_ms: Millis = 120.0
    conservative_exit_clean_epochs: PosInt = 2
    max_layer_nodes: PosInt = 4
    max_activation_nodes: PosInt = 2
    max_parameter_nodes: PosInt = 2
    normaliser_alpha: UnitFloat = 0.1
    field_report_window_epochs: PosInt = 3
    field_report_retention_s: Seconds = 86400.0
    field_report_publish_retries: NonNegInt = 3
    field_report_backoff_s: Seconds = 1.0
    policy_rollback_decisions: PosInt = 20
    inference_breaker: BreakerConfig = field(default_factory=BreakerConfig)
    metadata_breaker: BreakerConfig = field(default_factory=BreakerConfig)

    def __post_init__(self) -> None:
        if self.loss_spike_warn > self.loss_spike_veto:
            raise ValueError(
                f"loss_spike_warn ({self.loss_spike_warn}) must not exceed loss_spike_veto ({self.loss_spike_veto})"
            )
        if self.policy_risk_elevated > self.policy_risk_critical:
            raise ValueError(
                f"policy_risk_elevated ({self.policy_risk_elevated}) must not exceed policy_risk_critical"
                f" ({self.policy_risk_critical})"
            )
        if self.blueprint_risk_downgrade > self.blueprint_risk_veto:
            raise ValueError(
                f"blueprint_risk_downgrade ({self.blueprint_risk_downgrade}) must not exceed blueprint_risk_veto"
                f" ({self.blueprint_risk_veto})"
            )


class UrzaConfig(ConfigSection, frozen=True):
    """The artifact store (shared by runs) and its ready-module cache."""

    root: str = ".esper/urza"
    ready_cache_modules: PosInt = 32
    fetch_budget_ms: Millis = 10.0
    catalog_records_cache: PosInt = 128


class TezzeretConfig(ConfigSection, frozen=True):
    """Ahead-of-time compilation of blueprints on the io lane."""

    compile_at_start: bool = True
    torch_compile: bool = False
    compile_timeout_s: Seconds = 60.0
    eager_fallback: bool = True
    max_retries: NonNegInt = 1
    breaker: BreakerConfig = field(default_factory=BreakerConfig)


class KarnConfig(ConfigSection, frozen=True):
    """The blueprint catalogue: which blueprints may be offered."""

    allow_high_risk: bool = False
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()


class OonaConfig(ConfigSection, frozen=True):
    """The bus: backend, delivery, backpressure and the emergency lane."""

    backend: Literal["inproc", "redis"] = "inproc"
    redis_url: str = "redis://localhost:6379/0"
    stream_prefix: NonEmptyStr = "esper"
    topic_capacity: PosInt = 8192
    claim_idle_s: Seconds = 60.0
    claim_batch: PosInt = 50
    dead_letter_attempts: PosInt = 5
    message_ttl_s: Seconds = 900.0
    emergency_rate_per_min: PosInt = 120
    queue_depth_high: PosInt = 4000
    queue_depth_recovery: NonNegInt = 1000
    # Redis only: the in-process bus hands messages over without encoding them, so it has no payload to bound.
    max_payload_bytes: PosInt = 1_048_576
    publish_breaker: BreakerConfig = field(default_factory=BreakerConfig)
    consume_breaker: BreakerConfig = field(default_factory=BreakerConfig)

    def __post_init__(self) -> None:
        if self.queue_depth_recovery >= self.queue_depth_high:
            raise ValueError(
                f"queue_depth_recovery ({self.queue_depth_recovery}) must be below "
                f"queue_depth_high ({self.queue_depth_high})"
            )
        if self.queue_depth_high > self.topic_capacity:
            raise ValueError(
                f"queue_depth_high ({self.queue_depth_high}) must not exceed topic_capacity ({self.topic_capacity}):"
                " a topic holds no more"
            )


class NissaConfig(ConfigSection, frozen=True):
    """Observability: metrics, alerts, SLO burn, Prometheus exposition and the run report files."""

    prometheus_port: Port | None = None
    prometheus_host: str = "127.0.0.1"
    metrics_csv: str = "metrics.csv"
    summary_json: str = "summary.json"
    report_png: bool = True
    # A finished host-only run's directory (same data, split, host and training): the summary then compares the final
    # accuracy with that run's instead of with this run's last epoch before growth.
    baseline_run: str | None = None
    alert_eval_interval_s: Seconds = 30.0
    slo_window_days: PosFloat = 30.0
    slo_burn_threshold: UnitFloat = 0.4
    # Samples a window needs before its burn can fire an alert: one slow kernel fetch, a short run's only sample of
    # it, was a burn of 1.
    slo_min_samples: PosInt = 20
    # The training_latency_high alert's step time: a fixed 18 ms flapped on ordinary conv models stepping 17-53 ms.
    training_latency_high_ms: Millis = 18.0
    seed_event_queue: PosInt = 64


class SimicConfig(ConfigSection, frozen=True):
    """Offline learning: replay of field reports, PPO on the deployed GNN, validation and signed updates. Not built
    yet (INERT_KEYS): only the reward lambdas are used, by Tamiyo's field reports."""

    enabled: bool = False
    lr: PosFloat = 1e-4
    grad_clip: PosFloat = 0.5
    gamma: UnitFloat = 0.99
    gae_lambda: UnitFloat = 0.95
    clip_ratio: PosFloat = 0.2
    entropy_coef: NonNegFloat = 0.01
    value_coef: NonNegFloat = 0.5
    ppo_epochs: PosInt = 4
    batch_size: PosInt = 64
    replay_capacity: PosInt = 4096
    min_reports_to_train: PosInt = 32
    reward_lambda_size: NonNegFloat = 0.1
    reward_lambda_critical: NonNegFloat = 1.0
    min_average_reward: float = 0.0
    max_policy_loss: PosFloat = 5.0
    max_value_loss: PosFloat = 50.0
    max_param_loss: PosFloat = 5.0
    min_entropy: float = 0.0
    shadow_decisions: NonNegInt = 20
    device: Device = "auto"


class RunConfig(ConfigSection, frozen=True):
    """The whole run: top-level keys plus one table per subsystem."""

    run_id: str | None = None
    runs_dir: str = "runs"
    tolaria: TolariaConfig = field(default_factory=TolariaConfig)
    kasmina: KasminaConfig = field(default_factory=KasminaConfig)
    tamiyo: TamiyoConfig = field(default_factory=TamiyoConfig)
    urza: UrzaConfig = field(default_factory=UrzaConfig)
    tezzeret: TezzeretConfig = field(default_factory=TezzeretConfig)
    karn: KarnConfig = field(default_factory=KarnConfig)
    oona: OonaConfig = field(default_factory=OonaConfig)
    nissa: NissaConfig = field(default_factory=NissaConfig)
    simic: SimicConfig = field(default_factory=SimicConfig)
    security: SecurityConfig = field(default_factory=SecurityConfig)
    weatherlight: WeatherlightConfig = field(default_factory=WeatherlightConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
