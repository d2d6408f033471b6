"""Snapshot captures: private copies that stay put, and pooled buffers reused only when free and the layout holds."""

from __future__ import annotations

import copy
import gc
from typing import TYPE_CHECKING

import pytest
import torch
import torch.nn.functional as F

from actors.tolaria.build import Trainee, build_trainee, load_data
from actors.tolaria.capture_pool import CapturePool
from actors.tolaria.snapshots import TrainState, capture, reserve_capture
from schemas.config import TolariaConfig

if TYPE_CHECKING:
    from collections.abc import Callable


def _trainee() -> tuple[Trainee, Callable[[], None]]:
    config = TolariaConfig(dataset_samples=200)
    data = load_data(config)
    trainee = build_trainee(config, data, (), torch.device("cpu"))
    x, y = data.train.x[:32], data.train.y[:32]

    def step() -> None:
        trainee.optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(trainee.model(x), y).backward()  # type: ignore[no-untyped-call]  # torch leaves it bare
        trainee.optimizer.step()

    step()
    return trainee, step


def _capture(trainee: Trainee, pool: CapturePool | None) -> TrainState:
    return capture(
        trainee, global_step=1, epoch=0, batch_index=1, graft_log=[], counters={}, keep_modules=False, pool=pool
    )


def _tensors(state: TrainState) -> dict[str, torch.Tensor]:
    out = {k: v.clone() for k, v in state.model.items() if isinstance(v, torch.Tensor)}
    for name, saved in state.optimizer["state"].items():  # type: ignore[attr-defined]  # a dict by construction
        out.update({f"opt:{name}:{k}": v.clone() for k, v in saved.items() if isinstance(v, torch.Tensor)})
    return out


def _storage(state: TrainState) -> int:
    first = next(v for v in state.model.values() if isinstance(v, torch.Tensor))
    return first.untyped_storage().data_ptr()


def test_a_capture_equals_the_training_state_and_stays_put_while_training_goes_on() -> None:
    trainee, step = _trainee()
    state = _capture(trainee, None)
    model_now = {k: v.clone() for k, v in trainee.model.state_dict().items() if isinstance(v, torch.Tensor)}
    moments = {k: v.clone() for k, v in trainee.optimizer.state[next(trainee.model.parameters())].items()}
    step()
    for key, value in model_now.items():
        saved = state.model[key]
        assert isinstance(saved, torch.Tensor)
        assert torch.equal(saved, value), key
    first = next(iter(state.optimizer["state"].values()))  # type: ignore[attr-defined]  # a dict by construction
    for key, value in moments.items():
        assert torch.equal(first[key], value), key
    expected = sum(v.numel() * v.element_size() for v in model_now.values())
    assert state.nbytes > expected  # the model plus the optimizer's moments


def test_a_pooled_capture_equals_an_unpooled_one_and_stays_put_while_training_goes_on() -> None:
    trainee, step = _trainee()
    pool = CapturePool()
    pooled = _capture(trainee, pool)
    plain = _capture(trainee, None)
    expected = _tensors(plain)
    assert expected.keys() == _tensors(pooled).keys()
    for key, value in _tensors(pooled).items():
        assert torch.equal(value, expected[key]), key
    assert pooled.nbytes == plain.nbytes
    step()
    for key, value in _tensors(pooled).items():
        assert torch.equal(value, expected[key]), key  # the held state did not move with training


def test_buffers_are_reused_only_after_the_state_holding_them_is_gone() -> None:
    trainee, step = _trainee()
    pool = CapturePool(max_sets=2)
    first = _capture(trainee, pool)
    second = _capture(trainee, pool)
    assert _storage(first) != _storage(second)  # both held: two sets
    third = _capture(trainee, pool)  # both sets still held: fresh, unpooled buffers
    assert len({_storage(first), _storage(second), _storage(third)}) == 3
    kept = _tensors(second)
    address = _storage(first)
    del first
    gc.collect()
    step()
    fourth = _capture(trainee, pool)
    assert _storage(fourth) == address  # the released set, filled again
    assert (pool.reused, pool.allocated) == (1, 3)
    for key, value in _tensors(second).items():
        assert torch.equal(value, kept[key]), key  # reusing one set never touches another
    for key, value in _tensors(fourth).items():
        assert torch.equal(value, _tensors(_capture(trainee, None))[key]), key
    del third


def test_a_changed_layout_is_noticed_and_never_copied_into_stale_buffers() -> None:
    trainee, step = _trainee()
    pool = CapturePool(max_sets=1)
    state = _capture(trainee, pool)
    del state
    # Loading a copy of the optimizer state (as a rollback does) replaces its tensors: the same names, new objects.
    trainee.optimizer.load_state_dict(copy.deepcopy(trainee.optimizer.state_dict()))
    step()
    after = _capture(trainee, pool)
    assert (pool.reused, pool.allocated) == (0, 2)
    for key, value in _tensors(after).items():
        assert torch.equal(value, _tensors(_capture(trainee, None))[key]), key


def test_reserved_sets_serve_the_next_captures_without_allocating_and_hold_their_values() -> None:
    trainee, step = _trainee()
    pool = CapturePool(max_sets=2)
    assert reserve_capture(trainee, pool) == 2
    assert reserve_capture(trainee, pool) == 0, "the layout holds and both sets are free: nothing more to allocate"
    step()
    first = _capture(trainee, pool)
    step()
    second = _capture(trainee, pool)
    assert (pool.allocated, pool.reused) == (2, 2)
    assert _storage(first) != _storage(second)
    for key, value in _tensors(second).items():
        assert torch.equal(value, _tensors(_capture(trainee, None))[key]), key


def test_a_reservation_for_a_changed_layout_drops_the_old_sets() -> None:
    trainee, step = _trainee()
    pool = CapturePool(max_sets=1)
    reserve_capture(trainee, pool)
    trainee.optimizer.load_state_dict(copy.deepcopy(trainee.optimizer.state_dict()))
    step()
    assert reserve_capture(trainee, pool) == 1
    after = _capture(trainee, pool)
    assert (pool.allocated, pool.reused) == (2, 1)
    for key, value in _tensors(after).items():
        assert torch.equal(value, _tensors(_capture(trainee, None))[key]), key


def test_max_sets_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="max_sets"):
        CapturePool(max_sets=0)
