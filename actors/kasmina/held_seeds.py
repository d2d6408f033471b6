"""The seeds a replay of Kasmina's journal under this version's lifecycle rules says the trainer held at a step."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, final

import anyio

from actors.kasmina.journal import BoundaryJournal
from actors.kasmina.journal_replay import JournalReplay
from actors.kasmina.seed_preparing import WaitingPreparer
from esper.runtime.events import NullSink
from esper.runtime.signing import CommandVerifier
from schemas.enums import SeedLifecycleStage as Stage

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from pathlib import Path

    from actors.kasmina.planner import BoundaryPlanner
    from actors.kasmina.preparation import Preparer
    from esper.runtime.clock import Clock
    from schemas.boundary import BoundaryPlan
    from schemas.domain_enums import TelemetryLevel

# The stages of a seed whose module is in its slot once its attach took effect (a culled seed's detach is written
# with its cull; a fossilized one stays, part of the host).
HELD_STAGES = frozenset(
    {Stage.GERMINATED, Stage.TRAINING, Stage.BLENDING, Stage.SHADOWING, Stage.PROBATIONARY, Stage.FOSSILIZED}
)


@final
@dataclass(frozen=True, slots=True)
class HeldSeed:
    """A seed the replayed lifecycle has in a slot, and its stage there."""

    slot: str
    seed_id: str
    stage: Stage


@final
@dataclass(frozen=True, slots=True)
class ReplayedHoldings:
    """What the replay up to ``step`` says the trainer held then.

    ``moving``: the slots an attach or detach was planned for at or after the last boundary replayed (the last packet at
    or before ``step``; ``step`` itself at an epoch end): the planner applies a receipt only at the first boundary after
    it, so what the trainer did with such an op (applied it, or refused its attach at an emergency level, after a
    mid-epoch checkpoint's last packet) the replay cannot tell, and those slots are not judged.
    """

    step: int
    seeds: tuple[HeldSeed, ...]
    moving: frozenset[str]


async def replay_holdings(
    make_planner: Callable[[NullSink], BoundaryPlanner],
    journal_path: Path,
    step: int,
    *,
    run_id: str,
    keys: Mapping[str, bytes],
    clock: Clock,
    preparer: Preparer,
    artifact_wait_s: float,
) -> ReplayedHoldings:
    """Replay the journal at ``journal_path`` up to the boundary of ``step`` into a fresh, muted planner, preparing
    each germinated seed again as Kasmina's own replay does (its probe is G1's evidence), and read which seeds the
    lifecycle then holds. Nothing is written; the modules stay in ``preparer``'s handoff store, for the caller to drop
    with it.

    Raises:
        JournalTampered: a journaled command fails verification with ``keys``.
        JournalCorrupt: a line of the journal does not decode.
    """
    planner = make_planner(NullSink())  # a check: Kasmina's own replay reports nothing either
    journal = BoundaryJournal(journal_path, fresh=False)
    await anyio.to_thread.run_sync(journal.load)

    def quiet(name: str, level: TelemetryLevel, description: str) -> None:
        del name, level, description  # a check: the replay's own waits are Kasmina's to report

    waiting = WaitingPreparer(preparer, clock=clock, wait_s=artifact_wait_s, event=quiet)
    replay = JournalReplay(
        run_id=run_id,
        journal=journal,
        verifier=CommandVerifier(keys, clock),
        preparer=preparer,
        prepare=waiting.prepare,
    )
    # The grafts planned at the boundaries replayed so far that take effect at or after the newest of them (earlier
    # ones' receipts are applied at it): replayed in step order, so the list stays as short as the command lag.
    grafts: list[BoundaryPlan] = []

    def keep_grafts(plan: BoundaryPlan) -> None:
        grafts[:] = [kept for kept in grafts if kept.effect_step >= plan.decided_on_step]
        if any(_moves(op.kind) for op in plan.ops):
            grafts.append(plan)

    await replay.replay(planner, step, preview=True, seen=keep_grafts)
    moving = frozenset(op.slot for plan in grafts for op in plan.ops if _moves(op.kind) and op.slot is not None)
    seeds = tuple(
        HeldSeed(state.slot, state.seed_id, state.stage)
        for state in planner.seed_states()
        if state.seed_id is not None and state.stage in HELD_STAGES
    )
    return ReplayedHoldings(step=step, seeds=seeds, moving=moving)


def _moves(kind: str) -> bool:
    """An op that puts a seed's module into its slot or takes it out."""
    return kind in ("attach", "detach")
