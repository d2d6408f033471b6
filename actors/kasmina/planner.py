"""The boundary planner: one state packet plus its decision in, lifecycle boundary run, one BoundaryPlan out.

Synchronous and deterministic: given the same packets, decisions, receipts and validation reports in the same order,
it takes the same transitions at the same steps and writes the same plans. It never awaits; the actor around it
verifies signatures, awaits seed preparation on the io lane between ``begin`` and ``finish``, and sends the plan.
Runs on the Kasmina actor's event loop; not thread-safe. Events go to the injected sink, which never blocks.

Timeline of one seed (s = the step of the GERMINATE's packet, lag = TolariaConfig.command_lag_steps):
boundary s: G0 passes, DORMANT -> GERMINATED, the module is prepared and plan s carries ``attach`` (slot mode
TRAINING) effective at s + lag. The receipt of that attach is the G1 evidence; at the first boundary after the
attach took effect G1 passes and the lifecycle records GERMINATED -> TRAINING (no op: the slot already trains).
Later boundaries: TRAINING -> BLENDING (``set_stage`` with the blend config), -> SHADOWING, -> PROBATIONARY
(``set_stage``), -> FOSSILIZED (``fossilize``); a cull from any live stage is a ``detach``.

Receipts and validation reports are applied at the first boundary after the step they describe (trainer_reports.py);
the boundary's report becomes telemetry and the plan's ops in transition_writer.py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, final

from actors.kasmina.admission import checked_params
from actors.kasmina.commands import CommandDesk, emit_event
from actors.kasmina.lifecycle import SeedLifecycle
from actors.kasmina.lifecycle_table import IllegalTransition
from actors.kasmina.seeds import SeedEntry, seed_state
from actors.kasmina.stage_retries import StageRetries
from actors.kasmina.trainer_reports import TrainerReports
from actors.kasmina.transition_writer import Draft, TransitionWriter
from schemas.boundary import BoundaryPlan, SeedOp
from schemas.config import initial_seed_id
from schemas.domain_enums import CommandRejectReason, TelemetryLevel
from schemas.enums import SeedLifecycleStage as Stage

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from actors.kasmina.lifecycle_settings import LifecycleSettings
    from actors.kasmina.lifecycle_table import SlotRecord
    from actors.kasmina.preparation import PreparationRequest, PreparedSeed
    from esper.nn.blueprints import BlueprintDescriptor, SlotShape
    from esper.runtime.clock import Clock
    from esper.runtime.events import EventSink
    from schemas.boundary import BoundaryApplied
    from schemas.config import BreakerConfig
    from schemas.control import AdaptationCommand
    from schemas.kasmina import PrefetchSeed, SeedValidationReport
    from schemas.state import SeedState, SystemStatePacket


@final
class BoundaryPlanner:
    """Owns the SeedLifecycle, each seed's bookkeeping and isolation breaker, and the parameter-ownership map."""

    def __init__(
        self,
        *,
        run_id: str,
        run_seed: int,
        slots: Mapping[str, SlotShape],
        settings: LifecycleSettings,
        lag_steps: int,
        describe: Callable[[str], BlueprintDescriptor | None],
        clock: Clock,
        sink: EventSink,
        breaker: BreakerConfig,
        approved_blueprints: frozenset[str] = frozenset(),
        initial_seeds: Mapping[str, str] | None = None,
    ) -> None:
        """``initial_seeds`` maps a slot to the blueprint id of the seed the trainer attached there before step 0
        (``tolaria.initial_seeds``): the slot is FOSSILIZED from the start, so nothing germinates into it.

        Raises: ValueError: no slots, a negative lag, a slot name repeated or empty, or an initial seed in no slot.
        """
        if not slots:
            raise ValueError("slots must name at least one seed slot")
        if lag_steps < 0:
            raise ValueError(f"lag_steps must be >= 0, got {lag_steps}")
        self._run_id = run_id
        self._run_seed = run_seed
        self._shapes = dict(slots)
        self._depth = {name: i for i, name in enumerate(slots)}
        # Boot at step -1 so that a packet at step 0 is a boundary after it.
        fossilized = {slot: (initial_seed_id(slot), bp) for slot, bp in (initial_seeds or {}).items()}
        self._lifecycle = SeedLifecycle(tuple(slots), settings, step=-1, epoch=0, fossilized=fossilized)
        self._lag = lag_steps
        self._describe = describe
        self._clock = clock
        self._sink = sink
        self._breaker = breaker
        self._approved = approved_blueprints
        self._seeds: dict[str, SeedEntry] = {}
        self._pending: dict[str, SeedEntry] = {}
        self._owners: dict[str, str] = {}
        self._desk = CommandDesk(
            lifecycle=self._lifecycle,
            shapes=self._shapes,
            seeds=self._seeds,
            pending=self._pending,
            owners=self._owners,
            describe=describe,
            approved=approved_blueprints,
            lag_steps=lag_steps,
            run_seed=run_seed,
            clock=clock,
            sink=sink,
            breaker=breaker,
        )
        # Seeds whose stage op the trainer refused, until one takes effect.
        self._retries = StageRetries()
        self._reports = TrainerReports(
            lifecycle=self._lifecycle,
            seeds=self._seeds,
            owners=self._owners,
            retries=self._retries,
            sink=sink,
            cull=self._cull,
        )
        self._writer = TransitionWriter(seeds=self._seeds, pending=self._pending, lag_steps=lag_steps, sink=sink)
        self._last_step: int | None = None
        self._reported_epoch: int | None = None
        self.boundaries = 0

    # ------------------------------------------------------------ queries

    @property
    def lag_steps(self) -> int:
        return self._lag

    @property
    def last_step(self) -> int | None:
        """The step of the last boundary planned, or None before the first."""
        return self._last_step

    def seed_states(self) -> tuple[SeedState, ...]:
        return tuple(self._seed_state(rec) for rec in self._lifecycle.records())

    def owner_of(self, parameter: str) -> str | None:
        """The seed id (or ``"host"`` after fossilization) owning a qualified parameter name, from receipts."""
        return self._owners.get(parameter)

    def slot_of(self, seed_id: str) -> str | None:
        return self._desk.slot_of(seed_id)

    @property
    def accepted(self) -> int:
        """Commands accepted so far."""
        return self._desk.accepted

    @property
    def rejected(self) -> dict[str, int]:
        """Commands refused so far, by reason."""
        return self._desk.rejected

    @property
    def illegal_transitions(self) -> int:
        """Transitions the lifecycle refused so far."""
        return self._desk.illegal_transitions

    @property
    def isolation_culls(self) -> int:
        """Seeds culled for an open isolation breaker so far."""
        return self._reports.isolation_culls

    # ------------------------------------------------------------ inputs between boundaries

    def record_receipt(self, receipt: BoundaryApplied) -> None:
        """Keep Tolaria's receipt until the first boundary after its applied step."""
        self._reports.record_receipt(receipt)

    def record_validation(self, report: SeedValidationReport) -> None:
        """Keep a validation report until the boundary of its step."""
        self._reports.record_validation(report)

    def prefetch_request(self, msg: PrefetchSeed) -> PreparationRequest | str:
        """The preparation a prefetch asks for, or one line saying why it cannot be prepared."""
        shape = self._shapes.get(msg.slot)
        if shape is None:
            return f"unknown slot {msg.slot!r}"
        checked = checked_params(self._describe(msg.blueprint_id), msg.blueprint_id, shape, msg.blueprint_params)
        if isinstance(checked, str):
            return checked
        return self._desk.request(msg.seed_id, msg.slot, msg.blueprint_id, shape, checked)

    # ------------------------------------------------------------ the boundary

    def begin(
        self, packet: SystemStatePacket, command: AdaptationCommand | None, security: CommandRejectReason | None
    ) -> Draft:
        """Run the boundary of ``packet``: evidence, the command (already verified: ``security`` is the verifier's
        verdict), the lifecycle transitions; returns the draft plan and the modules it still needs.

        Raises:
            ValueError: the packet's step is not after the last boundary (the caller drops such packets first).
            TransitionOrderError: the packet's epoch went backwards.
        """
        step, epoch = packet.global_step, packet.epoch
        if self._last_step is not None and step <= self._last_step:
            raise ValueError(f"packet step {step} is not after the last boundary {self._last_step}")
        draft = Draft(step=step, epoch=epoch)
        self._reports.apply_receipts(step)
        self._reports.apply_validation(step)
        self._reports.report_resets()
        self._reports.apply_packet(packet)
        command_ops: list[SeedOp] = []
        paused_before = self._paused_slots()
        if command is not None:
            result, command_ops = self._desk.apply(command, security, step, epoch)
            draft.results.append(result)
            self._sink.emit(result)
        # A paused seed changes no stage (the trainer refuses it): held from the boundary of its pause, whose ops
        # follow this boundary's transitions in the plan, to the boundary after its resume, whose ops do as well.
        self._lifecycle.hold(paused_before | self._paused_slots())
        report = self._lifecycle.step_boundary(step, epoch)
        self._last_step = step
        self.boundaries += 1
        self._writer.judged(report)
        changed = self._writer.transition_ops(report, draft)
        self._retries.retry(draft.ops, draft.step, self._seeds, lambda slot: self._lifecycle.record(slot).stage)
        draft.ops.extend(command_ops)
        if self._reported_epoch != epoch:
            self._reported_epoch = epoch
            changed = {rec.slot for rec in self._lifecycle.records()}
        for rec in self._lifecycle.records():
            if rec.slot in changed:
                self._sink.emit(self._seed_state(rec))
        return draft

    def _paused_slots(self) -> frozenset[str]:
        return frozenset(seed.slot for seed in self._seeds.values() if seed.paused and not seed.detached)

    def prepared(self, prepared: PreparedSeed) -> None:
        """Record a module ready in the handoff store for a seed of the current draft."""
        self._seeds[prepared.seed_id].prepared = prepared
        self._seeds[prepared.seed_id].parameter_count = prepared.parameter_count

    def preparation_failed(self, seed_id: str, detail: str) -> None:
        """A seed's module could not be prepared: the seed is culled next boundary as ``preparation_failed:fetch_error``
        (no gate judged it: it failed before G1 had a module to probe, and a G1_GRADIENT_HEALTH reason read as a seed
        with bad gradients)."""
        seed = self._seeds[seed_id]
        self._event(
            "preparation_failed",
            TelemetryLevel.ERROR,
            f"seed {seed_id} in slot {seed.slot}: {detail}",
            slot=seed.slot,
            seed_id=seed_id,
        )
        self._cull(seed.slot, "preparation_failed:fetch_error")

    def finish(self, draft: Draft) -> BoundaryPlan:
        """The plan of a draft: attach placeholders become attach ops for the seeds that were prepared."""
        ops: list[SeedOp] = []
        for op in draft.ops:
            if isinstance(op, SeedOp):
                ops.append(op)
                continue
            seed = self._seeds.get(op)
            if seed is None or seed.prepared is None:
                continue
            seed.attach_sent = True
            ops.append(
                SeedOp(
                    kind="attach",
                    slot=seed.slot,
                    seed_id=seed.seed_id,
                    stage=Stage.TRAINING,
                    handle=seed.prepared.handle,
                    blueprint_id=seed.blueprint_id,
                    artifact_sha256=seed.prepared.artifact_sha256,
                    blend=seed.blend,
                    reason="germinate",
                )
            )
        return BoundaryPlan(
            run_id=self._run_id,
            decided_on_step=draft.step,
            effect_step=draft.step + self._lag,
            ops=tuple(ops),
            command_results=tuple(draft.results),
        )

    # ------------------------------------------------------------ helpers

    def _cull(self, slot: str, reason: str) -> None:
        try:
            self._lifecycle.cull(slot, reason)
        except IllegalTransition as err:
            self._desk.illegal(err)

    def _seed_state(self, rec: SlotRecord) -> SeedState:
        seed = self._seeds.get(rec.seed_id) if rec.seed_id is not None else None
        epoch = self._reported_epoch if self._reported_epoch is not None else 0
        evidence = self._lifecycle.evidence(rec.slot)
        return seed_state(rec, seed, evidence, depth=self._depth[rec.slot], step=self._last_step, epoch=epoch)

    def _event(self, name: str, level: TelemetryLevel, description: str, **attributes: str | int | float) -> None:
        emit_event(self._sink, name, level, description, **attributes)
