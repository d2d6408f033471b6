"""Counterfactual seed validation (actors.tolaria.validation) runs the model as training does.

Under the run's autocast, on channels_last images for a channels_last model."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from actors.tolaria.boundary import BoundaryApplier, rebuild_seed
from actors.tolaria.build import Trainee, build_trainee, load_data
from actors.tolaria.validation import seed_validation
from esper.nn.data import DataSplits, TensorPair
from schemas.boundary import SeedOp
from schemas.config import TolariaConfig
from schemas.enums import SeedLifecycleStage

CPU = torch.device("cpu")
IMAGE = (2, 4, 5)


def images(split: TensorPair) -> TensorPair:
    return TensorPair(x=split.x.reshape(split.num_samples, *IMAGE), y=split.y)


@pytest.fixture(scope="module")
def data() -> DataSplits:
    """MNIST-1D's samples as 2-channel 4 x 5 images."""
    flat = load_data(TolariaConfig(dataset_samples=300, host_model="tests.tolaria_factories:image_net"))
    return dataclasses.replace(
        flat, train=images(flat.train), val=images(flat.val), test=images(flat.test), input_shape=IMAGE
    )


def trainee_with_a_blending_seed(data: DataSplits, precision: str) -> Trainee:
    config = TolariaConfig(host_model="tests.tolaria_factories:image_net", precision=precision)  # type: ignore[arg-type]
    trainee = build_trainee(config, data, (), CPU)
    op = SeedOp(kind="attach", slot="body.1", seed_id="s", stage=SeedLifecycleStage.BLENDING, blueprint_id="BP005")
    shape = trainee.slot_shapes["body.1"]
    assert BoundaryApplier(trainee).apply(op, step=0, take_module=lambda op: rebuild_seed(op, {}, shape)).applied
    return trainee


@pytest.mark.parametrize(("precision", "autocast"), [("bf16", True), ("fp32", False)])
def test_seed_validation_runs_the_model_under_the_runs_autocast_on_channels_last_input(
    data: DataSplits, precision: str, *, autocast: bool
) -> None:
    """Training and evaluate() ran bf16 autocast and channels_last input; the seed's judgement ran neither, so G4
    compared losses of another precision than the one the seed trained in."""
    trainee = trainee_with_a_blending_seed(data, precision)
    assert trainee.channels_last
    seen: list[tuple[bool, bool]] = []

    def record(_module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        x = args[0]
        seen.append((torch.is_autocast_enabled("cpu"), x.is_contiguous(memory_format=torch.channels_last)))

    trainee.model.register_forward_pre_hook(record)
    report = seed_validation(trainee, data.val, run_id="t", step=0)
    assert report is not None
    (judged,) = report.seeds
    assert len(judged.loss_with_seed) == len(judged.loss_without_seed) > 0
    assert len(seen) == 2 * len(judged.loss_with_seed)
    assert set(seen) == {(autocast, True)}
