"""The overlap benchmark's training step uses the optimizer Tolaria builds (fused AdamW on the CPU)."""

from __future__ import annotations

import torch

from actors.tolaria.build import build_optimizer
from esper.config import load_config
from esper.nn.hosts import CNN1dHost
from tests._bench_scripts import SCRIPTS, load_script


def test_the_step_optimizer_is_tolarias() -> None:
    bench = load_script("bench_overlap")
    host = CNN1dHost()
    got = bench.make_optimizer(host)
    want = build_optimizer(load_config(SCRIPTS.parent / "config.toml").tolaria, host, torch.device("cpu"))
    assert type(got) is type(want) is torch.optim.AdamW
    assert got.defaults == want.defaults
    assert got.defaults["fused"] is True
    assert [id(p) for g in got.param_groups for p in g["params"]] == [id(p) for p in host.parameters()]
