"""Tamiyo's journaling: field reports to the WAL, the state after an epoch end to the state journal, and the rewind."""

from __future__ import annotations

from typing import TYPE_CHECKING, final

import anyio
import msgspec
import structlog

from actors.tamiyo.state_journal import state_at
from schemas.domain_enums import TelemetryLevel

if TYPE_CHECKING:
    from actors.tamiyo.controller import Controller
    from actors.tamiyo.field_reports import FieldReportWal
    from actors.tamiyo.late_job import LateJob
    from actors.tamiyo.state import TamiyoState
    from actors.tamiyo.state_journal import TamiyoStateJournal
    from schemas.reports import FieldReport
    from schemas.state import SystemStatePacket

_log = structlog.get_logger("actors.tamiyo")


@final
class Journaling:
    """What the actor writes down and reads back: the field-report WAL, the state journal and the state it started
    from (a rewind to before the first journaled epoch end goes back to it)."""

    def __init__(
        self,
        controller: Controller,
        late: LateJob,
        wal: FieldReportWal | None,
        state_journal: TamiyoStateJournal | None,
    ) -> None:
        self._c = controller
        self._late = late
        self._wal = wal
        self._state_journal = state_journal
        self.start_state: TamiyoState | None = None

    async def journal(self, journal: TamiyoStateJournal, packet: SystemStatePacket, reports: list[FieldReport]) -> None:
        """An epoch end's field reports to the WAL, then the state after it to the state journal (unless a late job
        holds the policy's state)."""
        # Before the state journal: the state counts these reports, and a resume cuts the WAL to that count.
        await self.append(reports)
        if self._late.running:
            # The policy's state is the late job's until it ends: a resume or rewind to here goes back to the
            # journal's previous entry instead (tamiyo_state_behind), rather than waiting for the policy.
            _log.warning("tamiyo_state_not_journaled", step=packet.global_step, reason="policy_busy")
            return
        # A job that overran by a hair has returned by now: its state is the controller's again.
        self._late.collect()
        # Tolaria checkpoints right after an epoch-end packet: this is the state a resume from there needs.
        await journal.append(packet.global_step, self._c.export_state())

    async def rewind(self, packet: SystemStatePacket) -> int | None:
        """The trainer went back (a rollback or a restart of it) and the packet of ``step`` is the first after: the
        controller goes back to the newest state it journaled before that step (the restored epoch end's), so it
        decides the retrained epochs as a resume from there would (it decided the rerun's epoch end as already seen
        (not_epoch_end), its windows and plateau counted the undone attempt, and the rerun's windows started from the
        undone epoch's validation loss). The open windows (aborted next), field reports, report and rollback counts
        and counters of the undone decisions stay: they happened. Returns the step of the state it went back to (the
        trainer's restore point when that is a journaled epoch end, else an earlier step); None without a journal (no
        run directory), where there is nothing to go back to."""
        journal = self._state_journal
        if journal is None:
            return None
        await self._late.wait_out()
        entry = await anyio.to_thread.run_sync(state_at, journal.path, packet.global_step - 1)
        start = self.start_state
        if entry is not None and entry.state.policy == self._c.policy_name:
            state, at = entry.state, entry.step
        elif start is not None and (start.last_step is None or start.last_step < packet.global_step):
            state, at = start, start.last_step or 0  # back before the first epoch end journaled: as it started
        else:
            return None
        current = self._c.export_state()
        # The open windows (aborted next) and the report and rollback counts stay: they happened. The latest step and
        # validation loss are the restored epoch end's, as on a resume from there: the undone epoch's loss was where
        # the rerun's windows started.
        outcomes = msgspec.structs.replace(
            state.outcomes,
            windows=current.outcomes.windows,
            reports=current.outcomes.reports,
            rollbacks=current.outcomes.rollbacks,
        )
        self._c.import_state(msgspec.structs.replace(state, outcomes=outcomes, counters=current.counters))
        self._c.emit(
            "tamiyo_rewound",
            TelemetryLevel.INFO,
            f"controller state back to step {at}'s: the trainer went back before step {packet.global_step}",
            packet,
            state_step=at,
        )
        return at

    async def append(self, reports: list[FieldReport]) -> None:
        if not reports:
            return
        if self._wal is not None:
            await self._wal.append_many(reports)
        self._c.count(field_reports=len(reports))
