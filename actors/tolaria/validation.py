"""Counterfactual seed validation at an epoch end: the validation loss per batch with each judged seed and without it.

Kasmina's G4 gate and Tamiyo's contribution figures read this evidence: a seed's benefit on a batch is the loss with
its slot on the identity path minus the loss with the seed (positive when the seed helps). Lane thread only; eval
mode and no_grad, so neither the weights, the BatchNorm statistics nor any RNG change, and the step-boundary timing
stays deterministic.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from actors.tolaria.epoch_end import autocast, model_input
from esper.nn.slots import SlotMode
from schemas.kasmina import SeedValidation, SeedValidationReport

if TYPE_CHECKING:
    from actors.tolaria.build import Trainee
    from esper.nn.data import TensorPair

VALIDATION_BATCHES = 16
"""How many batches the validation split is cut into: each is one sample of a seed's contribution."""

_JUDGED = (SlotMode.BLENDING, SlotMode.FULL)


def validation_batch_size(samples: int, batches: int = VALIDATION_BATCHES) -> int:
    """The batch size that cuts ``samples`` into at most ``batches`` batches (the last may be short)."""
    return max(1, -(-samples // max(1, batches)))


def validation_batch_count(samples: int, batches: int = VALIDATION_BATCHES) -> int:
    """How many batches ``seed_validation`` gives each judged seed from a split of ``samples`` (at least 1)."""
    return max(1, -(-samples // validation_batch_size(samples, batches)))


def seed_validation(
    trainee: Trainee, split: TensorPair, *, run_id: str, step: int, batches: int = VALIDATION_BATCHES
) -> SeedValidationReport | None:
    """Per-batch validation losses of every blending or full seed, with it and with its slot on the identity path.

    Returns None when no seed is being judged or the split is empty. Blocking: the train lane, between steps.
    """
    judged = [(name, slot) for name, slot in trainee.slots.items() if slot.seed_id is not None and slot.mode in _JUDGED]
    n = split.num_samples
    if not judged or n == 0:
        return None
    size = validation_batch_size(n, batches)
    model = trainee.model
    with_seed: list[torch.Tensor] = []
    without: dict[str, list[torch.Tensor]] = {name: [] for name, _ in judged}
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, n, size):
                # As the step and evaluate() run the model (its autocast and memory format): a seed is judged on the
                # numbers it trains on.
                x = model_input(trainee, split.x[start : start + size])
                y = split.y[start : start + size].to(trainee.device)
                with autocast(trainee):
                    with_seed.append(F.cross_entropy(model(x).float(), y))
                    for name, slot in judged:
                        mode = slot.mode
                        slot.mode = SlotMode.DORMANT  # the identity path for this forward only; restored below
                        try:
                            without[name].append(F.cross_entropy(model(x).float(), y))
                        finally:
                            slot.mode = mode
    finally:
        model.train()
    # One device read for every figure.
    values = torch.stack([*with_seed, *(t for name, _ in judged for t in without[name])]).tolist()
    count = len(with_seed)
    losses_with = tuple(values[:count])
    seeds = []
    for index, (_name, slot) in enumerate(judged):
        offset = count * (index + 1)
        assert slot.seed_id is not None
        seeds.append(
            SeedValidation(
                seed_id=slot.seed_id,
                loss_without_seed=tuple(values[offset : offset + count]),
                loss_with_seed=losses_with,
            )
        )
    return SeedValidationReport(run_id=run_id, step=step, seeds=tuple(seeds))
