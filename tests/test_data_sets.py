"""The built-in data sets: MNIST-1D generated offline, scikit-learn digits, their splits and argument checks."""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

import numpy as np
import pytest
import torch

from esper.nn.data import DataSplits, TensorPair, load_dataset, stratified_split

if TYPE_CHECKING:
    from pathlib import Path

# 1000 samples generate in a fraction of a second; the package's standard 5000 take about a second.
SMALL = 1000


@pytest.fixture(scope="module")
def mnist1d_default() -> DataSplits:
    return load_dataset("mnist1d")


@pytest.fixture(scope="module")
def mnist1d_small() -> DataSplits:
    return load_dataset("mnist1d", samples=SMALL)


def _rows(x: torch.Tensor) -> set[bytes]:
    return {row.numpy().tobytes() for row in x}


def _assert_splits_equal(a: DataSplits, b: DataSplits) -> None:
    for left, right in ((a.train, b.train), (a.val, b.val), (a.test, b.test)):
        assert torch.equal(left.x, right.x)
        assert torch.equal(left.y, right.y)
    assert (a.num_classes, a.input_shape, a.name) == (b.num_classes, b.input_shape, b.name)


def test_mnist1d_default_is_the_packages_5000_samples_split_80_20_then_validation(
    mnist1d_default: DataSplits,
) -> None:
    data = mnist1d_default
    assert data.name == "mnist1d"
    assert data.num_classes == 10
    assert data.input_shape == (40,)
    assert data.train.x.shape == (3200, 40)
    assert data.val.x.shape == (800, 40)
    assert data.test.x.shape == (1000, 40)
    for split in (data.train, data.val, data.test):
        assert split.x.dtype == torch.float32
        assert split.y.dtype == torch.int64
        assert split.x.device == torch.device("cpu")
        assert torch.isfinite(split.x).all()
        assert set(torch.unique(split.y).tolist()) == set(range(10))


def test_mnist1d_honours_the_sample_count(mnist1d_small: DataSplits) -> None:
    data = mnist1d_small
    total = data.train.num_samples + data.val.num_samples + data.test.num_samples
    assert total == SMALL
    assert data.test.num_samples == 200
    assert data.val.num_samples == 160
    # The package makes the same number of each digit.
    counts = torch.cat([data.train.y, data.val.y, data.test.y]).bincount()
    assert counts.tolist() == [SMALL // 10] * 10


def test_mnist1d_generation_is_bitwise_deterministic(mnist1d_small: DataSplits) -> None:
    _assert_splits_equal(load_dataset("mnist1d", samples=SMALL), mnist1d_small)


def test_mnist1d_leaves_the_callers_numpy_and_python_rng_state_alone() -> None:
    random.seed(1234)
    np.random.seed(4321)
    random.random()
    np.random.random()
    python_state = random.getstate()

    load_dataset("mnist1d", samples=100)

    assert random.getstate() == python_state
    after_python = [random.random() for _ in range(3)]
    after_numpy = np.random.random(3)
    random.seed(1234)
    np.random.seed(4321)
    random.random()
    np.random.random()
    assert after_python == [random.random() for _ in range(3)]
    np.testing.assert_array_equal(after_numpy, np.random.random(3))


def test_mnist1d_test_set_does_not_depend_on_the_seed_but_validation_does(mnist1d_small: DataSplits) -> None:
    other = load_dataset("mnist1d", samples=SMALL, seed=1)
    assert torch.equal(other.test.x, mnist1d_small.test.x)
    assert _rows(other.val.x) != _rows(mnist1d_small.val.x)
    assert _rows(other.train.x) | _rows(other.val.x) == _rows(mnist1d_small.train.x) | _rows(mnist1d_small.val.x)


def test_mnist1d_native_layout_has_one_channel(mnist1d_small: DataSplits) -> None:
    native = load_dataset("mnist1d", samples=SMALL, layout="native")
    assert native.input_shape == (1, 40)
    assert native.train.x.shape == (640, 1, 40)
    assert torch.equal(native.train.x.reshape(640, 40), mnist1d_small.train.x)


def test_validation_is_carved_disjointly_from_the_training_data(mnist1d_small: DataSplits) -> None:
    whole = load_dataset("mnist1d", samples=SMALL, validation_fraction=0.0)
    assert whole.val.num_samples == 0
    assert whole.val.x.shape == (0, 40)
    train_rows, val_rows = _rows(mnist1d_small.train.x), _rows(mnist1d_small.val.x)
    assert len(train_rows) == mnist1d_small.train.num_samples
    assert len(val_rows) == mnist1d_small.val.num_samples
    assert not train_rows & val_rows
    assert train_rows | val_rows == _rows(whole.train.x)
    assert not _rows(whole.train.x) & _rows(mnist1d_small.test.x)


@pytest.mark.parametrize(("fraction", "val_size"), [(0.1, 80), (0.25, 200), (0.5, 400)])
def test_validation_fraction_sets_the_split_size(fraction: float, val_size: int) -> None:
    data = load_dataset("mnist1d", samples=SMALL, validation_fraction=fraction)
    assert data.val.num_samples == val_size
    assert data.train.num_samples == 800 - val_size


def test_digits_shapes_scaling_and_stratified_80_20_split() -> None:
    data = load_dataset("digits")
    assert data.name == "digits"
    assert data.num_classes == 10
    assert data.input_shape == (64,)
    assert (data.train.num_samples, data.val.num_samples, data.test.num_samples) == (1150, 288, 359)
    assert data.train.x.dtype == torch.float32
    assert data.train.y.dtype == torch.int64
    assert float(data.train.x.min()) == 0.0
    assert float(data.train.x.max()) == 1.0
    # Stratified: every class appears in each split in about its share of the 1797 samples.
    for split, share in ((data.test, 0.2), (data.val, 0.16)):
        counts = split.y.bincount(minlength=10).tolist()
        assert all(abs(count - share * 180) <= 5 for count in counts), counts


def test_digits_split_is_deterministic_per_seed_and_differs_across_seeds() -> None:
    first = load_dataset("digits", seed=3)
    _assert_splits_equal(load_dataset("digits", seed=3), first)
    other = load_dataset("digits", seed=4)
    assert not torch.equal(other.test.x, first.test.x)
    everything = torch.cat([first.train.x, first.val.x, first.test.x])
    assert everything.shape == (1797, 64)


def test_digits_native_layout_is_one_channel_8x8() -> None:
    flat = load_dataset("digits")
    native = load_dataset("digits", layout="native")
    assert native.input_shape == (1, 8, 8)
    assert native.test.x.shape == (359, 1, 8, 8)
    assert torch.equal(native.test.x.reshape(359, 64), flat.test.x)


def test_stratified_split_holds_out_an_exact_proportional_disjoint_share() -> None:
    labels = np.repeat(np.arange(3, dtype=np.int64), [50, 30, 20])
    kept, held = stratified_split(labels, 0.3, seed=5, salt=9)
    assert held.size == 30
    assert kept.size == 70
    assert np.array_equal(np.sort(np.concatenate([kept, held])), np.arange(100))
    assert np.bincount(labels[held]).tolist() == [15, 9, 6]
    again_kept, again_held = stratified_split(labels, 0.3, seed=5, salt=9)
    assert np.array_equal(again_kept, kept)
    assert np.array_equal(again_held, held)
    _, other_held = stratified_split(labels, 0.3, seed=5, salt=10)
    assert not np.array_equal(other_held, held)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "cifar"}, "name must be one of mnist1d, digits, npz, got 'cifar'"),
        ({"name": "mnist1d", "samples": 0}, "samples must be an int >= 10, got 0"),
        ({"name": "mnist1d", "samples": 1005}, "samples must be a multiple of 10, got 1005"),
        ({"name": "mnist1d", "validation_fraction": 1.0}, r"validation_fraction must be in \[0, 1\), got 1.0"),
        ({"name": "mnist1d", "validation_fraction": -0.1}, r"validation_fraction must be in \[0, 1\), got -0.1"),
        ({"name": "mnist1d", "seed": -1}, "seed must be an int >= 0, got -1"),
        ({"name": "mnist1d", "layout": "nchw"}, "layout must be one of flat, native, got 'nchw'"),
        ({"name": "npz"}, "npz_path is required when name is 'npz'"),
        ({"name": "digits", "npz_path": "x.npz"}, "npz_path is only for name 'npz', got it with name 'digits'"),
    ],
)
def test_bad_arguments_raise_value_error_naming_the_parameter(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=f"^{message}$"):
        load_dataset(**kwargs)  # type: ignore[arg-type]  # deliberately wrong values


def test_validation_fraction_that_leaves_no_training_data_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "two.npz"
    x = np.zeros((2, 2), dtype=np.float32)
    y = np.array([0, 1], dtype=np.int64)
    np.savez(path, x_train=x, y_train=y, x_test=x, y_test=y)
    with pytest.raises(ValueError, match=r"^validation_fraction 0.9 leaves no training samples out of 2$"):
        load_dataset("npz", npz_path=path, validation_fraction=0.9)


def test_validation_fraction_that_holds_out_nothing_is_refused(tmp_path: Path) -> None:
    """0.0005 of 600 rounds to no sample: the run trained with no epoch ever judged (no metrics row, no decision)."""
    path = tmp_path / "six_hundred.npz"
    x = np.zeros((600, 2), dtype=np.float32)
    y = np.arange(600, dtype=np.int64) % 5
    np.savez(path, x_train=x, y_train=y, x_test=x[:10], y_test=y[:10])
    with pytest.raises(ValueError, match=r"^validation_fraction 0.0005 holds out no validation sample of 600$"):
        load_dataset("npz", npz_path=path, validation_fraction=0.0005)


def test_tensor_pair_checks_dtypes_and_lengths() -> None:
    with pytest.raises(TypeError, match="x must be float32"):
        TensorPair(x=torch.zeros(2, 3, dtype=torch.float64), y=torch.zeros(2, dtype=torch.int64))
    with pytest.raises(TypeError, match="y must be int64"):
        TensorPair(x=torch.zeros(2, 3), y=torch.zeros(2, dtype=torch.int32))
    with pytest.raises(ValueError, match=r"shapes disagree: x \(2, 3\), y \(3,\)"):
        TensorPair(x=torch.zeros(2, 3), y=torch.zeros(3, dtype=torch.int64))
