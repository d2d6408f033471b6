"""The Tezzeret child spec the composition root calls: every dependency is an argument, nothing is looked up."""

from __future__ import annotations

from typing import TYPE_CHECKING

from actors.tezzeret.actor import StartPass, Tezzeret
from actors.tezzeret.compile import CompileSettings, warm_compiled
from esper.nn.blueprints import build_blueprint
from esper.runtime.child_spec import ChildSpec, RestartType

if TYPE_CHECKING:
    from collections.abc import Sequence

    from actors.tezzeret.compile import ArtifactSink, BlueprintBuilder, Warmer
    from esper.nn.blueprints import Catalogue, SlotShape
    from esper.runtime.clock import Clock
    from esper.runtime.events import EventSink
    from esper.runtime.lanes import Lane
    from schemas.config import TezzeretConfig

TEZZERET = "tezzeret"


def tezzeret_spec(
    *,
    catalogue: Catalogue,
    slots: Sequence[SlotShape],
    artifacts: ArtifactSink,
    io_lane: Lane,
    clock: Clock,
    sink: EventSink,
    config: TezzeretConfig,
    seed: int = 0,
    build: BlueprintBuilder = build_blueprint,
    warm: Warmer = warm_compiled,
    name: str = TEZZERET,
    mailbox_capacity: int = 64,
    restart: RestartType = "permanent",
    shutdown_deadline_s: float = 5.0,
) -> ChildSpec:
    """The ``tezzeret`` child: compiles ``catalogue`` for ``slots`` in the background at start (when
    ``config.compile_at_start``) and on CompileRequest, into ``artifacts`` (``UrzaArtifactSink(store)``).

    ``seed`` is the build seed of every compiled module (artifacts are content-addressed, so a fixed seed makes a
    repeated pass store nothing new). The torch.compile warm-up runs only when ``io_lane`` is on CUDA and
    ``config.torch_compile`` is set. A restart re-queues the start-up pass (idempotent), unless the incarnation
    before ended during it (a crash): then the pass is not run again (StartPass).
    """
    settings = CompileSettings.from_config(config, device=io_lane.device, seed=seed)
    frozen_slots = tuple(slots)
    start_pass = StartPass()
    return ChildSpec(
        name,
        lambda: Tezzeret(
            catalogue=catalogue,
            slots=frozen_slots,
            artifacts=artifacts,
            lane=io_lane,
            clock=clock,
            sink=sink,
            settings=settings,
            compile_at_start=config.compile_at_start,
            build=build,
            warm=warm,
            capacity=mailbox_capacity,
            start_pass=start_pass,
        ),
        restart=restart,
        shutdown_deadline_s=shutdown_deadline_s,
    )
