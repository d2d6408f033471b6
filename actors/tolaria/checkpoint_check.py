"""What a decoded checkpoint state must look like before anything loads it: types, RNG states, enum values.

A checkpoint whose SHA-256 matches its manifest can still hold a state the loader cannot take (a hand-edited file
re-signed, a bug of an older writer): a Python RNG state that is no tuple, a NumPy RNG kind other than MT19937, an
emergency level past L4, ``expected_plans`` that are no JSON. Loaded, each failed the trainer at its restore, again
at every restart, until the run ended (exit 1); found here, the checkpoint is corrupt like one failing its digest,
and the previous one is used.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Annotated

import msgspec
import numpy as np
import torch

from actors.tolaria.cuda_rng import cuda_rng_problem
from actors.tolaria.isolation_monitor import SavedTotals
from actors.tolaria.telemetry import OpenStats
from esper.nn.slots import SlotMode
from schemas.enums import BreakerState, EmergencyLevel

if TYPE_CHECKING:
    from collections.abc import Mapping

    from actors.tolaria.snapshots import TrainState

__all__ = ["state_problem"]


class _SavedCounters(msgspec.Struct, frozen=True):
    """The counters a capture writes (the emergency policy's and RunCounters.export's), each optional: a checkpoint
    of an older version may lack some. Unknown keys are kept as they are (a newer writer's)."""

    emergency_level: EmergencyLevel | None = None
    emergency_clean_ticks: int | None = None
    failed_epochs: int | None = None
    failed_streak: int | None = None
    skipped_steps: int | None = None
    nonfinite_window: str | None = None
    epoch_breaker_state: BreakerState | None = None
    epoch_breaker_failures: int | None = None
    failed_cause: str | None = None
    rollbacks: int | None = None
    last_val_loss: float | None = None
    expected_plans: str | None = None
    resumed_from: int | None = None
    run_id: str | None = None
    stalls: int | None = None
    stall_ms: float | None = None
    open_stats: str | None = None
    epoch_figures: str | None = None
    halt_reason: str | None = None  # only in the checkpoint an L4 halt wrote
    isolation_violations: str | None = None  # each seed's total (isolation_monitor.COUNTER)
    isolation_last_probe: Annotated[int, msgspec.Meta(ge=0)] | None = None  # isolation_monitor.LAST_PROBE
    isolation_sketch_step: Annotated[int, msgspec.Meta(ge=-1)] | None = None  # isolation_monitor.SKETCH_STEP


_EpochFigures = tuple[float | None, float | None, float | None, float | None]
_SLOT_MODES = frozenset(mode.value for mode in SlotMode)


def state_problem(state: TrainState) -> str | None:
    """What makes ``state`` unloadable, in one line, or None. Checks what needs no model: the position, the
    containers' types, the RNG states (set on throwaway generators), the counters and the paused slots' modes.
    Whether the weights and optimizer groups fit the model is the restore's to find."""
    for name, value in (("global_step", state.global_step), ("epoch", state.epoch), ("batch_index", state.batch_index)):
        if value < 0:
            return f"{name} is {value}"
    if not all(isinstance(key, str) for key in state.model):
        return "model: a state_dict key is not a string"
    groups, saved = state.optimizer.get("groups"), state.optimizer.get("state")
    if not isinstance(groups, list) or not all(isinstance(g, dict) for g in groups) or not isinstance(saved, dict):
        return "optimizer: expected {'groups': [dicts], 'state': {...}}"
    for slot, mode in state.paused.items():
        if not isinstance(slot, str) or mode not in _SLOT_MODES:
            return f"paused: slot {slot!r} in mode {mode!r}"
    return _rng_problem(state.rng) or _counters_problem(state.counters)


def _rng_problem(rng: dict[str, object]) -> str | None:
    python = rng.get("python")
    if not isinstance(python, tuple | list):
        return f"rng.python: expected a tuple, got {type(python).__name__}"
    try:
        random.Random().setstate(tuple(tuple(v) if isinstance(v, list) else v for v in python))
    except (TypeError, ValueError, OverflowError) as err:
        return f"rng.python: {err}"
    numpy = rng.get("numpy")
    if not isinstance(numpy, dict):
        return f"rng.numpy: expected a dict, got {type(numpy).__name__}"
    keys = numpy.get("keys")
    if not isinstance(keys, torch.Tensor) or keys.dtype != torch.int64 or tuple(keys.shape) != (624,):
        return "rng.numpy.keys: expected 624 int64 values"
    try:
        legacy = (numpy["kind"], keys.numpy().astype(np.uint32), numpy["pos"], numpy["has_gauss"], numpy["cached"])
        np.random.RandomState().set_state(legacy)
    except (KeyError, TypeError, ValueError, OverflowError) as err:
        return f"rng.numpy: {type(err).__name__}: {err}"
    torch_state = rng.get("torch")
    if not isinstance(torch_state, torch.Tensor):
        return f"rng.torch: expected a tensor, got {type(torch_state).__name__}"
    try:
        torch.Generator().set_state(torch_state)
    except (RuntimeError, TypeError) as err:
        return f"rng.torch: {err}"
    return cuda_rng_problem(rng.get("cuda"))


def _counters_problem(counters: Mapping[str, object]) -> str | None:
    try:
        typed = msgspec.convert(counters, _SavedCounters)
        if typed.expected_plans is not None:
            msgspec.json.decode(typed.expected_plans, type=list[tuple[int, int]])
        if typed.open_stats is not None:
            msgspec.json.decode(typed.open_stats, type=tuple[OpenStats, OpenStats])
        if typed.epoch_figures is not None:
            msgspec.json.decode(typed.epoch_figures, type=_EpochFigures)
        if typed.isolation_violations is not None:
            msgspec.json.decode(typed.isolation_violations, type=SavedTotals)
        for step in typed.nonfinite_window.split(",") if typed.nonfinite_window else ():
            int(step)
    except (msgspec.ValidationError, msgspec.DecodeError) as err:
        return f"counters: {err}"
    except ValueError as err:
        return f"counters.nonfinite_window: {err}"
    return None
