"""The run's tally for the summary table: seed outcomes, decisions, emergencies and alerts gathered from its traffic."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, final

from actors.nissa.actor import ALERT_FIRED
from esper.decisions import Decision as DecisionRecord
from esper.decisions import add_decision, vetoed_by
from esper.runtime.emergency_tally import EmergencyTally
from esper.runtime.percentiles import nearest_rank
from esper.runtime.stage_refusals import Refusal, RefusalLog, Transition, effect_step
from esper.summary_table import paused_outcomes, seed_outcomes, unapplied_transitions
from schemas.boundary import FALLBACK_SUFFIX, TrainingRestored
from schemas.enums import SeedLifecycleStage
from schemas.nissa import LifecycleRestored, SeedStageChanged
from schemas.run import GrowthFigures
from schemas.runtime import ChildFailed, EmergencySignal
from schemas.telemetry import TelemetryEvent

if TYPE_CHECKING:
    from collections.abc import Sequence

    from schemas.base import Message, Record
    from schemas.boundary import BoundaryApplied, Decision
    from schemas.state import SystemStatePacket


@final
@dataclass
class RunTally:
    """What the summary table needs, gathered from the traffic: an EventSink plus packet and decision taps.

    Event loop only.
    """

    epoch_val_accuracy: dict[int, float] = field(default_factory=dict)
    epoch_step: dict[int, int] = field(default_factory=dict)
    # The seeds' transitions as (seed id, effect step, stage), in order (see seed_outcomes).
    seed_transitions: list[tuple[str, int, SeedLifecycleStage]] = field(default_factory=list)
    # The run's decisions, each decided step once (see add_decision); a resumed run's begin with the interrupted
    # sessions' (read back from their tamiyo_decision lines).
    decisions: list[DecisionRecord] = field(default_factory=list)
    # Every session's emergency signals, each move of the ladder once: a resumed session that trains the killed
    # session's last steps again makes its moves at those steps again (see EmergencyTally).
    emergencies: EmergencyTally = field(default_factory=EmergencyTally)
    # A resumed run's earlier slot transitions, read once with the rest of its tally.
    earlier_slot_transitions: list[Transition] = field(default_factory=list)
    # Every slot's transitions that stand, the earlier sessions' included: a restarted Nissa starts from them.
    slot_transitions: list[Transition] = field(default_factory=list)
    # The stage ops the trainer refused (from its receipts) and where they took effect: a transition counts at the
    # step it took effect (effect_step), not the step planned.
    refusals: RefusalLog = field(default_factory=RefusalLog)
    # What a resumed run's earlier sessions' files could not tell (a phrase each), for the summary to say.
    earlier_incomplete: list[str] = field(default_factory=list)
    # What they could not tell with their seed transitions whole (the host-only baseline is still known).
    earlier_partial: list[str] = field(default_factory=list)
    # GNN workers killed because they stopped answering (the actor's tamiyo_gnn_worker_hung events).
    worker_hangs: int = 0
    # Nissa's alerts that fired, by rule (its alert_fired events): a resumed run's begin with the earlier sessions'.
    alerts_fired: dict[str, int] = field(default_factory=dict)
    # The actors cancelled past their shutdown deadline, in order (their supervisors' ChildFailed events).
    cancelled: list[str] = field(default_factory=list)
    # The commands Kasmina or its verifier refused, by reason (their command_rejected events), every session's: a
    # germination refused reads as no growth at all, and the controller's reasons (cooldown) do not say why.
    rejected_commands: dict[str, int] = field(default_factory=dict)
    _rejected_ids: set[str] = field(default_factory=set)  # the commands counted there
    # The seeds the trainer held paused at the last state packet (its seed states): every_k never culls a seed the
    # risk engine paused, and the summary's "probationary 4" did not say all four passed the host's output through.
    paused_seeds: frozenset[str] = frozenset()

    def emit(self, event: Message | Record) -> None:
        match event:
            case SeedStageChanged(slot=slot, seed_id=seed_id, to_stage=stage, step=step):
                if seed_id is not None:
                    self.seed_transitions.append((seed_id, step, stage))
                self.slot_transitions.append(Transition(slot, stage, step, seed_id))
            case LifecycleRestored():
                # A rollback (or a restart, or a resume) undid the later transitions: a seed germinated after the
                # restored state was counted with the outcome it never reached; those that happen again come again.
                self.seed_transitions = [t for t in self.seed_transitions if not event.undoes(t[1])]
                self.slot_transitions = [t for t in self.slot_transitions if not event.undoes(t.step)]
                self.refusals.restore(event.step)
            case TrainingRestored(step=step):
                # The epochs that ended after the restored step are trained again, or never (a resume with fewer
                # epochs): their figures, a killed session's read back by preload included, are the undone attempt's.
                # Nissa cuts its metrics.csv rows the same way.
                for epoch in [epoch for epoch, ended in self.epoch_step.items() if ended > step]:
                    del self.epoch_step[epoch]
                    self.epoch_val_accuracy.pop(epoch, None)
            case EmergencySignal():
                self.emergencies.add_signal(event)  # a resume's re-announcement of its level is no emergency
            case ChildFailed(child=child, error_type="ShutdownDeadlineExceeded"):
                self.cancelled.append(child)
            case TelemetryEvent(name="tamiyo_gnn_worker_hung"):
                self.worker_hangs += 1
            case TelemetryEvent(name=name, attributes={"rule": str(rule)}) if name == ALERT_FIRED:
                self.alerts_fired[rule] = self.alerts_fired.get(rule, 0) + 1
            case TelemetryEvent(name="command_rejected", attributes={"reason": str(reason), **attributes}):
                command_id = attributes.get("command_id")
                self._count_rejected(reason, command_id if isinstance(command_id, str) else "")
            case _:
                pass

    def _count_rejected(self, reason: str, command_id: str) -> None:
        # Once per command: its ids are reproducible, and the steps a resume, a restart or a rollback trains again
        # refuse the same command again.
        if command_id:
            if command_id in self._rejected_ids:
                return
            self._rejected_ids.add(command_id)
        self.rejected_commands[reason] = self.rejected_commands.get(reason, 0) + 1

    def preload(
        self,
        stages: list[tuple[str, SeedLifecycleStage, int]],
        epochs: list[tuple[int, int, float]],
        decisions: list[DecisionRecord] | None = None,
        slot_transitions: list[Transition] | None = None,
        *,
        emergencies: EmergencyTally | None = None,
        refusals: Sequence[Refusal] = (),
        incomplete: Sequence[str] = (),
        partial: Sequence[str] = (),
        alerts_fired: Sequence[str] = (),
        rejected_commands: Sequence[tuple[str, str]] = (),
    ) -> None:
        """What an interrupted run already did (``--resume``): (seed id, stage, step) transitions in order,
        (epoch, step, validation accuracy) rows, its decisions and its slot transitions (what Nissa starts from, see
        slot_transitions_at), its emergency signals (the summary counts every session's, each move once) and the stage
        ops the trainer refused (see RefusalLog), the rule of each alert that fired and the reason of each command
        refused; the resumed run's own traffic
        then continues the tally.
        ``incomplete``: what the earlier sessions' files could not tell (the summary says so:
        GrowthFigures.earlier_incomplete); ``partial``: what they could not tell with their seed transitions whole
        (said the same way, but the host-only baseline stays known)."""
        self.earlier_incomplete = list(incomplete)
        self.earlier_partial = list(partial)
        self.decisions = list(decisions or ())
        self.emergencies = emergencies if emergencies is not None else EmergencyTally()
        self.earlier_slot_transitions = list(slot_transitions or ())
        self.slot_transitions = list(slot_transitions or ())
        self.refusals = RefusalLog(refusals)
        self.alerts_fired = dict(Counter(alerts_fired))
        self.rejected_commands = {}
        self._rejected_ids = set()
        for reason, command_id in rejected_commands:
            self._count_rejected(reason, command_id)
        for seed_id, stage, step in stages:
            self.seed_transitions.append((seed_id, step, stage))
        for epoch, step, accuracy in epochs:
            self.epoch_val_accuracy[epoch] = accuracy
            self.epoch_step[epoch] = step

    def standing_slot_transitions(self) -> list[Transition]:
        """Every slot transition that stands, the earlier sessions' included: what a restarted Nissa starts from (it
        counted seeds by the trainer's coarser view, probationary as shadowing and embargoed as dormant, until each
        slot's next transition)."""
        return list(self.slot_transitions)

    def standing_refusals(self) -> tuple[Refusal, ...]:
        """The refused stage ops that stand, the earlier sessions' included: a restarted Nissa starts from them."""
        return self.refusals.refusals()

    def on_receipt(self, receipt: BoundaryApplied) -> None:
        """Tolaria's receipt of a boundary: the stage ops it refused, and those it applied after a refusal."""
        self.refusals.receipt(receipt)

    def on_packet(self, packet: SystemStatePacket) -> None:
        self.paused_seeds = frozenset(s.seed_id for s in packet.seed_states if s.paused and s.seed_id is not None)
        if packet.epoch_progress >= 1.0 and packet.validation_accuracy is not None:
            self.epoch_val_accuracy[packet.epoch + 1] = packet.validation_accuracy
            self.epoch_step[packet.epoch + 1] = packet.global_step

    def on_decision(self, decision: Decision) -> None:
        command = decision.command is not None
        no_op = None if command else (decision.reason or "no_op")
        fallback = decision.policy.endswith(FALLBACK_SUFFIX)
        vetoed, other = vetoed_by(command, decision.risk_reason, decision.proposed)
        record = DecisionRecord(
            decision.decided_on_step, decision.decision_ms, no_op, fallback, decision.fallback_reason, vetoed, other
        )
        add_decision(self.decisions, record)

    def _first_grafted_germination(self, last_step: int | None) -> int | None:
        """The germination step of the first seed that was grafted (reached TRAINING by ``last_step``, None: ever). One
        culled before (its module could not be fetched, or its attach failed G1) left the host training alone: until
        then the slot's forward value is the host's own (esper.nn.slots)."""
        germinated: dict[str, int] = {}
        grafted: list[int] = []
        for seed_id, step, stage in self.seed_transitions:
            if last_step is not None and step > last_step:
                continue
            if stage is SeedLifecycleStage.GERMINATED:
                germinated.setdefault(seed_id, step)
            elif stage is SeedLifecycleStage.TRAINING and seed_id in germinated:
                grafted.append(germinated[seed_id])
        return min(grafted, default=None)

    def figures(self, seed_parameters: int, last_step: int | None = None) -> GrowthFigures:
        """The growth figures as of now; the baseline is the last epoch whose end came before the germination of the
        first seed that reached training took effect (the host alone), or the final epoch when none did; none
        ("unknown") when the earlier sessions' events are incomplete (their seed transitions lost). Seeds are
        counted by the stage they were in at ``last_step`` (the last trained step; None: their latest), each
        transition at the step it took effect, leaving out what never did (planned after ``last_step``, or refused
        by the trainer and never applied)."""
        epochs = sorted(self.epoch_val_accuracy)
        final = self.epoch_val_accuracy[epochs[-1]] if epochs else None
        baseline_epoch: int | None = None
        source = "run"
        grafted = self._first_grafted_germination(last_step)
        if self.earlier_incomplete:
            # The earlier sessions' seed transitions are partly lost (their event log gone or cut short): which
            # epochs the host trained alone cannot be told, and "host only" would call a grown model the baseline.
            source = "unknown"
        elif grafted is None:
            baseline_epoch, source = (epochs[-1] if epochs else None), "host_only"
        else:
            before = [e for e in epochs if self.epoch_step[e] < grafted]
            baseline_epoch = before[-1] if before else None
        # Each transition where it took effect: a stage change the trainer refused (at L3) counts from the step its
        # op was applied, or not at all, as the report draws it (esper.report_receipts).
        refusals = self.refusals.refusals()
        applied = [
            (seed_id, at, stage)
            for seed_id, step, stage in self.seed_transitions
            if (at := effect_step(seed_id, stage, step, refusals)) is not None
        ]
        counts = seed_outcomes(applied, last_step)
        unapplied = unapplied_transitions(
            (
                at
                for t in self.slot_transitions
                if (at := effect_step(t.seed_id, t.stage, t.step, refusals)) is not None
            ),
            last_step,
        )
        latencies = sorted(d.ms for d in self.decisions)
        no_op_reasons: dict[str, int] = {}
        vetoed_reasons: dict[str, int] = {}
        fallback_reasons: dict[str, int] = {}
        for d in self.decisions:
            if d.vetoed_by:
                vetoed_reasons[d.vetoed_by] = vetoed_reasons.get(d.vetoed_by, 0) + 1
            elif d.no_op_reason is not None and not d.vetoed_other:
                no_op_reasons[d.no_op_reason] = no_op_reasons.get(d.no_op_reason, 0) + 1
            if d.fallback:
                why = d.fallback_reason or "unrecorded"
                fallback_reasons[why] = fallback_reasons.get(why, 0) + 1
        return GrowthFigures(
            baseline_val_accuracy=None if baseline_epoch is None else self.epoch_val_accuracy[baseline_epoch],
            baseline_epoch=baseline_epoch,
            baseline_source=source,
            final_val_accuracy=final,
            parameters_added=seed_parameters,
            seeds=counts,
            paused_seeds=paused_outcomes(applied, last_step, self.paused_seeds),
            unapplied_transitions=unapplied,
            no_op_reasons=no_op_reasons,
            vetoed_reasons=vetoed_reasons,
            decisions=len(latencies),
            decision_p50_ms=nearest_rank(latencies, 0.50),
            decision_p95_ms=nearest_rank(latencies, 0.95),
            fallback_decisions=sum(d.fallback for d in self.decisions),
            fallback_reasons=fallback_reasons,
            worker_hangs=self.worker_hangs,
            emergency_events=self.emergencies.count,
            earlier_incomplete=[*self.earlier_incomplete, *self.earlier_partial],
            rejected_commands=dict(self.rejected_commands),
        )
