"""The Urza child spec the composition root calls: every dependency is an argument, nothing is looked up."""

from __future__ import annotations

from typing import TYPE_CHECKING

from actors.urza.actor import Urza
from esper.runtime.child_spec import ChildSpec, RestartType

if TYPE_CHECKING:
    from actors.urza.actor import UrzaReply
    from actors.urza.store import UrzaStore
    from esper.nn.blueprints import Catalogue
    from esper.runtime.clock import Clock
    from esper.runtime.events import EventSink
    from esper.runtime.lanes import Lane
    from esper.runtime.ref import ActorRef
    from schemas.config import UrzaConfig

URZA = "urza"


def urza_spec(
    *,
    store: UrzaStore,
    catalogue: Catalogue,
    io_lane: Lane,
    clock: Clock,
    sink: EventSink,
    config: UrzaConfig,
    reply_to: ActorRef[UrzaReply] | None = None,
    enforce_budget: bool = True,
    name: str = URZA,
    mailbox_capacity: int = 1024,
    restart: RestartType = "permanent",
    shutdown_deadline_s: float = 5.0,
) -> ChildSpec:
    """The ``urza`` child: answers KernelRequest / KernelPrefetchRequest from ``store`` (opened by the caller, who
    also closes it after the tree stops). Each incarnation starts with an empty ready cache of
    ``config.ready_cache_modules`` modules on ``io_lane``'s device; hand-overs are timed against
    ``config.fetch_budget_ms``."""
    return ChildSpec(
        name,
        lambda: Urza(
            store=store,
            catalogue=catalogue,
            lane=io_lane,
            clock=clock,
            sink=sink,
            config=config,
            reply_to=reply_to,
            enforce_budget=enforce_budget,
            capacity=mailbox_capacity,
        ),
        restart=restart,
        shutdown_deadline_s=shutdown_deadline_s,
    )
