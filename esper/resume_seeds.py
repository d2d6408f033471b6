"""A resume's check that Kasmina's journal, replayed under this version's rules, rebuilds the checkpoint's seeds."""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio

from actors.kasmina.held_seeds import replay_holdings
from actors.kasmina.journal import JOURNAL_FILENAME
from actors.kasmina.preparation import ModuleCache, Preparer
from actors.tolaria.checkpoint_codec import CheckpointError, checkpoint_graft_log
from actors.tolaria.checkpoint_verify import DigestMemo, verified_checkpoint
from actors.tolaria.checkpoints import read_manifest, read_written_by
from esper.runtime.clock import WallClock
from esper.runtime.errors import ConfigError
from esper.runtime.handoff import Handoff
from esper.version import esper_version

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

    from torch import nn

    from actors.kasmina.held_seeds import ReplayedHoldings
    from actors.kasmina.preparation import SeedSource
    from actors.kasmina.spec import PlannerArgs
    from actors.tolaria.boundary import GraftEvent
    from esper.runtime.lanes import Lane
    from schemas.config import RunConfig


async def check_replayed_seeds(
    config: RunConfig,
    planner: PlannerArgs,
    *,
    run_dir: Path,
    resume_step: int,
    source: SeedSource,
    secret: bytes,
    io_lane: Lane,
    memo: DigestMemo | None = None,
) -> None:
    """Refuse a resume whose journal, replayed up to the checkpoint it continues from, has other seeds in the slots
    than that checkpoint's graft log: a run an earlier version wrote under other lifecycle rules (a gate that timed out
    sooner) replayed seeds back to life that its session had culled, into slots the model has no seed in (the resumed
    run then trained with slots counted occupied, and its detaches failed). Before any actor starts: Kasmina replays
    the same journal with a planner built from the same ``planner`` arguments when it starts.

    Raises:
        ConfigError: one line naming the journal, the first differing slot and seed, and both versions.

    ``memo``: the start's checks' (see actors.tolaria.checkpoint_verify.DigestMemo).
    """
    checkpoints = run_dir / "checkpoints"
    checkpoint = checkpoints / f"step-{resume_step}.pt"
    graft = await anyio.to_thread.run_sync(_graft_log_at, checkpoints, resume_step, memo)
    if graft is None:
        return  # the trainer's load verifies the checkpoint and falls back to an older one, saying why
    clock = WallClock()
    handoff: Handoff[nn.Module] = Handoff()  # the replay's modules, dropped with it
    holdings = await replay_holdings(
        planner.factory(source, clock),
        checkpoints / JOURNAL_FILENAME,
        resume_step,
        run_id=planner.run_id,
        keys={config.security.key_id: secret},
        clock=clock,
        preparer=Preparer(source, handoff, io_lane, cache=ModuleCache()),
        artifact_wait_s=planner.config.artifact_wait_ms / 1e3,
    )
    problem = seeds_problem(holdings, graft, tuple(planner.slots), checkpoint.name)
    if problem is None:
        return
    written = await anyio.to_thread.run_sync(read_written_by, checkpoints)
    raise ConfigError(seeds_refusal(run_dir, resume_step, problem, written))


def _graft_log_at(checkpoints: Path, step: int, memo: DigestMemo | None = None) -> list[GraftEvent] | None:
    """The graft log of the checkpoint of ``step`` when it is listed, passes its size and SHA-256 and decodes, else
    None (a header is read only from verified bytes). Blocking."""
    try:
        info = next((e for e in read_manifest(checkpoints) if e.global_step == step), None)
        data = None if info is None else verified_checkpoint(checkpoints, info, memo=memo)
        return None if data is None else checkpoint_graft_log(data)
    except CheckpointError:
        return None


def seeds_refusal(run_dir: Path, resume_step: int, problem: str, written: str | None) -> str:
    """The refusal's line: ``problem`` (see seeds_problem) and which version wrote the run (``written``, the manifest's
    esper_version; None: an earlier version's, which records none)."""
    refusal = (
        f"--resume {run_dir}: checkpoints/{JOURNAL_FILENAME} replayed up to step {resume_step} under this version's"
        f" lifecycle rules has {problem}"
    )
    if written == esper_version():
        # The same version string is not the same code for sure: without git both read as the package version, and
        # a checkout's commit says nothing of changes not committed.
        return (
            f"{refusal}; the run was written by this version (esper {written}), so the journal and the checkpoint"
            " were changed since, or this version's code was (its version string does not tell): restore them, or"
            " start a new run"
        )
    return (
        f"{refusal}: the run was written by a version with other lifecycle rules"
        f" ({f'esper {written}' if written else 'an earlier version'}; this is esper {esper_version()}), and"
        " continuing it would train a model its journal does not describe; finish it with the version that started"
        " it, or start a new run"
    )


def seeds_problem(
    holdings: ReplayedHoldings, graft: Sequence[GraftEvent], slots: Sequence[str], checkpoint: str
) -> str | None:
    """The first slot (in ``slots``' order) where the replayed lifecycle's seed is not the one the graft log left
    attached, as a phrase; None when every slot agrees. Slots with an attach or detach whose outcome the replay cannot
    know yet are passed over (see ReplayedHoldings.moving)."""
    attached: dict[str, str] = {}
    detached_at: dict[str, int] = {}
    for event in graft:
        if event.slot is None or event.seed_id is None:
            continue
        if event.kind == "attach":
            attached[event.slot] = event.seed_id
        elif event.kind == "detach":
            attached.pop(event.slot, None)
            detached_at[event.seed_id] = event.step
    replayed = {seed.slot: seed for seed in holdings.seeds}
    for slot in (*slots, *sorted((replayed.keys() | attached.keys()) - set(slots))):
        if slot in holdings.moving:
            continue
        mine, theirs = replayed.get(slot), attached.get(slot)
        if (mine.seed_id if mine is not None else None) == theirs:
            continue
        if mine is None:
            return f"no seed in slot {slot}, but the checkpoint {checkpoint} holds seed {theirs} there"
        held = f"seed {mine.seed_id} in slot {slot} at {mine.stage.name}"
        if theirs is not None:
            return f"{held}, but the checkpoint {checkpoint} holds seed {theirs} there"
        gone = detached_at.get(mine.seed_id)
        why = f" (its graft log detached it at step {gone})" if gone is not None else ""
        return f"{held}, but the checkpoint {checkpoint} holds no seed there{why}"
    return None
