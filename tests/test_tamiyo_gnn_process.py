"""RemoteGnnPolicy: the GNN's inference in a real worker process decides and evolves its state exactly as in-process."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO, TYPE_CHECKING

import pytest
import structlog
import torch

from actors.tamiyo import gnn_process, gnn_wire
from actors.tamiyo.gnn_policy import GnnPolicy, registries_for, weights_sha256
from actors.tamiyo.gnn_process import RemoteGnnPolicy
from actors.tamiyo.gnn_state import PolicyRestarting
from actors.tamiyo.observe import build_observation
from esper.nn.policy_contract import ACTION_NAMES
from esper.nn.policy_gnn import TamiyoGNNConfig, build_tamiyo_gnn
from esper.nn.policy_graph import GraphCaps
from esper.runtime.events import RecordingSink
from schemas.config import TamiyoConfig
from schemas.control import BlendConfig
from schemas.domain_enums import PolicyAction
from schemas.enums import SeedLifecycleStage
from schemas.state import SeedState
from tests._tamiyo_harness import BLUEPRINTS, TamiyoHarness, dormant, packet

if TYPE_CHECKING:
    from collections.abc import Iterator

    from actors.tamiyo.policy import Observation
    from esper.nn.policy_gnn import TamiyoGNN

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

SMALL = TamiyoGNNConfig(hidden=16, gat_hidden=8, heads=2, dropout=0.0)
IDS = tuple(bp.blueprint_id for bp in BLUEPRINTS)


def _model(favour: PolicyAction | None = None) -> TamiyoGNN:
    model = build_tamiyo_gnn(SMALL, seed=7)
    if favour is not None:
        with torch.no_grad():
            model.action_head.bias[ACTION_NAMES.index(favour.name)] = 3.0
    return model.eval()


def _local(model: TamiyoGNN, digest: str | None = None) -> GnnPolicy:
    return GnnPolicy(
        model,
        registries=registries_for(IDS, ("conv1d",), ("relu",)),
        weights_digest=digest if digest is not None else weights_sha256(model),
    )


def _remote(model: TamiyoGNN, local: GnnPolicy, *, silence_s: float = 0.5) -> RemoteGnnPolicy:
    return RemoteGnnPolicy(
        local,
        model,
        blueprint_ids=IDS,
        layer_types=("conv1d",),
        activations=("relu",),
        caps=GraphCaps(),
        normaliser_alpha=0.1,
        blend=BlendConfig(),
        max_ramp_steps=100,
        lr_delta_bound=0.1,
        num_threads=1,
        silence_s=silence_s,
    )


def _observations() -> Iterator[Observation]:
    for step in range(1, 9):
        occupied = SeedState(
            slot="s0", stage=SeedLifecycleStage.BLENDING, layer_depth=0, seed_id="seed-a", blueprint_id="bp-small"
        )
        seeds = (occupied, dormant("s1")) if step % 2 else (dormant("s0"), dormant("s1"))
        yield build_observation(packet(step * 10, step, validation_loss=1.0 / step, seeds=seeds), BLUEPRINTS)


def test_a_warm_up_changes_no_decision_and_no_state() -> None:
    """warm_up (run at the actor's start) builds the fused weights on a throwaway graph and leaves the policy as is."""
    model = _model(PolicyAction.GERMINATE)
    cold, warm = _local(model), _local(model)
    before = warm.export_state()
    warm.warm_up()
    assert warm.export_state() == before
    for observation in _observations():
        assert warm.decide(observation) == cold.decide(observation)
    assert warm.export_state() == cold.export_state()


def test_remote_decisions_and_states_equal_the_in_process_ones() -> None:
    model = _model(PolicyAction.GERMINATE)
    reference = _local(model)
    remote = _remote(model, _local(model))
    try:
        remote.wait_ready()
        assert remote.pid is not None
        assert remote.pid != os.getpid()
        for observation in _observations():
            assert remote.decide(observation) == reference.decide(observation)
            assert remote.export_state() == reference.export_state()
        assert remote.export_state().decisions == 8
        # A state imported in the parent is the one the worker decides from next.
        restarted = _remote(model, _local(model))
        try:
            restarted.import_state(remote.export_state())
            last = build_observation(packet(100, 10, validation_loss=0.05), BLUEPRINTS)
            assert restarted.decide(last) == remote.decide(last)
        finally:
            restarted.close()
    finally:
        remote.close()
    remote.close()  # idempotent


def test_a_killed_worker_fails_its_decision_then_is_restarted_and_decides_on_from_its_state() -> None:
    model = _model(PolicyAction.GERMINATE)
    reference = _local(model)
    remote = _remote(model, _local(model))
    observations = list(_observations())
    try:
        remote.wait_ready()
        for observation in observations[:3]:
            assert remote.decide(observation) == reference.decide(observation)
        before = remote.export_state()
        for kill in range(1, 4):
            assert remote.pid is not None
            os.kill(remote.pid, signal.SIGKILL)
            with pytest.raises(RuntimeError, match="died"):
                remote.decide(observations[3])
            assert remote.export_state() == before  # nothing but the decision in flight is lost
            remote.wait_ready()  # the barrier: the restarted worker has built its network
            assert remote.restarts == kill
        # The restarted worker decides exactly as the uninterrupted reference, from the state it last returned.
        for observation in observations[3:]:
            assert remote.decide(observation) == reference.decide(observation)
            assert remote.export_state() == reference.export_state()
        assert remote.pid is not None
        os.kill(remote.pid, signal.SIGKILL)  # a fourth death: a worker that keeps dying is left dead
        for _ in range(2):
            with pytest.raises(RuntimeError, match="died"):
                remote.decide(observations[0])
        with pytest.raises(RuntimeError, match="after 3 restarts; not restarted again"):
            remote.decide(observations[0])
    finally:
        remote.close()
    with pytest.raises(RuntimeError, match="closed"):
        remote.decide(next(_observations()))


def test_a_hung_worker_is_killed_and_restarted_and_decides_on_from_its_state() -> None:
    """A worker that stops answering (SIGSTOP here: swapped out, deadlocked) held every later decision, and the stop
    of the run, for good; it is now killed after a short silence (tamiyo.policy_worker_silence_s, here not its
    default: the limit was a constant, 0.5 s) and started again like a dead one."""
    model = _model(PolicyAction.GERMINATE)
    reference = _local(model)
    remote = _remote(model, _local(model), silence_s=0.25)
    observations = list(_observations())
    try:
        remote.wait_ready()
        assert remote.decide(observations[0]) == reference.decide(observations[0])
        assert remote.pid is not None
        os.kill(remote.pid, signal.SIGSTOP)
        hung = remote.pid
        with structlog.testing.capture_logs() as logs, pytest.raises(RuntimeError, match=r"no answer within 0\.25 s"):
            remote.decide(observations[1])
        assert [(e["event"], e.get("silent_s")) for e in logs] == [
            ("tamiyo_gnn_worker_hung", 0.25),
            ("tamiyo_gnn_worker_restarted", None),
        ]
        # Started again at once, not by the next decide (which an open inference breaker may hold back for 30 s).
        assert remote.restarts == 1
        assert remote.pid != hung
        assert remote._process.poll() is None
        remote.wait_ready()  # the barrier: the restarted worker has built its network
        for observation in observations[1:]:
            assert remote.decide(observation) == reference.decide(observation)
    finally:
        remote.close()


def test_a_restarted_worker_hung_in_its_start_up_is_killed_and_started_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """A replacement worker stopped while it started was never killed: the fallback decided for the rest of the run
    (271 of 300 decisions) with no word. It is now killed past a deadline (short here) and another one started."""
    model = _model(PolicyAction.GERMINATE)
    remote = _remote(model, _local(model))
    observations = list(_observations())
    try:
        remote.wait_ready()
        remote.decide(observations[0])
        assert remote.pid is not None
        os.kill(remote.pid, signal.SIGKILL)
        with pytest.raises(RuntimeError, match="died"):
            remote.decide(observations[1])
        with pytest.raises(PolicyRestarting):
            remote.decide(observations[1])  # found dead: a replacement is started, not ready yet
        assert remote.restarts == 1
        assert remote.pid is not None
        os.kill(remote.pid, signal.SIGSTOP)  # the replacement hangs in its start-up
        monkeypatch.setattr(gnn_process, "_RESTART_READY_S", 0.0)
        with structlog.testing.capture_logs() as logs, pytest.raises(PolicyRestarting, match="after a restart"):
            remote.decide(observations[1])
        assert [(e["event"], e.get("starting")) for e in logs] == [
            ("tamiyo_gnn_worker_hung", True),
            ("tamiyo_gnn_worker_restarted", None),  # another is started at once
        ]
        assert remote.restarts == 2
        monkeypatch.setattr(gnn_process, "_RESTART_READY_S", 600.0)
        with pytest.raises(PolicyRestarting):
            remote.decide(observations[1])  # not ready yet
        assert remote.restarts == 2
        remote.wait_ready()
        remote.decide(observations[1])
    finally:
        remote.close()


def test_the_worker_outlives_a_ctrl_c_to_the_parents_process_group() -> None:
    """A terminal's Ctrl-C reaches the whole foreground process group; the worker sits in a session of its own."""
    model = _model()
    remote = _remote(model, _local(model))
    try:
        remote.wait_ready()
        assert remote.pid is not None
        assert os.getsid(remote.pid) == remote.pid
        assert os.getpgid(remote.pid) != os.getpgid(0)
        remote.decide(next(_observations()))
    finally:
        remote.close()


def test_weights_that_do_not_match_their_digest_are_refused_by_the_worker() -> None:
    model = _model()
    remote = _remote(model, _local(model, digest="0" * 64))
    try:
        with pytest.raises(RuntimeError, match="SHA-256"):
            remote.wait_ready()
    finally:
        remote.close()


def test_closing_a_worker_still_reading_its_setup_after_a_restart_is_quiet(capfd: pytest.CaptureFixture[str]) -> None:
    """A worker killed, restarted (its setup, megabytes, written from a thread while it imports torch), then the run
    stops: the close frame must not land inside the setup frame, where the worker failed on garbage with a
    traceback."""
    model = _model(PolicyAction.GERMINATE)
    remote = _remote(model, _local(model))
    try:
        remote.wait_ready()
        assert remote.pid is not None
        os.kill(remote.pid, signal.SIGKILL)
        remote._process.wait(10)  # the barrier: dead and reaped, so the next decide restarts it
        with pytest.raises(RuntimeError, match="not ready yet"):
            remote.decide(next(_observations()))  # starts another and sends its setup from a thread
        assert remote.restarts == 1
    finally:
        remote.close()
    assert remote._process.poll() is not None
    assert "Traceback" not in capfd.readouterr().err


@pytest.mark.timeout(60)
def test_a_first_worker_stopped_before_it_reads_its_setup_is_killed_at_the_ready_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The first setup (megabytes of weights) was written on the caller's thread: a worker stopped before reading it
    (SIGSTOP, swapped out) blocked that write, and the start, for good, past the 120 s ready limit and a Ctrl-C."""
    monkeypatch.setattr(gnn_process, "_READY_TIMEOUT_S", 2.0)
    model = build_tamiyo_gnn(TamiyoGNNConfig(), seed=7).eval()  # the reference sizes: more than a pipe holds
    remote = _remote(model, _local(model))
    os.kill(remote._process.pid, signal.SIGSTOP)  # before it has imported torch, let alone read its setup
    try:
        with pytest.raises(RuntimeError, match=r"not ready after 2 s; killed$"):
            remote.wait_ready()
        assert remote._process.poll() is not None
    finally:
        remote.close()


def test_the_worker_never_imports_a_package_of_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``python -m`` puts the working directory first on the path: a local package named ``actors`` ran in the worker
    in place of ours (and the GNN run silently became a heuristic one when the worker kept dying)."""
    (tmp_path / "actors").mkdir()
    marker = tmp_path / "imported"
    (tmp_path / "actors" / "__init__.py").write_text(f"open({str(marker)!r}, 'w').close()\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    model = _model(PolicyAction.GERMINATE)
    reference = _local(model)
    remote = _remote(model, _local(model))
    try:
        observation = next(_observations())
        assert remote.decide(observation) == reference.decide(observation)
        assert remote.restarts == 0
    finally:
        remote.close()
    assert not marker.exists()


def test_an_answer_cut_off_after_its_header_times_out_instead_of_blocking() -> None:
    """A worker that wrote a frame's header and part of it, then stopped, blocked the read forever: the policy lane,
    every later step (a missed plan each) and the run's stop with it."""
    read_fd, write_fd = os.pipe()
    with os.fdopen(read_fd, "rb", buffering=0) as source, os.fdopen(write_fd, "wb", buffering=0) as sink:
        sink.write(gnn_wire.LENGTH.pack(100) + b"0123456789")
        with pytest.raises(TimeoutError, match="90 bytes of the frame still to come"):
            gnn_wire.recv(source, stall_s=0.05)


@pytest.mark.parametrize("answer", [gnn_wire.Answer(state=b"s"), gnn_wire.Answer(decision=None, state=b"")])
def test_an_answer_without_its_decision_or_state_fails_the_decision_not_the_actor(
    answer: gnn_wire.Answer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Checked with asserts: the AssertionError crashed Tamiyo (and restarted the trainer with it), every time, until
    the run failed; under ``python -O`` decide returned None. It is a failed decision the fallback makes instead."""
    model = _model()
    remote = _remote(model, _local(model))
    try:
        remote.wait_ready()
        monkeypatch.setattr(remote, "_call", lambda request: answer)
        with pytest.raises(RuntimeError, match="malformed answer"):
            remote.decide(next(_observations()))
    finally:
        remote.close()


async def test_a_stop_while_the_worker_is_stuck_in_its_start_up_ends_the_start_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Ctrl-C while the first worker hung in its start-up (stopped, swapped out) waited for the ready timeout (120 s)
    before the run ended: the stop never reached Tamiyo's on_start, and its lane job cannot be abandoned. The stop
    now kills the worker still starting, so the lane job, the start and the stop end at once."""
    monkeypatch.setattr(gnn_process, "_READY_TIMEOUT_S", 20.0)  # without the fix the start ends here, and says so
    model = _model()
    remote = _remote(model, _local(model))
    os.kill(remote._process.pid, signal.SIGSTOP)
    waiting = threading.Event()
    await_ready = remote._await_ready

    def entered(timeout_s: float | None = None) -> None:
        waiting.set()
        await_ready(timeout_s)

    monkeypatch.setattr(remote, "_await_ready", entered)
    harness = TamiyoHarness(tmp_path, RecordingSink(), config=TamiyoConfig(policy="gnn"), policy=remote)
    with structlog.testing.capture_logs() as logs:
        async with asyncio.TaskGroup() as tg:
            starting = tg.create_task(harness.system.start(harness.spec))
            assert await asyncio.to_thread(waiting.wait, 30.0)  # the barrier: the lane waits for the worker
            await harness.system.stop()
            await starting
        await harness.lane.aclose()
    assert remote._process.returncode == -signal.SIGKILL
    assert remote.restarts == 0
    events = [entry["event"] for entry in logs if entry["event"].startswith("tamiyo_gnn")]
    assert events == ["tamiyo_gnn_worker_start_stopped"]


def test_abort_start_kills_a_worker_still_starting_and_starts_no_other() -> None:
    model = _model()
    remote = _remote(model, _local(model))
    try:
        remote.abort_start()
        with pytest.raises(RuntimeError, match="stopped while it started"):
            remote.wait_ready()
        assert remote._process.returncode == -signal.SIGKILL
        assert remote.restarts == 0
    finally:
        remote.close()


# A worker that writes its first decision's answer twice (frame 1 is its ready message), in the first process only.
_DOUBLING_WORKER = """
import os, sys
from actors.tamiyo.gnn_worker_main import leave_out_unused
leave_out_unused()
from actors.tamiyo import gnn_worker

class Doubling:
    def __init__(self, raw):
        self.raw, self.frames = raw, 0
    def write(self, data):
        self.frames += 1
        written = self.raw.write(data)
        if self.frames == 2:
            self.raw.write(data)
        return written
    def flush(self):
        self.raw.flush()

first = not os.path.exists(sys.argv[1])
open(sys.argv[1], "a").close()
frames = os.fdopen(os.dup(1), "wb", buffering=0)
os.dup2(2, 1)
gnn_worker.serve(os.fdopen(0, "rb", buffering=0), Doubling(frames) if first else frames)
"""


def test_an_answer_to_another_request_kills_the_worker_instead_of_answering_every_later_decision(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Answers carried no request id: a worker that wrote one frame too many made every later decision the answer to
    the observation before it, silently, for the rest of the run."""
    script, marker = tmp_path / "doubling_worker.py", tmp_path / "started"
    script.write_text(_DOUBLING_WORKER, encoding="utf-8")
    root = str(Path(gnn_process.__file__).resolve().parents[2])

    def spawn() -> tuple[subprocess.Popen[bytes], IO[bytes], IO[bytes]]:
        process = subprocess.Popen(
            [sys.executable, "-P", str(script), str(marker)],
            env={**os.environ, "PYTHONPATH": root},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            bufsize=0,
            start_new_session=True,
        )
        assert process.stdin is not None
        assert process.stdout is not None
        return process, process.stdin, process.stdout

    monkeypatch.setattr(gnn_process, "_spawn", spawn)
    model = _model(PolicyAction.GERMINATE)
    reference = _local(model)
    remote = _remote(model, _local(model))
    observations = list(_observations())
    try:
        remote.wait_ready()
        assert remote.decide(observations[0]) == reference.decide(observations[0])
        with (
            structlog.testing.capture_logs() as logs,
            pytest.raises(RuntimeError, match=r"answered request 1 while request 2 waited; killed, to be restarted"),
        ):
            remote.decide(observations[1])
        # Killed and started again at once, as a hung worker is.
        assert [e["event"] for e in logs] == ["tamiyo_gnn_worker_desynced", "tamiyo_gnn_worker_restarted"]
        assert remote.restarts == 1
        remote.wait_ready()  # the barrier: the restarted worker has built its network
        # It decides on from the state the parent holds: the refused decision changed nothing.
        for observation in observations[1:]:
            assert remote.decide(observation) == reference.decide(observation)
            assert remote.export_state() == reference.export_state()
    finally:
        remote.close()


def test_the_configured_worker_silence_reaches_the_gnn_policys_worker() -> None:
    """tamiyo.policy_worker_silence_s is what the policy built from the config waits for an answer (it was a
    constant, 0.5 s, whatever the machine)."""
    from actors.tamiyo import spec
    from esper.runtime.lanes import Lane

    settings = spec.GnnSettings(model_config=SMALL, seed=7, layer_types=("conv1d",), activations=("relu",))
    config = TamiyoConfig(policy="gnn", policy_process="process", policy_worker_silence_s=2.5)
    lane = Lane("policy", "cpu", num_threads=1)
    try:
        policy = spec._gnn_factory(config, settings, BLUEPRINTS, lane)()
        assert isinstance(policy, RemoteGnnPolicy)
        try:
            assert policy.silence_s == 2.5
        finally:
            policy.close()
    finally:
        lane.close()


def test_a_silence_that_is_not_positive_is_refused_before_a_worker_starts() -> None:
    model = _model()
    with pytest.raises(ValueError, match=r"^RemoteGnnPolicy: silence_s must be > 0, got 0.0$"):
        _remote(model, _local(model), silence_s=0.0)
