"""esper.load_model: a real run's grown model rebuilt from its checkpoints scores what the trainer scored, bitwise."""

from __future__ import annotations

import asyncio
import csv
import io
import random
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

import esper
from actors.tolaria.build import load_data
from actors.tolaria.checkpoints import CheckpointError, read_manifest
from esper.export import main as export_main
from esper.nn.slots import SeedSlot, SlotMode
from esper.resume import read_run_config
from esper.run import start
from esper.runtime.errors import ConfigError
from tests.test_e2e_run import _user_host, tiny_config

if TYPE_CHECKING:
    from torch import nn

    from esper.nn.data import TensorPair
    from schemas.run import RunSummary

pytestmark = pytest.mark.timeout(120)

_EVAL_BATCH = 1024  # actors.tolaria.epoch_end's: the sums go batch by batch, as the trainer's evaluation adds them
_README = Path(__file__).resolve().parent.parent / "README.md"


def _run(directory: Path, config: Path, overrides: list[str] | None = None) -> RunSummary:
    async def run() -> RunSummary:
        return await (await start(config, directory, overrides=overrides)).wait()

    summary = asyncio.run(run())
    assert summary.status == "completed", summary.error
    return summary


@pytest.fixture(scope="module")
def grown(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, RunSummary]:
    """A run of 8 epochs that grafts two seeds, blends, fossilizes one and culls the other (its 3 last epoch ends'
    checkpoints kept)."""
    root = tmp_path_factory.mktemp("grown")
    return root / "run", _run(root / "run", tiny_config(root, epochs=8))


def _scores(model: nn.Module, split: TensorPair) -> tuple[float, float]:
    """(mean loss, accuracy) as the trainer's evaluation computes them."""
    loss = torch.zeros(())
    correct = torch.zeros((), dtype=torch.int64)
    with torch.no_grad():
        for start_at in range(0, split.num_samples, _EVAL_BATCH):
            x, y = split.x[start_at : start_at + _EVAL_BATCH], split.y[start_at : start_at + _EVAL_BATCH]
            out = model(x)
            loss += F.cross_entropy(out.float(), y, reduction="sum")
            correct += (out.argmax(1) == y).sum()
    both = torch.stack((loss.float(), correct.float())).tolist()
    return both[0] / split.num_samples, both[1] / split.num_samples


def _modes(model: nn.Module) -> list[SlotMode]:
    return [m.mode for m in model.modules() if isinstance(m, SeedSlot)]


def test_the_newest_checkpoint_scores_the_runs_reported_test_figures_bitwise(grown: tuple[Path, RunSummary]) -> None:
    run_dir, summary = grown
    random.seed(7)
    torch.manual_seed(7)
    expected = (random.random(), torch.rand(1).item())
    random.seed(7)
    torch.manual_seed(7)

    model = esper.load_model(run_dir)

    assert (random.random(), torch.rand(1).item()) == expected  # the caller's random streams are untouched
    assert not model.training
    assert all(p.device.type == "cpu" for p in model.parameters())
    assert SlotMode.FOSSILIZED in _modes(model), "the run should fossilize a seed to be a real test"
    data = load_data(read_run_config(run_dir).tolaria)
    assert summary.training is not None
    assert _scores(model, data.test) == (summary.training.test_loss, summary.training.test_accuracy)


def test_every_checkpoint_scores_its_epochs_validation_bitwise_blending_and_probation_seeds_as_they_were(
    grown: tuple[Path, RunSummary],
) -> None:
    run_dir, _ = grown
    data = load_data(read_run_config(run_dir).tolaria)
    with (run_dir / "metrics.csv").open(encoding="utf-8") as file:
        rows = {int(row["step"]): row for row in csv.DictReader(file)}
    modes: set[SlotMode] = set()
    for info in read_manifest(run_dir / "checkpoints"):
        model = esper.load_model(run_dir, step=info.global_step)
        row = rows[info.global_step]
        assert _scores(model, data.val) == (float(row["val_loss"]), float(row["val_accuracy"])), info.file
        modes.update(_modes(model))
    # A seed judged in full (shadowing or probation) or blending at one of them: the checkpoint's own forward.
    assert modes & {SlotMode.FULL, SlotMode.BLENDING}, f"the run should hold a seed being judged: {modes}"


def test_a_step_that_is_not_there_is_refused_in_one_line_naming_those_that_are(grown: tuple[Path, RunSummary]) -> None:
    run_dir, _ = grown
    steps = ", ".join(str(info.global_step) for info in read_manifest(run_dir / "checkpoints"))
    with pytest.raises(CheckpointError) as raised:
        esper.load_model(run_dir, step=5)
    message = str(raised.value)
    assert "\n" not in message
    assert f"no checkpoint of step 5 (its steps: {steps})" in message


def test_a_corrupt_newest_checkpoint_is_passed_over_with_a_warning(
    grown: tuple[Path, RunSummary], tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(grown[0], run_dir)
    listed = read_manifest(run_dir / "checkpoints")
    newest, previous = listed[-1], listed[-2]
    path = run_dir / "checkpoints" / newest.file
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # a weight's last byte: the size holds, the SHA-256 does not
    path.write_bytes(bytes(data))

    with pytest.warns(UserWarning, match=rf"{newest.file} does not pass its checks .*; loaded {previous.file}"):
        model = esper.load_model(run_dir)

    want = esper.load_model(grown[0], step=previous.global_step).state_dict()
    got = model.state_dict()
    assert got.keys() == want.keys()
    for key, value in want.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(got[key], value), key
    with pytest.raises(CheckpointError, match=rf"{newest.file} does not pass its checks"):
        esper.load_model(run_dir, step=newest.global_step)


def test_a_config_edited_after_the_run_is_refused_naming_the_key(
    grown: tuple[Path, RunSummary], tmp_path: Path
) -> None:
    """Another tolaria.seed draws another test split: the model would be scored on samples the run never held out."""
    run_dir = tmp_path / "run"
    shutil.copytree(grown[0], run_dir)
    config = run_dir / "config.toml"
    trained = read_run_config(run_dir).tolaria.seed
    text = config.read_text(encoding="utf-8")
    line = f"seed = {trained}\n"
    assert text.count(line) == 1
    config.write_text(text.replace(line, f"seed = {trained + 1}\n"), encoding="utf-8")

    with pytest.raises(ConfigError) as refused:
        esper.load_model(run_dir)
    assert str(refused.value) == (
        f"load_model: {config} was edited after the run's checkpoints were written (tolaria.seed is {trained + 1}"
        f" there but the run trained with {trained}, as checkpoints/manifest.json records); put the run's values back"
    )


def test_a_user_module_factory_host_round_trips(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "esper_user_host_roundtrip.py").write_text(_user_host("pass"), encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    host = ['tolaria.host_model="esper_user_host_roundtrip:factory"']
    summary = _run(tmp_path / "run", tiny_config(tmp_path, epochs=8), host)

    model = esper.load_model(tmp_path / "run")

    assert type(model).__name__ == "Host"
    assert set(_modes(model)) - {SlotMode.DORMANT}, "the run should graft into the user's model to be a real test"
    data = load_data(read_run_config(tmp_path / "run").tolaria)
    assert summary.training is not None
    assert _scores(model, data.test) == (summary.training.test_loss, summary.training.test_accuracy)


def test_export_writes_the_models_weights_and_says_how_to_rebuild_it(
    grown: tuple[Path, RunSummary], tmp_path: Path
) -> None:
    run_dir, _ = grown
    out, err = io.StringIO(), io.StringIO()
    assert export_main([str(run_dir), str(tmp_path / "model.safetensors")], out=out, err=err) == 0, err.getvalue()
    assert f"esper.load_model({str(run_dir)!r})" in out.getvalue()
    model = esper.load_model(run_dir)
    saved = load_file(str(tmp_path / "model.safetensors"))
    tensors = {k: v for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)}
    assert saved.keys() == tensors.keys()
    assert all(torch.equal(saved[k], v) for k, v in tensors.items())
    err = io.StringIO()
    assert export_main([str(run_dir), str(tmp_path / "other.safetensors"), "--step", "5"], err=err) == 2
    assert err.getvalue().count("\n") == 1
    assert "no checkpoint of step 5" in err.getvalue()
    assert not (tmp_path / "other.safetensors").exists()


def test_export_writes_a_channels_last_conv2d_models_weights(tmp_path: Path) -> None:
    """A Conv2d of more than one input channel trains channels_last: its weight is no contiguous tensor, and export
    crashed on it (safetensors: "You are trying to save a non contiguous tensor"), a traceback and exit 1."""
    host = ['tolaria.host_model="tests.tolaria_factories:conv2d_net"']
    _run(tmp_path / "run", tiny_config(tmp_path, epochs=1), host)
    model = esper.load_model(tmp_path / "run")
    weight = model.get_parameter("body.2.weight")
    assert weight.shape[1] > 1
    assert not weight.is_contiguous(), "the run's layout should reach load_model to be a real test"
    out, err = io.StringIO(), io.StringIO()
    assert export_main([str(tmp_path / "run"), str(tmp_path / "model.safetensors")], out=out, err=err) == 0, (
        err.getvalue()
    )
    saved = load_file(str(tmp_path / "model.safetensors"))
    tensors = {k: v for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)}
    assert saved.keys() == tensors.keys()
    assert all(torch.equal(saved[k], v) for k, v in tensors.items())


def test_the_readmes_example_runs_as_written(
    grown: tuple[Path, RunSummary], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = _README.read_text(encoding="utf-8")
    section = text.split("### Using the trained model", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match is not None
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "demo").symlink_to(grown[0], target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    scope: dict[str, object] = {}
    exec(compile(match.group(1), "README.md", "exec"), scope)  # the README's own example
    predicted = scope["predicted"]
    assert isinstance(predicted, torch.Tensor)
    assert predicted.shape == (8,)
