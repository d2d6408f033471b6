"""events() streams nobody iterates: not reported as consumers that fell behind, and no unclosed stream left."""

from __future__ import annotations

import gc
import warnings

from structlog.testing import capture_logs

from esper.session_events import EventHub
from schemas.run import RunSummary
from schemas.runtime import ChildFailed

_EVENT = ChildFailed(supervisor="s", child="c", error_type="E", error="x")
_LAST = RunSummary(
    run_id="r", run_dir="d", status="completed", started_at="", duration_s=0.0, exit_code=0, dead_letters=0
)


async def test_a_stream_never_iterated_is_no_consumer_that_fell_behind() -> None:
    """A notebook's events() made and never iterated filled up and was logged as a consumer that fell behind
    (events_missed); one made and dropped also left its stream unclosed (an anyio ResourceWarning)."""
    hub = EventHub(buffer_size=2)
    kept = hub.subscribe()
    hub.subscribe()  # made and dropped at once
    behind = hub.subscribe()
    hub.emit(_EVENT)
    assert await anext(behind) == _EVENT  # read once, then left behind
    with warnings.catch_warnings(record=True) as caught, capture_logs() as logs:
        warnings.simplefilter("always")
        gc.collect()
        for _ in range(5):
            hub.emit(_EVENT)
        hub.close(last=_LAST)
        gc.collect()
    assert [entry["event"] for entry in logs] == ["events_missed"]  # the one that was read, only
    assert logs[0]["missed"] == 3
    assert [str(warning.message) for warning in caught] == []
    assert [event async for event in kept] == [_EVENT, _EVENT, _LAST]  # what it holds is still there to read
    assert [event async for event in behind] == [_EVENT, _EVENT, _LAST]


async def test_a_stream_let_go_unread_is_closed_and_dropped_by_the_hub() -> None:
    hub = EventHub(buffer_size=2)
    stream = hub.subscribe()
    del stream
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gc.collect()
        hub.emit(_EVENT)  # finds its reader gone: the subscription ends
    assert [str(warning.message) for warning in caught] == []
    assert hub._subscribers == []
    assert hub.dropped == 0
