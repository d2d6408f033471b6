"""A planned capture (CapturePlan) gives exactly what the walking capture gives, and is dropped when due.

The plan is dropped whenever the layout may have changed: a graft-log entry, a replaced tensor, new optimizer state, a
restore's new model."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from actors.tolaria.boundary import BoundaryApplier
from actors.tolaria.build import build_trainee, load_data
from actors.tolaria.capture_plan import CapturePlan, PlannedCapture
from actors.tolaria.capture_pool import CapturePool
from actors.tolaria.snapshots import TrainState, capture, reserve_capture
from schemas.boundary import SeedOp
from schemas.config import TolariaConfig
from tests.test_tolaria_protocol import seed_module

if TYPE_CHECKING:
    from actors.tolaria.boundary import GraftEvent
    from actors.tolaria.build import Trainee
    from esper.nn.data import DataSplits


@pytest.fixture(scope="module")
def data() -> DataSplits:
    return load_data(TolariaConfig(dataset_samples=400))


def _trainee(data: DataSplits, **overrides: object) -> Trainee:
    config = TolariaConfig(dataset_samples=400, **overrides)  # type: ignore[arg-type]
    return build_trainee(config, data, (), torch.device("cpu"))


def _step(trainee: Trainee, data: DataSplits) -> None:
    trainee.optimizer.zero_grad(set_to_none=True)
    loss = F.cross_entropy(trainee.model(data.train.x[:32]), data.train.y[:32])
    loss.backward()  # type: ignore[no-untyped-call]  # torch leaves it unannotated
    trainee.optimizer.step()


def _capture(trainee: Trainee, log: list[GraftEvent], pool: CapturePool, planned: PlannedCapture | None) -> TrainState:
    return capture(
        trainee,
        global_step=1,
        epoch=0,
        batch_index=1,
        graft_log=log,
        counters={},
        keep_modules=False,
        pool=pool,
        planned=planned,
    )


def _same(a: object, b: object) -> bool:
    """Equal trees, tensors compared bitwise (and by dtype and shape)."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (
            isinstance(a, torch.Tensor)
            and isinstance(b, torch.Tensor)
            and a.dtype == b.dtype
            and a.shape == b.shape
            and torch.equal(a, b)
        )
    if isinstance(a, dict) and isinstance(b, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


def _assert_planned_equals_walked(trainee: Trainee, log: list[GraftEvent], planned: PlannedCapture) -> None:
    planned_state = _capture(trainee, log, CapturePool(), planned)
    walked = _capture(trainee, log, CapturePool(), None)
    assert _same(planned_state.model, walked.model)
    assert _same(planned_state.optimizer, walked.optimizer)
    assert planned_state.nbytes == walked.nbytes


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_a_planned_capture_equals_a_walked_one_before_and_after_a_graft(data: DataSplits, optimizer: str) -> None:
    trainee = _trainee(data, optimizer=optimizer, momentum=0.9)
    applier = BoundaryApplier(trainee)
    planned = PlannedCapture()
    _step(trainee, data)
    _assert_planned_equals_walked(trainee, applier.log, planned)
    _step(trainee, data)
    _assert_planned_equals_walked(trainee, applier.log, planned)
    assert planned.built == 1  # the second capture reused the plan
    module = seed_module()
    op = SeedOp(kind="attach", slot="blocks.0", seed_id="a")
    assert applier.apply(op, step=2, take_module=lambda _: module).applied
    _step(trainee, data)
    _assert_planned_equals_walked(trainee, applier.log, planned)
    assert planned.built == 2  # the graft-log entry dropped the plan
    state = _capture(trainee, applier.log, CapturePool(), planned)
    assert any(key.startswith("blocks.0.") and "seed" in key for key in state.model)
    trainee.paused["blocks.0"] = "training"
    _assert_planned_equals_walked(trainee, applier.log, planned)


def test_the_plan_is_dropped_when_a_tensor_is_replaced_or_new_optimizer_state_appears(data: DataSplits) -> None:
    trainee = _trainee(data)
    log: list[GraftEvent] = []
    frozen = next(p for name, p in trainee.model.named_parameters() if name.startswith("head"))
    frozen.requires_grad_(False)  # no gradient, so no optimizer state yet
    _step(trainee, data)
    planned = PlannedCapture()
    plan = planned.plan(trainee, 0)
    assert plan is not None
    assert plan.fits(trainee, 0)
    assert not plan.fits(trainee, 1)  # a graft-log entry
    frozen.requires_grad_(True)
    _step(trainee, data)
    assert not plan.fits(trainee, 0)  # the head's parameter has optimizer state now
    _assert_planned_equals_walked(trainee, log, planned)
    plan = planned.plan(trainee, 0)
    assert plan is not None
    head = trainee.model.get_submodule("head")
    assert isinstance(head, nn.Linear)
    head.bias = nn.Parameter(head.bias.detach() + 1.0)  # a tensor replaced behind the plan's back
    assert not plan.fits(trainee, 0)
    _assert_planned_equals_walked(trainee, log, planned)
    plan = planned.plan(trainee, 0)
    assert plan is not None
    param = next(iter(trainee.optimizer.state))
    trainee.optimizer.state[param] = dict(trainee.optimizer.state[param])  # the same tensors in another dict
    assert not plan.fits(trainee, 0)
    other = _trainee(data)  # a restore builds a new model
    _step(other, data)
    assert not plan.fits(other, 0)


def test_a_model_with_a_state_dict_hook_is_captured_by_walking(data: DataSplits) -> None:
    trainee = _trainee(data)
    _step(trainee, data)
    trainee.model.register_state_dict_post_hook(  # type: ignore[no-untyped-call]  # torch leaves it bare
        lambda module, state, prefix, local: None
    )
    planned = PlannedCapture()
    assert CapturePlan.of(trainee, 0) is None
    _assert_planned_equals_walked(trainee, [], planned)
    assert planned.built == 0


def test_reserving_builds_the_plan_and_its_buffers_so_the_capture_allocates_nothing(data: DataSplits) -> None:
    trainee = _trainee(data)
    _step(trainee, data)
    pool, planned = CapturePool(), PlannedCapture()
    assert reserve_capture(trainee, pool, planned, 0) == 2
    states = [_capture(trainee, [], pool, planned) for _ in range(2)]
    assert (pool.allocated, pool.reused, planned.built) == (2, 2, 1)
    assert _same(states[0].model, states[1].model)
