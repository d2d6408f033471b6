"""Urza's intake for compiled blueprints: encode a validated module as an artifact, store it, record failures.

``UrzaArtifactSink`` is what the composition root hands Tezzeret as its artifact sink (Tezzeret's ``ArtifactSink``
Protocol, satisfied structurally: actors never import each other). Everything here blocks (encoding, hashing, fsync,
SQLite): call it on the ``io`` lane.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, final

import structlog

from actors.urza.artifact import ValidationFigures, encode_artifact, make_metadata
from actors.urza.builders import signature_key, slot_signature

if TYPE_CHECKING:
    from collections.abc import Mapping

    from torch import nn

    from actors.urza.artifact import ArtifactMetadata
    from actors.urza.store import UrzaStore
    from esper.nn.blueprints import BlueprintDescriptor, ProbeReport, SlotShape

__all__ = ["UrzaArtifactSink"]

_log = structlog.get_logger("actors.urza")


@final
class UrzaArtifactSink:
    """Stores compiled blueprint modules as artifacts in an UrzaStore and keeps the blueprints' standing.

    Thread-safe as the store is; blocking throughout (a lane).
    """

    def __init__(self, store: UrzaStore) -> None:
        self._store = store

    def publish(
        self,
        module: nn.Module,
        *,
        descriptor: BlueprintDescriptor,
        slot: SlotShape,
        params: Mapping[str, float],
        report: ProbeReport,
        guard_digest: str,
    ) -> str:
        """Encode ``module``'s state dict with its metadata, store it, and return the artifact id (its SHA-256).

        Idempotent: when a ready artifact with the same weights, params, slot, guard and torch version is already
        stored, its id is returned and nothing is written (only the validation timings would differ).

        Raises:
            ArtifactFormatError (a ValueError): the state dict cannot be encoded (e.g. tied weights) or the metadata
                is invalid; nothing is stored.
            ValueError: the slot's dtype has no contract form.
            OSError, sqlite3.Error: the store could not write.
        """
        forward_ms = report.forward_ms if math.isfinite(report.forward_ms) else 0.0
        metadata, payload = make_metadata(
            module.state_dict(),
            blueprint_id=descriptor.blueprint_id,
            family=descriptor.family,
            params=dict(params),
            signature=slot_signature(slot),
            signature_key=signature_key(slot),
            param_count=sum(p.numel() for p in module.parameters()),
            guard_digest=guard_digest,
            validation=ValidationFigures(
                forward_ms=max(0.0, forward_ms),
                output_shape=report.output_shape,
                output_finite=report.output_finite,
                grads_finite=report.grads_finite,
            ),
        )
        # The validation timings differ from pass to pass, so equal weights would get a new address every start-up;
        # an artifact equal in everything but those timings is the same artifact, and is not stored again, unless its
        # blob has gone bad on disk (quarantined now): then this copy replaces it, so a start-up pass heals the store.
        with self._store.publishing():  # another process's publish of the same artifact waits for this one
            for entry in reversed(self._store.entries(descriptor.blueprint_id)):
                if entry.status == "ready" and _same_artifact(entry.metadata, metadata):
                    problem = self._store.verify(entry.sha256)
                    if problem is None:
                        return entry.sha256
                    blueprint = descriptor.blueprint_id
                    _log.warning(
                        "urza_artifact_replaced", blueprint_id=blueprint, artifact=entry.sha256, reason=problem
                    )
                    break
            return self._store.put(encode_artifact(metadata, payload)).sha256

    def mark_failed(self, blueprint_id: str, reason: str) -> None:
        """Mark a blueprint failed in the catalogue: none of its artifacts is served until it is cleared."""
        self._store.set_blueprint_status(blueprint_id, "failed", reason)

    def clear_failed(self, blueprint_id: str) -> None:
        """Return a blueprint marked failed to ``ok`` (it has just compiled cleanly); a quarantine is left alone."""
        status = self._store.blueprint_status(blueprint_id)
        if status is not None and status.state == "failed":
            self._store.set_blueprint_status(blueprint_id, "ok", "")


def _same_artifact(stored: ArtifactMetadata, new: ArtifactMetadata) -> bool:
    return (
        stored.signature_key == new.signature_key
        and stored.weights_sha256 == new.weights_sha256
        and stored.guard_digest == new.guard_digest
        and stored.family == new.family
        and stored.torch_version == new.torch_version
        and stored.params == new.params
        and stored.signature == new.signature
    )
