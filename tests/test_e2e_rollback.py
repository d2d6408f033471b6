"""A run rolled back mid-run by non-finite steps: what the summary, the report and the console say afterwards."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from esper.report import read_run_events
from esper.run import start
from tests.test_e2e_run import tiny_config
from tests.tolaria_factories import NanForThreeSteps

if TYPE_CHECKING:
    from pathlib import Path


async def test_a_rollback_takes_back_the_lifecycle_transitions_it_undid(tmp_path: Path) -> None:
    """After a rollback Kasmina's lifecycle is as at the restored step again and the transitions after it happen
    again: events.jsonl held them twice and nothing said which stood, so the report drew both and the summary and
    metrics.csv counted seeds by transitions the rollback had undone."""
    # Late in epoch 5 (steps 65-80 at 16 a epoch): the plans decided after the snapshot at step 64 have taken effect,
    # so their transitions were reported before the rollback (and the lifecycle makes them again after it).
    NanForThreeSteps.calls, NanForThreeSteps.first = 0, 76
    run_dir = tmp_path / "run"
    host = 'tolaria.host_model="tests.tolaria_factories:nan_for_three_steps"'
    system = await start(tiny_config(tmp_path, epochs=6), run_dir, [host])
    summary = await system.wait()
    assert summary.status == "completed", summary.error
    assert summary.training is not None
    assert summary.training.rollbacks == 1
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text(encoding="utf-8").splitlines()]
    [restored] = [e for e in events if e["event"] == "lifecycle_restored"]
    [rolled_back] = [e for e in events if e["event"] == "tolaria_rolled_back"]
    assert restored["step"] == rolled_back["step"]
    logged = [(e["slot"], e["step"], e["to_stage"]) for e in events if e["event"] == "seed_stage_changed"]
    assert len(set(logged)) < len(logged), "a transition the rollback undid should happen again to be a real test"
    standing = [(e.slot, e.step, int(e.to_stage)) for e in read_run_events(run_dir / "events.jsonl").stages]
    assert sorted(set(standing)) == sorted(standing), "each standing transition once"
    assert set(standing) == set(logged)
