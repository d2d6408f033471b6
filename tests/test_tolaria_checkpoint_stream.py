"""Checkpoints are streamed: written and hashed in pieces that view the tensors, with exactly the layout's bytes.

The pieces are never copied whole (a copy is made holding the GIL, and the step loop's epoch end waited for it)."""

from __future__ import annotations

import hashlib
import sys
import tracemalloc
from typing import TYPE_CHECKING

import msgspec
import numpy as np
import safetensors.torch
import torch

from actors.tolaria.checkpoint_codec import CHUNK_BYTES, encode_state, safetensors_bytes, safetensors_chunks
from actors.tolaria.checkpoints import CheckpointWriter, read_manifest
from tests.test_tolaria_checkpoint_format import sample_state

if TYPE_CHECKING:
    from pathlib import Path

    import pytest

    from actors.tolaria.snapshots import TrainState

_LARGE = 6 * 2**20  # float32 elements: 24 MB, three pieces


def layout(tensors: list[torch.Tensor], metadata: dict[str, str]) -> bytes:
    """The file as the codec made it before it streamed: every tensor's bytes copied, then joined."""
    header: dict[str, object] = {}
    raws: list[bytes] = []
    offset = 0
    for index, tensor in enumerate(tensors):
        raw = tensor.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        names = {torch.float32: "F32", torch.float64: "F64", torch.int64: "I64", torch.bfloat16: "BF16"}
        names |= {torch.bool: "BOOL", torch.uint8: "U8", torch.int32: "I32"}
        entry = {"dtype": names[tensor.dtype], "shape": list(tensor.shape), "data_offsets": [offset, offset + len(raw)]}
        header[str(index)] = entry
        offset += len(raw)
        raws.append(raw)
    header["__metadata__"] = metadata
    encoded = msgspec.json.encode(header)
    encoded += b" " * (-len(encoded) % 8)
    return b"".join([len(encoded).to_bytes(8, "little"), encoded, *raws])


def large_state() -> TrainState:
    state = sample_state()
    flat = torch.randn(3 * _LARGE)  # a capture's buffer: weights and two optimizer moments
    state.model["big.weight"] = flat[:_LARGE]
    state.optimizer["state"] = {"big.weight": {"exp_avg": flat[_LARGE : 2 * _LARGE], "exp_avg_sq": flat[2 * _LARGE :]}}
    return state


def test_the_pieces_view_the_tensors_and_join_to_the_layout() -> None:
    flat = torch.randn(_LARGE)
    tensors = [flat, torch.tensor([True, False]), torch.zeros(0, 3), torch.arange(6).view(2, 3).t()]
    metadata = {"esper": '{"a": 1}'}
    pieces = list(safetensors_chunks(tensors, metadata))
    assert all(piece.nbytes <= CHUNK_BYTES for piece in pieces)
    assert len(pieces) == 1 + _LARGE * 4 // CHUNK_BYTES + 2  # the header, the large tensor's pieces, two small ones
    # Views, not copies: the large tensor's pieces are its own memory.
    assert all(np.shares_memory(np.frombuffer(piece, np.uint8), flat.numpy()) for piece in pieces[1:-2])
    expected = layout(tensors, metadata)
    assert b"".join(pieces) == expected
    assert safetensors_bytes(tensors, metadata) == expected


def test_a_big_endian_host_writes_little_endian(monkeypatch: pytest.MonkeyPatch) -> None:
    # On a big-endian host the native bytes are swapped on the way out; here (little-endian) that swap shows.
    tensor = torch.arange(5, dtype=torch.float32)
    native = b"".join(safetensors_chunks([tensor], {}))
    monkeypatch.setattr(sys, "byteorder", "big")
    swapped = b"".join(safetensors_chunks([tensor], {}))
    assert swapped[: -tensor.nbytes] == native[: -tensor.nbytes]
    assert swapped[-tensor.nbytes :] == tensor.numpy().byteswap().tobytes()


def test_the_written_file_and_its_digest_are_the_layout(tmp_path: Path) -> None:
    state = large_state()
    data = encode_state(state)
    loaded = safetensors.torch.load(data)
    meta = msgspec.json.decode(data[8 : 8 + int.from_bytes(data[:8], "little")])["__metadata__"]
    assert data == layout([loaded[str(i)] for i in range(len(loaded))], meta)
    writer = CheckpointWriter(tmp_path, keep_last=1)
    writer.submit(state)
    writer.close()
    (info,) = read_manifest(tmp_path)
    assert (tmp_path / info.file).read_bytes() == data
    assert (info.sha256, info.size_bytes) == (hashlib.sha256(data).hexdigest(), len(data))
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp")] == []


def test_writing_a_checkpoint_copies_none_of_its_tensors(tmp_path: Path) -> None:
    state = large_state()  # 72 MB of tensors
    writer = CheckpointWriter(tmp_path, keep_last=1)
    tracemalloc.start()
    try:
        writer.submit(state)
        writer.flush()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        writer.close()
    assert peak < 4 * 2**20, f"writing held {peak / 2**20:.1f} MB of Python objects"
    assert read_manifest(tmp_path)[0].size_bytes > 72 * 10**6
