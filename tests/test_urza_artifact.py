"""Urza's artifact format: bit-exact round trips, deterministic bytes, and clear refusals of malformed blobs.

Also home of the tiny nn.Linear artifacts and builder the other test_urza_* files use (they must not depend on
esper.nn.blueprints).
"""

from __future__ import annotations

import hashlib
import struct
from typing import TYPE_CHECKING

import pytest
import torch
from torch import nn

from actors.urza.artifact import (
    HEADER_BYTES,
    MAGIC,
    ArtifactFormatError,
    ArtifactMetadata,
    ValidationFigures,
    decode_artifact,
    decode_metadata,
    encode_artifact,
    make_metadata,
    sha256_hex,
)
from schemas.domain_enums import KernelErrorReason
from schemas.kernels import SlotSignature

if TYPE_CHECKING:
    from collections.abc import Callable

GUARD = hashlib.sha256(b"linear guard").hexdigest()


def linear_state(in_features: int, out_features: int, seed: int) -> dict[str, torch.Tensor]:
    """Weights of a Linear drawn from a seeded generator (never the global RNG)."""
    generator = torch.Generator().manual_seed(seed)
    return {
        "weight": torch.randn(out_features, in_features, generator=generator),
        "bias": torch.randn(out_features, generator=generator),
    }


def linear_artifact(
    *, blueprint_id: str = "bp-linear", in_features: int = 4, out_features: int = 3, seed: int = 0
) -> tuple[ArtifactMetadata, bytes]:
    """A deterministic artifact of an nn.Linear: equal arguments give equal bytes."""
    state = linear_state(in_features, out_features, seed)
    metadata, payload = make_metadata(
        state,
        blueprint_id=blueprint_id,
        family="linear",
        params={"in_features": in_features, "out_features": out_features, "scale": 1.5},
        signature=SlotSignature(rank=2),
        signature_key=f"flat/{in_features}/float32",
        param_count=in_features * out_features + out_features,
        guard_digest=GUARD,
        validation=ValidationFigures(
            forward_ms=0.25, output_shape=(2, out_features), output_finite=True, grads_finite=True
        ),
    )
    return metadata, encode_artifact(metadata, payload)


def linear_blob(
    *, blueprint_id: str = "bp-linear", in_features: int = 4, out_features: int = 3, seed: int = 0
) -> bytes:
    return linear_artifact(blueprint_id=blueprint_id, in_features=in_features, out_features=out_features, seed=seed)[1]


def build_linear(metadata: ArtifactMetadata) -> nn.Module:
    """The test builder: an untrained nn.Linear shaped by the artifact's params."""
    return nn.Linear(int(metadata.params["in_features"]), int(metadata.params["out_features"]))


def test_round_trip_is_bit_exact_for_every_tensor_and_the_metadata() -> None:
    metadata, blob = linear_artifact(in_features=5, out_features=7, seed=3)
    decoded = decode_artifact(blob, name="a")
    expected = linear_state(5, 7, seed=3)
    assert decoded.metadata == metadata
    assert decoded.tensors.keys() == expected.keys()
    for name, tensor in expected.items():
        assert decoded.tensors[name].dtype == tensor.dtype
        assert torch.equal(decoded.tensors[name], tensor), name
    assert metadata.torch_version == torch.__version__
    assert metadata.params == {"in_features": 5, "out_features": 7, "scale": 1.5}


def test_other_dtypes_and_buffers_round_trip_bit_exactly() -> None:
    module = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)).to(torch.float64)
    state = module.state_dict()
    metadata, payload = make_metadata(
        state,
        blueprint_id="bp-bn",
        family="mlp",
        params={},
        signature=SlotSignature(rank=2),
        signature_key="flat/3/float64",
        param_count=sum(p.numel() for p in module.parameters()),
        guard_digest=GUARD,
        validation=ValidationFigures(forward_ms=0.0, output_shape=(2, 4), output_finite=True, grads_finite=True),
    )
    decoded = decode_artifact(encode_artifact(metadata, payload))
    assert decoded.tensors.keys() == state.keys()
    for name, tensor in state.items():
        assert decoded.tensors[name].dtype == tensor.dtype
        assert torch.equal(decoded.tensors[name], tensor), name


def test_encoding_is_deterministic_so_equal_artifacts_share_an_address() -> None:
    assert linear_blob(seed=1) == linear_blob(seed=1)
    assert sha256_hex(linear_blob(seed=1)) != sha256_hex(linear_blob(seed=2))


def test_blob_starts_with_header_then_metadata_json_then_safetensors() -> None:
    metadata, blob = linear_artifact()
    magic, version, meta_len = struct.unpack_from("<8sII", blob)
    assert (magic, version) == (MAGIC, 1)
    assert b'"blueprint_id":"bp-linear"' in blob[HEADER_BYTES : HEADER_BYTES + meta_len]
    payload = blob[HEADER_BYTES + meta_len :]
    assert sha256_hex(payload) == metadata.weights_sha256


def test_encode_refuses_metadata_whose_weights_hash_does_not_match() -> None:
    metadata, _ = linear_artifact()
    other_payload = linear_blob(seed=9)[-100:]
    with pytest.raises(ArtifactFormatError, match="weights_sha256"):
        encode_artifact(metadata, other_payload)


def test_encode_refuses_metadata_that_would_not_decode() -> None:
    good, blob = linear_artifact()
    _, payload = decode_metadata(blob)
    bad = ArtifactMetadata(
        blueprint_id="",
        family=good.family,
        params=good.params,
        signature=good.signature,
        signature_key=good.signature_key,
        torch_version=good.torch_version,
        weights_sha256=good.weights_sha256,
        param_count=good.param_count,
        guard_digest=good.guard_digest,
        validation=good.validation,
    )
    with pytest.raises(ArtifactFormatError, match="invalid"):
        encode_artifact(bad, bytes(payload))


@pytest.mark.parametrize(
    ("mangle", "message"),
    [
        (lambda blob: blob[:10], "shorter than"),
        (lambda blob: b"NOTURZA!" + blob[8:], "does not start with"),
        (lambda blob: blob[:8] + struct.pack("<I", 99) + blob[12:], "format version 99"),
        (lambda blob: blob[:12] + struct.pack("<I", len(blob)) + blob[16:], "past its end"),
        (lambda blob: blob[:-5], "weights payload does not match"),
        (lambda blob: blob[:16] + b"[" + blob[17:], "invalid metadata"),
    ],
    ids=["short", "magic", "version", "meta-length", "payload", "metadata-json"],
)
def test_malformed_blobs_are_refused_with_a_one_line_error(mangle: Callable[[bytes], bytes], message: str) -> None:
    mangled = mangle(linear_blob())
    with pytest.raises(ArtifactFormatError, match=message) as caught:
        decode_artifact(mangled, name="abc")
    assert "\n" not in str(caught.value)
    assert "abc" in str(caught.value)
    assert caught.value.reason is KernelErrorReason.FETCH_ERROR


def test_error_becomes_a_kernel_error_reply() -> None:
    err = ArtifactFormatError("abc", "artifact abc is bad")
    reply = err.to_kernel_error(request_id="r1", blueprint_id="bp", issued_at=4.0)
    assert reply.reason is KernelErrorReason.FETCH_ERROR
    assert (reply.request_id, reply.blueprint_id, reply.detail, reply.issued_at) == (
        "r1",
        "bp",
        "artifact abc is bad",
        4.0,
    )
