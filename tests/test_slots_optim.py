"""Optimizer param-group migration: graft, cull and fossilize with SGD-momentum and AdamW (plain, foreach, fused)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
import torch
from torch import Tensor, nn

from esper.nn.optim_migration import (
    ParamGroupError,
    add_seed_group,
    check_param_groups,
    find_seed_group,
    fossilize_seed_group,
    remove_seed_group,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from torch.optim import Optimizer

OPTIMIZERS: dict[str, Callable[[list[Tensor]], Optimizer]] = {
    "sgd_momentum": lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9),
    "adamw": lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.01),
    "adamw_foreach": lambda ps: torch.optim.AdamW(ps, lr=1e-2, foreach=True),
    "adamw_fused": lambda ps: torch.optim.AdamW(ps, lr=1e-2, fused=True),
}


def _setup(kind: str) -> tuple[nn.Module, nn.Module, Optimizer]:
    torch.manual_seed(0)
    host = nn.Linear(4, 4)
    seed = nn.Linear(4, 4)
    return host, seed, OPTIMIZERS[kind](list(host.parameters()))


def _step(opt: Optimizer, modules: list[nn.Module]) -> None:
    opt.zero_grad()
    x = torch.randn(3, 4)
    loss = sum((m(x).square().sum() for m in modules), torch.zeros(()))
    loss.backward()
    opt.step()


def _snapshot(modules: list[nn.Module]) -> list[Tensor]:
    return [p.detach().clone() for m in modules for p in m.parameters()]


def _changed(before: list[Tensor], modules: list[nn.Module]) -> list[bool]:
    after = [p for m in modules for p in m.parameters()]
    return [not torch.equal(b, a) for b, a in zip(before, after, strict=True)]


kinds = pytest.mark.parametrize("kind", list(OPTIMIZERS))


@kinds
def test_graft_adds_a_named_group_with_fresh_state_and_its_own_lr(kind: str) -> None:
    host, seed, opt = _setup(kind)
    _step(opt, [host])
    group = add_seed_group(opt, "s1", seed.parameters(), lr=0.05)
    assert group["name"] == "seed:s1"
    assert group["lr"] == 0.05
    assert find_seed_group(opt, "s1") == 1
    assert all(p not in opt.state for p in seed.parameters())
    check_param_groups(opt, [*host.parameters(), *seed.parameters()])
    before = _snapshot([host, seed])
    _step(opt, [host, seed])
    assert all(_changed(before, [host, seed]))
    assert all(p in opt.state and opt.state[p] for p in seed.parameters())
    with pytest.raises(ParamGroupError, match="already has group 'seed:s1'"):
        add_seed_group(opt, "s1", seed.parameters(), lr=0.05)
    with pytest.raises(ParamGroupError, match="already optimized"):
        add_seed_group(opt, "s2", host.parameters(), lr=0.05)


@kinds
def test_cull_removes_the_group_and_its_state(kind: str) -> None:
    host, seed, opt = _setup(kind)
    add_seed_group(opt, "s1", seed.parameters(), lr=0.05)
    _step(opt, [host, seed])
    removed = remove_seed_group(opt, "s1")
    assert {id(p) for p in removed} == {id(p) for p in seed.parameters()}
    assert all(p not in opt.state for p in seed.parameters())
    assert find_seed_group(opt, "s1") is None
    check_param_groups(opt, host.parameters())
    with pytest.raises(ParamGroupError, match="not live"):
        check_param_groups(opt, [])
    seed_before = _snapshot([seed])
    host_before = _snapshot([host])
    _step(opt, [host, seed])  # the culled seed still gets grads here, but nothing may update it
    assert not any(_changed(seed_before, [seed]))
    assert all(_changed(host_before, [host]))
    with pytest.raises(ParamGroupError, match="no group 'seed:s1'"):
        remove_seed_group(opt, "s1")


@kinds
def test_fossilize_moves_params_into_the_host_group_with_state_bit_exact(kind: str) -> None:
    host, seed, opt = _setup(kind)
    add_seed_group(opt, "s1", seed.parameters(), lr=0.05, weight_decay=0.0)
    for _ in range(2):
        _step(opt, [host, seed])
    state_before = {id(p): {k: v.clone() for k, v in opt.state[p].items()} for p in seed.parameters()}
    moved = fossilize_seed_group(opt, "s1", host_group_index=0)
    assert len(opt.param_groups) == 1
    assert [id(p) for p in moved] == [id(p) for p in seed.parameters()]
    for p in seed.parameters():
        for key, value in state_before[id(p)].items():
            assert torch.equal(opt.state[p][key], value), key
    check_param_groups(opt, [*host.parameters(), *seed.parameters()])
    assert opt.param_groups[0]["lr"] != 0.05  # the host's hyperparameters now apply
    before = _snapshot([host, seed])
    _step(opt, [host, seed])
    assert all(_changed(before, [host, seed]))


def test_check_finds_missing_and_duplicated_parameters() -> None:
    host, seed, opt = _setup("sgd_momentum")
    with pytest.raises(ParamGroupError, match=r"live trainable parameter 'seed\.weight' is in no param group"):
        check_param_groups(opt, [*host.named_parameters(), *(("seed." + n, p) for n, p in seed.named_parameters())])
    opt.param_groups.append({**opt.param_groups[0], "params": [host.weight]})
    with pytest.raises(ParamGroupError, match="is in group 1 and in group 0"):
        check_param_groups(opt, host.parameters())


def test_fossilize_refuses_a_seed_group_as_host() -> None:
    _, seed, opt = _setup("sgd_momentum")
    other = nn.Linear(4, 4)
    add_seed_group(opt, "a", seed.parameters(), lr=0.1)
    add_seed_group(opt, "b", other.parameters(), lr=0.1)
    with pytest.raises(ParamGroupError, match="seed group 'seed:a'"):
        fossilize_seed_group(opt, "b", host_group_index=1)
    with pytest.raises(ParamGroupError, match="not a host group"):
        fossilize_seed_group(opt, "b", host_group_index=7)
