"""What the ActorSystem hands down its supervision tree: clock, sink, dead letters and the registries by path."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, final

if TYPE_CHECKING:
    from esper.runtime.actor import Actor
    from esper.runtime.clock import Clock
    from esper.runtime.events import EventSink
    from esper.runtime.mailbox import Mailbox
    from esper.runtime.ref import ActorRef, DeadLetters


@final
@dataclass(slots=True)
class Runtime:
    """What the ActorSystem hands down its tree: the clock, the event sink, dead letters and the ref registry.

    Mailboxes and refs are kept here by path, so a ref stays valid across restarts of the actor or of any
    supervisor above it.
    """

    clock: Clock
    sink: EventSink
    dead_letters: DeadLetters
    mailboxes: dict[str, Mailbox[Any]] = field(default_factory=dict)
    refs: dict[str, ActorRef[Any]] = field(default_factory=dict)
    actor_types: dict[str, type[Actor[Any]]] = field(default_factory=dict)
    # Restarts by path, kept across a supervisor's own restart (which builds its children anew): the counts say how
    # often each actor was restarted in the run, not since its parent last gave up.
    restarts: dict[str, int] = field(default_factory=dict)
    # Messages handled and failed by path, as of the last incarnation that ended: the next one counts on from there,
    # so a restarted actor's figures are the run's (a crashed one showed failed 0 and half its messages).
    handled: dict[str, tuple[int, int]] = field(default_factory=dict)
