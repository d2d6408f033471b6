"""A supervisor's record of each child, and what is done to one child: stopping it within its deadline or for good."""

from __future__ import annotations

import asyncio
import math
from typing import TYPE_CHECKING, Any, Never, final

import structlog

from esper.runtime.actor import Actor
from esper.runtime.errors import ActorStopped, ChildStartFailed, UnrecoverableFailure, describe_error
from esper.runtime.failure_trace import failure_traceback, user_frame
from schemas.enums import ActorStatus
from schemas.runtime import ChildFailed

if TYPE_CHECKING:
    from esper.runtime.child_spec import ChildSpec
    from esper.runtime.clock import Clock
    from esper.runtime.mailbox import Mailbox
    from esper.runtime.supervisor import Supervisor
    from esper.runtime.tree_runtime import Runtime

_log = structlog.get_logger("esper.runtime")


@final
class Child:
    """The supervisor's record of one child across its incarnations."""

    __slots__ = (
        "done",
        "incarnation",
        "index",
        "instance",
        "last_error",
        "mailbox",
        "path",
        "restarts",
        "spec",
        "status",
        "task",
    )

    def __init__(self, spec: ChildSpec, path: str, index: int) -> None:
        self.spec = spec
        self.path = path
        self.index = index
        self.instance: Actor[Never] | Supervisor | None = None
        self.task: asyncio.Task[None] | None = None
        self.mailbox: Mailbox[Any] | None = None
        self.incarnation = 0
        self.restarts = 0
        self.status = ActorStatus.STARTING
        self.done = False
        self.last_error: Exception | None = None


def start_failure(child: Child) -> ChildStartFailed | None:
    """What a child supervisor that could not build its own child failed with; None for any other ending."""
    error = child.last_error
    return error if isinstance(error, ChildStartFailed) else None


def unrecoverable_failure(child: Child, error: Exception, cause: OSError) -> UnrecoverableFailure:
    """The escalation for ``error``, which a full or read-only disk (``cause``) caused: no restart can fix it."""
    if isinstance(error, UnrecoverableFailure):
        return UnrecoverableFailure(str(error))  # a child supervisor's: its message already names the actor
    where = f" ({cause.filename})" if cause.filename else ""
    return UnrecoverableFailure(
        f"{child.path} failed: {cause.strerror or cause}{where}; a restart cannot fix that, so every actor stopped"
    )


def emit_failed(rt: Runtime, supervisor: str, child: Child, error: Exception) -> None:
    # The sink is the log's one channel for typed events (a run's logs them; logging here as well doubled them).
    error_type, text = describe_error(error)
    rt.sink.emit(
        ChildFailed(
            supervisor=supervisor,
            child=child.path,
            error_type=error_type,
            error=text,
            user_frame=user_frame(error),
            traceback=failure_traceback(error),
        )
    )


async def stop_children(rt: Runtime, supervisor: str, children: list[Child], *, for_good: bool) -> None:
    """Stop each child in the order given, each within its shutdown deadline (then cancelled)."""
    for child in children:
        task, instance = child.task, child.instance
        if task is not None and instance is not None:
            child.status = ActorStatus.STOPPING
            instance._request_stop()
            deadline_s = child.spec.shutdown_deadline_s
            cancelled = not await wait_task(rt.clock, task, deadline_s)
            if cancelled:
                emit_deadline_exceeded(rt, supervisor, child, deadline_s)
                task.cancel()
                await asyncio.wait((task,))
                count_cancelled(rt, child)
            child.task = None
            if child.last_error is not None:
                emit_failed(rt, supervisor, child, child.last_error)
            # A cancelled child ended failed: "stopped ... failed 0" hid a hung handler (and the work it never did).
            child.status = ActorStatus.FAILED if cancelled else ActorStatus.STOPPED
        if for_good:
            close_for_good(rt, child)


def count_cancelled(rt: Runtime, child: Child) -> None:
    """Count the cancel of a child past its shutdown deadline as a failure of that actor (its failed count, kept
    across its restarts); a nested supervisor keeps no count of its own."""
    instance = child.instance
    if isinstance(instance, Actor):
        instance._count_cancelled()
        state = instance.state()
        rt.handled[child.path] = (state.handled, state.failed)


def emit_deadline_exceeded(rt: Runtime, supervisor: str, child: Child, deadline_s: float) -> None:
    message = f"child {child.path} did not stop within {deadline_s} s; cancelled"
    _log.error("shutdown_deadline_exceeded", supervisor=supervisor, child=child.path, deadline_s=deadline_s)
    rt.sink.emit(
        ChildFailed(supervisor=supervisor, child=child.path, error_type="ShutdownDeadlineExceeded", error=message)
    )


async def wait_task(clock: Clock, task: asyncio.Task[None], deadline_s: float) -> bool:
    """Wait for task to finish within deadline_s on the clock; True if it finished."""
    if task.done():
        return True
    if math.isinf(deadline_s):
        await asyncio.wait((task,))
        return True
    async with asyncio.TaskGroup() as tg:
        timer = tg.create_task(clock.sleep(deadline_s))
        await asyncio.wait((task, timer), return_when=asyncio.FIRST_COMPLETED)
        timer.cancel()
    return task.done()


def close_for_good(rt: Runtime, child: Child) -> None:
    """The child will not run again under its supervisor: close its mailbox and fail what is queued."""
    child.done = True
    if child.status not in (ActorStatus.FAILED, ActorStatus.STOPPED):
        child.status = ActorStatus.STOPPED
    mailbox = child.mailbox
    if mailbox is None or mailbox.closed:
        return
    mailbox.close()
    for msg, reply in mailbox.drain():
        rt.dead_letters.record(child.path, msg, "actor stopped with the message queued")
        if reply is not None and not reply.done():
            reply.set_exception(ActorStopped(f"actor {child.path} stopped before answering {type(msg).__name__}"))
