"""End to end: a real Tamiyo whose policy is stuck for ten epochs; the fallback decides and training goes on."""

from __future__ import annotations

import json
import threading
from typing import TYPE_CHECKING, final

import pytest

from actors.tamiyo.policy import Decision
from esper.run import start
from esper.wiring import RunHooks
from schemas.config import TamiyoConfig
from schemas.enums import EmergencyLevel
from tests.test_e2e_run import tiny_config

if TYPE_CHECKING:
    from pathlib import Path

    from actors.tamiyo.policy import Observation
    from schemas.state import SystemStatePacket

pytestmark = pytest.mark.timeout(120)

STEPS_PER_EPOCH = 16  # tiny_config's


@final
class StuckPolicy:
    """Its first decide blocks on the policy lane until the test releases it; later ones decide NO_OP at once."""

    version = "stuck-1"

    def __init__(self) -> None:
        self.release = threading.Event()
        self.calls: list[int] = []

    def decide(self, observation: Observation) -> Decision:
        self.calls.append(observation.packet.global_step)
        if len(self.calls) == 1:
            self.release.wait(timeout=60.0)  # a guard only: the test releases it
        return Decision(reason="stub")


@pytest.mark.slow
async def test_training_goes_on_while_the_policy_is_stuck_for_ten_epochs(tmp_path: Path) -> None:
    """A policy stuck past its deadline held the controller until it returned: every later plan was missed, three
    failed epochs halted the run at L4. The fallback now decides while it is stuck (the breaker opens after three
    overruns), so the trainer stalls for none of it and the run completes."""
    policy = StuckPolicy()
    while_stuck: list[int] = []  # the packets' steps between the stuck decision and its release

    def tap(packet: SystemStatePacket) -> None:
        if policy.calls and not policy.release.is_set():
            while_stuck.append(packet.global_step)
            if packet.global_step >= policy.calls[0] + 10 * STEPS_PER_EPOCH:
                policy.release.set()

    run_dir = tmp_path / "run"
    # The decision budget is what this test is about: the default's, not tiny_config's far one (its other budgets stay
    # far, so an epoch fails here only through the stuck policy, not through a loaded machine).
    budget = [f"tamiyo.decision_budget_ms={TamiyoConfig().decision_budget_ms}"]
    try:
        system = await start(
            tiny_config(tmp_path, epochs=12), run_dir, budget, hooks=RunHooks(tamiyo_policy=policy, packet_tap=tap)
        )
        summary = await system.wait()
    finally:
        policy.release.set()

    assert summary.status == "completed", summary.error
    assert summary.exit_code == 0
    training = summary.training
    assert training is not None
    assert (training.epochs, training.global_step) == (12, 12 * STEPS_PER_EPOCH)
    assert not training.halted
    assert training.emergency_level == EmergencyLevel.L1_NOTICE
    stuck_at = policy.calls[0]
    assert while_stuck[-1] - stuck_at >= 10 * STEPS_PER_EPOCH, "ten epochs trained while the policy was stuck"
    assert policy.release.is_set()

    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text(encoding="utf-8").splitlines()]
    names = {e["event"] for e in events}
    assert not names & {"plan_missed", "epoch_failed", "child_failed", "shutdown_deadline_exceeded"}
    decided = {e["step"]: e["policy"] for e in events if e["event"] == "tamiyo_decision"}
    stuck_steps = [step for step in while_stuck if step >= stuck_at]
    assert {decided[step] for step in stuck_steps} == {"heuristic (fallback)"}
    reasons = {
        e["attributes"]["step"]: e["attributes"]["reason"]
        for e in events
        if e["event"] == "telemetry_event" and e.get("name") == "fallback_applied"
    }
    assert reasons[stuck_at] == "timeout_inference"
    assert {reasons[step] for step in stuck_steps[1:]} == {"policy_busy", "breaker_open"}
    assert summary.growth is not None
    assert summary.growth.fallback_decisions >= len(stuck_steps)
    assert all(a.restarts == 0 for a in summary.actors)
