"""The Tamiyo child spec the composition root calls: every dependency is an argument, nothing is looked up."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeAlias, final

from actors.tamiyo.actor import TamiyoActor
from actors.tamiyo.every_k import EveryKConfig, EveryKPolicy
from actors.tamiyo.field_reports import WAL_FILENAME, FieldReportWal
from actors.tamiyo.heuristic import HeuristicConfig, HeuristicPolicy
from actors.tamiyo.horizon import GrowthCutoff
from actors.tamiyo.outcomes import OutcomeSettings
from actors.tamiyo.risk import RiskThresholds
from actors.tamiyo.state_journal import DEFAULT_KEEP, TamiyoStateJournal
from esper.nn.policy_contract import TamiyoGNNConfig
from esper.runtime.child_spec import ChildSpec, RestartType
from esper.runtime.errors import ConfigError
from esper.runtime.ref import ActorRef
from schemas.boundary import Decision
from schemas.control import BlendConfig

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

    from actors.tamiyo.gnn_policy import GnnPolicy
    from actors.tamiyo.gnn_process import RemoteGnnPolicy
    from actors.tamiyo.gnn_state import GnnPolicyState
    from actors.tamiyo.policy import BlueprintCandidate, Policy
    from actors.tamiyo.state import TamiyoState
    from esper.nn.policy_contract import PolicyModel
    from esper.nn.policy_gnn import TamiyoGNN
    from esper.runtime.clock import Clock
    from esper.runtime.events import EventSink
    from esper.runtime.lanes import Lane
    from schemas.config import SimicConfig, TamiyoConfig
    from schemas.config_platform import SecurityConfig

_FILE_VERSION = "file-"  # a checkpoint file's policy version: this and the file's SHA-256 prefix

DecisionOutlet: TypeAlias = Callable[[Decision], Awaitable[None]]
"""Where decisions go: Kasmina's ``ref.tell`` (any ref whose inbox includes Decision) or a test's queue ``put``."""


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class GnnSettings:
    """How the GNN policy is built when ``tamiyo.policy = "gnn"``.

    Attributes:
        model: a loaded TamiyoGNN (e.g. a deployed checkpoint); None builds fresh weights from ``model_config`` and
            ``seed`` (an untrained network, which favours NO_OP).
        layer_types / activations: the categorical registries' names besides the blueprint ids (host layer types
            and activation names), so the registries, and their checkpointed digests, are deterministic.
        version: the policy version reported in commands and field reports.
        max_ramp_steps / lr_delta_bound: scales of the ramp and lr-delta heads.
    """

    model: TamiyoGNN | None = None
    model_config: TamiyoGNNConfig = field(default_factory=TamiyoGNNConfig)
    seed: int = 0
    layer_types: tuple[str, ...] = ()
    activations: tuple[str, ...] = ()
    version: str = "gnn-0.0.0"
    max_ramp_steps: int = 100
    lr_delta_bound: float = 0.1


def tamiyo_spec(
    *,
    run_id: str,
    config: TamiyoConfig,
    security: SecurityConfig,
    simic: SimicConfig,
    signing_key: bytes,
    key_id: str,
    outlet: ActorRef[Decision] | DecisionOutlet,
    policy_lane: Lane,
    clock: Clock,
    wall_clock: Clock,
    sink: EventSink,
    run_dir: Path,
    blueprints: Sequence[BlueprintCandidate],
    heuristic: HeuristicConfig | None = None,
    gnn: GnnSettings | None = None,
    policy: Policy | None = None,
    state: TamiyoState | None = None,
    on_state: Callable[[TamiyoState], None] | None = None,
    state_journal: Path | None = None,
    state_journal_keep: int = DEFAULT_KEEP,
    fsync: bool = True,
    name: str = "tamiyo",
    mailbox_capacity: int = 1024,
    restart: RestartType = "permanent",
    shutdown_deadline_s: float = 5.0,
) -> ChildSpec:
    """The child spec of the Tamiyo actor.

    The GNN (weights and digest) is built once, here; each incarnation gets fresh policy objects and a fresh WAL
    handle, and starts from the state the previous incarnation left in the spec's cell (or from ``state``).

    Args:
        run_id: the run; packets of other runs are refused and command ids are derived from it.
        config: the policy choice, deadline, fallback, risk thresholds, conservative mode, field-report window.
        security: ``command_freshness_s`` goes into each command's security block.
        simic: the reward lambdas (``reward_lambda_size``, ``reward_lambda_critical``).
        signing_key / key_id: the run's HMAC key for command signatures (from the composition root).
        outlet: Kasmina's ref, or any coroutine function taking a schemas.boundary.Decision.
        policy_lane: the lane the configured policy decides on; its device is the GNN's device.
        clock: monotonic time (deadlines, breaker, latencies); wall_clock: commands' issued_at (a WallClock).
        sink: telemetry events; must not block.
        run_dir: ``runs/<run-id>``; field reports go to ``field_reports.wal`` in it (the directory must exist).
        blueprints: the candidate blueprints as plain data (Karn's descriptors reduced to BlueprintCandidate).
        heuristic: the heuristic's knobs (default: from ``config``); also the fallback's, and every_k's budgets,
            blend and growth horizon; its horizon binds every policy's germinations (the GNN's too).
        gnn: how to build the GNN policy (default GnnSettings()).
        policy: use this policy instead of building the configured one (a test double or a swapped-in policy);
            it is reported under the name ``config.policy``.
        state: a TamiyoState to resume from.
        on_state: receives the state each incarnation exports when it stops (event loop; e.g. to persist it for
            ``--resume``); must not block for long.
        state_journal: where the state after every epoch-end packet is journaled (``TamiyoStateJournal``, so a
            resume after a crash starts from the state at its checkpoint); None: not journaled.
        state_journal_keep: the entries it keeps (see ``entries_to_keep``).
        fsync: whether each WAL append waits for the disk.

    Raises:
        ValueError: ``tamiyo.gnn_checkpoint`` is set without a loaded model (checkpoint loading is not wired here).
    """
    candidates = tuple(blueprints)
    heuristic_config = heuristic if heuristic is not None else HeuristicConfig.from_config(config)
    send: DecisionOutlet = outlet.tell if isinstance(outlet, ActorRef) else outlet
    cell: list[TamiyoState] = [state] if state is not None else []
    # The first incarnation of a resume cuts the WAL back to the reports its state had written; later ones append.
    wal_keep: list[int | None] = [state.outcomes.reports if state is not None else None]
    make_gnn = _gnn_factory(config, gnn, candidates, policy_lane) if config.policy == "gnn" and policy is None else None
    if make_gnn is not None and state is not None and state.gnn is not None:
        _check_same_weights(config, state.gnn, make_gnn)
    # Every policy's germinations are held to the horizon its own kind checks (the GNN checks none itself): kept
    # means fossilized after the probation epochs, but for every_k, which never asks to fossilize.
    cutoff = GrowthCutoff(
        horizon=heuristic_config.horizon,
        probation_epochs=None if config.policy == "every_k" else heuristic_config.fossilize_hold_epochs,
    )
    outcomes = OutcomeSettings(
        window_epochs=config.field_report_window_epochs,
        lambda_size=simic.reward_lambda_size,
        lambda_critical=simic.reward_lambda_critical,
    )

    def remember(exported: TamiyoState) -> None:
        cell[:] = [exported]
        if on_state is not None:
            on_state(exported)

    def configured() -> Policy:
        if policy is not None:
            return policy
        if make_gnn is not None:
            return make_gnn()
        if config.policy == "every_k":
            return EveryKPolicy(
                EveryKConfig(
                    every_k_epochs=config.every_k_epochs,
                    max_live_seeds=heuristic_config.max_live_seeds,
                    max_added_parameters=heuristic_config.max_added_parameters,
                    blend=heuristic_config.blend,
                    horizon=heuristic_config.horizon,
                )
            )
        return HeuristicPolicy(heuristic_config)

    def build() -> TamiyoActor:
        return TamiyoActor(
            run_id=run_id,
            policy=configured(),
            policy_name=config.policy,
            fallback=HeuristicPolicy(heuristic_config),
            lane=policy_lane,
            clock=clock,
            wall_clock=wall_clock,
            sink=sink,
            outlet=send,
            signing_key=signing_key,
            key_id=key_id,
            blueprints=candidates,
            decision_budget_ms=config.decision_budget_ms,
            deadline_fallback=config.deadline_fallback,
            breaker=config.inference_breaker,
            risk=RiskThresholds.from_config(config),
            conservative_exit_clean_epochs=config.conservative_exit_clean_epochs,
            outcomes=outcomes,
            wal=FieldReportWal(run_dir / WAL_FILENAME, fsync=fsync, keep=wal_keep.pop() if wal_keep else None),
            state_journal=(
                TamiyoStateJournal(state_journal, keep=state_journal_keep) if state_journal is not None else None
            ),
            freshness_s=security.command_freshness_s,
            growth_cutoff=cutoff,
            state=cell[0] if cell else None,
            on_stop_state=remember,
            capacity=mailbox_capacity,
        )

    return ChildSpec(name, build, restart=restart, shutdown_deadline_s=shutdown_deadline_s)


def _check_same_weights(config: TamiyoConfig, resumed: GnnPolicyState, make_gnn: _GnnFactory) -> None:
    """A resume's GNN state holds the digest of the weights it decided with: other weights would decide another run
    (and failed the actor's start, exit 1, naming no setting).

    Raises:
        ConfigError: naming tamiyo.gnn_checkpoint and both weights as the user knows them (the file's SHA-256
            prefix, as tamiyo_gnn_weights_loaded, the policy version and sha256sum show it), then the tensor digests
            that are compared.
    """
    if make_gnn.weights_digest != resumed.weights_sha256:
        where = "tamiyo.gnn_checkpoint"
        if config.gnn_checkpoint is not None:
            where += f" = {config.gnn_checkpoint!r}"
        given, run = _known_as(make_gnn.version), _known_as(resumed.version)
        raise ConfigError(
            f"{where}: these are not the weights the run being resumed decided with (given {given}, the run's {run};"
            f" tensor digests {make_gnn.weights_digest[:12]} and {resumed.weights_sha256[:12]}); a resume continues"
            " with the same policy: give the tamiyo.gnn_checkpoint its config.toml names"
        )


def _known_as(version: str) -> str:
    if version.startswith(_FILE_VERSION):
        return f"the file with SHA-256 {version.removeprefix(_FILE_VERSION)}..."
    return f"policy version {version} (no tamiyo.gnn_checkpoint)"


@final
@dataclass(frozen=True)
class _GnnFactory:
    """Builds the GNN policy of an incarnation; ``weights_digest`` is its network's (``weights_sha256``)."""

    make: Callable[[], GnnPolicy | RemoteGnnPolicy]
    weights_digest: str
    version: str

    def __call__(self) -> GnnPolicy | RemoteGnnPolicy:
        return self.make()


def _gnn_factory(
    config: TamiyoConfig, settings: GnnSettings | None, candidates: tuple[BlueprintCandidate, ...], lane: Lane
) -> _GnnFactory:
    # Imported here, so a run with another policy never loads PyTorch Geometric.
    from actors.tamiyo.gnn_policy import GnnPolicy, registries_for, weights_sha256
    from actors.tamiyo.gnn_process import RemoteGnnPolicy
    from esper.nn.policy_gnn import build_tamiyo_gnn
    from esper.nn.policy_graph import GraphCaps

    gnn = settings if settings is not None else GnnSettings()
    version = gnn.version
    loaded = None
    if gnn.model is None and config.gnn_checkpoint is not None:
        from actors.tamiyo.gnn_weights import load_gnn_weights

        loaded, file_digest = load_gnn_weights(config.gnn_checkpoint, gnn.model_config)
        version = f"{_FILE_VERSION}{file_digest[:12]}"  # commands and field reports say which weights decided
    on_cpu = lane.device.type == "cpu"
    if config.policy_process == "process" and not on_cpu:
        raise ValueError(f"tamiyo.policy_process = 'process' needs a CPU policy lane, this one is on {lane.device}")
    in_worker = config.policy_process == "process" or (config.policy_process == "auto" and on_cpu)
    if gnn.model is not None:
        model = gnn.model
    elif loaded is not None:
        model = loaded.to(lane.device)
    else:
        model = build_tamiyo_gnn(gnn.model_config, device=lane.device, seed=gnn.seed)
    model.eval()
    digest = weights_sha256(model)
    decider: PolicyModel = model
    if config.compile and not in_worker:
        from esper.nn.policy_decide import maybe_compile

        # On CUDA only (a CPU policy runs eager, in its worker process by default); the first compiler failure
        # switches to the eager model for good.
        decider, _ = maybe_compile(model, lane.device)
    blueprint_ids = tuple(bp.blueprint_id for bp in candidates)
    registries = registries_for(blueprint_ids, gnn.layer_types, gnn.activations)
    caps = GraphCaps(max_layers=config.max_layer_nodes)
    blend = BlendConfig()

    def make() -> GnnPolicy | RemoteGnnPolicy:
        local = GnnPolicy(
            decider,
            registries=registries,
            weights_digest=digest,
            device=lane.device,
            caps=caps,
            normaliser_alpha=config.normaliser_alpha,
            version=version,
            blend=blend,
            max_ramp_steps=gnn.max_ramp_steps,
            lr_delta_bound=gnn.lr_delta_bound,
        )
        if not in_worker:
            return local
        # A worker process per incarnation: on a CPU, inference on a thread would contend for the GIL with training.
        return RemoteGnnPolicy(
            local,
            model,
            blueprint_ids=blueprint_ids,
            layer_types=tuple(gnn.layer_types),
            activations=tuple(gnn.activations),
            caps=caps,
            normaliser_alpha=config.normaliser_alpha,
            blend=blend,
            max_ramp_steps=gnn.max_ramp_steps,
            lr_delta_bound=gnn.lr_delta_bound,
            num_threads=lane.num_threads,
            silence_s=config.policy_worker_silence_s,
        )

    return _GnnFactory(make, digest, version)
