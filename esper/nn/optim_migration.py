"""Optimizer param-group migration for grafts, culls and fossilization (REFERENCE.md section 6).

Every change happens at a step boundary, on the thread that owns the optimizer (Tolaria's train lane):

- graft: ``add_seed_group`` adds a group named ``seed:<id>`` with fresh state and its own learning rate;
- cull: ``remove_seed_group`` removes that group and drops its parameters' state (moments, momentum buffers);
- fossilize: ``fossilize_seed_group`` moves the parameters into a host group. Optimizer state is keyed by parameter,
  so their moments carry over untouched; from then on they take the host group's hyperparameters;
- check: ``check_param_groups`` proves every live trainable parameter is in exactly one group and nothing removed
  lingers, in groups or in state.

Works with any ``torch.optim.Optimizer`` whose state is keyed by parameter (SGD, Adam, AdamW, including ``foreach``
and ``fused``). LR schedulers keep per-group lists (``base_lrs``); a scheduler built before a group change does not
see the change, so the owner of the schedule must extend or rebuild those lists alongside these calls.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    from torch import Tensor
    from torch.optim import Optimizer

__all__ = [
    "GROUP_NAME_KEY",
    "ParamGroupError",
    "add_seed_group",
    "check_param_groups",
    "find_seed_group",
    "fossilize_seed_group",
    "remove_seed_group",
    "seed_group_name",
]

GROUP_NAME_KEY = "name"
_NAMES_KEY = "param_names"

HyperValue = float | int | bool | tuple[float, float] | None


class ParamGroupError(ValueError):
    """Raised when a param-group change or check finds the optimizer in the wrong shape: a seed group that is missing
    or already present, a parameter already optimized, or (from ``check_param_groups``) a live parameter in no group
    or in two, or a removed parameter still present."""


def seed_group_name(seed_id: str) -> str:
    """The group name for a seed: ``seed:<id>``."""
    return f"seed:{seed_id}"


def find_seed_group(optimizer: Optimizer, seed_id: str) -> int | None:
    """Index of the seed's group in ``optimizer.param_groups``, or None."""
    name = seed_group_name(seed_id)
    for index, group in enumerate(optimizer.param_groups):
        if group.get(GROUP_NAME_KEY) == name:
            return index
    return None


def add_seed_group(
    optimizer: Optimizer,
    seed_id: str,
    params: Iterable[Tensor],
    *,
    lr: float,
    names: Sequence[str] | None = None,
    **hyper: HyperValue,
) -> dict[str, object]:
    """Add the group ``seed:<id>`` for a freshly grafted seed and return it.

    Args:
        optimizer: the training optimizer.
        seed_id: the seed's id; must not have a group yet.
        params: the seed's trainable parameters (frozen ones are skipped), in a stable order.
        lr: the seed group's learning rate (also recorded as ``initial_lr`` for schedulers).
        names: qualified parameter names, required when the optimizer's groups carry ``param_names``.
        **hyper: other group hyperparameters (``weight_decay``, ``momentum``, ``betas`` ...); unspecified ones take
            the optimizer's defaults.

    Raises:
        ParamGroupError: the seed already has a group, a parameter is already in a group, no trainable parameter was
            given, or names are missing or of the wrong length.
    """
    if find_seed_group(optimizer, seed_id) is not None:
        raise ParamGroupError(f"optimizer already has group {seed_group_name(seed_id)!r}")
    all_params = list(params)
    keep = [i for i, p in enumerate(all_params) if p.requires_grad]
    trainable = [all_params[i] for i in keep]
    if not trainable:
        raise ParamGroupError(f"seed {seed_id!r}: no trainable parameters to add")
    present = {id(p) for group in optimizer.param_groups for p in group["params"]}
    for p in trainable:
        if id(p) in present:
            raise ParamGroupError(f"seed {seed_id!r}: a parameter of shape {tuple(p.shape)} is already optimized")
    for p in trainable:
        # A stale entry would survive as "fresh" state; the graft promises fresh state.
        optimizer.state.pop(p, None)
    group: dict[str, object] = {"params": trainable, "lr": lr, "initial_lr": lr, **hyper}
    group[GROUP_NAME_KEY] = seed_group_name(seed_id)
    uses_names = any(_NAMES_KEY in g for g in optimizer.param_groups)
    if uses_names:
        if names is None or len(names) != len(all_params):
            raise ParamGroupError(f"seed {seed_id!r}: this optimizer names its parameters; pass one name per param")
        group[_NAMES_KEY] = [names[i] for i in keep]
    optimizer.add_param_group(group)
    return optimizer.param_groups[-1]


def remove_seed_group(optimizer: Optimizer, seed_id: str) -> list[Tensor]:
    """Remove the seed's group and drop its parameters' optimizer state (cull); return the removed parameters.

    Raises:
        ParamGroupError: the seed has no group.
    """
    index = _require(optimizer, seed_id)
    group = optimizer.param_groups.pop(index)
    params: list[Tensor] = list(group["params"])
    for p in params:
        optimizer.state.pop(p, None)
    return params


def fossilize_seed_group(optimizer: Optimizer, seed_id: str, host_group_index: int = 0) -> list[Tensor]:
    """Move the seed's parameters into a host group, keeping their state; return the moved parameters.

    The moved parameters take the host group's hyperparameters (lr, weight decay, betas ...). Their state tensors
    (momentum buffers, Adam moments and step counts) are the same objects as before, bit for bit.

    Args:
        optimizer: the training optimizer.
        seed_id: the seed whose group is dissolved.
        host_group_index: index of the receiving group, counted BEFORE the seed group is removed; must not be a seed
            group.

    Raises:
        ParamGroupError: the seed has no group, or the index is out of range or names a seed group.
    """
    index = _require(optimizer, seed_id)
    groups = optimizer.param_groups
    if not 0 <= host_group_index < len(groups) or host_group_index == index:
        raise ParamGroupError(f"host_group_index: {host_group_index} is not a host group of {len(groups)} groups")
    host = groups[host_group_index]
    host_name = host.get(GROUP_NAME_KEY)
    if isinstance(host_name, str) and host_name.startswith("seed:"):
        raise ParamGroupError(f"host_group_index: group {host_group_index} is seed group {host_name!r}")
    seed_group = groups.pop(index)
    moved: list[Tensor] = list(seed_group["params"])
    host["params"].extend(moved)
    if _NAMES_KEY in host:
        host[_NAMES_KEY].extend(seed_group.get(_NAMES_KEY, ()))
    return moved


def check_param_groups(optimizer: Optimizer, live_params: Iterable[Tensor] | Iterable[tuple[str, Tensor]]) -> None:
    """Check that every live trainable parameter is in exactly one group and nothing else is optimized.

    Args:
        optimizer: the training optimizer.
        live_params: every parameter of the current model (host plus attached seeds): ``model.named_parameters()``
            (errors then name the parameter) or ``model.parameters()``. Frozen ones may be in a group or not.

    Raises:
        ParamGroupError: naming the first problem: a live trainable parameter in no group, a parameter in two groups
            (or twice in one), a grouped parameter that is not live, or state held for a parameter in no group.
    """
    live: dict[int, tuple[str, Tensor]] = {}
    for item in live_params:
        name, p = item if isinstance(item, tuple) else (None, item)
        live[id(p)] = (repr(name) if name is not None else f"of shape {tuple(p.shape)}", p)

    def describe(p: Tensor) -> str:
        entry = live.get(id(p))
        return f"parameter {entry[0]}" if entry is not None else f"parameter of shape {tuple(p.shape)}"

    where: dict[int, object] = {}
    for index, group in enumerate(optimizer.param_groups):
        label = group.get(GROUP_NAME_KEY, index)
        for p in group["params"]:
            if id(p) in where:
                raise ParamGroupError(f"{describe(p)} is in group {label!r} and in group {where[id(p)]!r}")
            if id(p) not in live:
                raise ParamGroupError(f"group {label!r} holds a {describe(p)} that is not live (removed?)")
            where[id(p)] = label
    for pid, (_, p) in live.items():
        if p.requires_grad and pid not in where:
            raise ParamGroupError(f"live trainable {describe(p)} is in no param group")
    for p in optimizer.state:
        if id(p) not in where:
            raise ParamGroupError(f"optimizer holds state for a {describe(p)} that is in no group")


def _require(optimizer: Optimizer, seed_id: str) -> int:
    index = find_seed_group(optimizer, seed_id)
    if index is None:
        raise ParamGroupError(f"optimizer has no group {seed_group_name(seed_id)!r}")
    return index
