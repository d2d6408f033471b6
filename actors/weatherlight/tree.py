"""The root supervision tree: rest_for_one over the subsystems in start order, plus the state reporter."""

from __future__ import annotations

from typing import TYPE_CHECKING

from esper.runtime.child_spec import ChildSpec
from esper.runtime.supervisor import Supervisor
from esper.runtime.ticker import Ticker

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from esper.runtime.clock import Clock
    from esper.runtime.events import EventSink
    from schemas.config_platform import WeatherlightConfig
    from schemas.runtime import ActorState

SUBSYSTEM_ORDER = ("oona", "urza", "nissa", "tezzeret", "kasmina", "tamiyo", "tolaria")
"""Start order of the subsystems (REFERENCE.md section 12); each depends only on those before it."""

REPORTER = "weatherlight"


def build_root(children: Sequence[ChildSpec], settings: WeatherlightConfig) -> Supervisor:
    """The root supervisor: rest_for_one over ``children``, which must follow SUBSYSTEM_ORDER (the reporter last).

    rest_for_one because a subsystem depends on those started before it: when one fails, it and everything that may
    hold its state restart, in order.

    Raises:
        ValueError: two children share a name, or subsystems are out of order.
    """
    names = [child.name for child in children]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate child names in {names}")
    known = [name for name in names if name in SUBSYSTEM_ORDER]
    if known != sorted(known, key=SUBSYSTEM_ORDER.index):
        raise ValueError(f"subsystems must start in the order {', '.join(SUBSYSTEM_ORDER)}; got {', '.join(known)}")
    return Supervisor(
        children,
        strategy="rest_for_one",
        max_restarts=settings.restart_max,
        window_s=settings.restart_window_s,
        backoff_initial_s=settings.restart_backoff_initial_s,
        backoff_max_s=settings.restart_backoff_max_s,
        name="weatherlight",
    )


def state_reporter(
    snapshot: Callable[[], list[ActorState]],
    sink: EventSink,
    *,
    interval_s: float,
    clock: Clock,
    shutdown_deadline_s: float,
) -> ChildSpec:
    """A child that emits every actor's ActorState to ``sink`` at start and every ``interval_s`` seconds.

    The sink logs each as an ``actor_state`` event, which ``python -m esper.tail --state`` tabulates.
    """

    async def report() -> None:
        for state in snapshot():
            sink.emit(state)

    return ChildSpec(
        REPORTER,
        lambda: Ticker(report, interval_s=interval_s, clock=clock),
        shutdown_deadline_s=shutdown_deadline_s,
    )
