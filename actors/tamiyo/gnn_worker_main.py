"""The GNN policy worker's entry point (``python -m actors.tamiyo.gnn_worker_main``): lean imports, then serve."""

from __future__ import annotations

import importlib.abc
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence
    from importlib.machinery import ModuleSpec
    from types import ModuleType

# PyG's package import reaches its LLM helpers, which import Hugging Face transformers whenever it is installed: a
# fifth of every worker start and restart (BENCHMARKS.md: about 1 s of its ~5 s), for code the policy never runs.
# Only this process is spared it: the run's own process may hold a user's model built on transformers.
UNUSED_PACKAGES = frozenset({"transformers"})


class _LeaveOut(importlib.abc.MetaPathFinder):
    """Fails the import of UNUSED_PACKAGES as if they were not installed; PyG imports them only where it may."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if fullname.partition(".")[0] in UNUSED_PACKAGES:
            raise ModuleNotFoundError(f"No module named {fullname!r} (left out of the GNN worker)", name=fullname)
        return None


def leave_out_unused() -> None:
    """Make this process's later imports of UNUSED_PACKAGES fail as if they were absent (call before PyG loads)."""
    if not any(isinstance(finder, _LeaveOut) for finder in sys.meta_path):
        sys.meta_path.insert(0, _LeaveOut())


def main() -> None:
    leave_out_unused()
    from actors.tamiyo.gnn_worker import run_worker  # after the finder: it imports PyG

    run_worker()


if __name__ == "__main__":
    main()
