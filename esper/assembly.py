"""What ``esper.assemble`` hands the composition root: the run's parts and the session resource closing their store."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, final

import anyio

if TYPE_CHECKING:
    from actors.tolaria.actor import TolariaWiring
    from actors.tolaria.cell import TolariaCell
    from actors.urza.store import UrzaStore
    from esper.run_tally import RunTally
    from esper.runtime.child_spec import ChildSpec
    from esper.wiring import Routes


@final
class StoreCloser:
    """Closes Urza's store after the tree has stopped (a session resource)."""

    def __init__(self, store: UrzaStore) -> None:
        self._store = store

    async def aclose(self) -> None:
        await anyio.to_thread.run_sync(self._store.close)


@final
@dataclass(frozen=True, slots=True)
class Assembly:
    """A run's parts, ready for the tree: the subsystem specs in start order and Tolaria's wiring."""

    subsystems: tuple[ChildSpec, ...]
    tolaria: TolariaWiring
    cell: TolariaCell
    tally: RunTally
    routes: Routes
    store: UrzaStore
    host_parameters: int
    initial_seed_parameters: int  # in every packet's and the training figures' seed parameters; not grown
