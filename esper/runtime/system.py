"""ActorSystem: runs a supervisor tree inside an already running event loop (a notebook, a service, a test)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, TypeVar, final

import msgspec
import structlog

from esper.runtime.errors import SupervisorGaveUp
from esper.runtime.ref import DeadLetters
from esper.runtime.supervisor import Supervisor
from esper.runtime.tree_runtime import Runtime

if TYPE_CHECKING:
    from esper.runtime.actor import Actor
    from esper.runtime.child_spec import ChildSpec
    from esper.runtime.clock import Clock
    from esper.runtime.events import EventSink
    from esper.runtime.ref import ActorRef
    from schemas.runtime import ActorState

M = TypeVar("M", bound=msgspec.Struct)

_log = structlog.get_logger("esper.runtime")


@final
class ActorSystem:
    """One supervisor tree running as tasks of the current event loop. Never calls ``asyncio.run``.

    The system holds exactly one task, created by start(): it runs the root supervisor, whose TaskGroup holds every
    other task of the tree (nested supervisors hold theirs). If that task fails (the root gave up), the error is
    logged when it happens and raised by wait().

    Refs: a ref obtained from ref() stays valid across restarts: each actor path has one mailbox for the life of
    the system, and a restarted incarnation takes over the same mailbox with its queued messages. While the actor
    is stopped for good (or its supervisor is between restarts of the subtree) tell/ask raise ActorStopped.

    Event-loop only: call every method from the loop the system was started on.
    """

    def __init__(self, *, clock: Clock, sink: EventSink, dead_letter_log_limit: int = 10) -> None:
        """Args:
        clock: every restart window, backoff and shutdown deadline reads this clock.
        sink: receives ChildFailed, ChildRestarted and SupervisorEscalated events.
        dead_letter_log_limit: how many dead letters are logged before they are only counted.
        """
        self._runtime = Runtime(clock=clock, sink=sink, dead_letters=DeadLetters(dead_letter_log_limit))
        self._root: Supervisor | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def dead_letters(self) -> int:
        """How many messages could not be delivered so far."""
        return self._runtime.dead_letters.count

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def start(self, root: Supervisor | ChildSpec) -> None:
        """Start the tree as tasks of the running loop and return once every child's on_start has run.

        A ChildSpec is wrapped in a one_for_one root supervisor with the default restart intensity.
        Cancelling start() leaves the tree running; stop() it.

        Raises:
            RuntimeError: the system was started before.
            SupervisorGaveUp: the root gave up while starting (RestartIntensityExceeded, UnrecoverableFailure).
        """
        if self._root is not None:
            raise RuntimeError("ActorSystem.start() may be called once")
        self._root = root if isinstance(root, Supervisor) else Supervisor([root])
        started = asyncio.Event()
        # The one task the system holds; the root supervisor's TaskGroup owns everything below it.
        self._task = asyncio.get_running_loop().create_task(
            self._root._run(self._runtime, started), name="esper-actor-system"
        )
        self._task.add_done_callback(self._on_done)
        async with asyncio.TaskGroup() as tg:
            waiter = tg.create_task(started.wait())
            await asyncio.wait((waiter, self._task), return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
        if self._task.done():
            await self._task

    def snapshot(self) -> list[ActorState]:
        """Every actor (and nested supervisor) in the tree, with restart counts; empty before start(). Never blocks."""
        return [] if self._root is None else self._root.snapshot()

    def ref(self, path: str, actor_type: type[Actor[M]]) -> ActorRef[M]:
        """The ref of the actor at path (``"tolaria"``, ``"prefetch/worker-0"``), typed by its actor class.

        Raises:
            ValueError: no actor has been started at path.
            TypeError: the actor at path is not an instance of actor_type.
        """
        ref = self._runtime.refs.get(path)
        actual = self._runtime.actor_types.get(path)
        if ref is None or actual is None:
            known = ", ".join(sorted(self._runtime.refs)) or "none"
            raise ValueError(f"no actor at path {path!r}; known: {known}")
        if not issubclass(actual, actor_type):
            raise TypeError(f"actor {path!r} is a {actual.__name__}, not a {actor_type.__name__}")
        return ref

    async def wait(self) -> None:
        """Wait until the tree stops. Cancelling wait() does not stop the tree.

        Raises:
            RuntimeError: the system was never started.
            SupervisorGaveUp: the root supervisor gave up (every actor has been stopped).
        """
        if self._task is None:
            raise RuntimeError("ActorSystem.wait() before start()")
        await asyncio.shield(self._task)

    async def stop(self) -> None:
        """Ordered shutdown: children stop in reverse start order, each within its deadline. Idempotent.

        Returns normally even if the root had already given up (wait() raises that). Cancelling stop() does not
        interrupt the shutdown, which carries on in the system's task.
        """
        if self._root is None or self._task is None:
            return
        self._root._request_stop()
        with contextlib.suppress(SupervisorGaveUp):
            await asyncio.shield(self._task)

    def _on_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        error = task.exception()
        if error is not None:
            _log.error("actor_system_failed", error_type=type(error).__name__, error=str(error))
