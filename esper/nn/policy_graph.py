"""Tamiyo's state graph: plain inputs -> typed node and edge tensors with presence bits, no dangling edges.

Node types and feature widths (REFERENCE.md section 5, "State graph"); every ``*_p`` column is a presence bit, and a
missing value is 0 with its bit 0:

- ``global`` (1 node, 16): loss, loss_p, validation_loss, validation_loss_p, training_loss, training_loss_p,
  gradient_norm, gradient_norm_p, samples_per_s, samples_per_s_p, hook_latency_ms, hook_latency_ms_p,
  epoch / epochs_total, log1p(step) / 10, tanh(#seeds / 8), epoch_progress.
- ``seed`` (one per slot report, 14): learning_rate, lr_p, risk, risk_p, gradient_norm, gradient_norm_p, age, age_p,
  stage / MAX_STAGE, depth / max_depth, blueprint code, blend_allowed, alpha, occupied.
- ``blueprint`` (one or more, 14): code, validation_loss, validation_loss_p, training_loss, training_loss_p, risk,
  stage / 10, log1p(params) / 20, params_p, tier / 10, quarantine_only, approval_required, candidate score, cost / 3.
- ``layer`` (at most ``GraphCaps.max_layers``, 14): depth / max_depth, latency, latency_p, log1p(params) / 20, params_p,
  dropout, type code, type_p, activation code, activation_p, weight_norm, weight_norm_p, gradient_norm,
  gradient_norm_p.

Every relation in ``EDGE_TYPES`` is always present with ``edge_index`` ``[2, E]`` (int64) and ``edge_attr`` ``[E, 3]``
(float32), E possibly 0. Gradient norms, rates and latencies pass ``log1p`` and then the EWMA normaliser; losses pass
the normaliser directly; bounded quantities (risk, alpha, fractions) are used as they are.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Final, final

import numpy as np
import torch
from torch_geometric.data import HeteroData

from esper.nn.normaliser import CategoryRegistry, EwmaNormaliser
from esper.nn.policy_edges import EDGE_DIM, EDGE_TYPES, MAX_STAGE, build_edges

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

__all__ = [
    "BLUEPRINT_FEATURES",
    "EDGE_DIM",
    "EDGE_TYPES",
    "GLOBAL_FEATURES",
    "LAYER_FEATURES",
    "MAX_STAGE",
    "NODE_FEATURES",
    "NODE_TYPES",
    "SEED_FEATURES",
    "BlueprintInput",
    "EncodedGraph",
    "GlobalInput",
    "GraphCaps",
    "GraphInputs",
    "GraphRegistries",
    "LayerInput",
    "PolicyGraphBuilder",
    "SeedInput",
]

GLOBAL_FEATURES: Final = 16
SEED_FEATURES: Final = 14
BLUEPRINT_FEATURES: Final = 14
LAYER_FEATURES: Final = 14

NODE_TYPES: Final = ("global", "seed", "blueprint", "layer")
NODE_FEATURES: Final = {"global": GLOBAL_FEATURES, "seed": SEED_FEATURES, "blueprint": BLUEPRINT_FEATURES,
                        "layer": LAYER_FEATURES}  # fmt: skip


@dataclass(frozen=True, slots=True, kw_only=True)
class GlobalInput:
    """Run-level metrics at one step; None means not measured. Losses are means over the reporting interval."""

    epoch: int
    epochs_total: int
    step: int
    epoch_progress: float
    loss: float | None = None
    validation_loss: float | None = None
    training_loss: float | None = None
    gradient_norm: float | None = None
    samples_per_s: float | None = None
    hook_latency_ms: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class LayerInput:
    """One host layer; ``name`` is unique within a graph. Latency in milliseconds."""

    name: str
    depth: int
    layer_type: str
    parameter_count: int | None = None
    activation: str | None = None
    dropout: float = 0.0
    weight_norm: float | None = None
    gradient_norm: float | None = None
    latency_ms: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class SeedInput:
    """One slot as Kasmina reports it; ``occupied`` is False for a DORMANT slot. ``stage`` is the lifecycle number."""

    slot: str
    stage: int
    layer_depth: int
    occupied: bool = False
    blueprint_id: str | None = None
    learning_rate: float | None = None
    risk_score: float | None = None
    gradient_norm: float | None = None
    age_epochs: int | None = None
    alpha: float = 0.0
    blend_allowed: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class BlueprintInput:
    """One candidate blueprint. ``tier`` is the BlueprintTier number, ``cost_tier`` 0 (low) to 2 (high).

    ``layer_types`` lists the layer types it can compose with; empty means any. Without a ``candidate_score`` the
    predecessor's fallback ``(1 - risk) + 0.05 * stage + 0.02 * log1p(params)`` is used.
    """

    blueprint_id: str
    risk: float
    tier: int
    stage: int = 0
    parameter_count: int | None = None
    validation_loss: float | None = None
    training_loss: float | None = None
    quarantine_only: bool = False
    approval_required: bool = False
    candidate_score: float | None = None
    cost_tier: int = 0
    layer_types: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class GraphInputs:
    """Everything one decision sees. ``layer_edges`` are (from, to) layer names; None chains the layers by depth."""

    metrics: GlobalInput
    layers: tuple[LayerInput, ...] = ()
    seeds: tuple[SeedInput, ...] = ()
    blueprints: tuple[BlueprintInput, ...] = ()
    layer_edges: tuple[tuple[str, str], ...] | None = None
    timings: bool = True  # False: the wall-clock inputs are left out on purpose, and coverage does not miss them


@dataclass(frozen=True, slots=True)
class GraphCaps:
    """Node caps (REFERENCE.md section 1 resolved default: 4 layers). Edges to dropped nodes are dropped with them."""

    max_layers: int = 4
    max_seeds: int = 1024
    max_blueprints: int = 64

    def __post_init__(self) -> None:
        for name in ("max_layers", "max_seeds", "max_blueprints"):
            if getattr(self, name) < 1:
                raise ValueError(f"GraphCaps.{name} must be >= 1, got {getattr(self, name)}")


@dataclass(frozen=True, slots=True)
class GraphRegistries:
    """The categorical registries whose digests are checkpointed with the policy."""

    blueprints: CategoryRegistry = field(default_factory=lambda: CategoryRegistry.of("blueprint", ()))
    layer_types: CategoryRegistry = field(default_factory=lambda: CategoryRegistry.of("layer_type", ()))
    activations: CategoryRegistry = field(default_factory=lambda: CategoryRegistry.of("activation", ()))

    @classmethod
    def of(
        cls, *, blueprints: Iterable[str], layer_types: Iterable[str], activations: Iterable[str]
    ) -> GraphRegistries:
        return cls(
            blueprints=CategoryRegistry.of("blueprint", blueprints),
            layer_types=CategoryRegistry.of("layer_type", layer_types),
            activations=CategoryRegistry.of("activation", activations),
        )

    def digests(self) -> dict[str, str]:
        """``{kind: sha256 hex}`` for every registry."""
        return {r.kind: r.digest() for r in (self.blueprints, self.layer_types, self.activations)}


@dataclass(frozen=True, slots=True)
class EncodedGraph:
    """A built graph plus the names behind its node indices (seed node i is slot ``seed_slots[i]``, and so on).

    The tensors are plain dicts keyed as in a HeteroData (``x_dict``, ``edge_index_dict``, ``edge_attr_dict``), which is
    what the policy reads; ``data`` assembles the HeteroData itself (PyG batching, inspection). A decision skips it:
    filling and reading a HeteroData's stores costs about 0.2 ms, 4 % of a decision at 32 slots.
    ``feature_coverage`` is the fraction of the optional numeric inputs this state should carry that are present, in
    [0, 1]: an occupied seed's figures, the validation loss at an epoch end, the timings when given; a dormant slot's
    seed figures and a blueprint's untried losses are not expected, so a healthy state covers about all.
    """

    x_dict: dict[str, torch.Tensor]
    edge_index_dict: dict[tuple[str, str, str], torch.Tensor]
    edge_attr_dict: dict[tuple[str, str, str], torch.Tensor]
    seed_slots: tuple[str, ...]
    layer_names: tuple[str, ...]
    blueprint_ids: tuple[str, ...]
    feature_coverage: float

    @property
    def data(self) -> HeteroData:
        """The graph as a PyG HeteroData (built on each access; it shares the tensors)."""
        data = HeteroData()
        for node_type, x in self.x_dict.items():
            data[node_type].x = x
        for edge_type, index in self.edge_index_dict.items():
            store = data[edge_type]
            store.edge_index = index
            store.edge_attr = self.edge_attr_dict[edge_type]
        return data

    def to(self, device: torch.device | str) -> EncodedGraph:
        """The same graph with every tensor on ``device``."""
        return replace(
            self,
            x_dict={k: v.to(device) for k, v in self.x_dict.items()},
            edge_index_dict={k: v.to(device) for k, v in self.edge_index_dict.items()},
            edge_attr_dict={k: v.to(device) for k, v in self.edge_attr_dict.items()},
        )


class _Coverage:
    __slots__ = ("present", "total")

    def __init__(self) -> None:
        self.present = 0
        self.total = 0

    def mark(self, value: float | None, expected: bool = True) -> bool:
        ok = value is not None and math.isfinite(value)
        if expected:
            self.total += 1
            self.present += ok
        return ok


def _log1p(value: float | None) -> float | None:
    return None if value is None else math.log1p(max(value, 0.0))


@final
class PolicyGraphBuilder:
    """Builds ``EncodedGraph``s; owns the normaliser it updates. Any thread, but one at a time (not thread-safe).

    Raises (from ``build``):
        ValueError: no blueprint, or two layers share a name.
    """

    def __init__(
        self, registries: GraphRegistries, *, normaliser: EwmaNormaliser | None = None, caps: GraphCaps | None = None
    ) -> None:
        self.registries = registries
        self.normaliser = normaliser if normaliser is not None else EwmaNormaliser()
        self.caps = caps if caps is not None else GraphCaps()

    def build(self, inputs: GraphInputs, *, update_normaliser: bool = True) -> EncodedGraph:
        """Encode one decision's inputs; with ``update_normaliser`` the EWMA moments first absorb these values."""
        if not inputs.blueprints:
            raise ValueError("GraphInputs.blueprints must hold at least one blueprint")
        names = [layer.name for layer in inputs.layers]
        if len(set(names)) != len(names):
            raise ValueError("GraphInputs.layers has duplicate layer names")
        cov = _Coverage()
        seeds = self._cap_seeds(inputs.seeds)
        layers = self._cap_layers(inputs.layers, seeds)
        blueprints = self._cap_blueprints(inputs.blueprints, seeds)
        max_depth = max([1, *(lay.depth for lay in inputs.layers), *(s.layer_depth for s in seeds)])

        x_dict = {
            "global": self._global_x(inputs.metrics, len(seeds), cov, update_normaliser, inputs.timings),
            "seed": self._seed_x(seeds, max_depth, cov, update_normaliser),
            "blueprint": self._blueprint_x(blueprints, cov, update_normaliser),
            "layer": self._layer_x(layers, max_depth, cov, update_normaliser, inputs.timings),
        }
        edge_index_dict, edge_attr_dict = build_edges(seeds, layers, blueprints, inputs.layer_edges, max_depth)
        coverage = cov.present / cov.total if cov.total else 1.0
        return EncodedGraph(
            x_dict=x_dict,
            edge_index_dict=edge_index_dict,
            edge_attr_dict=edge_attr_dict,
            seed_slots=tuple(s.slot for s in seeds),
            layer_names=tuple(lay.name for lay in layers),
            blueprint_ids=tuple(b.blueprint_id for b in blueprints),
            feature_coverage=coverage,
        )

    # ------------------------------------------------------------------ caps (deterministic, never dangling)

    def _cap_seeds(self, seeds: tuple[SeedInput, ...]) -> tuple[SeedInput, ...]:
        cap = self.caps.max_seeds
        if len(seeds) <= cap:
            return seeds
        keep = sorted(range(len(seeds)), key=lambda i: (not seeds[i].occupied, i))[:cap]
        return tuple(seeds[i] for i in sorted(keep))

    def _cap_layers(self, layers: tuple[LayerInput, ...], seeds: tuple[SeedInput, ...]) -> tuple[LayerInput, ...]:
        # Layers that host an occupied seed come first, then layers with any slot, then the rest, shallow first.
        occupied = {s.layer_depth for s in seeds if s.occupied}
        slotted = {s.layer_depth for s in seeds}
        ordered = sorted(
            layers, key=lambda lay: (lay.depth not in occupied, lay.depth not in slotted, lay.depth, lay.name)
        )
        return tuple(sorted(ordered[: self.caps.max_layers], key=lambda lay: (lay.depth, lay.name)))

    def _cap_blueprints(
        self, blueprints: tuple[BlueprintInput, ...], seeds: tuple[SeedInput, ...]
    ) -> tuple[BlueprintInput, ...]:
        used = {s.blueprint_id for s in seeds if s.blueprint_id is not None}
        ordered = sorted(blueprints, key=lambda b: (b.blueprint_id not in used, b.blueprint_id))
        return tuple(sorted(ordered[: self.caps.max_blueprints], key=lambda b: b.blueprint_id))

    # ------------------------------------------------------------------ node features

    def _num(
        self, key: str, value: float | None, cov: _Coverage, update: bool, expected: bool = True
    ) -> tuple[float, float]:
        if not cov.mark(value, expected):
            return 0.0, 0.0
        assert value is not None
        return self.normaliser.observe(key, value, update=update), 1.0

    def _nums(
        self,
        key: str,
        values: Sequence[float | None],
        cov: _Coverage,
        update: bool,
        expected: Sequence[bool] | bool = True,
    ) -> list[tuple[float, float]]:
        # One normaliser update per key and graph, so node order inside a graph does not matter.
        wanted = [expected] * len(values) if isinstance(expected, bool) else list(expected)
        present = [v for v, e in zip(values, wanted, strict=True) if cov.mark(v, e) and v is not None]
        if update and present:
            self.normaliser.update_many(key, present)
        out: list[tuple[float, float]] = []
        for v in values:
            ok = v is not None and math.isfinite(v)
            out.append((self.normaliser.normalise(key, v), 1.0) if ok and v is not None else (0.0, 0.0))
        return out

    def _global_x(self, m: GlobalInput, n_seeds: int, cov: _Coverage, update: bool, timings: bool) -> torch.Tensor:
        row: list[float] = []
        for key, value, expected in (
            ("loss", m.loss, True),
            ("validation_loss", m.validation_loss, m.epoch_progress >= 1.0),  # measured at epoch ends
            ("training_loss", m.training_loss, True),
            ("gradient_norm", _log1p(m.gradient_norm), True),
            ("samples_per_s", _log1p(m.samples_per_s), timings),
            ("hook_latency_ms", _log1p(m.hook_latency_ms), timings),
        ):
            row.extend(self._num(f"global.{key}", value, cov, update, expected))
        row.append(m.epoch / max(m.epochs_total, 1))
        row.append(math.log1p(max(m.step, 0)) / 10.0)
        row.append(math.tanh(n_seeds / 8.0))
        row.append(min(max(m.epoch_progress, 0.0), 1.0))
        return torch.tensor([row], dtype=torch.float32)

    def _seed_x(self, seeds: tuple[SeedInput, ...], max_depth: int, cov: _Coverage, update: bool) -> torch.Tensor:
        live = [s.occupied for s in seeds]  # a dormant slot has no seed whose figures could be missing
        lr = self._nums("seed.learning_rate", [s.learning_rate for s in seeds], cov, update, live)
        grad = self._nums("seed.gradient_norm", [_log1p(s.gradient_norm) for s in seeds], cov, update, live)
        code = self.registries.blueprints.code
        rows = []
        for s, lr_v, grad_v in zip(seeds, lr, grad, strict=True):
            risk_ok = cov.mark(s.risk_score, s.occupied)
            age_ok = cov.mark(None if s.age_epochs is None else float(s.age_epochs), s.occupied)
            rows.append([
                *lr_v,
                s.risk_score if risk_ok and s.risk_score is not None else 0.0,
                float(risk_ok),
                *grad_v,
                math.log1p(s.age_epochs) / 5.0 if age_ok and s.age_epochs is not None else 0.0,
                float(age_ok),
                s.stage / MAX_STAGE,
                s.layer_depth / max_depth,
                code(s.blueprint_id),
                float(s.blend_allowed),
                s.alpha,
                float(s.occupied),
            ])  # fmt: skip
        return _matrix(rows, SEED_FEATURES)

    def _blueprint_x(self, blueprints: tuple[BlueprintInput, ...], cov: _Coverage, update: bool) -> torch.Tensor:
        # A blueprint's losses exist only once it has been tried somewhere: not expected of a candidate.
        val = self._nums("blueprint.validation_loss", [b.validation_loss for b in blueprints], cov, update, False)
        train = self._nums("blueprint.training_loss", [b.training_loss for b in blueprints], cov, update, False)
        code = self.registries.blueprints.code
        rows = []
        for b, val_v, train_v in zip(blueprints, val, train, strict=True):
            params_ok = cov.mark(None if b.parameter_count is None else float(b.parameter_count))
            log_params = math.log1p(b.parameter_count) if params_ok and b.parameter_count is not None else 0.0
            score = b.candidate_score
            if score is None:
                score = (1.0 - b.risk) + 0.05 * b.stage + 0.02 * log_params
            rows.append([
                code(b.blueprint_id), *val_v, *train_v, b.risk, b.stage / 10.0, log_params / 20.0, float(params_ok),
                b.tier / 10.0, float(b.quarantine_only), float(b.approval_required), score, b.cost_tier / 3.0,
            ])  # fmt: skip
        return _matrix(rows, BLUEPRINT_FEATURES)

    def _layer_x(
        self, layers: tuple[LayerInput, ...], max_depth: int, cov: _Coverage, update: bool, timings: bool
    ) -> torch.Tensor:
        lat = self._nums("layer.latency_ms", [_log1p(lay.latency_ms) for lay in layers], cov, update, timings)
        # Not expected: Tolaria's summaries carry no weight norm (a norm of every weight each packet costs the step
        # loop), and a layer without parameters (an activation's slot) has no gradient norm to miss; counted as
        # missing, they put a healthy run's coverage at 0.64-0.84, near the coverage alert's 0.7.
        wn = self._nums("layer.weight_norm", [_log1p(lay.weight_norm) for lay in layers], cov, update, False)
        gn = self._nums(
            "layer.gradient_norm",
            [_log1p(lay.gradient_norm) for lay in layers],
            cov,
            update,
            [lay.parameter_count is None or lay.parameter_count > 0 for lay in layers],
        )
        types, acts = self.registries.layer_types, self.registries.activations
        rows = []
        for lay, lat_v, wn_v, gn_v in zip(layers, lat, wn, gn, strict=True):
            params_ok = cov.mark(None if lay.parameter_count is None else float(lay.parameter_count))
            type_i, act_i = types.index(lay.layer_type), acts.index(lay.activation)
            rows.append([
                lay.depth / max_depth, *lat_v,
                math.log1p(lay.parameter_count) / 20.0 if params_ok and lay.parameter_count is not None else 0.0,
                float(params_ok), lay.dropout,
                types.code(lay.layer_type), float(type_i is not None),
                acts.code(lay.activation), float(act_i is not None),
                *wn_v, *gn_v,
            ])  # fmt: skip
        return _matrix(rows, LAYER_FEATURES)


def _matrix(rows: list[list[float]], width: int) -> torch.Tensor:
    # numpy converts nested lists several times faster than torch.tensor does.
    return torch.from_numpy(np.array(rows, dtype=np.float32).reshape(-1, width))
