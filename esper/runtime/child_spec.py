"""How a supervisor builds, restarts and stops one child: ChildSpec and its RestartType."""

from __future__ import annotations

from dataclasses import KW_ONLY, dataclass
from typing import TYPE_CHECKING, Literal, Never, final

if TYPE_CHECKING:
    from collections.abc import Callable

    from esper.runtime.actor import Actor
    from esper.runtime.supervisor import Supervisor

RestartType = Literal["permanent", "transient", "temporary"]
"""permanent: always restarted; transient: restarted only after a failure; temporary: never restarted."""


@final
@dataclass(frozen=True, slots=True)
class ChildSpec:
    """How a supervisor builds, restarts and stops one child.

    Attributes:
        name: unique among its siblings; no ``/`` (paths are ``parent/child``).
        factory: builds a fresh incarnation (an Actor or a nested Supervisor) at every (re)start.
        restart: see RestartType.
        shutdown_deadline_s: how long a stop may take before the child's task is cancelled (math.inf: no limit).
    """

    name: str
    factory: Callable[[], Actor[Never] | Supervisor]
    _: KW_ONLY
    restart: RestartType = "permanent"
    shutdown_deadline_s: float = 5.0

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name:
            raise ValueError(f"child name must be non-empty and contain no '/', got {self.name!r}")
        if self.restart not in ("permanent", "transient", "temporary"):
            raise ValueError(f"restart must be permanent, transient or temporary, got {self.restart!r}")
        if not self.shutdown_deadline_s > 0:
            raise ValueError(f"shutdown_deadline_s must be > 0, got {self.shutdown_deadline_s}")
