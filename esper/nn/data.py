"""The data sets Tolaria trains on (MNIST-1D, scikit-learn digits, the user's .npz), as CPU tensors in three splits."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import version as package_version
from typing import TYPE_CHECKING, Final, Literal, final, get_args

import numpy as np
import numpy.typing as npt
import torch

from esper.nn.data_npz import DatasetError as DatasetError
from esper.nn.data_npz import NpzArrays, load_npz

if TYPE_CHECKING:
    from pathlib import Path

DatasetName = Literal["mnist1d", "digits", "npz"]
Arrays4 = tuple[npt.NDArray[np.float32], npt.NDArray[np.int64], npt.NDArray[np.float32], npt.NDArray[np.int64]]
"""x_train, y_train, x_test, y_test."""
ArrayCache = Callable[[str, Callable[[], Arrays4]], Arrays4]
"""``cache(key, generate)``: the arrays stored under ``key``, else ``generate()`` (then kept under ``key``)."""
Layout = Literal["flat", "native"]

MNIST1D_CLASSES: Final = 10
# The package's standard data set: 5000 samples generated from seed 42, the first 80% for training.
MNIST1D_SEED: Final = 42
MNIST1D_TRAIN_FRACTION: Final = 0.8
DIGITS_TEST_FRACTION: Final = 0.2

# Salts keep the test split and the validation split on independent random streams of one seed.
_TEST_SPLIT_SALT: Final = 0x7E57
_VALIDATION_SPLIT_SALT: Final = 0x7A11D


@final
@dataclass(frozen=True, slots=True)
class DeferredLog:
    """A log line recorded now and said later: the start's checks load the data before the run's log is configured,
    when a line would reach the caller's stdout in structlog's default format and never the run's events.jsonl."""

    level: Literal["info", "warning"]
    event: str
    fields: tuple[tuple[str, str | int], ...]


@final
@dataclass(frozen=True, slots=True)
class TensorPair:
    """Features and labels of one split or one batch.

    ``x`` is float32 ``[samples, *input_shape]`` and ``y`` is int64 ``[samples]``, on the same device.
    """

    x: torch.Tensor
    y: torch.Tensor

    def __post_init__(self) -> None:
        if self.x.dtype != torch.float32:
            raise TypeError(f"TensorPair.x must be float32, got {self.x.dtype}")
        if self.y.dtype != torch.int64:
            raise TypeError(f"TensorPair.y must be int64, got {self.y.dtype}")
        if self.y.dim() != 1 or self.x.dim() < 1 or self.x.shape[0] != self.y.shape[0]:
            raise ValueError(f"TensorPair shapes disagree: x {tuple(self.x.shape)}, y {tuple(self.y.shape)}")

    @property
    def num_samples(self) -> int:
        """Number of samples (rows)."""
        return int(self.y.shape[0])


@final
@dataclass(frozen=True, slots=True)
class DataSplits:
    """A data set ready to train on: train, validation and test splits as CPU tensors.

    ``input_shape`` is the shape of one sample (``x.shape[1:]``); labels lie in ``[0, num_classes)``.
    The validation split was carved from the training data, so the three splits are disjoint.
    ``cache_events``: what this load had to say (its cache: a file stored, a corrupt one replaced, a directory it
    could not write; an npz file's x arrays of a float and an integer dtype), for the caller to log once its run's
    log exists.
    """

    train: TensorPair
    val: TensorPair
    test: TensorPair
    num_classes: int
    input_shape: tuple[int, ...]
    name: DatasetName
    cache_events: tuple[DeferredLog, ...] = ()


def load_dataset(
    name: DatasetName,
    *,
    samples: int = 5000,
    validation_fraction: float = 0.2,
    seed: int = 0,
    npz_path: str | Path | None = None,
    layout: Layout = "flat",
    cache: ArrayCache | None = None,
) -> DataSplits:
    """Load a data set by name and split it into train, validation and test.

    Nothing is downloaded. ``mnist1d`` is generated offline by the ``mnist1d`` package from its standard seed, so
    the data (and its 80/20 train/test split) is the same on every call; ``digits`` is scikit-learn's bundled 8x8
    digits with a seeded, stratified 80/20 train/test split; ``npz`` reads the user's file (see ``load_npz``).
    The validation split is carved from the training data, stratified by label and seeded by ``seed``.
    Neither the global numpy nor the Python RNG is consumed or changed. Runs on the calling thread and takes about
    a second for 5000 MNIST-1D samples: call it off the event loop.

    Args:
        name: which data set.
        samples: total MNIST-1D samples before the train/test split, a positive multiple of 10 (the package makes
            the same number of each digit). Ignored by ``digits`` and ``npz``.
        validation_fraction: share of the training data moved to the validation split, in ``[0, 1)``; 0 gives an
            empty validation split.
        seed: seeds the validation split (and the digits train/test split).
        npz_path: the file for ``npz``; must be None for the other data sets.
        layout: ``"flat"`` gives ``x`` as ``[samples, features]``; ``"native"`` keeps each data set's own sample
            shape: mnist1d ``[1, 40]``, digits ``[1, 8, 8]``, npz as stored.
        cache: where generated MNIST-1D arrays are kept between runs (generation takes a second or two); called
            with a key naming the package version and arguments, and the function that generates the arrays.

    Raises:
        ValueError: an argument is out of range (the message names it).
        DatasetError: the npz file is missing or malformed.
    """
    _check_arguments(name, samples, validation_fraction, seed, npz_path, layout)
    said: tuple[DeferredLog, ...] = ()
    if name == "mnist1d":
        key = f"mnist1d-{package_version('mnist1d')}-n{samples}-seed{MNIST1D_SEED}-train{MNIST1D_TRAIN_FRACTION}"
        generated = cache(key, lambda: _mnist1d(samples)) if cache is not None else _mnist1d(samples)
        x_train, y_train, x_test, y_test = generated
    elif name == "digits":
        x_train, y_train, x_test, y_test = _digits(seed)
    else:
        assert npz_path is not None  # _check_arguments guarantees it
        arrays = load_npz(npz_path)
        x_train, y_train, x_test, y_test = arrays.x_train, arrays.y_train, arrays.x_test, arrays.y_test
        said = (*_dtypes_differ(npz_path, *arrays.x_dtypes), *_classes_absent(npz_path, arrays))
    if layout == "flat":
        x_train = x_train.reshape(x_train.shape[0], -1)
        x_test = x_test.reshape(x_test.shape[0], -1)
    keep, hold = stratified_split(y_train, validation_fraction, seed=seed, salt=_VALIDATION_SPLIT_SALT)
    if keep.size == 0:
        raise ValueError(
            f"validation_fraction {validation_fraction} leaves no training samples out of {y_train.shape[0]}"
        )
    if hold.size == 0 and validation_fraction > 0:  # 0 asks for no validation set (the config refuses it)
        # Without a validation set no epoch could be judged: no metrics row, no decision, nothing would ever grow.
        raise ValueError(
            f"validation_fraction {validation_fraction} holds out no validation sample of {y_train.shape[0]}"
        )
    num_classes = int(max(y_train.max(), y_test.max())) + 1
    return DataSplits(
        train=_pair(x_train[keep], y_train[keep]),
        val=_pair(x_train[hold], y_train[hold]),
        test=_pair(x_test, y_test),
        num_classes=num_classes,
        input_shape=tuple(int(d) for d in x_train.shape[1:]),
        name=name,
        cache_events=said,
    )


def _dtypes_differ(path: str | Path, train: str, test: str) -> tuple[DeferredLog, ...]:
    """A warning when one x array was stored as floats and the other as integers: both become float32 as they are,
    so a model trained on one scale (0..1) was tested on another (0..255), silently."""
    if (np.dtype(train).kind == "f") == (np.dtype(test).kind == "f"):
        return ()
    detail = (
        f"x_train is {train} but x_test is {test}: both are converted to float32 without rescaling, so the test split"
        " may be on another scale than training; store them in one dtype"
    )
    return (DeferredLog("warning", "npz_dtypes_differ", (("npz_path", str(path)), ("detail", detail))),)


_LISTED_CLASSES = 10  # a file missing hundreds of classes is told the first ten and how many


def _classes_absent(path: str | Path, arrays: NpzArrays) -> tuple[DeferredLog, ...]:
    """A warning naming the class indices below the largest training label that y_train never uses: labels 1..K (no
    class 0) or a test class missing from training trained silently, with an output the model never learns."""
    absent = arrays.absent_classes
    if not absent:
        return ()
    outputs = int(arrays.y_train.max()) + 1
    listed = ", ".join(str(c) for c in absent[:_LISTED_CLASSES])
    if len(absent) > _LISTED_CLASSES:
        listed += f", ... ({len(absent)} in all)"
    hint = f" (labels 1..{outputs - 1}? class indices start at 0)" if absent == (0,) else ""
    one = len(absent) == 1
    said = f"class {listed} never appears" if one else f"classes {listed} never appear"
    detail = f"{said} in y_train{hint}: the model still gets {outputs} outputs"
    tested = int(np.isin(arrays.y_test, absent).sum())
    if tested:  # a test class missing from training: its samples are scored but can never be predicted right
        samples = "sample" if tested == 1 else "samples"
        detail += f", and y_test's {tested} {samples} of {'that class' if one else 'those classes'} cannot be learned"
    fields: tuple[tuple[str, str | int], ...] = (("npz_path", str(path)), ("absent", len(absent)), ("detail", detail))
    return (DeferredLog("warning", "npz_classes_absent", fields),)


def stratified_split(
    labels: npt.NDArray[np.int64], fraction: float, *, seed: int, salt: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Split sample indices into (kept, held out), holding out ``round(fraction * n)`` of them.

    Each class gives up about the same share (within one sample), and the choice depends only on
    ``(labels, fraction, seed, salt)``. Both index arrays are sorted ascending and together cover ``range(n)``.

    Args:
        labels: int64 ``[n]``.
        fraction: share held out, in ``[0, 1]``.
        seed: the caller's seed.
        salt: tells independent splits of one seed apart.
    """
    n = int(labels.shape[0])
    held = round(fraction * n)
    rng = np.random.default_rng([seed, salt])
    shuffled = rng.permutation(n)
    shuffled_labels = labels[shuffled]
    # Rank of each sample within its class, in shuffled order; holding out the lowest (rank + 0.5) / class_size
    # takes from every class in proportion and always exactly `held` samples in total.
    by_class = np.argsort(shuffled_labels, kind="stable")
    _, starts, counts = np.unique(shuffled_labels[by_class], return_index=True, return_counts=True)
    rank = np.empty(n, dtype=np.int64)
    rank[by_class] = np.arange(n) - np.repeat(starts, counts)
    class_size = np.empty(n, dtype=np.int64)
    class_size[by_class] = np.repeat(counts, counts)
    priority = (rank + 0.5) / class_size
    ordered = shuffled[np.argsort(priority, kind="stable")]
    return np.sort(ordered[held:]).astype(np.int64), np.sort(ordered[:held]).astype(np.int64)


def _check_mnist1d_samples(samples: int) -> None:
    """MNIST-1D makes as many samples of each digit: a multiple of 10, at least 10.

    Raises:
        ValueError: naming the value.
    """
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < MNIST1D_CLASSES:
        raise ValueError(f"samples must be an int >= {MNIST1D_CLASSES}, got {samples!r}")
    if samples % MNIST1D_CLASSES:
        raise ValueError(f"samples must be a multiple of {MNIST1D_CLASSES}, got {samples}")


def _check_arguments(
    name: str, samples: int, validation_fraction: float, seed: int, npz_path: str | Path | None, layout: str
) -> None:
    if name not in get_args(DatasetName):
        raise ValueError(f"name must be one of {', '.join(get_args(DatasetName))}, got {name!r}")
    if layout not in get_args(Layout):
        raise ValueError(f"layout must be one of {', '.join(get_args(Layout))}, got {layout!r}")
    if name == "mnist1d":  # the other data sets ignore it
        _check_mnist1d_samples(samples)
    if not (isinstance(validation_fraction, int | float) and 0.0 <= validation_fraction < 1.0):
        raise ValueError(f"validation_fraction must be in [0, 1), got {validation_fraction!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed!r}")
    if name == "npz" and npz_path is None:
        raise ValueError("npz_path is required when name is 'npz'")
    if name != "npz" and npz_path is not None:
        raise ValueError(f"npz_path is only for name 'npz', got it with name {name!r}")


def _mnist1d(samples: int) -> Arrays4:
    """MNIST-1D generated offline, as [n, 1, 40] features; the package's own train/test split."""
    from mnist1d.data import get_dataset_args, make_dataset  # heavy (scipy, matplotlib): load on demand

    args = get_dataset_args()
    args.num_samples = samples
    args.seed = MNIST1D_SEED
    args.train_split = MNIST1D_TRAIN_FRACTION
    # make_dataset reseeds the global numpy and Python RNGs; put the caller's state back. Not thread-safe: another
    # thread drawing from those global RNGs meanwhile would see the package's seed.
    numpy_state = np.random.get_state()
    python_state = random.getstate()
    try:
        data = make_dataset(args)
    finally:
        np.random.set_state(numpy_state)
        random.setstate(python_state)
    x_train = np.asarray(data["x"], dtype=np.float32)
    x_test = np.asarray(data["x_test"], dtype=np.float32)
    return (
        x_train.reshape(x_train.shape[0], 1, -1),
        np.asarray(data["y"], dtype=np.int64),
        x_test.reshape(x_test.shape[0], 1, -1),
        np.asarray(data["y_test"], dtype=np.int64),
    )


def _digits(seed: int) -> Arrays4:
    """scikit-learn's bundled 8x8 digits scaled to [0, 1], as [n, 1, 8, 8]; a seeded stratified train/test split."""
    from sklearn.datasets import load_digits  # heavy: load on demand

    bunch = load_digits()
    images = np.asarray(bunch.images, dtype=np.float32) / np.float32(16.0)  # pixel values are 0..16
    labels = np.asarray(bunch.target, dtype=np.int64)
    train, test = stratified_split(labels, DIGITS_TEST_FRACTION, seed=seed, salt=_TEST_SPLIT_SALT)
    x = images.reshape(images.shape[0], 1, 8, 8)
    return x[train], labels[train], x[test], labels[test]


def _pair(x: npt.NDArray[np.float32], y: npt.NDArray[np.int64]) -> TensorPair:
    # Copy so the tensors own contiguous memory and nothing aliases the numpy arrays.
    return TensorPair(
        x=torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32).copy()),
        y=torch.from_numpy(np.ascontiguousarray(y, dtype=np.int64).copy()),
    )
