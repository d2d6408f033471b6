"""Training state as both rollback tiers keep it, and the fast tier: an in-memory snapshot under a memory cap.

A TrainState is everything the next step depends on: model weights with the slots' control state, optimizer state
keyed by stable parameter names, every RNG, the data position, the graft log and Tolaria's own counters. Weights
without lifecycle state are incoherent, so both are captured together. Lane-thread only.
"""

from __future__ import annotations

import copy
import random
import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, final

import numpy as np
import torch
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

from actors.tolaria.build import PARAM_NAMES_KEY
from actors.tolaria.cuda_rng import cuda_rng_state, set_cuda_rng_state
from esper.nn.wrap import slot_path

if TYPE_CHECKING:
    from torch import nn

    from actors.tolaria.boundary import GraftEvent
    from actors.tolaria.build import Trainee
    from actors.tolaria.capture_plan import PlannedCapture
    from actors.tolaria.capture_pool import CapturePool

Counters = dict[str, float | int | str | None]


@final
@dataclass(slots=True)
class TrainState:
    """A consistent cut of training between two steps. Tensors are private copies (CPU or the model's device)."""

    global_step: int
    epoch: int
    batch_index: int
    model: dict[str, object]
    optimizer: dict[str, object]
    rng: dict[str, object]
    graft_log: list[GraftEvent]
    paused: dict[str, str]
    counters: Counters
    seed_modules: dict[str, nn.Module] = field(default_factory=dict)
    nbytes: int = 0
    # Keeps a CapturePool's buffers (which the tensors above view) out of reuse while this state lives.
    lease: object = None


def _clone(value: object) -> object:
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, dict):
        return {k: _clone(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clone(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_clone(v) for v in value)
    return value


_LEAVES = frozenset({str, int, float, bool, type(None)})
# Groups smaller than this are cloned tensor by tensor (without a pool): a cat and its views cost more than a few
# clones.
_FLATTEN_MIN = 8
_Slot = tuple[dict[object, object] | list[object], object, torch.Tensor]


@final
class _Copier:
    """Copies nested dicts and lists of tensors into a few flat buffers, one per (dtype, device).

    ``tree`` returns the containers with placeholders and records where each tensor goes; ``finish`` copies each
    group into one buffer and puts views of it in place. A snapshot then costs a few allocations (none with a
    ``CapturePool`` whose layout still fits) instead of one per tensor, and a checkpoint file holds a few flat tensors
    instead of dozens (less work on the checkpoint writer thread). Tensors inside tuples (none in the default state)
    are cloned on their own.
    """

    __slots__ = ("_groups", "nbytes")

    def __init__(self) -> None:
        self.nbytes = 0
        # (dtype, device) -> [(container, key, source)]; sources are the live tensors themselves (their identity
        # is what lets a pool reuse a layout).
        self._groups: dict[tuple[torch.dtype, torch.device], list[_Slot]] = {}

    def tree(self, value: object) -> object:
        if type(value) in _LEAVES:
            return value
        if isinstance(value, torch.Tensor):
            self.nbytes += value.numel() * value.element_size()
            return value.detach().clone()
        if isinstance(value, dict):
            out: dict[object, object] = {}
            for k, v in value.items():
                if isinstance(v, torch.Tensor):
                    self._defer(out, k, v)
                else:
                    out[k] = self.tree(v)
            return out
        if isinstance(value, list):
            items: list[object] = []
            for i, v in enumerate(value):
                items.append(None)
                if isinstance(v, torch.Tensor):
                    self._defer(items, i, v)
                else:
                    items[i] = self.tree(v)
            return items
        if isinstance(value, tuple):
            return tuple(self.tree(v) for v in value)
        return value

    def put(self, container: dict[str, object], key: str, value: object) -> None:
        """``container[key]`` = a copy of ``value`` (tensors deferred to ``finish``)."""
        if isinstance(value, torch.Tensor):
            self._defer(container, key, value)  # type: ignore[arg-type]  # str keys are object keys here
        else:
            container[key] = self.tree(value)

    def _defer(self, container: dict[object, object] | list[object], key: object, tensor: torch.Tensor) -> None:
        self.nbytes += tensor.numel() * tensor.element_size()
        if isinstance(container, dict):
            container[key] = None
        self._groups.setdefault((tensor.dtype, tensor.device), []).append((container, key, tensor))

    def reserve(self, pool: CapturePool) -> int:
        """Let ``pool`` allocate buffer sets for the deferred tensors' layout; the copier is spent afterwards."""
        added = pool.reserve(self._groups)
        self._groups.clear()
        return added

    def finish(self, pool: CapturePool | None = None) -> object:
        """Copy every deferred tensor into its group's buffer and put the views into their containers.

        With a ``pool``, returns the lease the captured state must hold (its buffers are reused once it is gone).
        """
        if pool is not None:
            views, lease = pool.views_for(self._groups)
            with torch.no_grad():
                for entries, targets in zip(self._groups.values(), views, strict=True):
                    torch._foreach_copy_(targets, [source for _, _, source in entries])
                    for (container, key, _), view in zip(entries, targets, strict=True):
                        _place(container, key, view)
            self._groups.clear()
            return lease
        for entries in self._groups.values():
            if len(entries) < _FLATTEN_MIN:
                for container, key, source in entries:
                    _place(container, key, source.detach().clone())
                continue
            sources = [source.detach() for _, _, source in entries]
            # One cat into a fresh buffer and views back into it, both single C++ calls (what DDP's bucketing uses).
            flat = _flatten_dense_tensors(sources)  # type: ignore[no-untyped-call]  # torch leaves it unannotated
            views = _unflatten_dense_tensors(flat, sources)  # type: ignore[no-untyped-call]  # as above
            for (container, key, _), view in zip(entries, views, strict=True):
                _place(container, key, view)
        self._groups.clear()
        return None


def _place(container: dict[object, object] | list[object], key: object, value: torch.Tensor) -> None:
    if isinstance(container, list):
        assert isinstance(key, int)
        container[key] = value
    else:
        container[key] = value


def optimizer_state_by_name(optimizer: torch.optim.Optimizer) -> dict[str, object]:
    """The optimizer's state keyed by qualified parameter name (not position) plus each group's hyperparameters."""
    copier = _Copier()
    state = _optimizer_state_by_name(optimizer, copier)
    copier.finish()
    return state


def _optimizer_state_by_name(optimizer: torch.optim.Optimizer, copier: _Copier) -> dict[str, object]:
    if optimizer._optimizer_state_dict_pre_hooks or optimizer._optimizer_state_dict_post_hooks:
        return _optimizer_state_via_state_dict(optimizer, copier)
    # Read the groups and per-parameter state directly: what Optimizer.state_dict() would return without hooks (the
    # same state dicts, keyed here by name), minus its id bookkeeping, which dominated a snapshot's cost.
    groups: list[dict[str, object]] = []
    state: dict[str, object] = {}
    per_param = optimizer.state
    for group in optimizer.param_groups:
        names = group.get(PARAM_NAMES_KEY)
        params = group["params"]
        if not isinstance(names, list) or len(names) != len(params):
            raise ValueError("every optimizer group must carry param_names to be checkpointed by name")
        groups.append(
            {k: list(v) if k == PARAM_NAMES_KEY else copier.tree(v) for k, v in group.items() if k != "params"}
        )
        for p, name in zip(params, names, strict=True):
            saved = per_param.get(p)
            if saved:
                state[name] = copier.tree(saved)
    return {"groups": groups, "state": state}


def _optimizer_state_via_state_dict(optimizer: torch.optim.Optimizer, copier: _Copier) -> dict[str, object]:
    raw = optimizer.state_dict()
    names_by_index: dict[int, str] = {}
    groups: list[dict[str, object]] = []
    for group in raw["param_groups"]:
        names = group.get(PARAM_NAMES_KEY)
        if not isinstance(names, list) or len(names) != len(group["params"]):
            raise ValueError("every optimizer group must carry param_names to be checkpointed by name")
        for index, name in zip(group["params"], names, strict=True):
            names_by_index[index] = name
        groups.append({k: copier.tree(v) for k, v in group.items() if k != "params"})
    state = {names_by_index[index]: copier.tree(dict(value)) for index, value in raw["state"].items()}
    return {"groups": groups, "state": state}


def load_optimizer_state_by_name(optimizer: torch.optim.Optimizer, saved: dict[str, object]) -> None:
    """Load state saved by ``optimizer_state_by_name`` into an optimizer with the same named groups.

    Raises:
        ValueError: the groups or their parameter names differ (the graft log was not replayed first).
    """
    groups = saved["groups"]
    state = saved["state"]
    if not isinstance(groups, list) or not isinstance(state, dict):
        raise ValueError("optimizer state: malformed")
    current = optimizer.param_groups
    if len(groups) != len(current):
        raise ValueError(f"optimizer state: {len(groups)} saved groups, the optimizer has {len(current)}")
    index_of: dict[str, int] = {}
    param_groups: list[dict[str, object]] = []
    next_index = 0
    for saved_group, group in zip(groups, current, strict=True):
        names = group.get(PARAM_NAMES_KEY)
        if (
            not isinstance(saved_group, dict)
            or saved_group.get(PARAM_NAMES_KEY) != names
            or not isinstance(names, list)
        ):
            raise ValueError(f"optimizer state: group {group.get('name')!r} has different parameters than saved")
        indices = list(range(next_index, next_index + len(names)))
        next_index += len(names)
        index_of.update(zip(names, indices, strict=True))
        param_groups.append({**_clone(saved_group), "params": indices})  # type: ignore[dict-item]
    by_index = {index_of[name]: _clone(value) for name, value in state.items() if name in index_of}
    optimizer.load_state_dict({"state": by_index, "param_groups": param_groups})
    _match_parameter_layouts(optimizer)


def _match_parameter_layouts(optimizer: torch.optim.Optimizer) -> None:
    """Give each loaded state tensor its parameter's memory layout.

    Saved tensors come back contiguous; a channels_last parameter's moments must be channels_last too, because fused
    (and foreach) kernels walk a parameter and its state through the same raw strides: a contiguous moment next to a
    channels_last weight applied every update to the wrong elements after a resume or rollback.
    """
    for group in optimizer.param_groups:
        for param in group["params"]:
            state = optimizer.state.get(param)
            if not state:
                continue
            for key, value in state.items():
                if isinstance(value, torch.Tensor) and value.shape == param.shape and value.stride() != param.stride():
                    state[key] = torch.empty_like(param, dtype=value.dtype).copy_(value)


def rng_state(device: torch.device | None = None) -> dict[str, object]:
    """Python's, NumPy's and torch's global RNG states (with the training ``device``'s CUDA one), as tensors and plain
    values."""
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state: dict[str, object] = {
        "python": random.getstate(),
        "numpy": {
            "kind": str(kind),
            # get_state returns a private copy, so converting it needs no further copy.
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    cuda = cuda_rng_state(device)
    if cuda is not None:
        state["cuda"] = cuda
    return state


def set_rng_state(state: dict[str, object], device: torch.device | None = None) -> None:
    """Restore what ``rng_state`` captured (the CUDA state onto the training ``device``, see cuda_rng.py)."""
    python = state["python"]
    random.setstate(_as_python_state(python))
    numpy = state["numpy"]
    if isinstance(numpy, dict):
        keys = numpy["keys"]
        assert isinstance(keys, torch.Tensor)
        np.random.set_state(
            (str(numpy["kind"]), keys.numpy().astype(np.uint32), numpy["pos"], numpy["has_gauss"], numpy["cached"])
        )
    torch_state = state["torch"]
    if isinstance(torch_state, torch.Tensor):
        torch.set_rng_state(torch_state)
    if "cuda" in state:
        set_cuda_rng_state(state["cuda"], device)


def _as_python_state(value: object) -> tuple[object, ...]:
    # The checkpoint codec restores tuples; a plain JSON round trip would give lists.
    if isinstance(value, tuple | list):
        return tuple(tuple(v) if isinstance(v, list) else v for v in value)
    raise ValueError(f"python RNG state: expected a tuple, got {type(value).__name__}")


def capture(
    trainee: Trainee,
    *,
    global_step: int,
    epoch: int,
    batch_index: int,
    graft_log: list[GraftEvent],
    counters: Counters,
    keep_modules: bool,
    pool: CapturePool | None = None,
    templates: SeedTemplates | None = None,
    planned: PlannedCapture | None = None,
) -> TrainState:
    """Copy the training state between two steps.

    A paused slot is recorded in the mode it resumes to (its extra state would otherwise claim DORMANT with a seed
    attached); ``paused`` re-applies the pause after a restore. ``keep_modules`` keeps a copy of each seed module
    (from ``templates`` when given, else a fresh deep copy) so the fast tier can rebuild the architecture without the
    blueprint catalogue. With a ``pool``, the tensors are views into the pool's reused buffers, valid while the
    returned state lives: copy what must outlive it. With a pool and ``planned``, the layout's CapturePlan finds the
    tensors instead of a walk of the module tree (the same result).
    """
    plan = planned.plan(trainee, len(graft_log)) if planned is not None and pool is not None else None
    if plan is not None:
        assert pool is not None
        model_state, optimizer, lease, nbytes = plan.take(pool)
    else:
        copier = _Copier()
        model_state, optimizer = _walk(trainee, copier)
        lease = copier.finish(pool)
        nbytes = copier.nbytes
    for name, mode in trainee.paused.items():
        for key in _extra_state_keys(trainee.model, name):
            extra = model_state.get(key)
            if isinstance(extra, dict):
                model_state[key] = {**extra, "mode": mode}
    modules: dict[str, nn.Module] = {}
    if keep_modules:
        live = {s.seed_id: s.seed_module for s in trainee.slots.values() if s.seed_module is not None and s.seed_id}
        modules = templates.for_seeds(live) if templates is not None else {k: copy.deepcopy(m) for k, m in live.items()}
    state = TrainState(
        global_step=global_step,
        epoch=epoch,
        batch_index=batch_index,
        model=model_state,
        optimizer=optimizer,
        rng=rng_state(trainee.device),
        graft_log=list(graft_log),
        paused=dict(trainee.paused),
        counters=dict(counters),
        seed_modules=modules,
        lease=lease,
    )
    state.nbytes = nbytes
    return state


@final
class SeedTemplates:
    """One structural copy per live seed module, made once and handed to every later fast snapshot.

    A fast snapshot needs each seed's module only for its structure: the weights and persistent buffers are in the
    snapshot's model state and are loaded over it after a restore. Deep-copying every seed module at every epoch end
    was most of the epoch-boundary stall of a run with seeds (about 1 ms of 1.4 at the median on the default run).
    A copy is reused while the slot still holds the very module it was made from (checked by identity through a weak
    reference, so a module replaced under the same seed id, as a rollback does, gets a copy of its own). Copies are
    never attached: ``replay`` deep-copies them again, so one snapshot can be restored any number of times.
    Non-persistent buffers (not in a state dict) keep the values they had when the copy was made. Lane-thread only.
    """

    def __init__(self) -> None:
        self._copies: dict[str, tuple[weakref.ref[nn.Module], nn.Module]] = {}
        self.made = 0

    def for_seeds(self, live: dict[str, nn.Module]) -> dict[str, nn.Module]:
        """A copy of each module in ``live`` (by seed id); forgets the seeds no longer in it."""
        kept: dict[str, tuple[weakref.ref[nn.Module], nn.Module]] = {}
        for seed_id, module in live.items():
            known = self._copies.get(seed_id)
            if known is None or known[0]() is not module:
                known = (weakref.ref(module), copy.deepcopy(module))
                self.made += 1
            kept[seed_id] = known
        self._copies = kept
        return {seed_id: template for seed_id, (_, template) in kept.items()}


def reserve_capture(
    trainee: Trainee, pool: CapturePool, planned: PlannedCapture | None = None, log_length: int = 0
) -> int:
    """Have ``pool`` allocate the buffers the next captures of ``trainee`` will fill (see CapturePool.reserve), so
    the epoch boundary does not pay for them, and with ``planned`` make the layout's CapturePlan (``log_length``: the
    graft log's length); returns how many buffer sets were allocated. Copies nothing."""
    plan = planned.plan(trainee, log_length) if planned is not None else None
    if plan is not None:
        return plan.reserve(pool)
    copier = _Copier()
    _walk(trainee, copier)
    return copier.reserve(pool)


def _extra_state_keys(model: nn.Module, name: str) -> list[str]:
    """The slot after ``name``'s extra-state keys: one per name of its host, since ``state_dict`` saves a module
    registered under two names under both, and loading sets the slot from each."""
    slot = model.get_submodule(slot_path(name))
    return [f"{path}._extra_state" for path, m in model.named_modules(remove_duplicate=False) if m is slot]


def _walk(trainee: Trainee, copier: _Copier) -> tuple[dict[str, object], dict[str, object]]:
    model_state: dict[str, object] = {}
    # keep_vars: the live tensors themselves, whose identity lets the pool recognise the layout.
    for key, value in trainee.model.state_dict(keep_vars=True).items():
        copier.put(model_state, key, value)
    return model_state, _optimizer_state_by_name(trainee.optimizer, copier)


def load_into(trainee: Trainee, state: TrainState) -> None:
    """Load weights, optimizer state and RNGs into a trainee whose architecture already matches (graft log
    replayed), then re-apply pauses. The state's tensors are copied, so it can be loaded again later.

    Raises:
        RuntimeError / ValueError: the state does not fit the model (missing or unexpected keys, other groups).
    """
    from esper.nn.slots import SlotMode

    trainee.model.load_state_dict({k: _clone(v) for k, v in state.model.items()}, strict=True)
    load_optimizer_state_by_name(trainee.optimizer, state.optimizer)
    set_rng_state(state.rng, trainee.device)
    trainee.paused.clear()
    for name, mode in state.paused.items():
        slot = trainee.slots[name]
        trainee.paused[name] = mode
        slot.mode = SlotMode.DORMANT


@final
class SnapshotStore:
    """The fast rollback tier: the latest TrainState kept in memory, if it fits under the cap.

    One snapshot (the most recent epoch end) is enough for rollback to the last good epoch; an oversized snapshot
    disables the tier for the rest of the run, and ``disabled_reason`` says why.
    """

    def __init__(self, cap_bytes: int) -> None:
        self._cap_bytes = cap_bytes
        self._latest: TrainState | None = None
        self.disabled_reason: str | None = None if cap_bytes > 0 else "snapshot_memory_cap_mb is 0"

    @property
    def latest(self) -> TrainState | None:
        return self._latest

    def put(self, state: TrainState) -> bool:
        """Keep ``state`` as the rollback target; False (and the tier disabled) if it exceeds the cap."""
        if self.disabled_reason is not None:
            return False
        if state.nbytes > self._cap_bytes:
            self.disabled_reason = f"snapshot of {state.nbytes} bytes exceeds the cap of {self._cap_bytes} bytes"
            self._latest = None
            return False
        self._latest = state
        return True
