"""Optimizer state keyed by qualified parameter name, not position: copied for a snapshot, loaded back from one."""

from __future__ import annotations

import torch

from actors.tolaria.build import PARAM_NAMES_KEY
from actors.tolaria.state_copier import StateCopier, clone_tree


def optimizer_state_by_name(optimizer: torch.optim.Optimizer) -> dict[str, object]:
    """The optimizer's state keyed by qualified parameter name (not position) plus each group's hyperparameters."""
    copier = StateCopier()
    state = copy_optimizer_state(optimizer, copier)
    copier.finish()
    return state


def copy_optimizer_state(optimizer: torch.optim.Optimizer, copier: StateCopier) -> dict[str, object]:
    """What ``optimizer_state_by_name`` returns, its tensors put through ``copier`` (copied by ``copier.finish``)."""
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


def _optimizer_state_via_state_dict(optimizer: torch.optim.Optimizer, copier: StateCopier) -> dict[str, object]:
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
        param_groups.append({**clone_tree(saved_group), "params": indices})  # type: ignore[dict-item]
    by_index = {index_of[name]: clone_tree(value) for name, value in state.items() if name in index_of}
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
