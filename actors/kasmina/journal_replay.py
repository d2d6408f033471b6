"""Replaying the boundary journal into a fresh planner: its entries in order, each boundary's seeds prepared again."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, final

import anyio

from actors.kasmina.journal import JournalBoundary, JournalReceipt, JournalValidation, kept_by_cut
from actors.kasmina.journal_check import JournalTampered, JournalVerdicts
from actors.kasmina.seed_preparing import PREPARATION_ERRORS

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Collection

    from actors.kasmina.journal import BoundaryJournal
    from actors.kasmina.planner import BoundaryPlanner
    from actors.kasmina.preparation import PreparationRequest, PreparedSeed, Preparer
    from esper.runtime.signing import CommandVerifier
    from schemas.boundary import BoundaryPlan


@final
@dataclass(frozen=True, slots=True)
class HeldReplay:
    """A start's replay up to the step a resume restores: the journal's length then and the plans to send again;
    ``applied_at_cut``: the decisions taking effect at that step that it took for applied by a receipt there (the
    restore, if it still expects one of them, needs a replay without that receipt)."""

    step: int
    journal_length: int
    plans: tuple[BoundaryPlan, ...]
    applied_at_cut: frozenset[int] = frozenset()


@final
class JournalReplay:
    """Replays one run's BoundaryJournal into planners, verifying each journaled command again with the run's key."""

    def __init__(
        self,
        *,
        run_id: str,
        journal: BoundaryJournal,
        verifier: CommandVerifier,
        preparer: Preparer,
        prepare: Callable[[PreparationRequest], Awaitable[PreparedSeed]],
    ) -> None:
        """``prepare`` prepares a replayed seed (the actor's wait for an artifact included); ``preparer`` takes back the
        modules of the plans not kept."""
        self._run_id = run_id
        self._journal = journal
        self._verifier = verifier
        self._preparer = preparer
        self._prepare = prepare

    async def replay(
        self,
        planner: BoundaryPlanner,
        cut: int | None,
        *,
        preview: bool,
        seen: Callable[[BoundaryPlan], None] | None = None,
        unapplied: Collection[int] = (),
    ) -> tuple[int, list[BoundaryPlan], frozenset[int]]:
        """Feed ``planner`` the journal (with ``preview``, only the entries a cut at boundary ``cut`` keeps); returns
        how many entries were replayed, with a cut the replayed plans in flight there (their modules kept under their
        handles; every other replayed plan's are discarded) and the decisions taking effect at the cut taken for
        applied there by a receipt. ``seen`` is given every replayed plan, in order. ``unapplied``: the decisions the
        state restored at ``cut`` still expects (TrainingRestored.unapplied): in flight whatever the journal says.

        Raises:
            JournalTampered: a journaled command fails verification (see ``_replay_boundary``).
        """
        journal = self._journal
        # Replayed in the journal's order, which is the order the live planner met its inputs in (receipts and
        # reports as they arrived, each boundary when its decision came), a batch at a time from a worker thread.
        limit = cut if preview else None
        applied: set[int] = set()
        # Plans taking effect at or after the cut: in flight there unless applied at the cut itself (a stop that came
        # while the trainer waited at that boundary for this very plan), which only a later receipt tells; and even
        # then in flight if the restored state had not applied it (lag 0: an epoch end's capture comes before it).
        candidates: list[tuple[int, int, BoundaryPlan]] = []
        replayed = 0
        verdicts = JournalVerdicts(self._run_id, self._verifier.signature_valid, self._verifier.verdict_mac)
        batches = journal.batches()
        try:
            while (batch := await anyio.to_thread.run_sync(next, batches, None)) is not None:
                for entry in batch:
                    if limit is not None and not kept_by_cut(entry, limit, unapplied):
                        continue
                    replayed += 1
                    match entry:
                        case JournalReceipt():
                            planner.record_receipt(entry.receipt)
                            applied.add(entry.receipt.decided_on_step)
                        case JournalValidation():
                            planner.record_validation(entry.report)
                        case JournalBoundary():
                            plan = await self._replay_boundary(planner, entry, verdicts, keep=cut is not None)
                            if seen is not None:
                                seen(plan)
                            effect = plan.decided_on_step + planner.lag_steps
                            if cut is not None and effect >= cut:
                                candidates.append((plan.decided_on_step, effect, plan))
                            elif cut is not None:
                                self.discard_handles(plan)
        finally:
            batches.close()  # the file, if a failure (or a cancellation) ended the replay early
        in_flight: list[BoundaryPlan] = []
        applied_at_cut: set[int] = set()
        for decided, effect, plan in candidates:
            if (cut is not None and effect > cut) or decided not in applied or decided in unapplied:
                in_flight.append(plan)
            else:
                applied_at_cut.add(decided)
                self.discard_handles(plan)
        return replayed, in_flight, frozenset(applied_at_cut)

    async def _replay_boundary(
        self, planner: BoundaryPlanner, entry: JournalBoundary, verdicts: JournalVerdicts, *, keep: bool
    ) -> BoundaryPlan:
        """Plan a journaled boundary again, preparing its seeds again (their modules wait under the plan's handles
        until the caller keeps or discards them) unless the journal says their preparation failed.

        Raises:
            JournalTampered: the entry's command fails verification with the run's key, or its recorded verdict is
                not what verification gives or not what its MAC vouches for, or it was accepted at an earlier boundary
                of ``verdicts``' pass (a forged or altered line: replayed, it would act unsigned, or twice).
        """
        refusal = verdicts.refusal(entry)
        if refusal is not None:
            where = self._journal.path or "the lifecycle journal"
            raise JournalTampered(f"{where}: step {entry.packet.global_step}: {refusal}")
        draft = planner.begin(entry.packet, entry.command, entry.security)
        for request in draft.preparations:
            detail = entry.failed.get(request.seed_id)
            if detail is None:
                try:
                    prepared = await self._prepare(request)
                except PREPARATION_ERRORS as err:
                    detail = f"on replay: {type(err).__name__}: {err}"
                else:
                    planner.prepared(prepared)
                    if not keep:
                        self._preparer.discard(prepared.handle)
                    continue
            planner.preparation_failed(request.seed_id, detail)
        return planner.finish(draft)

    def discard_handles(self, plan: BoundaryPlan) -> None:
        for op in plan.ops:
            if op.handle is not None:
                self._preparer.discard(op.handle)
