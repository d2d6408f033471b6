"""What a notebook's user gets wrong when starting and stopping a run, and the one line each is told."""

from __future__ import annotations

import sys
import types
from typing import TYPE_CHECKING

import pytest
import torch

import esper
from esper.runtime.errors import ConfigError
from tests.test_run_embedded import quiet_config

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path


@pytest.fixture
def float64_default() -> Iterator[None]:
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(torch.float32)


@pytest.mark.usefixtures("float64_default")
async def test_a_float64_default_dtype_is_refused_in_one_line_before_the_run_dir_is_made(tmp_path: Path) -> None:
    """A notebook's torch.set_default_dtype(torch.float64) built the host in float64 and fed it float32 data: the
    refusal blamed tolaria.host_model = 'cnn1d' with a convolution's dtype error."""
    with pytest.raises(ConfigError) as refused:
        await esper.start(quiet_config(tmp_path), run_dir=tmp_path / "run")
    assert str(refused.value) == (
        "torch's default dtype is torch.float64 (torch.set_default_dtype): Esper builds its models in float32 and"
        " trains them on float32 data; call torch.set_default_dtype(torch.float32) before starting a run"
    )
    assert not (tmp_path / "run").exists()


async def test_stop_names_only_the_statuses_a_stop_may_record(tmp_path: Path) -> None:
    system = await esper.start(quiet_config(tmp_path), run_dir=tmp_path / "run")
    with pytest.raises(ValueError, match=r"^status: one of stopped, interrupted, failed, got 'bogus'$"):
        await system.stop(status="bogus")  # type: ignore[arg-type]
    assert (await system.stop()).status == "stopped"


async def test_a_refusal_is_raised_once_with_the_users_own_error_as_its_cause(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The API's refusal was raised from the same refusal in the command line's words: a notebook's traceback showed
    the message twice (``--set ...`` then ``overrides: ...``) around the user's own error."""
    module = types.ModuleType("esper_test_broken_factory")

    def broken() -> torch.nn.Module:
        raise RuntimeError("the user's factory failed")

    module.broken = broken  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, module.__name__, module)
    with pytest.raises(ConfigError) as refused:
        await esper.start(
            quiet_config(tmp_path),
            run_dir=tmp_path / "run",
            overrides=[f'tolaria.host_model="{module.__name__}:broken"'],
        )
    assert str(refused.value).startswith("overrides: tolaria.host_model=")
    chain = []
    cause: BaseException | None = refused.value.__cause__
    while cause is not None:
        chain.append(cause)
        cause = cause.__cause__
    assert [str(link) for link in chain] == ["the user's factory failed"]


async def test_a_model_module_that_sets_float64_as_it_is_imported_gets_the_dtype_refusal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check before the config's checks passed, the module's import set the dtype, and the probe's dtype error
    blamed tolaria.host_model."""
    module = types.ModuleType("esper_test_float64_factory")

    def factory() -> torch.nn.Module:
        torch.set_default_dtype(torch.float64)  # what its import would do, once the start imports it
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(40, 10))

    module.factory = factory  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, module.__name__, module)
    overrides = [f'tolaria.host_model="{module.__name__}:factory"', 'kasmina.slot_targets=["1"]']
    try:
        with pytest.raises(ConfigError, match=r"^torch's default dtype is torch.float64 \(torch.set_default_dtype\)"):
            await esper.start(quiet_config(tmp_path), run_dir=tmp_path / "run", overrides=overrides)
    finally:
        torch.set_default_dtype(torch.float32)
    assert not (tmp_path / "run").exists()
