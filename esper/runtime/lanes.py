"""Lanes: one dedicated worker thread each, with its own CUDA stream on CUDA, that never abandons started work."""

from __future__ import annotations

import asyncio
import collections
import threading
from typing import TYPE_CHECKING, Any, Literal, TypeVar, TypeVarTuple, final

import structlog
import torch

from esper.runtime.errors import LaneClosed, LaneJobEscaped
from schemas.base import Record

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from types import TracebackType

T = TypeVar("T")
Ts = TypeVarTuple("Ts")

LaneName = Literal["train", "policy", "io"]
LANE_NAMES: tuple[LaneName, ...] = ("train", "policy", "io")

# train takes torch's default (all cores); inference and I/O must not compete with it for cores.
DEFAULT_NUM_THREADS: Mapping[LaneName, int | None] = {"train": None, "policy": 1, "io": 1}

_PENDING = 0
_RUNNING = 1
_DONE = 2


class LaneStatistics(Record, frozen=True):
    """A lane at one instant. Returned by Lane.statistics(), which never blocks or changes state."""

    name: str
    device: str
    num_threads: int | None
    queued: int
    running: bool
    completed: int
    failed: int
    dropped: int
    closed: bool


def resolve_device(spec: str | torch.device) -> torch.device:
    """Turn ``"auto"``, ``"cpu"`` or ``"cuda[:n]"`` (or such a torch.device) into a concrete device.

    ``"auto"`` is CUDA (the current device) if torch sees one, else CPU; an unindexed CUDA device is the current one.
    May initialise CUDA; never call at import.

    Raises:
        ValueError: spec is none of those, or names a CUDA device that is not available.
    """
    if isinstance(spec, torch.device):
        spec = str(spec)  # named in the errors as the config would spell it
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(spec)
    except RuntimeError as err:
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:n]', got {spec!r}") from err
    if device.type == "cpu":
        return torch.device("cpu")
    if device.type != "cuda":
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:n]', got {spec!r}")
    if not torch.cuda.is_available():
        raise ValueError(f"device {spec!r} needs CUDA, which torch reports as not available")
    index = torch.cuda.current_device() if device.index is None else device.index
    if index >= torch.cuda.device_count():
        raise ValueError(f"device {spec!r} does not exist: torch sees {torch.cuda.device_count()} CUDA devices")
    return torch.device("cuda", index)


@final
class _Job:
    __slots__ = ("args", "fn", "future", "loop", "state")

    def __init__(
        self,
        fn: Callable[..., object],
        args: tuple[object, ...],
        loop: asyncio.AbstractEventLoop,
        future: asyncio.Future[Any],
    ) -> None:
        self.fn = fn
        self.args = args
        self.loop = loop
        self.future = future
        self.state = _PENDING


# KeyboardInterrupt and SystemExit, delivered as-is, stop the caller's event loop; a future refuses StopIteration and
# StopAsyncIteration (TypeError), which would leave the caller waiting for good.
_ESCAPING = (KeyboardInterrupt, SystemExit, StopIteration, StopAsyncIteration)


def _escaped(lane: str, exc: BaseException) -> LaneJobEscaped:
    detail = f": {exc}" if str(exc) else ""
    error = LaneJobEscaped(f"lane {lane!r}: the job raised {type(exc).__name__}{detail}")
    error.__cause__ = exc
    return error


def _settle(future: asyncio.Future[Any], result: object, error: BaseException | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(result)
    else:
        future.set_exception(error)


@final
class Lane:
    """One worker thread, with its own CUDA stream on a CUDA device (none on CPU) and its own torch thread budget.

    Why a dedicated ``threading.Thread`` and not ``anyio.to_thread.run_sync(..., abandon_on_cancel=False,
    limiter=CapacityLimiter(1))``: anyio gives the same never-abandon guarantee, but its workers come from a shared
    pool, so consecutive jobs may land on different threads. Both the torch thread budget (``torch.set_num_threads``
    is per thread under OpenMP) and the current CUDA device are per-thread settings, so they mean something only if
    every job of a lane runs on the same thread; a dedicated thread also makes ``thread_id`` a stable identity.

    Jobs run one at a time, in submission order. The queue holds one job per awaiting caller (there is no
    fire-and-forget submit), so its depth is bounded by the number of callers. The thread starts at the first
    ``run()`` and is a daemon, so a lane someone forgot to close cannot hang interpreter exit.
    """

    def __init__(self, name: str, device: torch.device | str = "cpu", *, num_threads: int | None = None) -> None:
        """Build a lane; no thread starts until the first run().

        On CUDA this creates the lane's stream, which initialises CUDA in the process if nothing has yet (a one-off
        cost of up to a second): build lanes in the composition root, before actors start handling messages.

        Args:
            name: used in the thread name, errors and statistics.
            device: a torch.device or a spec, resolved by resolve_device() (an unindexed CUDA device is the current
                one: the worker thread sets its device by index). On CUDA the lane owns a new stream on it.
            num_threads: torch intra-op threads for jobs on this lane (>= 1); None takes the count of the thread
                that builds the lane (torch's default, every core, unless OMP_NUM_THREADS or a torch.set_num_threads
                there says otherwise).

        Raises:
            ValueError: the device spec is invalid or unavailable, or num_threads < 1.
        """
        if num_threads is not None and num_threads < 1:
            raise ValueError(f"num_threads must be >= 1 or None, got {num_threads}")
        self._name = name
        self._device = resolve_device(device)
        self._stream: torch.cuda.Stream | None = None
        if self._device.type == "cuda":
            # torch.cuda.Stream.__new__ carries no annotations in torch 2.13.
            self._stream = torch.cuda.Stream(device=self._device)  # type: ignore[no-untyped-call]
        self._num_threads = num_threads
        self._thread_budget = num_threads if num_threads is not None else torch.get_num_threads()
        self._log = structlog.get_logger("esper.runtime.lanes")
        self._cond = threading.Condition()
        self._queue: collections.deque[_Job] = collections.deque()
        self._thread: threading.Thread | None = None
        self._thread_id: int | None = None
        self._closed = False
        self._exited = False
        # What stopped the worker thread before it took a job (torch.cuda.set_device refusing the device, say): the
        # cause of every LaneClosed its callers get.
        self._start_error: BaseException | None = None
        self._exit_waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[Any]]] = []
        self._running = False
        self._completed = 0
        self._failed = 0
        self._dropped = 0

    @property
    def name(self) -> str:
        return self._name

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def stream(self) -> torch.cuda.Stream | None:
        """The lane's CUDA stream; None on CPU."""
        return self._stream

    @property
    def num_threads(self) -> int | None:
        return self._num_threads

    @property
    def thread_id(self) -> int | None:
        """``threading.get_ident()`` of the worker thread, once it has started."""
        return self._thread_id

    @property
    def closed(self) -> bool:
        return self._closed

    def statistics(self) -> LaneStatistics:
        """Queue depth, whether a job is running, and counters; never blocks for longer than a lock handoff."""
        with self._cond:
            return LaneStatistics(
                name=self._name,
                device=str(self._device),
                num_threads=self._num_threads,
                queued=len(self._queue),
                running=self._running,
                completed=self._completed,
                failed=self._failed,
                dropped=self._dropped,
                closed=self._closed,
            )

    async def run(self, fn: Callable[[*Ts], T], *args: *Ts) -> T:
        """Run ``fn(*args)`` on the lane's thread and return its result once its GPU work is complete.

        On CUDA, fn runs inside ``torch.cuda.stream(lane.stream)``; afterwards the worker records a CUDA event on the
        stream and synchronises that event (never the device, never on the event loop), so results are ready when
        this returns. fn may block: it runs on the lane thread, not the loop.

        Cancellation: if fn has not started, the job is dropped and CancelledError propagates at once. If it has
        started, this waits (through further cancellations) until it has finished, stream included, and then
        re-raises CancelledError; so the next job on the lane cannot overlap it. An exception fn raised after its
        caller was cancelled is logged (``lane_job_failed_after_cancel``), as nobody is left to receive it.

        Raises:
            LaneClosed: the lane was closed before this call.
            Exception: whatever fn raised (or a CUDA error from the stream), re-raised here.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        job = _Job(fn, args, loop, future)
        with self._cond:
            if self._closed:
                raise LaneClosed(f"lane {self._name!r} is closed{self._start_failure()}") from self._start_error
            self._queue.append(job)
            if self._thread is None:
                self._start_thread()
            self._cond.notify()
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            with self._cond:
                if job.state == _PENDING:
                    self._queue.remove(job)
                    self._dropped += 1
                    raise
            await self._wait_out(future)
            raise

    async def _wait_out(self, future: asyncio.Future[Any]) -> None:
        # The caller is already cancelled and re-raises once this returns; further cancels must not cut the wait
        # short, or the next job could start on weights this one is still writing.
        while not future.done():
            try:
                await asyncio.wait((future,))
            except asyncio.CancelledError:
                continue
        if not future.cancelled() and future.exception() is not None:
            self._log.warning("lane_job_failed_after_cancel", lane=self._name, error=repr(future.exception()))

    def close(self) -> None:
        """Refuse new work. Jobs already queued still run (their callers are waiting); the thread then exits.

        Never blocks; idempotent. Use ``await wait_closed()`` (or ``aclose()``) to wait for the thread to finish.
        """
        with self._cond:
            self._closed = True
            waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[Any]]] = []
            if self._thread is None:
                # No thread will ever run _finish(), so the waiters that came before this close are answered here.
                self._exited = True
                waiters, self._exit_waiters = self._exit_waiters, []
            self._cond.notify_all()
        for loop, future in waiters:
            self._deliver(loop, future, None, None)

    async def wait_closed(self) -> None:
        """Wait until the lane is closed and its thread has finished every queued job and exited.

        Cancelling the wait leaves the lane as it was.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        with self._cond:
            if self._exited:
                return
            self._exit_waiters.append((loop, future))
        await future

    async def aclose(self) -> None:
        """close(), then wait_closed()."""
        self.close()
        await self.wait_closed()

    async def __aenter__(self) -> Lane:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    # ------------------------------------------------------------------ worker thread

    def _start_thread(self) -> None:
        thread = threading.Thread(target=self._work, name=f"esper-lane-{self._name}", daemon=True)
        self._thread = thread
        thread.start()

    def _work(self) -> None:
        """The lane thread's loop: take a job, run it (stream-synchronised on CUDA), hand the outcome to its loop."""
        self._thread_id = threading.get_ident()
        try:
            try:
                self._start_up()
            except BaseException as exc:  # noqa: BLE001 - the cause of the LaneClosed every waiting caller gets
                with self._cond:
                    self._start_error = exc
                return
            while True:
                with self._cond:
                    while not self._queue and not self._closed:
                        self._cond.wait()
                    if not self._queue:
                        return
                    job = self._queue.popleft()
                    job.state = _RUNNING
                    self._running = True
                result: object = None
                error: BaseException | None = None
                try:
                    result = self._execute(job)
                except _ESCAPING as exc:
                    error = _escaped(self._name, exc)
                except BaseException as exc:  # noqa: BLE001 - handed to the awaiting caller, who re-raises it
                    error = exc
                with self._cond:
                    job.state = _DONE
                    self._running = False
                    if error is None:
                        self._completed += 1
                    else:
                        self._failed += 1
                self._deliver(job.loop, job.future, result, error)
                del job, result, error
        finally:
            self._finish()

    def _start_up(self) -> None:
        # A thread's count is its own only once torch's lazy per-thread start-up has run: that start-up copies the
        # count any thread set last (the io and policy lanes set 1), so a lane that set its count before its first
        # parallel op could still train on another lane's. Start up first, then set: the count is this lane's in
        # every run, whichever lane's thread touches torch first.
        torch.get_num_threads()
        torch.set_num_threads(self._thread_budget)
        if self._stream is not None:
            torch.cuda.set_device(self._device)

    def _start_failure(self) -> str:
        error = self._start_error
        return "" if error is None else f" (its worker failed to start: {type(error).__name__}: {error})"

    def _execute(self, job: _Job) -> object:
        stream = self._stream
        if stream is None:
            return job.fn(*job.args)
        with torch.cuda.stream(stream):
            try:
                return job.fn(*job.args)
            finally:
                # Wait for this job's kernels only: an event on our stream, synchronised here on the lane thread.
                done = torch.cuda.Event()  # type: ignore[no-untyped-call]  # torch 2.13 leaves Event.__new__ untyped
                done.record(stream)
                done.synchronize()

    def _deliver(
        self, loop: asyncio.AbstractEventLoop, future: asyncio.Future[Any], result: object, error: BaseException | None
    ) -> None:
        try:
            loop.call_soon_threadsafe(_settle, future, result, error)
        except RuntimeError:
            # The caller's loop has closed, so nobody is waiting for this outcome.
            self._log.warning("lane_result_undeliverable", lane=self._name, error=repr(error))

    def _finish(self) -> None:
        with self._cond:
            self._closed = True
            self._exited = True
            orphans = list(self._queue)
            self._queue.clear()
            waiters = self._exit_waiters
            self._exit_waiters = []
            cause = self._start_error
            failure = self._start_failure()
        for job in orphans:
            # Only reachable if the worker itself broke; fail the waiting callers rather than leave them hanging.
            error = LaneClosed(f"lane {self._name!r} worker exited{failure}")
            error.__cause__ = cause
            self._deliver(job.loop, job.future, None, error)
        for loop, future in waiters:
            self._deliver(loop, future, None, None)


@final
class Lanes:
    """The default lanes of one device: ``train`` (Tolaria), ``policy`` (Tamiyo, Simic) and ``io`` (loads, compiles,
    host-to-device copies). On CUDA each has its own stream, so policy inference overlaps backprop.
    """

    def __init__(self, device: str = "auto", *, num_threads: Mapping[LaneName, int | None] | None = None) -> None:
        """Build the three lanes (their threads start at first use).

        Args:
            device: ``"auto"``, ``"cpu"`` or ``"cuda[:n]"`` (see resolve_device).
            num_threads: per-lane torch thread budgets overriding DEFAULT_NUM_THREADS.

        Raises:
            ValueError: the device is invalid or unavailable, a budget is < 1, or a lane name is unknown.
        """
        budgets = dict(DEFAULT_NUM_THREADS)
        for name, budget in (num_threads or {}).items():
            if name not in LANE_NAMES:
                raise ValueError(f"num_threads names unknown lane {name!r}; lanes are {', '.join(LANE_NAMES)}")
            budgets[name] = budget
        self._device = resolve_device(device)
        self._lanes: dict[LaneName, Lane] = {
            name: Lane(name, self._device, num_threads=budgets[name]) for name in LANE_NAMES
        }

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def train(self) -> Lane:
        return self._lanes["train"]

    @property
    def policy(self) -> Lane:
        return self._lanes["policy"]

    @property
    def io(self) -> Lane:
        return self._lanes["io"]

    def __getitem__(self, name: LaneName) -> Lane:
        return self._lanes[name]

    def statistics(self) -> tuple[LaneStatistics, ...]:
        """Each lane's statistics, in LANE_NAMES order."""
        return tuple(lane.statistics() for lane in self._lanes.values())

    def close(self) -> None:
        """Close every lane (non-blocking); queued jobs still run."""
        for lane in self._lanes.values():
            lane.close()

    async def wait_closed(self) -> None:
        """Wait until every lane's thread has exited."""
        for lane in self._lanes.values():
            await lane.wait_closed()

    async def aclose(self) -> None:
        """close(), then wait_closed()."""
        self.close()
        await self.wait_closed()

    async def __aenter__(self) -> Lanes:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()
