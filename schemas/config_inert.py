"""The config keys the schema carries but this version does not act on, each with the reason (INERT_KEYS)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from schemas.config import (
    BreakerConfig,
    KarnConfig,
    KasminaConfig,
    NissaConfig,
    OonaConfig,
    SimicConfig,
    TamiyoConfig,
    TezzeretConfig,
    TolariaConfig,
    UrzaConfig,
)
from schemas.config_platform import SecurityConfig

if TYPE_CHECKING:
    from schemas.base import ConfigSection

_NOT_BUILT = "Simic (policy learning) is not built yet"
_PUBLISH_ONLY = "a run publishes on the bus and consumes nothing from it"
_NO_CONFIDENCE_BLEND = "no policy blends a seed in CONFIDENCE mode, the only mode that reads it"
INERT_KEYS: dict[tuple[type[ConfigSection], str], str] = {
    (BreakerConfig, "half_open_probes"): "a breaker admits one probe at a time",
    (TolariaConfig, "rollback_fast_target_ms"): "rollback times are measured and logged, not held to a target",
    (KasminaConfig, "alpha_hysteresis"): "the alpha ramp has no hysteresis band",
    (KasminaConfig, "confidence_k"): _NO_CONFIDENCE_BLEND,
    (KasminaConfig, "confidence_tau"): _NO_CONFIDENCE_BLEND,
    (KasminaConfig, "g4_max_step_latency_growth"): (
        "G4 judges no step latency: step times are wall-clock, and a gate on them would make the lifecycle depend on"
        " the machine's load"
    ),
    (KasminaConfig, "prefetch_timeout_ms"): "seed modules are fetched from Urza within urza.fetch_budget_ms",
    (KasminaConfig, "allow_fallback_kernel"): "no fallback kernel is ever substituted for a blueprint's own",
    (TamiyoConfig, "device"): "the policy runs on the trainer's device, tolaria.device (its own CUDA stream there)",
    (TamiyoConfig, "decision_p95_target_ms"): "decision latency is reported in the summary, not held to a target",
    (TamiyoConfig, "metadata_budget_ms"): "blueprint metadata comes from the in-process catalogue",
    (TamiyoConfig, "max_activation_nodes"): "the policy graph has no activation nodes",
    (TamiyoConfig, "max_parameter_nodes"): "the policy graph has no parameter nodes",
    (TamiyoConfig, "field_report_retention_s"): "field reports stay in field_reports.wal for the run's life",
    (TamiyoConfig, "field_report_publish_retries"): "field reports are written to field_reports.wal, not published",
    (TamiyoConfig, "field_report_backoff_s"): "field reports are written to field_reports.wal, not published",
    (TamiyoConfig, "policy_rollback_decisions"): f"policy updates are not applied ({_NOT_BUILT})",
    (TamiyoConfig, "metadata_breaker"): (
        "blueprint metadata comes from the in-process catalogue, which cannot fail: only tamiyo.inference_breaker trips"
    ),
    (UrzaConfig, "catalog_records_cache"): "Urza caches ready modules only (urza.ready_cache_modules)",
    (TezzeretConfig, "max_retries"): "a failed compilation is not retried",
    (TezzeretConfig, "breaker"): "each failed compilation marks its blueprint failed and is reported; no breaker",
    (KarnConfig, "allow_high_risk"): (
        "every HIGH_RISK blueprint (BP009-BP011) also requires a recorded approval, and this version records none"
    ),
    (OonaConfig, "consume_breaker"): _PUBLISH_ONLY,
    (OonaConfig, "claim_idle_s"): _PUBLISH_ONLY,
    (OonaConfig, "claim_batch"): _PUBLISH_ONLY,
    (OonaConfig, "dead_letter_attempts"): _PUBLISH_ONLY,
    (NissaConfig, "seed_event_queue"): "seed events reach Nissa through its mailbox (weatherlight.mailbox_capacity)",
    (SimicConfig, "enabled"): _NOT_BUILT,
    (SimicConfig, "lr"): _NOT_BUILT,
    (SimicConfig, "grad_clip"): _NOT_BUILT,
    (SimicConfig, "gamma"): _NOT_BUILT,
    (SimicConfig, "gae_lambda"): _NOT_BUILT,
    (SimicConfig, "clip_ratio"): _NOT_BUILT,
    (SimicConfig, "entropy_coef"): _NOT_BUILT,
    (SimicConfig, "value_coef"): _NOT_BUILT,
    (SimicConfig, "ppo_epochs"): _NOT_BUILT,
    (SimicConfig, "batch_size"): _NOT_BUILT,
    (SimicConfig, "replay_capacity"): _NOT_BUILT,
    (SimicConfig, "min_reports_to_train"): _NOT_BUILT,
    (SimicConfig, "min_average_reward"): _NOT_BUILT,
    (SimicConfig, "max_policy_loss"): _NOT_BUILT,
    (SimicConfig, "max_value_loss"): _NOT_BUILT,
    (SimicConfig, "max_param_loss"): _NOT_BUILT,
    (SimicConfig, "min_entropy"): _NOT_BUILT,
    (SimicConfig, "shadow_decisions"): _NOT_BUILT,
    (SimicConfig, "device"): _NOT_BUILT,
    (SecurityConfig, "nonce_purge_interval_s"): "the nonce ledger purges expired entries on every insert",
    (SecurityConfig, "kernel_freshness_s"): "kernels travel as checksummed Urza artifacts, not as signed messages",
}
"""Keys the schema carries (REFERENCE.md's defaults) that this version does not act on, with the reason.
esper.config refuses a config that sets one to anything but its default, since a setting
that silently does nothing is worse than an error; a test keeps this table equal to the keys no code reads."""
