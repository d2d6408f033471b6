"""Static checks of the public generic API: mypy evaluates the assert_type lines; pytest runs them too."""

from __future__ import annotations

from typing import assert_type, final

from esper.runtime.actor import Actor
from esper.runtime.child_spec import ChildSpec
from esper.runtime.clock import ManualClock
from esper.runtime.events import RecordingSink
from esper.runtime.mailbox import Mailbox
from esper.runtime.ref import ActorRef
from esper.runtime.system import ActorSystem
from schemas.base import Message
from schemas.runtime import ChildFailed, MailboxStatistics


class Ping(Message, frozen=True):
    n: int


class Pong(Message, frozen=True):
    n: int


@final
class Echo(Actor[Ping]):
    def __init__(self) -> None:
        super().__init__(inbox=(Ping,), capacity=4)

    async def handle(self, msg: Ping) -> Pong:
        return Pong(n=msg.n)


async def test_refs_and_asks_are_typed_by_the_actor_and_the_reply() -> None:
    system = ActorSystem(clock=ManualClock(), sink=RecordingSink())
    await system.start(ChildSpec("echo", Echo))
    ref = system.ref("echo", Echo)
    assert_type(ref, ActorRef[Ping])
    reply = await ref.ask(Ping(n=3), Pong)
    assert_type(reply, Pong)
    assert reply == Pong(n=3)
    await system.stop()


def test_mailbox_and_sink_types() -> None:
    mailbox: Mailbox[Ping] = Mailbox(2, (Ping,))
    assert_type(mailbox.statistics(), MailboxStatistics)
    sink = RecordingSink()
    sink.emit(ChildFailed(supervisor="s", child="c", error_type="E", error="x"))
    assert_type(sink.of_type(ChildFailed), list[ChildFailed])
    assert len(sink.of_type(ChildFailed)) == 1
