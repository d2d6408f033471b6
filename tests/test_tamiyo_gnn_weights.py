"""tamiyo.gnn_checkpoint: a GNN policy decides with the weights of a safetensors file; bad files are one-line errors."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

import pytest
import torch
from safetensors.torch import save_file

from actors.tamiyo.gnn_policy import GnnPolicy, weights_sha256
from actors.tamiyo.gnn_weights import load_gnn_weights
from actors.tamiyo.spec import GnnSettings, _check_same_weights, _gnn_factory
from esper.nn.policy_gnn import TamiyoGNNConfig, build_tamiyo_gnn
from esper.runtime.errors import ConfigError
from esper.runtime.lanes import Lane
from schemas.config import TamiyoConfig
from tests._tamiyo_harness import BLUEPRINTS

if TYPE_CHECKING:
    from pathlib import Path

SMALL = TamiyoGNNConfig(hidden=32, gat_hidden=16, heads=2)


def _saved(path: Path, config: TamiyoGNNConfig, seed: int) -> str:
    model = build_tamiyo_gnn(config, seed=seed)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return weights_sha256(model)


def test_the_file_weights_are_the_networks(tmp_path: Path) -> None:
    path = tmp_path / "policy.safetensors"
    expected = _saved(path, SMALL, seed=3)
    model, digest = load_gnn_weights(str(path), SMALL)
    assert weights_sha256(model) == expected
    assert digest == hashlib.sha256(path.read_bytes()).hexdigest()
    assert not model.training


def test_a_device_is_refused_before_it_is_read() -> None:
    """/dev/zero was read until memory ran out."""
    with pytest.raises(ConfigError, match=r"^tamiyo.gnn_checkpoint = '/dev/zero': not a regular file$"):
        load_gnn_weights("/dev/zero", SMALL)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot read it: No such file or directory"),
        (b"not safetensors", "not a safetensors file: "),
        ("other sizes", "the weights do not fit tamiyo_gnn_v1 at these sizes: "),
    ],
)
def test_a_file_that_cannot_serve_is_a_one_line_config_error(
    tmp_path: Path, content: bytes | str | None, message: str
) -> None:
    path = tmp_path / "policy.safetensors"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        _saved(path, TamiyoGNNConfig(hidden=24, gat_hidden=8, heads=2), seed=1)
    with pytest.raises(ConfigError) as info:
        load_gnn_weights(str(path), SMALL)
    text = str(info.value)
    assert text.startswith(f"tamiyo.gnn_checkpoint = {str(path)!r}: {message}")
    assert "\n" not in text


async def test_the_policy_built_for_a_run_decides_with_the_file_weights(tmp_path: Path) -> None:
    path = tmp_path / "policy.safetensors"
    expected = _saved(path, SMALL, seed=9)
    config = TamiyoConfig(policy="gnn", gnn_checkpoint=str(path), policy_process="thread")
    async with Lane("policy", "cpu", num_threads=1) as lane:
        policy = _gnn_factory(config, GnnSettings(model_config=SMALL), BLUEPRINTS, lane)()
    assert isinstance(policy, GnnPolicy)
    state = policy.export_state()
    assert state.weights_sha256 == expected
    assert policy.version == f"file-{hashlib.sha256(path.read_bytes()).hexdigest()[:12]}"


def test_an_empty_or_non_finite_file_is_a_short_one_line_config_error(tmp_path: Path) -> None:
    """An empty file listed all 252 missing keys in its "one line" (12,862 characters); NaN weights were accepted and
    made every decision fail (a restart storm with policy_process = "thread")."""
    empty = tmp_path / "empty.safetensors"
    save_file({}, str(empty))
    with pytest.raises(ConfigError) as info:
        load_gnn_weights(str(empty), SMALL)
    assert len(str(info.value)) < len(str(empty)) + 400  # the path, the sentence and at most 300 of detail
    assert str(info.value).endswith("...")
    model = build_tamiyo_gnn(SMALL, seed=2)
    weights = {k: v.contiguous().clone() for k, v in model.state_dict().items()}
    name = next(iter(weights))
    weights[name].view(-1)[0] = float("nan")
    poisoned = tmp_path / "nan.safetensors"
    save_file(weights, str(poisoned))
    with pytest.raises(ConfigError) as nan:
        load_gnn_weights(str(poisoned), SMALL)
    assert str(nan.value) == f"tamiyo.gnn_checkpoint = {str(poisoned)!r}: non-finite values (NaN or inf) in {name}"


async def test_a_resume_with_other_weights_is_a_one_line_config_error(tmp_path: Path) -> None:
    """A resume given another tamiyo.gnn_checkpoint than the run decided with failed Tamiyo's start (exit 1) with a
    message naming no setting; it is refused before any actor starts, naming the setting and both digests."""
    first, other = tmp_path / "first.safetensors", tmp_path / "other.safetensors"
    _saved(first, SMALL, seed=9)
    _saved(other, SMALL, seed=10)
    async with Lane("policy", "cpu", num_threads=1) as lane:
        config = TamiyoConfig(policy="gnn", gnn_checkpoint=str(first), policy_process="thread")
        resumed = _gnn_factory(config, GnnSettings(model_config=SMALL), BLUEPRINTS, lane)().export_state()
        other_config = TamiyoConfig(policy="gnn", gnn_checkpoint=str(other), policy_process="thread")
        make = _gnn_factory(other_config, GnnSettings(model_config=SMALL), BLUEPRINTS, lane)
        with pytest.raises(ConfigError) as info:
            _check_same_weights(other_config, resumed, make)
        same = _gnn_factory(config, GnnSettings(model_config=SMALL), BLUEPRINTS, lane)
        _check_same_weights(config, resumed, same)  # the same file: no complaint
    text = str(info.value)
    assert text.startswith(f"tamiyo.gnn_checkpoint = {str(other)!r}: these are not the weights the run being resumed")
    assert text.endswith("give the tamiyo.gnn_checkpoint its config.toml names")
    # The weights as the user knows them: the files' SHA-256 prefixes (the log, the policy version, sha256sum).
    given, run = (hashlib.sha256(p.read_bytes()).hexdigest()[:12] for p in (other, first))
    assert f"(given the file with SHA-256 {given}..., the run's the file with SHA-256 {run}...;" in text
    assert f"tensor digests {make.weights_digest[:12]} and {resumed.weights_sha256[:12]})" in text
    assert "\n" not in text


def test_integer_weights_are_refused_not_truncated(tmp_path: Path) -> None:
    """An integer-typed tensor was cast into the network: the policy decided on weights truncated to whole numbers."""
    model = build_tamiyo_gnn(SMALL, seed=2)
    weights = {k: v.contiguous().clone() for k, v in model.state_dict().items()}
    name = next(k for k, v in weights.items() if v.is_floating_point())
    weights[name] = (weights[name] * 10).to(torch.int32)
    path = tmp_path / "int.safetensors"
    save_file(weights, str(path))
    with pytest.raises(ConfigError) as info:
        load_gnn_weights(str(path), SMALL)
    assert str(info.value) == (
        f"tamiyo.gnn_checkpoint = {str(path)!r}: tensor {name} is torch.int32, the network's is torch.float32 (not"
        " cast)"
    )
    half = tmp_path / "half.safetensors"
    save_file({k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}, str(half))
    load_gnn_weights(str(half), SMALL)  # another floating dtype is the network's kind: cast as before
