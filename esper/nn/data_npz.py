"""The user's own data set: an .npz file of x_train, y_train, x_test, y_test, validated with one-line errors."""

from __future__ import annotations

import math
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Final, final

import numpy as np
import numpy.typing as npt

ARRAY_NAMES: Final = ("x_train", "y_train", "x_test", "y_test")


class DatasetError(ValueError):
    """Raised when a data set file cannot be used: missing, not an .npz archive, or holding malformed arrays.

    The message is one line naming the file and what is wrong with it. It is a ValueError because the file is
    user input; it lives here because esper.nn may not import esper.runtime.errors. ``problem`` is the message
    without the file, for a caller whose own message names it already.
    """

    def __init__(self, message: str, problem: str | None = None) -> None:
        super().__init__(message)
        self.problem = message if problem is None else problem


def _bad(file: Path, problem: str) -> DatasetError:
    return DatasetError(f"npz data set {file}: {problem}", problem)


@final
@dataclass(frozen=True, slots=True)
class NpzArrays:
    """Validated arrays of an .npz data set, still in numpy.

    ``x_*`` are float32 ``[samples, *features]`` with every value finite; ``y_*`` are int64 ``[samples]`` with every
    label >= 0. Both splits share one feature shape and neither is empty.
    """

    x_train: npt.NDArray[np.float32]
    y_train: npt.NDArray[np.int64]
    x_test: npt.NDArray[np.float32]
    y_test: npt.NDArray[np.int64]
    # The dtypes x_train and x_test were stored in, before float32 (a float and an integer one differ in scale).
    x_dtypes: tuple[str, str]
    # The class indices below the largest training label that y_train never uses (accepted, but said: the model gets
    # an output for each, and labels 1..K, or a test class missing from training, would otherwise pass silently).
    absent_classes: tuple[int, ...] = ()


_ARCHIVE_MAGIC = (b"PK\x03\x04", b"PK\x05\x06", b"\x93NUM")  # a zip's local header, an empty zip, a bare .npy


def load_npz(path: str | Path) -> NpzArrays:
    """Load and validate an .npz data set without ever unpickling (``allow_pickle=False``).

    Runs on the calling thread and reads the whole file: call it off the event loop (the ``io`` lane).
    Integer features are converted to float32 as they are, without rescaling.

    Raises:
        DatasetError: the file is missing, a directory or unreadable, is not an .npz archive, lacks one of ``x_train``,
            ``y_train``, ``x_test``, ``y_test``, or holds arrays that are empty, non-numeric, of mismatched lengths
            or feature shapes, with non-integer or negative labels, or with NaN/inf features.
    """
    file = Path(path).expanduser()
    if file.is_dir():
        raise _bad(file, "is a directory, not an .npz file")
    if not file.is_file():
        raise _bad(file, "file not found")
    try:
        handle = file.open("rb")
    except OSError as err:
        raise _bad(file, f"cannot open ({_one_line(err)})") from err
    # np.load is handed our own handle because it leaks the one it opens when the archive is corrupt.
    with handle:
        if handle.read(4) not in _ARCHIVE_MAGIC:
            # numpy's own message for other bytes speaks of pickled data, which is not what the file holds.
            raise _bad(file, "not an .npz archive (numpy's zip of .npy arrays, np.savez)")
        handle.seek(0)
        try:
            archive = np.load(handle, allow_pickle=False)
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
            raise _bad(file, f"not a readable .npz archive ({_one_line(err)})") from err
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise _bad(file, "not an .npz archive (it holds a single .npy array)")
        with archive:
            arrays = _read_arrays(file, archive)
    x_train = _features(file, "x_train", arrays["x_train"])
    x_test = _features(file, "x_test", arrays["x_test"])
    y_train = _labels(file, "y_train", arrays["y_train"], x_train.shape[0])
    y_test = _labels(file, "y_test", arrays["y_test"], x_test.shape[0])
    if x_train.shape[1:] != x_test.shape[1:]:
        raise _bad(file, f"x_train has feature shape {x_train.shape[1:]} but x_test has {x_test.shape[1:]}")
    absent = _check_classes(file, y_train, y_test)
    dtypes = (str(arrays["x_train"].dtype), str(arrays["x_test"].dtype))
    return NpzArrays(
        x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test, x_dtypes=dtypes, absent_classes=absent
    )


def _check_classes(file: Path, y_train: npt.NDArray[np.int64], y_test: npt.NDArray[np.int64]) -> tuple[int, ...]:
    """Labels are class indices 0..K-1 (K = the largest training label + 1, the model's output width), most of them
    present in training: ids such as 0, 1000, 2000 would build a K-way head of classes never seen (or, for ids near
    1e9, try to allocate gigabytes), and a test label past K could not be scored. Returns the indices below K that
    y_train never uses (a few are allowed: the caller says them)."""
    classes = int(y_train.max()) + 1
    present = np.unique(y_train)
    used = int(present.size)
    if used < 2:
        raise _bad(file, f"y_train has a single class ({classes - 1}); nothing to learn")
    if 2 * used < classes:
        raise _bad(
            file,
            f"y_train uses {used} of the class indices 0..{classes - 1}; labels must be class"
            " indices 0..K-1 (map ids to indices first)",
        )
    top = int(y_test.max())
    if top >= classes:
        raise _bad(
            file,
            f"y_test has label {top} but y_train's labels end at {classes - 1}; a test class must appear in training",
        )
    return tuple(int(c) for c in np.setdiff1d(np.arange(classes), present))


def _read_arrays(file: Path, archive: np.lib.npyio.NpzFile) -> dict[str, npt.NDArray[np.generic]]:
    present = sorted(archive.files)
    arrays: dict[str, npt.NDArray[np.generic]] = {}
    for name in ARRAY_NAMES:
        if name not in archive.files:
            raise _bad(file, f"missing array {name!r} (arrays present: {', '.join(present) or 'none'})")
        try:
            problem = oversized_member(archive, name)
            if problem is not None:
                raise _bad(file, f"array {name!r} {problem}")
            arrays[name] = archive[name]
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
            if isinstance(err, DatasetError):
                raise
            # allow_pickle=False makes object arrays fail here, which is what we want.
            raise _bad(file, f"cannot read array {name!r} ({_one_line(err)})") from err
        except MemoryError as err:  # the check above bounds the array by the file; this is a file past the memory
            raise _bad(file, f"array {name!r} does not fit in memory ({err})") from err
    return arrays


def oversized_member(archive: np.lib.npyio.NpzFile, name: str) -> str | None:
    """Why array ``name`` of ``archive`` must not be loaded, or None: its header declares more bytes than its zip
    member holds. numpy allocates the declared shape before it reads, so a 300-byte file declaring a
    (10**7, 10**6) float32 array asked for 36 TiB (a MemoryError traceback) however little it held.

    Reads only the member's header. Object arrays are left to ``np.load``'s ``allow_pickle=False``.

    Raises:
        KeyError: the archive has no array ``name``.
        ValueError: the member is not a .npy array or its header is malformed (numpy's message).
    """
    zip_file = archive.zip
    if zip_file is None:
        raise ValueError("the archive is closed")
    members = set(zip_file.namelist())
    member = zip_file.getinfo(f"{name}.npy" if f"{name}.npy" in members else name)
    with zip_file.open(member) as stream:
        major, _minor = np.lib.format.read_magic(stream)
        # A version 3.0 header differs from 2.0 only in allowing utf-8 (field names), which does not change sizes.
        read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
        shape, _fortran_order, dtype = read_header(stream)
        header_bytes = stream.tell()
    if dtype.hasobject:
        return None
    declared = math.prod(shape) * dtype.itemsize  # Python integers: no overflow however large the shape
    held = member.file_size - header_bytes
    if declared <= held:
        return None
    return f"declares shape {shape} of {dtype} ({_bytes_text(declared)}) but holds {_bytes_text(max(held, 0))}"


def _bytes_text(count: int) -> str:
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if count >= size:
            return f"{count / size:.1f} {unit}"
    return f"{count} bytes"


def _features(file: Path, name: str, array: npt.NDArray[np.generic]) -> npt.NDArray[np.float32]:
    if array.dtype.kind not in "biuf":
        raise _bad(file, f"{name} has non-numeric dtype {array.dtype}")
    if array.ndim < 2:
        raise _bad(file, f"{name} must have shape [samples, features...], got {array.shape}")
    if array.size == 0:
        raise _bad(file, f"{name} is empty (shape {array.shape})")
    if array.dtype.kind == "f":
        finite = np.isfinite(array.reshape(array.shape[0], -1)).all(axis=1)
        if not finite.all():
            first = int(np.argmin(finite))
            raise _bad(file, f"{name} contains NaN or inf values (the first in sample {first})")
    # Wider floats beyond float32's range would turn into inf on conversion.
    if array.dtype.kind == "f" and array.dtype.itemsize > 4 and np.abs(array).max() > np.finfo(np.float32).max:
        raise _bad(file, f"{name} has values too large for float32")
    return array.astype(np.float32)


def _labels(file: Path, name: str, array: npt.NDArray[np.generic], rows: int) -> npt.NDArray[np.int64]:
    if array.dtype.kind not in "biuf":
        raise _bad(file, f"{name} has non-numeric dtype {array.dtype}")
    if array.dtype.kind not in "iu":
        raise _bad(file, f"{name} labels must be integers, got dtype {array.dtype}")
    if array.ndim != 1:
        raise _bad(file, f"{name} must have shape [samples], got {array.shape}")
    if array.size == 0:
        raise _bad(file, f"{name} is empty (shape {array.shape})")
    x_name = "x" + name[1:]
    if array.shape[0] != rows:
        raise _bad(file, f"{x_name} has {rows} samples but {name} has {array.shape[0]}")
    if array.dtype.kind == "u" and array.max() > np.iinfo(np.int64).max:
        raise _bad(file, f"{name} has labels too large for int64 (max {array.max()})")
    labels = array.astype(np.int64)
    if labels.min() < 0:
        raise _bad(file, f"{name} has negative labels (min {labels.min()})")
    return labels


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text}" if text else type(err).__name__
