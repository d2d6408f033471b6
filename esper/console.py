"""The run as a person watches it on a terminal.

A header, a progress bar per epoch (with the time elapsed and the time left), one line per lifecycle event.

Fed on the event loop by the composition root: ``on_packet`` with every state packet (progress within the epoch, and
the epoch's figures at its end) and ``emit`` with the run's events (lifecycle changes, a seed paused or resumed,
emergencies, restarts, loss spikes, conservative mode, a seed operation the trainer refused, a command Kasmina
refused: the first for each reason, then its running count at an epoch end each time it has doubled). Writes to a
text stream through a ConsoleStream, which never blocks (its reader may stall); on a TTY the bar redraws in place,
elsewhere only the finished bar of each epoch is written.
"""

from __future__ import annotations

import shlex
import time
from typing import TYPE_CHECKING, Any, Final, TextIO, final

from esper.console_stream import ConsoleStream
from esper.terminal import plain_terminal, terminal_columns
from schemas.control import CommandResult
from schemas.domain_enums import CommandKind
from schemas.enums import BreakerState, SeedLifecycleStage
from schemas.nissa import LifecycleRestored, SeedStageChanged
from schemas.runtime import BreakerTransition, ChildRestarted, EmergencySignal
from schemas.telemetry import TelemetryEvent

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from pathlib import Path

    from esper.logs import ConsoleLine
    from schemas.base import Message, Record
    from schemas.state import SystemStatePacket

BAR_WIDTH = 24

_SHOWN = frozenset(
    {
        SeedLifecycleStage.GERMINATED,
        SeedLifecycleStage.TRAINING,
        SeedLifecycleStage.BLENDING,
        SeedLifecycleStage.SHADOWING,
        SeedLifecycleStage.PROBATIONARY,
        SeedLifecycleStage.FOSSILIZED,
        SeedLifecycleStage.CULLED,
    }
)
"""Transitions of a seed's life; the slot's clean-up after a cull (embargo, reset) is not shown."""

_SHOWN_EVENTS = {
    "loss_spike": "loss spike",
    "conservative_entered": "",  # the description says it: "conservative mode entered: loss_spike"
    "conservative_exited": "",
    "seed_op_failed": "op failed",
    "seed_germination_withdrawn": "withdrawn",  # its attach refused for the emergency level: the slot is free again
    "preparation_failed": "not built",  # the seed's module could not be made: culled
    # Not Urza's verified artifact (none stored yet, or its blob went bad) but the same blueprint built afresh.
    "kasmina.seed_built_from_catalogue": "catalogue",
    "esper.resume_point": "resuming",  # where a --resume continues: which checkpoint, or the start
    "esper.resume_setting_changed": "changed",  # a setting the resume's config changes from the run's config.toml
    # The policy raised (its worker dead for good, say): the fallback decides; the breaker caps how often this shows.
    "inference_failed": "policy failed",
    "tamiyo_gnn_worker_starting": "policy",  # its worker's torch import: seconds before the first epoch line
    "tamiyo_gnn_worker_ready": "policy back",  # after a worker restart: the fallback no longer decides
    "seed_op_retried": "took effect",  # a stage change the trainer refused (at L3), applied later
    "metrics_endpoint_unavailable": "no metrics",  # the port was taken after the start's check
    # A restarted Nissa found the port it had taken meanwhile: the new URL follows (metrics_endpoint_listening).
    "metrics_endpoint_moved": "metrics moved",
    # Once per episode: every command is refused until the ledger has room (command_rejected says each, folded).
    "nonce_ledger_full": "ledger full",
}
"""Telemetry events that change what the run does next (the risk engine pausing growth, an operation refused)."""


def _worker_restarted(fields: Mapping[str, Any]) -> str:
    code, restarts, most = fields.get("exit_code"), fields.get("restarts"), fields.get("max_restarts")
    # A negative exit code is the signal that ended it (-9: killed, by Esper after a hang, the user or the OOM killer).
    ended = f"was killed by signal {-code}" if isinstance(code, int) and code < 0 else f"exited with code {code}"
    count = f"restart {restarts} of {most}" if most is not None else f"restart {restarts}"
    return (
        f"  {'policy down':<12} the GNN worker {ended}: {count}, ready in a few seconds (it imports torch);"
        " the fallback decides meanwhile"
    )


def _worker_hung(fields: Mapping[str, Any]) -> str:
    silent, pid = fields.get("silent_s"), fields.get("pid")
    if fields.get("starting"):
        what = f"the restarted GNN worker was not ready within {silent} s"
    else:
        what = f"the GNN worker{f' (pid {pid})' if pid is not None else ''} did not answer within {silent} s"
    return f"  {'policy hung':<12} {what}: killed (a new one is started while its restarts last)"


def _not_journaled(fields: Mapping[str, Any]) -> str:
    step = fields.get("step")
    where = f"step {step:>6}  " if isinstance(step, int) else ""
    if fields.get("reason") == "policy_busy":
        why = "the policy was still deciding an earlier packet"
    else:
        why = f"its journal could not be written ({fields.get('error')})"
    return (
        f"  {where}{'not saved':<12} the controller's state at this epoch end ({why}): a resume from here starts"
        " from its previous saved state"
    )


def _bus_unavailable(fields: Mapping[str, Any]) -> str:
    return (
        f"  {'bus down':<12} {str(fields.get('error')).rstrip('.')}: events for observers are dropped until it"
        " answers (training goes on)"
    )


def _password_unneeded(fields: Mapping[str, Any]) -> str:
    return f"  bus password {fields.get('url')}: {fields.get('detail')}"


def _breaker_transition(fields: Mapping[str, Any]) -> str | None:
    name, reason, to_state = fields.get("breaker"), fields.get("reason"), fields.get("to_state")
    if to_state == BreakerState.OPEN.value:
        return f"  {'breaker open':<12} {name}: {reason}"
    if to_state == BreakerState.HALF_OPEN.value:  # info level: shown with logging.console_level = "info"
        return f"  {'probing':<12} {name}: its breaker lets one call through ({reason})"
    return None  # closed again: the progress console's "recovered" line says so


def _shown_by_emit(_fields: Mapping[str, Any]) -> None:
    """None: Console.emit shows this typed event as a line of its own (a raw line too printed it twice)."""


LOG_LINES: Final[Mapping[str, ConsoleLine]] = {
    # Console.emit formats every EmergencySignal ("emergency L2_ELEVATED: ...") and every ChildRestarted.
    "emergency_signal": _shown_by_emit,
    "child_restarted": _shown_by_emit,
    "tamiyo_gnn_worker_restarted": _worker_restarted,
    "tamiyo_gnn_worker_hung": _worker_hung,
    "tamiyo_state_not_journaled": _not_journaled,
    "oona_bus_unavailable": _bus_unavailable,
    "oona_redis_password_unneeded": _password_unneeded,
    "breaker_transition": _breaker_transition,
}
"""Log events (not the typed events ``emit`` gets) the console shows as lines in its style rather than structlog's
key=value lines (configure_logging's ``console_lines``): a breaker's monotonic ``at_s`` means nothing to a reader."""


def progress_bar(fraction: float, width: int = BAR_WIDTH) -> str:
    """``[#####-----]`` for a fraction in [0, 1] (clamped)."""
    filled = round(max(0.0, min(1.0, fraction)) * width)
    return "[" + "#" * filled + "-" * (width - filled) + "]"


def clock_time(seconds: float) -> str:
    """``m:ss``, or ``h:mm:ss`` from an hour on."""
    whole = max(0, round(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def stage_line(event: SeedStageChanged) -> str:
    """One line for a lifecycle change: step, stage, seed, slot, blueprint and the reason."""
    stage = event.to_stage.name.lower()
    seed = event.seed_id or "-"
    blueprint = event.blueprint_id or "-"
    reason = f" ({event.reason})" if event.reason else ""
    return f"  step {event.step:>6}  {stage:<12} seed {seed} in slot {event.slot}, blueprint {blueprint}{reason}"


def pause_line(event: CommandResult) -> str:
    """One lifecycle-like line for a seed paused (its stage held: it trains and blends no further) or resumed."""
    slot = event.target_slot or "-"
    if event.kind is CommandKind.PAUSE:
        return f"  step {event.applied_step:>6}  {'paused':<12} seed {event.seed_id} in slot {slot}, held in its stage"
    return f"  step {event.applied_step:>6}  {'resumed':<12} seed {event.seed_id} in slot {slot}"


def event_line(event: TelemetryEvent, label: str) -> str:
    """One line for a shown telemetry event: where (step or epoch, when it says), a label and its description."""
    step, epoch = event.attributes.get("step"), event.attributes.get("epoch")
    # Events count epochs from 0 (the packet's epoch index); the console's epoch lines count from 1.
    where = (
        f"step {step:>6}  " if isinstance(step, int) else f"epoch {epoch + 1:>5}  " if isinstance(epoch, int) else ""
    )
    return f"  {where}{label:<12} {event.description}" if label else f"  {where}{event.description}"


@final
class Console:
    """Progress and lifecycle lines on ``stream``; see the module docstring. Event loop only."""

    def __init__(
        self,
        stream: TextIO | ConsoleStream,
        *,
        epochs: int,
        interactive: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
        columns: Callable[[], int] | None = None,
    ) -> None:
        # Written from the event loop: a closed pipe or terminal drops the console, never the run.
        self._stream = stream if isinstance(stream, ConsoleStream) else ConsoleStream(stream)
        self._epochs = epochs
        # NO_COLOR or TERM=dumb: no erase codes and no bar redrawn with \r, plain lines only.
        self._interactive = (stream.isatty() and not plain_terminal()) if interactive is None else interactive
        inner = self._stream.inner
        self._columns = columns if columns is not None else lambda: terminal_columns(inner)
        self._drawn = False
        self._clock = clock
        self._started_s = clock()
        self._first: tuple[float, float] | None = None  # (time, epochs done) at the first packet: the rate's origin
        self._shown_steps: list[int] = []  # the steps of the lifecycle lines shown, for a rollback's line
        self._conservative = False  # conservative mode as the lines shown so far say (entered, not exited since)
        self._metrics_url: str | None = None  # the /metrics URL shown
        # Commands refused, by reason, and the count last shown: the first of each is a line, then the count at an
        # epoch end once it has doubled (a nonce ledger too small refused 78 commands, one CRITICAL line each in
        # events.jsonl; 7 lines here, the summary has the total).
        self._rejected: dict[str, int] = {}
        self._rejected_told: dict[str, int] = {}

    def started(
        self, run_id: str, run_dir: Path, events_file: str, *, resume: bool, metrics_url: str | None = None
    ) -> None:
        """The header: which run, where its files go, and how to watch it from another shell (and from Prometheus,
        when ``metrics_url`` says where)."""
        verb = "resuming" if resume else "run"
        self._line(f"{verb} {run_id} in {run_dir}")
        self._line(f"  watch it: python -m esper.tail {shlex.quote(str(run_dir / events_file))} --follow --state")
        if metrics_url is not None:
            self._metrics_url = metrics_url
            self._line(f"  metrics:  {metrics_url}")

    def on_packet(self, packet: SystemStatePacket) -> None:
        epoch = packet.epoch + 1
        loss = f"loss {packet.training_loss:.4f}"
        timing = self._timing(packet.epoch + packet.epoch_progress)
        if packet.epoch_progress < 1.0:
            if self._interactive:
                bar = progress_bar(packet.epoch_progress)
                line = f"epoch {epoch:>3}/{self._epochs} {bar} {loss}  {timing}"
                # Within one screen line: a wrapped line is not redrawn by \r, and each packet added a line.
                self._stream.write("\r" + line[: max(1, self._columns() - 1)])
                self._stream.flush()
                self._drawn = True
            return
        if packet.epoch_training_loss is not None:
            loss = f"loss {packet.epoch_training_loss:.4f}"
        figures = [loss]
        if packet.validation_loss is not None:
            figures.append(f"val loss {packet.validation_loss:.4f}")
        if packet.validation_accuracy is not None:
            figures.append(f"val acc {packet.validation_accuracy:.4f}")
        figures.append(f"params +{packet.seed_parameters}")
        figures.append(timing)
        bar = f"{progress_bar(1.0)} " if self._interactive else ""
        self._line(f"epoch {epoch:>3}/{self._epochs} {bar}" + "  ".join(figures))
        for reason, count in sorted(self._rejected.items()):
            if count >= 2 * self._rejected_told[reason]:
                self._rejected_told[reason] = count
                self._line(f"  epoch {epoch:>5}  {'rejected':<12} {count} commands so far: {reason}")

    def _timing(self, done: float) -> str:
        """``[elapsed<left]`` as Lightning and tqdm show it: time since the run started, and the epochs still to go
        at this session's pace so far (measured from its first packet, so start-up and a resume's earlier epochs
        do not skew it); ``?`` until there is a pace."""
        now = self._clock()
        if self._first is None:
            self._first = (now, done)
        first_s, first_done = self._first
        left = "?"
        if done > first_done and now > first_s:
            left = clock_time((now - first_s) / (done - first_done) * max(0.0, self._epochs - done))
        return f"[{clock_time(now - self._started_s)}<{left}]"

    def emit(self, event: Message | Record) -> None:
        match event:
            case SeedStageChanged(to_stage=stage, seed_id=str()) if stage in _SHOWN:
                self._shown_steps.append(event.step)
                self._line(stage_line(event))
            case CommandResult(kind=CommandKind.PAUSE | CommandKind.RESUME, accepted=True) if (
                event.seed_id is not None and event.applied_step is not None
            ):
                # A pause changes no stage, so no lifecycle line showed it: a loss spike, then epochs later a cull
                # "(cull:policy:paused)" with nothing between.
                self._shown_steps.append(event.applied_step)
                self._line(pause_line(event))
            case LifecycleRestored(step=step):
                undone = sum(1 for shown in self._shown_steps if event.undoes(shown))
                self._shown_steps = [shown for shown in self._shown_steps if not event.undoes(shown)]
                if undone:  # lines the user saw are taken back; those that happen again show again
                    later = "1 lifecycle line above is" if undone == 1 else f"{undone} lifecycle lines above are"
                    self._line(f"  step {step:>6}  rolled back  the seeds are as at step {step} again; {later} undone")
            case EmergencySignal(level=level, reason=reason):
                self._line(f"  emergency {level.name}: {reason}")
            case ChildRestarted(child=child, restarts=restarts, backoff_s=backoff_s):
                # The raw child_restarted line it replaces said how many restarts and how long the wait was.
                self._line(f"  restarted {child} (restart {restarts}, backoff {round(backoff_s, 3):g} s)")
            case BreakerTransition(breaker=name, to_state=BreakerState.CLOSED, reason=reason) if (
                event.from_state is not BreakerState.CLOSED
            ):
                # Its opening is a warning on the console (the bus down, the policy failing): so is its recovery,
                # which is logged at info level and was never shown.
                self._line(f"  recovered {name}: its breaker closed again ({reason})")
            case TelemetryEvent(name="conservative_entered") if self._conservative:
                # A controller rewound by a rollback enters again a mode the user was told of and never saw it leave
                # (after an L3 rollback, "conservative mode entered" showed twice for one entry).
                pass
            case TelemetryEvent(name="metrics_endpoint_listening", attributes={"url": str(url)}):
                # Said once where the header could not say it (port 0: any free port), and again if a restarted
                # Nissa bound another one.
                if url != self._metrics_url:
                    self._metrics_url = url
                    self._line(f"  metrics:  {url}")
            case TelemetryEvent(name="command_rejected", attributes={"reason": str(reason)}):
                self._rejected[reason] = self._rejected.get(reason, 0) + 1
                if reason not in self._rejected_told:
                    self._rejected_told[reason] = 1
                    self._line(f"{event_line(event, 'rejected')} (repeats: a count each time it doubles)")
            case TelemetryEvent(name=name) if name in _SHOWN_EVENTS:
                if name in {"conservative_entered", "conservative_exited"}:
                    self._conservative = name == "conservative_entered"
                self._line(event_line(event, _SHOWN_EVENTS[name]))
            case _:
                pass

    def _line(self, text: str) -> None:
        prefix = "\r\x1b[2K" if self._interactive and self._drawn else ""
        self._drawn = False
        self._stream.write(f"{prefix}{text}\n")
        self._stream.flush()
