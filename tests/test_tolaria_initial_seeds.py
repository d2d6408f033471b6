"""tolaria.initial_seeds: seeds attached before step 0, fossilized, counted as added parameters, kept by a resume."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
import torch

from actors.tolaria.boundary import BoundaryApplier
from actors.tolaria.build import build_trainee, load_data
from actors.tolaria.checkpoint_verify import load_latest
from actors.tolaria.host_model import TolariaConfigError
from actors.tolaria.loop import TrainingLoop
from actors.tolaria.loop_options import LoopOptions
from actors.tolaria.plans import PlanInbox
from actors.tolaria.snapshots import SnapshotStore
from esper.nn.blueprints import build_blueprint, default_catalogue
from esper.nn.optim_migration import GROUP_NAME_KEY
from esper.nn.slots import SlotMode
from schemas.boundary import SeedOp
from schemas.config import TolariaConfig
from schemas.enums import SeedLifecycleStage
from tests.test_tolaria_protocol import seed_module

if TYPE_CHECKING:
    from pathlib import Path

    from esper.nn.data import DataSplits, TensorPair
    from schemas.base import Message, Record
    from schemas.boundary import BoundaryApplied
    from schemas.state import SystemStatePacket

TINY = {"epochs": 3, "dataset_samples": 1000, "batch_size": 50, "state_every_steps": 4}
SEEDS = ("blocks.0=BP005", "blocks.2=BP001")


class Box:
    """An Outbox that keeps the packets (the loop runs on the test's thread)."""

    def __init__(self) -> None:
        self.packets: list[SystemStatePacket] = []

    def packet(self, packet: SystemStatePacket) -> None:
        self.packets.append(packet)

    def applied(self, receipt: BoundaryApplied) -> None:
        pass

    def event(self, event: Message | Record) -> None:
        pass


@pytest.fixture(scope="module")
def data() -> DataSplits:
    return load_data(TolariaConfig(**TINY))  # type: ignore[arg-type]


def config(**overrides: object) -> TolariaConfig:
    return TolariaConfig(**{**TINY, "initial_seeds": SEEDS, **overrides})  # type: ignore[arg-type]


def make_loop(cfg: TolariaConfig, data: DataSplits, directory: Path | None, *, resume: bool = False) -> TrainingLoop:
    return TrainingLoop(
        cfg,
        LoopOptions(run_id="t", checkpoint_dir=directory, resume=resume, resumed_run=resume, batch_hook=None),
        inbox=PlanInbox(),
        outbox=Box(),
        snapshots=SnapshotStore(int(cfg.snapshot_memory_cap_mb * 2**20)),
        data=data,
    )


def seed_size(blueprint_id: str, trainee_shape: object) -> int:
    descriptor = next(d for d in default_catalogue() if d.blueprint_id == blueprint_id)
    module = build_blueprint(descriptor, trainee_shape, {}, fill_defaults=True)  # type: ignore[arg-type]
    return sum(p.numel() for p in module.parameters())


def test_initial_seeds_are_fossilized_residual_and_in_the_host_group_before_step_0(data: DataSplits) -> None:
    trainee = build_trainee(config(), data, (), torch.device("cpu"))
    plain = build_trainee(config(initial_seeds=()), data, (), torch.device("cpu"))
    for name in ("blocks.0", "blocks.2"):
        slot = trainee.slots[name]
        assert slot.mode is SlotMode.FOSSILIZED
        assert slot.seed_id == f"initial-{name}"
    assert trainee.slots["blocks.1"].mode is SlotMode.DORMANT
    groups = trainee.optimizer.param_groups
    assert [g[GROUP_NAME_KEY] for g in groups] == ["host"]
    in_optimizer = {id(p) for p in groups[0]["params"]}
    assert all(id(p) in in_optimizer for p in trainee.model.parameters())
    # Zero at birth and residual: the grown model computes exactly the host's function at step 0.
    x = data.train.x[:8]
    trainee.model.eval()
    plain.model.eval()
    with torch.no_grad():
        assert torch.equal(trainee.model(x), plain.model(x))
    events = trainee.initial_grafts
    assert [(e.kind, e.slot, e.blueprint_id, e.stage, e.step) for e in events] == [
        ("attach", "blocks.0", "BP005", SeedLifecycleStage.FOSSILIZED, 0),
        ("attach", "blocks.2", "BP001", SeedLifecycleStage.FOSSILIZED, 0),
    ]


def test_initial_seeds_train_from_step_0_and_count_as_added_parameters(data: DataSplits) -> None:
    loop = make_loop(config(), data, None)
    trainee_before = build_trainee(config(), data, (), torch.device("cpu"))
    before = {n: p.detach().clone() for n, p in trainee_before.model.named_parameters() if ".seed." in n}
    result = loop.run()
    assert result.status == "completed"
    trainee = loop.trainee
    expected = seed_size("BP005", trainee.slot_shapes["blocks.0"]) + seed_size("BP001", trainee.slot_shapes["blocks.2"])
    assert result.figures.seed_parameters == expected > 0
    assert result.figures.fossilized_parameters == expected  # initial seeds are fossilized from step 0
    assert result.figures.host_parameters == trainee_before.host_parameters
    after = dict(trainee.model.named_parameters())
    assert before, "the seeds' parameters are in the model"
    assert any(not torch.equal(before[n], after[n].detach()) for n in before), "the seeds trained"


def test_a_resumed_run_rebuilds_its_initial_seeds_and_ends_bitwise_equal(data: DataSplits, tmp_path: Path) -> None:
    straight = make_loop(config(), data, tmp_path / "a")
    straight.run()
    inbox = PlanInbox()

    class StopAt:
        def __call__(self, attempt: int, batch: TensorPair) -> TensorPair:
            if attempt == 27:
                inbox.request_stop("test")
            return batch

    first = TrainingLoop(
        config(),
        LoopOptions(run_id="t", checkpoint_dir=tmp_path / "b", batch_hook=StopAt()),
        inbox=inbox,
        outbox=Box(),
        snapshots=SnapshotStore(int(config().snapshot_memory_cap_mb * 2**20)),
        data=data,
    )
    assert first.run().status == "stopped"
    found = load_latest(tmp_path / "b")
    assert found is not None
    logged = [(e.kind, e.seed_id) for e in found[0].graft_log]
    assert logged == [("attach", "initial-blocks.0"), ("attach", "initial-blocks.2")]
    resumed = make_loop(config(), data, tmp_path / "b", resume=True)
    result = resumed.run()
    assert result.status == "completed"
    assert result.figures.resumed_from_step == 28
    assert [e.seed_id for e in resumed._s.applier.log] == ["initial-blocks.0", "initial-blocks.2"]  # type: ignore[union-attr]
    a = straight.trainee.model.state_dict()
    b = resumed.trainee.model.state_dict()
    assert a.keys() == b.keys()
    for key, value in a.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, b[key]), f"{key} differs"


def test_an_initial_seed_in_no_slot_or_of_no_blueprint_is_a_config_error(data: DataSplits) -> None:
    with pytest.raises(TolariaConfigError, match=r"initial_seeds\[0\].*no slot after 'head'"):
        build_trainee(config(initial_seeds=("head=BP001",)), data, (), torch.device("cpu"))
    with pytest.raises(TolariaConfigError, match=r"initial_seeds\[0\].*BP999"):
        build_trainee(config(initial_seeds=("blocks.0=BP999",)), data, (), torch.device("cpu"))
    with pytest.raises(ValueError, match="names a slot twice"):
        config(initial_seeds=("blocks.0=BP001", "blocks.0=BP002"))


def test_fossilized_seed_parameters_leave_out_the_seeds_still_on_trial(data: DataSplits) -> None:
    """The summary's "parameters added" counted every seed in the model without saying how many were fossilized."""
    trainee = build_trainee(config(), data, (), torch.device("cpu"))
    initial = sum(trainee.seed_parameters().values())
    module = seed_module()
    op = SeedOp(kind="attach", slot="blocks.1", seed_id="s", stage=SeedLifecycleStage.BLENDING)
    assert BoundaryApplier(trainee).apply(op, step=0, take_module=lambda _: module).applied
    blending = sum(p.numel() for p in module.parameters())
    assert sum(trainee.seed_parameters().values()) == initial + blending
    assert trainee.fossilized_seed_parameters() == initial > 0
