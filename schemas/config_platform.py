"""The config sections of the platform under the actors: signing (security), the root supervisor and logging."""

from __future__ import annotations

from typing import Literal

from schemas.base import ConfigSection
from schemas.config_types import MailboxCapacity, NonNegSeconds, Seconds
from schemas.constraints import NonEmptyStr, NonNegInt, PosInt


class SecurityConfig(ConfigSection, frozen=True):
    """Signing and replay protection for commands, envelopes, kernel messages and policy updates."""

    secret_env: NonEmptyStr = "ESPER_LEYLINE_SECRET"
    key_id: NonEmptyStr = "default"
    command_freshness_s: Seconds = 60.0
    future_skew_s: NonNegSeconds = 5.0
    nonce_ttl_s: Seconds = 300.0
    nonce_ledger_size: PosInt = 4096
    nonce_purge_interval_s: Seconds = 30.0
    kernel_freshness_s: Seconds = 60.0

    def __post_init__(self) -> None:
        if self.nonce_ttl_s <= self.command_freshness_s + self.future_skew_s:
            raise ValueError(
                f"nonce_ttl_s ({self.nonce_ttl_s}) must exceed command_freshness_s + future_skew_s "
                f"({self.command_freshness_s + self.future_skew_s}), or a replay slips in after eviction"
            )


class WeatherlightConfig(ConfigSection, frozen=True):
    """The root supervisor: restart intensity and backoff, shutdown deadline, mailbox sizes, state snapshots."""

    restart_max: PosInt = 5
    restart_window_s: Seconds = 30.0
    # Every actor's restarts but the trainer's, which restarts at once (a wait would only stall training).
    restart_backoff_initial_s: NonNegSeconds = 0.1
    restart_backoff_max_s: NonNegSeconds = 5.0
    # The trainer failing this many times in a row, none past the step of the failures before it, ends the run:
    # each restart replays the steps since the checkpoint to the same error, however slowly (the window never fills).
    restart_max_without_progress: PosInt = 3
    # The trainer's is at least 30 s: its stop finishes the step and writes a checkpoint.
    shutdown_deadline_s: Seconds = 5.0
    # Each actor's mailbox (Kasmina's never below what tolaria.command_lag_steps keeps in flight): memory, not results.
    mailbox_capacity: MailboxCapacity = 1024
    # True: refuse to start without ESPER_LEYLINE_SECRET. False: without the variable a random per-run key signs
    # Tamiyo's commands to Kasmina, which never leave the process (the bus, Redis too, carries unsigned telemetry only).
    require_secret: bool = False

    def __post_init__(self) -> None:
        if self.restart_backoff_max_s < self.restart_backoff_initial_s:
            raise ValueError(
                f"restart_backoff_max_s ({self.restart_backoff_max_s}) must not be below restart_backoff_initial_s"
                f" ({self.restart_backoff_initial_s})"
            )


class LoggingConfig(ConfigSection, frozen=True):
    """The structlog pipeline: console output, the events.jsonl file and the actor-state interval."""

    level: Literal["debug", "info", "warning", "error", "critical"] = "info"
    console: bool = True
    # The lowest level logged to stderr; "auto" is warning (events.jsonl keeps every event at ``level``).
    console_level: Literal["auto", "debug", "info", "warning", "error", "critical"] = "auto"
    json_file: str = "events.jsonl"
    state_interval_s: Seconds = 5.0
    dead_letters_logged: NonNegInt = 10
