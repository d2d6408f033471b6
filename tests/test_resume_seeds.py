"""A resume whose replayed journal rebuilds other seeds than its checkpoint holds is refused.

The journal is replayed under this version's rules. Every manifest and run_starting line says which Esper wrote it, and
a resume by another version says so."""

from __future__ import annotations

import hashlib
import json
import re
from typing import TYPE_CHECKING

import pytest

from actors.kasmina.held_seeds import HeldSeed, ReplayedHoldings, replay_holdings
from actors.kasmina.journal import JOURNAL_FILENAME
from actors.kasmina.lifecycle_settings import EvidenceCadence
from actors.kasmina.preparation import CatalogueSource, ModuleCache, Preparer
from actors.kasmina.spec import PlannerArgs, lifecycle_settings
from actors.tolaria.boundary import GraftEvent
from esper.resume_seeds import seeds_problem, seeds_refusal
from esper.run import start
from esper.run_history import written_by
from esper.runtime.clock import WallClock
from esper.runtime.errors import ConfigError
from esper.runtime.events import NullSink
from esper.runtime.handoff import Handoff
from esper.runtime.lanes import Lane
from esper.version import esper_version
from schemas.config import KasminaConfig
from schemas.enums import SeedLifecycleStage as Stage
from tests._kasmina_harness import KEY, KEY_ID, RUN, SLOTS, bare_planner, running_kasmina
from tests.test_e2e_run import tiny_config

if TYPE_CHECKING:
    from pathlib import Path

    from torch import nn

    from esper.runtime.clock import ManualClock
    from esper.runtime.events import RecordingSink

pytestmark = pytest.mark.timeout(120)

EVERY_EPOCH = ['tamiyo.policy="every_k"', "tamiyo.every_k_epochs=1"]


def _digests(run_dir: Path) -> dict[str, str]:
    return {
        str(path.relative_to(run_dir)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(run_dir.rglob("*"))
        if path.is_file()
    }


def _events(run_dir: Path, name: str) -> list[dict[str, object]]:
    lines = (run_dir / "events.jsonl").read_text(encoding="utf-8").splitlines()
    return [entry for line in lines if (entry := json.loads(line)).get("event") == name]


async def test_a_journal_that_replays_a_culled_seed_back_to_life_refuses_the_resume(tmp_path: Path) -> None:
    """An 8e7e7ef run resumed by a version whose gates time out later: the replay brought back seeds the old session
    had culled (its graft log detached them), the slots counted occupied and their detaches failed. Here the run's
    rules are made another version's by hand: a longer dwell than it trained with, in its config.toml and in the
    manifest's run_keys (an earlier version's manifest records no Esper version)."""
    run_dir = tmp_path / "run"
    summary = await (await start(tiny_config(tmp_path, epochs=6), run_dir, EVERY_EPOCH)).wait()
    assert summary.status == "completed"
    manifest_path = run_dir / "checkpoints" / "manifest.json"
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    assert manifest["esper_version"] == esper_version()
    assert [event["esper_version"] for event in _events(run_dir, "run_starting")] == [esper_version()]
    detached = [event for event in manifest["graft_log"] if event["kind"] == "detach"]
    assert detached, "the run must cull a seed for its replay under a longer dwell to bring it back"
    del manifest["esper_version"]
    manifest["run_keys"]["kasmina.stage_min_dwell_steps"] = 64
    manifest_path.write_text(json.dumps(manifest), encoding="utf-8")
    config = run_dir / "config.toml"
    config.write_text(
        re.sub(r"stage_min_dwell_steps = \d+", "stage_min_dwell_steps = 64", config.read_text(encoding="utf-8")),
        encoding="utf-8",
    )
    before = _digests(run_dir)

    with pytest.raises(ConfigError) as refused:
        await start(config, resume=run_dir, overrides=["tolaria.epochs=8"])

    message = str(refused.value)
    assert "\n" not in message
    first = detached[0]
    assert (
        f"checkpoints/kasmina_journal.jsonl replayed up to step {manifest['checkpoints'][-1]['global_step']} under"
        f" this version's lifecycle rules has seed {first['seed_id']} in slot {first['slot']} at" in message
    )
    assert f"holds no seed there (its graft log detached it at step {first['step']})" in message
    assert f"(an earlier version; this is esper {esper_version()})" in message
    assert message.endswith("finish it with the version that started it, or start a new run")
    after = _digests(run_dir)
    # Only the log of the refused start changed (the lock holds the same process's pid): no checkpoint, row,
    # journal line or config.
    assert {name for name in before.keys() | after.keys() if before.get(name) != after.get(name)} == {"events.jsonl"}
    (warning,) = _events(run_dir, "resume_by_other_version")
    assert warning["now"] == esper_version()
    assert warning["written_by"] == "an earlier version (its checkpoints do not say which)"


async def test_a_resume_of_a_run_with_no_checkpoint_by_the_version_that_started_it_says_nothing(tmp_path: Path) -> None:
    """A run that failed before its first checkpoint has no manifest to name its version: its resume by the same
    version warned resume_by_other_version, written_by='an earlier version (its checkpoints do not say which)'. Its
    first run_starting line names the version that started it."""
    run_dir = tmp_path / "run"
    summary = await (await start(tiny_config(tmp_path, epochs=1), run_dir)).wait()
    assert summary.status == "completed"
    checkpoints = run_dir / "checkpoints"
    # What a run that failed before its first checkpoint leaves: no manifest and no checkpoint.
    for path in (*checkpoints.glob("step-*.pt"), checkpoints / "manifest.json", run_dir / "summary.json"):
        path.unlink()
    summary = await (await start(run_dir / "config.toml", resume=run_dir, overrides=["tolaria.epochs=2"])).wait()
    assert summary.status == "completed", summary.error
    assert len(_events(run_dir, "run_starting")) == 2
    assert _events(run_dir, "resume_by_other_version") == []


def test_the_version_that_wrote_a_run_is_its_manifests_else_its_first_run_starting_lines(tmp_path: Path) -> None:
    checkpoints = tmp_path / "checkpoints"
    checkpoints.mkdir()
    starting = {"event": "run_starting", "run_id": "r", "esper_version": "0.9.0"}
    other = {"event": "run_starting", "run_id": "r", "esper_version": "1.0.0"}
    lines = [{"event": "run_started_soon", "esper_version": "0.1.0"}, starting, other]
    (tmp_path / "events.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    assert written_by(tmp_path) == "0.9.0"  # no manifest: the run's first start says, not a later session's
    (checkpoints / "manifest.json").write_text(json.dumps({"checkpoints": []}), encoding="utf-8")
    assert written_by(tmp_path) is None  # a manifest of a version that records none: that version is unknown
    (checkpoints / "manifest.json").write_text(json.dumps({"esper_version": "1.2.0"}), encoding="utf-8")
    assert written_by(tmp_path) == "1.2.0"
    (checkpoints / "manifest.json").unlink()
    (tmp_path / "events.jsonl").write_text(json.dumps({"event": "run_starting", "run_id": "r"}) + "\n")
    assert written_by(tmp_path) is None  # neither says
    (tmp_path / "events.jsonl").unlink()
    assert written_by(tmp_path) is None


def _holdings(*seeds: HeldSeed, moving: frozenset[str] = frozenset()) -> ReplayedHoldings:
    return ReplayedHoldings(step=100, seeds=seeds, moving=moving)


def test_the_replay_and_the_graft_log_agree_on_attached_fossilized_and_detached_seeds() -> None:
    graft = [
        GraftEvent(step=10, kind="attach", slot="a", seed_id="s1"),
        GraftEvent(step=20, kind="attach", slot="b", seed_id="s2"),
        GraftEvent(step=30, kind="fossilize", slot="a", seed_id="s1", stage=Stage.FOSSILIZED),
        GraftEvent(step=40, kind="detach", slot="b", seed_id="s2"),
    ]
    assert seeds_problem(_holdings(HeldSeed("a", "s1", Stage.FOSSILIZED)), graft, ("a", "b"), "step-100.pt") is None


def test_a_seed_the_checkpoint_holds_and_the_replay_culled_is_named() -> None:
    graft = [GraftEvent(step=10, kind="attach", slot="b", seed_id="s2")]
    assert seeds_problem(_holdings(), graft, ("a", "b"), "step-100.pt") == (
        "no seed in slot b, but the checkpoint step-100.pt holds seed s2 there"
    )
    other = _holdings(HeldSeed("b", "s3", Stage.TRAINING))
    assert seeds_problem(other, graft, ("a", "b"), "step-100.pt") == (
        "seed s3 in slot b at TRAINING, but the checkpoint step-100.pt holds seed s2 there"
    )


def test_a_slot_with_a_graft_op_due_at_the_checkpoint_is_not_judged() -> None:
    """A germination's attach (or a cull's detach) in flight at the checkpoint: the trainer applies it after."""
    germinated = _holdings(HeldSeed("a", "s1", Stage.GERMINATED), moving=frozenset({"a"}))
    assert seeds_problem(germinated, [], ("a",), "step-100.pt") is None
    assert seeds_problem(_holdings(HeldSeed("a", "s1", Stage.GERMINATED)), [], ("a",), "step-100.pt") == (
        "seed s1 in slot a at GERMINATED, but the checkpoint step-100.pt holds no seed there"
    )


async def test_an_attach_refused_after_a_mid_epoch_checkpoints_last_packet_leaves_its_slot_unjudged(
    clock: ManualClock, sink: RecordingSink, tmp_path: Path
) -> None:
    """A Ctrl-C's checkpoint inside an epoch (step 7; the last packet at step 4): the germination decided at 4 had its
    attach refused at step 6 (emergency level L2). The receipt is journaled, but the planner applies a receipt at the
    first boundary after it, which a replay up to step 7 never reaches: the replay held the seed GERMINATED, the graft
    log had no attach, and a run the trainer had kept consistent was refused."""
    async with running_kasmina(clock, sink, lag=2, journal_dir=tmp_path) as h:
        plan = await h.boundary(4, h.germinate(rank=2))
        assert [(op.kind, op.slot, plan.effect_step) for op in plan.ops] == [("attach", "a", 6)]
        await h.apply(plan, applied=False, error="no new grafts at emergency level L2", level_refused=True)
        await h.states()  # a barrier: the receipt is journaled
    handoff: Handoff[nn.Module] = Handoff()
    async with Lane("io") as lane:
        holdings = await replay_holdings(
            lambda planner_sink: bare_planner(clock, planner_sink),
            tmp_path / JOURNAL_FILENAME,
            7,
            run_id=RUN,
            keys={KEY_ID: KEY},
            clock=clock,
            preparer=Preparer(CatalogueSource(), handoff, lane, cache=ModuleCache()),
            artifact_wait_s=1.0,
        )
    [held] = holdings.seeds
    assert (held.slot, held.stage) == ("a", Stage.GERMINATED)  # the refusal is not applied up to step 7
    assert holdings.moving == frozenset({"a"})
    assert seeds_problem(holdings, [], tuple(SLOTS), "step-7.pt") is None


def test_the_same_version_string_is_not_said_to_be_the_same_code(tmp_path: Path) -> None:
    """Two builds read alike (the package version alone without git, or a checkout with uncommitted changes): the
    refusal said only the files could have changed, which was wrong when the code had."""
    same = seeds_refusal(tmp_path, 48, "no seed in slot a", esper_version())
    assert same.endswith(
        f"; the run was written by this version (esper {esper_version()}), so the journal and the checkpoint were"
        " changed since, or this version's code was (its version string does not tell): restore them, or start a"
        " new run"
    )
    assert "other lifecycle rules" in seeds_refusal(tmp_path, 48, "no seed in slot a", "0.0.1 (commit 0123abcd)")
    assert "(an earlier version; this is esper" in seeds_refusal(tmp_path, 48, "no seed in slot a", None)


def test_kasminas_planner_and_the_resume_checks_come_from_one_set_of_arguments() -> None:
    """The check rebuilt the planner's arguments beside kasmina_spec's (both from the run's config, in assemble), so a
    setting given to one could miss the other. Both are built from one PlannerArgs now: the config's lifecycle at the
    run's evidence cadence, with the run's command lag in place of the cadence's."""
    cadence = EvidenceCadence(packet_every_steps=4, lag_steps=0, epoch_steps=16)
    config = KasminaConfig(gate_patience_steps=7, stage_min_dwell_steps=12)
    args = PlannerArgs(run_id=RUN, run_seed=3, slots=SLOTS, config=config, lag_steps=8, cadence=cadence)
    settings = args.settings()
    assert settings == lifecycle_settings(config, EvidenceCadence(packet_every_steps=4, lag_steps=8, epoch_steps=16))
    assert settings != lifecycle_settings(config, cadence)
    planner = args.factory(CatalogueSource(), WallClock())(NullSink())
    assert planner.lag_steps == 8
