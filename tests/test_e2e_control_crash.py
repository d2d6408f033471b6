"""End to end: Tolaria's control actor crashes once mid-run; the restarted pair trains on to the end."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import pytest
import torch

from actors.tolaria.actor import TolariaControl
from esper.run import start
from schemas.boundary import BoundaryPlan
from tests.test_e2e_run import _final_weights, tiny_config

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.timeout(120)


async def test_a_control_crash_mid_run_restarts_tolaria_and_ends_as_an_uninterrupted_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The supervisor stopped the trainer as the crashed control's sibling, and the trainer, its loop ended
    "stopped", told the control that training had ended: the restarted control took that message from its reopened
    mailbox, stopped for good, and every later plan failed (ActorStopped), stalling the run into emergencies."""
    config = tiny_config(tmp_path, epochs=6)
    reference = await (await start(config, tmp_path / "uninterrupted")).wait()
    assert reference.status == "completed", reference.error
    crash_at = 3 * 16 + 4  # a mid-epoch packet's plan in epoch 4
    original = TolariaControl.handle
    fired: list[int] = []

    async def failing(self: TolariaControl, msg: Any) -> None:
        if not fired and isinstance(msg, BoundaryPlan) and msg.decided_on_step >= crash_at:
            fired.append(msg.decided_on_step)
            raise RuntimeError("injected control fault")
        await original(self, msg)

    monkeypatch.setattr(TolariaControl, "handle", failing)
    run_dir = tmp_path / "crashed"
    summary = await (await start(config, run_dir)).wait()
    assert fired == [crash_at]
    assert (summary.status, summary.exit_code) == ("completed", 0), summary.error
    assert {a.actor: a.restarts for a in summary.actors}["tolaria/control"] == 1
    assert summary.training is not None
    assert reference.training is not None
    assert (summary.training.epochs, summary.training.global_step) == (6, 6 * 16)
    assert summary.training.test_accuracy == reference.training.test_accuracy
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text(encoding="utf-8").splitlines()]
    assert not [e for e in events if e["event"] in {"plan_missed", "emergency_signal", "dead_letter"}]
    grafts, tensors = _final_weights(run_dir)
    reference_grafts, reference_tensors = _final_weights(tmp_path / "uninterrupted")
    assert grafts == reference_grafts
    assert all(torch.equal(tensors[k], reference_tensors[k]) for k in reference_tensors)
