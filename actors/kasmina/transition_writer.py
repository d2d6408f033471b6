"""A Kasmina boundary's lifecycle report written out: its gate results and transitions as telemetry, its plan's ops.

Every transition is told as a SeedStageChanged (schemas.nissa's contract) stamped with the step at which the plan of
the boundary takes effect, and becomes the seed op that makes the trainer follow it: an attach placeholder for a
germination (the module is prepared before the plan leaves), ``set_stage``, ``fossilize`` or a cull's ``detach``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, final

from actors.kasmina.commands import emit_event
from actors.kasmina.gates import GateVerdict
from actors.kasmina.seeds import gate_result
from actors.kasmina.stage_retries import SET_STAGE
from schemas.boundary import SeedOp
from schemas.domain_enums import TelemetryLevel
from schemas.enums import SeedLifecycleStage as Stage
from schemas.nissa import SeedStageChanged

if TYPE_CHECKING:
    from actors.kasmina.lifecycle_table import BoundaryReport
    from actors.kasmina.preparation import PreparationRequest
    from actors.kasmina.seeds import SeedEntry
    from esper.runtime.events import EventSink
    from schemas.control import CommandResult

_CRITICAL_GATE_REASONS = ("fallback", "latency_over_budget", "interface_mismatch")
_AFTER_LIFE = frozenset({Stage.CULLED, Stage.EMBARGOED, Stage.RESETTING})


@final
@dataclass
class Draft:
    """A plan being assembled: ops in order, with attach placeholders (seed ids) until preparation is done."""

    step: int
    epoch: int
    ops: list[SeedOp | str] = field(default_factory=list)
    results: list[CommandResult] = field(default_factory=list)
    preparations: list[PreparationRequest] = field(default_factory=list)


@final
class TransitionWriter:
    """Reports a boundary's gate results and transitions and writes their ops into the draft plan.

    Shares the planner's seed and pending maps (the same objects): a germination moves its seed from pending to live,
    a slot back to DORMANT forgets its seed.
    """

    def __init__(
        self, *, seeds: dict[str, SeedEntry], pending: dict[str, SeedEntry], lag_steps: int, sink: EventSink
    ) -> None:
        self._seeds = seeds
        self._pending = pending
        self._lag = lag_steps
        self._sink = sink

    def judged(self, report: BoundaryReport) -> None:
        """Emit each gate judged (a failure also as an event); a G1 pass is a success of the isolation breaker."""
        for evaluation in report.evaluations:
            outcome = evaluation.outcome
            if outcome.verdict is GateVerdict.PENDING:
                continue
            result = gate_result(evaluation)
            seed = self._seeds.get(evaluation.seed_id) if evaluation.seed_id is not None else None
            if seed is not None:
                seed.last_gate = result
                if result.passed and result.gate.name == "G1_GRADIENT_HEALTH":
                    seed.breaker.record_success()
            self._sink.emit(result)
            if not result.passed:
                critical = result.reason.startswith("timeout") or result.reason in _CRITICAL_GATE_REASONS
                self._event(
                    "gate_failure",
                    TelemetryLevel.CRITICAL if critical else TelemetryLevel.WARNING,
                    f"{result.gate.name} failed for seed {result.seed_id} in slot {result.slot}: {result.reason}",
                    gate=result.gate.name,
                    reason=result.reason,
                    slot=result.slot,
                    seed_id=result.seed_id,
                )

    def transition_ops(self, report: BoundaryReport, draft: Draft) -> set[str]:
        """Report each transition and write its op into ``draft``; returns the slots that changed."""
        changed: set[str] = set()
        for entry in report.transitions:
            changed.add(entry.slot)
            self._event(
                "seed_transition",
                TelemetryLevel.INFO,
                f"slot {entry.slot}: {entry.from_stage.name} -> {entry.to_stage.name} ({entry.reason})",
                slot=entry.slot,
                seed_id=entry.seed_id or "",
                from_stage=entry.from_stage.name,
                to_stage=entry.to_stage.name,
                step=entry.step,
                epoch=entry.epoch,
                reason=entry.reason,
            )
            to, seed_id = entry.to_stage, entry.seed_id
            self._stage_changed(entry.slot, entry.from_stage, to, seed_id, entry.step, entry.epoch, entry.reason)
            if to is Stage.GERMINATED:
                born = self._pending.pop(entry.slot)
                self._seeds[born.seed_id] = born
                draft.preparations.append(born.request)
                draft.ops.append(born.seed_id)
                continue
            seed = self._seeds.get(seed_id) if seed_id is not None else None
            if seed is None:
                continue
            if to in SET_STAGE:
                blend = seed.blend if to is Stage.BLENDING else None
                draft.ops.append(
                    SeedOp(
                        kind="set_stage", slot=entry.slot, seed_id=seed_id, stage=to, blend=blend, reason=entry.reason
                    )
                )
            elif to is Stage.FOSSILIZED:
                draft.ops.append(SeedOp(kind="fossilize", slot=entry.slot, seed_id=seed_id, reason=entry.reason))
            elif to is Stage.CULLED:
                self._event(
                    "seed_culled",
                    TelemetryLevel.WARNING,
                    f"seed {seed_id} in slot {entry.slot} culled from {entry.from_stage.name}: {entry.reason}",
                    slot=entry.slot,
                    seed_id=seed.seed_id,
                    stage=entry.from_stage.name,
                    reason=entry.reason,
                )
                if seed.attach_sent:
                    draft.ops.append(SeedOp(kind="detach", slot=entry.slot, seed_id=seed_id, reason=entry.reason))
            elif to is Stage.DORMANT:
                del self._seeds[seed.seed_id]
        return changed

    def _stage_changed(
        self, slot: str, from_stage: Stage, to: Stage, seed_id: str | None, step: int, epoch: int, reason: str
    ) -> None:
        """The lifecycle event of one transition (schemas.nissa's contract), stamped with the step at which the plan
        of this boundary takes effect; a stage op the trainer refuses there takes effect later, which
        ``seed_op_retried`` says (see TrainerReports._took_effect). A slot's clean-up after a cull carries no seed
        id: the seed's outcome stays CULLED."""
        seed = self._pending.get(slot) if to is Stage.GERMINATED else self._seeds.get(seed_id or "")
        self._sink.emit(
            SeedStageChanged(
                slot=slot,
                from_stage=from_stage,
                to_stage=to,
                step=step + self._lag,
                seed_id=None if from_stage in _AFTER_LIFE else seed_id,
                blueprint_id=seed.blueprint_id if seed is not None else None,
                epoch=epoch,
                reason=reason,
            )
        )

    def _event(self, name: str, level: TelemetryLevel, description: str, **attributes: str | int | float) -> None:
        emit_event(self._sink, name, level, description, **attributes)
