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

The worker is ``python -m actors.tamiyo.gnn_worker_main`` (a fresh interpreter, so a user's unguarded script is never
imported again, as multiprocessing's spawn would). Wire: length-prefixed msgspec msgpack frames on its stdin and
stdout (its own prints go to stderr); the weights go across once, in the first frame, as safetensors bytes whose
SHA-256 the worker checks against the digest before building the policy. Nothing is pickled.
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, TYPE_CHECKING, final

import msgspec
import structlog
from safetensors.torch import save as save_safetensors

from actors.tamiyo.gnn_state import GnnPolicyBase, GnnPolicyState, PolicyRestarting, PolicyWorker
from actors.tamiyo.gnn_wire import ANSWER, ENCODE, STATE, Answer, Close, Decide, Setup, recv, send

if TYPE_CHECKING:
    from actors.tamiyo.gnn_policy import GnnPolicy
    from actors.tamiyo.policy import Decision, Observation
    from esper.nn.policy_gnn import TamiyoGNN
    from esper.nn.policy_graph import GraphCaps
    from schemas.control import BlendConfig

__all__ = ["RemoteGnnPolicy"]

_READY_TIMEOUT_S = 120.0
_CLOSE_TIMEOUT_S = 10.0
_MAX_RESTARTS = 3  # a worker that keeps dying (a crash on every input) is left dead: the fallback decides
# A restarted worker imports torch and builds its network (seconds); one not ready after this is hung in its start-up
# and is killed, so another is started at once (the fallback decides meanwhile, and says so).
_RESTART_READY_S = 60.0
_WORKER = "actors.tamiyo.gnn_worker_main"
_log = structlog.get_logger("actors.tamiyo")


def _send_quietly(out: IO[bytes], payload: bytes) -> None:
    # A worker that dies while reading its setup is found dead by the next decide, which restarts it.
    try:
        send(out, payload)
    except (OSError, ValueError):
        pass


def _spawn() -> tuple[subprocess.Popen[bytes], IO[bytes], IO[bytes]]:
    # A fresh interpreter running the worker module (not multiprocessing): nothing of the parent's __main__ is
    # re-imported, so an unguarded user script that embeds Esper does not start itself again. Its own session: a
    # terminal's Ctrl-C goes to the whole foreground process group, and the worker must outlive it while the run stops
    # gracefully (Tamiyo still decides on the packets queued before the stop); it ends when told to, or at the end of
    # its input when this process dies.
    # -P: the working directory is not put on the path, so a local package named like ours (``actors``) is never
    # imported in its place; this checkout's root goes first on PYTHONPATH instead.
    root = str(Path(__file__).resolve().parents[2])
    inherited = os.environ.get("PYTHONPATH")
    env = {**os.environ, "PYTHONPATH": root if not inherited else f"{root}{os.pathsep}{inherited}"}
    process = subprocess.Popen(
        [sys.executable, "-P", "-m", _WORKER],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        bufsize=0,
        start_new_session=True,
    )
    assert process.stdin is not None
    assert process.stdout is not None
    return process, process.stdin, process.stdout


@final
class RemoteGnnPolicy(GnnPolicyBase, PolicyWorker):
    """A Policy whose decide runs in a worker process; state and version as the local ``policy`` it mirrors.

    Construction starts the worker process without waiting; ``wait_ready`` (the actor calls it on the policy lane at
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
        silence_s: float = 0.5,
    ) -> None:
        """Args: ``policy`` is the parent's GnnPolicy over ``model`` (a CPU TamiyoGNN); ``silence_s``
        (tamiyo.policy_worker_silence_s) how long a worker may leave a decision unanswered before it counts as hung
        (stopped, swapped out, deadlocked) and is killed, to be started again like a dead one; the rest is what
        ``policy`` was built with, so the worker builds an identical one.

        Raises:
            ValueError: the model is not on the CPU, or ``silence_s`` is not > 0.
        """
        if any(p.device.type != "cpu" for p in model.parameters()):
            raise ValueError("RemoteGnnPolicy: the worker process runs on the CPU; the model is elsewhere")
        if not silence_s > 0:
            raise ValueError(f"RemoteGnnPolicy: silence_s must be > 0, got {silence_s}")
        self._silence_s = silence_s
        self._local = policy
        initial = policy.export_state()
        cfg = model.config
        setup = Setup(
            hidden=cfg.hidden,
            gat_hidden=cfg.gat_hidden,
            heads=cfg.heads,
            dropout=cfg.dropout,
            weights=save_safetensors({k: v.detach().contiguous() for k, v in model.state_dict().items()}),
            weights_digest=initial.weights_sha256,
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
        self._process, self._to_worker, self._from_worker = _spawn()
        self._setup_message = ENCODE.encode(setup)
        self._setup = self._setup_message  # sent once per worker, at its first wait
        self._lock = threading.Lock()
        self._setup_sender: threading.Thread | None = None
        self._ready = False
        self._closed = False
        self._aborted = False
        self._state_raw = ENCODE.encode(initial)
        self._pending: GnnPolicyState | None = None
        self._restarted_at = 0.0
        self._requests = 0
        self.restarts = 0
        self.hangs = 0

    @property
    def version(self) -> str:
        return self._local.version

    @property
    def silence_s(self) -> float:
        """How long a decision may go unanswered before the worker is killed as hung."""
        return self._silence_s

    @property
    def pid(self) -> int | None:
        return self._process.pid

    def export_state(self) -> GnnPolicyState:
        """The state after the last decision (or the last import); between decisions only, as GnnPolicy's."""
        with self._lock:
            return self._pending if self._pending is not None else STATE.decode(self._state_raw)

    def import_state(self, state: GnnPolicyState) -> None:
        """As GnnPolicy.import_state: checked here (ValueError, nothing changes); the worker gets it with the next
        request."""
        with self._lock:
            self._local.import_state(state)
            self._pending = state
            self._state_raw = ENCODE.encode(state)

    def wait_ready(self) -> None:
        """Block until the worker has built and warmed up its network (a dead one is restarted first, as decide
        would). Raises RuntimeError: it failed or died first."""
        with self._lock:
            self._restart_if_dead()
            self._await_ready()

    def warm_up(self) -> None:
        """The worker warms itself up before it reports ready, so this waits for that."""
        self.wait_ready()

    def decide(self, observation: Observation) -> Decision:
        """One inference in the worker.

        A worker found dead (killed, out of memory) is started again from the last state the parent holds, at most
        ``_MAX_RESTARTS`` times per policy (per start of Tamiyo); until the new one is ready each decide fails at once
        (the actor's fallback decides) rather than hold the policy lane for its start-up.

        Raises:
            PolicyRestarting: the worker died and its successor is not ready yet.
            RuntimeError: the worker failed, died, or is closed.
        """
        with self._lock:
            self._restart_if_dead()
            if self.restarts and not self._ready and time.monotonic() - self._restarted_at > _RESTART_READY_S:
                self._process.kill()  # hung in its start-up: another is started at once
                self._process.wait(_CLOSE_TIMEOUT_S)
                self.hangs += 1
                _log.warning("tamiyo_gnn_worker_hung", actor="tamiyo", silent_s=_RESTART_READY_S, starting=True)
                self._restart_found_dead()
                raise PolicyRestarting(f"tamiyo gnn worker not ready {_RESTART_READY_S:.0f} s after a restart; killed")
            self._await_ready(0.0 if self.restarts else None)
            try:
                answer = self._call(Decide(observation=observation, state=self._pending))
            except RuntimeError:
                self._restart_found_dead()
                raise
            # Not asserts: an AssertionError crashed the actor (and restarted the trainer with it), and under
            # ``python -O`` the decide returned None.
            if answer.decision is None or not answer.state:
                missing = "decision" if answer.decision is None else "state"
                raise RuntimeError(f"tamiyo gnn worker: malformed answer (no {missing})")
            self._pending = None
            self._state_raw = answer.state
            return answer.decision

    def abort_start(self) -> None:
        """Kill the worker if it is not ready yet, and start no other (PolicyWorker.abort_start). Takes no lock: the
        lane's wait_ready holds it while it waits for the worker, whose end of file it then sees at once."""
        self._aborted = True
        if not self._ready:
            self._process.kill()

    def close(self) -> None:
        """Stop the worker (asked first, terminated if it does not leave in time). Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            sender = self._setup_sender
            if not self._ready or (sender is not None and sender.is_alive()):
                # A worker still starting holds no state, so it is stopped outright rather than asked: one stopped in
                # its start-up (SIGSTOP, swapped out) would hold the close for the whole timeout, and one still
                # reading its setup would take a close frame written now as part of the setup frame (neither write
                # is atomic past PIPE_BUF) and fail on garbage with a traceback; the sender meets a broken pipe.
                self._process.kill()
            else:
                try:
                    send(self._to_worker, ENCODE.encode(Close()))
                except (OSError, ValueError):
                    pass  # already gone
            try:
                self._process.wait(_CLOSE_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(_CLOSE_TIMEOUT_S)
            if sender is not None:
                sender.join(_CLOSE_TIMEOUT_S)
            self._to_worker.close()
            self._from_worker.close()

    def _restart_found_dead(self) -> None:
        """Start the next worker now that this decision found its worker dead or killed it as hung: waiting for the
        next decide left it dead while the inference breaker was open (30 s), and that decide, a half-open probe, then
        paid for the start. The failed decision is late already; one past the restart limit stays dead."""
        try:
            self._restart_if_dead()
        except RuntimeError:
            pass  # the next decide raises it again

    def _restart_if_dead(self) -> None:
        if self._closed or self._process.poll() is None:
            return
        if self._aborted:
            raise RuntimeError("tamiyo gnn worker: stopped while it started (the run is stopping)")
        code = self._process.returncode
        if self.restarts >= _MAX_RESTARTS:
            raise RuntimeError(
                f"tamiyo gnn worker died (exit code {code}) after {self.restarts} restarts; not restarted again"
            )
        self.restarts += 1
        self._to_worker.close()
        self._from_worker.close()
        self._process, self._to_worker, self._from_worker = _spawn()
        # The setup (the network's weights, megabytes) fills the pipe until the new worker has imported torch and
        # reads it: sent from a thread of its own so that no decide waits for that start-up.
        self._setup_sender = threading.Thread(
            target=_send_quietly, args=(self._to_worker, self._setup_message), name="esper-gnn-setup", daemon=True
        )
        self._setup_sender.start()
        self._setup = b""
        self._ready = False
        self._restarted_at = time.monotonic()
        self._pending = STATE.decode(self._state_raw)  # the new worker decides on from the last state it returned
        _log.warning(
            "tamiyo_gnn_worker_restarted",
            actor="tamiyo",
            exit_code=code,
            restarts=self.restarts,
            max_restarts=_MAX_RESTARTS,
        )

    def _await_ready(self, timeout_s: float | None = None) -> None:
        """Wait for the worker's ready message: up to ``_READY_TIMEOUT_S`` (None), or ``timeout_s`` (decide's look at
        a restarted worker, 0: the fallback decides meanwhile)."""
        if self._ready:
            return
        if self._closed:
            raise RuntimeError("tamiyo gnn worker: closed")
        if self._setup:
            # The setup (the weights, megabytes) fills the pipe until the worker reads it: written from a thread of
            # its own, so that a worker stopped before it reads (SIGSTOP, swapped out) cannot hold the start past
            # the ready timeout. A worker that dies meanwhile shows as an end of file below.
            self._setup_sender = threading.Thread(
                target=_send_quietly, args=(self._to_worker, self._setup), name="esper-gnn-setup", daemon=True
            )
            self._setup_sender.start()
            self._setup = b""
        limit = _READY_TIMEOUT_S if timeout_s is None else timeout_s
        ready, _, _ = select.select([self._from_worker], [], [], limit)
        if not ready:
            if timeout_s is not None:
                raise PolicyRestarting(
                    f"tamiyo gnn worker died (restart {self.restarts} of {_MAX_RESTARTS} not ready yet)"
                )
            self._process.kill()  # hung in its start-up: it must not stay behind (nor the setup's writer)
            self._process.wait(_CLOSE_TIMEOUT_S)
            raise RuntimeError(f"tamiyo gnn worker: not ready after {_READY_TIMEOUT_S:.0f} s; killed")
        try:
            answer = self._receive()
        except RuntimeError as err:
            if self._aborted:
                raise RuntimeError("tamiyo gnn worker: stopped while it started (the run is stopping)") from err
            raise
        if not answer.state:
            raise RuntimeError("tamiyo gnn worker: malformed ready message")
        self._ready = True

    def _call(self, request: Decide) -> Answer:
        if self._closed:
            raise RuntimeError("tamiyo gnn worker: closed")
        self._requests += 1
        request = msgspec.structs.replace(request, request=self._requests)
        try:
            send(self._to_worker, ENCODE.encode(request))
        except (OSError, ValueError) as err:
            raise RuntimeError(f"tamiyo gnn worker: cannot send ({err}); exit code {self._process.poll()}") from err
        ready, _, _ = select.select([self._from_worker], [], [], self._silence_s)
        if not ready:
            self._process.kill()  # decide starts another at once
            self._process.wait(_CLOSE_TIMEOUT_S)
            self.hangs += 1
            _log.warning("tamiyo_gnn_worker_hung", actor="tamiyo", silent_s=self._silence_s, pid=self._process.pid)
            raise RuntimeError(f"tamiyo gnn worker: no answer within {self._silence_s} s; killed, to be restarted")
        return self._receive(request.request)

    def _receive(self, request: int = 0) -> Answer:
        """The worker's answer to ``request`` (0: its ready message).

        Raises:
            RuntimeError: the worker died, stalled mid-answer, reported a failure, or answered another request (a
                frame too many, or one lost: every later answer would be paired with the wrong observation, so it is
                killed, and the decide starts another at once, as for a dead one).
        """
        try:
            answer = ANSWER.decode(recv(self._from_worker, self._silence_s))
        except TimeoutError as err:
            self._process.kill()  # decide starts another at once
            self._process.wait(_CLOSE_TIMEOUT_S)
            self.hangs += 1
            _log.warning("tamiyo_gnn_worker_hung", actor="tamiyo", silent_s=self._silence_s, pid=self._process.pid)
            raise RuntimeError(f"tamiyo gnn worker: stopped in the middle of an answer ({err}); killed") from err
        except (EOFError, OSError) as err:
            try:
                code = self._process.wait(1.0)
            except subprocess.TimeoutExpired:
                code = None
            raise RuntimeError(f"tamiyo gnn worker died (exit code {code})") from err
        if answer.request != request:
            self._process.kill()
            self._process.wait(_CLOSE_TIMEOUT_S)
            _log.warning(
                "tamiyo_gnn_worker_desynced",
                actor="tamiyo",
                request=request,
                answered=answer.request,
                pid=self._process.pid,
            )
            raise RuntimeError(
                f"tamiyo gnn worker: answered request {answer.request} while request {request} waited; killed, to be"
                " restarted"
            )
        if answer.error is not None:
            raise RuntimeError(f"tamiyo gnn worker: {answer.error}")
        return answer
