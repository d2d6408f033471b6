"""The GNN policy: an Observation -> the policy graph -> ``tamiyo_gnn_v1`` (esper.nn) -> a policy Decision.

Invalid actions are masked by lifecycle state before the argmax (REFERENCE.md section 5): GERMINATE needs a free,
non-embargoed slot and a blueprint that fits it (its slot kind) and is not quarantine-only; CULL a live seed;
FOSSILIZE a PROBATIONARY seed; PAUSE a TRAINING or BLENDING seed that is not paused; RESUME a paused one; NO_OP and
LR_TWEAK are always allowed.
The seed head picks the target among the graph's seed nodes (one per slot; a GERMINATE targets a DORMANT slot). The
first inference masks seeds by the union of every allowed action's targets; when the chosen target does not suit
the chosen action, a second inference restricted to that action and its targets picks it (the log-probability and
value reported are the first inference's, the ones the action was drawn from). A GERMINATE's blueprint is the
best-scoring one that fits the chosen slot: when the first pick does not, one more inference masks the blueprints to
those that do.

Mapping of the heads: blend method convex / residual -> BlendMode.CONVEX / RESIDUAL; channel needs per-channel
alphas that only Kasmina knows, so it becomes the configured default mode. The schedule head gives the blending
window, the ramp head ``ramp_steps`` as a fraction of ``max_ramp_steps``, the parameter head ``lr_delta`` as a
fraction of ``lr_delta_bound`` and the initial alpha. ``policy_risk`` is the risk head's P(high-risk classes).

Threads: ``decide`` blocks (graph build plus inference) and runs on the policy lane, one call at a time; the
normaliser it updates belongs to that lane while a call runs, so ``export_state`` must not overlap a decide (the
actor guarantees it).
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Final, final

import msgspec
import torch

from actors.tamiyo.gnn_state import GnnPolicyBase, GnnPolicyState
from actors.tamiyo.policy import NO_OP, Decision
from esper.nn.normaliser import EwmaNormaliser
from esper.nn.policy_contract import ACTION_NAMES, ARCHITECTURE_VERSION, NUM_ACTIONS
from esper.nn.policy_decide import decide
from esper.nn.policy_graph import (
    BlueprintInput,
    GlobalInput,
    GraphCaps,
    GraphInputs,
    GraphRegistries,
    LayerInput,
    PolicyGraphBuilder,
    SeedInput,
)
from schemas.control import BlendConfig
from schemas.domain_enums import BlendMode, CostTier, PolicyAction
from schemas.enums import LIVE_STAGES, SeedLifecycleStage

if TYPE_CHECKING:
    from collections.abc import Iterable

    from torch import nn

    from actors.tamiyo.policy import Observation
    from esper.nn.policy_contract import PolicyModel
    from esper.nn.policy_decide import PolicyDecision
    from esper.nn.policy_graph import EncodedGraph
    from schemas.state import SeedState

_COST_CODE: Final = {CostTier.LOW: 0, CostTier.MEDIUM: 1, CostTier.HIGH: 2}
_BLEND_MODES: Final = (BlendMode.CONVEX, BlendMode.RESIDUAL, None)
_PAUSABLE: Final = frozenset({SeedLifecycleStage.TRAINING, SeedLifecycleStage.BLENDING})
_ACTIONS: Final = tuple(PolicyAction[name] for name in ACTION_NAMES)


def weights_sha256(module: nn.Module) -> str:
    """SHA-256 over the module's state dict (names, dtypes, shapes and bytes, in name order)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)}\n".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def registries_for(
    blueprint_ids: Iterable[str], layer_types: Iterable[str] = (), activations: Iterable[str] = ()
) -> GraphRegistries:
    """The deterministic categorical registries of a deployment (their digests are checkpointed)."""
    return GraphRegistries.of(blueprints=blueprint_ids, layer_types=layer_types, activations=activations)


def graph_inputs(observation: Observation) -> GraphInputs:
    """The plain graph inputs of one Observation (Karn candidates as blueprint nodes, packet layers as layer nodes).

    The wall-clock measurements the graph schema has room for (samples per second, hook latency, layer latency) are
    left missing (their presence masks say so): they vary with the machine's load, and fed to the network they made
    two runs of one config choose different blueprints, and a resumed run differ from an uninterrupted one.
    """
    p = observation.packet
    metrics = GlobalInput(
        epoch=p.epoch,
        epochs_total=p.epochs_total,
        step=p.global_step,
        epoch_progress=p.epoch_progress,
        loss=p.validation_loss if p.validation_loss is not None else p.training_loss,
        validation_loss=p.validation_loss,
        training_loss=p.training_loss,
        gradient_norm=p.gradient_norm,
        samples_per_s=None,
        hook_latency_ms=None,
    )
    layers = tuple(
        LayerInput(
            name=lay.name,
            depth=lay.depth,
            layer_type=lay.layer_type,
            parameter_count=lay.parameter_count,
            activation=lay.activation,
            dropout=lay.dropout,
            weight_norm=lay.weight_norm,
            gradient_norm=lay.gradient_norm if lay.gradient_norm is not None else p.layer_gradient_norms.get(lay.name),
            latency_ms=None,
        )
        for lay in p.layers
    )
    seeds = tuple(
        SeedInput(
            slot=s.slot,
            stage=int(s.stage),
            layer_depth=s.layer_depth,
            occupied=s.stage is not SeedLifecycleStage.DORMANT,
            blueprint_id=s.blueprint_id,
            learning_rate=s.learning_rate,
            risk_score=s.risk_score,
            gradient_norm=s.gradient_norm,
            age_epochs=s.age_epochs,
            alpha=s.alpha,
            blend_allowed=s.blend_allowed,
        )
        for s in sorted(p.seed_states, key=lambda s: s.slot)
    )
    blueprints = tuple(
        BlueprintInput(
            blueprint_id=bp.blueprint_id,
            risk=bp.risk,
            tier=int(bp.tier),
            parameter_count=bp.parameter_count,
            quarantine_only=bp.quarantine_only,
            cost_tier=_COST_CODE[bp.cost_tier],
        )
        for bp in observation.blueprints
    )
    return GraphInputs(metrics=metrics, layers=layers, seeds=seeds, blueprints=blueprints, timings=False)


def _targets(observation: Observation) -> dict[PolicyAction, frozenset[str]]:
    """The slots each action may act on (empty for the actions that target no seed), from one pass over the seeds."""
    germinable = [bp for bp in observation.blueprints if not bp.quarantine_only]
    germinate = frozenset(s.slot for s in observation.free_slots() if any(bp.fits(s.slot) for bp in germinable))
    cull: list[str] = []
    fossilize: list[str] = []
    pause: list[str] = []
    resume: list[str] = []
    for s in observation.seeds:
        if s.stage not in LIVE_STAGES or s.seed_id is None:
            continue
        cull.append(s.slot)
        if s.stage is SeedLifecycleStage.PROBATIONARY:
            fossilize.append(s.slot)
        if s.paused:
            resume.append(s.slot)
        elif s.stage in _PAUSABLE:
            pause.append(s.slot)
    targets: dict[PolicyAction, frozenset[str]] = dict.fromkeys(_ACTIONS, frozenset())
    targets[PolicyAction.GERMINATE] = germinate
    targets[PolicyAction.CULL] = frozenset(cull)
    targets[PolicyAction.FOSSILIZE] = frozenset(fossilize)
    targets[PolicyAction.PAUSE] = frozenset(pause)
    targets[PolicyAction.RESUME] = frozenset(resume)
    return targets


@final
class GnnPolicy(GnnPolicyBase):
    """A Policy over ``tamiyo_gnn_v1``; see the module docstring for masking and the mapping of its heads."""

    def __init__(
        self,
        model: PolicyModel,
        *,
        registries: GraphRegistries,
        weights_digest: str,
        device: torch.device | str = "cpu",
        caps: GraphCaps | None = None,
        normaliser_alpha: float = 0.1,
        version: str = "gnn-0.0.0",
        blend: BlendConfig | None = None,
        max_ramp_steps: int = 100,
        lr_delta_bound: float = 0.1,
    ) -> None:
        """Args:
        model: a TamiyoGNN in eval mode (or its compiled wrapper), on ``device``.
        registries: the categorical registries; their digests are checked when a state is imported.
        weights_digest: ``weights_sha256`` of the model's weights, recorded in the state and checked on import.
        caps: node caps of the graph (TamiyoConfig.max_layer_nodes for layers).
        normaliser_alpha: the EWMA weight (TamiyoConfig.normaliser_alpha).
        version: reported as the policy version in commands and field reports.
        blend: the defaults of a GERMINATE's BlendConfig (mode when the net picks channel, temperature, ...).
        max_ramp_steps / lr_delta_bound: scales of the ramp and lr-delta heads.

        Raises:
            ValueError: max_ramp_steps < 1, or lr_delta_bound outside (0, 0.9].
        """
        if max_ramp_steps < 1:
            raise ValueError(f"max_ramp_steps must be >= 1, got {max_ramp_steps}")
        if not 0.0 < lr_delta_bound <= 0.9:
            raise ValueError(f"lr_delta_bound must be in (0, 0.9], got {lr_delta_bound}")
        self._model = model
        self._registries = registries
        self._weights_digest = weights_digest
        self._device = torch.device(device)
        self._builder = PolicyGraphBuilder(registries, normaliser=EwmaNormaliser(normaliser_alpha), caps=caps)
        self._version = version
        self._blend = blend if blend is not None else BlendConfig()
        self._max_ramp_steps = max_ramp_steps
        self._lr_delta_bound = lr_delta_bound
        self._decisions = 0

    @property
    def version(self) -> str:
        return self._version

    def warm_up(self) -> None:
        """One inference on a minimal graph, discarded, so the first real decision does not also build the network's
        fused weights (about 20 ms at the reference sizes, half the decision budget). Blocking: the policy lane.

        The normaliser is read, never updated, and no decision is counted: decisions after it are the same as without.
        """
        metrics = GlobalInput(epoch=0, epochs_total=1, step=0, epoch_progress=0.0)
        blueprint = BlueprintInput(blueprint_id="warm_up", risk=0.0, tier=0, stage=0)
        graph = self._builder.build(
            GraphInputs(metrics=metrics, layers=(), seeds=(), blueprints=(blueprint,)), update_normaliser=False
        )
        decide(self._model, graph, [True] * NUM_ACTIONS, device=self._device)

    def export_state(self) -> GnnPolicyState:
        """The normaliser, registry digests and weights identity; call it between decisions only."""
        raw = self._builder.normaliser.state_dict()
        head = raw.pop("__alpha__").tolist()
        moments = {key: (float(v[0]), float(v[1]), int(v[2])) for key, v in ((k, t.tolist()) for k, t in raw.items())}
        return GnnPolicyState(
            version=self._version,
            architecture_version=ARCHITECTURE_VERSION,
            weights_sha256=self._weights_digest,
            registry_digests=self._registries.digests(),
            normaliser_alpha=float(head[0]),
            normaliser_eps=float(head[1]),
            normaliser=moments,
            decisions=self._decisions,
        )

    def import_state(self, state: GnnPolicyState) -> None:
        """Restore the normaliser; nothing changes on an error.

        Raises:
            ValueError: the state belongs to another architecture, other weights or other registries.
        """
        if state.architecture_version != ARCHITECTURE_VERSION:
            raise ValueError(f"gnn state is for {state.architecture_version!r}, not {ARCHITECTURE_VERSION!r}")
        if state.weights_sha256 != self._weights_digest:
            raise ValueError(f"gnn state was taken with weights {state.weights_sha256[:12]}, these are different")
        if state.registry_digests != self._registries.digests():
            raise ValueError("gnn state was taken with other categorical registries (digests differ)")
        tensors = {"__alpha__": torch.tensor([state.normaliser_alpha, state.normaliser_eps], dtype=torch.float64)}
        for key, (mean, var, count) in state.normaliser.items():
            tensors[key] = torch.tensor([mean, var, float(count)], dtype=torch.float64)
        self._builder.normaliser.load_state_dict(tensors)
        self._decisions = state.decisions

    def decide(self, observation: Observation) -> Decision:
        """One inference (blocking: the policy lane). NO_OP without a blueprint, as the graph needs one."""
        if not observation.blueprints:
            return msgspec.structs.replace(NO_OP, reason="no_blueprint")
        encoded = self._builder.build(graph_inputs(observation))
        slots = encoded.seed_slots
        targets = _targets(observation)
        allowed_bps = {bp.blueprint_id for bp in observation.blueprints if not bp.quarantine_only}
        blueprint_mask = [bp in allowed_bps for bp in encoded.blueprint_ids]
        mask = [True] * NUM_ACTIONS
        for i, action in enumerate(_ACTIONS):
            if action in (PolicyAction.NO_OP, PolicyAction.LR_TWEAK):
                continue
            mask[i] = bool(targets[action]) and (action is not PolicyAction.GERMINATE or any(blueprint_mask))
        union = frozenset().union(*targets.values())
        out = self._infer(encoded, mask, [s in union for s in slots], blueprint_mask)
        action = _ACTIONS[out.action_index]
        self._decisions += 1
        slot = slots[out.seed_index] if out.seed_index is not None else None
        only = [i == out.action_index for i in range(NUM_ACTIONS)]
        if targets[action] and slot not in targets[action]:
            second = self._infer(encoded, only, [s in targets[action] for s in slots], blueprint_mask)
            slot = slots[second.seed_index] if second.seed_index is not None else None
        blueprint = out.blueprint_index
        if action is PolicyAction.GERMINATE and slot is not None:
            # The blueprint head scores every blueprint; one of another slot kind than the chosen slot's would be
            # refused, so the pick is the best-scoring blueprint that fits that slot.
            fitting = {bp.blueprint_id for bp in observation.fitting(slot)} & allowed_bps
            fit_mask = [bp in fitting for bp in encoded.blueprint_ids]
            if blueprint is None or not fit_mask[blueprint]:
                blueprint = self._infer(encoded, only, [s == slot for s in slots], fit_mask).blueprint_index
        decision = self._decision(observation, out, action, slot, encoded.blueprint_ids, blueprint)
        return msgspec.structs.replace(decision, feature_coverage=encoded.feature_coverage)

    def _infer(
        self, graph: EncodedGraph, mask: list[bool], seed_mask: list[bool], blueprint_mask: list[bool]
    ) -> PolicyDecision:
        return decide(self._model, graph, mask, device=self._device, seed_mask=seed_mask, blueprint_mask=blueprint_mask)

    def _decision(
        self,
        observation: Observation,
        out: PolicyDecision,
        action: PolicyAction,
        slot: str | None,
        blueprint_ids: tuple[str, ...],
        blueprint_index: int | None,
    ) -> Decision:
        base = Decision(
            policy_risk=out.risk_score, log_prob=out.log_prob, value_estimate=out.value, reason=f"gnn_{action.value}"
        )
        if action is PolicyAction.NO_OP:
            return base
        if action is PolicyAction.LR_TWEAK:
            delta = max(-self._lr_delta_bound, min(self._lr_delta_bound, out.lr_delta * self._lr_delta_bound))
            return msgspec.structs.replace(base, action=action, lr_delta=delta)
        if action is PolicyAction.GERMINATE:
            blueprint = blueprint_ids[blueprint_index] if blueprint_index is not None else None
            return msgspec.structs.replace(
                base,
                action=action,
                target_slot=slot,
                blueprint_id=blueprint,
                blend=self._blend_config(out),
                initial_alpha=min(1.0, max(0.0, out.initial_alpha)),
            )
        seed: SeedState | None = next((s for s in observation.seeds if s.slot == slot), None)
        return msgspec.structs.replace(
            base, action=action, target_slot=slot, target_seed_id=seed.seed_id if seed is not None else None
        )

    def _blend_config(self, out: PolicyDecision) -> BlendConfig:
        mode = _BLEND_MODES[out.blend_method] if 0 <= out.blend_method < len(_BLEND_MODES) else None
        start, end = (min(1.0, max(0.0, v)) for v in out.schedule)
        return msgspec.structs.replace(
            self._blend,
            mode=mode if mode is not None else self._blend.mode,
            ramp_steps=max(1, round(out.ramp * self._max_ramp_steps)),
            window_start=min(start, end),
            window_end=max(start, end),
        )
