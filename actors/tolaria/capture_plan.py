"""CapturePlan: where every tensor of the training state lives, found once per layout.

A capture then copies them without walking the module tree.

A capture by walking (``model.state_dict()``, the optimizer's groups and per-parameter state, a copier recording each
tensor) spent most of the epoch-boundary stall in Python. The plan records, from one such walk, the dict and key
holding each weight, buffer and optimizer-state tensor, in ``state_dict`` order; a capture then checks that each of
them still holds the very tensor it recorded (an identity check per tensor), copies them all into a CapturePool
buffer set with one ``_foreach_copy_`` per (dtype, device) and builds the same dicts the walk builds. Values that
change without changing the layout (slots' extra state, group hyperparameters, non-tensor optimizer state) are read
anew every time.

A plan is only made for models whose ``state_dict`` is the plain recursive one (no state-dict hooks, no module
overriding ``_save_to_state_dict``) and optimizers without state-dict hooks; anything else is captured by walking.
It is dropped when the layout may have changed: another model object (a restore), a graft-log entry (every graft
op), other optimizer groups or another number of parameters with state, or any recorded tensor replaced. Lane-thread
only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, final

import torch
from torch import nn

from actors.tolaria.build import PARAM_NAMES_KEY
from esper.nn.slots import SeedSlot

if TYPE_CHECKING:
    from actors.tolaria.build import Trainee
    from actors.tolaria.capture_pool import CapturePool

__all__ = ["CapturePlan", "PlannedCapture", "clone_tree"]

_LEAVES = frozenset({str, int, float, bool, type(None)})


def clone_tree(value: object) -> tuple[object, int]:
    """A private copy of nested dicts, lists and tuples of leaves and tensors, and the tensors' bytes."""
    if type(value) in _LEAVES:
        return value, 0
    if isinstance(value, torch.Tensor):
        return value.detach().clone(), value.numel() * value.element_size()
    if isinstance(value, dict):
        out: dict[object, object] = {}
        total = 0
        for k, v in value.items():
            out[k], n = clone_tree(v)
            total += n
        return out, total
    if isinstance(value, list | tuple):
        items: list[object] = []
        total = 0
        for v in value:
            copied, n = clone_tree(v)
            items.append(copied)
            total += n
        return (items if isinstance(value, list) else tuple(items)), total
    return value, 0


def _plain_state_dict(model: nn.Module) -> dict[str, nn.Module] | None:
    """Prefix -> module as ``state_dict`` walks them (no dedup), or None if any module changes what it saves."""
    found: dict[str, nn.Module] = {}

    def visit(module: nn.Module, prefix: str) -> bool:
        if (
            module._state_dict_hooks
            or module._state_dict_pre_hooks
            or type(module)._save_to_state_dict is not nn.Module._save_to_state_dict
            or type(module).state_dict is not nn.Module.state_dict
        ):
            return False
        found[prefix] = module
        return all(visit(child, f"{prefix}{name}.") for name, child in module._modules.items() if child is not None)

    return found if visit(model, "") else None


@final
class CapturePlan:
    """One layout of a trainee's state (see the module docstring). Build with ``CapturePlan.of``."""

    __slots__ = (
        "_extras",
        "_groups",
        "_log_length",
        "_model",
        "_model_keys",
        "_optimizer",
        "_pool_groups",
        "_positions",
        "_state_count",
        "_states",
        "_tensors",
        "nbytes",
    )

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, log_length: int) -> None:
        self._model = model
        self._optimizer = optimizer
        self._log_length = log_length
        # state_dict order: each key is a pooled tensor (index into _tensors) or an extra state (index into _extras).
        self._model_keys: list[tuple[str, bool, int]] = []
        self._tensors: list[tuple[dict[str, torch.Tensor | None], str, torch.Tensor]] = []
        # With whether the module's extra state comes fresh from each call (a SeedSlot's: new dicts and lists of plain
        # values, nothing the slot keeps), so the capture takes it as it is instead of copying it again.
        self._extras: list[tuple[nn.Module, bool]] = []
        # Per optimizer group: the group dict, its params list and that list's length.
        self._groups: list[tuple[dict[str, object], list[torch.Tensor], int]] = []
        # Per parameter with a state dict (possibly empty): the parameter, its name, the dict, the dict's length and the
        # tensors in it.
        self._states: list[tuple[torch.Tensor, str, dict[str, object], int, list[tuple[str, torch.Tensor]]]] = []
        self._state_count = len(optimizer.state)
        self._pool_groups: dict[tuple[torch.dtype, torch.device], list[tuple[None, None, torch.Tensor]]] = {}
        # For each pooled tensor in capture order (model tensors, then optimizer state): (group, index) of its view.
        self._positions: list[tuple[int, int]] = []
        self.nbytes = 0

    @staticmethod
    def of(trainee: Trainee, log_length: int) -> CapturePlan | None:
        """The plan of ``trainee``'s current layout, or None if it cannot be planned (see the module docstring).

        ``log_length``: the graft log's length now; a plan only fits while it is unchanged.
        """
        model, optimizer = trainee.model, trainee.optimizer
        modules = _plain_state_dict(model)
        if modules is None or optimizer._optimizer_state_dict_pre_hooks or optimizer._optimizer_state_dict_post_hooks:
            return None
        plan = CapturePlan(model, optimizer, log_length)
        sources: list[torch.Tensor] = []
        for key, value in model.state_dict(keep_vars=True).items():
            prefix, _, attr = key.rpartition(".")
            module = modules.get(f"{prefix}." if prefix else "")
            if module is None:
                return None
            if attr == "_extra_state" and not isinstance(value, torch.Tensor):
                plan._model_keys.append((key, False, len(plan._extras)))
                plan._extras.append((module, type(module) is SeedSlot))
                continue
            holder: dict[str, torch.Tensor | None] | None = None
            if module._parameters.get(attr) is value:
                holder = module._parameters  # type: ignore[assignment]  # a Parameter is a Tensor
            elif module._buffers.get(attr) is value:
                holder = module._buffers
            if holder is None or not isinstance(value, torch.Tensor):
                return None
            plan._model_keys.append((key, True, len(plan._tensors)))
            plan._tensors.append((holder, attr, value))
            sources.append(value)
        state = optimizer.state
        for group in optimizer.param_groups:
            params = group["params"]
            names = group.get(PARAM_NAMES_KEY)
            if not isinstance(names, list) or len(names) != len(params):
                return None
            plan._groups.append((group, params, len(params)))
            for param, name in zip(params, names, strict=True):
                saved = state.get(param)
                if saved is None:
                    continue
                recorded = [(k, v) for k, v in saved.items() if isinstance(v, torch.Tensor)]
                plan._states.append((param, name, saved, len(saved), recorded))
                sources.extend(v for _, v in recorded)
        order: list[tuple[torch.dtype, torch.device]] = []
        for source in sources:
            where = (source.dtype, source.device)
            group_entries = plan._pool_groups.get(where)
            if group_entries is None:
                group_entries = plan._pool_groups[where] = []
                order.append(where)
            plan._positions.append((order.index(where), len(group_entries)))
            group_entries.append((None, None, source))
            plan.nbytes += source.numel() * source.element_size()
        return plan

    def fits(self, trainee: Trainee, log_length: int) -> bool:
        """Whether ``trainee`` still has this layout: the same objects everywhere the plan looks."""
        optimizer = trainee.optimizer
        if trainee.model is not self._model or optimizer is not self._optimizer or log_length != self._log_length:
            return False
        groups = optimizer.param_groups
        if len(groups) != len(self._groups) or len(optimizer.state) != self._state_count:
            return False
        for group, (known, params, count) in zip(groups, self._groups, strict=True):
            if group is not known or group["params"] is not params or len(params) != count:
                return False
        for holder, attr, tensor in self._tensors:
            if holder.get(attr) is not tensor:
                return False
        state = optimizer.state
        for param, _, saved, count, recorded in self._states:
            if state.get(param) is not saved or len(saved) != count:
                return False
            for k, tensor in recorded:
                if saved.get(k) is not tensor:
                    return False
        return True

    def take(self, pool: CapturePool) -> tuple[dict[str, object], dict[str, object], object, int]:
        """Copy the planned state (after ``fits``): (model state, optimizer state, the pool's lease, bytes copied).

        The result has the shape the walking capture gives: ``state_dict`` keys to tensors (views into the pool's
        buffers) and extra states; ``{"groups": [...], "state": {name: {...}}}`` for the optimizer.
        """
        views, lease = pool.views_for(self._pool_groups)
        with torch.no_grad():
            for targets, entries in zip(views, self._pool_groups.values(), strict=True):
                torch._foreach_copy_(targets, [source for _, _, source in entries])
        positions = self._positions
        extra_bytes = 0
        model_state: dict[str, object] = {}
        for key, is_tensor, index in self._model_keys:
            if is_tensor:
                group, at = positions[index]
                model_state[key] = views[group][at]
            else:
                module, fresh = self._extras[index]
                if fresh:
                    model_state[key] = module.get_extra_state()
                else:
                    model_state[key], n = clone_tree(module.get_extra_state())
                    extra_bytes += n
        groups: list[dict[str, object]] = []
        for group_dict, _, _ in self._groups:
            copied: dict[str, object] = {}
            for k, v in group_dict.items():
                if type(v) in _LEAVES:
                    copied[k] = v
                elif k == PARAM_NAMES_KEY and isinstance(v, list):
                    copied[k] = list(v)
                elif k != "params":
                    copied[k], n = clone_tree(v)
                    extra_bytes += n
            groups.append(copied)
        state: dict[str, object] = {}
        cursor = len(self._tensors)
        for _, name, saved, count, _ in self._states:
            if not count:
                continue  # as the walk does: a parameter without state is left out
            entry: dict[str, object] = {}
            for k, v in saved.items():
                if isinstance(v, torch.Tensor):
                    group, at = positions[cursor]
                    entry[k] = views[group][at]
                    cursor += 1
                else:
                    entry[k], n = clone_tree(v)
                    extra_bytes += n
            state[name] = entry
        return model_state, {"groups": groups, "state": state}, lease, self.nbytes + extra_bytes

    def reserve(self, pool: CapturePool) -> int:
        """Have ``pool`` allocate the buffer sets this layout's captures fill; returns how many it allocated."""
        return pool.reserve(self._pool_groups)


@final
class PlannedCapture:
    """A loop's current CapturePlan: rebuilt when it no longer fits, not retried for a layout that cannot be planned.

    Holding the plan keeps the recorded tensors alive until the next capture or ``forget`` (a graft or restore calls
    it, so a culled seed's tensors are not kept for an epoch).
    """

    def __init__(self) -> None:
        self._plan: CapturePlan | None = None
        self._unplannable: tuple[nn.Module, int] | None = None
        self.built = 0

    def plan(self, trainee: Trainee, log_length: int) -> CapturePlan | None:
        """The plan for ``trainee`` now (built if the last one no longer fits), or None if it cannot be planned."""
        plan = self._plan
        if plan is not None and plan.fits(trainee, log_length):
            return plan
        self._plan = None
        unplannable = self._unplannable
        if unplannable is not None and unplannable[0] is trainee.model and unplannable[1] == log_length:
            return None
        plan = CapturePlan.of(trainee, log_length)
        if plan is None:
            self._unplannable = (trainee.model, log_length)
            return None
        self._plan = plan
        self.built += 1
        return plan

    def forget(self) -> None:
        self._plan = None
        self._unplannable = None
