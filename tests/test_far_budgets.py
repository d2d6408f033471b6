"""The e2e tests' run configs hold every wall-clock budget a loaded machine trips far above any real time."""

from __future__ import annotations

from typing import TYPE_CHECKING

from esper.config import load_config
from tests import test_e2e_initial_seeds, test_e2e_slot_kinds, test_tolaria_cli
from tests.far_budgets import FAR_BUDGETS
from tests.test_e2e_run import tiny_config

if TYPE_CHECKING:
    from pathlib import Path


def test_every_e2e_config_holds_the_far_budgets_so_its_runs_end_the_same_on_a_loaded_machine(tmp_path: Path) -> None:
    """tiny_config ran with the default 1 s decision deadline: on a busy machine a plan missed it, the epoch failed
    (L2: no new grafts) and a resumed run compared with an uninterrupted one grew differently."""
    cli = tmp_path / "cli.toml"
    cli.write_text(test_tolaria_cli.TINY_TOML, encoding="utf-8")
    paths = (
        tiny_config(tmp_path),
        test_e2e_initial_seeds.write_config(tmp_path),
        test_e2e_slot_kinds.write_config(tmp_path, "heuristic"),
        cli,
    )
    for path in paths:
        config = load_config(path)
        for section, budgets in FAR_BUDGETS.items():
            held = {key: getattr(getattr(config, section), key) for key in budgets}
            assert held == budgets, (path.name, section)
    # Far above real time: each at least 20 s, where a plan, an epoch hook or a decision takes milliseconds.
    assert min(value for budgets in FAR_BUDGETS.values() for value in budgets.values()) >= 20000.0
