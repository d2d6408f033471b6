"""One seed's bookkeeping in the Kasmina planner, and the reports made from it: SeedState and GateResult."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, final

from esper.runtime.breaker import CircuitBreaker
from schemas.enums import SeedLifecycleStage as Stage
from schemas.state import GateResult, SeedState

if TYPE_CHECKING:
    from actors.kasmina.evidence import EvidenceSnapshot
    from actors.kasmina.lifecycle_table import GateEvaluation, SlotRecord
    from actors.kasmina.preparation import PreparationRequest, PreparedSeed
    from esper.runtime.clock import Clock
    from esper.runtime.events import EventSink
    from schemas.config import BreakerConfig
    from schemas.control import BlendConfig

_BLEND_ALLOWED = frozenset({Stage.BLENDING, Stage.SHADOWING, Stage.PROBATIONARY, Stage.FOSSILIZED})


@final
@dataclass
class SeedEntry:
    """The Kasmina planner's bookkeeping for one seed from G0 until its slot is DORMANT again."""

    seed_id: str
    slot: str
    blueprint_id: str
    blend: BlendConfig | None
    request: PreparationRequest
    breaker: CircuitBreaker
    germinated_step: int
    germinated_epoch: int
    prepared: PreparedSeed | None = None
    attach_sent: bool = False
    attached: bool = False
    detached: bool = False
    paused: bool = False
    # The decision step of the last pause or resume sent, and whether the trainer's receipts say the seed is paused:
    # a refused last op puts ``paused`` back to the trainer's state.
    pause_decided: int | None = None
    trainer_paused: bool = False
    violations_seen: int = 0
    isolation_culled: bool = False
    alpha: float = 0.0
    alpha_steps: int = 0
    gradient_norm: float | None = None
    learning_rate: float | None = None
    parameter_count: int = 0
    last_gate: GateResult | None = None

    def settle_pause(self, kind: str, applied: bool, decided_on_step: int) -> None:
        """The paused flag follows what the trainer applied: a refused pause (at L3 every op but a detach is refused)
        left the seed training, a refused resume left it paused. A later pause or resume still in flight decides."""
        if applied:
            self.trainer_paused = kind == "pause"
        elif decided_on_step == self.pause_decided:
            self.paused = self.trainer_paused


def gate_result(evaluation: GateEvaluation) -> GateResult:
    """The GateResult message of one gate evaluation (non-finite attributes left out: they do not encode)."""
    outcome = evaluation.outcome
    return GateResult(
        gate=outcome.gate,
        passed=outcome.passed,
        reason=outcome.reason,
        seed_id=evaluation.seed_id or "",
        slot=evaluation.slot,
        step=evaluation.step,
        attributes={k: v for k, v in outcome.attributes.items() if math.isfinite(v)},
    )


def seed_state(
    rec: SlotRecord, seed: SeedEntry | None, evidence: EvidenceSnapshot, *, depth: int, step: int | None, epoch: int
) -> SeedState:
    """A slot as Kasmina reports it at the boundary of ``step`` in ``epoch``; a slot without a seed is bare, and one
    holding an initial seed (no bookkeeping: it was never planned) carries the record's seed and blueprint ids."""
    if seed is None:
        return SeedState(
            slot=rec.slot,
            stage=rec.stage,
            layer_depth=depth,
            seed_id=rec.seed_id,
            blueprint_id=rec.blueprint_id,
            blend_allowed=rec.seed_id is not None and rec.stage in _BLEND_ALLOWED,
            embargo_until_epoch=rec.embargo_until_epoch,
        )
    now_step = step if step is not None else seed.germinated_step
    blend = seed.blend
    return SeedState(
        slot=rec.slot,
        stage=rec.stage,
        layer_depth=depth,
        seed_id=seed.seed_id,
        blueprint_id=seed.blueprint_id,
        artifact_sha256=seed.prepared.artifact_sha256 if seed.prepared is not None else None,
        alpha=min(1.0, max(0.0, seed.alpha)),
        alpha_steps=seed.alpha_steps,
        alpha_total_steps=blend.ramp_steps if blend is not None else 0,
        alpha_temperature=blend.temperature if blend is not None else 0.0,
        blend_mode=blend.mode if blend is not None else None,
        blend_allowed=rec.stage in _BLEND_ALLOWED,
        gradient_norm=seed.gradient_norm,
        learning_rate=seed.learning_rate,
        age_epochs=max(0, epoch - seed.germinated_epoch),
        age_steps=max(0, now_step - seed.germinated_step),
        isolation_violations=evidence.isolation_violations_total,
        embargo_until_epoch=rec.embargo_until_epoch,
        parameter_count=seed.parameter_count,
        paused=seed.paused,
        used_fallback=evidence.fallback,
        last_gate=seed.last_gate,
    )


def isolation_breaker(seed_id: str, *, clock: Clock, sink: EventSink, config: BreakerConfig) -> CircuitBreaker:
    """The seed's isolation breaker ``kasmina.isolation.<seed_id>``: each violation a failure, a G1 pass a success."""
    return CircuitBreaker.configured(f"kasmina.isolation.{seed_id}", config, clock=clock, sink=sink)
