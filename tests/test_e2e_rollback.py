"""A run rolled back mid-run by non-finite steps: what the summary, the report and the console say afterwards."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import pytest
import torch
from torch import nn

from actors.tamiyo.stop_state import read_stop_state
from actors.tolaria.checkpoint_verify import load_latest
from esper.report_inputs import read_run_events
from esper.run import start
from esper.wiring import RunHooks
from schemas.enums import EmergencyLevel
from schemas.enums import SeedLifecycleStage as Stage
from schemas.nissa import SeedStageChanged
from schemas.runtime import EmergencySignal
from tests.test_e2e_run import tiny_config
from tests.tolaria_factories import NanForThreeSteps

if TYPE_CHECKING:
    from pathlib import Path

# Whole runs (several in some tests): on a loaded 2-core machine one test took over the 30 s default.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


async def test_a_rollback_takes_back_the_lifecycle_transitions_it_undid(tmp_path: Path) -> None:
    """After a rollback Kasmina's lifecycle is as at the restored step again and the transitions after it happen
    again: events.jsonl held them twice and nothing said which stood, so the report drew both and the summary and
    metrics.csv counted seeds by transitions the rollback had undone."""
    # Late in epoch 5 (steps 65-80 at 16 a epoch): the plans decided after the snapshot at step 64 have taken effect,
    # so their transitions were reported before the rollback (and the lifecycle makes them again after it).
    NanForThreeSteps.calls, NanForThreeSteps.first = 0, 76
    run_dir = tmp_path / "run"
    host = 'tolaria.host_model="tests.tolaria_factories:nan_for_three_steps"'
    system = await start(tiny_config(tmp_path, epochs=8), run_dir, [host])  # 8: long enough to grow
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


async def test_a_germination_a_rollback_sends_again_at_l3_is_withdrawn_and_the_controller_grows_again(
    tmp_path: Path,
) -> None:
    """The rollback goes back to the epoch end (step 48) that decided a germination; its attach, sent again, is
    refused at L3. Kasmina warned (seed_op_failed) and culled the healthy seed (attach_refused:emergency_level), which
    the summary counted among the culled seeds. The germination is withdrawn now: its slot is dormant again, and once
    the level is back at L1 the controller grows the host again."""
    NanForThreeSteps.calls, NanForThreeSteps.first = 0, 56
    run_dir = tmp_path / "run"
    host = 'tolaria.host_model="tests.tolaria_factories:nan_for_three_steps"'
    # 15 epochs: the controller still grows (a seed it could keep) once the level is back at L1.
    summary = await (await start(tiny_config(tmp_path, epochs=15), run_dir, [host])).wait()
    assert summary.status == "completed", summary.error
    assert summary.training is not None
    assert summary.training.rollbacks == 1
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text(encoding="utf-8").splitlines()]
    [rolled_back] = [e for e in events if e["event"] == "tolaria_rolled_back"]
    germinations = [e["step"] for e in events if e["event"] == "tamiyo_decision" and e["action"] == "germinate"]
    assert rolled_back["step"] == 48
    assert 48 in germinations, "the restored epoch end must decide a germination to be a real test"
    seed = "seed-host.blocks.1-48"
    telemetry = [e for e in events if e["event"] == "telemetry_event"]
    assert not [e for e in telemetry if e["name"] == "seed_op_failed" and e["attributes"]["op"] == "attach"]
    [withdrawn] = [e for e in telemetry if e["name"] == "seed_germination_withdrawn"]
    assert (withdrawn["level"], withdrawn["attributes"]["seed_id"]) == ("info", seed)
    changes = [
        (e["from_stage"], e["to_stage"], e["reason"])
        for e in events
        if e["event"] == "seed_stage_changed" and e.get("seed_id") == seed
    ]
    assert changes[-1] == (int(Stage.GERMINATED), int(Stage.DORMANT), "attach_refused:emergency_level")
    assert not [e for e in events if e["event"] == "seed_stage_changed" and e["to_stage"] == int(Stage.CULLED)]
    assert summary.growth is not None
    assert "culled" not in summary.growth.seeds
    [back_at_l1] = [e["step"] for e in events if e["event"] == "emergency_signal" and e.get("previous") == 2]
    assert [step for step in germinations if step > back_at_l1], "no germination once the level fell"


async def test_a_run_stopped_at_an_elevated_emergency_level_resumes_as_the_uninterrupted_run(tmp_path: Path) -> None:
    """A resume at L3 or L2 started the clean dwell again (the level was re-raised as a new escalation), so the run
    stepped down later than the uninterrupted one, a stage change refused at L3 took effect later, and the runs
    diverged; the re-announced level was also counted as one more emergency."""
    host = 'tolaria.host_model="tests.tolaria_factories:nan_for_three_steps"'
    NanForThreeSteps.calls, NanForThreeSteps.first = 0, 76
    reference_dir = tmp_path / "uninterrupted"
    reference = await (await start(tiny_config(tmp_path, epochs=9), reference_dir, [host])).wait()
    assert reference.status == "completed", reference.error

    NanForThreeSteps.calls, NanForThreeSteps.first = 0, 76
    run_dir = tmp_path / "stopped"
    system = await start(tiny_config(tmp_path, epochs=9), run_dir, [host])
    # Stopped after the rollback's L3 and the clean epoch end that followed it (step 80), before the next (96).
    elevated = False
    async for event in system.events():
        elevated = elevated or (isinstance(event, EmergencySignal) and event.level is EmergencyLevel.L3_CONSERVATIVE)
        if elevated and isinstance(event, SeedStageChanged) and event.step >= 84:
            break
    stopped = await system.stop()
    assert stopped.status == "stopped", stopped.error
    NanForThreeSteps.first = 10**9  # the resumed session's model never turns NaN (its calls count from 0 again)
    resumed = await (await start(tiny_config(tmp_path, epochs=9), resume=run_dir, overrides=[host])).wait()
    assert resumed.status == "completed", resumed.error

    def steps_down(directory: Path) -> list[tuple[int, int]]:
        lines = [json.loads(line) for line in (directory / "events.jsonl").read_text(encoding="utf-8").splitlines()]
        return [
            (e["previous"], e["level"])
            for e in lines
            if e["event"] == "emergency_signal" and e["reason"] != "restored from a checkpoint"
        ]

    assert steps_down(run_dir) == steps_down(reference_dir)
    assert resumed.growth is not None
    assert reference.growth is not None
    assert resumed.growth.emergency_events == reference.growth.emergency_events
    mine, theirs = load_latest(run_dir / "checkpoints"), load_latest(reference_dir / "checkpoints")
    assert mine is not None
    assert theirs is not None
    assert [(e.kind, e.step) for e in mine[0].graft_log] == [(e.kind, e.step) for e in theirs[0].graft_log]
    for key, value in theirs[0].model.items():
        if isinstance(value, torch.Tensor):
            resumed_value = mine[0].model[key]
            assert isinstance(resumed_value, torch.Tensor)
            assert torch.equal(resumed_value, value), key


@pytest.mark.parametrize("crash_at", [13, 73])  # before the first epoch end (a restart from step 0), mid-run
async def test_a_gnn_run_whose_trainer_restarts_ends_as_the_uninterrupted_run(tmp_path: Path, crash_at: int) -> None:
    """The trainer restarted from its snapshot sends the packets after it again; the controller, not restarted, took
    them into its GNN's running input statistics a second time (its decisions then differed from an uninterrupted
    run's). It now goes back to the state it journaled at the restored epoch end."""
    gnn = ['tamiyo.policy="gnn"', 'tamiyo.policy_process="thread"']
    fired: list[int] = []

    def crash_once(step: int, model: nn.Module, batch: object) -> None:
        if step == crash_at and not fired:
            fired.append(step)
            raise RuntimeError("injected trainer fault")

    config = tiny_config(tmp_path, epochs=6)
    crashed, reference = tmp_path / "crashed", tmp_path / "uninterrupted"
    summary = await (await start(config, crashed, gnn, hooks=RunHooks(step_probe=crash_once))).wait()
    assert (summary.status, fired) == ("completed", [crash_at])
    assert (await (await start(config, reference, gnn)).wait()).status == "completed"
    states = [read_stop_state(run / "checkpoints" / "tamiyo_state.json") for run in (crashed, reference)]
    assert states[0] is not None
    assert states[1] is not None
    assert states[0].gnn == states[1].gnn
    events = [json.loads(line) for line in (crashed / "events.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [e["name"] for e in events if e.get("name") == "tamiyo_rewound"] == ["tamiyo_rewound"]


async def test_a_trainer_restart_right_after_a_mid_epoch_resume_keeps_the_epochs_figures(tmp_path: Path) -> None:
    """The resumed session's first snapshot left out the open epoch's sums it had taken back from the checkpoint:
    a trainer restart to that snapshot began the epoch's loss and accuracy at zero, and its metrics.csv row (and the
    packets after) differed from the uninterrupted run's."""
    config = tiny_config(tmp_path, epochs=8)  # long enough to grow: a seed changes stage in epoch 5
    reference, run_dir = tmp_path / "uninterrupted", tmp_path / "run"
    assert (await (await start(config, reference)).wait()).status == "completed"
    system = await start(config, run_dir)
    async for event in system.events():
        if isinstance(event, SeedStageChanged) and event.step >= 69:  # in epoch 5 (steps 65-80)
            break
    assert (await system.stop()).status == "stopped"
    stopped_at = load_latest(run_dir / "checkpoints")
    assert stopped_at is not None
    assert stopped_at[0].batch_index > 0, "a mid-epoch stop is needed to be a real test"
    fired: list[int] = []
    crash_at = stopped_at[0].global_step + 2

    def crash_once(step: int, model: nn.Module, batch: object) -> None:
        if step == crash_at and not fired:
            fired.append(step)
            raise RuntimeError("injected trainer fault")

    resumed = await (await start(config, resume=run_dir, hooks=RunHooks(step_probe=crash_once))).wait()
    assert (resumed.status, fired) == ("completed", [crash_at])

    def rows(directory: Path) -> list[list[str]]:
        lines = (directory / "metrics.csv").read_text(encoding="utf-8").splitlines()
        header = lines[0].split(",")
        keep = [i for i, name in enumerate(header) if not name.endswith(("_ms", "_s", "_per_s"))]
        return [[cells[i] for i in keep] for cells in (line.split(",") for line in lines[1:])]

    assert rows(run_dir) == rows(reference)
