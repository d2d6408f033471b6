"""UrzaSeedSource: Kasmina's SeedSource protocol (structurally) over verified Urza artifacts, with no fallbacks."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
import torch

from actors.tezzeret.compile import compile_all
from actors.urza.artifact import ArtifactCorrupt, ArtifactNotFound, BlueprintUnavailable
from actors.urza.builders import signature_key
from actors.urza.publish import UrzaArtifactSink
from actors.urza.seed_source import UrzaSeedSource
from actors.urza.store import UrzaStore
from esper.nn.blueprints import SlotShape, default_catalogue

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from actors.kasmina.preparation import SeedSource

FLAT = SlotShape("flat", 5)
SEQ = SlotShape("sequence", 8)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[UrzaStore]:
    with UrzaStore(tmp_path / "urza") as opened:
        compile_all(default_catalogue(), (FLAT, SEQ), UrzaArtifactSink(opened))
        yield opened


def test_it_satisfies_kasminas_seed_source_protocol(store: UrzaStore) -> None:
    source: SeedSource = UrzaSeedSource(store)  # checked by mypy: the protocol is structural
    descriptor = source.describe("BP002")
    assert descriptor is not None
    assert descriptor.blueprint_id == "BP002"
    assert source.describe("BP404") is None
    module = source.fetch("BP002", FLAT, {"rank": 4.0}, 0).module
    assert module(torch.ones(2, 5)).shape == (2, 5)


def test_fetches_are_independent_copies_of_the_verified_weights(store: UrzaStore) -> None:
    source = UrzaSeedSource(store)
    first = source.fetch("BP007", SEQ, {"width": 1.0}, 1).module
    second = source.fetch("BP007", SEQ, {"width": 1.0}, 2).module
    pointers = {p.data_ptr() for p in first.parameters()}
    assert pointers.isdisjoint(p.data_ptr() for p in second.parameters())
    with torch.no_grad():
        for param in first.parameters():
            param.add_(1.0)  # training one seed ...
    third = source.fetch("BP007", SEQ, {"width": 1.0}, 3).module
    for (name, a), b in zip(second.state_dict().items(), third.state_dict().values(), strict=True):
        assert torch.equal(a, b), name  # ... never touches the verified copy
    stats = source.statistics()
    assert (stats.loads, stats.hits) == (1, 2)  # read and verified once, then served from memory


def test_a_missing_artifact_is_an_error_never_a_fallback(store: UrzaStore) -> None:
    source = UrzaSeedSource(store)
    with pytest.raises(ArtifactNotFound, match=r"'BP002' has no ready artifact for signature 'flat/6/float32'"):
        source.fetch("BP002", SlotShape("flat", 6), {"rank": 4}, 0)
    with pytest.raises(ArtifactNotFound, match=r"no ready artifact for slot 'flat/5/float32' with params \{'rank': 2"):
        source.fetch("BP002", FLAT, {"rank": 2}, 0)
    with pytest.raises(KeyError, match="BP404"):
        source.fetch("BP404", FLAT, {}, 0)
    with pytest.raises(ValueError, match="does not fit slot kind 'flat'"):
        source.fetch("BP008", FLAT, {}, 0)
    with pytest.raises(ValueError, match="outside"):
        source.fetch("BP002", FLAT, {"rank": 99}, 0)


def test_a_corrupt_artifact_is_quarantined_and_refused(store: UrzaStore) -> None:
    entry = store.resolve("BP001", signature_key(FLAT))
    blob = store.blob_path(entry.sha256)
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0xFF
    blob.write_bytes(bytes(data))
    source = UrzaSeedSource(store)
    with pytest.raises(ArtifactCorrupt, match="sha256 mismatch"):
        source.fetch("BP001", FLAT, {}, 0)
    with pytest.raises(ArtifactNotFound):
        source.fetch("BP001", FLAT, {}, 0)
    assert store.quarantine_path(entry.sha256).exists()


def test_failed_or_quarantined_blueprints_are_not_described_or_served(store: UrzaStore) -> None:
    source = UrzaSeedSource(store)
    assert source.describe("BP003") is not None
    store.set_blueprint_status("BP003", "quarantined", "regressions in the field")
    store.set_blueprint_status("BP001", "failed", "probe: not zero at birth")
    with pytest.raises(BlueprintUnavailable, match=r"quarantined.*regressions in the field"):
        source.fetch("BP003", FLAT, {"width": 0.5}, 0)
    assert source.describe("BP003") is None  # a failed fetch refreshes the standings
    assert source.describe("BP001") is None
    assert source.statistics().unavailable == ("BP001", "BP003")
    store.set_blueprint_status("BP003", "ok")
    source.refresh()
    assert source.describe("BP003") is not None
