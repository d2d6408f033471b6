"""Kasmina's seed source for a run (UrzaFirstSource): Urza's verified artifact, else the catalogue's build.

Else the same blueprint built from the catalogue with a warning, whether no artifact is stored yet or the stored one
cannot be served (its blob went bad on disk, its weights do not fit the builder, it does not decode)."""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING

import pytest
import torch

from actors.tezzeret.compile import COMPILE_SEED, compile_all
from actors.urza.artifact import sha256_hex
from actors.urza.publish import UrzaArtifactSink
from actors.urza.records import LoadedArtifact
from actors.urza.seed_source import UrzaSeedSource
from actors.urza.store import UrzaStore
from esper.nn.blueprints import SlotShape, build_blueprint, default_catalogue
from esper.wiring import BUILT_FROM_CATALOGUE, UrzaFirstSource

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from torch import nn

    from schemas.telemetry import TelemetryEvent

SLOT = SlotShape("conv1d", 6)
BLUEPRINT = "BP005"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[UrzaStore]:
    with UrzaStore(tmp_path / "urza") as opened:
        yield opened


def _source(store: UrzaStore) -> tuple[UrzaFirstSource, list[TelemetryEvent]]:
    events: list[TelemetryEvent] = []
    return UrzaFirstSource(UrzaSeedSource(store, default_catalogue()), events.append), events


def _params() -> dict[str, float]:
    return dict(default_catalogue().get(BLUEPRINT).defaults())


def _parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_a_stored_artifact_is_served_without_a_warning_and_named_by_its_sha256(store: UrzaStore) -> None:
    compile_all(default_catalogue(), (SLOT,), UrzaArtifactSink(store))
    source, events = _source(store)
    fetched = source.fetch(BLUEPRINT, SLOT, _params(), seed=3)
    assert _parameter_count(fetched.module) > 0
    # The graft log and G1's evidence record which artifact the seed came from.
    assert fetched.artifact_sha256 == store.resolve(BLUEPRINT).sha256
    assert events == []
    assert source.built_from_catalogue == 0


def test_without_an_artifact_the_blueprint_is_built_from_the_catalogue(store: UrzaStore) -> None:
    source, events = _source(store)
    fetched = source.fetch(BLUEPRINT, SLOT, _params(), seed=3)
    assert _parameter_count(fetched.module) > 0
    assert fetched.artifact_sha256 is None, "a catalogue build names no artifact"
    assert [e.name for e in events] == [BUILT_FROM_CATALOGUE]
    assert "no compiled artifact yet" in events[0].description


def test_a_corrupt_or_missing_blob_is_quarantined_and_the_seed_still_built(store: UrzaStore) -> None:
    summary = compile_all(default_catalogue(), (SLOT,), UrzaArtifactSink(store))
    reference = UrzaSeedSource(store, default_catalogue()).fetch(BLUEPRINT, SLOT, _params(), seed=3).module
    entry = store.resolve(BLUEPRINT)
    assert entry.sha256 in summary.artifacts
    store.blob_path(entry.sha256).write_bytes(b"garbage")
    source, events = _source(store)
    fetched = source.fetch(BLUEPRINT, SLOT, _params(), seed=3)
    assert fetched.artifact_sha256 is None, "the damaged artifact is not named as the seed's source"
    module = fetched.module
    assert _parameter_count(module) == _parameter_count(reference)  # the same blueprint, never another
    # ...with the very weights the artifact held (Tezzeret's seed, not the seed's): a damaged store changes no run.
    built, stored = module.state_dict(), reference.state_dict()
    assert built.keys() == stored.keys()
    assert all(torch.equal(built[k], stored[k]) for k in built)
    assert [e.name for e in events] == [BUILT_FROM_CATALOGUE]
    assert "its artifact is unusable" in events[0].description
    quarantined = store.entry(entry.sha256)
    assert quarantined is not None
    assert quarantined.status == "quarantined"
    other = next(sha for sha in summary.artifacts if sha != entry.sha256 and store.entry(sha) is not None)
    other_entry = store.entry(other)
    assert other_entry is not None
    store.blob_path(other).unlink()
    source.fetch(other_entry.blueprint_id, SLOT, dict(default_catalogue().get(other_entry.blueprint_id).defaults()), 3)
    assert [e.name for e in events] == [BUILT_FROM_CATALOGUE, BUILT_FROM_CATALOGUE]


def test_a_read_error_builds_the_seed_from_the_catalogue(store: UrzaStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """One EIO reading the blob crashed Kasmina (and left a germinated seed that was never attached)."""
    compile_all(default_catalogue(), (SLOT,), UrzaArtifactSink(store))
    source, events = _source(store)

    def failing_load(artifact: str) -> object:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(store, "load", failing_load)
    module = source.fetch(BLUEPRINT, SLOT, _params(), seed=3).module
    assert _parameter_count(module) > 0
    assert [e.name for e in events] == [BUILT_FROM_CATALOGUE]
    assert "its artifact could not be read (OSError: [Errno 5] Input/output error)" in events[0].description


def test_a_blueprint_marked_unavailable_while_the_run_trains_is_still_described_and_built(store: UrzaStore) -> None:
    """Another run's failed compile on a shared store marked a blueprint failed: this run's next germination of it
    was culled (fetch_error), and a resume's replay of a germination made before the mark lost that seed."""
    compile_all(default_catalogue(), (SLOT,), UrzaArtifactSink(store))
    source, events = _source(store)
    for state in ("failed", "quarantined"):
        store.set_blueprint_status(BLUEPRINT, state, "compile took 2.0 s, over its 1.0 s")
        assert source.describe(BLUEPRINT) == default_catalogue().get(BLUEPRINT)
        module = source.fetch(BLUEPRINT, SLOT, _params(), seed=3).module
        assert _parameter_count(module) > 0
        assert events[-1].name == BUILT_FROM_CATALOGUE
        assert f"the store marks it unavailable (blueprint {BLUEPRINT!r} is {state}" in events[-1].description
    assert source.describe("BP404") is None


def test_weights_the_builder_does_not_take_build_the_seed_from_the_catalogue(
    store: UrzaStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An artifact whose weights are another blueprint's (a catalogue row pointing at another valid blob) raised
    ModuleMismatch out of the fetch: the seed was culled at G1 (fetch_error) though its blueprint was fine."""
    summary = compile_all(default_catalogue(), (SLOT,), UrzaArtifactSink(store))
    entry = store.resolve(BLUEPRINT)
    other = next(sha for sha in summary.artifacts if sha != entry.sha256)
    real_load = store.load
    monkeypatch.setattr(store, "load", lambda sha: LoadedArtifact(real_load(sha).entry, real_load(other).tensors))
    source, events = _source(store)
    fetched = source.fetch(BLUEPRINT, SLOT, _params(), seed=3)
    assert fetched.artifact_sha256 is None
    assert _parameter_count(fetched.module) == _parameter_count(
        build_blueprint(default_catalogue().get(BLUEPRINT), SLOT, _params(), seed=COMPILE_SEED)
    )
    assert [e.name for e in events] == [BUILT_FROM_CATALOGUE]
    assert "its artifact is unusable (ModuleMismatch: artifact" in events[0].description
    assert "builder does not take its weights" in events[0].description


def test_an_artifact_that_does_not_decode_builds_the_seed_from_the_catalogue(store: UrzaStore) -> None:
    """A blob that passes its SHA-256 but does not decode (marked failed then) raised ArtifactFormatError out of the
    fetch."""
    compile_all(default_catalogue(), (SLOT,), UrzaArtifactSink(store))
    entry = store.resolve(BLUEPRINT)
    bad = b"ESPRURZA" + bytes(8)  # format version 0: no Urza reads it
    with sqlite3.connect(store.catalog_path) as conn:
        swap = "UPDATE artifacts SET sha256 = ?, size_bytes = ? WHERE sha256 = ?"
        conn.execute(swap, (sha256_hex(bad), len(bad), entry.sha256))
    store.blob_path(sha256_hex(bad)).write_bytes(bad)
    source, events = _source(store)
    assert source.fetch(BLUEPRINT, SLOT, _params(), seed=3).artifact_sha256 is None
    assert [e.name for e in events] == [BUILT_FROM_CATALOGUE]
    assert "its artifact is unusable (ArtifactFormatError: artifact" in events[0].description
