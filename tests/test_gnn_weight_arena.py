"""Tests of esper.nn.weight_arena and the packed fused weights the policy network reads at inference."""

from __future__ import annotations

import sys

import pytest
import torch

from esper.nn.policy_fused import FusedWeights
from esper.nn.policy_gnn import build_tamiyo_gnn
from esper.nn.weight_arena import HUGE_PAGE, pack
from tests.test_gnn_policy import SMALL, graph


def test_pack_copies_values_shapes_and_alignment_into_one_buffer() -> None:
    tensors = [torch.randn(3, 5), torch.randn(7), torch.randn(0, 4), torch.randn(2, 3).t(), torch.tensor(1.5)]
    copies = pack(tensors)
    assert copies is not None
    base = copies[0].data_ptr()
    for t, c in zip(tensors, copies, strict=True):
        assert torch.equal(c, t)
        assert c.shape == t.shape
        assert c.is_contiguous()
        assert c.data_ptr() % 64 == 0  # the alignment torch's own CPU allocations have
        assert c.untyped_storage().data_ptr() == copies[0].untyped_storage().data_ptr()
    if sys.platform == "linux":
        assert base % HUGE_PAGE == 0


def test_pack_leaves_mixed_dtypes_alone() -> None:
    assert pack([torch.zeros(2), torch.zeros(2, dtype=torch.float64)]) is None
    assert pack([]) is None


@pytest.mark.parametrize("n_seeds", [3, 17, 64])
def test_inference_on_packed_fused_weights_gives_the_same_bits(n_seeds: int) -> None:
    """Without autograd the network reads its fused weights packed (FusedWeights.packed); with it, it rebuilds them
    unpacked on every call. Both must compute the same bits."""
    model = build_tamiyo_gnn(SMALL, seed=3).eval()
    data = graph(n_seeds)
    with torch.inference_mode():
        packed = model(data.x_dict, data.edge_index_dict, data.edge_attr_dict)
    with torch.enable_grad():
        unpacked = model(data.x_dict, data.edge_index_dict, data.edge_attr_dict)
    for name, a, b in zip(type(packed)._fields, packed, unpacked, strict=True):
        assert torch.equal(a, b.detach()), name


def tensors_of(weights: FusedWeights) -> list[torch.Tensor]:
    found: list[torch.Tensor] = []

    def note(t: torch.Tensor) -> torch.Tensor:
        found.append(t)
        return t

    weights.map_tensors(note)
    return found


def test_packed_fused_weights_hold_the_same_values_in_one_buffer() -> None:
    model = build_tamiyo_gnn(SMALL, seed=3).eval()
    with torch.no_grad():
        fresh = FusedWeights.of(model)
        packed = fresh.packed()
    before, after = tensors_of(fresh), tensors_of(packed)
    assert len(before) == len(after) > 0
    storage = after[0].untyped_storage().data_ptr()
    for a, b in zip(before, after, strict=True):
        assert torch.equal(a, b)
        assert b.untyped_storage().data_ptr() == storage
