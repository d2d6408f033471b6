"""One training step of the host on a batch. Lane-thread only.

Forward, backward, the finite check, the optimizer step (or its skip, which puts the model's buffers back as they were;
with a rate schedule or clipping configured, step_tuning.py does the check and the step), the alpha advance and the
step's timings.

The forward is the model itself (eager, no autocast: the common case, called directly), or goes through autocast or
``torch.compile``; a compiled forward that fails at run time falls back to eager for the rest of the run.

A compiled forward is compiled anew, with torch's compile caches reset, on every ``bind`` and whenever a slot's mode,
seed or blend spec has changed since the last step: dynamo (torch 2.13) guards the mode of only some slots of a host
whose blocks share one class, so a graph traced before a lifecycle change of another slot would silently be reused.
The reset is global to the process (a compiled Tamiyo policy in thread mode recompiles on its next call too);
lifecycle changes are rare, and each one recompiled the host anyway.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, final

import structlog
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _NormBase

from actors.tolaria.emergencies import Action
from actors.tolaria.epoch_end import FiniteCheck, check_output
from esper.nn.data_batches import to_device
from esper.nn.slots import SlotMode

if TYPE_CHECKING:
    from collections.abc import Callable

    from actors.tolaria.build import Trainee
    from actors.tolaria.emergencies import EmergencyPolicy
    from actors.tolaria.step_tuning import StepTuner
    from actors.tolaria.telemetry import IntervalStats
    from esper.nn.data import TensorPair

_log = structlog.get_logger("actors.tolaria")
_BLENDING = SlotMode.BLENDING
# The buffers a torch norm layer updates in a training-mode forward.
_NORM_STATISTICS = frozenset({"running_mean", "running_var", "num_batches_tracked"})


@final
class Stepper:
    """Runs steps on whatever model ``bind`` was last given (the loop rebinds after every build or restore).

    Args:
        compile: wrap the model with ``torch.compile`` (eager when that fails, at once or at run time).
        batch_hook: a test hook applied to each batch, given the monotonic attempt count (survives rebinding, so a
            rollback does not replay the hook's attempts).
        policy: told of every non-finite step.
    """

    def __init__(
        self,
        *,
        compile: bool,
        batch_hook: Callable[[int, TensorPair], TensorPair] | None,
        policy: EmergencyPolicy,
    ) -> None:
        self._compile = compile
        self._hook = batch_hook
        self._policy = policy
        self._attempts = 0
        self._trainee: Trainee | None = None
        self._buffers: BufferGuard | None = None
        self._finite: FiniteCheck | None = None
        # The schedule and clipping (None with the defaults: the step then runs the plain check and step, no more).
        self._tuner: StepTuner | None = None
        self._forward: Callable[[torch.Tensor], torch.Tensor] | None = None
        self._compiled = False
        # What the compiled forward was traced against: each slot's seed module, mode and blend spec.
        self._traced: tuple[object, ...] = ()
        # Eager, no autocast: the step calls the model itself instead of going through _run_forward.
        self._direct_forward = False
        # The training data lives elsewhere than the model: every batch is moved (else batches are used as given).
        self._move_batches = True
        self._classes = 0

    def bind(self, trainee: Trainee, train: TensorPair, tuner: StepTuner | None = None, *, classes: int) -> None:
        """Step ``trainee`` from now on; ``train`` tells whether its batches must be moved to its device; ``tuner``
        schedules the rate and clips the gradients (None: neither); ``classes``: the data set's, the width of the
        class scores every forward must return."""
        self._trainee = trainee
        self._classes = classes
        self._tuner = tuner
        self._buffers = BufferGuard(trainee)
        self._finite = FiniteCheck(trainee.device)
        self._forward = trainee.model
        self._compiled = False
        self._move_batches = train.x.device != trainee.device or train.y.device != trainee.device
        self._direct_forward = trainee.autocast_dtype is None and not self._compile
        if self._compile:
            # A rebuilt or restored model must not meet graphs traced for the one before it (the same guards apply).
            torch.compiler.reset()
            self._compile_model()

    def _compile_model(self) -> None:
        trainee = self._trainee
        assert trainee is not None
        self._traced = _slot_signature(trainee)
        try:
            self._forward = torch.compile(trainee.model)
            self._compiled = True
        except Exception as err:  # noqa: BLE001  # fallback to eager is the documented behaviour
            self._compile_fallback(err)

    def lr_factor(self, global_step: int) -> float:
        """The rate schedule's factor on the step of index ``global_step`` (1 without a schedule)."""
        tuner = self._tuner
        return 1.0 if tuner is None or tuner.schedule is None else tuner.schedule.factor(global_step)

    def step(self, batch: TensorPair, t0: float, stats: IntervalStats, global_step: int) -> Action:
        """Train on ``batch`` (fetched from ``t0`` on); its loss, logits and timings go into ``stats``."""
        # The hot path: every line here runs once per step against caches the forward and backward just
        # flushed, so it does only what a step needs (see BENCHMARKS.md, Tolaria).
        trainee = self._trainee
        check = self._finite
        buffers = self._buffers
        assert trainee is not None
        assert check is not None
        assert buffers is not None
        hook = self._hook
        if hook is not None:
            batch = hook(self._attempts, batch)
        self._attempts += 1
        t1 = time.perf_counter()
        if hook is not None or self._move_batches:
            batch = to_device(batch, trainee.device)
        x, y = batch.x, batch.y
        if trainee.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        t2 = time.perf_counter()
        optimizer = trainee.optimizer
        optimizer.zero_grad(set_to_none=True)
        buffers.keep()
        out = trainee.model(x) if self._direct_forward else self._run_forward(x)
        check_output(trainee.model, out, y.shape[0], self._classes, global_step)
        loss = F.cross_entropy(out.float(), y)
        t3 = time.perf_counter()
        loss.backward()  # type: ignore[no-untyped-call]  # torch leaves Tensor.backward unannotated
        t4 = time.perf_counter()
        loss = loss.detach()
        tuner = self._tuner
        if tuner is None:
            stepped = check(loss, optimizer)
            if stepped:
                optimizer.step()
        else:
            stepped = tuner.step(loss, optimizer, global_step, check)
        if stepped:
            for slot in trainee.slots.values():
                if slot.mode is _BLENDING:
                    slot.advance_alpha()
            action = Action.CONTINUE
            # Kept as device tensors; reduced every few steps and read only when a packet is built.
            stats.add(loss, out.detach(), y, y.shape[0])
        else:
            optimizer.zero_grad(set_to_none=True)
            buffers.put_back()
            _log.warning("nonfinite_step_skipped", step=global_step)
            action = self._policy.nonfinite_step(global_step)
        t5 = time.perf_counter()
        stats.data_wait_s += t1 - t0
        stats.host_to_device_s += t2 - t1
        stats.forward_s += t3 - t2
        stats.backward_s += t4 - t3
        stats.optimizer_s += t5 - t4
        stats.step_s += t5 - t0
        stats.timed_steps += 1
        stats.timed_samples += y.shape[0]
        return action

    def _run_forward(self, x: torch.Tensor) -> torch.Tensor:
        forward = self._forward
        trainee = self._trainee
        assert forward is not None
        assert trainee is not None
        if self._compiled:
            if not _same_signature(_slot_signature(trainee), self._traced):
                torch.compiler.reset()
                self._compile_model()
                return self._run_forward(x)
            frames = _compiled_frames()
            t0 = time.perf_counter()
        dtype = trainee.autocast_dtype
        try:
            if dtype is None:
                out = forward(x)
            else:
                with torch.autocast(device_type=trainee.device.type, dtype=dtype):
                    out = forward(x)
        except Exception as err:
            if not self._compiled:
                raise
            self._compile_fallback(err)
            return self._run_forward(x)
        if self._compiled and _compiled_frames() != frames:
            # The forward that compiled (or recompiled) a graph: its wall time is mostly the compile.
            _log.info(
                "tolaria.compiled", seconds=round(time.perf_counter() - t0, 3), compiled_frames=_compiled_frames()
            )
        return out

    def _compile_fallback(self, err: Exception) -> None:
        trainee = self._trainee
        assert trainee is not None
        _log.warning("tolaria.compile_runtime_fallback", error=_first_line(err), detail="eager from now")
        self._forward = trainee.model
        self._compiled = False
        self._direct_forward = trainee.autocast_dtype is None


def _slot_signature(trainee: Trainee) -> tuple[object, ...]:
    # The objects themselves, not their ids: a culled seed's freed address can be reused by the next one's module.
    return tuple(item for slot in trainee.slots.values() for item in (slot.seed_module, slot.mode, slot.blend_spec))


def _same_signature(a: tuple[object, ...], b: tuple[object, ...]) -> bool:
    return len(a) == len(b) and all(x is y for x, y in zip(a, b, strict=True))


def _compiled_frames() -> int:
    """How many frames dynamo has compiled in this process (its reset leaves the count)."""
    # Imported here: dynamo takes about a second to import, which an eager run (the default) never needs.
    import torch._dynamo.utils

    return torch._dynamo.utils.counters["frames"]["ok"]


def _first_line(err: Exception) -> str:
    """The error's type and first line (torch appends paragraphs of debugging advice); a missing C++ compiler gets the
    remedy."""
    lines = str(err).strip().splitlines()
    text = f"{type(err).__name__}: {lines[0] if lines else ''}"
    if "InvalidCxxCompiler" in text or any(type(e).__name__ == "InvalidCxxCompiler" for e in _chain(err)):
        text += " (install g++ or set CXX)"
    return text


def _chain(err: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = err
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


@final
class BufferGuard:
    """The model's persistent buffers as they were before the step's forward, put back when the step is skipped.

    A training-mode forward updates buffers in place (BatchNorm's running statistics and batch count): a skipped
    non-finite step left NaN running statistics behind, and every later evaluation was NaN. The copy runs every step,
    so it is made cheap: the running statistics of torch's own norm layers are moved into one flat tensor per dtype
    (each buffer a view of it, updated in place by the layer as before), and a step copies those whole, one ``copy_``
    per dtype (a fused copy of the default host's nine separate buffers cost the step about 1.5 %). Other persistent
    buffers (a user module's) are copied one by one: a module may hold its own reference to them, so they are never
    moved. Nothing is copied for a model without buffers. The layout follows the slots' seed modules (a graft can bring
    norm layers of its own).
    """

    __slots__ = ("_copies", "_flats", "_signature", "_sources", "_trainee")

    def __init__(self, trainee: Trainee) -> None:
        self._trainee = trainee
        self._signature: tuple[int, ...] = ()
        self._flats: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._sources: list[torch.Tensor] = []
        self._copies: list[torch.Tensor] = []
        self._refresh()

    def keep(self) -> None:
        """Copy the buffers as they are now (before the forward)."""
        signature = tuple(id(slot.seed_module) for slot in self._trainee.slots.values())
        if signature != self._signature:
            self._refresh()
        for flat, copy in self._flats:
            copy.copy_(flat)
        if self._sources:
            with torch.no_grad():
                torch._foreach_copy_(self._copies, self._sources)

    def put_back(self) -> None:
        """Restore the buffers ``keep`` copied (the step that ran the forward is skipped)."""
        for flat, copy in self._flats:
            flat.copy_(copy)
        if self._sources:
            with torch.no_grad():
                torch._foreach_copy_(self._sources, self._copies)

    def _refresh(self) -> None:
        model = self._trainee.model
        self._signature = tuple(id(slot.seed_module) for slot in self._trainee.slots.values())
        by_dtype: dict[tuple[torch.dtype, torch.device], list[tuple[nn.Module, str, torch.Tensor]]] = {}
        self._sources = []
        for module in model.modules():
            own = isinstance(module, _NormBase)
            for name, buffer in module._buffers.items():
                if buffer is None or name in module._non_persistent_buffers_set:
                    continue
                if own and name in _NORM_STATISTICS and not buffer.requires_grad:
                    by_dtype.setdefault((buffer.dtype, buffer.device), []).append((module, name, buffer))
                else:
                    self._sources.append(buffer)
        self._copies = [buffer.clone() for buffer in self._sources]
        self._flats = []
        for (dtype, device), entries in by_dtype.items():
            flat = torch.empty(sum(b.numel() for _, _, b in entries), dtype=dtype, device=device)
            offset = 0
            for module, name, buffer in entries:
                view = flat[offset : offset + buffer.numel()].view(buffer.shape)
                view.copy_(buffer)
                module._buffers[name] = view
                offset += buffer.numel()
            self._flats.append((flat, flat.clone()))
