"""The handoff store: each prepared object is taken exactly once, by handle, from any thread."""

from __future__ import annotations

import threading

import pytest

from esper.runtime.errors import HandoffMissing
from esper.runtime.handoff import Handoff


def test_put_then_take_once() -> None:
    store: Handoff[str] = Handoff(capacity=2)
    handle = store.put("module", prefix="seed-7")
    assert handle.startswith("seed-7-")
    assert len(store) == 1
    assert store.take(handle) == "module"
    with pytest.raises(HandoffMissing, match="no prepared item under handle"):
        store.take(handle)


def test_capacity_and_discard() -> None:
    store: Handoff[int] = Handoff(capacity=1)
    handle = store.put(1)
    with pytest.raises(OverflowError, match="handoff store full"):
        store.put(2)
    assert store.discard(handle)
    assert not store.discard(handle)
    store.put(3)


def test_take_from_another_thread() -> None:
    store: Handoff[list[int]] = Handoff()
    handle = store.put([1, 2])
    taken: list[list[int]] = []
    worker = threading.Thread(target=lambda: taken.append(store.take(handle)))
    worker.start()
    worker.join()
    assert taken == [[1, 2]]
    assert len(store) == 0
