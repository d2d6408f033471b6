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

from esper.nn.policy_contract import ACTION_NAMES, BLEND_METHOD_NAMES, NUM_ACTIONS, EdgeType, PolicyModel, PolicyOutput
from esper.nn.precision import native_bf16

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


def _bools(mask: Sequence[bool] | Tensor | None, size: int, name: str) -> list[bool] | None:
    if mask is None:
        return None
    if isinstance(mask, Tensor) and mask.shape != (size,):
        raise ValueError(f"{name} must have shape ({size},), got {tuple(mask.shape)}")
    values = [bool(v) for v in (mask.tolist() if isinstance(mask, Tensor) else mask)]
    if len(values) != size:
        raise ValueError(f"{name} must have shape ({size},), got ({len(values)},)")
    return values


def _argmax(values: Sequence[float]) -> int:
    """Index of the first largest value."""
    return max(range(len(values)), key=values.__getitem__)


def _pick(scores: Sequence[float], mask: list[bool] | None) -> int | None:
    """The best-scoring allowed node; None without nodes, with every node masked, or with a non-finite score."""
    allowed = [s if mask is None or mask[i] else -math.inf for i, s in enumerate(scores)]
    if not allowed or any(math.isnan(s) for s in allowed):
        return None
    best = _argmax(allowed)
    return best if math.isfinite(allowed[best]) else None


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

    Runs under ``torch.inference_mode``, with bf16 autocast only on a CUDA GPU that computes bf16 (compute capability
    8.0 or newer; an older one emulates it, slower than fp32). The action is the argmax (or, with ``sample``, a draw
    using ``generator``) over the logits with invalid actions set to -inf; a masked action is never chosen. Targets
    are the argmax of their masked scores. One device-to-host copy; the masking and picking that follow it are plain
    Python over a few dozen numbers (cheaper than as many small tensor operations).

    Args:
        mask: ``[NUM_ACTIONS]`` bool, True = allowed, in ``ACTION_NAMES`` order.
        seed_mask / layer_mask / blueprint_mask: ``[N_t]`` bool over the graph's nodes of that type.

    Raises:
        ValueError: the model is in training mode, a mask has the wrong shape, or every action is masked.
        FloatingPointError: an allowed action's logit is NaN or infinite.
    """
    if model.training:
        raise ValueError("decide needs a model in eval mode (call .eval()); dropout would make decisions random")
    dev = torch.device(device)
    action_mask = _bools(mask, NUM_ACTIONS, "mask")
    assert action_mask is not None
    if not any(action_mask):
        raise ValueError("mask allows no action; NO_OP at least should be allowed")
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if native_bf16(dev) else contextlib.nullcontext()
    with torch.inference_mode(), autocast:
        # HeteroData.to walks every store even when nothing moves, so skip it when the graph is already there.
        data = graph if graph.x_dict["global"].device == dev else graph.to(dev)
        out = model(data.x_dict, data.edge_index_dict, data.edge_attr_dict)
        n_seed, n_layer, n_bp = out.seed_scores.shape[0], out.layer_scores.shape[0], out.blueprint_scores.shape[0]
        parts = [
            out.action_logits[0],
            out.seed_scores,
            out.layer_scores,
            out.blueprint_scores,
            out.blend_logits[0],
            out.schedule[0],
            out.ramp[:1],
            out.params[0],
            out.value[:1],
            out.risk_score[:1],
        ]
        if sample:
            allowed = torch.tensor(action_mask, device=dev)
            masked = out.action_logits[0].float().masked_fill(~allowed, -math.inf)
            parts.append(torch.multinomial(torch.log_softmax(masked, dim=-1).exp(), 1, generator=generator).float())
        # One cat (it promotes a bf16 part to fp32 exactly, as .float() would) and one copy to the host.
        v = torch.cat(parts).float().cpu().tolist()
    logits = [x if ok else -math.inf for x, ok in zip(v[:NUM_ACTIONS], action_mask, strict=True)]
    if not all(math.isfinite(x) for x, ok in zip(logits, action_mask, strict=True) if ok):
        # A broken network: no action can be said to be the most likely, so the caller falls back.
        raise FloatingPointError(f"the policy's action logits are not finite: {v[:NUM_ACTIONS]}")
    top = max(logits)
    log_norm = top + math.log(sum(math.exp(x - top) for x in logits))
    a = int(v[-1]) if sample else _argmax(logits)
    seeds = NUM_ACTIONS
    layers = seeds + n_seed
    bps = layers + n_layer
    rest = bps + n_bp
    blend = v[rest : rest + len(BLEND_METHOD_NAMES)]
    schedule_start, schedule_end, ramp, lr_delta, alpha_raw, value, risk = v[rest + len(blend) : rest + len(blend) + 7]
    return PolicyDecision(
        action_index=a,
        action=ACTION_NAMES[a],
        log_prob=logits[a] - log_norm,
        value=value,
        risk_score=risk,
        seed_index=_pick(v[seeds:layers], _bools(seed_mask, n_seed, "seed_mask")),
        layer_index=_pick(v[layers:bps], _bools(layer_mask, n_layer, "layer_mask")),
        blueprint_index=_pick(v[bps:rest], _bools(blueprint_mask, n_bp, "blueprint_mask")),
        blend_method=_argmax(blend),
        schedule=(schedule_start, schedule_end),
        ramp=ramp,
        lr_delta=lr_delta,
        initial_alpha=(alpha_raw + 1.0) / 2.0,
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
