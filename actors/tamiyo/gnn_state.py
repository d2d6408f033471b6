"""What Tamiyo needs of a GNN policy without loading PyG: its exported state and the two roles it can play.

The actor, the state record and the spec import this module, not ``gnn_policy`` / ``gnn_process``, so a run with the
heuristic policy never imports PyTorch Geometric (about 1.5-2 s of start-up on this machine).
"""

from __future__ import annotations

import abc

import msgspec

from esper.runtime.errors import EsperError
from schemas.base import Record

__all__ = ["GnnPolicyBase", "GnnPolicyState", "PolicyWorker"]


class GnnPolicyState(Record, frozen=True):
    """What a checkpoint keeps of the GNN policy besides its weights file: which weights and registries it was
    deployed with (checked on import) and the EWMA normaliser's moments (``key -> (mean, var, count)``)."""

    version: str
    architecture_version: str
    weights_sha256: str
    registry_digests: dict[str, str]
    normaliser_alpha: float
    normaliser_eps: float
    normaliser: dict[str, tuple[float, float, int]] = msgspec.field(default_factory=dict)
    decisions: int = 0


class GnnPolicyBase(abc.ABC):
    """A GNN policy, local or in a worker process: its state travels in TamiyoState.gnn."""

    @abc.abstractmethod
    def warm_up(self) -> None:
        """Make the first decision as fast as the next ones (blocking: the policy lane); changes no state.

        Raises:
            RuntimeError: a worker failed to start.
        """

    @abc.abstractmethod
    def export_state(self) -> GnnPolicyState:
        """The state to checkpoint; not while a decision runs."""

    @abc.abstractmethod
    def import_state(self, state: GnnPolicyState) -> None:
        """Restore an exported state.

        Raises:
            ValueError: the state was exported with other weights or registries.
        """


class PolicyRestarting(EsperError, RuntimeError):
    """The policy's worker process is being started again after it died: the fallback decides meanwhile. Not a
    failure of the policy (the death already counted as one), so it does not count towards the inference breaker."""


class PolicyWorker(abc.ABC):
    """A policy whose decisions run in a worker process; the actor stops it (``GnnPolicyBase.warm_up`` waits for it)."""

    hangs: int = 0  # workers killed so far because they stopped answering (the actor reports each one)

    @abc.abstractmethod
    def close(self) -> None:
        """Stop the worker; waits out a decision in flight."""

    @abc.abstractmethod
    def abort_start(self) -> None:
        """The run is stopping: kill a worker still starting (a ``warm_up`` waiting for it then fails at once instead
        of holding the stop for the whole start-up) and start no other. Any thread; never blocks."""
