"""The user's .npz data set: a round trip, and a one-line DatasetError for every kind of malformed file."""

from __future__ import annotations

import io
import zipfile
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
import pytest
import torch

from esper.nn.data import DatasetError, load_dataset
from esper.nn.data_npz import load_npz

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

Arrays = dict[str, npt.NDArray[np.generic]]


def _good() -> Arrays:
    rng = np.random.default_rng(0)
    return {
        "x_train": rng.integers(0, 255, size=(30, 2, 3), dtype=np.uint8),
        "y_train": np.tile(np.array([0, 2, 5], dtype=np.int32), 10),
        "x_test": rng.integers(0, 255, size=(6, 2, 3), dtype=np.uint8),
        "y_test": np.array([0, 2, 5, 0, 2, 5], dtype=np.int32),
    }


def _save(path: Path, arrays: Arrays) -> Path:
    with path.open("wb") as file:
        np.savez(file, **arrays)  # type: ignore[arg-type]  # numpy's stub wants ArrayLike values; these are arrays
    return path


def test_npz_round_trip_keeps_values_and_converts_dtypes(tmp_path: Path) -> None:
    arrays = _good()
    path = _save(tmp_path / "mine.npz", arrays)
    data = load_dataset("npz", npz_path=path, validation_fraction=0.2, layout="native")
    assert data.name == "npz"
    assert data.num_classes == 6
    assert data.input_shape == (2, 3)
    assert (data.train.num_samples, data.val.num_samples, data.test.num_samples) == (24, 6, 6)
    assert data.train.x.dtype == torch.float32
    assert data.train.y.dtype == torch.int64
    assert torch.equal(data.test.x, torch.from_numpy(arrays["x_test"].astype(np.float32)))
    assert torch.equal(data.test.y, torch.from_numpy(arrays["y_test"].astype(np.int64)))
    # train and val together are exactly the file's training rows.
    merged = torch.cat([data.train.x, data.val.x]).reshape(30, -1).tolist()
    expected = arrays["x_train"].astype(np.float32).reshape(30, -1).tolist()
    assert sorted(merged) == sorted(expected)
    assert data.val.y.bincount(minlength=6).tolist() == [2, 0, 2, 0, 0, 2]


def test_npz_flat_layout_flattens_features(tmp_path: Path) -> None:
    path = _save(tmp_path / "mine.npz", _good())
    data = load_dataset("npz", npz_path=str(path))
    assert data.input_shape == (6,)
    assert data.test.x.shape == (6, 6)


def test_load_npz_accepts_a_str_path_and_validates(tmp_path: Path) -> None:
    path = _save(tmp_path / "mine.npz", _good())
    arrays = load_npz(str(path))
    assert arrays.x_train.dtype == np.float32
    assert arrays.y_test.dtype == np.int64


def _without(name: str) -> Callable[[Arrays], Arrays]:
    def change(arrays: Arrays) -> Arrays:
        del arrays[name]
        return arrays

    return change


def _replace(name: str, value: npt.NDArray[np.generic]) -> Callable[[Arrays], Arrays]:
    def change(arrays: Arrays) -> Arrays:
        arrays[name] = value
        return arrays

    return change


def _nan_at(name: str, value: float) -> Callable[[Arrays], Arrays]:
    def change(arrays: Arrays) -> Arrays:
        x = arrays[name].astype(np.float64)
        x[1, 0, 2] = value
        arrays[name] = x
        return arrays

    return change


MALFORMED: list[tuple[str, Callable[[Arrays], Arrays], str]] = [
    ("missing_array", _without("x_test"), "missing array 'x_test' (arrays present: x_train, y_test, y_train)"),
    ("missing_labels", _without("y_train"), "missing array 'y_train' (arrays present: x_test, x_train, y_test)"),
    ("length_mismatch", _replace("y_train", np.zeros(29, dtype=np.int64)), "x_train has 30 samples but y_train has 29"),
    ("string_features", _replace("x_test", np.full((6, 2, 3), "a")), "x_test has non-numeric dtype <U1"),
    (
        "complex_features",
        _replace("x_train", np.zeros((30, 2, 3), np.complex64)),
        "x_train has non-numeric dtype complex64",
    ),
    ("string_labels", _replace("y_test", np.full(6, "a")), "y_test has non-numeric dtype <U1"),
    ("float_labels", _replace("y_train", np.zeros(30)), "y_train labels must be integers, got dtype float64"),
    ("bool_labels", _replace("y_test", np.zeros(6, dtype=bool)), "y_test labels must be integers, got dtype bool"),
    ("negative_labels", _replace("y_test", np.array([0, 1, -1, 2, 3, 4])), "y_test has negative labels (min -1)"),
    ("2d_labels", _replace("y_test", np.zeros((6, 1), np.int64)), "y_test must have shape [samples], got (6, 1)"),
    (
        "1d_features",
        _replace("x_test", np.zeros(6, np.float32)),
        "x_test must have shape [samples, features...], got (6,)",
    ),
    (
        "feature_shapes_differ",
        _replace("x_test", np.zeros((6, 3, 2), np.float32)),
        "x_train has feature shape (2, 3) but x_test has (3, 2)",
    ),
    ("empty_features", _replace("x_train", np.zeros((0, 2, 3), np.float32)), "x_train is empty (shape (0, 2, 3))"),
    ("empty_labels", _replace("y_test", np.zeros(0, np.int64)), "y_test is empty (shape (0,))"),
    ("nan", _nan_at("x_train", float("nan")), "x_train contains NaN or inf values (the first in sample 1)"),
    ("inf", _nan_at("x_test", float("-inf")), "x_test contains NaN or inf values (the first in sample 1)"),
    ("one_class", _replace("y_train", np.zeros(30, np.int64)), "y_train has a single class (0); nothing to learn"),
    (
        "label_ids",
        _replace("y_train", np.tile(np.array([0, 1000, 2000]), 10)),
        "y_train uses 3 of the class indices 0..2000; labels must be class indices 0..K-1 (map ids to indices first)",
    ),
    (
        "test_class_unseen",
        _replace("y_test", np.array([0, 2, 5, 0, 2, 9])),
        "y_test has label 9 but y_train's labels end at 5; a test class must appear in training",
    ),
    (
        "float32_overflow",
        _replace("x_test", np.full((6, 2, 3), 1e300)),
        "x_test has values too large for float32",
    ),
]


@pytest.mark.parametrize(("case", "change", "message"), MALFORMED, ids=[case for case, _, _ in MALFORMED])
def test_malformed_npz_raises_one_line_error_naming_file_and_fault(
    tmp_path: Path, case: str, change: Callable[[Arrays], Arrays], message: str
) -> None:
    path = _save(tmp_path / f"{case}.npz", change(_good()))
    with pytest.raises(DatasetError) as info:
        load_dataset("npz", npz_path=path)
    assert str(info.value) == f"npz data set {path}: {message}"
    assert isinstance(info.value, ValueError)


def test_a_nan_is_placed_by_the_first_sample_that_holds_one(tmp_path: Path) -> None:
    """Said without the sample, a NaN in 2000 images had to be hunted for by hand."""
    arrays = _good()
    x = arrays["x_train"].astype(np.float32)
    x[7, 1, 0], x[4, 0, 2] = np.inf, np.nan
    arrays["x_train"] = x
    with pytest.raises(DatasetError) as info:
        load_dataset("npz", npz_path=_save(tmp_path / "nan.npz", arrays))
    assert info.value.problem == "x_train contains NaN or inf values (the first in sample 4)"  # without the file


def test_x_arrays_of_a_float_and_an_integer_dtype_are_said_once(tmp_path: Path) -> None:
    """float32 training images and uint8 test images trained on one scale and were scored on another, silently."""
    arrays = _good()
    arrays["x_train"] = arrays["x_train"].astype(np.float32) / 255
    path = _save(tmp_path / "mixed.npz", arrays)
    said, _classes = load_dataset("npz", npz_path=path).cache_events  # _good's labels 0, 2, 5 leave classes out
    assert (said.level, said.event) == ("warning", "npz_dtypes_differ")
    assert dict(said.fields) == {
        "npz_path": str(path),
        "detail": "x_train is float32 but x_test is uint8: both are converted to float32 without rescaling, so the"
        " test split may be on another scale than training; store them in one dtype",
    }
    # Of one kind, the values mean the same once converted: nothing to say.
    arrays["x_test"] = arrays["x_test"].astype(np.float64) / 255
    for name, same in (("floats.npz", arrays), ("ints.npz", _good())):
        events = load_dataset("npz", npz_path=_save(tmp_path / name, same)).cache_events
        assert [e.event for e in events] == ["npz_classes_absent"]


def _classes_said(tmp_path: Path, y_train: list[int], y_test: list[int]) -> dict[str, str | int] | None:
    arrays = _good()
    arrays["y_train"] = np.tile(np.array(y_train, dtype=np.int64), 30 // len(y_train))
    arrays["y_test"] = np.array(y_test, dtype=np.int64)
    events = load_dataset("npz", npz_path=_save(tmp_path / "labels.npz", arrays), layout="flat").cache_events
    said = [e for e in events if e.event == "npz_classes_absent"]
    if not said:
        return None
    [one] = said
    assert one.level == "warning"
    return dict(one.fields)


def test_labels_from_1_to_k_are_said_with_the_class_0_they_leave_out(tmp_path: Path) -> None:
    """Labels 1..4 built a 5-way model whose class 0 never trained, accepted silently."""
    said = _classes_said(tmp_path, [1, 2, 3, 4, 1], [1, 2, 3, 4, 4, 1])
    assert said is not None
    assert (
        said["detail"]
        == "class 0 never appears in y_train (labels 1..4? class indices start at 0): the model still gets 5 outputs"
    )
    assert said["absent"] == 1


def test_a_test_class_absent_from_training_is_said_with_its_test_samples(tmp_path: Path) -> None:
    """y_test's class 2, never in y_train, was scored but could never be predicted right, silently."""
    said = _classes_said(tmp_path, [0, 1, 3], [0, 1, 2, 3, 2, 2])
    assert said is not None
    assert said["detail"] == (
        "class 2 never appears in y_train: the model still gets 4 outputs, and y_test's 3 samples of that class"
        " cannot be learned"
    )
    several = _classes_said(tmp_path, [0, 2, 5], [0, 1, 2, 5, 5, 5])
    assert several is not None
    assert several["detail"] == (
        "classes 1, 3, 4 never appear in y_train: the model still gets 6 outputs, and y_test's 1 sample of those"
        " classes cannot be learned"
    )


def test_every_class_in_training_says_nothing(tmp_path: Path) -> None:
    assert _classes_said(tmp_path, [0, 1, 2], [0, 1, 2, 2, 1, 0]) is None


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.npz"
    with pytest.raises(DatasetError) as info:
        load_dataset("npz", npz_path=path)
    assert str(info.value) == f"npz data set {path}: file not found"


def test_a_directory_is_not_a_file(tmp_path: Path) -> None:
    with pytest.raises(DatasetError) as info:
        load_npz(tmp_path)
    assert str(info.value) == f"npz data set {tmp_path}: is a directory, not an .npz file"


@pytest.mark.parametrize(
    ("case", "content"), [("text", b"x_train,y_train\n1,2\n"), ("empty", b""), ("csv_like", b"1,2,3\n")]
)
def test_a_file_that_is_no_zip_is_called_that(tmp_path: Path, case: str, content: bytes) -> None:
    """numpy's message for a text file spoke of pickled data."""
    path = tmp_path / f"{case}.npz"
    path.write_bytes(content)
    with pytest.raises(DatasetError) as info:
        load_dataset("npz", npz_path=path)
    assert str(info.value) == f"npz data set {path}: not an .npz archive (numpy's zip of .npy arrays, np.savez)"


def test_a_damaged_zip_is_not_a_readable_archive(tmp_path: Path) -> None:
    path = tmp_path / "truncated.npz"
    path.write_bytes(b"PK\x03\x04" + b"\x00" * 40)
    with pytest.raises(DatasetError) as info:
        load_dataset("npz", npz_path=path)
    text = str(info.value)
    assert text.startswith(f"npz data set {path}: not a readable .npz archive (BadZipFile: ")
    assert "\n" not in text
    assert info.value.__cause__ is not None


def test_a_pickle_is_refused_without_being_unpickled(tmp_path: Path) -> None:
    path = tmp_path / "pickle.npz"
    # A pickle whose loading would raise if it ever ran: GLOBAL of a name that cannot be found.
    path.write_bytes(b"\x80\x04c__no_such_module__\nboom\n)R.")
    with pytest.raises(DatasetError) as info:
        load_npz(path)
    assert str(info.value) == f"npz data set {path}: not an .npz archive (numpy's zip of .npy arrays, np.savez)"


def test_a_single_npy_array_is_not_an_npz(tmp_path: Path) -> None:
    path = tmp_path / "array.npz"
    with path.open("wb") as file:
        np.save(file, np.zeros((3, 2), np.float32))
    with pytest.raises(DatasetError) as info:
        load_npz(path)
    assert str(info.value) == f"npz data set {path}: not an .npz archive (it holds a single .npy array)"


def test_object_arrays_are_refused_without_unpickling(tmp_path: Path) -> None:
    arrays = _good()
    arrays["x_train"] = np.array([{"a": 1}] * 30, dtype=object)
    path = _save(tmp_path / "objects.npz", arrays)
    with pytest.raises(DatasetError) as info:
        load_npz(path)
    text = str(info.value)
    assert text.startswith(f"npz data set {path}: cannot read array 'x_train' (ValueError: Object arrays cannot be")
    assert "\n" not in text


def _npy_header(shape: tuple[int, ...], dtype: str = "<f4") -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": dtype, "fortran_order": False, "shape": shape})
    return buffer.getvalue()


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    """An npz of _good()'s arrays with the given members' bytes in place of theirs."""
    with zipfile.ZipFile(path, "w") as archive:
        for name, array in _good().items():
            if name in members:
                archive.writestr(f"{name}.npy", members[name])
            else:
                buffer = io.BytesIO()
                np.save(buffer, array)
                archive.writestr(f"{name}.npy", buffer.getvalue())
    return path


@pytest.mark.parametrize(
    ("shape", "payload", "says"),
    [
        ((10**7, 10**6), b"", "declares shape (10000000, 1000000) of float32 (36.4 TiB) but holds 0 bytes"),
        ((30, 2, 3), bytes(4 * 179), "declares shape (30, 2, 3) of float32 (720 bytes) but holds 716 bytes"),
    ],
    ids=["36TiB", "one-element-short"],
)
def test_an_array_declaring_more_than_it_holds_is_refused_before_numpy_allocates_it(
    tmp_path: Path, shape: tuple[int, ...], payload: bytes, says: str
) -> None:
    """numpy allocates the header's shape before reading: a few hundred bytes asked for 36 TiB (a MemoryError
    traceback instead of a one-line error, exit 2)."""
    path = _zip(tmp_path / "huge.npz", {"x_train": _npy_header(shape) + payload})
    with pytest.raises(DatasetError) as info:
        load_npz(path)
    assert str(info.value) == f"npz data set {path}: array 'x_train' {says}"


def test_a_member_that_is_no_npy_array_is_refused(tmp_path: Path) -> None:
    """numpy hands such a member back as bytes, which the checks then failed on with an AttributeError traceback."""
    path = _zip(tmp_path / "raw.npz", {"y_test": b"0,2,5,0,2,5"})
    with pytest.raises(DatasetError) as info:
        load_npz(path)
    assert str(info.value).startswith(f"npz data set {path}: cannot read array 'y_test' (ValueError: ")


def test_an_array_past_the_memory_is_a_one_line_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An array the file does hold can still outgrow the memory: numpy's MemoryError is the file's error too."""

    def out_of_memory(*_args: object, **_kwargs: object) -> object:
        raise MemoryError("Unable to allocate 720. B for an array with shape (30, 2, 3) and data type uint8")

    monkeypatch.setattr(np.lib.format, "read_array", out_of_memory)
    path = _save(tmp_path / "mine.npz", _good())
    with pytest.raises(DatasetError) as info:
        load_npz(path)
    assert str(info.value) == (
        f"npz data set {path}: array 'x_train' does not fit in memory (Unable to allocate 720. B for an array with"
        " shape (30, 2, 3) and data type uint8)"
    )
