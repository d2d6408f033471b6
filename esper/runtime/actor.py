"""The actor base class: hooks, the message loop, the failure rules and the state snapshot."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, ClassVar, Generic, TypeVar, TypeVarTuple

import msgspec
import structlog

from esper.runtime.errors import ActorStopped, StrayCancellation
from schemas.enums import ActorStatus, BreakerState
from schemas.runtime import ActorState

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from esper.runtime.mailbox import Mailbox, Reply
    from esper.runtime.ref import ActorRef, DeadLetters

_log = structlog.get_logger("esper.runtime.actor")

M_contra = TypeVar("M_contra", bound=msgspec.Struct, contravariant=True)
T = TypeVar("T")
Ts = TypeVarTuple("Ts")

DEFAULT_CAPACITY = 1024


class Actor(Generic[M_contra]):
    """Base of every actor. Subclass it once (subclasses are ``@final``) and override the hooks.

    ``handle`` matches over the inbox union and ends in ``assert_never``. Every hook runs as a coroutine on the event
    loop that runs the actor system, inside the task the supervisor holds for this incarnation; none may block (put
    blocking or GPU work on a lane).

    Failure rules (a CancelledError a hook raises while nobody is cancelling the actor, as when it awaited a future
    another task cancelled, counts as an exception: StrayCancellation):
        - an exception while answering an ask goes back to the asker; the actor keeps running;
        - an exception while handling a tell crashes the actor: on_stop runs, then the supervisor decides (restart
          with a fresh instance from the child spec's factory, or stop);
        - when the actor stops, the ask it was answering fails with ActorStopped; queued asks fail once the
          supervisor closes the mailbox for good (a restart keeps them queued for the next incarnation).

    handled and failed count every incarnation of the actor in the run (the supervisor carries them over a restart,
    as it counts the restarts); the last latency is this incarnation's, the handler's own work: the time it waited in
    ``until_stopping`` (a timer, a bus) is not counted. An actor whose one message is a job that lasts the run sets
    ``reports_latency`` False: its state then says None rather than the run's length, which reads as a stall.
    """

    reports_latency: ClassVar[bool] = True

    def __init__(self, *, inbox: tuple[type[M_contra], ...], capacity: int = DEFAULT_CAPACITY) -> None:
        """Args:
        inbox: the members of the inbox union; a message of any other type is refused at the sender.
        capacity: mailbox capacity (> 0), used when the supervisor first creates the mailbox.
        """
        if capacity <= 0:
            raise ValueError(f"capacity must be > 0, got {capacity}")
        if not inbox:
            raise ValueError("inbox must name at least one message type")
        self._inbox = inbox
        self._capacity = capacity
        self._name = ""
        self._mailbox: Mailbox[M_contra] | None = None
        self._ref: ActorRef[M_contra] | None = None
        self._dead_letters: DeadLetters | None = None
        self._status = ActorStatus.STARTING
        self._restarts = 0
        self._handled = 0
        self._failed = 0
        self._last_latency_s: float | None = None
        self._waited_s = 0.0  # in until_stopping, during the message being handled
        self._stop_requested = False
        self._stopping = asyncio.Event()

    # ------------------------------------------------------------------ hooks

    async def on_start(self) -> None:
        """Run once per incarnation before the first message. Keep it short: siblings start after it returns.

        Raises: any exception counts as a crash; the supervisor decides (on_stop does not run). A cancel (a stop past
        the shutdown deadline) runs on_abandon.
        """

    async def handle(self, msg: M_contra) -> object | None:
        """Handle one message; the return value is the reply to an ask (ignored for a tell).

        Raises: for an ask, the exception goes to the asker; for a tell, the actor crashes.
        """
        raise NotImplementedError(f"{type(self).__name__} must override handle()")

    async def on_stop(self) -> None:
        """Run once when the incarnation stops: after a requested stop, or after a crash in handle.

        Not run when on_start failed or when the task was cancelled (a stop past its shutdown deadline).
        Raises: after a graceful stop, the exception is reported as this child's failure; after a crash it is
        added as a note to the crash.
        """

    def on_abandon(self) -> None:
        """Run instead of on_stop when the task is cancelled (a stop past its shutdown deadline, or the event loop
        ending under a run nobody stopped), on_start's included (it may not have finished: release only what it took):
        let go at once, without awaiting, of what would outlive the task (open files, a worker process). Must not
        block for long; an exception is ignored."""

    def breaker_state(self) -> BreakerState | None:
        """The state of this actor's circuit breaker, if it has one; override to report it in state()."""
        return None

    # ------------------------------------------------------------------ public view

    @property
    def name(self) -> str:
        """The path the supervisor gave this actor (empty until it is started)."""
        return self._name

    @property
    def inbox(self) -> tuple[type[M_contra], ...]:
        return self._inbox

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def ref(self) -> ActorRef[M_contra]:
        """This actor's own ref (to hand to others as a reply-to address).

        Raises:
            RuntimeError: the actor has not been started by a supervisor.
        """
        if self._ref is None:
            raise RuntimeError(f"actor {type(self).__name__} has no ref until a supervisor starts it")
        return self._ref

    def request_stop(self) -> None:
        """Stop normally after the message being handled (a normal exit: transient and temporary children stay
        stopped, permanent ones are restarted). Messages still queued wait for the next incarnation, or fail with
        ActorStopped if there is none. Call it from a hook, on the event loop.
        """
        self._request_stop()

    @property
    def stopping(self) -> bool:
        """True once a stop has been requested for this incarnation."""
        return self._stop_requested

    async def until_stopping(self, fn: Callable[[*Ts], Awaitable[T]], *args: *Ts) -> T | None:
        """Await ``fn(*args)`` unless a stop is requested first; then cancel it and return None.

        For handlers that wait on something other than the mailbox (a timer, a bus receive), so a graceful stop does
        not have to wait for the shutdown deadline. Event loop only. Cancelling the caller cancels the work. What fn
        raises reaches the caller as it is (not inside an exception group).
        """
        if self._stop_requested:
            return None
        failure: list[Exception] = []
        waiting_since = time.perf_counter()
        try:
            async with asyncio.TaskGroup() as tg:
                work = tg.create_task(_call(fn, failure, *args))
                stop = tg.create_task(self._stopping.wait())
                await asyncio.wait((work, stop), return_when=asyncio.FIRST_COMPLETED)
                if work.done():
                    stop.cancel()
                else:
                    work.cancel()
        finally:
            self._waited_s += time.perf_counter() - waiting_since
        if failure:
            raise failure[0]
        return None if work.cancelled() else work.result()

    def state(self) -> ActorState:
        """A snapshot of this incarnation; never blocks."""
        mailbox = self._mailbox
        latency = self._last_latency_s
        return ActorState(
            actor=self._name,
            status=self._status,
            mailbox_depth=len(mailbox) if mailbox is not None else 0,
            mailbox_capacity=mailbox.capacity if mailbox is not None else self._capacity,
            handled=self._handled,
            failed=self._failed,
            restarts=self._restarts,
            breaker=self.breaker_state(),
            last_latency_ms=None if latency is None else latency * 1e3,
        )

    # ------------------------------------------------------------------ kernel side (called by the supervisor)

    def _bind(
        self,
        name: str,
        mailbox: Mailbox[M_contra],
        ref: ActorRef[M_contra],
        dead_letters: DeadLetters,
        restarts: int,
        handled: int = 0,
        failed: int = 0,
    ) -> None:
        self._name = name
        self._mailbox = mailbox
        self._ref = ref
        self._dead_letters = dead_letters
        self._restarts = restarts
        self._handled = handled
        self._failed = failed

    def _count_cancelled(self) -> None:
        """Its supervisor cancelled it past its shutdown deadline (a handler that never returned): that is a failure of
        this actor, counted as one, and it ends failed, not stopped."""
        self._failed += 1
        self._status = ActorStatus.FAILED

    def _request_stop(self) -> None:
        """Ask the loop to stop after the message it is handling; queued messages stay in the mailbox."""
        self._stop_requested = True
        self._stopping.set()
        if self._mailbox is not None:
            self._mailbox.interrupt()

    async def _run(self, started: asyncio.Event) -> None:
        """Run this incarnation: on_start, the message loop, on_stop. Returns on a graceful stop; raises on a crash.

        Runs on the event loop in the task the supervisor created for it. Cancellation propagates at once (on_stop
        is skipped, on_abandon runs) and fails the ask being answered with ActorStopped. A CancelledError out of a
        hook while nobody cancels the task is the hook's failure (StrayCancellation), under the same rules as any
        other exception.
        """
        mailbox = self._mailbox
        dead_letters = self._dead_letters
        assert mailbox is not None, "actor run before _bind"
        assert dead_letters is not None, "actor run before _bind"
        name = self._name
        self._status = ActorStatus.STARTING
        try:
            await self.on_start()
        except asyncio.CancelledError as cancelled:
            if _cancelling():
                # A stop past the shutdown deadline cancelled the start: what on_start took so far (a file, a worker
                # process still starting) would outlive the task.
                self._status = ActorStatus.STOPPED
                self._abandon()
                raise
            raise _stray(cancelled, name, "on_start") from cancelled
        self._status = ActorStatus.RUNNING
        started.set()
        items = mailbox._items
        handle = self.handle
        perf_counter = time.perf_counter
        reply: Reply | None = None
        try:
            while not self._stop_requested:
                if not items:
                    if mailbox._closed:
                        break
                    await mailbox.wait_nonempty()
                    continue
                # Inlined receive_nowait(): this loop is the hot path of every actor.
                msg, reply = items.popleft()
                mailbox._received += 1
                if mailbox._putters:
                    mailbox._wake_putter()
                started_s = perf_counter()
                self._waited_s = 0.0
                if reply is None:
                    try:
                        await handle(msg)
                    except asyncio.CancelledError as cancelled:
                        raise _stray(cancelled, name, f"handle({type(msg).__name__})") from cancelled
                elif reply.done():
                    # The asker gave up (cancelled or past its deadline) before we got to it.
                    dead_letters.record(name, msg, "asker gave up before delivery")
                    reply = None
                    continue
                else:
                    try:
                        try:
                            result = await handle(msg)
                        except asyncio.CancelledError as cancelled:
                            raise _stray(cancelled, name, f"handle({type(msg).__name__})") from cancelled
                    except Exception as err:  # noqa: BLE001  # the failure rule: a failed ask goes back to the asker
                        self._failed += 1
                        if reply.done():
                            dead_letters.record(name, msg, "failed reply after the asker gave up")
                        else:
                            reply.set_exception(err)
                    else:
                        if reply.done():
                            dead_letters.record(name, msg, "late reply")
                        else:
                            reply.set_result(result)
                    reply = None
                if self.reports_latency:
                    self._last_latency_s = max(0.0, perf_counter() - started_s - self._waited_s)
                self._handled += 1
        except Exception as err:
            self._failed += 1
            self._status = ActorStatus.FAILED
            self._fail_reply(reply)
            try:
                await self.on_stop()
            except Exception as stop_err:  # noqa: BLE001  # the crash is what the supervisor must see; keep both
                err.add_note(f"on_stop also failed: {type(stop_err).__name__}: {stop_err}")
            except asyncio.CancelledError as cancelled:
                err.add_note(f"on_stop also failed: {_stray(cancelled, name, 'on_stop')}")
            raise
        except BaseException:
            self._status = ActorStatus.STOPPED
            self._fail_reply(reply)
            self._abandon()
            raise
        self._status = ActorStatus.STOPPING
        try:
            try:
                await self.on_stop()
            except asyncio.CancelledError as cancelled:
                raise _stray(cancelled, name, "on_stop") from cancelled
        except BaseException:
            self._status = ActorStatus.FAILED
            raise
        self._status = ActorStatus.STOPPED

    def _abandon(self) -> None:
        try:
            self.on_abandon()
        except Exception as err:  # noqa: BLE001  # the cancellation is what propagates; the release is best effort
            _log.warning("actor_abandon_failed", actor=self._name, error=f"{type(err).__name__}: {err}")

    def _fail_reply(self, reply: Reply | None) -> None:
        if reply is not None and not reply.done():
            reply.set_exception(ActorStopped(f"actor {self._name} stopped while answering an ask"))


async def _call(fn: Callable[[*Ts], Awaitable[T]], failure: list[Exception], *args: *Ts) -> T | None:
    # The failure is handed out rather than raised: the TaskGroup would wrap it in an ExceptionGroup.
    try:
        return await fn(*args)
    except Exception as err:  # noqa: BLE001 - re-raised by until_stopping as it is
        failure.append(err)
        return None


def _cancelling() -> bool:
    """Whether someone is cancelling the running task (a stop past its deadline, the tree shutting down)."""
    task = asyncio.current_task()
    return task is None or task.cancelling() > 0


def _stray(cancelled: asyncio.CancelledError, name: str, where: str) -> StrayCancellation:
    """The failure a CancelledError out of a hook is when nobody is cancelling the actor's task; re-raises it when
    someone is (a stop past its deadline, the tree shutting down), which must propagate."""
    if _cancelling():
        raise cancelled
    error = StrayCancellation(
        f"actor {name}: {where} raised CancelledError while the actor was not being cancelled "
        "(it awaited a future or task that another task cancelled)"
    )
    error.__cause__ = cancelled
    return error
