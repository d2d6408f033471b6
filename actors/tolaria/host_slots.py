"""A host's seed slots: wrapped in at the slot targets, and each slot's shape measured by one forward on the data."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Literal

import torch
from torch import nn

from actors.tolaria.host_model import TolariaConfigError
from esper.nn.blueprints import SlotShape
from esper.nn.slots import rebuild_problem
from esper.nn.wrap import find_slots, wrap
from esper.runtime.failure_trace import raised_in_one_line

if TYPE_CHECKING:
    from collections.abc import Sequence

    from esper.nn.data import DataSplits
    from esper.nn.slots import SeedSlot
    from schemas.config import TolariaConfig


def slot_kind(rank: int) -> Literal["flat", "conv1d", "conv2d"]:
    """The slot kind an activation of this rank (batch included) implies."""
    if rank == 2:
        return "flat"
    if rank == 3:
        return "conv1d"
    if rank == 4:
        return "conv2d"
    raise ValueError(f"a slot activation of rank {rank} fits no slot kind")


def measure_slot_shapes(
    model: nn.Module, names: Sequence[str], sample: torch.Tensor, kinds: Mapping[str, str] | None = None
) -> tuple[dict[str, SlotShape | str], object]:
    """Run one eval-mode forward on ``sample`` ([batch, *input]) and record each named module's output shape, or one
    line saying why its output fits no slot (absent: the forward never called it); also return the model's output.
    ``kinds``: a slot's declared kind where its rank alone cannot tell ("sequence": ``[batch, seq, features]``).
    A module the forward calls more than once must give outputs of one slot shape each time (its slot's seed is
    built for one; a shared activation after layers of different widths failed at its first graft).

    Eval mode and no_grad: BatchNorm statistics and the RNGs are left exactly as they were.
    """
    shapes: dict[str, SlotShape | str] = {}
    first_dims: dict[str, str] = {}
    declared = kinds or {}
    handles = []
    for name in names:

        def hook(_m: nn.Module, _i: object, out: object, name: str = name) -> None:
            if isinstance(shapes.get(name), str):
                return  # the first problem found stands
            problem = rebuild_problem(out) if isinstance(out, tuple) else None
            if problem is not None:
                shapes[name] = problem
                return
            tensor = out[0] if isinstance(out, tuple) else out
            shape = _slot_shape(tensor, declared.get(name))
            earlier = shapes.get(name)
            if isinstance(earlier, SlotShape) and isinstance(shape, SlotShape) and shape != earlier:
                shapes[name] = (
                    f"the forward calls it more than once, with outputs of shape {first_dims[name]} and"
                    f" {_dims(tensor)}, and its slot's seed takes one shape"
                )
                return
            shapes[name] = shape
            if name not in first_dims and isinstance(tensor, torch.Tensor):
                first_dims[name] = _dims(tensor)

        handles.append(model.get_submodule(name).register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            output = model(sample)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return shapes, output


def _dims(tensor: object) -> str:
    """A tensor's shape as the user reads it, its batch dimension named: ``[batch, 64]``."""
    assert isinstance(tensor, torch.Tensor)
    return "[" + ", ".join(["batch", *(str(d) for d in tensor.shape[1:])]) + "]"


def _slot_shape(output: object, declared: str | None = None) -> SlotShape | str:
    if not isinstance(output, torch.Tensor):
        return f"it returns a {type(output).__name__}, not a tensor"
    if output.dim() < 2 or output.dim() > 4:
        return (
            f"it returns a tensor of rank {output.dim()} (a slot takes [batch, features], [batch, channels, length]"
            " or [batch, channels, height, width])"
        )
    if output.dtype != torch.float32:
        return f"it returns {output.dtype} activations, and seeds are built in torch.float32"
    if declared == "sequence":
        if output.dim() != 3:
            return f"slot_kinds says sequence ([batch, seq, features]), and it returns a tensor of rank {output.dim()}"
        return SlotShape("sequence", int(output.shape[2]))
    return SlotShape(slot_kind(output.dim()), int(output.shape[1]))


def _declared_kinds(model: nn.Module, slots: Sequence[str], source: str) -> dict[str, str]:
    """The model's ``slot_kinds`` attribute ({target: "sequence"}), checked: a mapping, of its slot targets, to a
    kind a rank cannot tell apart."""
    kinds = getattr(model, "slot_kinds", None)
    if kinds is None:
        return {}
    if not isinstance(kinds, Mapping) or not all(isinstance(k, str) and isinstance(v, str) for k, v in kinds.items()):
        raise TolariaConfigError(f"{source}: the model's slot_kinds = {kinds!r}: expected a dict of target -> kind")
    for name, kind in kinds.items():
        if name not in slots:
            raise TolariaConfigError(f"{source}: the model's slot_kinds names {name!r}, which is not a slot target")
        if kind != "sequence":
            raise TolariaConfigError(
                f"{source}: the model's slot_kinds[{name!r}] = {kind!r}: expected 'sequence' (other kinds follow from"
                " the activation's rank)"
            )
    return dict(kinds)


def fitting_shapes(
    config: TolariaConfig, model: nn.Module, slots: Sequence[str], splits: DataSplits
) -> dict[str, SlotShape]:
    """The slots' shapes from one forward on two training samples, which also proves a user's model takes the data
    and scores each of its classes (rather than failing at the first step and in every restart after it)."""
    sample = splits.train.x[: min(2, splits.train.num_samples)]
    source = f"tolaria.host_model = {config.host_model!r}"
    data = f"the {config.dataset} data set's samples of shape {list(splits.input_shape)}"
    kinds = _declared_kinds(model, slots, source)
    try:
        measured, output = measure_slot_shapes(model, slots, sample, kinds)
    # KeyboardInterrupt and SystemExit too: raised by a user's forward (this runs on a worker thread, where no signal
    # arrives), they ended the run as if Ctrl-C had been pressed (exit 130, no word) or stopped a notebook's loop.
    except (Exception, KeyboardInterrupt, SystemExit) as err:
        # Not "cannot take the data": a forward that raises for its own reasons (a fault in eval mode, at a restart's
        # probe) was blamed on the samples' shape. The shape stays in the line: it is the likely cause of a mismatch.
        raise TolariaConfigError(
            f"{source}: the model's forward raised when probed with a batch of {len(sample)} of {data}:"
            f" {raised_in_one_line(err)}"
        ) from err
    expected = [len(sample), splits.num_classes]
    if not isinstance(output, torch.Tensor) or list(output.shape) != expected:
        got = f"shape {list(output.shape)}" if isinstance(output, torch.Tensor) else type(output).__name__
        raise TolariaConfigError(
            f"{source}: the model must return a [batch, {splits.num_classes}] tensor of class scores for {data}"
            f" ({splits.num_classes} classes); it returned {got} for a batch of {len(sample)}"
        )
    shapes: dict[str, SlotShape] = {}
    for name in slots:
        # The probe runs in eval mode: a layer the forward calls only under ``if self.training`` is never called.
        shape = measured.get(name, "the model's forward never calls it (probed in eval mode, model.eval())")
        if isinstance(shape, str):
            raise TolariaConfigError(f"{source}: slot target {name!r} cannot hold a seed: {shape}")
        shapes[name] = shape
    return shapes


def wrap_host(config: TolariaConfig, model: nn.Module, slot_targets: Sequence[str]) -> dict[str, SeedSlot]:
    """Put the seed slots into ``model`` (at ``slot_targets`` when given, else at the model's own ``slot_targets``)
    and return them by name.

    Raises:
        TolariaConfigError: a target matches nothing, or the model has no slot at all.
    """
    own = getattr(model, "slot_targets", None)
    own = () if own is None else own
    model_source = f"tolaria.host_model = {config.host_model!r}: the model's slot_targets"
    if not slot_targets and not isinstance(own, tuple | list):
        # A set has no order (string hashing changes it from run to run), so it cannot name the slots reproducibly.
        shown = f" = {own!r}" if isinstance(own, str) else ""  # a set's repr changes order from run to run
        raise TolariaConfigError(
            f"{model_source}{shown}: expected a list or tuple of module names, got a {type(own).__name__}"
        )
    targets = tuple(slot_targets) or tuple(own)
    if targets:
        source = f"kasmina.slot_targets = {list(slot_targets)!r}" if slot_targets else model_source
        if any(not isinstance(t, str) or not t.strip() for t in targets):
            raise TolariaConfigError(f"{source}: expected non-empty module names, got {list(targets)!r}")
        # A factory may return its model wrapped already (esper.nn.wrap), its own list naming the same modules:
        # those have their slots and are not wrapped twice.
        slotted = set(find_slots(model))
        unslotted = [target for target in targets if target not in slotted]
        try:
            if unslotted:
                wrap(model, unslotted)
        except ValueError as err:
            raise TolariaConfigError(f"{source}: {err}") from err
    slots = dict(find_slots(model))
    if not slots:
        raise TolariaConfigError(_no_slots(config, model))
    return slots


def _no_slots(config: TolariaConfig, model: nn.Module) -> str:
    layers = [
        f"{name} ({type(m).__name__})"
        for name, m in model.named_modules()
        if name and isinstance(m, nn.Linear | nn.Conv1d | nn.Conv2d)
    ]
    hint = f"; its layers include {', '.join(layers[:6])}" if layers else ""
    return (
        f"tolaria.host_model = {config.host_model!r}: the model has no seed slot, so nothing could grow; set"
        f" kasmina.slot_targets to the qualified names of the modules to grow after, or give the model a"
        f" slot_targets attribute{hint}"
    )
