"""A real run where a seed's blend spikes the validation loss: the risk engine pauses it, the heuristic culls it.

The culled module really leaves the model (it used to stay, refused as paused)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import pytest
import torch
from torch import nn

from actors.tolaria.checkpoint_verify import load_latest
from esper import start
from esper.wiring import RunHooks
from tests.test_e2e_run import ReplaceNthFetch, tiny_config

if TYPE_CHECKING:
    from pathlib import Path

    from actors.kasmina.preparation import SeedSource

# Whole runs (several in some tests): on a loaded 2-core machine one test took over the 30 s default.
pytestmark = pytest.mark.timeout(120)


class _TurnsHarmful(nn.Module):
    """A real seed (the inner blueprint module, its parameters and its zero output at birth, so every probe passes)
    plus a term that wakes up once the optimizer has moved the inner ``shift``: blended, h + alpha * s then flips
    the activation's sign as soon as alpha passes about 1/30, and the validation loss spikes. While incubating the
    slot returns h, so nothing shows before the blend."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        shift = self.inner.get_parameter("shift")
        armed = torch.tanh(1000.0 * shift.abs().sum())
        out: torch.Tensor = self.inner(h) - 30.0 * armed * h
        return out


def first_seed_turns_harmful(inner: SeedSource) -> SeedSource:
    """The first seed fetched is wrapped in _TurnsHarmful; every later one is the real blueprint."""
    return ReplaceNthFetch(inner, 1, _TurnsHarmful)


async def test_a_seed_paused_for_a_loss_spike_is_culled_and_leaves_the_model(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    # A 40-step ramp keeps the seed BLENDING past the epoch end whose validation sees the spike.
    overrides = ["kasmina.blend_ramp_steps=40", "tamiyo.cull_after_epochs=2"]
    system = await start(
        tiny_config(tmp_path, epochs=16),
        run_dir,
        overrides=overrides,
        hooks=RunHooks(wrap_source=first_seed_turns_harmful),
    )
    summary = await system.wait()
    assert summary.status == "completed", summary.error

    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text(encoding="utf-8").splitlines()]
    named = [e.get("name") for e in events if e.get("event") == "telemetry_event"]
    assert "loss_spike" in named
    assert "seed_op_failed" not in named
    found = load_latest(run_dir / "checkpoints")
    assert found is not None
    log = found[0].graft_log
    first = log[0]
    assert first.kind == "attach"
    harmful = [e.kind for e in log if e.seed_id == first.seed_id]
    assert harmful == ["attach", "set_stage", "pause", "detach"], harmful
    # Another seed was blending when the spike was measured, just started: the blame goes to the seed further along.
    assert [e.seed_id for e in log if e.kind == "pause"] == [first.seed_id]
    culls = [e for e in events if e.get("name") == "seed_culled"]
    assert any(
        e["attributes"]["seed_id"] == first.seed_id and e["attributes"]["reason"] == "cull:policy:paused" for e in culls
    )
    # Its module left with it: no parameter of the final model sits inside a _TurnsHarmful.
    assert not any(".seed.inner." in key for key in found[0].model)
    assert summary.training is not None
    assert summary.growth is not None
    assert summary.training.seed_parameters == summary.growth.parameters_added
