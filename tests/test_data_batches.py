"""BatchPlan: a batch order fixed by (seed, epoch), exact resume, full coverage; take, iter_batches and to_device."""

from __future__ import annotations

import pytest
import torch

from esper.nn.data import TensorPair
from esper.nn.data_batches import BatchPlan, iter_batches, take, to_device


def _pair(n: int) -> TensorPair:
    return TensorPair(x=torch.arange(n * 3, dtype=torch.float32).reshape(n, 3), y=torch.arange(n, dtype=torch.int64))


def _all(plan: BatchPlan, epoch: int, start: int = 0) -> list[list[int]]:
    return [batch.tolist() for batch in plan.iter_from(epoch, start)]


def test_same_seed_and_epoch_give_the_same_order() -> None:
    first = BatchPlan(dataset_size=100, batch_size=16, seed=7)
    second = BatchPlan(dataset_size=100, batch_size=16, seed=7)
    assert torch.equal(first.order(3), second.order(3))
    assert _all(first, 3) == _all(second, 3)


def test_different_epochs_and_seeds_give_different_orders() -> None:
    plan = BatchPlan(dataset_size=100, batch_size=16, seed=7)
    orders = [plan.order(epoch).tolist() for epoch in range(5)]
    assert len({tuple(order) for order in orders}) == 5
    assert plan.order(0).tolist() != BatchPlan(dataset_size=100, batch_size=16, seed=8).order(0).tolist()


def test_order_ignores_and_leaves_alone_the_global_torch_rng() -> None:
    plan = BatchPlan(dataset_size=50, batch_size=8, seed=1)
    torch.manual_seed(0)
    state = torch.get_rng_state()
    under_seed_0 = plan.order(2)
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(99)
    assert torch.equal(plan.order(2), under_seed_0)


@pytest.mark.parametrize("start", [0, 1, 3, 6])
def test_resuming_from_batch_k_gives_exactly_the_tail_of_the_full_order(start: int) -> None:
    plan = BatchPlan(dataset_size=101, batch_size=17, seed=3)
    assert plan.num_batches == 6
    assert _all(plan, 4, start) == _all(plan, 4)[start:]


@pytest.mark.parametrize(("size", "batch", "batches", "last"), [(100, 10, 10, 10), (101, 10, 11, 1), (7, 32, 1, 7)])
def test_each_epoch_covers_every_index_exactly_once(size: int, batch: int, batches: int, last: int) -> None:
    plan = BatchPlan(dataset_size=size, batch_size=batch, seed=0)
    chunks = list(plan.iter_from(1))
    assert plan.num_batches == batches
    assert len(chunks) == batches
    assert all(chunk.numel() == batch for chunk in chunks[:-1])
    assert chunks[-1].numel() == last
    assert all(chunk.dtype == torch.int64 for chunk in chunks)
    assert sorted(torch.cat(chunks).tolist()) == list(range(size))


def test_drop_last_skips_the_short_final_batch() -> None:
    plan = BatchPlan(dataset_size=101, batch_size=10, seed=0, drop_last=True)
    chunks = list(plan.iter_from(0))
    assert plan.num_batches == 10
    assert [chunk.numel() for chunk in chunks] == [10] * 10
    seen = torch.cat(chunks).tolist()
    assert len(set(seen)) == 100
    assert seen == plan.order(0)[:100].tolist()


def test_resuming_at_the_end_of_an_epoch_yields_nothing() -> None:
    plan = BatchPlan(dataset_size=20, batch_size=5, seed=0)
    assert _all(plan, 0, plan.num_batches) == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"dataset_size": 0, "batch_size": 1, "seed": 0}, "BatchPlan.dataset_size must be an int >= 1, got 0"),
        ({"dataset_size": 5, "batch_size": 0, "seed": 0}, "BatchPlan.batch_size must be an int >= 1, got 0"),
        ({"dataset_size": 5, "batch_size": 1, "seed": -1}, "BatchPlan.seed must be an int >= 0, got -1"),
        (
            {"dataset_size": 5, "batch_size": 8, "seed": 0, "drop_last": True},
            "BatchPlan.batch_size 8 with drop_last leaves no batch of dataset_size 5",
        ),
    ],
)
def test_bad_plan_arguments_are_refused(kwargs: dict[str, int], message: str) -> None:
    with pytest.raises(ValueError, match=f"^{message}$"):
        BatchPlan(**kwargs)  # type: ignore[arg-type]  # kwargs values are deliberately wrong


def test_bad_positions_are_refused() -> None:
    plan = BatchPlan(dataset_size=20, batch_size=5, seed=0)
    with pytest.raises(ValueError, match=r"^batch_index must be an int in \[0, 4\], got 5$"):
        plan.iter_from(0, 5)
    with pytest.raises(ValueError, match=r"^batch_index must be an int in \[0, 4\], got -1$"):
        plan.iter_from(0, -1)
    with pytest.raises(ValueError, match=r"^epoch must be an int >= 0, got -1$"):
        plan.order(-1)


def test_take_gathers_rows_of_features_and_labels() -> None:
    data = _pair(10)
    batch = take(data, torch.tensor([7, 2, 2], dtype=torch.int64))
    assert batch.y.tolist() == [7, 2, 2]
    assert batch.x.tolist() == [[21.0, 22.0, 23.0], [6.0, 7.0, 8.0], [6.0, 7.0, 8.0]]


def test_iter_batches_yields_positions_and_batches_and_resumes() -> None:
    data = _pair(23)
    plan = BatchPlan(dataset_size=23, batch_size=5, seed=11)
    full = list(iter_batches(data, plan, epoch=2))
    assert [index for index, _ in full] == [0, 1, 2, 3, 4]
    for (_, batch), indices in zip(full, plan.iter_from(2), strict=True):
        assert torch.equal(batch.y, indices)
        assert torch.equal(batch.x, data.x[indices])
    resumed = list(iter_batches(data, plan, epoch=2, batch_index=3))
    assert [index for index, _ in resumed] == [3, 4]
    assert all(torch.equal(a.x, b.x) for (_, a), (_, b) in zip(resumed, full[3:], strict=True))


def test_iter_batches_refuses_a_plan_for_another_size() -> None:
    plan = BatchPlan(dataset_size=10, batch_size=5, seed=0)
    with pytest.raises(ValueError, match=r"^plan.dataset_size 10 does not match the data's 9 samples$"):
        next(iter_batches(_pair(9), plan, epoch=0))


@pytest.mark.parametrize("device", ["cpu", torch.device("cpu")])
def test_to_device_on_cpu_returns_the_same_objects(device: str | torch.device) -> None:
    batch = _pair(4)
    moved = to_device(batch, device)
    assert moved is batch
    assert moved.x is batch.x
    assert moved.y is batch.y


def test_to_device_elsewhere_copies_with_a_plain_move() -> None:
    batch = _pair(4)
    moved = to_device(batch, "meta")
    assert moved.x.device == torch.device("meta")
    assert moved.y.device == torch.device("meta")
    assert moved.x.shape == (4, 3)
    assert batch.x.device == torch.device("cpu")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_to_device_on_cuda_pins_and_copies_asynchronously_then_is_a_no_op() -> None:
    batch = _pair(64)
    moved = to_device(batch, "cuda")
    assert moved.x.device.type == "cuda"
    assert moved.y.device.type == "cuda"
    torch.cuda.current_stream().synchronize()
    assert torch.equal(moved.x.cpu(), batch.x)
    assert torch.equal(moved.y.cpu(), batch.y)
    assert not batch.x.is_pinned()  # the caller's tensor is untouched; a pinned staging copy was made
    assert to_device(moved, "cuda") is moved
    assert to_device(moved, moved.x.device) is moved
    pinned = TensorPair(x=batch.x.pin_memory(), y=batch.y.pin_memory())
    again = to_device(pinned, "cuda")
    torch.cuda.current_stream().synchronize()
    assert torch.equal(again.x.cpu(), batch.x)
