"""StepQueue: what a boundary takes out of the receipts and reports waiting for it, in order or not."""

from __future__ import annotations

import random

import pytest

from actors.kasmina.step_queue import StepQueue


def _reference(items: list[tuple[int, str]], through: int) -> tuple[list[tuple[int, str]], list[tuple[int, str]]]:
    return [i for i in items if i[0] <= through], [i for i in items if i[0] > through]


def test_items_in_step_order_are_taken_as_a_prefix() -> None:
    queue: StepQueue[tuple[int, str]] = StepQueue(lambda item: item[0])
    for item in ((1, "a"), (3, "b"), (3, "c"), (7, "d")):
        queue.append(item)
    assert queue.take_through(0) == []
    assert queue.take_through(3) == [(1, "a"), (3, "b"), (3, "c")]
    assert len(queue) == 1
    assert queue.take_through(100) == [(7, "d")]
    assert len(queue) == 0


@pytest.mark.parametrize("seed", range(20))
def test_any_arrival_order_takes_what_a_filter_takes(seed: int) -> None:
    rng = random.Random(seed)
    queue: StepQueue[tuple[int, str]] = StepQueue(lambda item: item[0])
    left: list[tuple[int, str]] = []
    for n in range(60):
        item = (rng.randrange(0, 40) if rng.random() < 0.2 else n, f"i{n}")
        queue.append(item)
        left.append(item)
        if rng.random() < 0.3:
            through = rng.randrange(-1, 60)
            due, left = _reference(left, through)
            assert queue.take_through(through) == due
            assert len(queue) == len(left)
    assert queue.take_through(10**6) == left
