"""The drain of Tamiyo's and Kasmina's queues at a stop: what its warning says when the deadline passes."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, cast, final

from structlog.testing import capture_logs

from esper.pipeline_drain import drain_pipeline

if TYPE_CHECKING:
    from esper.runtime.system import ActorSystem


@final
class _Silent:
    """An actor that never answers an ask."""

    async def ask(self, msg: object, reply_type: type[object]) -> object:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


@final
class _Actors:
    def ref(self, path: str, actor_type: type[object]) -> _Silent:
        return _Silent()


async def test_a_drain_past_its_deadline_says_what_it_waited_for_and_how_long() -> None:
    """The warning read ``error='TimeoutError: '``: nothing about what was waited for."""
    with capture_logs() as logs:
        await drain_pipeline(cast("ActorSystem", _Actors()), 0.01)
    warnings = [e for e in logs if e["event"] == "pipeline_drain_incomplete"]
    assert [e["error"] for e in warnings] == [
        "TimeoutError: the packets queued before the stop were not all planned within 0.01 s"
        " (still waiting for tamiyo to answer its barrier)"
    ]
