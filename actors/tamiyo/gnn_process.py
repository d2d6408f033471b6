"""RemoteGnnPolicy: the GNN policy's inference in a worker process, so on a CPU it does not share the GIL with training.

On a CPU both the training step and a decision are long chains of small torch calls; each call releases and takes
back the GIL, and two threads doing that at once hand it back and forth on every call. Measured here
(scripts/bench_overlap.py): a training step slows down 1.76x while decisions run on a thread of the same process,
1.10x while they run in another process. So with ``tamiyo.policy_process`` = "process" (the default on a CPU lane)
the policy lane's job sends the observation to a worker process and waits for the answer on a pipe, holding no GIL.

Every answer brings the worker's state back (encoded; the parent decodes it only when it is exported), and a state
imported in the parent (checked there by a local GnnPolicy over the same weights) travels with the next request. So
export_state / import_state answer locally and exactly, and a worker that dies loses nothing but the decision in
flight (the actor counts it as a failed inference and falls back). The parent does no tensor work per decision: its
lane thread only encodes the observation and waits.

Wire: msgspec msgpack over a multiprocessing Pipe; the weights go across once, as safetensors bytes whose SHA-256 the
worker checks against the digest before building the policy. Nothing is pickled but the pipe handle and those bytes
at spawn.
"""

from __future__ import annotations

import multiprocessing
import threading
from typing import TYPE_CHECKING, final

import msgspec
import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from actors.tamiyo.gnn_policy import GnnPolicy, GnnPolicyState, registries_for, weights_sha256
from actors.tamiyo.policy import Decision, Observation
from esper.nn.policy_gnn import TamiyoGNN, TamiyoGNNConfig
from esper.nn.policy_graph import GraphCaps
from schemas.control import BlendConfig

if TYPE_CHECKING:
    from multiprocessing.connection import Connection

__all__ = ["RemoteGnnPolicy"]

_READY_TIMEOUT_S = 120.0
_CLOSE_TIMEOUT_S = 10.0


class _Setup(msgspec.Struct, frozen=True):
    hidden: int
    gat_hidden: int
    heads: int
    dropout: float
    weights: bytes
    weights_digest: str
    blueprint_ids: tuple[str, ...]
    layer_types: tuple[str, ...]
    activations: tuple[str, ...]
    max_layers: int
    max_seeds: int
    max_blueprints: int
    normaliser_alpha: float
    version: str
    blend: BlendConfig
    max_ramp_steps: int
    lr_delta_bound: float
    num_threads: int | None


class _Decide(msgspec.Struct, frozen=True, tag="decide"):
    observation: Observation
    state: GnnPolicyState | None = None  # a state the parent imported since the last request


class _Close(msgspec.Struct, frozen=True, tag="close"):
    pass


class _Answer(msgspec.Struct, frozen=True):
    decision: Decision | None = None
    # The worker's state after the request, left encoded: the parent decodes it only when exported.
    state: bytes = b""  # msgpack of a GnnPolicyState; empty when there is none
    error: str | None = None


_REQUEST = msgspec.msgpack.Decoder(_Decide | _Close)
_ANSWER = msgspec.msgpack.Decoder(_Answer)
_STATE = msgspec.msgpack.Decoder(GnnPolicyState)
_SETUP = msgspec.msgpack.Decoder(_Setup)
_ENCODE = msgspec.msgpack.Encoder()


def _build(setup: _Setup, model: TamiyoGNN) -> GnnPolicy:
    return GnnPolicy(
        model,
        registries=registries_for(setup.blueprint_ids, setup.layer_types, setup.activations),
        weights_digest=setup.weights_digest,
        caps=GraphCaps(max_layers=setup.max_layers, max_seeds=setup.max_seeds, max_blueprints=setup.max_blueprints),
        normaliser_alpha=setup.normaliser_alpha,
        version=setup.version,
        blend=setup.blend,
        max_ramp_steps=setup.max_ramp_steps,
        lr_delta_bound=setup.lr_delta_bound,
    )


def _serve(conn: Connection, raw_setup: bytes) -> None:
    """The worker's main: build the policy from the setup, answer requests until Close or the pipe closes."""
    try:
        setup = _SETUP.decode(raw_setup)
        if setup.num_threads is not None:
            torch.set_num_threads(setup.num_threads)
        config = TamiyoGNNConfig(setup.hidden, setup.gat_hidden, setup.heads, setup.dropout)
        model = TamiyoGNN(config)
        model.load_state_dict(load_safetensors(setup.weights), strict=True)
        model.eval()
        if weights_sha256(model) != setup.weights_digest:
            raise ValueError("the weights received do not match their SHA-256 digest")
        policy = _build(setup, model)
    except Exception as err:  # noqa: BLE001  # any failure is reported to the parent, which raises it where it waits
        conn.send_bytes(_ENCODE.encode(_Answer(error=f"{type(err).__name__}: {err}")))
        return
    conn.send_bytes(_ENCODE.encode(_Answer(state=_ENCODE.encode(policy.export_state()))))
    while True:
        try:
            request = _REQUEST.decode(conn.recv_bytes())
        except EOFError:
            return
        if isinstance(request, _Close):
            return
        try:
            if request.state is not None:
                policy.import_state(request.state)
            with torch.inference_mode():
                decision = policy.decide(request.observation)
            answer = _Answer(decision=decision, state=_ENCODE.encode(policy.export_state()))
        except Exception as err:  # noqa: BLE001  # one bad decision is the parent's failed inference, not the worker's end
            answer = _Answer(error=f"{type(err).__name__}: {err}")
        conn.send_bytes(_ENCODE.encode(answer))


@final
class RemoteGnnPolicy:
    """A Policy whose decide runs in a worker process; state and version as the local ``policy`` it mirrors.

    Construction starts the worker (spawn) without waiting; ``wait_ready`` (the actor calls it on the policy lane at
    start) blocks until the worker has built its network; ``close`` stops it. decide blocks on the pipe, so call it
    from the policy lane, never the event loop.
    """

    def __init__(
        self,
        policy: GnnPolicy,
        model: TamiyoGNN,
        *,
        blueprint_ids: tuple[str, ...],
        layer_types: tuple[str, ...],
        activations: tuple[str, ...],
        caps: GraphCaps,
        normaliser_alpha: float,
        blend: BlendConfig,
        max_ramp_steps: int,
        lr_delta_bound: float,
        num_threads: int | None,
    ) -> None:
        """Args: ``policy`` is the parent's GnnPolicy over ``model`` (a CPU TamiyoGNN); the rest is what it was built
        with, so the worker builds an identical one. Raises ValueError: the model is not on the CPU."""
        if any(p.device.type != "cpu" for p in model.parameters()):
            raise ValueError("RemoteGnnPolicy: the worker process runs on the CPU; the model is elsewhere")
        self._local = policy
        cfg = model.config
        setup = _Setup(
            hidden=cfg.hidden,
            gat_hidden=cfg.gat_hidden,
            heads=cfg.heads,
            dropout=cfg.dropout,
            weights=save_safetensors({k: v.detach().contiguous() for k, v in model.state_dict().items()}),
            weights_digest=policy.export_state().weights_sha256,
            blueprint_ids=blueprint_ids,
            layer_types=layer_types,
            activations=activations,
            max_layers=caps.max_layers,
            max_seeds=caps.max_seeds,
            max_blueprints=caps.max_blueprints,
            normaliser_alpha=normaliser_alpha,
            version=policy.version,
            blend=blend,
            max_ramp_steps=max_ramp_steps,
            lr_delta_bound=lr_delta_bound,
            num_threads=num_threads,
        )
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self._process = context.Process(
            target=_serve, args=(child, _ENCODE.encode(setup)), name="esper-tamiyo-gnn", daemon=True
        )
        self._process.start()
        child.close()
        self._lock = threading.Lock()
        self._ready = False
        self._closed = False
        self._state_raw = _ENCODE.encode(policy.export_state())
        self._pending: GnnPolicyState | None = None

    @property
    def version(self) -> str:
        return self._local.version

    @property
    def pid(self) -> int | None:
        return self._process.pid

    def export_state(self) -> GnnPolicyState:
        """The state after the last decision (or the last import); between decisions only, as GnnPolicy's."""
        with self._lock:
            return self._pending if self._pending is not None else _STATE.decode(self._state_raw)

    def import_state(self, state: GnnPolicyState) -> None:
        """As GnnPolicy.import_state: checked here (ValueError, nothing changes); the worker gets it with the next
        request."""
        with self._lock:
            self._local.import_state(state)
            self._pending = state
            self._state_raw = _ENCODE.encode(state)

    def wait_ready(self) -> None:
        """Block until the worker has built its network. Raises RuntimeError: it failed or died first."""
        with self._lock:
            self._await_ready()

    def decide(self, observation: Observation) -> Decision:
        """One inference in the worker. Raises RuntimeError: the worker failed, died or is closed."""
        with self._lock:
            self._await_ready()
            answer = self._call(_Decide(observation=observation, state=self._pending))
            assert answer.decision is not None
            assert answer.state
            self._pending = None
            self._state_raw = answer.state
            return answer.decision

    def close(self) -> None:
        """Stop the worker (asked first, terminated if it does not leave in time). Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                self._conn.send_bytes(_ENCODE.encode(_Close()))
            except (OSError, ValueError):
                pass  # already gone
            self._process.join(_CLOSE_TIMEOUT_S)
            if self._process.is_alive():
                self._process.terminate()
                self._process.join(_CLOSE_TIMEOUT_S)
            self._conn.close()

    def _await_ready(self) -> None:
        if self._ready:
            return
        if self._closed:
            raise RuntimeError("tamiyo gnn worker: closed")
        if not self._conn.poll(_READY_TIMEOUT_S):
            raise RuntimeError(f"tamiyo gnn worker: not ready after {_READY_TIMEOUT_S:.0f} s")
        answer = self._receive()
        if not answer.state:
            raise RuntimeError("tamiyo gnn worker: malformed ready message")
        self._ready = True

    def _call(self, request: _Decide) -> _Answer:
        if self._closed:
            raise RuntimeError("tamiyo gnn worker: closed")
        try:
            self._conn.send_bytes(_ENCODE.encode(request))
        except (OSError, ValueError) as err:
            raise RuntimeError(f"tamiyo gnn worker: cannot send ({err}); exit code {self._process.exitcode}") from err
        return self._receive()

    def _receive(self) -> _Answer:
        try:
            answer = _ANSWER.decode(self._conn.recv_bytes())
        except (EOFError, OSError) as err:
            self._process.join(1.0)
            raise RuntimeError(f"tamiyo gnn worker died (exit code {self._process.exitcode})") from err
        if answer.error is not None:
            raise RuntimeError(f"tamiyo gnn worker: {answer.error}")
        return answer
