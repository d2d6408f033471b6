"""What the seed lifecycle is tuned by: stage dwell, gate settings, embargo, gate patience from the evidence cadence."""

from __future__ import annotations

import msgspec

from actors.kasmina.gates import GateSettings
from schemas.base import Record
from schemas.enums import SeedLifecycleStage as Stage

__all__ = ["EvidenceCadence", "LifecycleSettings", "StageDwell"]


class StageDwell(Record, frozen=True):
    """Minimum steps a seed stays in each stage before its exit is considered (EMBARGOED also waits for its epoch)."""

    dormant: int = 1
    germinated: int = 1
    training: int = 20
    blending: int = 1
    shadowing: int = 5
    probationary: int = 20
    culled: int = 1
    embargoed: int = 1
    resetting: int = 1

    def __post_init__(self) -> None:
        for name in self.__struct_fields__:
            if getattr(self, name) < 0:
                raise ValueError(f"StageDwell.{name} must be >= 0 steps, got {getattr(self, name)}")

    def steps(self, stage: Stage) -> int:
        """The dwell of ``stage`` in steps; 0 for stages nothing leaves by a gate (UNKNOWN, FOSSILIZED, TERMINATED)."""
        name = stage.name.lower()
        return int(getattr(self, name)) if name in self.__struct_fields__ else 0


class EvidenceCadence(Record, frozen=True):
    """When the trainer's evidence can reach the gates, in optimizer steps (from Tolaria's config and the data).

    Attributes:
        packet_every_steps: steps between two boundaries (state packets): ``tolaria.state_every_steps``, or an epoch's
            steps when packets come at epoch ends only. G2's window counts packets.
        lag_steps: ``tolaria.command_lag_steps``: an op planned at a boundary takes effect this many steps later
            (the attach G1 waits for, the blend ramp G3 waits for).
        epoch_steps: optimizer steps per epoch; G4's evidence (the counterfactual validation) comes at epoch ends
            only. 0: unknown, no wait is added for it.
        validation_batches: the batches one epoch end's validation gives each judged seed.
    """

    packet_every_steps: int = 1
    lag_steps: int = 0
    epoch_steps: int = 0
    validation_batches: int = 16

    def __post_init__(self) -> None:
        for name in ("packet_every_steps", "validation_batches"):
            if getattr(self, name) < 1:
                raise ValueError(f"EvidenceCadence.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("lag_steps", "epoch_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"EvidenceCadence.{name} must be >= 0, got {getattr(self, name)}")


class LifecycleSettings(Record, frozen=True):
    """Everything the lifecycle is tuned by.

    Attributes:
        embargo_epochs: a culled slot is embargoed until the cull's epoch plus this many epochs.
        gate_patience_steps: an exit gate of GERMINATED..SHADOWING still PENDING this many steps after the dwell and
            the time its evidence takes to arrive (``evidence_wait_steps``) fails with ``timeout:<why>``. Probation is
            open-ended, so a fossilize request's G4 never times out.
        cadence: when evidence arrives; a gate is never timed out before its evidence could have come.
    """

    dwell: StageDwell = msgspec.field(default_factory=StageDwell)
    gates: GateSettings = msgspec.field(default_factory=GateSettings)
    embargo_epochs: int = 2
    gate_patience_steps: int = 500
    cadence: EvidenceCadence = msgspec.field(default_factory=EvidenceCadence)

    def __post_init__(self) -> None:
        if self.embargo_epochs < 0:
            raise ValueError(f"LifecycleSettings.embargo_epochs must be >= 0, got {self.embargo_epochs}")
        if self.gate_patience_steps < 0:
            raise ValueError(f"LifecycleSettings.gate_patience_steps must be >= 0, got {self.gate_patience_steps}")

    def least_steps_to_g4(self, *, ramp_steps: int) -> int:
        """The least steps from the boundary that decides a germination until G4 may first judge the seed in
        SHADOWING, epoch ends aside: the attach's lag and G1's next boundary, TRAINING's dwell or G2's window of
        packets (the longer), the stage change's lag and the blend ramp (``ramp_steps``), SHADOWING's dwell (each stage
        at least its dwell). G4 then also waits for its validation, which comes at epoch ends only
        (``least_g4_epoch_ends``). A lower bound: a boundary that falls between packets comes later still.
        """
        cadence, gates, dwell = self.cadence, self.gates, self.dwell
        return (
            max(dwell.germinated, cadence.lag_steps + cadence.packet_every_steps)
            + max(dwell.training, gates.stability_window_steps * cadence.packet_every_steps)
            + max(dwell.blending, cadence.lag_steps + ramp_steps)
            + dwell.shadowing
        )

    def least_g4_epoch_ends(self) -> int:
        """The least epoch ends whose validation G4 needs before it may pass a seed (its minimum of batches, at the
        cadence's batches per epoch end)."""
        return -(-self.gates.min_validation_batches // self.cadence.validation_batches)

    def evidence_wait_steps(self, stage: Stage, *, ramp_steps: int = 0) -> int:
        """Steps after the dwell that the exit gate of ``stage`` needs before its evidence can all have arrived.

        G1: the attach takes effect ``lag`` steps after the boundary that planned it, and its receipt counts at the
        next boundary. G2: a full window of packets. G3: the set_stage op's lag, then the seed's blend ramp
        (``ramp_steps``) until alpha is 1, seen at the next boundary. G4: the epoch ends whose validation fills its
        window (a passing seed needs fewer). Other stages: 0.
        """
        cadence, gates = self.cadence, self.gates
        if stage is Stage.GERMINATED:
            return cadence.lag_steps + cadence.packet_every_steps
        if stage is Stage.TRAINING:
            return gates.stability_window_steps * cadence.packet_every_steps
        if stage is Stage.BLENDING:
            return cadence.lag_steps + ramp_steps + cadence.packet_every_steps
        if stage is Stage.SHADOWING:
            epochs = -(-gates.validation_window_batches // cadence.validation_batches)
            return epochs * cadence.epoch_steps
        return 0
