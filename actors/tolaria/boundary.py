"""Applying SeedOps at a step boundary, and the graft log that lets a checkpoint replay them.

The ops: attach, set_stage, fossilize, detach, pause, resume and scale_lr.

Lane-thread only, between steps. Each op either changes the model and optimizer completely or not at all, and after
every structural change ``check_param_groups`` proves that no parameter trains twice and none is left out.
"""

from __future__ import annotations

import copy
import itertools
from typing import TYPE_CHECKING, final

import msgspec
import torch
from torch import nn

from actors.tolaria.cuda_streams import record_use
from esper.nn.blending import AlphaSchedule, BlendSpec
from esper.nn.blending import BlendMode as NnBlendMode
from esper.nn.blending import ScheduleMethod as NnScheduleMethod
from esper.nn.blueprints import build_blueprint, default_catalogue
from esper.nn.optim_migration import (
    GROUP_NAME_KEY,
    add_seed_group,
    check_param_groups,
    find_seed_group,
    fossilize_seed_group,
    remove_seed_group,
)
from esper.nn.slots import SlotMode
from esper.nn.wrap import SLOT_ATTR, slot_path
from schemas.boundary import OpOutcome, SeedOp, SeedOpKind
from schemas.control import BlendConfig
from schemas.domain_enums import ScheduleMethod
from schemas.enums import SeedLifecycleStage

if TYPE_CHECKING:
    from collections.abc import Callable

    from actors.tolaria.build import Trainee
    from esper.nn.blueprints import SlotShape
    from esper.nn.slots import SeedSlot

RECIPE_ATTR = "esper_blueprint_params"
"""A seed module may carry its blueprint parameters under this attribute (a dict of floats) so the graft log can
rebuild it on resume; SeedOp has no field for them yet."""

INCUBATION_LR_KEY = "esper_lr_after_incubation"
"""A seed group in TRAINING under ``tolaria.incubation_lr_scale`` keeps here the rate it returns to when it leaves
TRAINING (saved with the optimizer state like any group key)."""

_STAGE_MODES: dict[SeedLifecycleStage, SlotMode] = {
    SeedLifecycleStage.TRAINING: SlotMode.TRAINING,
    SeedLifecycleStage.BLENDING: SlotMode.BLENDING,
    SeedLifecycleStage.SHADOWING: SlotMode.FULL,
    SeedLifecycleStage.PROBATIONARY: SlotMode.FULL,
    SeedLifecycleStage.FOSSILIZED: SlotMode.FOSSILIZED,
}

_SCHEDULES: dict[ScheduleMethod, NnScheduleMethod] = {
    ScheduleMethod.TANH: NnScheduleMethod.SIGMOID,
    ScheduleMethod.LINEAR: NnScheduleMethod.LINEAR,
    ScheduleMethod.COSINE: NnScheduleMethod.COSINE,
    ScheduleMethod.WARMUP_HOLD: NnScheduleMethod.LINEAR,
}


class GraftEvent(msgspec.Struct, frozen=True, kw_only=True):
    """One applied SeedOp as the graft log records it: enough to replay it on a freshly built host."""

    step: int
    kind: SeedOpKind
    slot: str | None = None
    seed_id: str | None = None
    stage: SeedLifecycleStage | None = None
    blueprint_id: str | None = None
    artifact_sha256: str | None = None
    blueprint_params: dict[str, float] = msgspec.field(default_factory=dict)
    parameter_names: tuple[str, ...] = ()
    param_group: str | None = None
    learning_rate: float | None = None
    lr_scale: float | None = None
    blend: BlendConfig | None = None

    def as_op(self) -> SeedOp:
        """The SeedOp that replays this event (attach takes its module from a rebuilder, not the handoff)."""
        return SeedOp(
            kind=self.kind,
            slot=self.slot,
            seed_id=self.seed_id,
            stage=self.stage,
            blueprint_id=self.blueprint_id,
            artifact_sha256=self.artifact_sha256,
            blend=self.blend,
            learning_rate=self.learning_rate,
            lr_scale=self.lr_scale,
            reason="replay",
        )


class OpRefused(Exception):  # internal control flow: becomes an OpOutcome error, never escapes
    """An op that cannot be applied; its message becomes the outcome's error. ``level``: refused for the emergency
    level, not because the op failed."""

    def __init__(self, message: str, *, level: bool = False) -> None:
        super().__init__(message)
        self.level = level


def blend_spec(blend: BlendConfig | None) -> tuple[BlendSpec, AlphaSchedule]:
    """The esper.nn blend spec and alpha schedule for a BlendConfig (defaults when None)."""
    if blend is None:
        return BlendSpec(), AlphaSchedule()
    spec = BlendSpec(
        mode=NnBlendMode(blend.mode.value),
        channel_weights=tuple(blend.channel_alpha or ()),
        confidence_k=blend.confidence_k,
        confidence_tau=blend.confidence_tau,
        alpha_lo=blend.alpha_lo,
        alpha_hi=blend.alpha_hi,
    )
    end = blend.window_end if blend.window_end > blend.window_start else 1.0
    start = blend.window_start if blend.window_start < end else 0.0
    # The configured temperature is relative to the ramp's length: the ramp's width scales with ramp_steps.
    schedule = AlphaSchedule.for_ramp(_SCHEDULES[blend.schedule], blend.ramp_steps, blend.temperature, start, end)
    return spec, schedule


def rebuild_seed(op: SeedOp, params: dict[str, float], shape: SlotShape | None, *, seed: int = 0) -> nn.Module:
    """Rebuild a seed module from its blueprint for a replayed attach (weights are loaded afterwards), or build an
    initial seed (``seed`` fixes its initial weights).

    Raises:
        ValueError: the blueprint is unknown or does not fit the slot.
    """
    if op.blueprint_id is None or shape is None:
        raise ValueError(f"cannot rebuild seed {op.seed_id!r}: no blueprint id or slot shape recorded")
    catalogue = default_catalogue()
    descriptor = next((d for d in catalogue if d.blueprint_id == op.blueprint_id), None)
    if descriptor is None:
        raise ValueError(f"cannot rebuild seed {op.seed_id!r}: blueprint {op.blueprint_id!r} is not in the catalogue")
    return build_blueprint(descriptor, shape, params, seed=seed, fill_defaults=True)


@final
class BoundaryApplier:
    """Applies SeedOps to a Trainee and keeps the graft log. Lane-thread only.

    ``log`` None starts the graft log with the trainee's initial grafts (``tolaria.initial_seeds``).
    """

    def __init__(self, trainee: Trainee, log: list[GraftEvent] | None = None) -> None:
        self.trainee = trainee
        self.log: list[GraftEvent] = list(trainee.initial_grafts if log is None else log)

    def apply(
        self,
        op: SeedOp,
        *,
        step: int,
        take_module: Callable[[SeedOp], nn.Module],
        conservative: bool = False,
        blueprint_params: dict[str, float] | None = None,
    ) -> OpOutcome:
        """Apply one op at ``step``; a refused op changes nothing and names why in the outcome.

        Args:
            take_module: gives the prepared module of an attach (the handoff store, or a rebuilder on replay).
            conservative: L2 or above: attach is refused (no new grafts).
            blueprint_params: the recipe to record for an attach when the module carries none (replay).
        """
        try:
            event = self._apply(op, step, take_module, conservative, blueprint_params)
        except OpRefused as err:
            return OpOutcome(
                kind=op.kind, slot=op.slot, seed_id=op.seed_id, applied=False, error=str(err), level_refused=err.level
            )
        self.log.append(event)
        return OpOutcome(kind=op.kind, slot=op.slot, seed_id=event.seed_id, applied=True)

    def _slot(self, op: SeedOp) -> tuple[str, SeedSlot]:
        if op.slot is None:
            raise OpRefused(f"{op.kind}: no slot named")
        name = op.slot
        if name.endswith(SLOT_ATTR):
            name = name.removesuffix(SLOT_ATTR).removesuffix(".")
        slot = self.trainee.slots.get(name)
        if slot is None:
            raise OpRefused(f"{op.kind}: no slot after {op.slot!r} (slots: {', '.join(self.trainee.slots)})")
        return name, slot

    def _apply(
        self,
        op: SeedOp,
        step: int,
        take_module: Callable[[SeedOp], nn.Module],
        conservative: bool,
        recipe: dict[str, float] | None,
    ) -> GraftEvent:
        trainee = self.trainee
        optimizer = trainee.optimizer
        if op.kind == "scale_lr":
            if op.lr_scale is None or not op.lr_scale > 0:
                raise OpRefused(f"scale_lr: lr_scale must be > 0, got {op.lr_scale}")
            for group in optimizer.param_groups:
                group["lr"] = group["lr"] * op.lr_scale
                if INCUBATION_LR_KEY in group:
                    group[INCUBATION_LR_KEY] = _number(group[INCUBATION_LR_KEY]) * op.lr_scale
            return GraftEvent(step=step, kind="scale_lr", lr_scale=op.lr_scale)
        name, slot = self._slot(op)
        if op.kind == "attach":
            return self._attach(op, step, name, slot, take_module, conservative, recipe)
        seed_id = slot.seed_id
        if slot.seed_module is None or seed_id is None:
            raise OpRefused(f"{op.kind}: slot after {name!r} holds no seed")
        if op.seed_id is not None and op.seed_id != seed_id:
            raise OpRefused(f"{op.kind}: slot after {name!r} holds seed {seed_id!r}, not {op.seed_id!r}")
        if op.kind == "pause":
            if name in trainee.paused:
                raise OpRefused(f"pause: seed {seed_id!r} is already paused")
            trainee.paused[name] = slot.mode.value
            slot.mode = SlotMode.DORMANT  # the identity path; the seed stays attached and gets no gradient
            return GraftEvent(step=step, kind="pause", slot=name, seed_id=seed_id)
        if op.kind == "resume":
            mode = trainee.paused.pop(name, None)
            if mode is None:
                raise OpRefused(f"resume: seed {seed_id!r} is not paused")
            slot.mode = SlotMode(mode)
            return GraftEvent(step=step, kind="resume", slot=name, seed_id=seed_id)
        if op.kind == "detach" and name in trainee.paused:
            # A cull takes a paused seed out as well (refusing it left the culled module in the model for good).
            slot.mode = SlotMode(trainee.paused.pop(name))
        if name in trainee.paused:
            raise OpRefused(f"{op.kind}: seed {seed_id!r} is paused; resume it first")
        if op.kind == "set_stage":
            if op.stage is None or op.stage not in _STAGE_MODES:
                raise OpRefused(f"set_stage: stage {op.stage!r} has no slot mode")
            if op.stage is SeedLifecycleStage.FOSSILIZED:
                return self._fossilize(step, name, slot, seed_id)
            try:
                slot.set_mode(_STAGE_MODES[op.stage])
            except ValueError as err:
                raise OpRefused(f"set_stage: {err}") from err
            self._incubation_rate(seed_id, incubating=slot.mode is SlotMode.TRAINING)
            return GraftEvent(step=step, kind="set_stage", slot=name, seed_id=seed_id, stage=op.stage)
        if op.kind == "fossilize":
            return self._fossilize(step, name, slot, seed_id)
        if op.kind == "detach":
            if slot.mode is SlotMode.FOSSILIZED:
                raise OpRefused(f"detach: seed {seed_id!r} is fossilized (part of the host)")
            remove_seed_group(optimizer, seed_id)
            slot.detach()
            check_param_groups(optimizer, trainee.model.named_parameters())
            return GraftEvent(step=step, kind="detach", slot=name, seed_id=seed_id)
        raise OpRefused(f"unknown op kind {op.kind!r}")

    def _attach(
        self,
        op: SeedOp,
        step: int,
        name: str,
        slot: SeedSlot,
        take_module: Callable[[SeedOp], nn.Module],
        conservative: bool,
        recipe: dict[str, float] | None,
    ) -> GraftEvent:
        trainee = self.trainee
        if conservative:
            raise OpRefused("attach: conservative mode (emergency level L2 or above) allows no new grafts", level=True)
        if op.seed_id is None:
            raise OpRefused("attach: no seed_id")
        if slot.seed_module is not None:
            raise OpRefused(f"attach: slot after {name!r} already holds seed {slot.seed_id!r}")
        stage = op.stage or SeedLifecycleStage.TRAINING
        mode = _STAGE_MODES.get(stage)
        if mode is None:
            raise OpRefused(f"attach: stage {stage.name} has no slot mode")
        try:
            module = take_module(op)
        except (KeyError, ValueError) as err:
            raise OpRefused(f"attach: {err}") from err
        if not isinstance(module, nn.Module):
            raise OpRefused(f"attach: handle {op.handle!r} holds a {type(module).__name__}, not an nn.Module")
        params_attr = getattr(module, RECIPE_ATTR, None)
        params = dict(params_attr) if isinstance(params_attr, dict) else dict(recipe or {})
        # A prepared module was allocated on the io lane's stream, and the allocator knows only that one: freed after a
        # cull (or a copy to channels_last, or a restore's rebuild), its memory could go back to the io stream while
        # the train stream's queued kernels (the last optimizer update) still write it. Marked here, before the train
        # stream first touches it, the memory waits for them.
        record_use(itertools.chain(module.parameters(), module.buffers()), trainee.device)
        module.to(device=trainee.device)
        if trainee.channels_last and trainee.slot_shapes.get(name) is not None:
            module.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # Module.to accepts it
        spec, schedule = blend_spec(op.blend)
        fossilized = mode is SlotMode.FOSSILIZED
        slot.attach(
            module, SlotMode.TRAINING if fossilized else mode, seed_id=op.seed_id, blend_spec=spec, schedule=schedule
        )
        prefix = slot_path(name) + ".seed."
        named = [(prefix + n, p) for n, p in module.named_parameters()]
        host = self._host_group()
        lr = op.learning_rate if op.learning_rate is not None else _number(host["lr"]) * trainee.seed_lr_scale
        try:
            add_seed_group(
                trainee.optimizer,
                op.seed_id,
                [p for _, p in named],
                lr=lr,
                names=[n for n, _ in named],
                weight_decay=_number(host.get("weight_decay", 0.0)),
            )
        except ValueError as err:
            slot.detach()
            raise OpRefused(f"attach: {err}") from err
        self._incubation_rate(op.seed_id, incubating=slot.mode is SlotMode.TRAINING)
        event = GraftEvent(
            step=step,
            kind="attach",
            slot=name,
            seed_id=op.seed_id,
            stage=stage,
            blueprint_id=op.blueprint_id,
            artifact_sha256=op.artifact_sha256,
            blueprint_params=params,
            parameter_names=tuple(n for n, _ in named),
            param_group=f"seed:{op.seed_id}",
            learning_rate=lr,
            blend=op.blend,
        )
        if fossilized:
            self._fossilize(step, name, slot, op.seed_id)
        check_param_groups(trainee.optimizer, trainee.model.named_parameters())
        return event

    def _fossilize(self, step: int, name: str, slot: SeedSlot, seed_id: str) -> GraftEvent:
        optimizer = self.trainee.optimizer
        try:
            slot.set_mode(SlotMode.FOSSILIZED)
        except ValueError as err:
            raise OpRefused(f"fossilize: {err}") from err
        host_index = next(
            i for i, g in enumerate(optimizer.param_groups) if not str(g.get(GROUP_NAME_KEY, "")).startswith("seed:")
        )
        fossilize_seed_group(optimizer, seed_id, host_index)
        check_param_groups(optimizer, self.trainee.model.named_parameters())
        return GraftEvent(step=step, kind="fossilize", slot=name, seed_id=seed_id, stage=SeedLifecycleStage.FOSSILIZED)

    def _incubation_rate(self, seed_id: str, *, incubating: bool) -> None:
        """Scale a seed group's rate on entering TRAINING and restore it on leaving (no-op at scale 1)."""
        scale = self.trainee.incubation_lr_scale
        index = find_seed_group(self.trainee.optimizer, seed_id)
        if index is None:
            return
        group = self.trainee.optimizer.param_groups[index]
        if incubating and scale != 1.0 and INCUBATION_LR_KEY not in group:
            group[INCUBATION_LR_KEY] = group["lr"]
            group["lr"] = _number(group["lr"]) * scale
        elif not incubating and INCUBATION_LR_KEY in group:
            group["lr"] = group.pop(INCUBATION_LR_KEY)

    def _host_group(self) -> dict[str, object]:
        for group in self.trainee.optimizer.param_groups:
            if not str(group.get(GROUP_NAME_KEY, "")).startswith("seed:"):
                return group
        raise RuntimeError("the optimizer has no host group")


def _number(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"expected a number in the optimizer group, got {value!r}")
    return float(value)


def replay(applier: BoundaryApplier, events: list[GraftEvent], modules: dict[str, nn.Module] | None = None) -> None:
    """Re-apply a graft log to a freshly built trainee, in order.

    Attach takes a deep copy of the seed module in ``modules`` (the templates a fast snapshot keeps, by seed id, which
    stay detached so the snapshot can be restored again) or rebuilds it from its blueprint and recorded parameters;
    weights are loaded afterwards by the caller.

    Raises:
        ValueError: an event cannot be replayed (it names the event).
    """
    shapes = applier.trainee.slot_shapes
    initial = {e.seed_id for e in applier.trainee.initial_grafts}
    for event in events:
        if event.kind == "attach" and event.seed_id in initial:
            continue  # built with the trainee from the config (tolaria.initial_seeds) and already in the log
        op = event.as_op()

        def source(op: SeedOp, event: GraftEvent = event) -> nn.Module:
            if modules is not None and op.seed_id in modules:
                return copy.deepcopy(modules[op.seed_id])
            return rebuild_seed(op, dict(event.blueprint_params), shapes.get(event.slot or ""))

        outcome = applier.apply(op, step=event.step, take_module=source, blueprint_params=dict(event.blueprint_params))
        if not outcome.applied:
            raise ValueError(f"graft log replay: {event.kind} at step {event.step} failed: {outcome.error}")
        # apply() appended a fresh copy; keep the original event (its recipe and step) instead.
        applier.log[-1] = event
