"""Shared fixtures: a manual clock and a recording event sink, fresh for every test."""

from __future__ import annotations

import pytest

from esper.runtime.clock import ManualClock
from esper.runtime.events import RecordingSink


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def sink() -> RecordingSink:
    return RecordingSink()
