"""Every config key that names a path is made absolute at the start, from the working directory, ``~`` expanded."""

from __future__ import annotations

import pwd
from typing import TYPE_CHECKING

import msgspec
import pytest

from esper.config_paths import PATH_KEYS, absolute_paths
from esper.resume_changes import changed_settings
from esper.runtime.errors import ConfigError
from schemas.config import NissaConfig, RunConfig, TamiyoConfig, TolariaConfig, UrzaConfig

if TYPE_CHECKING:
    from pathlib import Path


def _all_relative() -> RunConfig:
    return RunConfig(
        runs_dir="runs",
        tolaria=TolariaConfig(dataset="npz", npz_path="data.npz", data_cache_dir="~/cache"),
        tamiyo=TamiyoConfig(policy="gnn", gnn_checkpoint="w.safetensors"),
        urza=UrzaConfig(root=".esper/urza"),
        nissa=NissaConfig(baseline_run="../base12"),
    )


def test_each_path_key_is_made_absolute_and_nothing_else_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only npz_path and gnn_checkpoint were: a relative nissa.baseline_run, urza.root or tolaria.data_cache_dir stayed
    as given in the run's config.toml, so a resume from another directory refused the baseline ("not a run
    directory") or silently opened a second, empty artifact store."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    config = _all_relative()
    made = absolute_paths(config)
    assert sorted(dotted for dotted, _, _ in changed_settings(config, made)) == sorted(PATH_KEYS)
    assert made.runs_dir == str(tmp_path / "runs")
    assert made.tolaria.npz_path == str(tmp_path / "data.npz")
    assert made.tolaria.data_cache_dir == str(tmp_path / "home" / "cache")
    assert made.tamiyo.gnn_checkpoint == str(tmp_path / "w.safetensors")
    assert made.urza.root == str(tmp_path / ".esper" / "urza")
    assert made.nissa.baseline_run == str(tmp_path / ".." / "base12")
    assert absolute_paths(made) == made  # idempotent: a resume of the run's own config changes nothing


def test_unset_empty_and_absolute_paths_are_left_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """None is unset and "" is tolaria.data_cache_dir's "no cache": neither is a path to resolve."""
    monkeypatch.chdir(tmp_path)
    config = RunConfig(
        runs_dir="/abs/runs/",
        tolaria=TolariaConfig(data_cache_dir=""),
        urza=UrzaConfig(root="/srv/urza"),
    )
    made = absolute_paths(config)
    assert (made.runs_dir, made.tolaria.data_cache_dir, made.urza.root) == ("/abs/runs/", "", "/srv/urza")
    assert (made.tolaria.npz_path, made.tamiyo.gnn_checkpoint, made.nissa.baseline_run) == (None, None, None)


def _no_home(monkeypatch: pytest.MonkeyPatch) -> None:
    """As in a container running as a uid with no passwd entry and no HOME: ``~`` has nowhere to expand to."""

    def no_entry(uid: int) -> pwd.struct_passwd:
        raise KeyError(f"getpwuid(): uid not found: {uid}")

    monkeypatch.delenv("HOME", raising=False)
    monkeypatch.setattr(pwd, "getpwuid", no_entry)


def test_a_data_cache_dir_under_a_missing_home_is_left_for_its_fallback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The default data_cache_dir "~/.cache/esper" raised pathlib's RuntimeError on every start without a home
    directory (a traceback, exit 1); the trainer generates the data instead of caching it there, so it stays as
    written."""
    monkeypatch.chdir(tmp_path)
    _no_home(monkeypatch)
    made = absolute_paths(RunConfig(runs_dir="runs", tolaria=TolariaConfig(data_cache_dir="~/.cache/esper")))
    assert made.tolaria.data_cache_dir == "~/.cache/esper"
    assert made.runs_dir == str(tmp_path / "runs")


@pytest.mark.parametrize("key", [key for key in PATH_KEYS if key != "tolaria.data_cache_dir"])
def test_any_other_key_under_a_missing_home_is_refused_naming_it(
    key: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    _no_home(monkeypatch)
    section, _, field = key.rpartition(".")
    config = RunConfig()
    if section:
        config = msgspec.structs.replace(
            config, **{section: msgspec.structs.replace(getattr(config, section), **{field: "~/x"})}
        )
    else:
        config = msgspec.structs.replace(config, **{field: "~/x"})
    with pytest.raises(ConfigError) as caught:
        absolute_paths(config)
    message = str(caught.value)
    assert message.startswith(f"{key} = '~/x': no home directory to expand '~' to")
    assert "\n" not in message
