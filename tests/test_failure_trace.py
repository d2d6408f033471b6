"""A failure's trace: its last frames for events.jsonl and summary.json, and the user's frame for the console."""

from __future__ import annotations

import io
import json
import re
from typing import TYPE_CHECKING

import msgspec
import pytest

from esper.log_events import StructlogSink
from esper.logs import configure_logging, reset_logging
from esper.runtime.child_spec import ChildSpec
from esper.runtime.errors import RepeatedFailure
from esper.runtime.failure_trace import (
    TRACE_CHARS,
    failure_traceback,
    first_failure,
    located,
    raised_in_one_line,
    user_frame,
)
from esper.runtime.supervisor import Supervisor
from esper.runtime.system import ActorSystem
from esper.tail_render import parse_line, render_event
from schemas.runtime import ChildFailed
from tests.test_kernel_support import Crash, Get, Probe, Recorder

if TYPE_CHECKING:
    from pathlib import Path

    from esper.runtime.clock import ManualClock
    from esper.runtime.events import RecordingSink

HERE = r"(.*/)?tests/test_failure_trace\.py:\d+"  # relative to the working directory when under it


def _raise(depth: int, message: str) -> None:
    if depth == 0:
        raise RuntimeError(message)
    _raise(depth - 1, message)


def _caught(fn: object, *args: object) -> Exception:
    try:
        fn(*args)  # type: ignore[operator]
    except Exception as err:  # noqa: BLE001  # the test inspects whatever was raised
        return err
    raise AssertionError("it did not raise")


def test_the_first_failure_is_found_through_groups_and_escalations() -> None:
    cause = _caught(_raise, 0, "user bug")
    group = ExceptionGroup("unhandled errors in a TaskGroup", [cause])
    escalation = RepeatedFailure("gave up")
    escalation.__cause__ = RepeatedFailure("the child's")
    escalation.__cause__.__cause__ = group
    assert first_failure(escalation) is cause
    assert first_failure(RuntimeError("no cause")).args == ("no cause",)


def test_the_traceback_keeps_the_last_ten_frames_and_at_most_4_kb() -> None:
    trace = failure_traceback(_caught(_raise, 30, "deep"))
    assert trace is not None
    assert trace.startswith("Traceback (most recent call last; the last 10 of 32 frames):\n")
    assert "in _caught" not in trace, "the outermost frames are left out"
    assert trace.endswith("RuntimeError: deep")
    huge = failure_traceback(_caught(_raise, 3, "x" * 10_000))
    assert huge is not None
    assert len(huge) == TRACE_CHARS
    assert huge.startswith("...")
    assert failure_traceback(RuntimeError("never raised")) is None


def test_the_user_frame_is_the_innermost_outside_esper_and_the_libraries() -> None:
    assert re.fullmatch(HERE + " in _raise", user_frame(_caught(_raise, 2, "mine")) or "")
    # Raised inside Esper (a ChildSpec refusing its name) and the standard library: the caller's line is the user's.
    assert re.fullmatch(HERE + " in _caught", user_frame(_caught(ChildSpec, "", Probe)) or "")
    assert re.fullmatch(HERE + " in _caught", user_frame(_caught(json.loads, "{")) or "")
    assert user_frame(RuntimeError("never raised")) is None
    assert located(RuntimeError("never raised")) == ""
    assert re.fullmatch(r" \(at " + HERE + r" in _raise\)", located(_caught(_raise, 0, "mine")))


async def test_a_child_failure_carries_its_trace_and_the_users_frame(clock: ManualClock, sink: RecordingSink) -> None:
    """ChildFailed carried the error's type and message only: a bug in the user's code came without a line number."""
    system = ActorSystem(clock=clock, sink=sink)
    await system.start(Supervisor([ChildSpec("a", lambda: Probe(Recorder(), "a"))], backoff_initial_s=0.0))
    await system.ref("a", Probe).tell(Crash(reason="user bug"))
    assert await system.ref("a", Probe).ask(Get(), int) == 0  # restarted: the failure has been reported
    [failed] = sink.of_type(ChildFailed)
    assert re.fullmatch(r"(.*/)?tests/test_kernel_support\.py:\d+ in handle", failed.user_frame or "")
    assert failed.traceback is not None
    assert failed.traceback.endswith("RuntimeError: user bug")
    assert "test_kernel_support.py" in failed.traceback
    await system.stop()


def test_the_console_line_names_the_users_frame_and_leaves_the_traceback_to_the_file(tmp_path: Path) -> None:
    console = io.StringIO()
    logging = configure_logging(tmp_path, console=True, console_stream=console, colors=False)
    trace = 'Traceback (most recent call last; the last 1 of 1 frames):\n  File "m.py", line 3, in f\nValueError: bad'
    try:
        StructlogSink().emit(
            ChildFailed(
                supervisor="tolaria",
                child="tolaria/trainer",
                error_type="ValueError",
                error="bad",
                user_frame="m.py:3 in f",
                traceback=trace,
            )
        )
    finally:
        logging.close()
        reset_logging()
    [line] = console.getvalue().splitlines()
    assert "user_frame='m.py:3 in f'" in line
    assert "Traceback" not in line
    assert logging.json_path is not None
    [written] = logging.json_path.read_text(encoding="utf-8").splitlines()
    assert json.loads(written)["traceback"] == trace
    event = parse_line(written)
    assert event is not None
    assert render_event(event).splitlines()[1:] == [f"    {part}" for part in trace.splitlines()]


def test_a_child_failure_written_before_its_trace_was_recorded_still_decodes() -> None:
    old = (
        b'{"type":"ChildFailed","supervisor":"weatherlight","child":"tamiyo","error_type":"RuntimeError",'
        b'"error":"boom","run_id":"r"}'
    )
    decoded = msgspec.json.decode(old, type=ChildFailed)
    assert (decoded.user_frame, decoded.traceback) == (None, None)


@pytest.mark.parametrize("depth", [0, 5])
def test_located_names_the_same_frame_as_user_frame(depth: int) -> None:
    error = _caught(_raise, depth, "x")
    assert located(error) == f" (at {user_frame(error)})"


def _raise_from(message: str) -> None:
    try:
        _raise(1, "the cause")
    except RuntimeError as err:
        raise ValueError(message) from err


def test_a_users_error_is_said_in_one_line_where_their_own_raise_is() -> None:
    """A factory's multi-line error (torch's state-dict mismatch, a user's own) put the location after its last line;
    a user's ``raise ... from err`` was located at the cause's line, whose message the line did not show."""
    said = raised_in_one_line(_caught(_raise_from, "bad input\n\texpected  something else"))
    assert re.fullmatch(r"ValueError: bad input expected something else \(at " + HERE + r" in _raise_from\)", said)
    assert raised_in_one_line(KeyboardInterrupt()) == "KeyboardInterrupt"


def test_an_installed_package_outside_the_interpreters_own_paths_is_not_the_users(tmp_path: Path) -> None:
    """pip --user, Debian's dist-packages, a venv that sees the system's packages: torch there is no user code."""
    package = tmp_path / "lib" / "python3" / "dist-packages" / "somelib"
    package.mkdir(parents=True)
    source = "def fail():\n    raise RuntimeError('inside the library')\n"
    (package / "core.py").write_text(source, encoding="utf-8")
    namespace: dict[str, object] = {}
    exec(compile(source, str(package / "core.py"), "exec"), namespace)  # the library's frame names its file
    assert re.fullmatch(HERE + " in _caught", user_frame(_caught(namespace["fail"])) or "")
