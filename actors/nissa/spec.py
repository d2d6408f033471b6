"""Nissa's child specs: the actor itself, and the ticker that asks it to evaluate its alert rules."""

from __future__ import annotations

from typing import TYPE_CHECKING

from actors.nissa.actor import Nissa
from actors.nissa.alerts import DEFAULT_RULES
from actors.nissa.csv_writer import RowBacklog
from actors.nissa.slo import DEFAULT_SLOS
from esper.runtime.child_spec import ChildSpec
from esper.runtime.ticker import Ticker

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence
    from pathlib import Path

    from actors.nissa.alerts import AlertRule
    from actors.nissa.metrics import SlotTransition
    from actors.nissa.slo import SloObjective
    from esper.runtime.clock import Clock
    from esper.runtime.events import EventSink
    from esper.runtime.stage_refusals import Refusal
    from schemas.config import NissaConfig
    from schemas.state import SystemStatePacket

NISSA = "nissa"
NISSA_TICK = "nissa-tick"


def nissa_spec(
    config: NissaConfig,
    run_dir: Path,
    *,
    clock: Clock,
    sink: EventSink,
    started_s: float | None = None,
    resumed: bool = False,
    shutdown_deadline_s: float = 5.0,
    mailbox_capacity: int = 1024,
    rules: Sequence[AlertRule] = DEFAULT_RULES,
    slos: Sequence[SloObjective] = DEFAULT_SLOS,
    transitions: Sequence[SlotTransition] | None = None,
    later_transitions: Callable[[], Sequence[SlotTransition]] | None = None,
    refusals: Callable[[], Sequence[Refusal]] | None = None,
    missed: Sequence[SystemStatePacket] = (),
    run_id: str = "",
) -> ChildSpec:
    """The ``nissa`` child (permanent). Every incarnation resumes ``run_dir/metrics.csv`` and first writes the rows an
    earlier one crashed while writing; row wall times count from ``started_s``, the clock time the run's start began at
    (the summary's duration counts from it too; None: when this spec is built), so they survive restarts. ``resumed``:
    the run goes on from earlier sessions, whose last row's wall time the first incarnation's rows count on from (this
    session's time added to it, never the time between sessions). ``transitions``: the slot transitions the first
    incarnation starts from (a resume's, its earlier sessions'); ``later_transitions``: a restarted incarnation's, those
    of the run that stand. ``refusals``: the stage ops the trainer refused that stand as each incarnation starts (a
    resume's earlier sessions', the run's so far after a restart). ``missed``: the epoch-end packets of a resume's
    epochs whose checkpoint was written and whose rows were not (esper.resume_rows); the first incarnation writes their
    rows. With ``prometheus_port`` 0 a restarted incarnation binds the port its predecessor bound, so the URL the run
    printed stays good (another free one, with a warning, if that port was taken meanwhile). ``run_id``: the run's id,
    which the endpoint's /metrics (``esper_run_info``) and /metrics/summary give."""
    # The origin the rows count from: a resumed run's first incarnation moves it back by its earlier sessions' time,
    # and every later incarnation (a restart) keeps the moved one.
    origin = [clock.now() if started_s is None else started_s]
    # Until an incarnation has read metrics.csv and set the origin: one that crashed before (its file would not open)
    # leaves the continuing to its restart.
    continues = [resumed]

    def origin_set(started: float) -> None:
        origin.append(started)
        continues.clear()

    backlog = RowBacklog(missed)  # rows an incarnation crashed while writing: the next one writes them
    first: list[Sequence[SlotTransition] | None] = [transitions]  # a resume's, for the first incarnation
    bound: list[int] = []  # the endpoint's ports, in order: with port 0 a restart binds the last one again

    def build() -> Nissa:
        return Nissa(
            config,
            run_dir,
            clock=clock,
            sink=sink,
            started_s=origin[-1],
            continues=continues[0] if continues else False,
            on_origin=origin_set,
            capacity=mailbox_capacity,
            rules=rules,
            slos=slos,
            backlog=backlog,
            transitions=first.pop() if first else later_transitions() if later_transitions is not None else None,
            refusals=refusals() if refusals is not None else (),
            rebind_port=bound[-1] if bound else None,
            on_listening=bound.append,
            run_id=run_id,
        )

    return ChildSpec(NISSA, build, shutdown_deadline_s=shutdown_deadline_s)


def nissa_tick_spec(
    tick: Callable[[], Awaitable[None]],
    config: NissaConfig,
    *,
    clock: Clock,
    shutdown_deadline_s: float = 5.0,
) -> ChildSpec:
    """The ``nissa-tick`` child: calls ``tick`` every ``config.alert_eval_interval_s`` seconds of ``clock``.

    ``tick`` is normally ``lambda: nissa_ref.tell(EvaluateAlerts())``; start this child after ``nissa``.
    """
    return ChildSpec(
        NISSA_TICK,
        lambda: Ticker(tick, interval_s=config.alert_eval_interval_s, clock=clock),
        shutdown_deadline_s=shutdown_deadline_s,
    )
