"""Karn's catalogue view: contract records, standings from Urza's store, tiers, approvals, and deterministic picks."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

import msgspec
import pytest

from actors.karn.catalogue import KarnCatalogue, TierPolicy, read_standings, to_schema
from actors.urza.store import UrzaStore
from esper.nn.blueprints import SLOT_KINDS, default_catalogue
from schemas.config import KarnConfig
from schemas.domain_enums import BlueprintTier
from schemas.kernels import BlueprintDescriptor

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

PERMISSIVE = TierPolicy(allow_high_risk=True, approvals=frozenset(default_catalogue().ids))


@pytest.fixture
def store(tmp_path: Path) -> Iterator[UrzaStore]:
    with UrzaStore(tmp_path / "urza") as opened:
        yield opened


def test_every_default_descriptor_translates_to_a_valid_contract_record() -> None:
    for nn_descriptor in default_catalogue():
        record = to_schema(nn_descriptor)
        decoded = msgspec.json.decode(msgspec.json.encode(record), type=BlueprintDescriptor)  # decode validates
        assert decoded == record
        assert record.tier.name == nn_descriptor.tier
        assert record.cost_tier.value == nn_descriptor.cost_tier
        assert [s.kind for s in record.slot_signatures] == list(nn_descriptor.slot_kinds)
        for name, bounds in nn_descriptor.allowed_parameters.items():
            mirrored = record.allowed_parameters[name]
            assert (mirrored.min_value, mirrored.max_value, mirrored.default, mirrored.integer) == (
                bounds.min_value,
                bounds.max_value,
                bounds.default,
                bounds.integer,
            )


def test_a_quarantined_blueprint_is_never_offered(store: UrzaStore) -> None:
    catalogue = default_catalogue()
    store.set_blueprint_status("BP002", "quarantined", "regressions in the field")
    store.set_blueprint_status("BP005", "failed", "not zero at birth")
    store.set_blueprint_status("BP001", "ok")
    standings = read_standings(store, catalogue.ids)
    assert standings == {
        "BP002": ("quarantined", "regressions in the field"),
        "BP005": ("failed", "not zero at birth"),
    }
    karn = KarnCatalogue.from_catalogue(catalogue, standings=standings)
    assert karn.entry("BP002").standing == "quarantined"
    for kind in SLOT_KINDS:
        offered = {d.blueprint_id for d in karn.offered(kind, PERMISSIVE)}
        assert offered.isdisjoint({"BP002", "BP005", "BP011"}), kind  # BP011 is quarantine_only
        picks = [karn.select(kind, PERMISSIVE, f"context-{i}") for i in range(200)]
        assert {p.blueprint_id for p in picks if p is not None}.isdisjoint({"BP002", "BP005", "BP011"})
    assert "BP002" in {d.blueprint_id for d in karn.descriptors()}  # still listed, just never offered
    cleared = karn.with_standings({})
    assert "BP002" in {d.blueprint_id for d in cleared.offered("flat", PERMISSIVE)}


def test_tiers_and_approvals_decide_what_is_offered() -> None:
    karn = KarnCatalogue.from_catalogue(default_catalogue())
    default = TierPolicy.from_config(KarnConfig())
    tiers = {d.tier for d in karn.offered("conv2d", default)}
    assert BlueprintTier.HIGH_RISK not in tiers
    assert BlueprintTier.EXPERIMENTAL in tiers

    risky = TierPolicy.from_config(KarnConfig(allow_high_risk=True))
    assert "BP009" not in {d.blueprint_id for d in karn.offered("conv2d", risky)}  # approval_required, none given
    approved = TierPolicy.from_config(KarnConfig(allow_high_risk=True), approvals=("BP009",))
    assert "BP009" in {d.blueprint_id for d in karn.offered("conv2d", approved)}
    assert "BP010" not in {d.blueprint_id for d in karn.offered("flat", approved)}

    conservative = TierPolicy.from_config(KarnConfig(allow_high_risk=True), conservative=True, approvals=("BP009",))
    assert {d.tier for d in karn.offered("conv2d", conservative)} == {BlueprintTier.SAFE}


def test_the_pick_is_sha256_of_the_context_modulo_the_candidates() -> None:
    karn = KarnCatalogue.from_catalogue(default_catalogue())
    policy = TierPolicy()
    candidates = karn.offered("sequence", policy)
    for context in ("run-1/step-40/slot-a", "run-1/step-41/slot-a", b"\x00\x01"):
        data = context.encode() if isinstance(context, str) else context
        index = int.from_bytes(hashlib.sha256(data).digest(), "big") % len(candidates)
        assert karn.select("sequence", policy, context) == candidates[index]
        assert karn.select("sequence", policy, context) == karn.select("sequence", policy, context)
    nothing = KarnCatalogue.from_catalogue(default_catalogue(), include=("BP008",))
    assert nothing.select("flat", policy, "anything") is None  # no candidate: no pick, never a fallback


def test_include_and_exclude_filter_and_refuse_unknown_ids() -> None:
    config = KarnConfig(include=("BP001", "BP002", "BP003"), exclude=("BP003",))
    karn = KarnCatalogue.from_config(default_catalogue(), config)
    assert karn.ids == ("BP001", "BP002")
    with pytest.raises(ValueError, match=r"unknown blueprints \['BP404'\]"):
        KarnCatalogue.from_config(default_catalogue(), KarnConfig(exclude=("BP404",)))


def test_no_high_risk_blueprint_can_be_offered_without_an_approval_which_the_run_never_records() -> None:
    """Why karn.allow_high_risk is refused as inert (schemas.config_inert.INERT_KEYS): with it on, a run offers no
    HIGH_RISK blueprint still, for each requires an approval and the run records none (assemble gives no approvals)."""
    karn = KarnCatalogue.from_catalogue(default_catalogue())
    risky = TierPolicy.from_config(KarnConfig(allow_high_risk=True))
    high = [e.descriptor for e in karn if e.descriptor.tier is BlueprintTier.HIGH_RISK]
    assert [d.blueprint_id for d in high] == ["BP009", "BP010", "BP011"]
    assert all(d.approval_required for d in high)
    offered = {d.blueprint_id for kind in ("flat", "conv1d", "conv2d", "sequence") for d in karn.offered(kind, risky)}
    assert offered.isdisjoint(d.blueprint_id for d in high)
