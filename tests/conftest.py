"""Shared fixtures: a manual clock and an event sink per test; process-wide state reset after each; slow tests first."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import pytest
import torch

from esper.logs import reset_logging
from esper.runtime.clock import ManualClock
from esper.runtime.events import RecordingSink

if TYPE_CHECKING:
    from collections.abc import Iterator

# The real Redis server's client and key-prefix fixtures, for the bus tests that use them.
pytest_plugins = ["tests._redis_fixtures"]

# One torch thread in each test process and the runs it starts (they inherit the environment): pytest-xdist already
# runs a worker per core, and the tests' tiny models train slower on more threads than on one.
os.environ["OMP_NUM_THREADS"] = "1"
torch.set_num_threads(1)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Slow tests first: pytest-xdist hands tests out in this order, so each worker's last tests are short ones and the
    # workers finish together (with the slow ones spread through the order, one worker ran alone for most of a minute).
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def sink() -> RecordingSink:
    return RecordingSink()


@pytest.fixture(autouse=True)
def _reset_process_wide_state() -> Iterator[None]:
    # structlog's configuration is process-wide; a test that configures it must not leak into the next. So is torch's
    # intra-op thread count, which a run started in the test process with tolaria.num_threads sets.
    yield
    reset_logging()
    torch.set_num_threads(1)
