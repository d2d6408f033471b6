"""Kasmina's handling of one verified AdaptationCommand at a boundary.

Germinate, cull, cancel, fossilize, pause, resume and the optimizer tweak, each accepted (with the step it takes effect)
or refused with a reason and a line.

The desk shares the planner's seed bookkeeping (the lifecycle and the seed, pending and ownership maps, the same
objects) and counts what it accepted and refused; the planner runs it once per boundary, before the transitions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, final

from actors.kasmina.admission import SECURITY_REASONS, blend_problem, blueprint_facts, checked_params, g0_reject_reason
from actors.kasmina.evidence import GerminationRequest
from actors.kasmina.lifecycle_table import SEED_STAGES, IllegalTransition
from actors.kasmina.preparation import PreparationRequest, derive_build_seed
from actors.kasmina.seeds import SeedEntry, isolation_breaker
from schemas.boundary import SeedOp
from schemas.control import LR_DELTA_MAX, LR_DELTA_MIN, AdaptationCommand, CommandResult, germinated_seed_id
from schemas.domain_enums import CommandKind, CommandRejectReason, TelemetryLevel
from schemas.telemetry import TelemetryEvent

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from actors.kasmina.lifecycle import SeedLifecycle
    from esper.nn.blueprints import BlueprintDescriptor, SlotShape
    from esper.runtime.clock import Clock
    from esper.runtime.events import EventSink
    from schemas.config import BreakerConfig


def emit_event(
    sink: EventSink, name: str, level: TelemetryLevel, description: str, **attributes: str | int | float
) -> None:
    """One TelemetryEvent to ``sink``."""
    sink.emit(TelemetryEvent(name=name, level=level, description=description, attributes=dict(attributes)))


@final
class CommandDesk:
    """Applies verified commands to the shared seed bookkeeping; counts accepted, refused and illegal ones."""

    def __init__(
        self,
        *,
        lifecycle: SeedLifecycle,
        shapes: Mapping[str, SlotShape],
        seeds: dict[str, SeedEntry],
        pending: dict[str, SeedEntry],
        owners: Mapping[str, str],
        describe: Callable[[str], BlueprintDescriptor | None],
        approved: frozenset[str],
        lag_steps: int,
        run_seed: int,
        clock: Clock,
        sink: EventSink,
        breaker: BreakerConfig,
    ) -> None:
        self._lifecycle = lifecycle
        self._shapes = shapes
        self._seeds = seeds
        self._pending = pending
        self._owners = owners
        self._describe = describe
        self._approved = approved
        self._lag = lag_steps
        self._run_seed = run_seed
        self._clock = clock
        self._sink = sink
        self._breaker = breaker
        self.accepted = 0
        self.rejected: dict[str, int] = {}
        self.illegal_transitions = 0

    def slot_of(self, seed_id: str) -> str | None:
        """The slot of a live or germinating seed, or None."""
        for rec in self._lifecycle.records():
            if rec.seed_id == seed_id:
                return rec.slot
        pending = [s.slot for s in self._pending.values() if s.seed_id == seed_id]
        return pending[0] if pending else None

    def request(
        self, seed_id: str, slot: str, blueprint_id: str, shape: SlotShape, params: Mapping[str, float]
    ) -> PreparationRequest:
        """What preparing a seed's module takes (its build seed derived from the run's seed and the seed id)."""
        return PreparationRequest(
            seed_id=seed_id,
            slot=slot,
            blueprint_id=blueprint_id,
            slot_shape=shape,
            params=tuple(sorted(params.items())),
            build_seed=derive_build_seed(self._run_seed, seed_id),
        )

    def illegal(self, err: IllegalTransition) -> None:
        """Count and report a transition the lifecycle refused."""
        self.illegal_transitions += 1
        emit_event(
            self._sink,
            "illegal_transition",
            TelemetryLevel.ERROR,
            str(err),
            slot=err.slot,
            from_stage=err.from_stage.name,
            to_stage=err.to_stage.name,
            reason=err.reason,
        )

    def apply(
        self, cmd: AdaptationCommand, security: CommandRejectReason | None, step: int, epoch: int
    ) -> tuple[CommandResult, list[SeedOp]]:
        if security is not None:
            return self._refuse(cmd, security, "failed verification"), []
        kind = cmd.kind
        if kind is CommandKind.OPTIMIZER:
            assert cmd.lr_delta is not None  # the verifier refuses an OPTIMIZER without lr_delta (MISSING_FIELDS)
            # Checked here, not only when a command is decoded: one built in-process (Tamiyo's) never is, and a delta
            # of 50 multiplied the learning rate by 51 (a NaN one was accepted, then refused by the trainer unsaid).
            if not LR_DELTA_MIN <= cmd.lr_delta <= LR_DELTA_MAX:
                bounds = f"lr_delta {cmd.lr_delta} outside [{LR_DELTA_MIN}, {LR_DELTA_MAX}]"
                return self._refuse(cmd, CommandRejectReason.PARAMETER_OUT_OF_BOUNDS, bounds), []
            op = SeedOp(kind="scale_lr", lr_scale=1.0 + cmd.lr_delta, reason=cmd.reason)
            return self._accept(cmd, step), [op]
        if kind is CommandKind.GERMINATE:
            return self._germinate(cmd, step, epoch), []
        return self._seed_verb(cmd, step)

    def _germinate(self, cmd: AdaptationCommand, step: int, epoch: int) -> CommandResult:
        slot, blueprint_id, blend = cmd.target_slot, cmd.blueprint_id, cmd.blend
        # The verifier refuses a GERMINATE without these (MISSING_FIELDS).
        assert slot is not None
        assert blueprint_id is not None
        assert blend is not None
        shape = self._shapes.get(slot)
        if shape is None:
            return self._refuse(cmd, CommandRejectReason.UNKNOWN_SLOT, f"no slot {slot!r}")
        problem = blend_problem(blend, shape)
        if problem is not None:
            return self._refuse(cmd, CommandRejectReason.INVALID_BLEND_CONFIG, problem)
        descriptor = self._describe(blueprint_id)
        params: Mapping[str, float] = cmd.blueprint_params
        if descriptor is not None:
            checked = checked_params(self._describe(blueprint_id), blueprint_id, shape, cmd.blueprint_params)
            if isinstance(checked, str):
                reason = CommandRejectReason.PARAMETER_OUT_OF_BOUNDS
                if not descriptor.fits(shape.kind):
                    reason = CommandRejectReason.UNKNOWN_BLUEPRINT
                return self._refuse(cmd, reason, checked)
            params = checked
        seed_id = cmd.target_seed_id or germinated_seed_id(slot, step)
        request = GerminationRequest(
            seed_id=seed_id,
            blueprint=blueprint_facts(blueprint_id, descriptor, shape, params),
            parameters=dict(params),
            approval_recorded=blueprint_id in self._approved,
            blend_ramp_steps=blend.ramp_steps,
        )
        outcome = self._lifecycle.germinate(slot, request, epoch=epoch)
        if not outcome.passed:
            return self._refuse(cmd, g0_reject_reason(outcome.reason), f"G0: {outcome.reason}", slot=slot)
        self._pending[slot] = SeedEntry(
            seed_id=seed_id,
            slot=slot,
            blueprint_id=blueprint_id,
            blend=blend,
            request=self.request(seed_id, slot, blueprint_id, shape, params),
            breaker=isolation_breaker(seed_id, clock=self._clock, sink=self._sink, config=self._breaker),
            germinated_step=step,
            germinated_epoch=epoch,
        )
        return self._accept(cmd, step, slot=slot, seed_id=seed_id)

    def _seed_verb(self, cmd: AdaptationCommand, step: int) -> tuple[CommandResult, list[SeedOp]]:
        seed_id = cmd.target_seed_id
        assert seed_id is not None  # the verifier refuses a seed verb without target_seed_id (MISSING_FIELDS)
        if cmd.target_slot is not None and cmd.target_slot not in self._shapes:
            return self._refuse(cmd, CommandRejectReason.UNKNOWN_SLOT, f"no slot {cmd.target_slot!r}"), []
        slot = self.slot_of(seed_id)
        if slot is None:
            return self._refuse(cmd, CommandRejectReason.UNKNOWN_SEED, f"no seed {seed_id!r}"), []
        if cmd.target_slot is not None and cmd.target_slot != slot:
            detail = f"seed {seed_id!r} lives in slot {slot!r}, not {cmd.target_slot!r}"
            return self._refuse(cmd, CommandRejectReason.UNKNOWN_SEED, detail, slot=cmd.target_slot), []
        foreign = [n for n, owner in self._owners.items() if owner == seed_id and not n.startswith(f"{slot}.")]
        if foreign:
            detail = f"seed {seed_id!r} owns {foreign[0]!r} outside slot {slot!r}"
            return self._refuse(cmd, CommandRejectReason.UNKNOWN_SEED, detail, slot=slot), []
        kind = cmd.kind
        if kind is CommandKind.CANCEL and slot in self._pending and self._pending[slot].seed_id == seed_id:
            self._lifecycle.cancel_germination(slot)
            del self._pending[slot]
            return self._accept(cmd, step, slot=slot, seed_id=seed_id), []
        try:
            if kind in (CommandKind.CULL, CommandKind.CANCEL):
                self._lifecycle.cull(slot, f"{kind.value}:{cmd.reason}")
                return self._accept(cmd, step, slot=slot, seed_id=seed_id), []
            if kind is CommandKind.FOSSILIZE:
                self._lifecycle.request_fossilize(slot)
                return self._accept(cmd, step, slot=slot, seed_id=seed_id), []
        except IllegalTransition as err:
            self.illegal(err)
            return self._refuse(cmd, CommandRejectReason.ILLEGAL_TRANSITION, str(err), slot=slot), []
        seed = self._seeds.get(seed_id)
        pause = kind is CommandKind.PAUSE
        stage = self._lifecycle.record(slot).stage
        if seed is None or not seed.attach_sent or stage not in SEED_STAGES or seed.paused == pause:
            state = "paused" if seed is not None and seed.paused else "not paused"
            detail = f"cannot {kind.value} seed {seed_id!r} ({stage.name}, {state})"
            return self._refuse(cmd, CommandRejectReason.ILLEGAL_TRANSITION, detail, slot=slot), []
        seed.paused, seed.pause_decided = pause, step
        op = SeedOp(kind="pause" if pause else "resume", slot=slot, seed_id=seed_id, reason=cmd.reason)
        return self._accept(cmd, step, slot=slot, seed_id=seed_id), [op]

    def _accept(
        self, cmd: AdaptationCommand, step: int, *, slot: str | None = None, seed_id: str | None = None
    ) -> CommandResult:
        self.accepted += 1
        return CommandResult(
            command_id=cmd.command_id,
            kind=cmd.kind,
            accepted=True,
            applied_step=step + self._lag,
            target_slot=slot,
            seed_id=seed_id,
        )

    def _refuse(
        self, cmd: AdaptationCommand, reason: CommandRejectReason, detail: str, *, slot: str | None = None
    ) -> CommandResult:
        self.rejected[reason.value] = self.rejected.get(reason.value, 0) + 1
        if reason not in SECURITY_REASONS:
            emit_event(
                self._sink,
                "command_rejected",
                TelemetryLevel.WARNING,
                f"command {cmd.command_id} ({cmd.kind.value}) rejected: {reason.value}: {detail}",
                reason=reason.value,
                command_id=cmd.command_id,
                kind=cmd.kind.value,
            )
        return CommandResult(
            command_id=cmd.command_id,
            kind=cmd.kind,
            accepted=False,
            reason=reason,
            detail=detail,
            target_slot=slot if slot is not None else cmd.target_slot,
            seed_id=cmd.target_seed_id,
        )
