"""How long a seed germinated now needs before it can be kept: the growth cutoff near a run's end (``too_late``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec

from schemas.base import Record

if TYPE_CHECKING:
    from schemas.state import SystemStatePacket


class GrowthHorizon(Record, frozen=True):
    """The least time a seed needs, from its germination's decision, before it can be kept, from the settings that
    govern its lifecycle. The composition root computes it (Tamiyo imports no other actor); the default knows no
    lifecycle and counts epochs only.

    A seed germinated at the end of epoch e (step ``D``, epochs of ``steps_per_epoch`` steps; or mid-epoch, at its
    packet's step ``D``, whose epoch's end is then the first after ``D``) reaches SHADOWING and
    its dwell ``lead_steps`` later at the earliest; G4 passes it, at the earliest, at the first epoch end from then on
    that is also ``g4_epoch_ends`` epoch ends after ``D`` (its validation comes at epoch ends); that is its verdict
    step V. The heuristic asks to fossilize it after ``probation_epochs`` more epoch ends (and the PROBATIONARY
    dwell), and the fossilization takes effect ``lag_steps`` later. Every wait is the least the settings allow, so a
    seed that could be kept is never refused; one this lets through may still not make it.

    Attributes:
        lead_steps: least steps from the decision until G4 may first judge the seed, epoch ends aside (the command
            lag and G1, TRAINING's dwell or G2's window, the blend ramp after its lag, SHADOWING's dwell).
        g4_epoch_ends: least epoch ends, counted after the decision's, whose validation G4 needs.
        probation_dwell_steps: least steps in PROBATIONARY before a fossilization.
        lag_steps: tolaria.command_lag_steps: a command takes effect this many steps after its decision.
        steps_per_epoch: optimizer steps per epoch; 0: unknown, and only epochs are counted (steps count nothing).
    """

    lead_steps: int = 0
    g4_epoch_ends: int = 1
    probation_dwell_steps: int = 0
    lag_steps: int = 0
    steps_per_epoch: int = 0

    def __post_init__(self) -> None:
        for name in ("lead_steps", "probation_dwell_steps", "lag_steps", "steps_per_epoch"):
            if getattr(self, name) < 0:
                raise ValueError(f"GrowthHorizon.{name} must be >= 0, got {getattr(self, name)}")
        if self.g4_epoch_ends < 1:
            raise ValueError(f"GrowthHorizon.g4_epoch_ends must be >= 1, got {self.g4_epoch_ends}")

    def fossilized_by(self, packet: SystemStatePacket, *, probation_epochs: int) -> bool:
        """Whether a seed germinated on this packet could be fossilized, taking effect by the run's last
        step, after ``probation_epochs`` epochs of probation (the heuristic's cutoff)."""
        return self.kept_step(packet, probation_epochs=probation_epochs) <= self._last_step(packet)

    def judged_by(self, packet: SystemStatePacket) -> bool:
        """Whether a seed germinated on this packet could pass G4 into probation, taking effect by the run's
        last step (every_k's cutoff: it never asks to fossilize, so that is as far as its seeds go)."""
        return self.verdict_step(packet) + self._steps(self.lag_steps) <= self._last_step(packet)

    def verdict_step(self, packet: SystemStatePacket) -> int:
        """The earliest step (an epoch end) at which G4 may pass a seed germinated on this packet; with the epoch
        length unknown, in epochs."""
        epoch_steps = self._epoch_steps()
        end = (packet.epoch + 1) * epoch_steps  # the packet's epoch end, whatever the packet's own step says
        if packet.epoch_progress >= 1.0:
            decided, ends_before = end, packet.epoch + 1
        else:
            # A mid-epoch packet (the GNN decides on every one): the waits start at its step, and the end of its own
            # epoch is the first whose validation can count. Taken as the epoch end, a seed that could be kept would
            # be refused.
            decided, ends_before = min(max(packet.global_step, packet.epoch * epoch_steps), end), packet.epoch
        ready = decided + self._steps(self.lead_steps)
        return max(-(-ready // epoch_steps), ends_before + self.g4_epoch_ends) * epoch_steps

    def kept_step(self, packet: SystemStatePacket, *, probation_epochs: int) -> int:
        """The earliest step at which a seed germinated on this packet is fossilized in the model: the
        request after ``probation_epochs`` epoch ends in probation (and its dwell), plus the command lag."""
        verdict, epoch_steps = self.verdict_step(packet), self._epoch_steps()
        request = max(verdict + probation_epochs * epoch_steps, verdict + self._steps(self.probation_dwell_steps))
        return request + self._steps(self.lag_steps)

    def _epoch_steps(self) -> int:
        return self.steps_per_epoch or 1  # unknown: an epoch counts as one step

    def _steps(self, steps: int) -> int:
        return steps if self.steps_per_epoch else 0

    def _last_step(self, packet: SystemStatePacket) -> int:
        return packet.epochs_total * self._epoch_steps()


class GrowthCutoff(Record, frozen=True):
    """The growth horizon a run's controller holds every germination to, whichever policy proposed it: the risk
    engine vetoes one decided on a packet past it (``too_late``), so a policy that does not check it itself (the GNN)
    grows nothing that could not be kept either.

    Attributes:
        horizon: the lifecycle's waits (GrowthHorizon).
        probation_epochs: kept means fossilized after this many probation epochs (the heuristic's cutoff, and the
            GNN's, which may ask to fossilize); None: passing G4 into probation is as far as the policy takes a seed
            (every_k, which never asks to fossilize).
    """

    horizon: GrowthHorizon = msgspec.field(default_factory=GrowthHorizon)
    probation_epochs: int | None = None

    def too_late(self, packet: SystemStatePacket) -> bool:
        """Whether a seed germinated on ``packet`` could not be kept before the run's last step."""
        if self.probation_epochs is None:
            return not self.horizon.judged_by(packet)
        return not self.horizon.fossilized_by(packet, probation_epochs=self.probation_epochs)
