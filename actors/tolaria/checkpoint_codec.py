"""The checkpoint file's codec: a TrainState to safetensors bytes and back, without pickle.

A checkpoint (``step-<n>.pt``) is a safetensors file. Its tensors are the state's storages, a few flat buffers; its
header's metadata entry ``esper`` is the JSON of ``schema_version``, ``global_step``, ``epoch``, ``batch_index``,
``model`` (state_dict with the slots' extra state), ``optimizer`` (``{"groups": [...], "state": {param name: {...}}}``),
``rng``, ``graft_log`` (list of dicts), ``paused`` and ``counters`` (whose ``expected_plans`` names the plans in
flight: decided by the checkpoint's step, due after it; a resume takes them from Kasmina, which prepares their modules
anew), with ``{"__tensor__": [buffer, offset, shape]}`` in
place of each tensor. The bytes are laid out here (a header and the raw buffers, safetensors' format) and read back by
``safetensors``' own loader, which checks every offset.
"""

from __future__ import annotations

import math
import sys
from typing import TYPE_CHECKING, Any, final

import msgspec
import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors

from actors.tolaria.boundary import GraftEvent
from actors.tolaria.checkpoint_check import state_problem
from actors.tolaria.snapshots import TrainState
from esper.runtime.errors import EsperError

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = [
    "CHUNK_BYTES",
    "SCHEMA_VERSION",
    "CheckpointError",
    "checkpoint_counters",
    "checkpoint_graft_log",
    "checkpoint_run_id",
    "decode_state",
    "encode_state",
    "encode_state_chunks",
    "model_shapes",
    "safetensors_bytes",
    "safetensors_chunks",
]

SCHEMA_VERSION = 2
# The safetensors header's metadata entry holding everything but the tensors, as JSON.
_META_KEY = "esper"
_MAX_HEADER_BYTES = 100 * 2**20  # safetensors' own limit on a header
# The largest piece a file is streamed in: each piece is one hash update and one file write, both of which release
# the GIL only for their own duration, so none may keep the step loop waiting long.
CHUNK_BYTES = 8 * 2**20

# JSON markers for what JSON lacks. A marker is a one-key dict; a real dict that could be mistaken for one (a single
# key starting with "__") or that has non-string keys is written as pairs under _DICT.
_TENSOR = "__tensor__"
_TUPLE = "__tuple__"
_FLOAT = "__float__"
_DICT = "__dict__"
_JSON_LEAVES = (str, int, bool, type(None))
_JSON_LEAF_TYPES = frozenset(_JSON_LEAVES)

# safetensors' dtype names.
_DTYPE_NAMES: dict[torch.dtype, str] = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
    torch.float8_e4m3fn: "F8_E4M3",
    torch.float8_e5m2: "F8_E5M2",
    torch.float8_e4m3fnuz: "F8_E4M3FNUZ",
    torch.float8_e5m2fnuz: "F8_E5M2FNUZ",
    torch.complex64: "C64",
    torch.uint64: "U64",
    torch.uint32: "U32",
    torch.uint16: "U16",
}


class CheckpointError(EsperError):
    """Raised when no usable checkpoint exists where one is required (every candidate missing or failing its
    checksum), or a checkpoint's contents do not fit the model."""


def encode_state(state: TrainState) -> bytes:
    """The checkpoint of ``state`` as one bytes object: ``encode_state_chunks`` joined (tests and tools; the writer
    streams the chunks instead)."""
    return b"".join(encode_state_chunks(state))


def encode_state_chunks(state: TrainState) -> Iterator[memoryview]:
    """Serialise a TrainState (without its seed modules) to a safetensors file's bytes, in order, as pieces of at most
    ``CHUNK_BYTES``; no pickle anywhere.

    The tensors' storages go in as a few flat tensors (the capture already packs them into one buffer per dtype).
    Everything else, with a reference (buffer, offset, shape) in place of each tensor, is the JSON string
    ``__metadata__["esper"]`` of the safetensors header. The header is built here, at once (so a state it cannot
    store raises before anything is written); the tensors' pieces are views of their memory, not copies, read as the
    iterator is consumed: the state must stay unchanged until then.

    Any thread: it only reads ``state``, whose tensors are private copies (the checkpoint writer thread calls it).
    The bodies of the plans received but not yet due are not written (earlier versions did, as ``pending_plans``): which
    had arrived by the capture depended on the controller's timing, so two identical runs wrote different bytes.

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
    }
    packer = _TensorPacker()
    tree = packer.tree(payload)
    buffers = packer.buffers()  # fills in the references, so before the JSON
    return safetensors_chunks(buffers, {_META_KEY: msgspec.json.encode(tree).decode()})


def decode_state(data: bytes) -> tuple[TrainState, tuple[str, ...]]:
    """Load checkpoint bytes (safetensors, no pickle) into a TrainState and the plans' JSON an earlier version wrote
    (``pending_plans``; empty for this version's checkpoints, see ``encode_state``).

    Raises:
        CheckpointError: the contents are not a checkpoint of this schema version, or hold a state that could not be
            loaded (checkpoint_check.state_problem: an RNG state, a counter, a type).
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
    except (KeyError, TypeError, ValueError, msgspec.ValidationError) as err:
        raise CheckpointError(f"malformed checkpoint: {err}") from err
    problem = state_problem(state)
    if problem is not None:
        raise CheckpointError(f"malformed checkpoint: {problem}")
    return state, tuple(str(p) for p in raw.get("pending_plans", []))


def model_shapes(data: bytes) -> dict[str, tuple[int, ...] | None]:
    """Each model state entry in the checkpoint ``data`` with its tensor's shape (None: not a tensor, a slot's extra
    state), read from its header alone (no weights). ``data``: a file that passed its manifest's SHA-256 (see
    checkpoint_verify.verified_checkpoint): a header read before that check trusted what a damaged file says.

    Raises:
        CheckpointError: the bytes are not a checkpoint.
    """
    tree = _header_tree(data)
    try:
        model = tree["model"]
        return {
            key: tuple(value[_TENSOR][2]) if isinstance(value, dict) and isinstance(value.get(_TENSOR), list) else None
            for key, value in model.items()
        }
    except (KeyError, TypeError, IndexError, AttributeError) as err:
        raise CheckpointError(f"not a checkpoint ({err})") from err


def checkpoint_run_id(data: bytes) -> str | None:
    """The id of the run that wrote the checkpoint ``data`` (verified bytes, see model_shapes), from its header alone;
    None for a checkpoint written before they said (or one without it).

    Raises:
        CheckpointError: the bytes are not a checkpoint.
    """
    run_id = checkpoint_counters(data).get("run_id")
    return run_id if isinstance(run_id, str) else None


def checkpoint_counters(data: bytes) -> dict[str, object]:
    """The counters of the checkpoint ``data`` (verified bytes, see model_shapes; Tolaria's and its emergency
    policy's), from its header alone.

    Raises:
        CheckpointError: the bytes are not a checkpoint.
    """
    tree = _header_tree(data)
    counters = tree.get("counters") if isinstance(tree, dict) else None
    return dict(counters) if isinstance(counters, dict) else {}


def checkpoint_graft_log(data: bytes) -> list[GraftEvent]:
    """The graft log of the checkpoint ``data`` (verified bytes, see model_shapes; the seed ops applied up to its
    step), from its header alone.

    Raises:
        CheckpointError: the bytes are not a checkpoint, or its graft log does not decode.
    """
    tree = _header_tree(data)
    raw = tree.get("graft_log") if isinstance(tree, dict) else None
    try:
        return msgspec.convert(_unpack(raw, {}), list[GraftEvent])
    except (KeyError, TypeError, ValueError, msgspec.ValidationError) as err:
        raise CheckpointError(f"malformed graft log ({err})") from err


def _header_tree(data: bytes) -> Any:
    """The decoded JSON tree of a checkpoint's header (tensors as markers), without decoding the weights."""
    length = int.from_bytes(data[:8], "little")
    if not 0 < length <= min(_MAX_HEADER_BYTES, len(data) - 8):
        raise CheckpointError(f"not a checkpoint (header length {length})")
    try:
        return msgspec.json.decode(msgspec.json.decode(data[8 : 8 + length])["__metadata__"][_META_KEY])
    except (KeyError, TypeError, IndexError, AttributeError, msgspec.DecodeError) as err:
        raise CheckpointError(f"not a checkpoint ({err})") from err


@final
class _TensorPacker:
    """Replaces every tensor in a tree of containers with ``{"__tensor__": [buffer, offset, shape]}``.

    Tensors that are contiguous views of one storage (a capture's flat buffers) share one saved buffer holding the
    whole storage, so a checkpoint has a few tensors however many the state holds; others are saved on their own.
    The walk dispatches on exact types first: it runs on the checkpoint writer thread, and every microsecond of
    Python there is taken from the step loop through the GIL.
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
        kind = type(value)
        if kind in _JSON_LEAF_TYPES:
            return value
        if kind is float:
            return value if math.isfinite(value) else {_FLOAT: repr(value)}  # type: ignore[arg-type]
        if kind is dict:
            return self._dict(value)  # type: ignore[arg-type]
        if isinstance(value, torch.Tensor):
            return self._tensor(value.detach())
        if kind is list or kind is tuple:
            sequence: list[object] | tuple[object, ...] = value  # type: ignore[assignment]  # kind says so
            # Python's RNG state is a tuple of 625 ints: check the types in C rather than walk them one by one.
            leaves = set(map(type, sequence)) <= _JSON_LEAF_TYPES
            items = list(sequence) if leaves else [self.tree(v) for v in sequence]
            return items if kind is list else {_TUPLE: items}
        # Subclasses (an IntEnum, an OrderedDict, a namedtuple) take the slower checks.
        if isinstance(value, _JSON_LEAVES):
            return value
        if isinstance(value, float):
            return self.tree(float(value))
        if isinstance(value, dict):
            return self._dict(value)
        if isinstance(value, list | tuple):
            return self.tree(list(value) if isinstance(value, list) else tuple(value))
        raise TypeError(f"checkpoint: cannot store a {kind.__name__}")

    def _dict(self, value: dict[object, object]) -> object:
        if all(type(k) is str for k in value) and not (len(value) == 1 and str(next(iter(value))).startswith("__")):
            tree, tensor = self.tree, self._tensor
            return {
                k: tensor(v) if type(v) is torch.Tensor else tree(v)  # a capture's tensors are plain, detached
                for k, v in value.items()
            }
        return {_DICT: [[self.tree(k), self.tree(v)] for k, v in value.items()]}

    def _tensor(self, tensor: torch.Tensor) -> dict[str, object]:
        ref: list[object] = [0, 0, list(tensor.shape)]
        if tensor.is_contiguous():
            storage = tensor.untyped_storage()
            key = (storage.data_ptr(), tensor.dtype, tensor.device)
            index = self._by_storage.get(key)
            if index is None and key[0] != 0 and storage.nbytes() % tensor.element_size() == 0:
                index = self._by_storage[key] = len(self._pending)
                self._pending.append((storage, tensor.dtype, tensor.device, []))
            if index is not None:
                self._pending[index][3].append((ref, tensor))
                return {_TENSOR: ref}
        ref[0] = len(self._saved)
        self._saved.append(tensor.contiguous())
        return {_TENSOR: ref}

    def buffers(self) -> list[torch.Tensor]:
        """The tensors to save, in order (their index is their name); fills in the references' buffers and offsets."""
        for storage, dtype, device, refs in self._pending:
            referenced = sum(t.numel() for _, t in refs) * refs[0][1].element_size()
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
        return self._saved


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


def safetensors_bytes(tensors: list[torch.Tensor], metadata: dict[str, str]) -> bytes:
    """A safetensors file of ``tensors`` (named by their index) with ``metadata``, as one bytes object.

    Raises:
        TypeError: a tensor's dtype has no safetensors name.
    """
    return b"".join(safetensors_chunks(tensors, metadata))


def safetensors_chunks(tensors: list[torch.Tensor], metadata: dict[str, str]) -> Iterator[memoryview]:
    """A safetensors file of ``tensors`` (named by their index) with ``metadata``, in pieces of at most
    ``CHUNK_BYTES``.

    The layout safetensors' serializer writes (a little-endian header length, the JSON header padded with spaces to
    8 bytes, then each tensor's bytes in order), made without its per-call Python wrapping: this runs for every
    checkpoint on the writer thread. The header is made at once; each tensor's pieces are views of its memory (a
    CPU tensor's own, a device tensor's host copy made when its turn comes), so no copy of the file is ever built:
    joining or copying 50 MB holds the GIL throughout, and the step loop waited for it.

    Raises:
        TypeError: a tensor's dtype has no safetensors name.
    """
    header: dict[str, object] = {}
    offset = 0
    for index, tensor in enumerate(tensors):
        name = _DTYPE_NAMES.get(tensor.dtype)
        if name is None:
            raise TypeError(f"checkpoint: cannot store a tensor of dtype {tensor.dtype}")
        size = tensor.numel() * tensor.element_size()
        header[str(index)] = {"dtype": name, "shape": list(tensor.shape), "data_offsets": [offset, offset + size]}
        offset += size
    header["__metadata__"] = metadata
    encoded = msgspec.json.encode(header)
    encoded += b" " * (-len(encoded) % 8)
    return _file_chunks(len(encoded).to_bytes(8, "little") + encoded, tensors)


def _file_chunks(head: bytes, tensors: list[torch.Tensor]) -> Iterator[memoryview]:
    yield memoryview(head)
    for tensor in tensors:
        host = tensor.detach().to("cpu").contiguous()
        data = host.reshape(-1).view(torch.uint8)
        if sys.byteorder != "little" and host.element_size() > 1:
            data = data.view(-1, host.element_size()).flip(1).reshape(-1)  # safetensors stores little-endian
        view = data.numpy().data  # a memoryview of the tensor's own bytes
        for start in range(0, view.nbytes, CHUNK_BYTES):
            yield view[start : start + CHUNK_BYTES]
