"""Urza's artifact format: one self-describing blob of header, metadata JSON and safetensors weights; never a pickle.

Layout of an artifact blob (all integers little-endian)::

    offset 0   8 bytes   magic b"ESPRURZA"
    offset 8   u32       format version (1)
    offset 12  u32       N = length of the metadata JSON in bytes (at most 1 MiB)
    offset 16  N bytes   ArtifactMetadata as msgspec JSON (UTF-8)
    offset 16+N ...      safetensors payload: the module's state dict (parameters and persistent buffers)

Why one blob and not metadata in the catalogue row plus a weights blob: the blob's SHA-256 (its content address and
artifact id) then covers the metadata too, so a tampered or bit-rotted record (params, signature, builder family) is
caught by the same check that guards the weights, and a blob copied to another store carries everything needed to
rebuild its module. The catalogue keeps a copy of the metadata JSON for queries; the blob is authoritative.

Loading is safe by construction: the caller verifies the blob's SHA-256 before calling decode_artifact (Urza's store
does, on every load); decoding parses JSON with a typed msgspec decoder and tensors with safetensors, neither of which
can execute code; weights go into a module a known builder constructs from the metadata.

Urza's errors live here too, as one family every other Urza module imports (KernelErrorReason in brackets)::

    UrzaError(EsperError)      .reason, .subject (artifact SHA-256 or blueprint id), .to_kernel_error()
    ├── ArtifactFormatError    bytes or metadata are not a valid artifact (fetch_error; also ValueError)
    ├── ArtifactNotFound       no catalogue row for the artifact / no ready artifact for the blueprint (not_found)
    ├── BlueprintUnavailable   the blueprint is marked failed or quarantined (not_found)
    ├── BlobMissing            catalogue row present, blob file absent (fetch_error)
    ├── BlobUnreadable         the blob could not be read (fetch_error)
    ├── ArtifactCorrupt        size or SHA-256 mismatch found by this load; blob just quarantined (checksum_mismatch)
    ├── ArtifactQuarantined    the row was already quarantined (checksum_mismatch)
    ├── ArtifactFailed         the row was marked failed (fetch_error)
    ├── ModuleMismatch         the builder's module does not take the weights (guard_mismatch)
    └── FetchBudgetExceeded    hand-over slower than the budget, when the caller enforces it (latency_budget_exceeded)
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, final

import msgspec
import torch
from msgspec import Meta
from safetensors import SafetensorError
from safetensors.torch import load as safetensors_load
from safetensors.torch import save as safetensors_save

from esper.runtime.errors import EsperError, NotYetAvailable
from schemas.base import Record
from schemas.constraints import NonEmptyStr, NonNegFloat, NonNegInt, Sha256Hex
from schemas.domain_enums import KernelErrorReason
from schemas.kernels import KernelError, SlotSignature

if TYPE_CHECKING:
    from collections.abc import Mapping
    from pathlib import Path

MAGIC = b"ESPRURZA"
FORMAT_VERSION = 1
MAX_METADATA_BYTES = 1 << 20
_HEADER = struct.Struct("<8sII")
HEADER_BYTES = _HEADER.size

ParamValue = float | int


class UrzaError(EsperError):
    """Root of Urza's errors. Each names the artifact (or blueprint) and carries the KernelErrorReason to report.

    Attributes:
        reason: the KernelErrorReason a KernelError built from this error carries.
        subject: the artifact SHA-256 or blueprint id the error is about.
    """

    reason: KernelErrorReason = KernelErrorReason.FETCH_ERROR

    def __init__(self, subject: str, detail: str) -> None:
        super().__init__(detail)
        self.subject = subject
        self.detail = detail

    def to_kernel_error(self, *, request_id: str, blueprint_id: str, issued_at: float) -> KernelError:
        """The reply to a kernel request that failed with this error."""
        return KernelError(
            request_id=request_id,
            blueprint_id=blueprint_id,
            reason=self.reason,
            issued_at=issued_at,
            detail=self.detail,
        )


class ArtifactFormatError(UrzaError, ValueError):
    """Raised by encode_artifact/decode_artifact when bytes or metadata do not form a valid artifact (fetch_error).

    decode raises it only for a blob whose SHA-256 already matched, so it means a producer wrote a bad artifact or the
    format version is unknown, not bit rot.
    """


class ArtifactNotFound(UrzaError, NotYetAvailable):
    """Raised when the catalogue has no row for an artifact, or no ready artifact for a blueprint (not_found).

    Also NotYetAvailable: Tezzeret may still be compiling it, so a caller may wait a little and ask again.
    """

    reason = KernelErrorReason.NOT_FOUND


class BlueprintUnavailable(UrzaError):
    """Raised when a blueprint is marked failed or quarantined in the catalogue, so none of its artifacts is served."""

    reason = KernelErrorReason.NOT_FOUND


class BlobMissing(UrzaError):
    """Raised when an artifact's catalogue row exists but its blob file does not (fetch_error; the row is kept)."""

    reason = KernelErrorReason.FETCH_ERROR


class BlobUnreadable(UrzaError):
    """Raised when an artifact's blob exists but reading it failed with an OS error (fetch_error)."""

    reason = KernelErrorReason.FETCH_ERROR


class ArtifactCorrupt(UrzaError):
    """Raised by a load that found a blob whose size or SHA-256 does not match; the blob has just been quarantined.

    Attributes:
        blueprint_id: the blueprint the artifact belongs to.
        quarantine_path: where the bad blob now lies.
        why: the short cause (``truncated: 10 of 2048 bytes``, ``sha256 mismatch``).
    """

    reason = KernelErrorReason.CHECKSUM_MISMATCH

    def __init__(self, subject: str, detail: str, *, blueprint_id: str, quarantine_path: Path, why: str) -> None:
        super().__init__(subject, detail)
        self.blueprint_id = blueprint_id
        self.quarantine_path = quarantine_path
        self.why = why


class ArtifactQuarantined(UrzaError):
    """Raised when loading an artifact whose catalogue row is already quarantined (checksum_mismatch)."""

    reason = KernelErrorReason.CHECKSUM_MISMATCH


class ArtifactFailed(UrzaError):
    """Raised when loading an artifact someone marked failed (mark_failed), e.g. its module failed validation."""

    reason = KernelErrorReason.FETCH_ERROR


class ModuleMismatch(UrzaError):
    """Raised when the builder's module does not take the artifact's weights (keys, shapes, parameter count)."""

    reason = KernelErrorReason.GUARD_MISMATCH


class FetchBudgetExceeded(UrzaError):
    """Raised by fetch(..., enforce_budget=True) when handing over took longer than the budget; module discarded.

    The ready module stays cached, so a retry is a hit.
    """

    reason = KernelErrorReason.LATENCY_BUDGET_EXCEEDED


class ValidationFigures(Record, frozen=True):
    """What Tezzeret measured when it validated the module: forward time in ms, output shape, finiteness flags."""

    forward_ms: NonNegFloat
    output_shape: tuple[int, ...]
    output_finite: bool
    grads_finite: bool


class ArtifactMetadata(Record, frozen=True):
    """Everything needed to rebuild and check a blueprint module from its weights (stored inside the blob).

    ``params`` are the builder parameters (name -> value); ``signature_key`` names the concrete slot the weights fit
    (kind and feature size, e.g. ``"flat/64/float32"``) and is how the catalogue finds an artifact for a slot;
    ``weights_sha256`` is the SHA-256 of the safetensors payload; ``param_count`` counts parameter elements (buffers
    excluded); ``guard_digest`` is the SHA-256 of Tezzeret's guard spec.
    """

    blueprint_id: NonEmptyStr
    family: NonEmptyStr
    params: dict[str, ParamValue]
    signature: SlotSignature
    signature_key: NonEmptyStr
    torch_version: str
    weights_sha256: Sha256Hex
    param_count: NonNegInt
    guard_digest: Sha256Hex
    validation: ValidationFigures
    format_version: Annotated[int, Meta(ge=1)] = FORMAT_VERSION


@final
@dataclass(frozen=True, slots=True)
class DecodedArtifact:
    """An artifact's metadata and its CPU tensors (state dict), as decoded from a verified blob."""

    metadata: ArtifactMetadata
    tensors: dict[str, torch.Tensor]


_metadata_decoder = msgspec.json.Decoder(ArtifactMetadata)
_metadata_encoder = msgspec.json.Encoder()


def sha256_hex(data: bytes | bytearray | memoryview) -> str:
    """SHA-256 of ``data`` as 64 lower-case hex characters."""
    return hashlib.sha256(data).hexdigest()


def weights_payload(state_dict: Mapping[str, torch.Tensor]) -> bytes:
    """The safetensors bytes of a state dict (tensors copied to CPU and made contiguous).

    Raises:
        ArtifactFormatError: safetensors refused the tensors (e.g. two entries sharing storage, tied weights).
    """
    tensors = {name: tensor.detach().to("cpu").contiguous() for name, tensor in state_dict.items()}
    try:
        return safetensors_save(tensors)
    except (SafetensorError, RuntimeError, ValueError) as err:
        raise ArtifactFormatError("<unsaved>", f"state dict cannot be saved as safetensors: {err}") from err


def make_metadata(
    state_dict: Mapping[str, torch.Tensor],
    *,
    blueprint_id: str,
    family: str,
    params: Mapping[str, ParamValue],
    signature: SlotSignature,
    signature_key: str,
    param_count: int,
    guard_digest: str,
    validation: ValidationFigures,
) -> tuple[ArtifactMetadata, bytes]:
    """Metadata for a state dict (weights SHA-256 and torch version filled in) and its safetensors payload.

    Returns:
        (metadata, payload), ready for encode_artifact.
    """
    payload = weights_payload(state_dict)
    metadata = ArtifactMetadata(
        blueprint_id=blueprint_id,
        family=family,
        params=dict(params),
        signature=signature,
        signature_key=signature_key,
        torch_version=str(torch.__version__),
        weights_sha256=sha256_hex(payload),
        param_count=param_count,
        guard_digest=guard_digest,
        validation=validation,
    )
    return metadata, payload


def encode_artifact(metadata: ArtifactMetadata, payload: bytes) -> bytes:
    """One artifact blob from metadata and a safetensors payload. Deterministic: equal inputs give equal bytes.

    The metadata is round-tripped through the typed decoder first, so a blob is never written with a record that
    would fail to decode (msgspec checks nothing on construction).

    Raises:
        ArtifactFormatError: the metadata is invalid, too large, or ``weights_sha256`` does not match the payload.
    """
    meta_json = _metadata_encoder.encode(metadata)
    subject = metadata.blueprint_id or "<unnamed>"
    try:
        _metadata_decoder.decode(meta_json)
    except msgspec.ValidationError as err:
        raise ArtifactFormatError(subject, f"artifact metadata for {subject!r} is invalid: {err}") from err
    if len(meta_json) > MAX_METADATA_BYTES:
        raise ArtifactFormatError(subject, f"artifact metadata for {subject!r} is {len(meta_json)} bytes, over 1 MiB")
    if sha256_hex(payload) != metadata.weights_sha256:
        raise ArtifactFormatError(subject, f"weights_sha256 of {subject!r} does not match its safetensors payload")
    return _HEADER.pack(MAGIC, FORMAT_VERSION, len(meta_json)) + meta_json + payload


def decode_metadata(blob: bytes | memoryview, *, name: str = "<blob>") -> tuple[ArtifactMetadata, memoryview]:
    """Parse an artifact's header and metadata; return them with a view of the (unparsed) safetensors payload.

    Raises:
        ArtifactFormatError: bad magic or version, a metadata length past the end, or metadata that fails to decode.
    """
    view = memoryview(blob)
    if len(view) < HEADER_BYTES:
        raise ArtifactFormatError(
            name, f"artifact {name} is {len(view)} bytes, shorter than its {HEADER_BYTES}-byte header"
        )
    magic, version, meta_len = _HEADER.unpack_from(view)
    if magic != MAGIC:
        raise ArtifactFormatError(name, f"artifact {name} does not start with {MAGIC!r}")
    if version != FORMAT_VERSION:
        raise ArtifactFormatError(
            name, f"artifact {name} has format version {version}; this Urza reads {FORMAT_VERSION}"
        )
    if meta_len > MAX_METADATA_BYTES or HEADER_BYTES + meta_len > len(view):
        raise ArtifactFormatError(name, f"artifact {name} declares {meta_len} metadata bytes past its end")
    try:
        metadata = _metadata_decoder.decode(view[HEADER_BYTES : HEADER_BYTES + meta_len])
    except (msgspec.ValidationError, msgspec.DecodeError) as err:
        raise ArtifactFormatError(name, f"artifact {name} has invalid metadata: {err}") from err
    return metadata, view[HEADER_BYTES + meta_len :]


def decode_artifact(blob: bytes, *, name: str = "<blob>") -> DecodedArtifact:
    """Metadata and CPU tensors of an artifact blob whose SHA-256 the caller has already verified.

    Blocking (hashing and copying the payload): run it on a lane. ``name`` (the artifact id) goes into errors.

    Raises:
        ArtifactFormatError: the header or metadata is invalid, the payload does not match ``weights_sha256``, or
            safetensors cannot parse it.
    """
    metadata, payload = decode_metadata(blob, name=name)
    if sha256_hex(payload) != metadata.weights_sha256:
        raise ArtifactFormatError(name, f"artifact {name}: weights payload does not match its weights_sha256")
    try:
        tensors = safetensors_load(bytes(payload))
    except SafetensorError as err:
        raise ArtifactFormatError(name, f"artifact {name}: safetensors payload is invalid: {err}") from err
    return DecodedArtifact(metadata=metadata, tensors=tensors)
