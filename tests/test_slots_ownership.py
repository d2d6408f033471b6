"""Parameter registry: one owner per parameter, foreign parameters refused with a reason, cull and fossilize."""

from __future__ import annotations

import pytest
from torch import nn

from esper.nn import SlotMode, find_slots, wrap
from esper.nn.hosts import MLPHost
from esper.nn.ownership import HOST, ForeignParameterError, OwnershipError, ParameterRegistry
from esper.nn.wrap import slot_path


def _grown() -> tuple[nn.Module, nn.Linear, ParameterRegistry]:
    model = wrap(MLPHost(), "blocks.1")
    registry = ParameterRegistry()
    registry.register_host(model)
    seed = nn.Linear(64, 64)
    find_slots(model)["blocks.1"].attach(seed, SlotMode.TRAINING, seed_id="s1")
    prefix = slot_path("blocks.1") + ".seed."
    registry.register("s1", [(prefix + n, p) for n, p in seed.named_parameters()])
    return model, seed, registry


def test_every_parameter_has_one_owner_by_identity_and_name() -> None:
    model, seed, registry = _grown()
    registry.check_model(model)
    assert registry.owner_of(seed.weight) == "s1"
    assert registry.owner_of("blocks.1.esper_slot.seed.bias") == "s1"
    assert registry.owner_of(model.get_parameter("head.weight")) == HOST
    assert registry.name_of(seed.weight) == "blocks.1.esper_slot.seed.weight"
    assert registry.owners() == {HOST, "s1"}
    registry.assert_owned("s1", [seed.weight, "blocks.1.esper_slot.seed.bias"])


def test_a_change_touching_a_foreign_parameter_is_refused_naming_it() -> None:
    model, seed, registry = _grown()
    with pytest.raises(ForeignParameterError, match=r"^parameter 'head\.weight' is owned by 'host', not by seed 's1'$"):
        registry.assert_owned("s1", [seed.weight, model.get_parameter("head.weight")])
    with pytest.raises(ForeignParameterError, match="owned by 's1', not by seed 's2'"):
        registry.assert_owned("s2", [seed.bias])
    with pytest.raises(OwnershipError, match="not registered"):
        registry.assert_owned("s1", [nn.Linear(2, 2).weight])
    assert issubclass(ForeignParameterError, ValueError)


def test_a_second_owner_is_refused() -> None:
    _, seed, registry = _grown()
    with pytest.raises(OwnershipError, match="already owned by 's1'; cannot give it to 's2'"):
        registry.register("s2", [("other", seed.weight)])
    with pytest.raises(OwnershipError, match="already owned by 'host'"):
        registry.register("s2", [("head.weight", nn.Linear(2, 2).weight)])


def test_cull_releases_and_fossilize_transfers_to_host() -> None:
    model, seed, registry = _grown()
    registry.transfer_to_host("s1")
    assert registry.owner_of(seed.weight) == HOST
    registry.check_model(model)
    model2, _, registry2 = _grown()
    released = registry2.release("s1")
    assert [n for n, _ in released] == ["blocks.1.esper_slot.seed.weight", "blocks.1.esper_slot.seed.bias"]
    with pytest.raises(OwnershipError, match="has no owner"):
        registry2.check_model(model2)
    find_slots(model2)["blocks.1"].detach()
    registry2.check_model(model2)
    with pytest.raises(OwnershipError, match="owns no parameters"):
        registry2.release("s1")
    with pytest.raises(OwnershipError, match="host is not a seed"):
        registry2.transfer_to_host(HOST)
