"""What the step loop is given besides its config section, and how it ended."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, final

import torch

if TYPE_CHECKING:
    import asyncio
    from collections.abc import Callable, Mapping
    from pathlib import Path

    from torch import nn

    from esper.nn.data import TensorPair
    from schemas.run import TrainingFigures

LoopStatus = Literal["completed", "stopped", "halted"]


@final
@dataclass(frozen=True, slots=True)
class LoopOptions:
    """What the loop needs besides its config section.

    Attributes:
        run_id: copied into packets and receipts.
        checkpoint_dir: where checkpoints go (None: no full tier, e.g. benchmarks).
        expects_plans: a planner answers every packet with one BoundaryPlan (False: Tolaria alone).
        resume: look for a checkpoint in checkpoint_dir before starting.
        resumed_run: this is a ``--resume``'s first start (not a restart): the summary's resumed_from_step is its
            restored step (a restarted trainer of a fresh run reported one too).
        slot_targets: kasmina.slot_targets (empty: the host's own).
        device: the lane's device.
        batch_hook: a test hook applied to each batch, given the monotonic attempt count (survives rollbacks).
        step_probe: a benchmark hook called on the lane after each completed step with the global step, the model
            and that step's batch; it must leave the model as it found it (buffers, modes, RNG).
        isolation_probe_every_steps: probe live seeds for gradient isolation at most this often (0: never).
        resume_at_most: a resume continues from the newest checkpoint of this step or earlier (the newest one the
            lifecycle journal covers); None: the newest.
        journaled_step: the planner journal's last boundary step, read when the loop restores: a restart continues
            from the newest state whose plans in flight were decided there (a planner that crashed on a packet lost
            its decision, which nobody can send again); None: the newest state.
        halt_reason: why the run halted, as its events say, when the checkpoint a resume continues from is the one an
            L4 halt wrote at the end of the last epoch (the resume finishes the run halted); None: not on record.
        run_keys: the config keys the run trains with, recorded in every checkpoint manifest (a resume compares the
            run's config.toml with them); None: none recorded.
        written_by: the Esper version training (esper.version), recorded in every checkpoint manifest, so a resume
            by another version can say which rules the run continues under; None: not recorded.
        event_loop: the event loop the trainer reports to (its packets, receipts, and so the planner's journal): while
            it is stopped the loop waits at its next plan or checkpoint, and once it has closed it ends without
            another checkpoint (see loop_watch.py); None: not watched.
    """

    run_id: str
    checkpoint_dir: Path | None
    expects_plans: bool = False
    resume: bool = False
    resumed_run: bool = False
    slot_targets: tuple[str, ...] = ()
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    batch_hook: Callable[[int, TensorPair], TensorPair] | None = None
    step_probe: Callable[[int, nn.Module, TensorPair], None] | None = None
    isolation_probe_every_steps: int = 0
    resume_at_most: int | None = None
    journaled_step: Callable[[], int | None] | None = None
    halt_reason: str | None = None
    run_keys: Mapping[str, object] | None = None
    written_by: str | None = None
    event_loop: asyncio.AbstractEventLoop | None = None


@final
@dataclass(frozen=True, slots=True)
class LoopResult:
    """How the loop ended and what training achieved."""

    status: LoopStatus
    figures: TrainingFigures
    halt_reason: str | None = None
