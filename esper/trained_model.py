"""``esper.load_model``: a run's trained, grown model rebuilt from its config.toml and one of its checkpoints."""

from __future__ import annotations

import warnings
from numbers import Integral
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec
import torch

from actors.tolaria.boundary import BoundaryApplier, replay
from actors.tolaria.build import build_trainee, load_data
from actors.tolaria.checkpoint_verify import load_latest
from actors.tolaria.checkpoints import MANIFEST, CheckpointError, checkpoint_files, read_manifest
from actors.tolaria.global_rngs import GlobalRngs
from actors.tolaria.snapshots import load_into
from esper.config_paths import absolute_paths
from esper.data_fingerprint import DATA_RECORD, DataRecord, data_record
from esper.nn.data import DataSplits, TensorPair
from esper.resume import manifest_lost, read_run_config, refuse_edited
from esper.resume_checkpoints import MODEL_CHANGED, misfit
from esper.runtime.errors import ConfigError
from esper.runtime.lanes import resolve_device

if TYPE_CHECKING:
    import os
    from collections.abc import Mapping

    from torch import nn

    from actors.tolaria.checkpoints import CheckpointInfo
    from actors.tolaria.snapshots import TrainState
    from schemas.config import RunConfig, TolariaConfig

__all__ = ["load_model"]


def load_model(
    run_dir: str | os.PathLike[str], *, step: int | None = None, device: str | torch.device = "cpu"
) -> nn.Module:
    """The model a run trained and grew, as it was at one of its checkpoints, in eval mode on ``device``.

    The run's own config.toml is read as ``--resume`` reads it; the host (``cnn1d``, ``mlp`` or the user's
    ``module:factory``, which must import as it did for the run) is built and wrapped with its slots as the run built
    it, the checkpoint's graft log is replayed onto it (each grafted seed rebuilt from its blueprint) and its weights
    are loaded: the trainer's own restore, without the optimizer's use. The checkpoint's SHA-256 must match the
    manifest (safetensors, nothing unpickled). Building the host needs the run's data set's shapes: an npz run's
    are taken from its data.json, and the file is not read (a run of an earlier version, which did not record them
    there, needs the file as it was).

    The model computes what the trainer's evaluation computed at that step: a seed still training is invisible in
    the output (its slot passes the host's activation on), a blending one is mixed in at the alpha it had reached, one
    in shadowing or probation is applied in full as in the run, a paused one is off, and a fossilized one is part of
    the host. A culled seed is gone. The trainer ran that evaluation under autocast where its precision said so (by
    default bf16 on a CUDA GPU of compute capability 8.0 or newer, none elsewhere): a forward under the same
    ``torch.autocast`` matches it. Python's, NumPy's and torch's global random streams are left as they were.

    Args:
        run_dir: the run's directory (``runs/<run-id>``).
        step: the checkpoint's global step; None: the newest that passes its checks (one that does not is passed
            over with a ``UserWarning`` naming it, and a ``checkpoint_corrupt`` log line saying why).
        device: ``"cpu"``, ``"cuda[:n]"``, ``"auto"`` or a torch.device.

    Raises:
        ConfigError: the directory or its config.toml cannot be read, or the host cannot be built from it (naming
            the key), or its npz file was moved or changed and the run recorded no shapes (naming the file).
        CheckpointError: there is no checkpoint (of ``step``: the message lists the steps there are), none usable,
            or it does not fit the model (naming the first entry that differs, as ``--resume`` does); one line.
        ValueError: ``device`` names no available device.
        TypeError: ``step`` is not an int.
    """
    if step is not None:
        given: object = step  # typed int, but a caller's may be anything
        if isinstance(given, bool) or not isinstance(given, Integral):
            # A str ("600", from argv) matched no checkpoint and was reported as a step that is not there.
            raise TypeError(f"load_model: step must be an int (a checkpoint's global step) or None, got {given!r}")
        step = int(given)
    directory = Path(run_dir)
    if not directory.is_dir():
        raise ConfigError(f"load_model: {directory}: not a run directory")
    try:
        written = read_run_config(directory)
    except OSError as err:
        raise ConfigError(f"load_model: {directory / 'config.toml'}: cannot read: {err.strerror or err}") from err
    # Another tolaria.seed draws another test split (the model scored on other samples than the run), another host
    # would not fit.
    refuse_edited(directory, written, caller="load_model", advice="put the run's values back")
    config = absolute_paths(written)
    target = resolve_device(device) if isinstance(device, str) else device
    state, info = _checkpoint(directory / "checkpoints", step)
    # The trainer's build seeds the global generators and the restore puts the checkpoint's in them: the caller's
    # streams must go on as if nothing had been loaded.
    rngs = GlobalRngs()
    try:
        return _rebuilt(config, _data(directory, config.tolaria), state, target, directory / "checkpoints" / info.file)
    finally:
        rngs.restore()


def _checkpoint(directory: Path, step: int | None) -> tuple[TrainState, CheckpointInfo]:
    """The checkpoint of ``step`` (None: the newest good one), verified and decoded as a restore does.

    Raises:
        CheckpointError: one line, as load_model says.
    """
    listed = read_manifest(directory) if directory.is_dir() else []
    steps = ", ".join(str(info.global_step) for info in listed)
    if not listed:
        files = checkpoint_files(directory)
        if files:  # --resume's wording: the files are there, but none is loaded without the manifest's SHA-256 of it
            raise CheckpointError(f"load_model: {manifest_lost(str(directory / MANIFEST), files)}")
        raise CheckpointError(f"load_model: {directory}: no checkpoint listed (the run stopped before its first?)")
    if step is not None and step not in {info.global_step for info in listed}:
        raise CheckpointError(f"load_model: {directory}: no checkpoint of step {step} (its steps: {steps})")
    try:
        found = load_latest(directory, at_most=step)
    except CheckpointError as err:
        raise CheckpointError(f"load_model: {err} (checkpoint_corrupt says why)") from err
    assert found is not None  # some are listed at or before ``step``: load_latest loads one or raises
    state, _, info = found
    wanted = listed[-1] if step is None else next(entry for entry in listed if entry.global_step == step)
    if info.global_step != wanted.global_step:
        skipped = f"{directory / wanted.file} does not pass its checks (checkpoint_corrupt says why)"
        if step is not None:
            raise CheckpointError(f"load_model: {skipped}; step=None loads the newest one that does")
        warnings.warn(f"load_model: {skipped}; loaded {info.file} instead", UserWarning, stacklevel=3)
    return state, info


def _data(directory: Path, config: TolariaConfig) -> DataSplits:
    """What the host is built and probed with: for an npz run whose data.json records the sample shape and class
    count, a stand-in of those (the file is not read: it may be large, moved or changed since); else the run's data
    set as it loads now, an npz file only while its SHA-256 is still data.json's. Blocking: loads the data set, or
    hashes the file.

    Raises:
        ConfigError: the file is moved or changed and data.json records no shapes (a run of an earlier version); or
            the data set cannot be loaded.
    """
    record = _record(directory) if config.dataset == "npz" else None
    if record is None or record.npz_sha256 is None:
        return load_data(config)  # a generated data set, or no record to check the file against
    if record.input_shape is not None and record.num_classes is not None:
        # Zeros of the recorded shape: the probe measures the slots' shapes only; every weight and buffer is the
        # checkpoint's. Reading the file too (to hash it, then to load it) only told the same shapes.
        sample = TensorPair(torch.zeros((2, *record.input_shape)), torch.zeros(2, dtype=torch.int64))
        return DataSplits(
            train=sample,
            val=sample,
            test=sample,
            num_classes=record.num_classes,
            input_shape=tuple(record.input_shape),
            name="npz",
        )
    try:
        now = data_record(config)
    except OSError as err:
        found = f"{config.npz_path} cannot be read ({err.strerror or err})"
    else:
        if now is not None and now.npz_sha256 == record.npz_sha256:
            return load_data(config)
        found = f"{config.npz_path} is SHA-256 {str(None if now is None else now.npz_sha256)[:12]}... now"
    # Probed with other data, the model's forward was blamed for the file's new shapes.
    raise ConfigError(
        f"load_model: the model's shapes come from its training data, {record.npz_path} (SHA-256"
        f" {record.npz_sha256[:12]}...), and {found}; put that file back ({directory / DATA_RECORD} of this run"
        " does not record the shapes)"
    )


def _record(directory: Path) -> DataRecord | None:
    """The run's data.json; None when it is missing or cannot be read (the data set is then loaded as it is)."""
    try:
        return msgspec.json.decode((directory / DATA_RECORD).read_bytes(), type=DataRecord)
    except (OSError, msgspec.DecodeError):
        return None


def _rebuilt(config: RunConfig, data: DataSplits, state: TrainState, device: torch.device, path: Path) -> nn.Module:
    """The trainer's restore (build, replay the graft log, load) of ``state`` onto ``device``, in eval mode.

    Raises:
        ConfigError: the host cannot be built.
        CheckpointError: the graft log does not replay onto it or the weights do not fit it.
    """
    trainee = build_trainee(config.tolaria, data, config.kasmina.slot_targets, device)
    # Only the weights matter here: the CUDA generator's saved state would be put on the device (or warned about, for
    # a CPU run's checkpoint) for nothing.
    state.rng.pop("cuda", None)
    replayed = False
    try:
        replay(BoundaryApplier(trainee), state.graft_log)
        replayed = True
        load_into(trainee, state)
    except (RuntimeError, ValueError, KeyError) as err:
        # torch's load_state_dict error is a header line ("Error(s) in loading state_dict for M:") over the keys:
        # the first line named none, so the entry that differs is named as --resume names it.
        what = _misfit(state, trainee.model) if replayed else ""
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        reason = f"{what} ({MODEL_CHANGED} load_model builds it from its code as it is now)" if what else first
        raise CheckpointError(
            f"load_model: {path} does not fit tolaria.host_model = {config.tolaria.host_model!r} as it builds now:"
            f" {reason}"
        ) from err
    return trainee.model.eval()


def _misfit(state: TrainState, model: nn.Module) -> str:
    """The first entry in which the checkpoint's weights and the rebuilt model differ (resume_checkpoints.misfit)."""
    return misfit(_shapes(state.model), _shapes(model.state_dict()))


def _shapes(entries: Mapping[str, object]) -> dict[str, tuple[int, ...] | None]:
    return {key: tuple(value.shape) if isinstance(value, torch.Tensor) else None for key, value in entries.items()}
