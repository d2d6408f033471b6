"""Fast snapshots keep one structural copy per live seed module (SeedTemplates), reused from capture to capture.

The copies are never attached by a restore, so one snapshot restores any number of times to the captured weights."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
import torch
from torch import nn

from actors.tolaria.boundary import BoundaryApplier, replay
from actors.tolaria.build import build_trainee, load_data
from actors.tolaria.snapshots import SeedTemplates, capture, load_into
from schemas.boundary import SeedOp
from schemas.config import TolariaConfig
from tests.test_tolaria_protocol import TINY, seed_module

if TYPE_CHECKING:
    from actors.tolaria.build import Trainee
    from actors.tolaria.snapshots import TrainState
    from esper.nn.data import DataSplits


@pytest.fixture(scope="module")
def data() -> DataSplits:
    return load_data(TolariaConfig(**TINY))  # type: ignore[arg-type]


def test_a_template_is_made_once_per_module_and_dropped_with_its_seed() -> None:
    templates = SeedTemplates()
    a, b = nn.Linear(3, 3), nn.Linear(3, 3)
    first = templates.for_seeds({"a": a, "b": b})
    again = templates.for_seeds({"a": a, "b": b})
    assert templates.made == 2
    assert again["a"] is first["a"]
    assert again["b"] is first["b"]
    copied = first["a"]
    assert isinstance(copied, nn.Linear)
    assert copied is not a
    assert torch.equal(copied.weight, a.weight)
    # The same seed id with another module (a rollback attached a copy) gets a copy of its own.
    replaced = nn.Linear(3, 3)
    assert templates.for_seeds({"a": replaced})["a"] is not first["a"]
    assert templates.made == 3
    # "b" was forgotten when it left; coming back, it is copied anew.
    assert templates.for_seeds({"b": b})["b"] is not first["b"]
    assert templates.made == 4


def _grown(data: DataSplits) -> tuple[Trainee, BoundaryApplier]:
    trainee = build_trainee(TolariaConfig(**TINY), data, (), torch.device("cpu"))  # type: ignore[arg-type]
    applier = BoundaryApplier(trainee)
    module = seed_module()
    outcome = applier.apply(SeedOp(kind="attach", slot="blocks.0", seed_id="a"), step=1, take_module=lambda _: module)
    assert outcome.applied
    return trainee, applier


def _train_a_step(trainee: Trainee, data: DataSplits) -> None:
    trainee.optimizer.zero_grad()
    out = trainee.model(data.train.x[:50])
    loss = torch.nn.functional.cross_entropy(out, data.train.y[:50])
    loss.backward()  # type: ignore[no-untyped-call]  # torch leaves it unannotated
    trainee.optimizer.step()


def _capture(trainee: Trainee, applier: BoundaryApplier, templates: SeedTemplates, step: int) -> TrainState:
    return capture(
        trainee,
        global_step=step,
        epoch=0,
        batch_index=step,
        graft_log=applier.log,
        counters={},
        keep_modules=True,
        templates=templates,
    )


def test_captures_share_one_template_and_a_snapshot_restores_twice_to_its_weights(data: DataSplits) -> None:
    trainee, applier = _grown(data)
    templates = SeedTemplates()
    _train_a_step(trainee, data)
    earlier = _capture(trainee, applier, templates, 2)
    _train_a_step(trainee, data)
    state = _capture(trainee, applier, templates, 3)
    live = trainee.slots["blocks.0"].seed_module
    assert templates.made == 1
    assert state.seed_modules["a"] is earlier.seed_modules["a"] is not live
    template = {k: v.clone() for k, v in state.seed_modules["a"].state_dict().items()}
    expected = {k: v.clone() for k, v in trainee.model.state_dict().items() if isinstance(v, torch.Tensor)}
    for _ in range(2):
        fresh = build_trainee(TolariaConfig(**TINY), data, (), torch.device("cpu"))  # type: ignore[arg-type]
        replay(BoundaryApplier(fresh), state.graft_log, state.seed_modules)
        load_into(fresh, state)
        attached = fresh.slots["blocks.0"].seed_module
        assert attached is not None
        assert attached is not state.seed_modules["a"]
        restored = fresh.model.state_dict()
        assert all(torch.equal(restored[k], v) for k, v in expected.items())
        _train_a_step(fresh, data)  # training the restored model leaves the template untouched
    assert all(torch.equal(v, template[k]) for k, v in state.seed_modules["a"].state_dict().items())
