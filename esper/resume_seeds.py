"""A resume's check that Kasmina's journal, replayed under this version's rules, rebuilds the checkpoint's seeds."""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio
import msgspec

from actors.kasmina.held_seeds import replay_holdings
from actors.kasmina.journal import JOURNAL_FILENAME
from actors.kasmina.preparation import ModuleCache, Preparer
from actors.kasmina.spec import lifecycle_settings, planner_factory
from actors.tolaria.checkpoint_codec import CheckpointError, checkpoint_graft_log
from actors.tolaria.checkpoints import read_written_by
from esper.runtime.clock import WallClock
from esper.runtime.errors import ConfigError
from esper.runtime.handoff import Handoff
from esper.version import esper_version

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

    from torch import nn

    from actors.kasmina.held_seeds import ReplayedHoldings
    from actors.kasmina.lifecycle_settings import EvidenceCadence
    from actors.kasmina.preparation import SeedSource
    from actors.tolaria.boundary import GraftEvent
    from esper.nn.blueprints import SlotShape
    from esper.runtime.lanes import Lane
    from schemas.config import RunConfig


async def check_replayed_seeds(
    config: RunConfig,
    *,
    run_id: str,
    run_dir: Path,
    resume_step: int,
    slots: dict[str, SlotShape],
    cadence: EvidenceCadence,
    source: SeedSource,
    secret: bytes,
    io_lane: Lane,
) -> None:
    """Refuse a resume whose journal, replayed up to the checkpoint it continues from, has other seeds in the slots
    than that checkpoint's graft log: a run an earlier version wrote under other lifecycle rules (a gate that timed out
    sooner) replayed seeds back to life that its session had culled, into slots the model has no seed in (the resumed
    run then trained with slots counted occupied, and its detaches failed). Before any actor starts: Kasmina replays
    the same journal with the same planner when it starts.

    Raises:
        ConfigError: one line naming the journal, the first differing slot and seed, and both versions.
    """
    checkpoints = run_dir / "checkpoints"
    checkpoint = checkpoints / f"step-{resume_step}.pt"
    try:
        graft = await anyio.to_thread.run_sync(checkpoint_graft_log, checkpoint)
    except (CheckpointError, OSError):
        return  # the trainer's load verifies the checkpoint and falls back to an older one, saying why
    kasmina = config.kasmina
    lag = config.tolaria.command_lag_steps
    clock = WallClock()
    make_planner = planner_factory(
        run_id=run_id,
        run_seed=config.tolaria.seed,
        slots=slots,
        settings=lifecycle_settings(kasmina, msgspec.structs.replace(cadence, lag_steps=lag)),
        lag_steps=lag,
        source=source,
        clock=clock,
        breaker=kasmina.breaker,
        initial_seeds=config.tolaria.initial_seed_blueprints(),
    )
    handoff: Handoff[nn.Module] = Handoff()  # the replay's modules, dropped with it
    holdings = await replay_holdings(
        make_planner,
        checkpoints / JOURNAL_FILENAME,
        resume_step,
        run_id=run_id,
        keys={config.security.key_id: secret},
        clock=clock,
        preparer=Preparer(source, handoff, io_lane, cache=ModuleCache()),
        artifact_wait_s=kasmina.artifact_wait_ms / 1e3,
    )
    problem = seeds_problem(holdings, graft, tuple(slots), checkpoint.name)
    if problem is None:
        return
    written = await anyio.to_thread.run_sync(read_written_by, checkpoints)
    refusal = (
        f"--resume {run_dir}: checkpoints/{JOURNAL_FILENAME} replayed up to step {resume_step} under this version's"
        f" lifecycle rules has {problem}"
    )
    if written == esper_version():  # the same rules: the files were changed since, not the code
        raise ConfigError(f"{refusal}; the journal and the checkpoint disagree: restore them, or start a new run")
    raise ConfigError(
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
