"""Supervisors: restart strategies, restart intensity with backoff, escalation, ordered shutdown."""

from __future__ import annotations

import asyncio
import math
from collections import deque
from typing import TYPE_CHECKING, Any, Literal, Never, final

import msgspec

from esper.runtime.errors import (
    ChildStartFailed,
    RepeatedFailure,
    RestartIntensityExceeded,
    SupervisorGaveUp,
    UnrecoverableFailure,
    describe_error,
    unrecoverable_cause,
)
from esper.runtime.failure_trace import located
from esper.runtime.mailbox import Mailbox
from esper.runtime.ref import ActorRef
from esper.runtime.supervisor_child import (
    Child,
    close_for_good,
    emit_deadline_exceeded,
    emit_failed,
    start_failure,
    stop_children,
    unrecoverable_failure,
)
from schemas.enums import ActorStatus
from schemas.runtime import ActorState, ChildRestarted, EscalationReason, SupervisorEscalated

if TYPE_CHECKING:
    from collections.abc import Sequence

    from esper.runtime.actor import Actor
    from esper.runtime.child_spec import ChildSpec
    from esper.runtime.tree_runtime import Runtime

Strategy = Literal["one_for_one", "one_for_all", "rest_for_one"]
"""Which children restart when one fails: only it; all; it and every child started after it (Erlang semantics)."""


@final
class Supervisor:
    """Runs children in a TaskGroup, restarts them by strategy, escalates when restarts come too fast.

    Restart intensity: more than max_restarts restarts within window_s seconds (read from the injected clock) and
    the supervisor stops every child (reverse start order), emits SupervisorEscalated and fails with
    RestartIntensityExceeded, which its parent treats as this child's failure. The k-th restart in the window waits
    ``min(backoff_initial_s * 2 ** (k - 1), backoff_max_s)`` on the clock first. A failure no restart can fix (a full
    or read-only disk, a run directory it may not write: ``unrecoverable_cause``) escalates the same way at once, as
    UnrecoverableFailure: restarting an actor whose writes fail would only fail again, log more and lose the order of
    the shutdown. A child that fails with RepeatedFailure (it knows it failed again where it failed before) is not
    restarted either, and the supervisor escalates it unchanged: slow failures (a trainer replaying a minute of steps
    to the same error) never fill the window.

    The supervisor stops normally when asked to, or when none of its children is left running. Event-loop only;
    everything runs in the task that runs the supervisor (its parent's child task, or the ActorSystem's task).
    """

    def __init__(
        self,
        children: Sequence[ChildSpec],
        *,
        strategy: Strategy = "one_for_one",
        max_restarts: int = 5,
        window_s: float = 30.0,
        backoff_initial_s: float = 0.1,
        backoff_max_s: float = 5.0,
        name: str = "root",
    ) -> None:
        names = [spec.name for spec in children]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"child names must be unique, repeated: {', '.join(duplicates)}")
        if strategy not in ("one_for_one", "one_for_all", "rest_for_one"):
            raise ValueError(f"strategy must be one_for_one, one_for_all or rest_for_one, got {strategy!r}")
        if max_restarts < 0:
            raise ValueError(f"max_restarts must be >= 0, got {max_restarts}")
        if not window_s > 0:
            raise ValueError(f"window_s must be > 0, got {window_s}")
        if backoff_initial_s < 0 or backoff_max_s < backoff_initial_s:
            raise ValueError(f"need 0 <= backoff_initial_s <= backoff_max_s, got {backoff_initial_s}, {backoff_max_s}")
        self._specs = tuple(children)
        self._strategy = strategy
        self._max_restarts = max_restarts
        self._window_s = window_s
        self._backoff_initial_s = backoff_initial_s
        self._backoff_max_s = backoff_max_s
        self._name = name
        self._prefix = ""
        self._children: list[Child] = []
        self._restart_times: deque[float] = deque()
        self._exits: deque[tuple[Child, int, Exception | None]] = deque()
        self._wakeup = asyncio.Event()
        self._stop_event = asyncio.Event()
        self._stop_requested = False
        self._rt: Runtime | None = None
        self._tg: asyncio.TaskGroup | None = None

    @property
    def name(self) -> str:
        """``root`` for the root, else the supervisor's path in the tree."""
        return self._name

    def snapshot(self) -> list[ActorState]:
        """Every actor and nested supervisor below this one, in start order; never blocks.

        A nested supervisor appears with an empty mailbox (capacity 0) and its own restart count.
        """
        states: list[ActorState] = []
        for child in self._children:
            instance = child.instance
            status = child.status if child.task is None else None
            if isinstance(instance, Supervisor):
                states.append(
                    ActorState(
                        actor=child.path,
                        status=child.status,
                        mailbox_depth=0,
                        mailbox_capacity=0,
                        handled=0,
                        failed=0,
                        restarts=child.restarts,
                    )
                )
                states.extend(instance.snapshot())
            elif instance is not None:
                state = instance.state()
                states.append(msgspec.structs.replace(state, status=status or state.status, restarts=child.restarts))
        return states

    # ------------------------------------------------------------------ run (called by the parent or the system)

    def _request_stop(self) -> None:
        """Ask for an ordered shutdown: children stop in reverse start order, then the supervisor returns."""
        self._stop_requested = True
        self._stop_event.set()
        self._wakeup.set()

    async def _run(self, rt: Runtime, started: asyncio.Event, name: str = "root", prefix: str = "") -> None:
        """Start the children in order, supervise them until stopped, then shut them down in reverse order.

        Raises:
            RestartIntensityExceeded: restarts came too fast; every child has been stopped already.
            UnrecoverableFailure: a child failed on a full or read-only disk; every child has been stopped already.
        """
        self._rt = rt
        self._name = name
        self._prefix = prefix
        self._children = [Child(spec, prefix + spec.name, i) for i, spec in enumerate(self._specs)]
        for child in self._children:
            child.restarts = rt.restarts.get(child.path, 0)
        escalation: SupervisorGaveUp | None = None
        try:
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                escalation = await self._supervise(started)
        finally:
            # Whatever ended us (stop, escalation, cancellation), no child runs any more: fail what is queued.
            for child in self._children:
                close_for_good(rt, child)
        if escalation is not None:
            raise escalation

    async def _supervise(self, started: asyncio.Event) -> SupervisorGaveUp | None:
        rt = self._rt
        assert rt is not None
        for child in self._children:
            if self._stop_requested:
                break  # stopped while starting: the children not started yet never start
            build_error = await self._start_child(child)
            if build_error is not None:
                return await self._build_failed(child, build_error)
        started.set()
        while not self._stop_requested:
            if not self._exits:
                if all(child.done for child in self._children):
                    break
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            child, incarnation, error = self._exits.popleft()
            if child.task is None or child.incarnation != incarnation:
                continue  # an exit we caused ourselves (a stop), already accounted for
            escalation = await self._on_exit(child, error)
            if escalation is not None:
                return escalation
        await stop_children(rt, self._name, list(reversed(self._children)), for_good=True)
        return None

    async def _start_child(self, child: Child) -> Exception | None:
        """Build and start the child; returns what its factory raised instead (nothing started)."""
        rt, tg = self._rt, self._tg
        assert rt is not None
        assert tg is not None
        try:
            instance = child.spec.factory()
        except Exception as err:  # noqa: BLE001  # handed to _build_failed, which escalates it with the child's name
            return err
        child.incarnation += 1
        child.instance = instance
        child.last_error = None
        child.status = ActorStatus.STARTING
        if not isinstance(instance, Supervisor):
            mailbox = rt.mailboxes.get(child.path)
            if mailbox is None:
                mailbox = Mailbox[Any](instance.capacity, instance.inbox)
                rt.mailboxes[child.path] = mailbox
                rt.refs[child.path] = ActorRef(child.path, mailbox, rt.dead_letters)
            mailbox.reopen()
            rt.actor_types[child.path] = type(instance)
            child.mailbox = mailbox
            handled, failed = rt.handled.get(child.path, (0, 0))
            instance._bind(child.path, mailbox, rt.refs[child.path], rt.dead_letters, child.restarts, handled, failed)
        started = asyncio.Event()
        child.task = tg.create_task(self._child_main(child, child.incarnation, instance, started), name=child.path)
        watcher = tg.create_task(self._pass_on_stop(child, instance, started), name=f"{child.path}:start")
        try:
            await started.wait()
        finally:
            watcher.cancel()
        if child.task is not None and not child.task.done():
            child.status = ActorStatus.RUNNING
            return None
        return start_failure(child)  # a child supervisor's own child could not be built

    async def _pass_on_stop(self, child: Child, instance: Actor[Never] | Supervisor, started: asyncio.Event) -> None:
        """While the child starts (this task is cancelled once it has): a stop requested meanwhile is passed on to
        it at once, so an on_start that waits on something (a worker process's start-up, say) can end early (the
        stop did not reach it, and a Ctrl-C during the start waited for the whole start-up); past its shutdown
        deadline its task is cancelled."""
        assert self._rt is not None
        task = child.task
        assert task is not None
        await self._stop_event.wait()
        instance._request_stop()
        deadline_s = child.spec.shutdown_deadline_s
        if math.isinf(deadline_s):
            return
        await self._rt.clock.sleep(deadline_s)
        emit_deadline_exceeded(self._rt, self._name, child, deadline_s)
        task.cancel()
        await asyncio.wait((task,))
        started.set()  # a task cancelled before it ran never sets it

    async def _build_failed(self, child: Child, error: Exception) -> SupervisorGaveUp:
        # A factory that raises is a setup error (a config value the actor refuses): every actor stops and the
        # failure reaches the caller of start() by name, instead of tearing the tree down as an exception group.
        assert self._rt is not None
        emit_failed(self._rt, self._name, child, error)
        if isinstance(error, ChildStartFailed):
            escalation = ChildStartFailed(str(error))  # its message names the actor already
        else:
            kind, text = describe_error(error)
            escalation = ChildStartFailed(f"{child.path} could not be built: {kind}: {text}")
        return await self._give_up(child, error, escalation, len(self._restart_times))

    async def _child_main(
        self, child: Child, incarnation: int, instance: Actor[Never] | Supervisor, started: asyncio.Event
    ) -> None:
        """The child wrapper: the one place that catches Exception broadly and turns it into a ChildFailed."""
        error: Exception | None = None
        try:
            if isinstance(instance, Supervisor):
                assert self._rt is not None
                await instance._run(self._rt, started, name=child.path, prefix=child.path + "/")
            else:
                await instance._run(started)
        except Exception as err:  # noqa: BLE001  # the one broad catch: every failure becomes a ChildFailed
            error = err
            child.last_error = err
        finally:
            started.set()
            if not isinstance(instance, Supervisor):
                state = instance.state()
                assert self._rt is not None
                self._rt.handled[child.path] = (state.handled, state.failed)
        self._exits.append((child, incarnation, error))
        self._wakeup.set()

    async def _give_up(
        self, child: Child, error: Exception | None, escalation: SupervisorGaveUp, restarts: int
    ) -> SupervisorGaveUp:
        assert self._rt is not None
        reason: EscalationReason = "restart_intensity"
        if isinstance(escalation, UnrecoverableFailure):
            reason = "unrecoverable"
        elif isinstance(escalation, RepeatedFailure):
            reason = "no_progress"
        self._rt.sink.emit(
            SupervisorEscalated(
                supervisor=self._name, child=child.path, restarts=restarts, window_s=self._window_s, reason=reason
            )
        )
        child.status = ActorStatus.FAILED
        close_for_good(self._rt, child)
        await stop_children(self._rt, self._name, list(reversed(self._children)), for_good=True)
        escalation.__cause__ = error
        return escalation

    async def _on_exit(self, child: Child, error: Exception | None) -> SupervisorGaveUp | None:
        rt = self._rt
        assert rt is not None
        child.task = None
        if error is not None:
            emit_failed(rt, self._name, child, error)
        restart = child.spec.restart == "permanent" or (child.spec.restart == "transient" and error is not None)
        if not restart:
            child.status = ActorStatus.FAILED if error is not None else ActorStatus.STOPPED
            close_for_good(rt, child)
            return None
        if isinstance(error, ChildStartFailed):  # a child supervisor's: building again would fail the same way
            return await self._give_up(child, error, ChildStartFailed(str(error)), len(self._restart_times))
        if isinstance(error, RepeatedFailure):  # restarting it would replay the same work to the same failure
            return await self._give_up(child, error, RepeatedFailure(str(error)), len(self._restart_times))
        if error is not None and (cause := unrecoverable_cause(error)) is not None:
            return await self._give_up(
                child, error, unrecoverable_failure(child, error, cause), len(self._restart_times)
            )
        now = rt.clock.now()
        self._restart_times.append(now)
        while self._restart_times and self._restart_times[0] <= now - self._window_s:
            self._restart_times.popleft()
        recent = len(self._restart_times)
        if recent > self._max_restarts:
            last = "" if error is None else ": " + ": ".join(describe_error(error))
            if error is not None and not isinstance(error, SupervisorGaveUp):  # an escalation's message says where
                last += located(error)
            escalation = RestartIntensityExceeded(
                f"supervisor {self._name}: {recent} restarts within {self._window_s} s "
                f"(max {self._max_restarts}); last failure in {child.path}{last}"
            )
            return await self._give_up(child, error, escalation, recent)
        backoff_s = min(self._backoff_initial_s * 2 ** (recent - 1), self._backoff_max_s)
        if self._strategy == "one_for_one":
            group = [child]
        elif self._strategy == "one_for_all":
            group = [c for c in self._children if not c.done]
        else:
            group = [c for c in self._children if c.index >= child.index and not c.done]
        siblings = [c for c in group if c is not child]
        await stop_children(rt, self._name, list(reversed(siblings)), for_good=False)
        for sibling in siblings:
            if sibling.spec.restart == "temporary":
                sibling.status = ActorStatus.STOPPED
                close_for_good(rt, sibling)
        group = [c for c in group if not c.done]
        for member in group:
            member.status = ActorStatus.RESTARTING
        if backoff_s > 0 and not await self._sleep_unless_stopped(backoff_s):
            return None
        for member in group:
            if self._stop_requested:
                return None  # stopped while restarting: the members not started again stay stopped
            member.restarts += 1
            rt.restarts[member.path] = member.restarts
            build_error = await self._start_child(member)
            if build_error is not None:
                return await self._build_failed(member, build_error)
            rt.sink.emit(
                ChildRestarted(supervisor=self._name, child=member.path, restarts=member.restarts, backoff_s=backoff_s)
            )
        return None

    async def _sleep_unless_stopped(self, delay_s: float) -> bool:
        """Wait delay_s on the clock; False if a stop was requested first."""
        assert self._rt is not None
        async with asyncio.TaskGroup() as tg:
            timer = tg.create_task(self._rt.clock.sleep(delay_s))
            stopper = tg.create_task(self._stop_event.wait())
            await asyncio.wait((timer, stopper), return_when=asyncio.FIRST_COMPLETED)
            timer.cancel()
            stopper.cancel()
        return not self._stop_requested
