"""The run's supervision tree: which actors Weatherlight starts, in which order (they stop in reverse)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from actors.oona.housekeeping import oona_spec
from actors.oona.publisher import PUBLISHER, BusLosses, OonaPublisher
from actors.tolaria.actor import TolariaWiring, tolaria_spec
from actors.weatherlight.tree import build_root, state_reporter
from esper.runtime.child_spec import ChildSpec

if TYPE_CHECKING:
    from collections.abc import Sequence

    from esper.runtime.bus import Bus
    from esper.runtime.clock import Clock
    from esper.runtime.events import EventSink
    from esper.runtime.supervisor import Supervisor
    from esper.runtime.system import ActorSystem
    from schemas.config import RunConfig


def build_tree(
    config: RunConfig,
    *,
    bus: Bus,
    clock: Clock,
    sink: EventSink,
    actors: ActorSystem,
    tolaria: TolariaWiring | None = None,
    subsystems: Sequence[ChildSpec] = (),
    bus_losses: BusLosses | None = None,
) -> Supervisor:
    """The run's supervision tree: oona, then ``subsystems`` (urza, nissa, tezzeret, kasmina, tamiyo in that order),
    then Tolaria, then the state reporter.

    Tolaria is transient: when training ends it stops normally and stays stopped; a crash restarts it (it resumes).
    Without subsystems Tolaria runs alone and expects no plans.
    """
    deadline_s = config.weatherlight.shutdown_deadline_s
    children: list[ChildSpec] = [
        oona_spec(bus, clock=clock, ttl_s=config.oona.message_ttl_s, shutdown_deadline_s=deadline_s),
        ChildSpec(
            PUBLISHER,
            lambda: OonaPublisher(bus, clock=clock, sink=sink, breaker=config.oona.publish_breaker, losses=bus_losses),
            shutdown_deadline_s=deadline_s,
        ),
        *subsystems,
    ]
    if tolaria is not None:
        # Stopping Tolaria finishes the current step and writes a checkpoint, which may outlast a small deadline.
        children.append(
            tolaria_spec(
                config.tolaria,
                tolaria,
                shutdown_deadline_s=max(deadline_s, 30.0),
                max_restarts=config.weatherlight.restart_max,
                window_s=config.weatherlight.restart_window_s,
                max_without_progress=config.weatherlight.restart_max_without_progress,
            )
        )
    children += [
        state_reporter(
            actors.snapshot,
            sink,
            interval_s=config.logging.state_interval_s,
            clock=clock,
            shutdown_deadline_s=deadline_s,
        ),
    ]
    return build_root(children, config.weatherlight)
