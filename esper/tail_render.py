"""The log tail's pure part: parse events.jsonl lines, filter them, render them, and keep each actor's latest state.

Nothing here does I/O; esper.tail_follow reads the file and esper.tail wires both to the command line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, final

import msgspec

from esper.log_levels import LEVEL_NUMBERS, LogLevel, parse_level
from schemas.enums import ActorStatus, BreakerState, SeedLifecycleGate, SeedLifecycleStage
from schemas.runtime import ActorState

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

_RESET: Final = "\x1b[0m"
_DIM: Final = "\x1b[2m"
_BOLD: Final = "\x1b[1m"
_CYAN: Final = "\x1b[36m"
_LEVEL_COLORS: Final[dict[LogLevel, str]] = {
    "debug": "\x1b[2m",
    "info": "\x1b[32m",
    "warning": "\x1b[33m",
    "error": "\x1b[31m",
    "critical": "\x1b[1;41;97m",
}
_ALERT: Final = "\x1b[31m"
_BARE_VALUE: Final = re.compile(r"[\w.:/@+\-]+")
_ACTOR_STATE_FIELDS: Final = frozenset(ActorState.__struct_fields__)
_RUN_ID: Final = frozenset({"run_id"})
_TAB: Final = "\t"
_SEED_EVENTS: Final = frozenset({"seed_stage", "seed_stage_changed", "seed_state", "gate_result"})
"""The events whose stage and gate fields are the lifecycle's (a blueprint's ``stage`` is its maturity)."""
_NAMED_FIELDS: Final[dict[str, type[SeedLifecycleStage | SeedLifecycleGate]]] = {
    "stage": SeedLifecycleStage,
    "from_stage": SeedLifecycleStage,
    "to_stage": SeedLifecycleStage,
    "gate": SeedLifecycleGate,
    "last_gate": SeedLifecycleGate,
}


@final
@dataclass(frozen=True, slots=True)
class LogEvent:
    """One parsed line of events.jsonl. ``fields`` holds every key but timestamp, level, event and actor, in order."""

    timestamp: str
    level: LogLevel
    event: str
    actor: str | None
    fields: Mapping[str, object] = field(default_factory=dict)


def parse_line(line: str) -> LogEvent | None:
    """The event on one line, or None when the line is malformed.

    Malformed: not JSON, not a JSON object, ``timestamp`` / ``level`` / ``event`` missing or not strings, an unknown
    level, or an ``actor`` that is neither a string nor null.
    """
    try:
        raw = msgspec.json.decode(line)
    except msgspec.DecodeError:
        return None
    if not isinstance(raw, dict):
        return None
    timestamp, level_name, event, actor = raw.get("timestamp"), raw.get("level"), raw.get("event"), raw.get("actor")
    if not (isinstance(timestamp, str) and isinstance(level_name, str) and isinstance(event, str)):
        return None
    if actor is not None and not isinstance(actor, str):
        return None
    try:
        level = parse_level(level_name)
    except ValueError:
        return None
    rest = {key: value for key, value in raw.items() if key not in ("timestamp", "level", "event", "actor")}
    return LogEvent(timestamp=timestamp, level=level, event=event, actor=actor, fields=rest)


@final
@dataclass(frozen=True, slots=True)
class EventFilter:
    """Which events to show: one actor (exact name) and a minimum level; None means no restriction.

    An actor's lines are those it logs under its name (``actor=``) and its supervisor's about it (``child=``: its
    failures and restarts)."""

    actor: str | None = None
    min_level: LogLevel | None = None

    def accepts(self, event: LogEvent) -> bool:
        if self.actor is not None and self.actor not in (event.actor, event.fields.get("child")):
            return False
        return self.min_level is None or LEVEL_NUMBERS[event.level] >= LEVEL_NUMBERS[self.min_level]


def short_time(timestamp: str) -> str:
    """``2025-01-02T03:04:05.678901Z`` as ``2025-01-02 03:04:05.678Z`` (the ``Z``, UTC, kept: a reader in another
    zone would take the bare time for local); anything else unchanged but escaped."""
    if len(timestamp) >= 19 and timestamp[10] == "T":
        zone = "Z" if timestamp.endswith("Z") else ""
        return escaped(f"{timestamp[:10]} {timestamp[11:23].rstrip('Z')}{zone}")
    return escaped(timestamp)


def name_suffix(event: str, key: str, value: object) -> str:
    """`` (germinated)`` after a lifecycle event's stage or gate number (``last_gate``'s nested ``gate`` too), so a
    reader need not know the numbering; "" for anything else. The number itself stays shown: scripts grep it."""
    kind = _NAMED_FIELDS.get(key)
    if kind is None or event not in _SEED_EVENTS:
        return ""
    if key == "last_gate" and isinstance(value, dict):
        value = value.get("gate")
    if not isinstance(value, int) or isinstance(value, bool):
        return ""
    try:
        return f" ({kind(value).name.lower()})"
    except ValueError:
        return ""


def format_value(value: object) -> str:
    """A value as the tail shows it: simple strings bare, other strings quoted, everything else as compact JSON.

    JSON leaves DEL, the C1 controls (``\\x9b`` starts a terminal sequence too) and U+2028 raw: they are escaped.
    """
    if isinstance(value, str) and _BARE_VALUE.fullmatch(value):
        return escaped(value)
    return escaped(msgspec.json.encode(value).decode())


def escaped(text: str, *, keep: str = "") -> str:
    """``text`` with every non-printable character but those in ``keep`` escaped (ESC as ``\\x1b``), so what a log
    line holds cannot drive the terminal it is shown on."""
    if text.isprintable():
        return text
    return "".join(
        char if char.isprintable() or char in keep else char.encode("unicode_escape").decode("ascii") for char in text
    )


def _paint(text: str, code: str, color: bool) -> str:
    return f"{code}{text}{_RESET}" if color else text


def render_event(event: LogEvent, *, color: bool = False, omit: frozenset[str] = frozenset()) -> str:
    """One event as a line: time, level, actor (``-`` if none), event, then key=value pairs in file order.

    Keys in ``omit`` are left out. A multi-line ``exception`` or ``traceback`` field follows on indented lines. No
    trailing newline.
    """
    parts = [
        _paint(short_time(event.timestamp), _DIM, color),
        _paint(f"{event.level:<8}", _LEVEL_COLORS[event.level], color),
        _paint(f"{escaped(event.actor or '-'):<12}", _CYAN, color),
        _paint(escaped(event.event), _BOLD, color),
    ]
    trailer = ""
    for key, value in event.fields.items():
        if key in omit:
            continue
        if key in ("exception", "traceback") and isinstance(value, str):
            # A traceback's tabs stay: they indent its lines, and move the cursor no further than the line's end.
            trailer = "".join(f"\n    {escaped(line, keep=_TAB)}" for line in value.splitlines())
            continue
        parts.append(f"{_paint(escaped(key), _DIM, color)}={format_value(value)}{name_suffix(event.event, key, value)}")
    return " ".join(parts) + trailer


def parse_actor_state(event: LogEvent) -> ActorState | None:
    """The ActorState an ``actor_state`` event carries, or None if its fields do not make one."""
    if event.actor is None:
        return None
    payload = {key: value for key, value in event.fields.items() if key in _ACTOR_STATE_FIELDS}
    payload["actor"] = event.actor
    try:
        return msgspec.convert(payload, ActorState)
    except msgspec.ValidationError:
        return None


@final
class ActorStateTable:
    """The latest ``actor_state`` of every actor (latest line wins), rendered as a table sorted by actor name."""

    def __init__(self) -> None:
        self._rows: dict[str, tuple[ActorState, str]] = {}

    def update(self, state: ActorState, timestamp: str) -> None:
        self._rows[state.actor] = (state, timestamp)

    def latest(self, actor: str) -> ActorState | None:
        row = self._rows.get(actor)
        return row[0] if row is not None else None

    def __len__(self) -> int:
        return len(self._rows)

    def render(self, *, malformed: int = 0, color: bool = False, stale_as_of: str | None = None) -> str:
        """The table with a footer counting actors and skipped malformed lines, and, when ``stale_as_of`` (the last
        line's timestamp) is given, a last line saying the run is not running: the states are not live. No trailing
        newline."""
        header = ("actor", "status", "mailbox", "handled", "failed", "restarts", "breaker", "latency_ms", "updated")
        rows: list[tuple[str, ...]] = []
        alerts: list[set[int]] = []
        for name in sorted(self._rows):
            state, timestamp = self._rows[name]
            latency = "-" if state.last_latency_ms is None else f"{state.last_latency_ms:.2f}"
            rows.append(
                (
                    escaped(state.actor),
                    state.status.value,
                    f"{state.mailbox_depth}/{state.mailbox_capacity}",
                    str(state.handled),
                    str(state.failed),
                    str(state.restarts),
                    "-" if state.breaker is None else state.breaker.value,
                    latency,
                    short_time(timestamp)[11:] or escaped(timestamp),
                )
            )
            alert = set()
            if state.status is ActorStatus.FAILED:
                alert.add(1)
            if state.breaker is BreakerState.OPEN:
                alert.add(6)
            alerts.append(alert)
        widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
        numeric = {2, 3, 4, 5, 7}

        def line(cells: tuple[str, ...], alert: set[int]) -> str:
            out = []
            for i, cell in enumerate(cells):
                padded = cell.rjust(widths[i]) if i in numeric else cell.ljust(widths[i])
                out.append(_paint(padded, _ALERT, color) if i in alert else padded)
            return "  ".join(out).rstrip()

        lines = [_paint(line(header, set()), _BOLD, color) if color else line(header, set())]
        lines.extend(line(row, alert) for row, alert in zip(rows, alerts, strict=True))
        if not rows:
            lines.append("(no actor_state events yet)")
        noun = "actor" if len(rows) == 1 else "actors"
        lines.append(f"{len(rows)} {noun}, {malformed} malformed {'line' if malformed == 1 else 'lines'} skipped")
        if stale_as_of is not None:
            as_of = short_time(stale_as_of)[11:] or escaped(stale_as_of)
            lines.append(_paint(f"the run is not running: states as of {as_of}", _ALERT, color))
        return "\n".join(lines)


@final
class TailSession:
    """Turns lines into output: rendered events, or (state mode) an updated table; counts malformed lines.

    In state mode only ``actor_state`` events matter and --actor limits the rows; --level does not apply, since
    states are logged at info. An ``actor_state`` line whose fields do not make an ActorState counts as malformed.
    """

    def __init__(self, *, event_filter: EventFilter, state: bool = False, color: bool = False) -> None:
        self.event_filter = event_filter
        self.state_mode = state
        self.color = color
        self.table = ActorStateTable()
        self.malformed = 0
        self.events = 0
        """Lines that parsed as events, shown or not: none among many lines means the file is not a run's log."""
        self.last_timestamp: str | None = None
        self.gone = False
        """Whether the run is known to be no longer running (killed): the state view then says its states are old."""
        self.version = 0
        """Bumped whenever something the state view shows (a row or the malformed count) changes."""
        self.finished = False
        """Whether the last event read is a ``run_finished`` (a resumed session's first line clears it again)."""
        self._shown_run_id: object = None
        """The run id of the last event shown: every line of a run carries it, so it is shown only when it changes."""

    def feed(self, lines: Iterable[str]) -> list[str]:
        """Take lines (without newlines); return the rendered events to show (always empty in state mode)."""
        shown: list[str] = []
        for text in lines:
            event = parse_line(text)
            if event is None:
                self.malformed += 1
                self.version += 1
                continue
            self.events += 1
            self.last_timestamp = event.timestamp
            self.finished = event.event == "run_finished"
            if self.state_mode:
                self._observe_state(event)
            elif self.event_filter.accepts(event):
                run_id = event.fields.get("run_id")
                repeated = run_id is not None and run_id == self._shown_run_id
                shown.append(render_event(event, color=self.color, omit=_RUN_ID if repeated else frozenset()))
                self._shown_run_id = run_id
        return shown

    def _observe_state(self, event: LogEvent) -> None:
        if event.event != "actor_state":
            return
        state = parse_actor_state(event)
        if state is None:
            self.malformed += 1
            self.version += 1
            return
        if self.event_filter.actor is None or state.actor == self.event_filter.actor:
            self.table.update(state, event.timestamp)
            self.version += 1

    def mark_gone(self) -> None:
        """The run is no longer running: the state view says so from now on."""
        if not self.gone:
            self.gone = True
            self.version += 1

    def render_state(self) -> str:
        stale_as_of = (self.last_timestamp or "?") if self.gone else None
        return self.table.render(malformed=self.malformed, color=self.color, stale_as_of=stale_as_of)

    def no_events(self, path: object) -> str | None:
        """The one line saying ``path`` is not an events file, when its lines were read and none was an event."""
        if self.events or not self.malformed:
            return None
        noun = "line" if self.malformed == 1 else "lines"
        skipped = f"{self.malformed} {noun} skipped"
        return f"esper.tail: {escaped(str(path))} holds no Esper events ({skipped}): is it the run's events.jsonl?"

    def summary(self) -> str | None:
        """The end-of-run line for stderr, or None when nothing was skipped."""
        if self.malformed == 0:
            return None
        return f"esper.tail: {self.malformed} malformed {'line' if self.malformed == 1 else 'lines'} skipped"
