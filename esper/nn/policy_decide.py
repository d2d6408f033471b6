"""Turning one forward of the policy network into a decision: ``decide``, and the compile-with-eager-fallback wrapper.

``decide`` runs on the policy lane (it blocks); ``maybe_compile`` compiles only on CUDA and falls back to eager for
good on the first compiled failure (REFERENCE.md section 5).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, final

import torch
from torch import Tensor

from esper.nn.policy_contract import ACTION_NAMES, NUM_ACTIONS, EdgeType, PolicyModel, PolicyOutput

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    from torch_geometric.data import HeteroData

    from esper.nn.policy_gnn import TamiyoGNN
    from esper.nn.policy_graph import EncodedGraph

__all__ = ["CompileFallback", "PolicyDecision", "decide", "maybe_compile"]


@dataclass(frozen=True, slots=True)
class PolicyDecision:
    """One decision in plain Python numbers. Target indices are node indices of the graph (None: no node of that type).

    ``log_prob`` is the log-probability of ``action_index`` under the masked policy. ``lr_delta`` is in [-1, 1] (a
    fraction of the configured bound), ``initial_alpha`` and ``ramp`` in [0, 1], ``schedule`` is (start, end) with
    start <= end in [0, 1].
    """

    action_index: int
    action: str
    log_prob: float
    value: float
    risk_score: float
    seed_index: int | None
    layer_index: int | None
    blueprint_index: int | None
    blend_method: int
    schedule: tuple[float, float]
    ramp: float
    lr_delta: float
    initial_alpha: float


def _bool_mask(mask: Sequence[bool] | Tensor | None, size: int, name: str, device: torch.device) -> Tensor | None:
    if mask is None:
        return None
    t = torch.as_tensor(mask, dtype=torch.bool).to(device)
    if t.shape != (size,):
        raise ValueError(f"{name} must have shape ({size},), got {tuple(t.shape)}")
    return t


def _pick(scores: Tensor, mask: Tensor | None) -> Tensor:
    if scores.shape[0] == 0:
        return torch.full((), -1.0, device=scores.device)
    s = scores.float()
    if mask is not None:
        s = s.masked_fill(~mask, -math.inf)
    # An all-masked target set yields -1 rather than an arbitrary index.
    return torch.where(torch.isfinite(s.max()), s.argmax().float(), torch.full((), -1.0, device=s.device))


def decide(
    model: PolicyModel,
    graph: EncodedGraph | HeteroData,
    mask: Sequence[bool] | Tensor,
    *,
    device: torch.device | str,
    seed_mask: Sequence[bool] | Tensor | None = None,
    layer_mask: Sequence[bool] | Tensor | None = None,
    blueprint_mask: Sequence[bool] | Tensor | None = None,
    sample: bool = False,
    generator: torch.Generator | None = None,
) -> PolicyDecision:
    """Run one inference and turn it into a decision; blocking, so it runs on the policy lane, never the event loop.

    Runs under ``torch.inference_mode`` with bf16 autocast on CUDA only. The action is the argmax (or, with
    ``sample``, a draw using ``generator``) over the logits with invalid actions set to -inf; a masked action is never
    chosen. Targets are the argmax of their masked scores. One device-to-host copy at the end.

    Args:
        mask: ``[NUM_ACTIONS]`` bool, True = allowed, in ``ACTION_NAMES`` order.
        seed_mask / layer_mask / blueprint_mask: ``[N_t]`` bool over the graph's nodes of that type.

    Raises:
        ValueError: the model is in training mode, a mask has the wrong shape, or every action is masked.
    """
    if model.training:
        raise ValueError("decide needs a model in eval mode (call .eval()); dropout would make decisions random")
    dev = torch.device(device)
    action_mask = _bool_mask(mask, NUM_ACTIONS, "mask", dev)
    assert action_mask is not None
    if not bool(action_mask.any()):
        raise ValueError("mask allows no action; NO_OP at least should be allowed")
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda" else contextlib.nullcontext()
    with torch.inference_mode(), autocast:
        # HeteroData.to walks every store even when nothing moves, so skip it when the graph is already there.
        data = graph if graph.x_dict["global"].device == dev else graph.to(dev)
        out = model(data.x_dict, data.edge_index_dict, data.edge_attr_dict)
        logits = out.action_logits[0].float().masked_fill(~action_mask, -math.inf)
        log_probs = torch.log_softmax(logits, dim=-1)
        if sample:
            action = torch.multinomial(log_probs.exp(), 1, generator=generator)[0]
        else:
            action = log_probs.argmax()
        n_seed, n_layer, n_bp = out.seed_scores.shape[0], out.layer_scores.shape[0], out.blueprint_scores.shape[0]
        packed = torch.cat([
            torch.stack([action.float(), log_probs[action], out.value[0].float(), out.risk_score[0].float()]),
            torch.stack([
                _pick(out.seed_scores, _bool_mask(seed_mask, n_seed, "seed_mask", dev)),
                _pick(out.layer_scores, _bool_mask(layer_mask, n_layer, "layer_mask", dev)),
                _pick(out.blueprint_scores, _bool_mask(blueprint_mask, n_bp, "blueprint_mask", dev)),
                out.blend_logits[0].float().argmax().float(),
            ]),
            out.schedule[0].float(),
            out.ramp[:1].float(),
            out.params[0].float(),
        ])  # fmt: skip
    v = packed.cpu().tolist()
    a = int(v[0])
    return PolicyDecision(
        action_index=a,
        action=ACTION_NAMES[a],
        log_prob=v[1],
        value=v[2],
        risk_score=v[3],
        seed_index=None if v[4] < 0 else int(v[4]),
        layer_index=None if v[5] < 0 else int(v[5]),
        blueprint_index=None if v[6] < 0 else int(v[6]),
        blend_method=int(v[7]),
        schedule=(v[8], v[9]),
        ramp=v[10],
        lr_delta=v[11],
        initial_alpha=(v[12] + 1.0) / 2.0,
    )


@final
class CompileFallback:
    """A compiled policy that switches to its eager twin for good on the first compiler failure (counted).

    Only compiler errors (``torch._dynamo`` / inductor) trigger the switch; an error that the eager model raises as
    well propagates to the caller. Not thread-safe: one lane calls it.
    """

    def __init__(self, eager: TamiyoGNN, compiled: Callable[..., PolicyOutput]) -> None:
        import torch._dynamo.exc
        import torch._inductor.exc

        self.eager = eager
        self._compiled: Callable[..., PolicyOutput] | None = compiled
        self._errors: tuple[type[Exception], ...] = (
            torch._dynamo.exc.TorchDynamoException,
            torch._inductor.exc.InductorError,
        )
        self.fallbacks = 0
        self.last_error: str | None = None

    @property
    def training(self) -> bool:
        return self.eager.training

    @property
    def compiled(self) -> bool:
        """True while the compiled path is still in use."""
        return self._compiled is not None

    def __call__(
        self,
        x_dict: Mapping[str, Tensor],
        edge_index_dict: Mapping[EdgeType, Tensor],
        edge_attr_dict: Mapping[EdgeType, Tensor],
        batch_dict: Mapping[str, Tensor] | None = None,
    ) -> PolicyOutput:
        if self._compiled is not None:
            try:
                return self._compiled(x_dict, edge_index_dict, edge_attr_dict, batch_dict)
            except self._errors as err:
                self._compiled = None
                self.fallbacks += 1
                self.last_error = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        out: PolicyOutput = self.eager(x_dict, edge_index_dict, edge_attr_dict, batch_dict)
        return out


def maybe_compile(model: TamiyoGNN, device: torch.device | str) -> tuple[TamiyoGNN | CompileFallback, bool]:
    """``torch.compile`` the policy on CUDA (dynamic shapes, eager fallback); on any other device return it as is.

    Compilation is lazy: a failure surfaces on the first call and ``CompileFallback`` counts it and goes eager.
    """
    if torch.device(device).type != "cuda":
        return model, False
    compiled = torch.compile(model, dynamic=True)
    return CompileFallback(model, compiled), True
