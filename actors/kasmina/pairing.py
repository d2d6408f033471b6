"""Pairing each state packet with its decision: what waits for its partner, and which packets the observer was shown.

The observer (the controller) sees each packet once, in step order, when every earlier packet has been planned, with
the seed states as the lifecycle knows them then; its decision on a packet a restore undid is dropped as stale.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final, final

import msgspec

from schemas.domain_enums import TelemetryLevel

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from actors.kasmina.planner import BoundaryPlanner
    from schemas.boundary import Decision
    from schemas.state import SeedState, SystemStatePacket


PENDING_FLOOR: Final = 1024
"""The least packets, or decisions, kept waiting for their partner, whatever the mailbox size."""


def pending_limit(lag_steps: int) -> int:
    """The most packets, or decisions, kept waiting for their partner under a command lag of ``lag_steps``.

    Tolaria waits at step s + lag for the plan of step s, so at most one packet per step of the lag (one per step, an
    epoch end's included) waits; the limit only catches a runaway. It was the mailbox capacity, so a small
    ``weatherlight.mailbox_capacity`` (1 or 2) crashed Kasmina on the packets the lag keeps in flight and changed the
    run's result.
    """
    return max(PENDING_FLOOR, 2 * (lag_steps + 2))


def mailbox_floor(lag_steps: int) -> int:
    """The least mailbox capacity Kasmina gets under a command lag of ``lag_steps``, whatever the configured one.

    Tolaria's packets, receipts and validation reports reach Kasmina without waiting (a full mailbox loses them, and a
    lost receipt or packet changes the lifecycle); Tolaria runs at most ``lag_steps`` steps ahead of the oldest plan it
    waits for, sending at most a packet, a receipt and a validation report a step, plus a restore.
    """
    return 4 * (lag_steps + 2)


@final
class BoundaryInputs:
    """The packets and decisions waiting for their partner, by step (the actor fills and drains ``packets``,
    ``decisions`` and ``shown``), and the last packet shown to the observer. Runs on the Kasmina actor's loop."""

    def __init__(
        self,
        *,
        observer: Callable[[SystemStatePacket], Awaitable[None]] | None,
        capacity: int,
        event: Callable[[str, TelemetryLevel, str], None],
    ) -> None:
        """``capacity``: the most packets, or decisions, kept waiting (pending_limit, never the mailbox's);
        ``event`` reports a dropped input."""
        self._observer = observer
        self._forwarded: int | None = None
        self._max_pending = capacity
        self._event = event
        self.packets: dict[int, SystemStatePacket] = {}
        self.decisions: dict[int, Decision] = {}
        # The issued_at of each packet shown to the controller and not planned yet: its decision must name it.
        self.shown: dict[int, float] = {}

    async def forward(self, planner: BoundaryPlanner) -> None:
        """Show the observer the lowest pending packet, once, when every earlier packet has been planned."""
        if self._observer is None or not self.packets:
            return
        step = min(self.packets)
        if self._forwarded is not None and step <= self._forwarded:
            return
        self._forwarded = step
        packet = self.packets[step]
        self.shown[step] = packet.issued_at
        await self._observer(msgspec.structs.replace(packet, seed_states=self._merged(packet, planner)))

    def _merged(self, packet: SystemStatePacket, planner: BoundaryPlanner) -> tuple[SeedState, ...]:
        live = {s.slot: s for s in packet.seed_states}
        out: list[SeedState] = []
        for state in planner.seed_states():
            fresh = live.get(state.slot)
            if fresh is not None and fresh.seed_id is not None and fresh.seed_id == state.seed_id:
                state = msgspec.structs.replace(
                    state,
                    alpha=fresh.alpha,
                    alpha_steps=fresh.alpha_steps,
                    gradient_norm=fresh.gradient_norm,
                    learning_rate=fresh.learning_rate,
                    parameter_count=fresh.parameter_count or state.parameter_count,
                )
            out.append(state)
        return tuple(out)

    def keep_unplanned(self, cut: int | None, planned: int | None) -> None:
        """After a rebuild up to boundary ``cut`` whose last planned boundary is ``planned``: keep the packets and
        decisions of the boundaries in between, drop the later ones (the restored trainer sends those steps again).

        A rollback to an epoch end whose packet still waited for its decision cleared that packet, and the trainer,
        restored after it, never sends it again: its plan never came and the trainer stalled for its whole deadline
        (12 s), then failed the epoch. The controller has seen it already, so it is not shown again."""

        def unplanned(step: int) -> bool:
            return cut is not None and step <= cut and (planned is None or step > planned)

        self.packets = {step: packet for step, packet in self.packets.items() if unplanned(step)}
        self.shown = {step: at for step, at in self.shown.items() if unplanned(step)}
        self.decisions = {step: decision for step, decision in self.decisions.items() if unplanned(step)}
        shown = self._forwarded
        self._forwarded = planned
        if shown is not None and unplanned(shown):
            self._forwarded = shown

    def admit(
        self, step: int, pending: dict[int, SystemStatePacket] | dict[int, Decision], what: str, last: int | None
    ) -> bool:
        """Whether the ``what`` of ``step`` may wait in ``pending`` (its dict here), given the last boundary planned:
        a duplicate or a step already planned is dropped (an ERROR event).

        Raises:
            OverflowError: ``pending`` is full (the actor crashes).
        """
        if (last is not None and step <= last) or step in pending:
            why = "a duplicate" if step in pending else f"not after the last boundary {last}"
            self._event("boundary_input_dropped", TelemetryLevel.ERROR, f"{what} of step {step} dropped: {why}")
            return False
        if len(pending) >= self._max_pending:
            raise OverflowError(f"kasmina: {len(pending)} {what}s wait for their partner; refusing step {step}")
        return True

    def stale(self, decision: Decision) -> bool:
        """A decision on a packet this timeline has not shown the controller: one it made before a restore (a rollback
        after a failed epoch end) on a packet the restore undid. Paired with the rerun's packet of the same step, it
        applied the undone attempt's germination, and the controller's own decision on the rerun was refused as a
        duplicate (an ERROR). Dropped, said at INFO."""
        step = decision.decided_on_step
        shown, named = self.shown.get(step), decision.packet_issued_at
        # Decided on an earlier packet of this step, which a restore undid (the step's packet was shown again since).
        undone_packet = named is not None and shown is not None and named != shown
        seen = self._observer is None or (self._forwarded is not None and step <= self._forwarded)
        if seen and not undone_packet:
            return False
        self._event(
            "stale_decision_dropped",
            TelemetryLevel.INFO,
            f"decision of step {step} dropped: made on a packet a restore undid (the step is trained again)",
        )
        return True
