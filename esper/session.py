"""A running Esper system as a user holds it: snapshot, event stream, wait and stop, and the run's summary."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import shlex
import signal as signal_module
import time
from typing import TYPE_CHECKING, final, get_args

import anyio
import msgspec
import structlog

from esper.log_events import log_actor_state
from esper.run_report import render_run_report
from esper.runtime.atomic_write import atomic_write_bytes
from esper.runtime.errors import RepeatedFailure, SupervisorGaveUp, UnrecoverableFailure, unrecoverable_remedy
from esper.runtime.failure_trace import failure_traceback
from schemas.run import GrowthFigures, RunStatus, RunSummary, TrainingFigures

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable
    from pathlib import Path

    from esper.logs import LoggingHandle
    from esper.run_dir import RunDirLock
    from esper.runtime.system import ActorSystem
    from esper.session_events import EventHub
    from esper.session_parts import Abandonable, Closable, TrainingWatch
    from schemas.base import Message, Record
    from schemas.config import RunConfig
    from schemas.runtime import ActorState

_log = structlog.get_logger("esper.session")
EXIT_FAILED = 1
EXIT_INTERRUPTED = 130
"""As after SIGINT; with EXIT_FAILED, the exit status of ``python -m esper.run`` for a run that ended so."""
_EXIT_CODES: dict[str, int] = {"failed": EXIT_FAILED, "interrupted": EXIT_INTERRUPTED}
# The event loop keeps only weak references to its tasks (asyncio's documented idiom for a task nobody awaits): a run
# whose handle the user dropped must keep its guard until the loop cancels it.
_GUARDS: set[asyncio.Task[None]] = set()
# How long an abandoned run waits for its trainer's last step and checkpoint before its log is handed back.
_SETTLE_S = 60.0


_SIGNAL_NAMES = frozenset(sig.name for sig in signal_module.Signals)


@final
class EsperSystem:
    """The handle ``esper.start()`` returns. Event-loop only; nothing here blocks the loop or calls asyncio.run."""

    def __init__(
        self,
        *,
        config: RunConfig,
        run_id: str,
        run_dir: Path,
        actors: ActorSystem,
        hub: EventHub,
        logging: LoggingHandle,
        started_at: str,
        started_s: float | None = None,
        run_lock: RunDirLock | None = None,
        training: TrainingWatch | None = None,
        resources: tuple[Closable, ...] = (),
        stop_training: Callable[[], None] | None = None,
        drain: Callable[[], Awaitable[None]] | None = None,
        growth: Callable[[TrainingFigures | None], GrowthFigures] | None = None,
        abandonable: tuple[Abandonable, ...] = (),
        bus_dropped: Callable[[], int] | None = None,
        alerts_fired: Callable[[], dict[str, int]] | None = None,
        restore_process: Callable[[], None] | None = None,
        settle: Callable[[], Awaitable[None]] | None = None,
        abandoned_once_settled: tuple[Abandonable, ...] = (),
    ) -> None:
        """``stop_training`` asks the trainer to finish its step and checkpoint; ``drain`` then lets the controller
        handle what is queued before the actors stop; ``growth`` gives the summary's growth figures. ``started_s``
        is the monotonic time of ``started_at`` (the summary's duration counts from it; default: now). ``run_lock``, the
        run directory's claim, is released once the summary and report are written. ``abandonable``: what is closed
        without awaiting if the event loop ends (or cancels every task) before the run was waited for or stopped.
        ``bus_dropped`` counts the events that never reached the bus (the summary's ``bus_dropped``);
        ``alerts_fired`` the alerts that fired, by rule (the summary's ``alerts_fired``).
        ``restore_process`` gives the process's global RNGs and torch's TF32 settings back their states from before
        the run, once its end is written (not when abandoned: the trainer still finishes its step and checkpoints
        those states then).
        ``settle`` is what an abandoned run waits for before its last line (the lanes' threads ending: the trainer's
        step and checkpoint); ``abandoned_once_settled`` is closed after that wait (what the lanes' last jobs use:
        Urza's store, closed at once, failed the io lane's job that was still writing to it)."""
        self.config = config
        self.run_id = run_id
        self.run_dir = run_dir
        self._actors = actors
        self._hub = hub
        self._logging = logging
        logging.held_by(self)  # a start refused while this run writes the log (LogFileInUse) hands this handle on
        self._started_at = started_at
        self._started_s = time.monotonic() if started_s is None else started_s
        self._finishing: asyncio.Future[RunSummary] | None = None
        self._stopped = False
        self._stop_status: RunStatus = "stopped"
        self._stop_signal: str | None = None
        self._training = training
        self._resources = resources
        self._stop_training = stop_training
        self._drain = drain
        self._draining: asyncio.Future[None] | None = None
        self._growth = growth
        self._run_lock = run_lock
        self._abandonable = abandonable
        self._bus_dropped = bus_dropped
        self._alerts_fired = alerts_fired
        self._restore_process = restore_process
        self._settle = settle
        self._abandoned_once_settled = abandoned_once_settled
        # Watches for the loop going away under a run nobody waited for (asyncio.run returning after an exception
        # in the user's code): it then stops training and lets go of the threads, the log file and the claim.
        self._guard = asyncio.get_running_loop().create_task(self._guard_run(), name=f"esper-run-guard-{run_id}")
        _GUARDS.add(self._guard)
        self._guard.add_done_callback(_GUARDS.discard)
        # The wait() and stop() calls running now: the run is being ended. One cancelled (a notebook's
        # asyncio.wait_for timing out) no longer counts, or no stream would end after training.
        self._ending = 0
        # What events() said when training ended (or the tree failed): its TrainingFigures, or none.
        self._training_over: tuple[TrainingFigures, ...] | None = None
        # Set when training ended (or the tree failed) with nobody ending the run: what later streams get, then end.
        self._ended: tuple[TrainingFigures, ...] | None = None
        if training is not None:
            ended = asyncio.get_running_loop().create_task(self._training_ended(training), name=f"esper-end-{run_id}")
            _GUARDS.add(ended)
            ended.add_done_callback(_GUARDS.discard)

    async def _training_ended(self, training: TrainingWatch) -> None:
        """Say in events() that training ended (its TrainingFigures); and when nobody is waiting for or stopping the
        run then, end the streams open now, so that a notebook reading events() to their end before it calls wait()
        gets there (the run itself ends at wait() or stop(), which a stream opened later follows). The tree failing
        (the root supervisor gave up) ends them as well: training never finishes then."""
        last = await self._training_or_tree(training)
        if last is not None:
            self._hub.emit(last)
        self._training_over = () if last is None else (last,)
        self._end_streams_if_unattended()

    def _being_ended(self) -> bool:
        """A wait() or stop() is running, or one has finished the run (its summary is written or being written)."""
        return self._ending > 0 or self._finishing is not None

    def _end_streams_if_unattended(self) -> None:
        """Once training is over with nobody ending the run, end the streams open now (and those opened later)."""
        if self._training_over is not None and self._ended is None and not self._being_ended():
            self._ended = self._training_over
            self._hub.end_streams()

    async def _guard_run(self) -> None:
        try:
            await asyncio.Event().wait()  # cancelled: by _finish_once (done), or by a loop shutting down
        except asyncio.CancelledError:
            if self._finishing is None:
                await self._abandon("the event loop ended before wait() or stop()")
            raise

    async def _abandon(self, detail: str) -> None:
        """The loop is going away and nobody waited for the run (or its end was cut short): ask training to stop (it
        finishes its step and writes a checkpoint on its own thread), close the lanes once their jobs end, and release
        the log file and the directory's claim, so the process can start (or --resume) another run.

        Awaits only the run's own end, bounded (_SETTLE_S): the tree's task (cancelled with the loop's others) and
        ``settle`` (the trainer's last step and checkpoint). Their last lines were logged after the log was handed
        back, so they missed events.jsonl and printed on the caller's stdout (structlog's defaults)."""
        _log.warning("run_abandoned", run_id=self.run_id, detail=detail)
        if self._stop_training is not None:
            self._stop_training()
        _close_abandoned(self._abandonable)
        self._hub.close()
        try:
            await self._settled()
        finally:
            _close_abandoned(self._abandoned_once_settled)
            # The file ends as every run's does, so that a tail --follow of it stops.
            _log.info(
                "run_finished",
                run_id=self.run_id,
                status="interrupted",
                duration_s=None,
                error="abandoned",
                started=True,
            )
            with contextlib.suppress(OSError):
                self._logging.release()
            if self._run_lock is not None:
                self._run_lock.release()

    async def _settled(self) -> None:
        """Wait, at most _SETTLE_S, for the tree's task to end and for ``settle``; whatever they raise is theirs."""
        waits = [self._actors.wait(), *(() if self._settle is None else (self._settle(),))]
        tasks = [asyncio.ensure_future(_quietly(wait)) for wait in waits]
        try:
            await asyncio.wait(tasks, timeout=_SETTLE_S)
        finally:
            for task in tasks:
                task.cancel()

    @property
    def training_ended(self) -> bool:
        """Training is over (completed, halted or stopped): a stop now only ends the rest of the run."""
        return self._training is not None and self._training.ended

    def snapshot(self) -> list[ActorState]:
        """Every actor's current state (mailbox depth, handled, restarts, breaker, last latency). Never blocks."""
        return self._actors.snapshot()

    def events(self) -> AsyncIterator[Message | Record]:
        """Typed events from now until the run ends: supervision, breaker and emergency events, actor states, the
        TrainingFigures when training ends; the last event is the RunSummary. The run ends at ``wait()`` or
        ``stop()``: a stream open when training ends while neither was called ends after its TrainingFigures (so
        that reading it to its end, then calling ``wait()``, finishes).

        A consumer that falls more than 1024 events behind misses events rather than slowing the run (logged as
        ``events_missed`` when the run ends, unless the stream was never iterated). A stream let go is closed when it is
        garbage-collected.
        """
        if self._ended is not None and not self._being_ended():
            # Training already over and nobody has ended the run: this stream ends at once too (after the figures),
            # or the notebook's next cell reading it would wait forever.
            return _just(self._ended)
        return self._hub.subscribe()

    async def wait(self) -> RunSummary:
        """Wait for the run to end and return its summary (also written to summary.json). Idempotent.

        A failed run (the root supervisor gave up) returns a summary with status "failed" and exit_code 1.
        """
        self._ending += 1
        try:
            return await self._wait_run()
        finally:
            self._ending -= 1
            self._end_streams_if_unattended()  # cancelled: nobody ends the run after all, unless another call does

    async def _wait_run(self) -> RunSummary:
        if self._finishing is not None:
            return await self._finished(self._finishing)
        status: RunStatus = "completed"
        error: str | None = None
        trace: str | None = None
        by: str | None = None
        try:
            if self._training is not None and not self._stopped:
                await self._wait_training()
            await self._actors.wait()
        except SupervisorGaveUp as err:
            status, error = "failed", f"{type(err).__name__}: {err}"
            trace = failure_traceback(err)
            if isinstance(err, UnrecoverableFailure | RepeatedFailure):
                cause = unrecoverable_remedy(err) if isinstance(err, UnrecoverableFailure) else "fix the cause"
                resume = f"--resume {shlex.quote(str(self.run_dir))}"  # pasted into a shell: a space splits the path
                written = await anyio.to_thread.run_sync(_checkpoint_written, self.run_dir)
                if written:
                    error += f"; the checkpoints written before it are kept: {cause}, then {resume}"
                else:  # a failure before the first checkpoint: "kept" promised what is not there
                    error += f"; no checkpoint was written: {cause}, then {resume} to start it again"
        figures = self._training.figures if self._training is not None else None
        if self._stopped and status != "failed" and not (figures is not None and figures.completed):
            # A stop that came as training finished on its own (its last step done) leaves the run completed.
            status, by = self._stop_status, self._stop_signal
        if figures is not None and figures.halted and status != "failed":
            status, error, by = "failed", f"emergency halt: {figures.halt_reason}", None
        return await self._finish(status, error, trace, by)

    async def _wait_training(self) -> None:
        """Wait until training ends (then stop the other actors in order) or the tree stops on its own."""
        training = self._training
        assert training is not None
        if await self._training_or_tree(training) is None or self._stopped:
            return
        await self._drain_once()
        await self._actors.stop()

    async def _drain_once(self) -> None:
        """Let the controller handle what is queued, once however many callers end the run: a stop that joined a
        wait() as training ended on its own drained again once that wait's drain was done and its stop of the actors
        under way, asking a Tamiyo already stopped (a dead letter in the summary, pipeline_drain_incomplete).
        Shielded: a caller cancelled meanwhile leaves it to the others."""
        if self._drain is None:
            return
        if self._draining is None:
            self._draining = asyncio.ensure_future(self._drain())
        await asyncio.shield(self._draining)

    async def _training_or_tree(self, training: TrainingWatch) -> TrainingFigures | None:
        """Wait until training ends (its figures) or the tree stops on its own, say by failing (None)."""
        async with asyncio.TaskGroup() as tg:
            finished = tg.create_task(training.wait_finished())
            tree = tg.create_task(self._tree_stopped())
            await asyncio.wait((finished, tree), return_when=asyncio.FIRST_COMPLETED)
            finished.cancel()
            tree.cancel()
        return finished.result() if finished.done() and not finished.cancelled() else None

    async def _tree_stopped(self) -> None:
        # wait() re-raises the root's failure afterwards; here it only ends the race.
        with contextlib.suppress(SupervisorGaveUp):
            await self._actors.wait()

    async def stop(self, *, status: RunStatus = "stopped", signal: str | None = None) -> RunSummary:
        """Stop the run in order (actors stop in reverse start order within their deadlines) and return its summary.

        A run whose training has already ended on its own keeps the status it ended with (``completed`` or
        ``failed``): the stop only ends the rest of the run.

        ``status`` is how a stop before then is recorded: ``stopped``, ``interrupted`` or ``failed``; never
        ``completed``, which only training that finished says. ``signal``: the name of the signal that asked for the
        stop (the command line's "SIGINT", "SIGTERM", "SIGHUP" or "SIGUSR1"), recorded with the status.

        Raises:
            ValueError: ``status`` is not one of RunStatus's values, or is ``completed``; or ``signal`` is given with
                another status than ``interrupted``, or names no signal; the run goes on.
        """
        if status not in get_args(RunStatus):
            stops = ", ".join(name for name in get_args(RunStatus) if name != "completed")
            raise ValueError(f"status: one of {stops}, got {status!r}")
        if signal is not None and (status != "interrupted" or signal not in _SIGNAL_NAMES):
            raise ValueError(
                f"signal: a signal's name (such as 'SIGTERM') with status 'interrupted', got {signal!r} with status"
                f" {status!r}"
            )
        if status == "completed":
            # A stop mid-run recorded as completed (exit 0) would claim training that never happened.
            raise ValueError(
                "status: a stop is recorded as 'stopped', 'interrupted' or 'failed', got 'completed' (a run is"
                " completed when its training finishes; a stop after that keeps it completed)"
            )
        self._ending += 1
        try:
            return await self._stop_run(status, signal)
        finally:
            self._ending -= 1
            self._end_streams_if_unattended()  # cancelled: nobody ends the run after all, unless another call does

    async def _stop_run(self, status: RunStatus, signal: str | None) -> RunSummary:
        if self._finishing is not None:
            return await self._finished(self._finishing)
        training = self._training
        if training is not None and training.ended:
            return await self.wait()
        if not self._stopped:  # the first stop says how the run ended; a later one joins it
            self._stop_status, self._stop_signal = status, signal
        self._stopped = True
        if training is not None and self._stop_training is not None:
            # Tolaria first (it finishes its step and checkpoints), then the controller drains, then the tree stops.
            self._stop_training()
            await self._training_or_tree(training)
            await self._drain_once()
        await self._actors.stop()
        return await self.wait()

    async def _render_report(self, last_step: int | None) -> None:
        """The run's report.png (render_run_report); a method, where a test holds the run's end."""
        await render_run_report(self.run_dir, last_step)

    async def _finish(
        self, status: RunStatus, error: str | None, trace: str | None = None, signal: str | None = None
    ) -> RunSummary:
        # One summary however many callers end the run at once (a task waiting while another stops it): the first
        # writes it, the others await the same write. No caller gets it before the end is written (summary.json,
        # the log closed, the claim released): a next start in the process would find the log still in use.
        if self._finishing is None:
            self._finishing = asyncio.ensure_future(self._finish_once(status, error, trace, signal))
        return await self._finished(self._finishing)

    @staticmethod
    async def _finished(finishing: asyncio.Future[RunSummary]) -> RunSummary:
        # Shielded, so a cancelled caller does not cut the write short for the others.
        return await asyncio.shield(finishing)

    async def _finish_once(
        self, status: RunStatus, error: str | None, trace: str | None, signal: str | None
    ) -> RunSummary:
        try:
            return await self._write_summary(status, error, trace, signal)
        except BaseException:
            # Cut short before the log was released (a Ctrl-C, asyncio.run cancelling every task, a failing close):
            # the guard no longer abandons a run being finished, so this end must, or the log file and structlog
            # stay the run's and every later start in the process raises LogFileInUse. No summary.json is written:
            # --resume finishes the run.
            await self._abandon("the run's end was cut short before summary.json was written")
            raise
        finally:
            self._guard.cancel()
            if self._run_lock is not None:
                self._run_lock.release()
            # The actors and lanes have stopped: nothing of the run computes any more.
            if self._restore_process is not None:
                self._restore_process()

    async def _write_summary(
        self, status: RunStatus, error: str | None, trace: str | None, signal: str | None
    ) -> RunSummary:
        actors = tuple(self._actors.snapshot())
        for state in actors:
            log_actor_state(_log, state)
            self._hub.emit(state)
        for resource in self._resources:
            await resource.aclose()
        figures = self._training.figures if self._training is not None else None
        if self.config.nissa.report_png:
            # Before summary.json, which marks the run's end as written: a kill while the report renders (the end's
            # longest part) leaves no current summary, so --resume finishes the run and renders it again.
            await self._render_report(None if figures is None else figures.global_step)
        summary = RunSummary(
            run_id=self.run_id,
            run_dir=str(self.run_dir),  # absolute since the start resolved it (esper.run_args.checked_start)
            status=status,
            started_at=self._started_at,
            # Up to the summary's write: the actors' stop and the report's render (seconds) are the run's too.
            duration_s=round(time.monotonic() - self._started_s, 3),
            exit_code=_EXIT_CODES.get(status, 0),
            dead_letters=self._actors.dead_letters,
            bus_dropped=self._bus_dropped() if self._bus_dropped is not None else 0,
            alerts_fired=self._alerts_fired() if self._alerts_fired is not None else {},
            actors=actors,
            error=error,
            error_traceback=trace,
            training=figures,
            growth=self._growth(figures) if self._growth is not None else None,
            signal=signal,
        )
        path = self.run_dir / self.config.nissa.summary_json
        try:
            await anyio.to_thread.run_sync(
                functools.partial(atomic_write_bytes, shared=True),
                path,
                msgspec.json.format(msgspec.json.encode(summary)),
            )
        except OSError as err:  # a full disk: the summary still reaches the caller and the console
            _log.error("summary_not_written", path=str(path), error=f"{type(err).__name__}: {err}")
        self._hub.close(last=summary)  # before the last line: its events_missed warnings must not follow it
        _log.info(
            "run_finished",
            run_id=self.run_id,
            status=status,
            signal=signal,
            duration_s=summary.duration_s,
            error=error,
        )
        with contextlib.suppress(OSError):
            self._logging.release()
        return summary


def _close_abandoned(resources: tuple[Abandonable, ...]) -> None:
    """Close each of an abandoned run's ``resources`` without awaiting; a failure is said and the rest still closed."""
    for resource in resources:
        try:
            resource.close()
        except Exception as err:  # noqa: BLE001  # the loop is going away: release the rest, say what failed
            _log.warning("abandon_close_failed", resource=type(resource).__name__, error=f"{type(err).__name__}: {err}")


async def _quietly(wait: Awaitable[None]) -> None:
    with contextlib.suppress(Exception, asyncio.CancelledError):  # an abandoned run's failure has no one to go to
        await wait


async def _just(events: tuple[Message | Record, ...]) -> AsyncIterator[Message | Record]:
    for event in events:
        yield event


def _checkpoint_written(run_dir: Path) -> bool:
    """Whether the run's checkpoints directory holds a checkpoint file. Blocking (one directory read)."""
    return any((run_dir / "checkpoints").glob("step-*.pt"))
