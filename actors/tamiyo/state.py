"""Tamiyo's exported state (what a checkpoint and the state journal keep) and its lifetime counters."""

from __future__ import annotations

import msgspec

from actors.tamiyo.every_k import EveryKState
from actors.tamiyo.gnn_state import GnnPolicyState
from actors.tamiyo.heuristic import HeuristicState
from actors.tamiyo.outcomes import OutcomeState
from schemas.base import Record
from schemas.enums import BreakerState

__all__ = ["TamiyoCounters", "TamiyoState"]


class TamiyoCounters(Record, frozen=True):
    """Lifetime counters carried in the state, so statistics survive restarts and resumes."""

    decisions: int = 0
    by_action: dict[str, int] = msgspec.field(default_factory=dict)
    fallbacks: int = 0
    timeouts: int = 0
    inference_failures: int = 0
    inference_skipped: int = 0
    vetoes: int = 0
    downgrades: int = 0
    field_reports: int = 0


class TamiyoState(Record, frozen=True):
    """Everything the controller needs to decide exactly as an uninterrupted run would (a checkpoint stores it).

    The policies are argmax-deterministic, so there is no RNG state. Breaker timing is not portable across processes:
    an OPEN or HALF_OPEN breaker is restored as freshly opened, and either kind with its failure streak. Everything
    else comes back exactly: a state imported then exported is the state saved.
    """

    policy: str
    policy_version: str
    fallback: HeuristicState
    outcomes: OutcomeState
    counters: TamiyoCounters
    heuristic: HeuristicState | None = None
    every_k: EveryKState | None = None
    gnn: GnnPolicyState | None = None
    conservative_active: bool = False
    conservative_dirty: bool = False
    conservative_clean_epochs: int = 0
    conservative_reason: str = ""
    breaker_state: BreakerState = BreakerState.CLOSED
    breaker_failures: int = 0
    last_step: int | None = None
    # The blueprints the run offered (Karn's, at its first start): a resume offers the same, whatever the shared store
    # says of them since, so that it decides as an uninterrupted run would.
    blueprints: tuple[str, ...] = ()
