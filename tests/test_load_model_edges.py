"""esper.load_model and esper.export at the edges.

An npz file moved or changed since the run, a run's own files as export's output, a lost manifest, a step that is no
int."""

from __future__ import annotations

import asyncio
import io
import json
import shutil
from pathlib import Path

import msgspec
import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

import esper
from actors.tolaria.checkpoints import CheckpointError, read_manifest
from esper import export as export_module
from esper import trained_model
from esper.export import main as export_main
from esper.runtime.errors import ConfigError
from schemas.config import RunConfig
from tests import tolaria_factories

pytestmark = pytest.mark.timeout(120)

_FEATURES = 12
_CLASSES = 3


def _arrays(seed: int, features: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "x_train": rng.normal(size=(48, features)).astype(np.float32),
        "y_train": np.arange(48) % _CLASSES,
        "x_test": rng.normal(size=(12, features)).astype(np.float32),
        "y_test": np.arange(12) % _CLASSES,
    }


@pytest.fixture(scope="module")
def npz_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run of one epoch on an npz file of a few dozen samples (its data.json as this version writes it)."""
    root = tmp_path_factory.mktemp("npz_run")
    np.savez(root / "data.npz", **_arrays(0, _FEATURES))  # type: ignore[arg-type]  # numpy's stub wants ArrayLike
    config = msgspec.convert(
        {
            "logging": {"console": False},
            "runs_dir": str(root / "runs"),
            "urza": {"root": str(root / "urza")},
            "tolaria": {
                "epochs": 1,
                "batch_size": 16,
                "dataset": "npz",
                "npz_path": str(root / "data.npz"),
                "host_model": "mlp",
            },
        },
        RunConfig,
    )

    async def run() -> None:
        summary = await (await esper.start(config, run_dir=root / "run")).wait()
        assert summary.status == "completed", summary.error

    asyncio.run(run())
    return root / "run"


def _copied(npz_run: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the run (its config still names the fixture's data file) and that data file."""
    run_dir = tmp_path / "run"
    shutil.copytree(npz_run, run_dir)
    return run_dir, npz_run.parent / "data.npz"


def _outputs(model: torch.nn.Module) -> torch.Tensor:
    x = torch.from_numpy(_arrays(1, _FEATURES)["x_test"])
    with torch.no_grad():
        out = model(x)
    assert isinstance(out, torch.Tensor)
    return out


@pytest.fixture(scope="module")
def built_from_the_file(npz_run: Path) -> torch.Tensor:
    """The outputs of the run's model built and probed with its npz file's real data, as an earlier version built it
    (data.json hidden from load_model), for the stand-in's builds to be checked against."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(trained_model, "_record", lambda _directory: None)
        return _outputs(esper.load_model(npz_run))


def _as_an_earlier_version_recorded(run_dir: Path) -> dict[str, object]:
    record = json.loads((run_dir / "data.json").read_text(encoding="utf-8"))
    earlier = {key: record[key] for key in ("npz_path", "npz_sha256")}
    (run_dir / "data.json").write_text(json.dumps(earlier), encoding="utf-8")
    return earlier


def test_the_run_records_its_npz_datas_sample_shape_and_class_count(npz_run: Path) -> None:
    record = json.loads((npz_run / "data.json").read_text(encoding="utf-8"))
    assert record["input_shape"] == [_FEATURES]
    assert record["num_classes"] == _CLASSES


@pytest.mark.parametrize("change", ["moved", "replaced"])
def test_a_model_whose_npz_file_was_moved_or_replaced_loads_from_the_recorded_shapes(
    npz_run: Path, tmp_path: Path, change: str, built_from_the_file: torch.Tensor
) -> None:
    """load_model read the training file at its recorded path only to learn its shapes: moved, it failed (file not
    found); replaced by one of other shapes, the model's forward was blamed."""
    expected = built_from_the_file
    run_dir, data = _copied(npz_run, tmp_path)
    kept = tmp_path / "kept.npz"
    shutil.move(data, kept)
    try:
        if change == "replaced":
            np.savez(data, **_arrays(2, _FEATURES + 5))  # type: ignore[arg-type]  # numpy's stub wants ArrayLike
        got = _outputs(esper.load_model(run_dir))
    finally:
        shutil.move(kept, data)
    assert torch.equal(got, expected)


def test_a_model_whose_run_recorded_its_shapes_is_built_without_reading_the_npz_file(
    npz_run: Path, monkeypatch: pytest.MonkeyPatch, built_from_the_file: torch.Tensor
) -> None:
    """load_model read the training file twice (hashed it, then loaded it) only to learn the shapes data.json holds:
    minutes of reading for a large data set."""
    expected = built_from_the_file
    opened: list[str] = []
    real_open = Path.open

    def watched(path: Path, *args: object, **kwargs: object) -> object:
        opened.append(path.name)
        return real_open(path, *args, **kwargs)  # type: ignore[call-overload]  # passed through as given

    monkeypatch.setattr(Path, "open", watched)
    monkeypatch.setattr(np, "load", lambda *_, **__: pytest.fail("np.load of the training file"))
    got = _outputs(esper.load_model(npz_run))
    assert "data.npz" not in opened
    assert torch.equal(got, expected)


def test_an_earlier_runs_model_whose_npz_file_changed_blames_the_data_not_the_model(
    npz_run: Path, tmp_path: Path
) -> None:
    run_dir, data = _copied(npz_run, tmp_path)
    earlier = _as_an_earlier_version_recorded(run_dir)
    kept = tmp_path / "kept.npz"
    shutil.move(data, kept)
    try:
        np.savez(data, **_arrays(2, _FEATURES + 5))  # type: ignore[arg-type]  # numpy's stub wants ArrayLike
        with pytest.raises(ConfigError) as changed:
            esper.load_model(run_dir)
        data.unlink()
        with pytest.raises(ConfigError) as missing:
            esper.load_model(run_dir)
    finally:
        shutil.move(kept, data)
    sha = str(earlier["npz_sha256"])
    for raised, found in ((changed, f"{data} is SHA-256 "), (missing, f"{data} cannot be read (")):
        message = str(raised.value)
        assert "\n" not in message
        assert message.startswith(
            f"load_model: the model's shapes come from its training data, {data} (SHA-256 {sha[:12]}...), and {found}"
        ), message
        assert "forward" not in message
    # The file put back, the run loads as before.
    assert torch.equal(_outputs(esper.load_model(run_dir)), _outputs(esper.load_model(npz_run)))


def test_a_lost_manifest_is_said_as_resume_says_it(npz_run: Path, tmp_path: Path) -> None:
    run_dir, _ = _copied(npz_run, tmp_path)
    files = ", ".join(info.file for info in read_manifest(run_dir / "checkpoints"))
    (run_dir / "checkpoints" / "manifest.json").unlink()
    with pytest.raises(CheckpointError) as raised:
        esper.load_model(run_dir)
    assert str(raised.value) == (
        f"load_model: {run_dir / 'checkpoints' / 'manifest.json'} is missing or lists no checkpoint ({files} present,"
        " but a checkpoint is loaded only once its SHA-256 matches the manifest)"
    )


@pytest.mark.parametrize("step", ["600", 600.0, True])
def test_a_step_that_is_no_int_is_refused(npz_run: Path, step: object) -> None:
    with pytest.raises(TypeError, match=r"^load_model: step must be an int \(a checkpoint's global step\) or None"):
        esper.load_model(npz_run, step=step)  # type: ignore[arg-type]  # the mistake under test


def test_an_int_like_step_loads(npz_run: Path) -> None:
    newest = read_manifest(npz_run / "checkpoints")[-1].global_step
    step = np.int64(newest)  # an entry of an array of steps
    loaded = esper.load_model(npz_run, step=step)  # type: ignore[arg-type]  # an Integral, not an int
    assert torch.equal(_outputs(loaded), _outputs(esper.load_model(npz_run)))


def _run_files(run_dir: Path) -> dict[str, bytes]:
    return {str(path.relative_to(run_dir)): path.read_bytes() for path in run_dir.rglob("*") if path.is_file()}


@pytest.mark.parametrize("inside", ["checkpoints/manifest.json", "newest", "summary.json", "new.safetensors"])
def test_export_refuses_to_write_inside_the_run_even_with_force(npz_run: Path, tmp_path: Path, inside: str) -> None:
    """Onto the manifest the run could no longer be loaded or resumed; onto its newest checkpoint load_model fell
    back to an older one; onto summary.json the summary was gone: each printed "wrote ...". Through a symlink too."""
    run_dir, _ = _copied(npz_run, tmp_path)
    if inside == "newest":
        inside = f"checkpoints/{read_manifest(run_dir / 'checkpoints')[-1].file}"
    before = _run_files(run_dir)
    (tmp_path / "link").symlink_to(run_dir, target_is_directory=True)
    for out_path in (run_dir / inside, tmp_path / "link" / inside):
        for force in ([], ["--force"]):
            out, err = io.StringIO(), io.StringIO()
            assert export_main([str(run_dir), str(out_path), *force], out=out, err=err) == 2
            assert err.getvalue() == (
                f"esper.export: {out_path} is inside the run directory {run_dir}: writing it would replace the run's"
                " own files\n"
            )
            assert out.getvalue() == ""
    assert _run_files(run_dir) == before


def test_export_refuses_a_path_inside_the_run_through_a_linked_folder(npz_run: Path, tmp_path: Path) -> None:
    """A checkpoints folder moved to another disk and linked back: resolved, the path was outside the run."""
    run_dir, _ = _copied(npz_run, tmp_path)
    moved = tmp_path / "elsewhere"
    (run_dir / "checkpoints").rename(moved)
    (run_dir / "checkpoints").symlink_to(moved, target_is_directory=True)
    before = _run_files(moved)
    out_path = run_dir / "checkpoints" / read_manifest(moved)[-1].file
    out, err = io.StringIO(), io.StringIO()
    assert export_main([str(run_dir), str(out_path), "--force"], out=out, err=err) == 2
    assert err.getvalue().startswith(f"esper.export: {out_path} is inside the run directory {run_dir}")
    assert _run_files(moved) == before


def test_export_says_a_symbolic_link_loop_in_one_line(npz_run: Path, tmp_path: Path) -> None:
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    out, err = io.StringIO(), io.StringIO()
    assert export_main([str(npz_run), str(loop / "model.safetensors")], out=out, err=err) == 2
    assert err.getvalue().startswith(f"esper.export: {loop / 'model.safetensors'}: cannot be checked (")
    assert err.getvalue().count("\n") == 1


def test_export_refuses_an_existing_file_unless_forced(npz_run: Path, tmp_path: Path) -> None:
    target = tmp_path / "model.safetensors"
    target.write_bytes(b"someone's file")
    out, err = io.StringIO(), io.StringIO()
    assert export_main([str(npz_run), str(target)], out=out, err=err) == 2
    assert err.getvalue() == f"esper.export: {target} exists (--force replaces it)\n"
    assert target.read_bytes() == b"someone's file"
    out, err = io.StringIO(), io.StringIO()
    assert export_main([str(npz_run), str(target), "--force"], out=out, err=err) == 0, err.getvalue()
    assert set(load_file(str(target))) == {
        k for k, v in esper.load_model(npz_run).state_dict().items() if isinstance(v, torch.Tensor)
    }


def test_export_keeps_a_file_that_appeared_while_the_model_loaded(
    npz_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The existing-file check ran before the load, seconds before the write: a file made in between was replaced."""
    target = tmp_path / "model.safetensors"

    def load_while_someone_writes(run_dir: Path, *, step: int | None = None) -> torch.nn.Module:
        model = esper.load_model(run_dir, step=step)
        target.write_bytes(b"someone's file")
        return model

    monkeypatch.setattr(export_module, "load_model", load_while_someone_writes)
    out, err = io.StringIO(), io.StringIO()
    assert export_main([str(npz_run), str(target)], out=out, err=err) == 2
    assert err.getvalue() == f"esper.export: {target} exists (--force replaces it)\n"
    assert target.read_bytes() == b"someone's file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]  # no temp file left


def test_exports_hint_loads_the_weights_back_as_it_says(npz_run: Path, tmp_path: Path) -> None:
    """The hint said load_state_dict(..., strict=False) alone: into the plain host model that drops the seeds'
    weights silently. What it says to check holds for the model load_model rebuilds."""
    target = tmp_path / "model.safetensors"
    out = io.StringIO()
    assert export_main([str(npz_run), str(target)], out=out) == 0
    hint = out.getvalue()
    assert "unexpected must be empty" in hint
    assert "strict=False" in hint
    model = esper.load_model(npz_run)
    missing, unexpected = model.load_state_dict(load_file(str(target)), strict=False)
    assert unexpected == []
    assert missing, "the slots' control state should be left out to be a real test"
    assert all(key.endswith("esper_slot._extra_state") for key in missing)


def test_export_records_the_run_directory_absolute(
    npz_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A relative run directory was recorded as given (esper.load_model('run')): the hint, in the file's metadata and
    on the console, failed from any other directory."""
    monkeypatch.chdir(npz_run.parent)
    target = tmp_path / "model.safetensors"
    out = io.StringIO()
    assert export_main([npz_run.name, str(target)], out=out) == 0
    call = f"esper.load_model({str(npz_run)!r})"
    with safe_open(str(target), framework="pt") as saved:
        assert saved.metadata() == {"esper_model": call}
    assert f"the state_dict of {call}," in out.getvalue()


def test_a_model_whose_code_changed_is_refused_naming_the_entry_as_resume_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only the first line of torch's load_state_dict error was kept ("Error(s) in loading state_dict for
    Sequential:"): no key was named, where --resume names the one that differs."""
    config = msgspec.convert(
        {
            "logging": {"console": False},
            "runs_dir": str(tmp_path / "runs"),
            "urza": {"root": str(tmp_path / "urza")},
            "tolaria": {"epochs": 1, "dataset_samples": 500, "host_model": "tests.tolaria_factories:resizable_mlp"},
        },
        RunConfig,
    )

    async def run() -> None:
        summary = await (await esper.start(config, run_dir=tmp_path / "run")).wait()
        assert summary.status == "completed", summary.error

    asyncio.run(run())
    monkeypatch.setattr(tolaria_factories, "RESIZABLE_WIDTH", 24)
    with pytest.raises(CheckpointError) as raised:
        esper.load_model(tmp_path / "run")
    message = str(raised.value)
    assert "does not fit tolaria.host_model = 'tests.tolaria_factories:resizable_mlp' as it builds now" in message
    assert "1.bias is [16] there and [24] in the model (was the model's code or its slot targets changed?" in message
    assert "\n" not in message
    monkeypatch.setattr(tolaria_factories, "RESIZABLE_WIDTH", 16)
    monkeypatch.setattr(tolaria_factories, "RESIZABLE_SLOTS", ("3",))
    err = io.StringIO()
    assert export_main([str(tmp_path / "run"), str(tmp_path / "model.safetensors")], err=err) == 2
    assert "it holds 1.esper_slot._extra_state, which the model no longer has" in err.getvalue()
    assert err.getvalue().count("\n") == 1
