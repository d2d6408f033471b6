"""A user model with lazy modules (nn.LazyLinear, ...): materialised by one forward at every build.

The same way each time, or refused in one line."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
import torch
from torch import nn

from actors.tolaria.build import build_trainee, check_config, load_data
from actors.tolaria.host_model import TolariaConfigError
from esper.run import main
from schemas.config import TolariaConfig

if TYPE_CHECKING:
    from pathlib import Path

CPU = torch.device("cpu")
FACTORIES = "tests.tolaria_factories"


def config(factory: str) -> TolariaConfig:
    return TolariaConfig(host_model=f"{FACTORIES}:{factory}", epochs=1, dataset_samples=500, batch_size=50)


def test_a_lazy_model_is_materialised_identically_at_every_build() -> None:
    """Its parameter count crashed the build (an uninitialised parameter has no numel): a traceback, exit 1."""
    cfg = config("lazy_mlp")
    data = load_data(cfg)
    check_config(cfg)  # the check before the run directory is claimed takes it too, with its trial training step
    first = build_trainee(cfg, data, (), CPU)
    assert not any(nn.parameter.is_lazy(t) for t in [*first.model.parameters(), *first.model.buffers()])
    assert first.host_parameters == 40 * 16 + 16 + 2 * 16 + 16 * 10 + 10
    assert first.slot_shapes["3"].kind == "flat"
    # The optimizer holds the materialised tensors, not the placeholders the factory made.
    held = {id(p) for group in first.optimizer.param_groups for p in group["params"]}
    assert held == {id(p) for p in first.model.parameters()}
    torch.manual_seed(12345)  # a restore or a resume rebuilds after the run drew from the RNG: the seed resets it
    second = build_trainee(cfg, data, (), CPU)
    one, two = first.model.state_dict(), second.model.state_dict()
    assert one.keys() == two.keys()
    tensors = [key for key in one if isinstance(one[key], torch.Tensor)]
    assert tensors
    assert all(torch.equal(one[key], two[key]) for key in tensors)
    assert first.model.training  # the eval-mode forward left it as the factory made it


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        (
            "lazy_never_called",
            "'spare.weight' is still uninitialised after a forward on a batch of shape [2, 1, 40] (a lazy module the"
            " forward never calls)",
        ),
        (
            "lazy_wrong_input",
            "the model's lazy modules could not be initialised by a forward on a batch of shape [2, 1, 40]:"
            " RuntimeError: running_mean should contain 1 elements not 16",
        ),
    ],
)
def test_a_lazy_model_no_forward_materialises_is_refused_in_one_line(factory: str, message: str) -> None:
    cfg = config(factory)
    with pytest.raises(TolariaConfigError) as info:
        check_config(cfg)
    assert str(info.value) == f"tolaria.host_model = {cfg.host_model!r}: {message}"


def test_a_lazy_model_runs_and_resumes(tmp_path: Path) -> None:
    """End to end: the run's checks, its build and a resume's (whose checkpoint must fit the rebuilt model)."""
    toml = tmp_path / "c.toml"
    toml.write_text(
        f'[logging]\nconsole = false\n[urza]\nroot = "{tmp_path / "urza"}"\n'
        f'[tolaria]\nepochs = 1\ndataset_samples = 500\nhost_model = "{FACTORIES}:lazy_mlp"\n'
    )
    run = tmp_path / "run"
    assert main([str(toml), "--run-dir", str(run)]) == 0
    assert main([str(run / "config.toml"), "--resume", str(run), "--set", "tolaria.epochs=2"]) == 0
    assert len(list((run / "checkpoints").glob("step-*.pt"))) >= 2
