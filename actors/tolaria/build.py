"""Config -> what Tolaria trains: seeded RNGs, the data splits, the wrapped host model, its optimizer and slot shapes.

Everything here runs on the train lane thread (or, for ``check_config``, on any worker thread before the run starts):
it builds tensors and may import the user's module.
"""

from __future__ import annotations

import copy
import importlib
import math
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal, final

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from actors.tolaria.boundary import BoundaryApplier, rebuild_seed
from actors.tolaria.data_cache import NpzArrayCache
from esper.nn.blueprints import SlotShape, default_catalogue
from esper.nn.data import DatasetError, load_dataset
from esper.nn.data_batches import BatchPlan
from esper.nn.hosts import CNN1dHost, MLPHost
from esper.nn.optim_migration import GROUP_NAME_KEY
from esper.nn.slots import rebuild_problem
from esper.nn.wrap import find_slots, wrap
from esper.runtime.errors import ConfigError
from esper.runtime.lanes import resolve_device
from schemas.boundary import SeedOp
from schemas.config import initial_seed_id
from schemas.control import BlendConfig
from schemas.domain_enums import BlendMode
from schemas.enums import SeedLifecycleStage

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from actors.tolaria.boundary import GraftEvent
    from esper.nn.data import DataSplits, Layout
    from esper.nn.slots import SeedSlot
    from schemas.config import TolariaConfig

HOST_GROUP = "host"
PARAM_NAMES_KEY = "param_names"


class TolariaConfigError(ConfigError):
    """Raised when the tolaria section names something that cannot be used: a ``module:factory`` host model that
    does not import, fails, or returns no nn.Module, or a data set file that is missing or malformed. One line,
    naming the config key and value."""


@final
@dataclass(slots=True)
class Trainee:
    """The model being trained and everything that changes with its architecture. Lane-thread only.

    ``slot_shapes`` maps each slot (by the name of the module it follows) to the activation it sees;
    ``paused`` maps a paused slot to the mode it will resume in; ``initial_grafts`` is the graft log of the seeds
    ``tolaria.initial_seeds`` attached before step 0 (the start of every graft log of this trainee);
    ``seed_lr_scale`` multiplies the host's learning rate for a grafted seed whose command names no rate;
    ``incubation_lr_scale`` multiplies a seed's rate while it is in TRAINING.
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    slots: dict[str, SeedSlot]
    slot_shapes: dict[str, SlotShape]
    device: torch.device
    autocast_dtype: torch.dtype | None
    channels_last: bool
    host_parameters: int
    paused: dict[str, str] = field(default_factory=dict)
    initial_grafts: list[GraftEvent] = field(default_factory=list)
    isolation_violations: dict[str, int] = field(default_factory=dict)
    seed_lr_scale: float = 1.0
    incubation_lr_scale: float = 1.0

    def seed_parameters(self) -> dict[str, int]:
        """Parameter elements of each attached seed, by seed id."""
        out: dict[str, int] = {}
        for slot in self.slots.values():
            seed = slot.seed_module
            if seed is not None and slot.seed_id is not None:
                out[slot.seed_id] = sum(p.numel() for p in seed.parameters())
        return out


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global RNGs (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def resolve_precision(config: TolariaConfig, device: torch.device) -> torch.dtype | None:
    """The autocast dtype: bf16 on CUDA under "auto", fp32 (None: no autocast) on the CPU unless asked."""
    if config.amp or config.precision == "bf16":
        return torch.bfloat16
    if config.precision == "auto" and device.type == "cuda":
        return torch.bfloat16
    return None


def data_layout(config: TolariaConfig) -> Layout:
    """Built-in hosts take flat features; a user model receives each data set's native sample shape."""
    return "flat" if config.host_model in ("cnn1d", "mlp") else "native"


def load_data(config: TolariaConfig) -> DataSplits:
    """The configured data set, split into train / validation / test CPU tensors.

    Raises:
        TolariaConfigError: the npz file is missing or malformed (naming tolaria.npz_path).
    """
    try:
        return load_dataset(
            config.dataset,
            samples=config.dataset_samples,
            validation_fraction=config.validation_fraction,
            seed=config.seed,
            npz_path=config.npz_path if config.dataset == "npz" else None,
            layout=data_layout(config),
            cache=_data_cache(config.data_cache_dir),
        )
    except DatasetError as err:
        raise TolariaConfigError(f"tolaria.npz_path = {config.npz_path!r}: {err}") from err
    except ValueError as err:
        # What is left to fail once the config validated is the split the fraction makes of this data set's size.
        fraction = config.validation_fraction
        raise TolariaConfigError(
            f"tolaria.validation_fraction = {fraction}: data set {config.dataset!r}: {err}"
        ) from err


def _data_cache(directory: str) -> NpzArrayCache | None:
    if not directory:
        return None
    try:
        return NpzArrayCache(Path(directory).expanduser())
    except RuntimeError:  # "~" with no home directory to expand it to: generate instead of caching
        return None


def load_factory(spec: str) -> Callable[[], object]:
    """Import ``package.module:factory`` and return the factory.

    Raises:
        TolariaConfigError: the module does not import or has no such callable.
    """
    module_name, _, attr = spec.partition(":")
    who = f"tolaria.host_model = {spec!r}"
    try:
        module = importlib.import_module(module_name)
    # Any import failure is the user's config problem, reported in one line; a module that calls sys.exit() or raises
    # KeyboardInterrupt as it imports (on a worker thread: not a Ctrl-C) would otherwise end the run without a word.
    except (Exception, KeyboardInterrupt, SystemExit) as err:
        raise TolariaConfigError(f"{who}: cannot import {module_name!r}: {_raised(err)}") from err
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise TolariaConfigError(f"{who}: module {module_name!r} has no callable {attr!r}")
    return factory  # type: ignore[no-any-return]  # getattr on a user module; callable() checked above


def build_host(config: TolariaConfig, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """The unwrapped host model on the CPU.

    Raises:
        TolariaConfigError: a user factory fails or returns something other than an nn.Module.
    """
    who = f"tolaria.host_model = {config.host_model!r}"
    features = math.prod(input_shape)
    try:
        if config.host_model == "cnn1d":
            return CNN1dHost(length=features, num_classes=num_classes)
        if config.host_model == "mlp":
            return MLPHost(in_features=features, num_classes=num_classes)
    except ValueError as err:  # the data set does not suit the built-in host (too short a signal, one class)
        data = f"the {config.dataset} data set ({features} features a sample, {num_classes} classes)"
        raise TolariaConfigError(f"{who}: cannot be built for {data}: {err}") from err
    factory = load_factory(config.host_model)
    try:
        model = factory()
    except SystemExit as err:  # a factory that calls sys.exit() would end the run without a word
        raise TolariaConfigError(f"{who}: the factory called exit({err.code!r})") from err
    # KeyboardInterrupt too: this runs on a worker thread, where no signal arrives, so it is the user's code raising
    # it (it ended the run as if Ctrl-C had been pressed: exit 130, no word).
    except (Exception, KeyboardInterrupt) as err:
        raise TolariaConfigError(f"{who}: the factory raised {_raised(err)}") from err
    if not isinstance(model, nn.Module):
        raise TolariaConfigError(f"{who}: the factory returned {type(model).__name__}, not an nn.Module")
    _materialise_lazy(model, input_shape, who)
    if not any(p.requires_grad for p in model.parameters()):
        raise TolariaConfigError(f"{who}: the model has no trainable parameter (none requires grad)")
    return model


def _materialise_lazy(model: nn.Module, input_shape: tuple[int, ...], who: str) -> None:
    """Give a model's lazy modules (``nn.LazyLinear``, ...) their parameters with one eval-mode forward on a batch of
    two zero samples of the data's shape, as PyTorch's own dry run does: the parameter count, the slot shapes and the
    optimizer all need real tensors. Their initialisation draws from torch's global RNG right after the factory's own
    draws, so every build from the same seed (the check, the run's, each restore and a resume) makes the same weights.

    Raises:
        TolariaConfigError: the forward fails, or leaves a parameter or buffer uninitialised (a lazy module it never
            calls).
    """
    if not _lazy_tensors(model):
        return
    batch = torch.zeros(2, *input_shape)
    was_training = model.training
    model.eval()  # no BatchNorm statistics, no dropout draws: only the lazy modules' initialisation uses the RNG
    try:
        with torch.no_grad():
            model(batch)
    # Whatever the user's forward raises, KeyboardInterrupt and SystemExit included (see _fitting_shapes).
    except (Exception, KeyboardInterrupt, SystemExit) as err:
        raise TolariaConfigError(
            f"{who}: the model's lazy modules could not be initialised by a forward on a batch of shape"
            f" {list(batch.shape)}: {_raised(err)}"
        ) from err
    finally:
        model.train(was_training)
    left = _lazy_tensors(model)
    if left:
        raise TolariaConfigError(
            f"{who}: {left[0]!r} is still uninitialised after a forward on a batch of shape {list(batch.shape)} (a lazy"
            " module the forward never calls)"
        )


def _lazy_tensors(model: nn.Module) -> list[str]:
    named = [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]
    return [name for name, tensor in named if nn.parameter.is_lazy(tensor)]


def _raised(err: BaseException) -> str:
    """``Type: message``, or the bare type when the message is empty (``raise KeyboardInterrupt``)."""
    text = str(err)
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def check_config(config: TolariaConfig, slot_targets: Sequence[str] = ()) -> None:
    """Fail fast, before a run starts, on a host model, slot targets, initial seed slots or blueprints, npz file or
    validation split that cannot be used. Blocking (file I/O, loads the data set, builds the host once).

    Raises:
        TolariaConfigError: naming the key and value.
    """
    try:
        resolve_device(config.device)
    except ValueError as err:
        hint = '"auto" picks CUDA when present'
        raise TolariaConfigError(f"tolaria.device = {config.device!r}: {err} ({hint})") from err
    # The npz file, and the validation split once the data's size is known (MNIST-1D from its cache: a few ms).
    splits = load_data(config)
    # The data's real shapes: a built-in host too large for its samples, and a user model's lazy modules, are then
    # found here, before the run directory is claimed.
    slots = wrap_host(config, build_host(config, splits.input_shape, splits.num_classes), slot_targets)
    catalogue = default_catalogue()
    for index, spec in enumerate(config.initial_seeds):
        slot, _, blueprint_id = spec.partition("=")
        if slot not in slots:
            raise TolariaConfigError(f"{_initial_seed(index, spec)}: {_no_slot(slot, slots)}")
        if blueprint_id not in catalogue:
            known = ", ".join(catalogue.ids)
            raise TolariaConfigError(f"{_initial_seed(index, spec)}: no blueprint {blueprint_id!r} (known: {known})")


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

    Eval mode and no_grad: BatchNorm statistics and the RNGs are left exactly as they were.
    """
    shapes: dict[str, SlotShape | str] = {}
    declared = kinds or {}
    handles = []
    for name in names:

        def hook(_m: nn.Module, _i: object, out: object, name: str = name) -> None:
            problem = rebuild_problem(out) if isinstance(out, tuple) else None
            if problem is not None:
                shapes[name] = problem
                return
            tensor = out[0] if isinstance(out, tuple) else out
            shapes[name] = _slot_shape(tensor, declared.get(name))

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


def _fitting_shapes(
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
        raise TolariaConfigError(f"{source}: the model cannot take {data}: {type(err).__name__}: {err}") from err
    expected = [len(sample), splits.num_classes]
    if not isinstance(output, torch.Tensor) or list(output.shape) != expected:
        got = f"shape {list(output.shape)}" if isinstance(output, torch.Tensor) else type(output).__name__
        raise TolariaConfigError(
            f"{source}: the model must return a [batch, {splits.num_classes}] tensor of class scores for {data}"
            f" ({splits.num_classes} classes); it returned {got} for a batch of {len(sample)}"
        )
    shapes: dict[str, SlotShape] = {}
    for name in slots:
        shape = measured.get(name, "the model's forward never calls it")
        if isinstance(shape, str):
            raise TolariaConfigError(f"{source}: slot target {name!r} cannot hold a seed: {shape}")
        shapes[name] = shape
    return shapes


def _check_trains(config: TolariaConfig, model: nn.Module, splits: DataSplits, source: str) -> None:
    """One training step's forward and backward, on a copy, on as few samples as the epoch's smallest batch: a model
    that scores in eval mode but not in training (a tuple of auxiliary outputs, an integer or detached output, a
    BatchNorm given the last batch's single sample) failed at the first step and again in every restart."""
    plan = batch_plan(config, splits)
    last = plan.dataset_size % plan.batch_size
    smallest = last if last and not plan.drop_last else plan.batch_size
    count = max(1, min(2, smallest, splits.train.num_samples))
    sample, labels = splits.train.x[:count], splits.train.y[:count]
    trial = copy.deepcopy(model).train()
    try:
        with torch.random.fork_rng(devices=[]):  # dropout draws leave the run's random streams as they were
            output = trial(sample)
            F.cross_entropy(output.float(), labels).backward()  # type: ignore[no-untyped-call]  # torch leaves backward unannotated
    except (Exception, KeyboardInterrupt, SystemExit) as err:  # whatever a user's model raises, in one line
        hint = " (the last batch of an epoch; tolaria.drop_last = true skips it)" if count == 1 and last == 1 else ""
        raise TolariaConfigError(
            f"{source}: the model cannot train on a batch of {count}{hint}: {type(err).__name__}: {err}"
        ) from err


def build_trainee(
    config: TolariaConfig,
    splits: DataSplits,
    slot_targets: Sequence[str],
    device: torch.device,
    *,
    check_training: bool = False,
) -> Trainee:
    """Seed the RNGs, build the host, wrap it at its slot targets, move it to ``device`` and build the optimizer.

    ``slot_targets`` (kasmina.slot_targets) overrides the host's own ``slot_targets`` when non-empty.
    ``check_training``: also run one training step on a copy (the run's start does, once; the trainer's rebuilds at
    every restore and rollback do not repeat it).

    Raises:
        TolariaConfigError: the host model cannot be built, a slot target matches nothing or its output fits no slot
            (not called, not a float32 tensor of rank 2 to 4), the model ends up with no slot (naming the key to
            set and modules it could name), or (``check_training``) it cannot train.
    """
    seed_everything(config.seed)
    model = build_host(config, splits.input_shape, splits.num_classes)
    host_parameters = sum(p.numel() for p in model.parameters())
    slots = wrap_host(config, model, slot_targets)
    shapes = _fitting_shapes(config, model, list(slots), splits)
    for name, shape in shapes.items():
        # Kasmina admits a CHANNEL vector of one entry per feature; the slot must weigh the same axis.
        slots[name].channel_dim = shape.feature_axis
    if check_training:
        _check_trains(config, model, splits, f"tolaria.host_model = {config.host_model!r}")
    channels_last = config.channels_last and any(isinstance(m, nn.Conv2d) for m in model.modules())
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # Module.to accepts it
    model.train()
    trainee = Trainee(
        model=model,
        optimizer=build_optimizer(config, model, device),
        slots=slots,
        slot_shapes=shapes,
        device=device,
        autocast_dtype=resolve_precision(config, device),
        channels_last=channels_last,
        host_parameters=host_parameters,
        seed_lr_scale=config.seed_lr_scale,
        incubation_lr_scale=config.incubation_lr_scale,
    )
    if config.initial_seeds:
        attach_initial_seeds(config, trainee)
    return trainee


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
        try:
            wrap(model, list(targets))
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


def attach_initial_seeds(config: TolariaConfig, trainee: Trainee) -> None:
    """Attach ``tolaria.initial_seeds`` before step 0: each a fossilized seed (residual, part of the host and of
    the host's optimizer group), built from its blueprint with default parameters; their attach events become
    ``trainee.initial_grafts``. Deterministic in ``tolaria.seed``; never touches torch's global RNG.

    Raises:
        TolariaConfigError: a spec names no slot of the host, a blueprint not in the catalogue, or one that does
            not fit the slot.
    """
    applier = BoundaryApplier(trainee, [])
    blend = BlendConfig(mode=BlendMode.RESIDUAL)
    for index, spec in enumerate(config.initial_seeds):
        slot, _, blueprint_id = spec.partition("=")
        who = _initial_seed(index, spec)
        shape = trainee.slot_shapes.get(slot)
        if slot not in trainee.slots or shape is None:
            raise TolariaConfigError(f"{who}: {_no_slot(slot, trainee.slots)}")
        op = SeedOp(
            kind="attach",
            slot=slot,
            seed_id=initial_seed_id(slot),
            stage=SeedLifecycleStage.FOSSILIZED,
            blueprint_id=blueprint_id,
            blend=blend,
            reason="initial_seed",
        )

        def build(op: SeedOp, shape: SlotShape = shape, index: int = index) -> nn.Module:
            return rebuild_seed(op, {}, shape, seed=config.seed * 1000 + index)

        try:
            outcome = applier.apply(op, step=0, take_module=build)
        except ValueError as err:
            raise TolariaConfigError(f"{who}: {err}") from err
        if not outcome.applied:
            raise TolariaConfigError(f"{who}: {outcome.error}")
    trainee.initial_grafts = list(applier.log)


def _initial_seed(index: int, spec: str) -> str:
    return f"tolaria.initial_seeds[{index}] = {spec!r}"


def _no_slot(slot: str, slots: Mapping[str, object]) -> str:
    return f"no slot after {slot!r} (slots: {', '.join(slots)})"


def build_optimizer(config: TolariaConfig, model: nn.Module, device: torch.device) -> torch.optim.Optimizer:
    """One named host group (``name = "host"``, ``param_names``) with every trainable parameter.

    Fused kernels on the CPU as on CUDA: on the default host, AdamW's step takes about 150 us fused against 320
    with foreach kernels (SGD 107 against 154), some 7 % of a training step. ``device`` is where the parameters
    will live (torch checks that fused kernels exist for it on the first step).
    """
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    group: dict[str, object] = {
        "params": [p for _, p in named],
        GROUP_NAME_KEY: HOST_GROUP,
        PARAM_NAMES_KEY: [n for n, _ in named],
    }
    fused = device.type in ("cpu", "cuda")
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            [group],
            lr=config.lr,
            momentum=config.momentum,
            weight_decay=config.weight_decay,
            fused=fused,
            foreach=not fused,
        )
    kind = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
    return kind([group], lr=config.lr, weight_decay=config.weight_decay, fused=fused, foreach=not fused)


def batch_plan(config: TolariaConfig, splits: DataSplits) -> BatchPlan:
    """The deterministic batch order of the training split."""
    return BatchPlan(
        dataset_size=splits.train.num_samples,
        batch_size=config.batch_size,
        seed=config.seed,
        drop_last=config.drop_last and splits.train.num_samples >= config.batch_size,
    )
