"""The narrow interfaces the run's handle (esper.session) holds its parts through: the trainer, the lanes."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from schemas.run import TrainingFigures


class TrainingWatch(Protocol):
    """What the session needs of the trainer: its figures once training has ended (Tolaria's TolariaCell)."""

    @property
    def figures(self) -> TrainingFigures | None: ...

    @property
    def ended(self) -> bool:
        """Training is over for good (completed, halted, or stopped on request)."""
        ...

    async def wait_finished(self) -> TrainingFigures: ...


class Closable(Protocol):
    """Something the session closes after the actors have stopped (the lanes)."""

    async def aclose(self) -> None: ...


class Abandonable(Protocol):
    """A resource that can be let go of without awaiting, when the event loop is going away (the lanes)."""

    def close(self) -> None: ...
