"""--resume refuses a run whose config.toml was edited after its checkpoints were written (the manifest's run_keys)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import msgspec
import pytest

from actors.tolaria.checkpoints import read_run_keys
from esper.config import apply_overrides, dump_config, load_config
from esper.resume import check_resumable, run_keys
from esper.run import main
from esper.run_parser import EXIT_CONFIG_ERROR
from esper.runtime.errors import ConfigError
from schemas.config import RunConfig

if TYPE_CHECKING:
    from pathlib import Path


def _run_dir(tmp_path: Path, recorded: RunConfig | None) -> Path:
    """A run directory whose config.toml is RunConfig()'s and whose manifest records ``recorded``'s run keys."""
    directory = tmp_path / "run"
    (directory / "checkpoints").mkdir(parents=True)
    (directory / "config.toml").write_text(dump_config(RunConfig()), encoding="utf-8")
    manifest: dict[str, object] = {"schema_version": 2, "checkpoints": [], "graft_log": []}
    if recorded is not None:
        manifest["run_keys"] = run_keys(recorded)
    (directory / "checkpoints" / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    return directory


def _edit_lr(directory: Path, lr: str) -> None:
    config = directory / "config.toml"
    text = config.read_text(encoding="utf-8")
    before = f"lr = {RunConfig().tolaria.lr!r}\n"
    assert text.count(before) == 1
    config.write_text(text.replace(before, f"lr = {lr}\n"), encoding="utf-8")


def test_a_key_edited_in_the_runs_config_is_refused_naming_it_both_values_and_the_file(tmp_path: Path) -> None:
    directory = _run_dir(tmp_path, RunConfig())
    _edit_lr(directory, "0.5")
    edited = apply_overrides(RunConfig(), ["tolaria.lr=0.5"])
    trained = RunConfig().tolaria.lr
    # Resumed with the edited file itself (accepted, then trained at the old rate) or with the original config (was
    # refused, blaming the edited value as the run's).
    for config in (edited, RunConfig()):
        with pytest.raises(ConfigError) as refused:
            check_resumable(directory, config)
        assert str(refused.value) == (
            f"--resume {directory}: {directory / 'config.toml'} was edited after the run's checkpoints were written"
            f" (tolaria.lr is 0.5 there but the run trained with {trained!r}, as checkpoints/manifest.json records);"
            " a resume continues the same training: put the run's values back in its config.toml, or start a new run"
            " with the new ones"
        )


def test_a_manifest_written_before_run_keys_were_recorded_still_resumes(tmp_path: Path) -> None:
    directory = _run_dir(tmp_path, None)
    assert read_run_keys(directory / "checkpoints") is None
    check_resumable(directory, RunConfig())


def test_keys_a_resume_may_change_are_not_recorded(tmp_path: Path) -> None:
    directory = _run_dir(tmp_path, apply_overrides(RunConfig(), ["tolaria.epochs=99", 'tolaria.device="cpu"']))
    check_resumable(directory, RunConfig())


def test_a_run_records_its_keys_in_every_manifest_and_an_edit_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "c.toml"
    config.write_text(
        f'[tolaria]\nepochs = 2\ndataset_samples = 600\n[urza]\nroot = "{tmp_path / "urza"}"\n'
        "[logging]\nconsole = false\n",
        encoding="utf-8",
    )
    run_dir = tmp_path / "run"
    assert main([str(config), "--run-dir", str(run_dir)]) == 0
    written = load_config(run_dir / "config.toml", written=True)
    recorded = read_run_keys(run_dir / "checkpoints")
    assert recorded == json.loads(json.dumps(run_keys(written)))
    assert recorded is not None
    assert recorded["tolaria.lr"] == RunConfig().tolaria.lr
    assert recorded["tolaria.dataset_samples"] == 600
    _edit_lr(run_dir, "0.01")
    capsys.readouterr()
    resume = [str(run_dir / "config.toml"), "--set", "tolaria.epochs=4", "--resume", str(run_dir)]
    assert main(resume) == EXIT_CONFIG_ERROR
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert f"(tolaria.lr is 0.01 there but the run trained with {RunConfig().tolaria.lr!r}, as" in err


def test_another_run_id_is_refused_naming_both_ids(tmp_path: Path) -> None:
    """It was refused as a tampered journal ("restore the journal"), blaming a file nobody had touched."""
    directory = tmp_path / "run"
    (directory / "checkpoints").mkdir(parents=True)
    (directory / "config.toml").write_text(
        dump_config(apply_overrides(RunConfig(), ["run_id='abc'"])), encoding="utf-8"
    )
    with pytest.raises(ConfigError) as refused:
        check_resumable(directory, apply_overrides(RunConfig(), ["run_id='zzz'"]))
    assert str(refused.value) == (
        f"--resume {directory}: run_id is 'zzz' here but the run's id is 'abc'; a resume keeps the run's id (drop that"
        " setting)"
    )
    check_resumable(directory, RunConfig())  # unset: the run's own id, no refusal


def test_a_run_an_earlier_version_wrote_with_values_now_read_as_others_still_resumes(tmp_path: Path) -> None:
    """Its manifest recorded what its config.toml says (a momentum AdamW never read, a slot target named twice, a
    blueprint both included and excluded); this version reads that file as acted on, and compared with the record
    the file looked edited: the resume was refused, and no edit could have put the recorded values back."""
    raw = msgspec.convert(
        {
            "tolaria": {"momentum": 0.8},
            "kasmina": {"slot_targets": ["blocks.0", "blocks.1", "blocks.0"]},
            "karn": {"include": ["BP005", "BP007"], "exclude": ["BP007"]},
        },
        RunConfig,
    )
    directory = tmp_path / "run"
    (directory / "checkpoints").mkdir(parents=True)
    (directory / "config.toml").write_text(dump_config(raw), encoding="utf-8")
    manifest = {"schema_version": 2, "checkpoints": [], "graft_log": [], "run_keys": run_keys(raw)}
    (directory / "checkpoints" / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    written = load_config(directory / "config.toml", (), written=True)
    assert written.tolaria.momentum == RunConfig().tolaria.momentum, "read as acted on"
    check_resumable(directory, written)
    _edit_lr(directory, "0.5")  # an edit is still one
    with pytest.raises(ConfigError, match=r"tolaria.lr is 0.5 there but the run trained with"):
        check_resumable(directory, written)
