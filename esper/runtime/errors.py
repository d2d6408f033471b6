"""The one exception tree: everything Esper raises on its own account derives from EsperError.

EsperError
├── NotYetAvailable               something another actor is still producing (an artifact being compiled); retry
├── ActorError
│   ├── ActorStopped              a tell or ask reached an actor that has stopped (or stopped while the ask waited)
│   ├── ReplyTypeError            an ask's reply was not of the type the asker named (also TypeError)
│   ├── MessageTypeError          a message outside an actor's inbox union was refused at the sender (also TypeError)
│   └── StrayCancellation         a hook raised CancelledError while its actor was not being cancelled
├── MailboxError
│   ├── MailboxFull               send_nowait found the mailbox at capacity
│   └── MailboxClosed             send/send_nowait after close(), or a sender still waiting when close() ran
├── SupervisionError
│   ├── SupervisorGaveUp          a supervisor stopped all its children and escalated to its parent
│   │   ├── RestartIntensityExceeded  more restarts than the child spec allows in its window
│   │   ├── UnrecoverableFailure      a child failed in a way no restart fixes (a full, read-only or refused disk)
│   │   └── RepeatedFailure           a child failed again without progress too often in a row (a trainer at one step)
│   └── ShutdownDeadlineExceeded  a child did not stop within its shutdown deadline and was cancelled
├── BreakerOpen                   a call was refused because its circuit breaker is open (or half-open and busy)
├── ProbeDeadlineExceeded         a half-open probe outlived the breaker's probe deadline (also TimeoutError)
├── LaneClosed                    work was submitted to a lane that has been closed
├── LaneJobEscaped                a lane job raised KeyboardInterrupt, SystemExit, StopIteration or StopAsyncIteration
│                                 (user code): an ordinary failure
├── HandoffMissing                a handle was taken from the handoff store twice, or never put (also KeyError)
├── BusError
│   ├── UnknownTopic              publish/subscribe named a topic the bus does not have
│   ├── BusClosed                 publish/consume after the bus was closed
│   ├── BusUnavailable            the bus's server did not answer (Redis down or unreachable); may answer later
│   └── PayloadTooLarge           an encoded message is over the bus's max_payload_bytes (also ValueError)
└── ConfigError                   a configuration file or override is invalid (also ValueError); one-line message

Leaves that subsystems add next to their code (never a second root):
- BusUnavailable: ReplyError (esper.runtime.bus_redis_reply: a reply it cannot read, such as another writer's value)
- ConfigError: TolariaConfigError (actors.tolaria.host_model: a bad host factory or data file named in config)
- EsperError: CheckpointError (actors.tolaria.checkpoint_codec), ModelOutputError (also ValueError;
  actors.tolaria.epoch_end), LifecycleError > IllegalTransition, TransitionOrderError, UnknownSlot
  (actors.kasmina.lifecycle_table), UrzaError > ArtifactFormatError,
  ArtifactNotFound, BlueprintUnavailable, BlobMissing, BlobUnreadable, ArtifactCorrupt, ArtifactQuarantined,
  ArtifactFailed, ModuleMismatch, FetchBudgetExceeded (actors.urza.artifact), MetricsFileError
  (actors.nissa.csv_writer), ReportInputError (esper.report), LogFileInUse (esper.log_file), JournalCorrupt
  (actors.kasmina.journal), JournalTampered (actors.kasmina.journal_check), PolicyRestarting (also RuntimeError;
  actors.tamiyo.gnn_state)
esper.nn may not import this module (it is pure torch), so its misuse errors are plain ValueError subclasses:
SlotStateError, OwnershipError > ForeignParameterError, ParamGroupError, DatasetError.
"""

from __future__ import annotations

import errno
import os


class EsperError(Exception):
    """Root of every exception Esper raises on its own account."""


class NotYetAvailable(EsperError):
    """Something another actor is still producing (an artifact Tezzeret has not stored yet): worth a short wait."""


class ActorError(EsperError):
    """Something went wrong delivering to or running an actor."""


class ActorStopped(ActorError):
    """Raised by tell/ask when the target actor has stopped, and to every ask still pending when it stops."""


class ReplyTypeError(ActorError, TypeError):
    """Raised by ask() when the handler's reply is not an instance of the reply_type the asker named."""


class MessageTypeError(ActorError, TypeError):
    """Raised at the sender when a message is not one of the target actor's inbox types."""


class StrayCancellation(ActorError):
    """A hook raised CancelledError while nobody was cancelling its actor (it awaited a future or task that another
    task cancelled). Left as it was, it ended the actor's task as if it had been stopped: no failure, no restart, its
    mailbox open and its asks waiting for good. It is the hook's failure instead, the CancelledError as its cause."""


class MailboxError(EsperError):
    """A mailbox operation could not be carried out."""


class MailboxFull(MailboxError):
    """Raised by send_nowait when the mailbox is at capacity."""


class MailboxClosed(MailboxError):
    """Raised by send/send_nowait on a closed mailbox, and to senders still waiting when it closes."""


class SupervisionError(EsperError):
    """A supervisor could not keep its children running as specified."""


class SupervisorGaveUp(SupervisionError):
    """A supervisor stopped every child and handed the failure to its parent, which treats it as that supervisor's."""


class RestartIntensityExceeded(SupervisorGaveUp):
    """A child failed more often than its restart intensity allows; the supervisor gives up and escalates."""


class UnrecoverableFailure(SupervisorGaveUp):
    """A child failed in a way a restart cannot fix (see ``unrecoverable_cause``); escalated at the first failure."""


class RepeatedFailure(SupervisorGaveUp):
    """A child failed again without getting past the point of its earlier failures, too many times in a row (a
    trainer failing at the same step): each restart would replay the same work to the same failure, however slowly it
    came, which the restart window never caught. The child raises it; every supervisor above gives up at once."""


class ChildStartFailed(UnrecoverableFailure):
    """A child's factory raised: the actor could not even be built, so a restart would fail the same way."""


class ShutdownDeadlineExceeded(SupervisionError):
    """A child did not finish stopping within its deadline and was cancelled."""


class BreakerOpen(EsperError):
    """Raised when a circuit breaker refuses a call (open, or half-open with its probe already in flight)."""


class ProbeDeadlineExceeded(EsperError, TimeoutError):
    """Raised by CircuitBreaker.call when its half-open probe outlived the breaker's probe deadline.

    The probe was cancelled and the breaker reopened. Also a TimeoutError, since it is a deadline overrun.
    """


class LaneClosed(EsperError):
    """Raised when work is submitted to a lane after close()."""


class LaneJobEscaped(EsperError):
    """A lane job raised KeyboardInterrupt or SystemExit (user code: a real Ctrl-C reaches the main thread, never a
    lane), or StopIteration or StopAsyncIteration (``next()`` on an exhausted iterator in a model's forward).
    Delivered as-is to the awaiting task, the first two stopped the event loop (asyncio re-raises them from any task)
    and every run in it, and the last two never arrived (a future refuses them), so the caller waited for good; it is
    the job's failure instead, the original as its cause."""


class HandoffMissing(EsperError, KeyError):
    """Raised by Handoff.take() for a handle that was never put, already taken, or discarded."""


class BusError(EsperError):
    """An Oona bus operation could not be carried out."""


class UnknownTopic(BusError, ValueError):
    """Raised when publish or subscribe names a topic the bus was not created with."""


class BusClosed(BusError):
    """Raised by publish or consume after the bus has been closed."""


class BusUnavailable(BusError):
    """Raised by a bus operation whose server did not answer (a Redis server down, restarting or unreachable).

    Unlike BusClosed it is transient: the same call may succeed once the server is back.
    """


class PayloadTooLarge(BusError, ValueError):
    """Raised by a networked bus's publish when the encoded payload is larger than its max_payload_bytes.

    Permanent for that message, unlike BusUnavailable: publishing it again fails the same way.
    """

    def __init__(self, message_type: str, size: int, limit: int) -> None:
        super().__init__(f"{message_type} payload is {size} bytes, over max_payload_bytes={limit}")
        self.message_type = message_type
        self.size = size
        self.limit = limit

    def __reduce__(self) -> tuple[type[PayloadTooLarge], tuple[str, int, int]]:
        return type(self), (self.message_type, self.size, self.limit)  # args holds the message, not these


class ConfigError(EsperError, ValueError):
    """Raised for an invalid configuration; the message is one line naming the file, the field path and the problem."""


# A full disk, a quota reached, a file system gone read-only, a file-size limit reached (``ulimit -f``: EFBIG, which
# was restarted dozens of times), a run directory the run may not write (its modes, or ``chattr +i``: EACCES, EPERM,
# which were restarted to the restart limit, ending without a remedy): every restart would write and fail the same
# way. Not EIO: a network file system's or a device's I/O error can pass, and the restart limits (the window, no
# progress) bound the retries of one that does not. Each with what to do about it before a --resume: "free the disk"
# told a user at a `ulimit -f` limit to delete files, which does not fix it.
# EACCES and EPERM name a file, which need not be in the run directory (urza.root's, the npz file, a user's own).
_ACCESSIBLE = "make {} (or its directory) accessible: its permissions or an immutable attribute"
_ACCESSIBLE_ANY = _ACCESSIBLE.format("the file the error names")
_REMEDIES = {
    # A checkpoint is written beside the ones kept before the oldest is dropped: the peak is one more than kept.
    errno.ENOSPC: (
        "free space on the disk (the checkpoints take up to (tolaria.checkpoint_keep_last + 1) x one checkpoint's"
        " size; a smaller checkpoint_keep_last takes less)"
    ),
    errno.EDQUOT: "free space within the quota (or raise it)",
    errno.EFBIG: "raise the file-size limit (ulimit -f)",
    errno.EROFS: "make the file system writable",
    errno.EACCES: _ACCESSIBLE_ANY,
    errno.EPERM: _ACCESSIBLE_ANY,
}
_UNRECOVERABLE_ERRNOS = frozenset(_REMEDIES)
# Unrecoverable only as a file's error: a PermissionError that names no file (a signal to another process, a user
# model's own call) is no run directory's, and is restarted as any other failure.
_FILE_ERRNOS = frozenset({errno.EACCES, errno.EPERM})


def unrecoverable_cause(error: BaseException) -> OSError | None:
    """The OSError inside ``error`` (itself, a member of an exception group, or a cause) that no restart can fix, or
    None."""
    return _os_error_in(error, file_bound=True)


def _os_error_in(error: BaseException, *, file_bound: bool) -> OSError | None:
    """The first OSError of a code in _REMEDIES in ``error``'s chain (``file_bound``: EACCES and EPERM only with a
    file name), or None."""
    seen: set[int] = set()
    pending: list[BaseException] = [error]
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if (
            isinstance(current, OSError)
            and current.errno in _UNRECOVERABLE_ERRNOS
            and not (file_bound and current.errno in _FILE_ERRNOS and current.filename is None)
        ):
            return current
        if isinstance(current, BaseExceptionGroup):
            pending.extend(current.exceptions)
        pending.extend(e for e in (current.__cause__, current.__context__) if e is not None)
    return None


def unrecoverable_remedy(error: BaseException) -> str:
    """What the user must fix before resuming a run ``error`` (an UnrecoverableFailure) stopped, by its cause: the
    OSError in its chain (naming the file it was refused, for EACCES and EPERM), else the system's wording of one in
    its message (a nested supervisor's escalation keeps only the text); "fix the cause" when neither says."""
    cause = _os_error_in(error, file_bound=False)
    if cause is not None and cause.errno in _FILE_ERRNOS and isinstance(cause.filename, str | bytes):
        return _ACCESSIBLE.format(os.fsdecode(cause.filename))
    if cause is not None and cause.errno in _REMEDIES:
        return _REMEDIES[cause.errno]
    text = str(error)
    for code, remedy in _REMEDIES.items():
        if os.strerror(code) in text:
            return remedy
    return "fix the cause"


def innermost(error: BaseException) -> BaseException:
    """The failure an exception group wraps (a TaskGroup's ``unhandled errors in a TaskGroup``): its first leaf,
    depth first; any other error is itself."""
    while isinstance(error, BaseExceptionGroup) and error.exceptions:
        error = error.exceptions[0]
    return error


def describe_error(error: BaseException, limit: int = 500) -> tuple[str, str]:
    """(type name, message) of the failure a user has to act on: the innermost error of an exception group, its
    message cut at ``limit`` characters."""
    inner = innermost(error)
    text = str(inner) or repr(inner)
    return type(inner).__name__, text if len(text) <= limit else text[: limit - 3] + "..."
