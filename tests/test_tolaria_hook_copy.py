"""The epoch end's state copy against the hook budget, and the fast snapshot tier switched off by its memory cap.

The copy of the weights and optimizer state into the capture buffers grows with the model and the run cannot skip
it: ``tolaria.epoch_hook_budget_ms`` bounds the rest of the epoch end (a 36M-parameter model failed every epoch on the
copy alone and halted a healthy run). The clock is the loop's ``time.perf_counter``, moved forward by the slow part.
"""

from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING

import pytest
import structlog.testing

from actors.tamiyo.risk import RiskContext
from actors.tolaria.build import load_data
from actors.tolaria.isolation_monitor import IsolationMonitor
from actors.tolaria.loop_state import LoopState
from actors.tolaria.snapshots import SnapshotStore, TrainState
from tests.test_tolaria_loop import TINY, Box, config, make_loop

if TYPE_CHECKING:
    from collections.abc import Callable

    from esper.nn.data import DataSplits

pytestmark = pytest.mark.timeout(90)

_SLOW_S = 1.0  # 1000 ms: twenty times the default 50 ms budget


@pytest.fixture(scope="module")
def data() -> DataSplits:
    return load_data(config(**TINY))


@pytest.fixture
def advance(monkeypatch: pytest.MonkeyPatch) -> Callable[[], None]:
    """Moves the loop's clock forward by ``_SLOW_S`` each call."""
    offset = [0.0]
    real = time.perf_counter
    monkeypatch.setattr(time, "perf_counter", lambda: real() + offset[0])

    def step() -> None:
        offset[0] += _SLOW_S

    return step


def test_a_slow_state_copy_fails_no_epoch_and_is_said_once(
    data: DataSplits, monkeypatch: pytest.MonkeyPatch, advance: Callable[[], None]
) -> None:
    real_capture = LoopState.capture

    def slow_capture(state: LoopState, *, keep_modules: bool, pooled: bool = True) -> TrainState:
        captured = real_capture(state, keep_modules=keep_modules, pooled=pooled)
        advance()
        return captured

    monkeypatch.setattr(LoopState, "capture", slow_capture)
    box = Box()
    loop = make_loop(config(), data, box=box)
    with structlog.testing.capture_logs() as logs:
        result = loop.run()
    assert result.status == "completed"
    assert [e for e in logs if e["event"] == "epoch_failed"] == []
    assert loop.policy.failed_epochs == 0
    # hook_ms stays the whole epoch end; capture_ms is the copy within it.
    assert len(loop.capture_ms_history) == 3
    assert all(ms >= 1000.0 for ms in loop.capture_ms_history)
    assert all(h >= c for h, c in zip(loop.hook_ms_history, loop.capture_ms_history, strict=True))
    ends = [e for e in logs if e["event"] == "epoch_end"]
    assert [e["capture_ms"] for e in ends] == [round(ms, 3) for ms in loop.capture_ms_history]
    assert [e["hook_ms"] for e in ends] == [round(ms, 3) for ms in loop.hook_ms_history]
    said = [e for e in logs if e["event"] == "state_copy_over_hook_budget"]
    assert len(said) == 1
    assert said[0]["epoch"] == 1
    assert said[0]["detail"].startswith(f"the state copy took {loop.capture_ms_history[0]:.1f} ms for ")
    assert (
        "MB at this epoch end; the hook budget (tolaria.epoch_hook_budget_ms 50) does not count it"
        in (said[0]["detail"])
    )
    # The packet keeps the whole time (metrics.csv's hook_latency_ms) and the copy's; the risk engine's hook veto
    # judges the rest, as the budget does (a large model was vetoed on every packet).
    packet = next(p for p in box.packets if p.epoch_progress == 1.0)
    assert packet.hook_latency_ms == pytest.approx(loop.hook_ms_history[0])
    assert packet.hook_capture_ms == pytest.approx(loop.capture_ms_history[0])
    assert RiskContext.from_packet(packet, conservative=False).hook_latency_ms < 50.0


def test_a_slow_probe_still_fails_the_epoch_on_the_hook_budget(
    data: DataSplits, monkeypatch: pytest.MonkeyPatch, advance: Callable[[], None]
) -> None:
    real_probe = IsolationMonitor.maybe_probe

    def slow_probe(monitor: IsolationMonitor, *args: object, **kwargs: object) -> None:
        real_probe(monitor, *args, **kwargs)  # type: ignore[arg-type]
        advance()

    monkeypatch.setattr(IsolationMonitor, "maybe_probe", slow_probe)
    loop = make_loop(config(epochs=2), data)
    with structlog.testing.capture_logs() as logs:
        loop.run()
    failed = [e for e in logs if e["event"] == "epoch_failed"]
    assert [e["reason"] for e in failed] == ["hook_budget"] * 2
    budgeted = [h - c for h, c in zip(loop.hook_ms_history, loop.capture_ms_history, strict=True)]
    assert [e["detail"] for e in failed] == [
        f"hook_ms {ms:.1f} over tolaria.epoch_hook_budget_ms 50.0" for ms in budgeted
    ]
    assert all(ms >= 1000.0 for ms in budgeted)
    assert not [e for e in logs if e["event"] == "state_copy_over_hook_budget"]


def test_a_first_snapshot_over_the_cap_says_the_tier_is_off_with_the_setting(data: DataSplits) -> None:
    """The run's start's snapshot over the cap switched the fast tier off silently (its put's False ignored), and no
    epoch end said it later: rollbacks went to the checkpoint with no word why."""
    loop = make_loop(config(snapshot_memory_cap_mb=0.001), data)
    with structlog.testing.capture_logs() as logs:
        assert loop.run().status == "completed"
    events = [e["event"] for e in logs]
    said = [e for e in logs if e["event"] == "snapshot_tier_disabled"]
    assert len(said) == 1
    assert events.index("snapshot_tier_disabled") < events.index("epoch_end")  # at the start
    assert re.fullmatch(
        r"the snapshot of [\d.]+ MB exceeds tolaria\.snapshot_memory_cap_mb 0\.000999", said[0]["reason"]
    )
    assert "restores the newest checkpoint instead" in said[0]["detail"]
    assert "set tolaria.snapshot_memory_cap_mb above" in said[0]["detail"]


def _state(nbytes: int) -> TrainState:
    return TrainState(0, 0, 0, {}, {}, {}, [], {}, {}, nbytes=nbytes)


def test_a_snapshot_over_the_cap_is_said_once_in_megabytes() -> None:
    store = SnapshotStore(4 * 2**20)
    with structlog.testing.capture_logs() as logs:
        assert store.put(_state(2**20))
        assert not store.put(_state(5 * 2**20 + 1))
        assert not store.put(_state(6 * 2**20))
    assert store.latest is None
    said = [e for e in logs if e["event"] == "snapshot_tier_disabled"]
    assert [e["reason"] for e in said] == ["the snapshot of 5 MB exceeds tolaria.snapshot_memory_cap_mb 4"]
    assert "set tolaria.snapshot_memory_cap_mb above 6 to keep it" in said[0]["detail"]
