"""The checkpoint file format: safetensors tensors plus a JSON header entry, round-tripped bitwise without pickle."""

from __future__ import annotations

import math
import random
from typing import TYPE_CHECKING

import msgspec
import pytest
import safetensors.torch
import torch
from safetensors import safe_open

from actors.tolaria.checkpoint_codec import CheckpointError, decode_state, encode_state, safetensors_bytes
from actors.tolaria.snapshots import TrainState, rng_state

if TYPE_CHECKING:
    from pathlib import Path


def header(data: bytes) -> dict[str, object]:
    size = int.from_bytes(data[:8], "little")
    decoded = msgspec.json.decode(data[8 : 8 + size])
    assert isinstance(decoded, dict)
    return decoded


def sample_state() -> TrainState:
    flat = torch.randn(40)
    weight, bias, step = flat[:30].view(5, 6), flat[30:39], flat[39:].view(())
    wide = torch.arange(24, dtype=torch.float64).view(4, 6)
    return TrainState(
        global_step=17,
        epoch=2,
        batch_index=3,
        model={
            "layer.weight": weight,
            "layer.bias": bias,
            "norm.num_batches_tracked": torch.tensor(5, dtype=torch.int64),
            "slot._extra_state": {"mode": "dormant", "seed_id": None, "alpha": 0.25, "blend": {"k": 10.0}},
            "transposed": wide.t(),  # not contiguous: saved on its own
            "column": wide[1],  # a view of part of a storage nobody else references
            "mask": torch.tensor([True, False, True]),
        },
        optimizer={
            "groups": [{"name": "host", "param_names": ["layer.weight"], "lr": 1e-3, "betas": (0.9, 0.999)}],
            "state": {"layer.weight": {"step": step, "exp_avg": torch.zeros(5, 6, dtype=torch.bfloat16)}},
        },
        rng=rng_state(),
        graft_log=[],
        paused={"slot": "dormant"},
        counters={"best": math.inf, "worst": -math.inf, "last_val_loss": math.nan, "failed": 0, "note": "x"},
    )


def assert_same(saved: object, loaded: object, where: str = "state") -> None:
    if isinstance(saved, torch.Tensor):
        assert isinstance(loaded, torch.Tensor), where
        assert (saved.dtype, saved.shape) == (loaded.dtype, loaded.shape), where
        assert torch.equal(saved, loaded), where
        return
    assert type(saved) is type(loaded), f"{where}: {type(saved).__name__} became {type(loaded).__name__}"
    if isinstance(saved, dict):
        assert isinstance(loaded, dict)
        assert list(saved) == list(loaded), where
        for key, value in saved.items():
            assert_same(value, loaded[key], f"{where}.{key}")
    elif isinstance(saved, list | tuple):
        assert isinstance(loaded, list | tuple)
        assert len(saved) == len(loaded), where
        for index, (a, b) in enumerate(zip(saved, loaded, strict=True)):
            assert_same(a, b, f"{where}[{index}]")
    elif isinstance(saved, float) and math.isnan(saved):
        assert isinstance(loaded, float), where
        assert math.isnan(loaded), where
    else:
        assert saved == loaded, where


def test_round_trip_is_exact_with_tuples_non_finite_floats_and_every_dtype() -> None:
    random.seed(3)
    state = sample_state()
    loaded, pending = decode_state(encode_state(state))
    assert pending == ()  # the received plans' bodies are not written: which had arrived depended on timing
    assert (loaded.global_step, loaded.epoch, loaded.batch_index) == (17, 2, 3)
    for name in ("model", "optimizer", "rng", "paused", "counters"):
        assert_same(getattr(state, name), getattr(loaded, name), name)
    python_state = loaded.rng["python"]
    assert isinstance(python_state, tuple)
    random.setstate(python_state)


def test_file_is_plain_safetensors_with_views_of_one_storage_packed_as_one_tensor() -> None:
    data = encode_state(sample_state())
    tensors = safetensors.torch.load(data)
    meta = header(data)["__metadata__"]
    assert isinstance(meta, dict)
    assert set(meta) == {"esper"}
    # The flat float32 buffer (weight, bias, step) is one tensor; the others each have their own storage.
    float32 = [t for t in tensors.values() if t.dtype == torch.float32]
    assert [t.numel() for t in float32] == [40]
    assert len(tensors) == 8  # flat, num_batches_tracked, transposed, column, mask, exp_avg, numpy keys, torch RNG


def test_distinct_dict_shapes_survive_the_json_markers() -> None:
    state = sample_state()
    state.counters = {"__tuple__": "not a marker"}
    state.model["slot._extra_state"] = {"__tensor__": [1, 2], "__float__": "inf"}
    loaded, _ = decode_state(encode_state(state))
    assert loaded.counters == {"__tuple__": "not a marker"}
    assert loaded.model["slot._extra_state"] == {"__tensor__": [1, 2], "__float__": "inf"}


@pytest.mark.parametrize(
    "data",
    [b"", b"garbage that is not a checkpoint", safetensors.torch.save({"a": torch.zeros(2)})],
    ids=["empty", "garbage", "foreign-safetensors"],
)
def test_a_non_checkpoint_is_a_checkpoint_error(data: bytes) -> None:
    with pytest.raises(CheckpointError):
        decode_state(data)


def test_an_unstorable_value_is_refused_at_encode_time() -> None:
    state = sample_state()
    state.counters = {"bad": object()}  # type: ignore[dict-item]  # deliberately outside the declared types
    with pytest.raises(TypeError, match="cannot store a object"):
        encode_state(state)


def every_dtype() -> list[torch.Tensor]:
    base = torch.arange(-3, 9, dtype=torch.float64).view(3, 4)
    made = [base.to(dtype) for dtype in (torch.float64, torch.float32, torch.float16, torch.bfloat16)]
    made += [base.to(dtype) for dtype in (torch.int64, torch.int32, torch.int16, torch.int8)]
    made += [base.abs().to(dtype) for dtype in (torch.uint8, torch.uint16, torch.uint32, torch.uint64)]
    made += [base.to(torch.float8_e4m3fn), base.to(torch.float8_e5m2), torch.complex(base, -base).to(torch.complex64)]
    made += [base > 2, torch.tensor(7.5), torch.zeros(0, 5), base.t()]  # a scalar, an empty, a transposed view
    return made


def test_the_bytes_are_a_safetensors_file_its_own_loaders_read_back_exactly(tmp_path: Path) -> None:
    tensors = every_dtype()
    data = safetensors_bytes(tensors, {"esper": '{"a": 1}', "other": "x"})
    assert int.from_bytes(data[:8], "little") % 8 == 0  # the header padded as safetensors pads it
    loaded = safetensors.torch.load(data)
    assert sorted(loaded, key=int) == [str(i) for i in range(len(tensors))]
    for index, tensor in enumerate(tensors):
        assert loaded[str(index)].dtype == tensor.dtype
        assert loaded[str(index)].shape == tensor.shape
        bits = loaded[str(index)].reshape(-1).view(torch.uint8)
        assert torch.equal(bits, tensor.contiguous().reshape(-1).view(torch.uint8))
    path = tmp_path / "t.safetensors"
    path.write_bytes(data)
    with safe_open(path, framework="pt") as file:
        assert file.metadata() == {"esper": '{"a": 1}', "other": "x"}
        assert torch.equal(file.get_tensor("1"), tensors[1])


def test_a_dtype_safetensors_cannot_name_is_refused_in_one_line() -> None:
    with pytest.raises(TypeError, match=r"cannot store a tensor of dtype torch\.complex128"):
        safetensors_bytes([torch.zeros(2, dtype=torch.complex128)], {})
