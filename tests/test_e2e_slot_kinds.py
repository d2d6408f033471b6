"""A host with conv1d and flat slots: a run grows only blueprints that fit their slot.

The candidates say which slots each blueprint fits and its size in each, and a run grows only blueprints that fit their
slot (none is refused)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import pytest

from actors.karn.catalogue import KarnCatalogue, TierPolicy
from esper.assemble_inputs import candidates
from esper.nn.blueprints import SlotShape, build_blueprint, default_catalogue
from esper.run import start
from schemas.config import KarnConfig
from schemas.enums import SeedLifecycleStage
from tests.far_budgets import far_budgets

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.timeout(120)

# tests.tolaria_factories:mixed_kinds, as the run measures it.
SLOTS = {"features.1": SlotShape("conv1d", 8), "hidden.1": SlotShape("flat", 32), "wide.1": SlotShape("flat", 24)}


def test_each_candidate_names_the_slots_it_fits_with_its_size_in_each() -> None:
    catalogue = default_catalogue()
    offered = candidates(catalogue, KarnCatalogue.from_config(catalogue, KarnConfig()), TierPolicy(), SLOTS)
    # The order the controller cycles through (every_k) is as before: the first slot's kind first, catalogue order.
    assert [c.blueprint_id for c in offered] == ["BP001", "BP002", "BP004", "BP005", "BP006", "BP008", "BP003", "BP007"]
    by_id = {c.blueprint_id: c for c in offered}
    assert by_id["BP001"].slot_kinds == ("conv1d", "flat")
    assert set(by_id["BP001"].slot_parameters) == set(SLOTS)
    assert (by_id["BP005"].slot_kinds, set(by_id["BP005"].slot_parameters)) == (("conv1d",), {"features.1"})
    assert (by_id["BP007"].slot_kinds, set(by_id["BP007"].slot_parameters)) == (("flat",), {"hidden.1", "wide.1"})
    for candidate in offered:
        blueprint = catalogue.get(candidate.blueprint_id)
        for slot, size in candidate.slot_parameters.items():
            module = build_blueprint(blueprint, SLOTS[slot], {}, fill_defaults=True)
            assert size == sum(p.numel() for p in module.parameters()), (candidate.blueprint_id, slot)
        assert candidate.parameter_count == next(iter(candidate.slot_parameters.values()))
    # A flat blueprint is sized for each flat slot, not for the first one only.
    assert by_id["BP007"].slot_parameters["hidden.1"] != by_id["BP007"].slot_parameters["wide.1"]


def write_config(tmp_path: Path, policy: str, epochs: int = 8) -> Path:
    """Short epochs on the mixed host; every epoch is a plateau (plateau_min_delta) and every slot strained
    enough, so both policies grow at each epoch end they may; the heuristic prefers the medium tier, which holds a
    conv blueprint (BP005) and a flat one (BP007). The lifecycle's timers are short, so the first epochs' seeds could
    still be kept before the run ends (neither policy grows one that could not). Its wall-clock budgets are far above
    any real time (tests/far_budgets.py): a loaded machine must not fail or change a graft."""
    path = tmp_path / f"{policy}.toml"
    path.write_text(
        f"""
[tolaria]
epochs = {epochs}
dataset_samples = 600
batch_size = 64
state_every_steps = 4
command_lag_steps = 2
host_model = "tests.tolaria_factories:mixed_kinds"
{far_budgets("tolaria")}

[kasmina]
stage_min_dwell_steps = 1
g2_window_steps = 1
blend_ramp_steps = 1
{far_budgets("kasmina")}

[tamiyo]
policy = "{policy}"
{"every_k_epochs = 1" if policy == "every_k" else ""}
plateau_patience_epochs = 1
plateau_min_delta = 100.0
germinate_cooldown_epochs = 1
germinate_min_constraint = 0.0
blueprint_cost_tier = "medium"
{far_budgets("tamiyo")}

[urza]
root = "{tmp_path / "urza"}"

[logging]
console = false
state_interval_s = 60.0
""",
        encoding="utf-8",
    )
    return path


async def grafts(tmp_path: Path, policy: str, *, epochs: int = 8) -> list[tuple[str, str]]:
    """(slot, blueprint) of every germination of a run of ``policy``, after checking nothing was refused."""
    run_dir = tmp_path / "run"
    summary = await (await start(write_config(tmp_path, policy, epochs), run_dir)).wait()
    assert summary.status == "completed", summary.error
    log = [json.loads(line) for line in (run_dir / "events.jsonl").read_text(encoding="utf-8").splitlines()]
    refused = [e for e in log if e.get("name") in ("seed_op_failed", "command_rejected") or e["level"] == "error"]
    assert refused == []
    germinated = [
        (e["slot"], e["blueprint_id"])
        for e in log
        if e["event"] == "seed_stage_changed" and e["to_stage"] == SeedLifecycleStage.GERMINATED.value
    ]
    catalogue = default_catalogue()
    for slot, blueprint in germinated:
        assert catalogue.get(blueprint).fits(SLOTS[slot].kind), (slot, blueprint)
    return germinated


async def test_every_k_grows_each_slot_with_the_next_blueprint_that_fits_it(tmp_path: Path) -> None:
    """The cycle reached BP004, a conv blueprint, with only flat slots free: it was sent into hidden.1 and refused
    (`command_rejected`), and so were BP005, BP006 and BP008 after it, one epoch each."""
    assert await grafts(tmp_path, "every_k") == [("features.1", "BP001"), ("hidden.1", "BP002"), ("wide.1", "BP003")]


async def test_the_heuristic_grows_the_flat_slots_with_a_flat_blueprint(tmp_path: Path) -> None:
    """The heuristic's medium blueprint was BP005 (conv) for every slot: the flat slots' grafts were all refused and
    only the conv slot ever grew."""
    # Longer: the heuristic grows a seed only if it could still be fossilized, after two probation epochs.
    grown = await grafts(tmp_path, "heuristic", epochs=11)
    assert {slot for slot, _ in grown} == set(SLOTS)
    assert {blueprint for slot, blueprint in grown if slot != "features.1"} == {"BP007"}
