"""A pending gate times out only after its evidence could have arrived.

The command lag, a window of packets, the blend ramp, the epoch ends whose validation G4 judges; plus
``kasmina.gate_patience_steps``."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
import torch

from actors.kasmina.evidence import (
    AttachmentEvidence,
    BlueprintFacts,
    GerminationRequest,
    StepEvidence,
    ValidationEvidence,
)
from actors.kasmina.lifecycle import SeedLifecycle
from actors.kasmina.lifecycle_settings import EvidenceCadence, LifecycleSettings
from actors.kasmina.spec import lifecycle_settings
from esper.assemble_inputs import evidence_cadence
from esper.nn.data import DataSplits, TensorPair
from schemas.config import KasminaConfig, TolariaConfig
from schemas.enums import BreakerState
from schemas.enums import SeedLifecycleStage as Stage

if TYPE_CHECKING:
    from actors.kasmina.lifecycle_table import CullRecord

SLOT = "a"
SEED = "s1"
# The shipped config.toml's lifecycle keys.
SHIPPED = KasminaConfig(stage_min_dwell_steps=20, g2_window_steps=8, blend_ramp_steps=20)


def attachment() -> AttachmentEvidence:
    return AttachmentEvidence(
        seed_id=SEED,
        artifact_verified=True,
        fallback=False,
        interface_matches=True,
        probe_seed_grad_norm=1.0,
        probe_host_grad_max_abs=0.0,
        isolation_breaker=BreakerState.CLOSED,
        params_in_optimizer=True,
    )


class Trainer:
    """Plays Tolaria and the planner for one seed: a boundary every ``every`` steps and at each epoch end, an attach
    that takes effect ``lag`` steps after the boundary that planned it, alpha ramping over ``ramp`` steps once the
    set_stage(BLENDING) takes effect, and 16 validation batches at each epoch end (the seed helps by 0.5)."""

    def __init__(self, settings: LifecycleSettings, *, every: int, epoch_steps: int, lag: int, ramp: int) -> None:
        self.lifecycle = SeedLifecycle([SLOT], settings, step=-1, epoch=0)
        self.every, self.epoch_steps, self.lag, self.ramp = every, epoch_steps, lag, ramp
        self.germinated_at: int | None = None
        self.blend_at: int | None = None
        self.culls: list[CullRecord] = []
        self.reached: dict[Stage, int] = {}

    def boundaries(self, total_steps: int) -> list[int]:
        """Steps whose packet is a boundary: every ``every`` steps (none when 0) and each epoch's last step."""
        steps = {s for s in range(0, total_steps, self.every)} if self.every else set()
        steps |= {e - 1 for e in range(self.epoch_steps, total_steps + 1, self.epoch_steps)}
        return sorted(steps)

    def run(self, total_steps: int) -> None:
        blueprint = BlueprintFacts(blueprint_id="BP", known=True, stored=True)
        request = GerminationRequest(seed_id=SEED, blueprint=blueprint, blend_ramp_steps=self.ramp)
        assert self.lifecycle.germinate(SLOT, request, epoch=0).passed
        for step in self.boundaries(total_steps):
            epoch = step // self.epoch_steps
            stage = self.lifecycle.record(SLOT).stage
            # The attach planned at the GERMINATED boundary took effect lag steps later: its receipt counts now.
            if stage is Stage.GERMINATED and self.germinated_at is not None and step > self.germinated_at + self.lag:
                self.lifecycle.record_attachment(SLOT, attachment())
            alpha = 0.0
            if self.blend_at is not None:
                alpha = min(1.0, max(0.0, (step - self.blend_at - self.lag) / self.ramp))
            evidence = StepEvidence(seed_id=SEED, step=step, seed_grad_norm=0.5, seed_loss=1.0, alpha=alpha)
            self.lifecycle.record_step_evidence(SLOT, evidence)
            if (step + 1) % self.epoch_steps == 0:
                for _ in range(16):
                    batch = ValidationEvidence(seed_id=SEED, step=step, loss_without_seed=1.0, loss_with_seed=0.5)
                    self.lifecycle.record_validation(SLOT, batch)
            report = self.lifecycle.step_boundary(step, epoch)
            self.culls.extend(report.culls)
            for entry in report.transitions:
                self.reached.setdefault(entry.to_stage, step)
                if entry.to_stage is Stage.GERMINATED:
                    self.germinated_at = step
                if entry.to_stage is Stage.BLENDING:
                    self.blend_at = step


def settings_for(*, every: int, epoch_steps: int, lag: int = 2) -> LifecycleSettings:
    cadence = EvidenceCadence(
        packet_every_steps=min(every, epoch_steps) if every else epoch_steps, lag_steps=lag, epoch_steps=epoch_steps
    )
    return lifecycle_settings(SHIPPED, cadence)


def test_a_seed_that_helps_is_not_culled_before_the_first_validation_of_a_long_epoch() -> None:
    """Epochs of 640 steps (100 000 samples, batch 128): G4 waited 500 steps past its dwell for validation that comes
    at the epoch end only, and culled every seed with timeout:insufficient_validation."""
    trainer = Trainer(settings_for(every=4, epoch_steps=640), every=4, epoch_steps=640, lag=2, ramp=20)
    trainer.run(3 * 640)
    assert trainer.culls == []
    assert trainer.lifecycle.record(SLOT).stage is Stage.PROBATIONARY
    assert trainer.reached[Stage.PROBATIONARY] == 639, "passed G4 on the first epoch end's validation"


def test_a_command_lag_longer_than_the_patience_does_not_time_out_the_attach() -> None:
    trainer = Trainer(settings_for(every=4, epoch_steps=2000, lag=800), every=4, epoch_steps=2000, lag=800, ramp=20)
    trainer.run(1200)
    assert trainer.culls == []
    assert trainer.reached[Stage.TRAINING] == 804


def test_packets_at_epoch_ends_only_fill_the_stability_window_before_it_times_out() -> None:
    """state_every_steps = 0 with epochs of 100 steps: the 8-packet window of G2 takes 800 steps to fill."""
    trainer = Trainer(settings_for(every=0, epoch_steps=100), every=0, epoch_steps=100, lag=2, ramp=20)
    trainer.run(1500)
    assert trainer.culls == []
    assert Stage.BLENDING in trainer.reached


def test_a_blend_ramp_longer_than_the_patience_does_not_time_out_g3() -> None:
    trainer = Trainer(settings_for(every=4, epoch_steps=5000), every=4, epoch_steps=5000, lag=2, ramp=1000)
    trainer.run(2000)
    assert trainer.culls == []
    assert Stage.SHADOWING in trainer.reached


def test_a_gate_whose_evidence_never_comes_still_times_out_after_its_wait_and_the_patience() -> None:
    settings = lifecycle_settings(
        KasminaConfig(gate_patience_steps=30), EvidenceCadence(packet_every_steps=5, lag_steps=40)
    )
    assert settings.evidence_wait_steps(Stage.GERMINATED) == 45
    lifecycle = SeedLifecycle([SLOT], settings, step=-1, epoch=0)
    request = GerminationRequest(seed_id=SEED, blueprint=BlueprintFacts(blueprint_id="BP", known=True, stored=True))
    assert lifecycle.germinate(SLOT, request, epoch=0).passed
    lifecycle.step_boundary(0, 0)
    culled = {step: lifecycle.step_boundary(step, 0).culls for step in range(5, 100, 5)}
    # GERMINATED's dwell (1) + the attach's wait (45) + the patience (30): the boundary at step 80 is the first past it.
    assert [step for step, culls in culled.items() if culls] == [80]
    assert culled[80][0].reason == "G1_GRADIENT_HEALTH:timeout:awaiting_attachment"


@pytest.mark.parametrize("patience", [0, 1234])
def test_kasmina_gate_patience_steps_sets_the_patience(patience: int) -> None:
    assert lifecycle_settings(KasminaConfig(gate_patience_steps=patience)).gate_patience_steps == patience


def splits(train: int, val: int) -> DataSplits:
    def pair(n: int) -> TensorPair:
        return TensorPair(torch.zeros(n, 3), torch.zeros(n, dtype=torch.int64))

    return DataSplits(train=pair(train), val=pair(val), test=pair(4), num_classes=2, input_shape=(3,), name="npz")


def test_the_run_tells_kasmina_when_evidence_arrives() -> None:
    tolaria = TolariaConfig(batch_size=128, state_every_steps=4)
    assert evidence_cadence(tolaria, splits(128 * 640, 1000)) == EvidenceCadence(
        packet_every_steps=4, epoch_steps=640, validation_batches=16
    )
    # Packets at epoch ends only; a validation split too small for 16 batches gives one batch per sample.
    quiet = TolariaConfig(batch_size=128, state_every_steps=0)
    assert evidence_cadence(quiet, splits(128 * 100, 10)) == EvidenceCadence(
        packet_every_steps=100, epoch_steps=100, validation_batches=10
    )
    # A cadence longer than the epoch still sends a packet at each epoch end.
    sparse = TolariaConfig(batch_size=128, state_every_steps=1000)
    assert evidence_cadence(sparse, splits(128 * 100, 1000)).packet_every_steps == 100
