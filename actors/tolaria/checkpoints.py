"""The full rollback tier: checkpoint files, their manifest (SHA-256 and graft log), a writer thread, and resume.

Layout of ``<run dir>/checkpoints/``:

- ``step-<n>.pt``: a safetensors file (no pickle: written by the Rust serializer, read with
  ``safetensors`` loading). Its tensors are the state's storages, a few flat buffers; its header's metadata entry
  ``esper`` is the JSON of ``schema_version``, ``global_step``, ``epoch``, ``batch_index``, ``model`` (state_dict
  with the slots' extra state), ``optimizer`` (``{"groups": [...], "state": {param name: {...}}}``), ``rng``,
  ``graft_log`` (list of dicts), ``paused``, ``counters`` and ``pending_plans`` (JSON strings of plans received but
  not yet due: a record for inspection; a resume takes the plans in flight from Kasmina, which prepares their modules
  anew, since these name modules of the process that wrote them), with ``{"__tensor__": [buffer, offset, shape]}`` in
  place of each tensor. (The ``.pt`` suffix is kept because tools and tests look for ``step-*.pt``.)
- ``manifest.json``: ``{"schema_version", "checkpoints": [{"file", "sha256", "size_bytes", "global_step", "epoch",
  "batch_index"}...] (oldest first), "graft_log": [...]}``, rewritten atomically after each file.

Every file is written atomically (temp file, fsync, rename, directory fsync). Only the last ``keep_last`` are kept.
"""

from __future__ import annotations

import hashlib
import json
import math
import queue
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, final

import msgspec
import structlog
import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from actors.tolaria.boundary import GraftEvent
from actors.tolaria.snapshots import TrainState
from esper.runtime.atomic_write import atomic_write_bytes, atomic_write_text
from esper.runtime.errors import EsperError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

SCHEMA_VERSION = 2
MANIFEST = "manifest.json"
# The safetensors header's metadata entry holding everything but the tensors, as JSON.
_META_KEY = "esper"

_log = structlog.get_logger("actors.tolaria")


class CheckpointError(EsperError):
    """Raised when no usable checkpoint exists where one is required (every candidate missing or failing its
    checksum), or a checkpoint's contents do not fit the model."""


@final
@dataclass(frozen=True, slots=True)
class CheckpointInfo:
    """One manifest entry."""

    file: str
    sha256: str
    size_bytes: int
    global_step: int
    epoch: int
    batch_index: int


def encode_state(state: TrainState, pending_plans: tuple[str, ...] = ()) -> bytes:
    """Serialise a TrainState (without its seed modules) to safetensors bytes; no pickle anywhere.

    The tensors' storages go in as a few flat tensors (the capture already packs them into one buffer per dtype;
    Rust's serializer copies them). Everything else, with a reference (buffer, offset, shape) in place of each
    tensor, is the JSON string ``__metadata__["esper"]`` of the safetensors header.

    Any thread: it only reads ``state``, whose tensors are private copies (the checkpoint writer thread calls it).

    Raises:
        TypeError: the state holds a value the JSON part cannot represent.
    """
    payload = {
        "schema_version": SCHEMA_VERSION,
        "global_step": state.global_step,
        "epoch": state.epoch,
        "batch_index": state.batch_index,
        "model": state.model,
        "optimizer": state.optimizer,
        "rng": state.rng,
        "graft_log": [msgspec.to_builtins(e) for e in state.graft_log],
        "paused": state.paused,
        "counters": state.counters,
        "pending_plans": list(pending_plans),
    }
    packer = _TensorPacker()
    tree = packer.tree(payload)
    buffers = packer.buffers()  # fills in the references, so before the JSON
    return save_safetensors(buffers, metadata={_META_KEY: msgspec.json.encode(tree).decode()})


def decode_state(data: bytes) -> tuple[TrainState, tuple[str, ...]]:
    """Load checkpoint bytes (safetensors, no pickle) into a TrainState and the pending plans' JSON.

    Raises:
        CheckpointError: the contents are not a checkpoint of this schema version.
    """
    try:
        buffers = load_safetensors(data)
        header_len = int.from_bytes(data[:8], "little")
        header = msgspec.json.decode(data[8 : 8 + header_len])
        tree = msgspec.json.decode(header["__metadata__"][_META_KEY])
        raw = _unpack(tree, buffers)
    except (KeyError, TypeError, ValueError, IndexError, RuntimeError, msgspec.DecodeError, SafetensorError) as err:
        raise CheckpointError(f"not a checkpoint: {err}") from err
    if not isinstance(raw, dict) or raw.get("schema_version") != SCHEMA_VERSION:
        raise CheckpointError(f"not a schema-{SCHEMA_VERSION} checkpoint")
    try:
        state = TrainState(
            global_step=int(raw["global_step"]),
            epoch=int(raw["epoch"]),
            batch_index=int(raw["batch_index"]),
            model=dict(raw["model"]),
            optimizer=dict(raw["optimizer"]),
            rng=dict(raw["rng"]),
            graft_log=msgspec.convert(raw["graft_log"], list[GraftEvent]),
            paused=dict(raw["paused"]),
            counters=dict(raw["counters"]),
        )
    except (KeyError, TypeError, msgspec.ValidationError) as err:
        raise CheckpointError(f"malformed checkpoint: {err}") from err
    return state, tuple(str(p) for p in raw.get("pending_plans", []))


def model_shapes(path: Path) -> dict[str, tuple[int, ...] | None]:
    """Each model state entry in the checkpoint at ``path`` with its tensor's shape (None: not a tensor, a slot's extra
    state), read from its header alone (no weights, no hash).

    Raises:
        CheckpointError: the file is not a checkpoint.
        OSError: it cannot be read.
    """
    tree = _header_tree(path)
    try:
        model = tree["model"]
        return {
            key: tuple(value[_TENSOR][2]) if isinstance(value, dict) and isinstance(value.get(_TENSOR), list) else None
            for key, value in model.items()
        }
    except (KeyError, TypeError, IndexError, AttributeError) as err:
        raise CheckpointError(f"{path.name}: not a checkpoint ({err})") from err


def checkpoint_run_id(path: Path) -> str | None:
    """The id of the run that wrote the checkpoint at ``path``, from its header alone; None for a checkpoint written
    before they said (or one without it).

    Raises:
        CheckpointError: the file is not a checkpoint.
        OSError: it cannot be read.
    """
    run_id = checkpoint_counters(path).get("run_id")
    return run_id if isinstance(run_id, str) else None


def checkpoint_counters(path: Path) -> dict[str, object]:
    """The counters of the checkpoint at ``path`` (Tolaria's and its emergency policy's), from its header alone.

    Raises:
        CheckpointError: the file is not a checkpoint.
        OSError: it cannot be read.
    """
    tree = _header_tree(path)
    counters = tree.get("counters") if isinstance(tree, dict) else None
    return dict(counters) if isinstance(counters, dict) else {}


def _header_tree(path: Path) -> Any:
    """The decoded JSON tree of a checkpoint's header (tensors as markers), without reading the weights."""
    with path.open("rb") as file:
        length = int.from_bytes(file.read(8), "little")
        if not 0 < length <= _MAX_HEADER_BYTES:
            raise CheckpointError(f"{path.name}: not a checkpoint (header length {length})")
        header = file.read(length)
    try:
        return msgspec.json.decode(msgspec.json.decode(header)["__metadata__"][_META_KEY])
    except (KeyError, TypeError, IndexError, AttributeError, msgspec.DecodeError) as err:
        raise CheckpointError(f"{path.name}: not a checkpoint ({err})") from err


_MAX_HEADER_BYTES = 100 * 2**20  # safetensors' own limit on a header


# JSON markers for what JSON lacks. A marker is a one-key dict; a real dict that could be mistaken for one (a single
# key starting with "__") or that has non-string keys is written as pairs under _DICT.
_TENSOR = "__tensor__"
_TUPLE = "__tuple__"
_FLOAT = "__float__"
_DICT = "__dict__"
_JSON_LEAVES = (str, int, bool, type(None))
_JSON_LEAF_TYPES = frozenset(_JSON_LEAVES)


@final
class _TensorPacker:
    """Replaces every tensor in a tree of containers with ``{"__tensor__": [buffer, offset, shape]}``.

    Tensors that are contiguous views of one storage (a capture's flat buffers) share one saved buffer holding the
    whole storage, so a checkpoint has a few tensors however many the state holds; others are saved on their own.
    """

    __slots__ = ("_by_storage", "_pending", "_saved")

    def __init__(self) -> None:
        self._saved: list[torch.Tensor] = []
        # (storage address, dtype, device) -> index into _pending
        self._by_storage: dict[tuple[int, torch.dtype, torch.device], int] = {}
        # (storage, dtype, device, [(reference to fill in, tensor)]) per shared storage
        self._pending: list[
            tuple[torch.UntypedStorage, torch.dtype, torch.device, list[tuple[list[object], torch.Tensor]]]
        ] = []

    def tree(self, value: object) -> object:
        if isinstance(value, _JSON_LEAVES):
            return value
        if isinstance(value, float):
            return value if math.isfinite(value) else {_FLOAT: repr(value)}
        if isinstance(value, torch.Tensor):
            return self._tensor(value.detach())
        if isinstance(value, dict):
            keys = list(value)
            if all(type(k) is str for k in keys) and not (len(keys) == 1 and str(keys[0]).startswith("__")):
                return {k: self.tree(v) for k, v in value.items()}
            return {_DICT: [[self.tree(k), self.tree(v)] for k, v in value.items()]}
        if isinstance(value, list | tuple):
            # Python's RNG state is a tuple of 625 ints: check the types in C rather than walk them one by one.
            items = list(value) if set(map(type, value)) <= _JSON_LEAF_TYPES else [self.tree(v) for v in value]
            return items if isinstance(value, list) else {_TUPLE: items}
        raise TypeError(f"checkpoint: cannot store a {type(value).__name__}")

    def _tensor(self, tensor: torch.Tensor) -> dict[str, object]:
        ref: list[object] = [0, 0, list(tensor.shape)]
        storage = tensor.untyped_storage()
        itemsize = tensor.element_size()
        if tensor.is_contiguous() and storage.data_ptr() != 0 and storage.nbytes() % itemsize == 0:
            key = (storage.data_ptr(), tensor.dtype, tensor.device)
            index = self._by_storage.get(key)
            if index is None:
                index = self._by_storage[key] = len(self._pending)
                self._pending.append((storage, tensor.dtype, tensor.device, []))
            self._pending[index][3].append((ref, tensor))
        else:
            ref[0] = len(self._saved)
            self._saved.append(tensor.contiguous())
        return {_TENSOR: ref}

    def buffers(self) -> dict[str, torch.Tensor]:
        """The tensors to save, named by index; fills in the references' buffers and offsets."""
        for storage, dtype, device, refs in self._pending:
            referenced = sum(t.numel() * t.element_size() for _, t in refs)
            if referenced >= storage.nbytes():
                index = len(self._saved)
                self._saved.append(torch.empty(0, dtype=dtype, device=device).set_(storage))
                for ref, tensor in refs:
                    ref[0], ref[1] = index, tensor.storage_offset()
            else:
                # Views of a larger storage: saving it whole would write bytes nobody references.
                for ref, tensor in refs:
                    ref[0] = len(self._saved)
                    self._saved.append(tensor.clone())
        return {str(i): t for i, t in enumerate(self._saved)}


def _unpack(value: object, buffers: dict[str, torch.Tensor]) -> object:
    """Inverse of ``_TensorPacker.tree``: tensors are views of the loaded buffers."""
    if isinstance(value, list):
        return [_unpack(v, buffers) for v in value]
    if not isinstance(value, dict):
        return value
    if len(value) == 1:
        ((key, inner),) = value.items()
        if key == _TENSOR:
            index, offset, shape = inner
            flat = buffers[str(index)].view(-1)
            return flat[offset : offset + math.prod(shape)].view(shape)
        if key == _TUPLE:
            return tuple(_unpack(v, buffers) for v in inner)
        if key == _FLOAT:
            return float(inner)
        if key == _DICT:
            return {_unpack(k, buffers): _unpack(v, buffers) for k, v in inner}
    return {k: _unpack(v, buffers) for k, v in value.items()}


def read_manifest(directory: Path) -> list[CheckpointInfo]:
    """The manifest's entries, oldest first; [] when there is none.

    Raises:
        CheckpointError: the manifest exists but cannot be parsed, or an entry names anything but this directory's
            ``step-<its step>.pt`` (a resume would read, and rotation would delete, whatever it names).
    """
    path = directory / MANIFEST
    if not path.is_file():
        return []
    try:
        raw = json.loads(path.read_text())
        entries = [CheckpointInfo(**entry) for entry in raw["checkpoints"]]
    except (ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"{path}: unreadable manifest: {err}") from err
    for info in entries:
        problem = _entry_problem(info)
        if problem is not None:
            raise CheckpointError(f"{path}: entry {info.file!r}: {problem}")
    return entries


def _entry_problem(info: CheckpointInfo) -> str | None:
    if not isinstance(info.global_step, int) or isinstance(info.global_step, bool) or info.global_step < 0:
        return f"global_step must be a step number, got {info.global_step!r}"
    if info.file != f"step-{info.global_step}.pt":
        return f"a checkpoint's file is step-<global_step>.pt in this directory, got {info.file!r}"
    if not isinstance(info.size_bytes, int) or info.size_bytes < 0:
        return f"size_bytes must be a byte count, got {info.size_bytes!r}"
    if not isinstance(info.sha256, str) or len(info.sha256) != 64:
        return f"sha256 must be 64 hex digits, got {info.sha256!r}"
    return None


def load_latest(
    directory: Path, *, at_most: int | None = None
) -> tuple[TrainState, tuple[str, ...], CheckpointInfo] | None:
    """The newest checkpoint whose SHA-256 matches the manifest and that decodes to the step its entry names; a
    corrupt, truncated or inconsistent one is skipped with a ``checkpoint_corrupt`` warning and the previous one is
    tried. ``at_most``: only checkpoints of that step or earlier (a resume's point, see esper.resume). None when the
    directory has no checkpoint (of that step or earlier).

    Blocking (file I/O): lane thread or a worker thread.

    Raises:
        CheckpointError: checkpoints are listed but none is usable.
    """
    for info, data in _verified_newest_first(directory):
        if at_most is not None and info.global_step > at_most:
            continue
        try:
            state, pending = decode_state(data)
        except CheckpointError as err:
            _log.warning("checkpoint_corrupt", file=str(directory / info.file), error=str(err)[:300])
            continue
        if (state.global_step, state.epoch, state.batch_index) != (info.global_step, info.epoch, info.batch_index):
            _log.warning(
                "checkpoint_corrupt",
                file=str(directory / info.file),
                error=f"it holds step {state.global_step}, its manifest entry says {info.global_step}",
            )
            continue
        return state, pending, info
    entries = [e for e in read_manifest(directory) if at_most is None or e.global_step <= at_most]
    if entries:
        raise CheckpointError(f"{directory}: no usable checkpoint ({len(entries)} listed)")
    return None


def latest_good_step(directory: Path) -> int | None:
    """The global step of the checkpoint ``load_latest`` would resume from (verified the same way, not decoded);
    None when the directory has no checkpoint. Blocking.

    Raises:
        CheckpointError: checkpoints are listed but none is usable.
    """
    info = latest_good(directory)
    return None if info is None else info.global_step


def latest_good(directory: Path) -> CheckpointInfo | None:
    """The manifest entry of the checkpoint ``load_latest`` would resume from (its SHA-256 checked, not decoded);
    None when the directory has no checkpoint. Blocking.

    Raises:
        CheckpointError: checkpoints are listed but none is usable.
    """
    for info, _ in _verified_newest_first(directory):
        return info
    if read_manifest(directory):
        raise CheckpointError(
            f"{directory}: no checkpoint passes its checksum ({len(read_manifest(directory))} listed)"
        )
    return None


def _verified_newest_first(directory: Path) -> Iterator[tuple[CheckpointInfo, bytes]]:
    """Each listed checkpoint whose file is a regular file of its listed size and SHA-256, newest first."""
    for info in reversed(read_manifest(directory)):
        path = directory / info.file
        try:
            size = path.lstat().st_size if path.is_file() and not path.is_symlink() else None
            if size != info.size_bytes:
                found = "not a regular file" if size is None else f"{size} bytes"
                _log.warning(
                    "checkpoint_corrupt", file=str(path), error=f"{found}, the manifest says {info.size_bytes} bytes"
                )
                continue
            data = path.read_bytes()
        except OSError as err:
            _log.warning("checkpoint_corrupt", file=str(path), error=f"unreadable: {err}")
            continue
        digest = hashlib.sha256(data).hexdigest()
        if digest != info.sha256:
            _log.warning(
                "checkpoint_corrupt",
                file=str(path),
                error=f"sha256 {digest[:12]} does not match the manifest's {info.sha256[:12]}",
                size_bytes=len(data),
                expected_size_bytes=info.size_bytes,
            )
            continue
        yield info, data


@final
class CheckpointWriter:
    """Serialises and writes checkpoints on its own thread, so the step loop waits neither for serialisation nor
    for the disk (atomic writes with fsync).

    ``submit`` (lane thread) queues a captured TrainState; at most ``depth`` wait, after which submit blocks
    (backpressure rather than unbounded memory). ``flush`` waits until everything queued is on disk; ``close``
    flushes and ends the thread. A failed write is logged and re-raised by the next submit or flush.
    """

    def __init__(
        self,
        directory: Path,
        *,
        keep_last: int,
        depth: int = 2,
        on_written: Callable[[CheckpointInfo], None] | None = None,
    ) -> None:
        self._directory = directory
        self._keep_last = keep_last
        self._queue: queue.Queue[tuple[TrainState, tuple[str, ...]] | None] = queue.Queue(maxsize=depth)
        self._on_written = on_written
        self._error: BaseException | None = None
        self._entries: list[CheckpointInfo] | None = None
        self._thread = threading.Thread(target=self._work, name="esper-tolaria-checkpoints", daemon=True)
        self._thread.start()

    @property
    def directory(self) -> Path:
        return self._directory

    def submit(self, state: TrainState, pending_plans: tuple[str, ...] = ()) -> None:
        """Queue a checkpoint of ``state`` with the JSON of the plans received but not yet due; lane thread.

        Returns at once unless ``depth`` checkpoints are already waiting. The writer thread reads ``state`` later,
        so nobody may change it after submitting (a captured TrainState holds private copies; the fast tier shares
        it read-only).

        Raises:
            OSError: an earlier write failed (the step loop learns it at its next checkpoint rather than at the end
                of the run, and a full disk stops the run with its last good checkpoint).
        """
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        self._queue.put((state, pending_plans))

    def flush(self) -> None:
        """Wait until every submitted checkpoint is written.

        Raises:
            OSError: a write failed.
        """
        self._queue.join()
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def close(self) -> None:
        """Flush, then end the writer thread."""
        try:
            self.flush()
        finally:
            self._queue.put(None)
            self._thread.join()

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                self._write(*item)
            except BaseException as err:  # noqa: BLE001  # handed to the next flush(), which re-raises it
                _log.error("checkpoint_write_failed", error=f"{type(err).__name__}: {err}")
                self._error = err
            finally:
                self._queue.task_done()

    def _write(self, state: TrainState, pending_plans: tuple[str, ...]) -> None:
        data = encode_state(state, pending_plans)
        log = [msgspec.to_builtins(e) for e in state.graft_log]
        step, epoch, batch_index = state.global_step, state.epoch, state.batch_index
        directory = self._directory
        directory.mkdir(parents=True, exist_ok=True)
        if self._entries is None:
            try:
                self._entries = read_manifest(directory)
            except CheckpointError:
                self._entries = []
        name = f"step-{step}.pt"
        atomic_write_bytes(directory / name, data)
        info = CheckpointInfo(
            file=name,
            sha256=hashlib.sha256(data).hexdigest(),
            size_bytes=len(data),
            global_step=step,
            epoch=epoch,
            batch_index=batch_index,
        )
        entries = [e for e in self._entries if e.file != name] + [info]
        dropped = entries[: max(0, len(entries) - self._keep_last)]
        entries = entries[len(dropped) :]
        manifest = {
            "schema_version": SCHEMA_VERSION,
            "checkpoints": [_info_dict(e) for e in entries],
            "graft_log": log,
        }
        atomic_write_text(directory / MANIFEST, json.dumps(manifest, indent=1))
        self._entries = entries
        listed = {e.file for e in entries}
        # The dropped ones, and any a kill -9 left between an earlier manifest and its deletions (kept for good:
        # no manifest names it, so nothing read or removed it).
        for old in {e.file for e in dropped} | {p.name for p in directory.glob("step-*.pt")}:
            if old not in listed:
                (directory / old).unlink(missing_ok=True)
        if self._on_written is not None:
            self._on_written(info)


def _info_dict(info: CheckpointInfo) -> dict[str, object]:
    return {
        "file": info.file,
        "sha256": info.sha256,
        "size_bytes": info.size_bytes,
        "global_step": info.global_step,
        "epoch": info.epoch,
        "batch_index": info.batch_index,
    }
