"""The summary's host-only comparison, fed by a recorded baseline (nissa.baseline_run).

A recorded baseline from a real host-only run feeds a growing run's summary, every way a baseline can be unusable is
refused with one line naming the key, the run and the problem, and a run that grew nothing says why."""

from __future__ import annotations

import dataclasses
import re
from typing import TYPE_CHECKING

import msgspec
import pytest

from esper.baseline import load_baseline, with_baseline
from esper.config import dump_config, load_config
from esper.data_fingerprint import record_data
from esper.nn.data import load_dataset
from esper.run import start
from esper.runtime.errors import ConfigError
from esper.summary_table import format_summary, growth_lines
from schemas.config import NissaConfig, RunConfig, TolariaConfig
from schemas.run import GrowthFigures, RunSummary, TrainingFigures
from tests.test_e2e_run import tiny_config

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.timeout(120)


def write_run(
    directory: Path,
    *,
    tolaria: TolariaConfig | None = None,
    status: str = "completed",
    seeds: dict[str, int] | None = None,
    val_accuracy: float | None = 0.875,
    summary: bool = True,
) -> Path:
    """A finished run's directory as the runtime writes it: the resolved config.toml and summary.json."""
    directory.mkdir(parents=True)
    config = RunConfig(tolaria=tolaria or TolariaConfig())
    (directory / "config.toml").write_text(dump_config(config), encoding="utf-8")
    if summary:
        record = RunSummary(
            run_id="host-1",
            run_dir=str(directory),
            status=status,  # type: ignore[arg-type]
            started_at="2026-12-05T00:00:00Z",
            duration_s=1.0,
            exit_code=0,
            dead_letters=0,
            training=TrainingFigures(
                epochs=config.tolaria.epochs,
                global_step=100,
                host_parameters=2782,
                seed_parameters=0,
                val_accuracy=val_accuracy,
            ),
            growth=GrowthFigures(final_val_accuracy=val_accuracy, seeds=seeds or {}),
        )
        (directory / "summary.json").write_bytes(msgspec.json.encode(record))
    return directory


def comparing_with(directory: Path, tolaria: TolariaConfig | None = None) -> RunConfig:
    return RunConfig(tolaria=tolaria or TolariaConfig(), nissa=NissaConfig(baseline_run=str(directory)))


def test_no_baseline_configured_means_none() -> None:
    assert load_baseline(RunConfig()) is None


def test_a_host_only_run_of_the_same_training_is_read(tmp_path: Path) -> None:
    baseline = load_baseline(comparing_with(write_run(tmp_path / "host")))
    assert baseline is not None
    assert (baseline.run_id, baseline.epochs, baseline.val_accuracy) == ("host-1", 10, 0.875)
    growth = with_baseline(GrowthFigures(final_val_accuracy=0.9, baseline_val_accuracy=0.5, baseline_epoch=3), baseline)
    assert (growth.baseline_val_accuracy, growth.baseline_epoch) == (0.875, 10)
    assert (growth.baseline_source, growth.baseline_run) == ("recorded", "host-1")
    assert "run host-1, host only, 10 epochs" in "\n".join(growth_lines(growth))


def test_a_baseline_an_earlier_version_made_with_a_key_now_inert_is_read(tmp_path: Path) -> None:
    """kasmina.confidence_k did nothing in that run either: its config.toml is read, not refused."""
    directory = write_run(tmp_path / "host")
    config = directory / "config.toml"
    config.write_text(config.read_text(encoding="utf-8").replace("confidence_k = 4.0", "confidence_k = 9.0"))
    assert "confidence_k = 9.0" in config.read_text(encoding="utf-8")
    baseline = load_baseline(comparing_with(directory))
    assert baseline is not None
    assert baseline.val_accuracy == 0.875


def test_a_run_that_grew_nothing_names_the_controllers_reasons_but_not_the_routine_ones() -> None:
    growth = GrowthFigures(no_op_reasons={"not_epoch_end": 400, "no_strained_slot": 30, "cooldown": 4, "plateau": 0})
    line = next(line for line in growth_lines(growth) if line.startswith("seeds by outcome"))
    assert line.endswith("none (the controller's reasons: no_strained_slot 30, cooldown 4, plateau 0)")
    grown = GrowthFigures(seeds={"fossilized": 1}, no_op_reasons={"no_strained_slot": 30})
    assert next(line for line in growth_lines(grown) if line.startswith("seeds by outcome")).endswith("fossilized 1")
    idle = GrowthFigures(no_op_reasons={"not_epoch_end": 400})
    assert next(line for line in growth_lines(idle) if line.startswith("seeds by outcome")).endswith("none")


def test_a_run_whose_budgets_tripped_says_a_rerun_may_differ() -> None:
    """Reproducibility holds while no wall-clock budget trips; when one did, the summary says so."""
    assert not [line for line in growth_lines(GrowthFigures()) if line.startswith("note:")]
    for growth in (GrowthFigures(fallback_decisions=2), GrowthFigures(emergency_events=1)):
        [note] = [line for line in growth_lines(growth) if line.startswith("note:")]
        assert re.search(r"a rerun of the same config may (then )?differ", note)


def test_the_note_names_why_the_fallback_decided() -> None:
    """Fallback decisions during a GNN worker restart were blamed on a wall-clock budget this machine's load tripped."""
    growth = GrowthFigures(
        fallback_decisions=1624, fallback_reasons={"policy_restarting": 1577, "timeout_inference": 47}
    )
    [note] = [line for line in growth_lines(growth) if line.startswith("note:")]
    assert note.startswith(
        "note: the fallback decided 1624 times (1577 while the GNN worker restarted, 47 over the decision budget at"
        " this machine's load); a rerun of the same config may then differ"
    )
    assert note.endswith("(events.jsonl: fallback_applied, tamiyo_gnn_worker_restarted)")
    assert "emergenc" not in note
    both = GrowthFigures(fallback_decisions=1, fallback_reasons={"policy_error": 1}, emergency_events=2)
    notes = [line for line in growth_lines(both) if line.startswith("note:")]
    assert notes[0].startswith("note: the fallback decided 1 time (1 after the policy failed);")
    # Not "usually from a budget the load tripped": a run whose emergencies were all non-finite steps read that too.
    assert notes[1] == (
        "note: an emergency a wall-clock budget raised (hook or epoch time) depends on this machine's load, so a rerun"
        " of the same config may differ; those of non-finite steps repeat (events.jsonl: emergency_signal)"
    )
    # A slow policy's later packets (policy_busy) are a cause in words too, with the event that tells more.
    busy = GrowthFigures(fallback_decisions=3, fallback_reasons={"policy_busy": 3})
    [note] = [line for line in growth_lines(busy) if line.startswith("note:")]
    assert "(3 while the policy was still deciding an earlier packet)" in note
    assert note.endswith("(events.jsonl: fallback_applied, tamiyo_state_not_journaled)")


@pytest.mark.parametrize(
    ("make", "ours", "message"),
    [
        (lambda d: d, TolariaConfig(), "not a run directory"),
        (lambda d: write_run(d, summary=False), TolariaConfig(), "no summary.json; the run has not finished"),
        (lambda d: write_run(d, status="interrupted"), TolariaConfig(), "did not complete (status interrupted)"),
        (lambda d: write_run(d, seeds={"fossilized": 2, "culled": 1}), TolariaConfig(), "grew 3 seeds"),
        (lambda d: write_run(d, val_accuracy=None), TolariaConfig(), "no validation accuracy"),
        (lambda d: write_run(d), TolariaConfig(epochs=30), "tolaria.epochs is 10 there and 30 here"),
        (lambda d: write_run(d), TolariaConfig(seed=3), "tolaria.seed is 0 there and 3 here"),
        (lambda d: write_run(d), TolariaConfig(dataset="digits"), "tolaria.dataset is 'mnist1d' there and 'digits'"),
        (lambda d: write_run(d), TolariaConfig(precision="bf16"), "tolaria.precision is 'auto' there and 'bf16'"),
    ],
)
def test_an_unusable_baseline_is_refused_with_one_line_naming_it(
    tmp_path: Path, make: object, ours: TolariaConfig, message: str
) -> None:
    directory = tmp_path / "host"
    assert callable(make)
    make(directory)
    with pytest.raises(ConfigError) as raised:
        load_baseline(comparing_with(directory, ours))
    text = str(raised.value)
    assert text.startswith(f"nissa.baseline_run: {directory}: ")
    assert message in text
    assert "\n" not in text


def test_a_baseline_trained_on_other_bytes_of_the_same_npz_file_is_refused(tmp_path: Path) -> None:
    npz = tmp_path / "data.npz"
    npz.write_bytes(b"the arrays the baseline trained on")
    tolaria = TolariaConfig(dataset="npz", npz_path=str(npz))
    directory = write_run(tmp_path / "host", tolaria=tolaria)
    record_data(directory, tolaria)
    assert load_baseline(comparing_with(directory, tolaria)) is not None
    npz.write_bytes(b"other arrays under the same name")
    with pytest.raises(ConfigError) as raised:
        load_baseline(comparing_with(directory, tolaria))
    text = str(raised.value)
    assert text.startswith(f"nissa.baseline_run: {directory}: the run trained on {npz} (SHA-256 ")
    assert text.endswith("a baseline must train on the same data")


def test_a_baseline_trained_on_the_same_npz_bytes_at_another_path_compares(tmp_path: Path) -> None:
    """The baseline had to name the file by the very same path string: a copy of the data, or the file moved (or a
    relative path written another way), was refused though the bytes, which data.json records, were the same."""
    theirs_npz, ours_npz = tmp_path / "then" / "data.npz", tmp_path / "now" / "data.npz"
    for path in (theirs_npz, ours_npz):
        path.parent.mkdir()
        path.write_bytes(b"the same arrays")
    theirs = TolariaConfig(dataset="npz", npz_path=str(theirs_npz))
    directory = write_run(tmp_path / "host", tolaria=theirs)
    record_data(directory, theirs)
    ours = TolariaConfig(dataset="npz", npz_path=str(ours_npz))
    baseline = load_baseline(comparing_with(directory, ours))
    assert baseline is not None
    assert baseline.val_accuracy == 0.875
    ours_npz.write_bytes(b"other arrays")
    with pytest.raises(ConfigError, match="a baseline must train on the same data"):
        load_baseline(comparing_with(directory, ours))


def test_a_baseline_on_other_built_in_data_is_refused(tmp_path: Path) -> None:
    """A built-in data set's record (the digest of the splits the baseline loaded) is compared with this run's:
    the same config over a data cache changed since trained on other data."""
    directory = write_run(tmp_path / "host", tolaria=TolariaConfig(dataset="digits"))
    data = load_dataset("digits", samples=300)
    record_data(directory, TolariaConfig(dataset="digits"), data)
    config = comparing_with(directory, TolariaConfig(dataset="digits"))
    assert load_baseline(config, data) is not None
    labels = data.train.y.clone()
    labels[:2] = labels[:2].flip(0) if labels[0] != labels[1] else (labels[:2] + 1) % data.num_classes
    changed = dataclasses.replace(data, train=dataclasses.replace(data.train, y=labels))
    with pytest.raises(ConfigError) as raised:
        load_baseline(config, changed)
    text = str(raised.value)
    assert text.startswith(f"nissa.baseline_run: {directory}: the run trained on digits data of SHA-256 ")
    assert text.endswith("a baseline must train on the same data")


def test_a_damaged_summary_is_refused(tmp_path: Path) -> None:
    directory = write_run(tmp_path / "host")
    (directory / "summary.json").write_bytes(b'{"run_id": "host-1", "status": ')
    with pytest.raises(ConfigError, match=r"summary.json is not a run summary"):
        load_baseline(comparing_with(directory))


async def test_a_growing_run_compares_against_a_real_host_only_run(tmp_path: Path) -> None:
    config = tiny_config(tmp_path, epochs=8)  # long enough to grow seeds it could keep
    host = await (await start(config, tmp_path / "host", overrides=["kasmina.max_active_seeds=0"])).wait()
    assert host.status == "completed", host.error
    assert host.growth is not None
    assert host.growth.seeds == {}
    assert host.growth.baseline_source == "host_only"
    # The summary says why nothing grew: the controller wanted to, but no seed may be live.
    assert host.growth.no_op_reasons.get("seed_budget", 0) > 0
    assert "none (the controller's reasons: seed_budget" in format_summary(host)
    assert host.training is not None
    assert host.training.val_accuracy is not None

    grown = await (
        await start(config, tmp_path / "grown", overrides=[f'nissa.baseline_run="{tmp_path / "host"}"'])
    ).wait()
    assert grown.status == "completed", grown.error
    growth = grown.growth
    assert growth is not None
    assert growth.seeds, "the tiny config grows the host"
    assert growth.baseline_source == "recorded"
    assert growth.baseline_run == host.run_id
    assert growth.baseline_val_accuracy == host.training.val_accuracy
    assert growth.baseline_epoch == 8
    assert f"run {host.run_id}, host only, 8 epochs" in format_summary(grown)
    resolved = load_config(tmp_path / "grown" / "config.toml")
    assert resolved.nissa.baseline_run == str(tmp_path / "host")


async def test_a_run_with_an_unusable_baseline_does_not_start(tmp_path: Path) -> None:
    config = tiny_config(tmp_path, epochs=6)
    with pytest.raises(ConfigError, match=r"nissa.baseline_run: .*missing: not a run directory"):
        await start(config, tmp_path / "run", overrides=[f'nissa.baseline_run="{tmp_path / "missing"}"'])
    assert not (tmp_path / "run").exists()


async def test_a_run_given_relative_paths_is_finished_from_another_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The run's config.toml kept nissa.baseline_run, urza.root and tolaria.data_cache_dir as given, relative to where
    the run started: its printed --resume, from anywhere else, was refused ("nissa.baseline_run: host: not a run
    directory"), or silently opened a second, empty artifact store there. Now they are written absolute, and the resume
    says no setting changed."""
    first, elsewhere = tmp_path / "first", tmp_path / "elsewhere"
    first.mkdir()
    elsewhere.mkdir()
    config = tiny_config(tmp_path, epochs=1)
    relative = ['urza.root="store"', 'tolaria.data_cache_dir="cache"']
    monkeypatch.chdir(first)
    host = await (await start(config, "host", overrides=[*relative, "kasmina.max_active_seeds=0"])).wait()
    assert host.status == "completed", host.error
    grown = await (await start(config, tmp_path / "grown", overrides=[*relative, 'nissa.baseline_run="host"'])).wait()
    assert grown.status == "completed", grown.error
    written = load_config(tmp_path / "grown" / "config.toml")
    assert (written.nissa.baseline_run, written.urza.root, written.tolaria.data_cache_dir) == (
        str(first / "host"),
        str(first / "store"),
        str(first / "cache"),
    )
    (tmp_path / "grown" / "summary.json").unlink()  # as if killed before its summary: the resume finishes the run
    monkeypatch.chdir(elsewhere)
    finished = await (await start(tmp_path / "grown" / "config.toml", resume=tmp_path / "grown")).wait()
    assert finished.status == "completed", finished.error
    assert finished.growth is not None
    assert (finished.growth.baseline_source, finished.growth.baseline_run) == ("recorded", host.run_id)
    assert list(elsewhere.iterdir()) == []  # no second artifact store, no second data cache
    events = (tmp_path / "grown" / "events.jsonl").read_text(encoding="utf-8")
    assert "esper.resume_setting_changed" not in events
