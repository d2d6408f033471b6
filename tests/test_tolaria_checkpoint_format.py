"""The checkpoint file format: safetensors tensors plus a JSON header entry, round-tripped bitwise without pickle."""

from __future__ import annotations

import math
import random

import msgspec
import pytest
import safetensors.torch
import torch

from actors.tolaria.checkpoints import CheckpointError, decode_state, encode_state
from actors.tolaria.snapshots import TrainState, rng_state


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
    loaded, pending = decode_state(encode_state(state, ('{"plan": 1}',)))
    assert pending == ('{"plan": 1}',)
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
