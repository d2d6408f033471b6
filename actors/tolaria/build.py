"""Config -> what Tolaria trains: seeded RNGs, the data splits, the Trainee (wrapped host, optimizer, initial seeds).

Everything here runs on the train lane thread (or, for ``check_config``, on any worker thread before the run starts):
it builds tensors and may import the user's module. The host model itself is built in host_model.py, its slots
wrapped in and measured in host_slots.py.
"""

from __future__ import annotations

import copy
import dataclasses
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, final

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from actors.tolaria.boundary import BoundaryApplier, rebuild_seed
from actors.tolaria.data_cache import NpzArrayCache, announced
from actors.tolaria.host_model import BUILT_IN_HOSTS, TolariaConfigError, build_host, check_new_each_call
from actors.tolaria.host_slots import fitting_shapes, wrap_host
from esper.nn.blueprints import SlotShape, default_catalogue
from esper.nn.data import DatasetError, load_dataset
from esper.nn.data_batches import BatchPlan
from esper.nn.optim_migration import GROUP_NAME_KEY
from esper.nn.precision import native_bf16
from esper.nn.slots import SlotMode
from esper.runtime.failure_trace import raised_in_one_line
from esper.runtime.lanes import resolve_device
from schemas.boundary import SeedOp
from schemas.config import initial_seed_id
from schemas.control import BlendConfig
from schemas.domain_enums import BlendMode
from schemas.enums import SeedLifecycleStage

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    from actors.tolaria.boundary import GraftEvent
    from esper.nn.data import DataSplits, Layout
    from esper.nn.slots import SeedSlot
    from schemas.config import TolariaConfig

HOST_GROUP = "host"
PARAM_NAMES_KEY = "param_names"


@final
@dataclass(slots=True)
class Trainee:
    """The model being trained and everything that changes with its architecture. Lane-thread only.

    ``slot_shapes`` maps each slot (by the name of the module it follows) to the activation it sees;
    ``paused`` maps a paused slot to the mode it will resume in; ``initial_grafts`` is the graft log of the seeds
    ``tolaria.initial_seeds`` attached before step 0 (the start of every graft log of this trainee);
    ``seed_lr_scale`` multiplies the host's learning rate for a grafted seed whose command names no rate;
    ``incubation_lr_scale`` multiplies a seed's rate while it is in TRAINING.
    ``isolation_violations`` holds each seed's violations since it was grafted, those before the restored state
    included (Kasmina charges each seed what its total rose by); ``violations_offset`` is what the packet's session
    total leaves out of their sum (see ``session_violations``).
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
    violations_offset: int = 0
    seed_lr_scale: float = 1.0
    incubation_lr_scale: float = 1.0

    def session_violations(self) -> int:
        """The violations this incarnation's monitor counted, over every seed (the state packet's total)."""
        return sum(self.isolation_violations.values()) - self.violations_offset

    def seed_parameters(self) -> dict[str, int]:
        """Parameter elements of each attached seed, by seed id."""
        out: dict[str, int] = {}
        for slot in self.slots.values():
            seed = slot.seed_module
            if seed is not None and slot.seed_id is not None:
                out[slot.seed_id] = sum(p.numel() for p in seed.parameters())
        return out

    def fossilized_seed_parameters(self) -> int:
        """Parameter elements of the seeds fossilized into the host (initial seeds included)."""
        sizes = self.seed_parameters()
        return sum(
            sizes.get(slot.seed_id, 0)
            for slot in self.slots.values()
            if slot.seed_id is not None and slot.mode is SlotMode.FOSSILIZED
        )


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global RNGs (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def resolve_precision(config: TolariaConfig, device: torch.device) -> torch.dtype | None:
    """The autocast dtype: bf16 when asked (``precision = "bf16"`` or ``amp``) on any device, and under "auto" on a
    CUDA GPU that computes bf16 (compute capability 8.0 or newer); else fp32 (None: no autocast). May initialise
    CUDA."""
    if config.amp or config.precision == "bf16":
        return torch.bfloat16
    if config.precision == "auto" and native_bf16(device):
        return torch.bfloat16
    return None


def emulated_bf16(config: TolariaConfig, device: torch.device) -> bool:
    """Whether the run was asked for bf16 autocast on a CUDA GPU that only emulates bf16 (compute capability below
    8.0): honoured, as asked, but slower than fp32 there."""
    return device.type == "cuda" and resolve_precision(config, device) is not None and not native_bf16(device)


def data_layout(config: TolariaConfig) -> Layout:
    """Built-in hosts take flat features; a user model receives each data set's native sample shape."""
    return "flat" if config.host_model in BUILT_IN_HOSTS else "native"


def load_data(config: TolariaConfig, announce: Callable[[str], None] | None = None) -> DataSplits:
    """The configured data set, split into train / validation / test CPU tensors. ``announce`` is told, in a line,
    before MNIST-1D is generated (not found in its cache): that takes about 0.7 ms a sample, minutes for a large one.

    Raises:
        TolariaConfigError: the npz file is missing or malformed (naming tolaria.npz_path).
    """
    cache = _data_cache(config.data_cache_dir)
    try:
        splits = load_dataset(
            config.dataset,
            samples=config.dataset_samples,
            validation_fraction=config.validation_fraction,
            seed=config.seed,
            npz_path=config.npz_path if config.dataset == "npz" else None,
            layout=data_layout(config),
            cache=announced(cache, announce, config.dataset_samples) if announce is not None else cache,
        )
    except DatasetError as err:
        # The key's value names the file: the error's own naming of it would say it twice.
        raise TolariaConfigError(f"tolaria.npz_path = {config.npz_path!r}: {err.problem}") from err
    except ValueError as err:
        # What is left to fail once the config validated is the split the fraction makes of this data set's size.
        fraction = config.validation_fraction
        raise TolariaConfigError(
            f"tolaria.validation_fraction = {fraction}: data set {config.dataset!r}: {err}"
        ) from err
    if cache is None or not cache.events:
        return splits
    return dataclasses.replace(splits, cache_events=(*splits.cache_events, *cache.events))


def _data_cache(directory: str) -> NpzArrayCache | None:
    if not directory:
        return None
    try:
        return NpzArrayCache(Path(directory).expanduser())
    except RuntimeError:  # "~" with no home directory to expand it to: generate instead of caching
        return None


def check_config(
    config: TolariaConfig, slot_targets: Sequence[str] = (), announce: Callable[[str], None] | None = None
) -> DataSplits:
    """Fail fast, before a run starts, on a host model, slot targets, initial seed slots or blueprints, npz file or
    validation split that cannot be used, and return the data set it loaded (the run trains on it: a large npz file
    is read once). Blocking (file I/O, loads the data set, builds the host once). ``announce``: see load_data.

    Raises:
        TolariaConfigError: naming the key and value.
    """
    try:
        resolve_device(config.device)
    except ValueError as err:
        hint = '"auto" picks CUDA when present'
        raise TolariaConfigError(f"tolaria.device = {config.device!r}: {err} ({hint})") from err
    # The npz file, and the validation split once the data's size is known (MNIST-1D from its cache: a few ms).
    splits = load_data(config, announce)
    # The data's real shapes: a built-in host too large for its samples, and a user model's lazy modules, are then
    # found here, before the run directory is claimed.
    host = build_host(config, splits.input_shape, splits.num_classes)
    check_new_each_call(config, host, splits.input_shape, splits.num_classes)
    slots = wrap_host(config, host, slot_targets)
    catalogue = default_catalogue()
    for index, spec in enumerate(config.initial_seeds):
        slot, _, blueprint_id = spec.partition("=")
        if slot not in slots:
            raise TolariaConfigError(f"{_initial_seed(index, spec)}: {_no_slot(slot, slots)}")
        if blueprint_id not in catalogue:
            known = ", ".join(catalogue.ids)
            raise TolariaConfigError(f"{_initial_seed(index, spec)}: no blueprint {blueprint_id!r} (known: {known})")
    check_first_step(config, host, list(slots), splits)
    return splits


def check_first_step(config: TolariaConfig, model: nn.Module, slots: Sequence[str], splits: DataSplits) -> None:
    """The shape fit, then one training step on a copy in the memory format the run trains in (channels_last: a
    ``.view`` of an activation passed a contiguous trial, then failed at every step). Run by the start's checks, so a
    model that cannot train is refused before the run directory is made."""
    fitting_shapes(config, model, slots, splits)  # its errors first: data the model cannot take, a wrong output
    source = f"tolaria.host_model = {config.host_model!r}"
    _check_trains(config, model, splits, source, channels_last=uses_channels_last(config, model))


def uses_channels_last(config: TolariaConfig, model: nn.Module) -> bool:
    """Whether the run keeps the model and its 4-D batches channels_last: asked for, and the model has a Conv2d."""
    return config.channels_last and any(isinstance(m, nn.Conv2d) for m in model.modules())


def _check_trains(
    config: TolariaConfig, model: nn.Module, splits: DataSplits, source: str, *, channels_last: bool = False
) -> None:
    """One training step's forward and backward, on a copy, on as few samples as the epoch's smallest batch: a model
    that scores in eval mode but not in training (a tuple of auxiliary outputs, an integer or detached output, a
    BatchNorm given the last batch's single sample) failed at the first step and again in every restart.
    ``channels_last``: the step runs in the memory format the run will use (a ``.view`` of a channels_last
    activation fails where a contiguous one passes)."""
    plan = batch_plan(config, splits)
    last = plan.dataset_size % plan.batch_size
    smallest = last if last and not plan.drop_last else plan.batch_size
    count = max(1, min(2, smallest, splits.train.num_samples))
    sample, labels = splits.train.x[:count], splits.train.y[:count]
    try:
        _trial_step(model, sample, labels, channels_last=channels_last)
    except (Exception, KeyboardInterrupt, SystemExit) as err:  # whatever a user's model raises, in one line
        hint = " (the last batch of an epoch; tolaria.drop_last = true skips it)" if count == 1 and last == 1 else ""
        if channels_last and _trains_contiguous(model, sample, labels):
            hint = " in channels_last memory format (tolaria.channels_last = true: use .reshape in forward, or set"
            hint += " tolaria.channels_last = false)"
        raise TolariaConfigError(
            f"{source}: the model cannot train on a batch of {count}{hint}: {raised_in_one_line(err)}"
        ) from err


def _trial_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, channels_last: bool) -> None:
    """A forward and backward in training mode on a copy of ``model``, laid out as the stepper lays out the run's."""
    trial = copy.deepcopy(model).train()
    if channels_last:
        trial.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # Module.to accepts it
        if x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
    with torch.random.fork_rng(devices=[]):  # dropout draws leave the run's random streams as they were
        output = trial(x)
        F.cross_entropy(output.float(), y).backward()  # type: ignore[no-untyped-call]  # torch leaves backward unannotated


def _trains_contiguous(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> bool:
    """Whether the trial that failed channels_last passes in the contiguous format: the layout is then the cause."""
    try:
        _trial_step(model, x, y, channels_last=False)
    except (Exception, KeyboardInterrupt, SystemExit):  # noqa: BLE001  # it fails either way: the first error is said
        return False
    return True


def build_trainee(
    config: TolariaConfig,
    splits: DataSplits,
    slot_targets: Sequence[str],
    device: torch.device,
) -> Trainee:
    """Seed the RNGs, build the host, wrap it at its slot targets, move it to ``device`` and build the optimizer.

    ``slot_targets`` (kasmina.slot_targets) overrides the host's own ``slot_targets`` when non-empty. The trial
    training step is the start's, once, in ``check_first_step`` (the trainer's rebuilds at every restore and rollback
    do not repeat it).

    Raises:
        TolariaConfigError: the host model cannot be built, a slot target matches nothing or its output fits no slot
            (not called, not a float32 tensor of rank 2 to 4), the model ends up with no slot (naming the key to
            set and modules it could name).
    """
    seed_everything(config.seed)
    model = build_host(config, splits.input_shape, splits.num_classes)
    host_parameters = sum(p.numel() for p in model.parameters())
    slots = wrap_host(config, model, slot_targets)
    shapes = fitting_shapes(config, model, list(slots), splits)
    for name, shape in shapes.items():
        # Kasmina admits a CHANNEL vector of one entry per feature; the slot must weigh the same axis.
        slots[name].channel_dim = shape.feature_axis
    channels_last = uses_channels_last(config, model)
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
