"""A recorded host-only baseline (``nissa.baseline_run``) for the summary's host-only figure.

It is read, checked against this run's training setup, and turned into the summary's host-only figure."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Final

import msgspec

from esper.config import load_config
from esper.data_fingerprint import check_same_data
from esper.runtime.errors import ConfigError
from schemas.base import Record
from schemas.run import RunSummary

if TYPE_CHECKING:
    from esper.nn.data import DataSplits
    from schemas.config import RunConfig, TolariaConfig
    from schemas.run import GrowthFigures

_KEY: Final = "nissa.baseline_run"

SAME_TRAINING: Final = (
    "dataset",
    "dataset_samples",
    "validation_fraction",
    "seed",
    "host_model",
    "epochs",
    "batch_size",
    "lr",
    "optimizer",
    "momentum",
    "weight_decay",
    "lr_schedule",
    "warmup_steps",
    "lr_min_factor",
    "grad_clip_norm",
    "drop_last",
    "initial_seeds",
    "precision",
    "amp",
)
"""The tolaria keys a baseline must share with the run it is compared with: the same data, split, host and training,
so the only difference left is growth. Not ``npz_path``: an npz file's bytes are compared (data.json), wherever it is
now, so a baseline trained on a copy of the file, or before it was moved, compares."""


class RecordedBaseline(Record, frozen=True):
    """The host-only run a summary compares against: its id, epochs and final validation accuracy."""

    run_id: str
    epochs: int
    val_accuracy: float


def load_baseline(config: RunConfig, data: DataSplits | None = None) -> RecordedBaseline | None:
    """Read ``nissa.baseline_run`` (a finished host-only run's directory); None when the key is unset. ``data``: this
    run's loaded splits, compared with the baseline's record of a built-in data set (see check_same_data).

    Blocks on file I/O: call it from a thread.

    Raises:
        ConfigError: one line naming the key, the path and what is wrong: no such run, its config or summary unreadable,
            a run that did not complete, grew seeds, has no validation accuracy, or trained differently (the first
            differing key of ``SAME_TRAINING``, with both values).
    """
    value = config.nissa.baseline_run
    if value is None:
        return None
    directory = Path(value)
    where = f"{_KEY}: {directory}"
    if not directory.is_dir():
        raise ConfigError(f"{where}: not a run directory")
    try:
        theirs = load_config(directory / "config.toml", written=True)
    except ConfigError as err:
        raise ConfigError(f"{where}: its config: {err}") from err
    _check_same_training(where, theirs.tolaria, config.tolaria)
    try:
        check_same_data(directory, config.tolaria, where=where, data=data)
    except OSError as err:
        raise ConfigError(f"{where}: cannot read tolaria.npz_path: {err.strerror or err}") from err
    path = directory / theirs.nissa.summary_json
    try:
        summary = msgspec.json.decode(path.read_bytes(), type=RunSummary)
    except FileNotFoundError as err:
        raise ConfigError(f"{where}: no {path.name}; the run has not finished") from err
    except (OSError, msgspec.ValidationError, msgspec.DecodeError) as err:
        raise ConfigError(f"{where}: {path.name} is not a run summary: {err}") from err
    if summary.status != "completed":
        raise ConfigError(f"{where}: the run did not complete (status {summary.status})")
    training, growth = summary.training, summary.growth
    if training is None or training.val_accuracy is None or growth is None:
        raise ConfigError(f"{where}: the run recorded no validation accuracy or growth figures")
    if growth.seeds:
        raise ConfigError(
            f"{where}: the run grew {_seeds(sum(growth.seeds.values()))}; a baseline must be host-only "
            "(run it with --set kasmina.max_active_seeds=0)"
        )
    return RecordedBaseline(run_id=summary.run_id, epochs=training.epochs, val_accuracy=training.val_accuracy)


def _check_same_training(where: str, theirs: TolariaConfig, ours: TolariaConfig) -> None:
    for key in SAME_TRAINING:
        a, b = getattr(theirs, key), getattr(ours, key)
        if a != b:
            raise ConfigError(f"{where}: tolaria.{key} is {a!r} there and {b!r} here; a baseline must train the same")


def with_baseline(growth: GrowthFigures, baseline: RecordedBaseline | None) -> GrowthFigures:
    """``growth`` with its host-only figure taken from ``baseline`` (unchanged when there is none)."""
    if baseline is None:
        return growth
    return msgspec.structs.replace(
        growth,
        baseline_val_accuracy=baseline.val_accuracy,
        baseline_epoch=baseline.epochs,
        baseline_source="recorded",
        baseline_run=baseline.run_id,
    )


def _seeds(count: int) -> str:
    return "1 seed" if count == 1 else f"{count} seeds"
