"""Config that cannot run: one line on stderr naming the key, exit status 2, no run directory left behind.

No run directory is left behind where it can be checked before the run starts."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from typing import TYPE_CHECKING

import anyio
import numpy as np
import pytest
import torch

from actors.tamiyo.heuristic import HeuristicState
from actors.tamiyo.outcomes import OutcomeState
from actors.tamiyo.state import TamiyoCounters, TamiyoState
from actors.tamiyo.state_journal import STATE_JOURNAL_FILENAME, TamiyoStateJournal
from actors.tamiyo.stop_state import write_stop_state
from actors.urza.store import UrzaStore
from esper.run import main
from esper.run_dir import claim_run_dir
from esper.run_parser import EXIT_CONFIG_ERROR
from esper.start_checks import check_urza_root
from esper.tamiyo_resume import TAMIYO_STATE_FILE
from schemas.config import UrzaConfig

if TYPE_CHECKING:
    from pathlib import Path


def refused(tmp_path: Path, capsys: pytest.CaptureFixture[str], toml: str, run_dir: Path | None = None) -> str:
    """Run ``python -m esper.run`` on ``toml`` in process; assert exit status 2 and return stderr."""
    (tmp_path / "c.toml").write_text(toml)
    target = run_dir if run_dir is not None else tmp_path / "r"
    assert main([str(tmp_path / "c.toml"), "--run-dir", str(target)]) == EXIT_CONFIG_ERROR
    return capsys.readouterr().err


def one_line(err: str, start: str) -> None:
    assert err.count("\n") == 1, err
    assert err.startswith(start), err


def test_a_malformed_npz_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.npz"
    np.savez(bad, x_train=np.zeros((4, 3), dtype=np.float32), y_train=np.zeros(5, dtype=np.int64))
    err = refused(tmp_path, capsys, f'[tolaria]\ndataset = "npz"\nnpz_path = "{bad}"\n')
    one_line(
        err,
        f"{tmp_path / 'c.toml'}: tolaria.npz_path = '{bad}': missing array 'x_test' (arrays present: x_train, y_train)",
    )
    assert err.count(str(bad)) == 1  # named by the key's value (the data set's own error named it twice)
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    ("settings", "start", "needle"),
    [
        (
            '[kasmina]\nslot_targets = ["nope"]\n',
            "kasmina.slot_targets = ['nope']: ",
            "'nope' match no submodule of CNN1dHost",
        ),
        (
            '[tolaria]\nhost_model = "tests.tolaria_factories:slotless_mlp"\n',
            "tolaria.host_model = 'tests.tolaria_factories:slotless_mlp': the model has no seed slot",
            "set kasmina.slot_targets to the qualified names of the modules to grow after, or give the model a"
            " slot_targets attribute; its layers include 1 (Linear), 3 (Linear)",
        ),
    ],
)
def test_slots_that_cannot_be_placed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], settings: str, start: str, needle: str
) -> None:
    err = refused(tmp_path, capsys, settings)
    one_line(err, f"{tmp_path / 'c.toml'}: {start}")  # led by the file the value came from
    assert needle in err
    assert not (tmp_path / "r").exists()


def test_a_factory_returning_one_model_object_on_every_call(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A factory handing out one module failed at assembly, after the run directory was made: the run's second build
    of it found its slots already wrapped in ("wrap: module '1' already has a slot")."""
    err = refused(tmp_path, capsys, '[tolaria]\nhost_model = "tests.tolaria_factories:singleton_mlp"\n')
    one_line(
        err,
        f"{tmp_path / 'c.toml'}: tolaria.host_model = 'tests.tolaria_factories:singleton_mlp': the factory returned the"
        " same model object on its second call; it must return a new model on each call",
    )
    assert not (tmp_path / "r").exists()


def test_a_factory_failing_on_its_second_call(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = refused(tmp_path, capsys, '[tolaria]\nhost_model = "tests.tolaria_factories:once_only_mlp"\n')
    one_line(
        err,
        f"{tmp_path / 'c.toml'}: tolaria.host_model = 'tests.tolaria_factories:once_only_mlp': the factory raised"
        " RuntimeError: only one model per process (at ",
    )
    # Where in the user's code, as a failure mid-run says it: the message alone named no line of theirs.
    assert re.search(r"\(at (.*/)?tests/tolaria_factories\.py:\d+ in once_only_mlp\) on its second call\n$", err), err
    assert not (tmp_path / "r").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_without_cuda(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = refused(tmp_path, capsys, '[tolaria]\ndevice = "cuda"\n')
    one_line(err, f"{tmp_path / 'c.toml'}: tolaria.device = 'cuda': ")
    assert "not available" in err
    assert not (tmp_path / "r").exists()


def test_a_metrics_port_in_use(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        err = refused(tmp_path, capsys, f"[nissa]\nprometheus_port = {port}\n")
    one_line(err, f"{tmp_path / 'c.toml'}: nissa.prometheus_port = {port}: cannot listen on 127.0.0.1:{port}: ")
    assert not (tmp_path / "r").exists()


def test_a_redis_server_that_does_not_answer(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]  # nothing listens there once closed
    url = f"redis://127.0.0.1:{port}/0"
    err = refused(tmp_path, capsys, f'[oona]\nbackend = "redis"\nredis_url = "{url}"\n')
    one_line(err, f"oona.redis_url: {url} does not answer: ")
    # A password in the URL stays off the console.
    err = refused(tmp_path, capsys, f'[oona]\nbackend = "redis"\nredis_url = "redis://me:s3cret@127.0.0.1:{port}/0"\n')
    one_line(err, f"oona.redis_url: redis://me:***@127.0.0.1:{port}/0 does not answer: ")
    assert "s3cret" not in err
    # So does one given as a query parameter, which the client reads as well.
    err = refused(
        tmp_path, capsys, f'[oona]\nbackend = "redis"\nredis_url = "redis://127.0.0.1:{port}/0?password=s3cret"\n'
    )
    one_line(err, f"oona.redis_url: redis://127.0.0.1:{port}/0?password=*** does not answer: ")
    assert "s3cret" not in err
    # Known only by connecting, after the run directory was made: the message names it, and a new run may reuse it.
    run_dir = tmp_path / "r"
    assert err.rstrip("\n").endswith(
        f"; nothing was trained: run again with --run-dir {run_dir} (a new run may reuse it) or remove it"
    )
    assert ".;" not in err  # the client's message ends with a full stop: "...6399).; nothing was trained"
    assert sorted(p.name for p in run_dir.iterdir()) == [
        "command.key",
        "config.toml",
        "data.json",  # the built-in data set's digest, which a resume compares
        "events.jsonl",
        "run.lock",
    ]
    claim_run_dir(run_dir, resume=False).release()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://nowhere", "oona.redis_url: expected a redis://, rediss:// or unix:// URL, got 'http://nowhere'"),
        ("localhost:6379", "oona.redis_url: expected a redis://, rediss:// or unix:// URL, got 'localhost:6379'"),
        (
            "redis://me:s3cret@127.0.0.1:abc/0",
            "oona.redis_url: expected a port number from 0 to 65535 in 'redis://me:***@127.0.0.1:abc/0'",
        ),
        # The client dropped a database path that is no number: the streams went to database 0, unsaid.
        (
            "redis://me:s3cret@127.0.0.1:6379/abc",
            "oona.redis_url: expected a database number as the path, got 'abc' in 'redis://me:***@127.0.0.1:6379/abc'",
        ),
        # Query values the client refused only when it connected, after the run directory was made.
        (
            "redis://127.0.0.1:6379/0?db=abc",
            "oona.redis_url: the Redis client refuses db='abc' in 'redis://127.0.0.1:6379/0?db=abc'",
        ),
        (
            "redis://127.0.0.1:6379/0?password=s3cret&socket_timeout=abc",
            "oona.redis_url: the Redis client refuses socket_timeout='abc' in"
            " 'redis://127.0.0.1:6379/0?password=***&socket_timeout=abc'",
        ),
    ],
)
def test_a_redis_url_that_is_not_one_is_refused_before_the_run_directory_is_made(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], url: str, message: str
) -> None:
    """A malformed URL printed the client's ValueError traceback; then it was refused only after the run directory
    (command.key, config.toml, events.jsonl, run.lock) was made and left behind."""
    err = refused(tmp_path, capsys, f'[oona]\nbackend = "redis"\nredis_url = "{url}"\n')
    one_line(err, f"{tmp_path / 'c.toml'}: {message}")
    assert "s3cret" not in err
    assert not (tmp_path / "r").exists()
    # Named by the override that set it, the password masked there too.
    (tmp_path / "c.toml").write_text("")
    assert main([str(tmp_path / "c.toml"), "--set", "oona.backend=redis", "--set", f"oona.redis_url={url}"]) == 2
    err = capsys.readouterr().err
    assert "s3cret" not in err
    one_line(err, "--set oona.redis_url=")
    assert err.rstrip("\n").endswith(message)


def test_the_redis_backend_without_its_package_is_refused_before_the_run_directory_is_made(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without the redis extra the refusal came once the bus opened, after the claim: it left command.key,
    config.toml, events.jsonl and run.lock in a new run directory."""
    monkeypatch.setitem(sys.modules, "redis", None)  # what an install without the extra finds: no redis package
    message = (
        "oona.backend = 'redis': needs the redis package, which is not installed"
        " (pip install -e '.[redis]' in a checkout, pip install 'esper-morphogenesis[redis]' otherwise)\n"
    )
    assert refused(tmp_path, capsys, '[oona]\nbackend = "redis"\n') == f"{tmp_path / 'c.toml'}: {message}"
    assert not (tmp_path / "r").exists()
    (tmp_path / "c.toml").write_text("")
    overrides = ["--set", 'oona.backend="redis"', "--run-dir", str(tmp_path / "r")]
    assert main([str(tmp_path / "c.toml"), *overrides]) == EXIT_CONFIG_ERROR
    assert capsys.readouterr().err == f'--set oona.backend="redis": {message}'
    assert not (tmp_path / "r").exists()


def test_gnn_weights_that_do_not_load_name_the_run_directory_they_leave(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Refused in one line, but command.key, config.toml, events.jsonl and run.lock were left in the run directory
    unsaid (the Redis refusals say so): the weights' contents are checked only as Tamiyo loads them."""
    bad = tmp_path / "w.safetensors"
    bad.write_text("not a safetensors file")
    toml = f'[tolaria]\nepochs = 1\n[tamiyo]\npolicy = "gnn"\ngnn_checkpoint = "{bad}"\n'
    err = refused(tmp_path, capsys, toml).splitlines()[-1]  # after the run's header: the directory is made by then
    assert err.startswith(f"{tmp_path / 'c.toml'}: tamiyo.gnn_checkpoint = '{bad}': not a safetensors file"), err
    run_dir = tmp_path / "r"
    assert err.endswith(
        f"; nothing was trained: run again with --run-dir {run_dir} (a new run may reuse it) or remove it"
    )
    left = ["command.key", "config.toml", "data.json", "events.jsonl", "run.lock"]
    assert sorted(p.name for p in run_dir.iterdir()) == left
    claim_run_dir(run_dir, resume=False).release()  # as it says: a new run may reuse it


@pytest.mark.parametrize("saved_at", ["stop", "journal"])
def test_a_resume_whose_gnn_weights_are_gone_names_the_weights_the_run_decided_with(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], saved_at: str
) -> None:
    """The refusal named the path alone: which file to put back (a sweep's weights all share one name) was in no
    line of it. The controller's saved state records the file's SHA-256 prefix: the state saved at the last stop, or
    the journal's newest entry after a kill."""
    checkpoints = tmp_path / "run" / "checkpoints"
    checkpoints.mkdir(parents=True)
    state = TamiyoState(
        policy="gnn",
        policy_version="file-99fd783d9c26",
        fallback=HeuristicState(),
        outcomes=OutcomeState(),
        counters=TamiyoCounters(),
        last_step=40,
    )
    if saved_at == "stop":
        write_stop_state(checkpoints / TAMIYO_STATE_FILE, state)
    else:
        anyio.run(TamiyoStateJournal(checkpoints / STATE_JOURNAL_FILENAME).append, 40, state)
    gone = tmp_path / "w.safetensors"
    (tmp_path / "c.toml").write_text(f'[tamiyo]\npolicy = "gnn"\ngnn_checkpoint = "{gone}"\n')
    assert main([str(tmp_path / "c.toml"), "--resume", str(tmp_path / "run")]) == EXIT_CONFIG_ERROR
    one_line(
        capsys.readouterr().err,
        f"{tmp_path / 'c.toml'}: tamiyo.gnn_checkpoint = '{gone}': cannot read it: No such file or directory; the run"
        " decided with the file whose SHA-256 starts 99fd783d9c26 (policy version file-99fd783d9c26)",
    )


def test_a_redis_url_the_client_refuses_only_when_used_names_the_run_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = "redis://127.0.0.1:6379/0?password=s3cret&x=1"
    err = refused(tmp_path, capsys, f'[oona]\nbackend = "redis"\nredis_url = "{url}"\n')
    one_line(
        err,
        "oona.redis_url: 'redis://127.0.0.1:6379/0?password=***&x=1': the URL holds a setting the Redis client does"
        " not know",
    )
    assert f"; nothing was trained: run again with --run-dir {tmp_path / 'r'} (a new run may reuse it) or remove" in err


def test_a_run_directory_that_cannot_be_made(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "file").write_text("not a directory")
    run_dir = tmp_path / "file" / "run"
    one_line(
        refused(tmp_path, capsys, "", run_dir),
        f"run directory {run_dir}: is under {tmp_path / 'file'}, which is a file, not a directory: choose another",
    )


@pytest.mark.parametrize(
    ("settings", "start"),
    [
        ('[karn]\ninclude = ["BP999"]\n', "karn.include = ['BP999']: unknown blueprints ['BP999']; known: BP001, "),
        ('[karn]\nexclude = ["BP001", "BP998"]\n', "karn.exclude = ['BP001', 'BP998']: unknown blueprints ['BP998']; "),
        (
            "[tolaria]\ndataset_samples = 20\nvalidation_fraction = 0.01\n",
            "tolaria.validation_fraction = 0.01: data set 'mnist1d': validation_fraction 0.01 holds out no validation"
            " sample of 16",
        ),
        (
            '[tolaria]\ninitial_seeds = ["features.0=BP001"]\n',
            "tolaria.initial_seeds[0] = 'features.0=BP001': no slot after 'features.0' (slots: blocks.0, blocks.1, ",
        ),
        (
            '[tolaria]\ninitial_seeds = ["blocks.0=BP999"]\n',
            "tolaria.initial_seeds[0] = 'blocks.0=BP999': no blueprint 'BP999' (known: BP001, ",
        ),
        (
            '[tamiyo]\npolicy = "gnn"\ngnn_checkpoint = "/nonexistent/w.safetensors"\n',
            "tamiyo.gnn_checkpoint = '/nonexistent/w.safetensors': cannot read it: No such file or directory",
        ),
        (
            '[nissa]\nprometheus_host = "999.1.1.1"\nprometheus_port = 9555\n',  # it blamed the port
            "nissa.prometheus_host = '999.1.1.1': cannot listen there: ",
        ),
    ],
)
def test_what_failed_while_the_run_assembled_is_refused_before_its_directory_is_made(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], settings: str, start: str
) -> None:
    """Each was found only once the run directory was made, and printed without its file or --set (or, for the
    metrics host, blaming the port)."""
    err = refused(tmp_path, capsys, f'{settings}[urza]\nroot = "{tmp_path / "urza"}"\n')
    one_line(err, f"{tmp_path / 'c.toml'}: {start}")
    assert not (tmp_path / "r").exists()


def test_a_checked_list_item_names_the_set_that_gave_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "c.toml").write_text("")
    override = 'tolaria.initial_seeds=["features.0=BP001"]'
    assert main([str(tmp_path / "c.toml"), "--set", override, "--run-dir", str(tmp_path / "r")]) == EXIT_CONFIG_ERROR
    one_line(capsys.readouterr().err, f"--set {override}: tolaria.initial_seeds[0] = 'features.0=BP001': no slot ")


@pytest.mark.parametrize(
    ("factory", "needle"),
    [
        (
            "wrong_input_mlp",
            "the model's forward raised when probed with a batch of 2 of the mnist1d data set's samples of shape"
            " [1, 40]: RuntimeError: mat1 and mat2 shapes cannot be multiplied (2x40 and 7x16)",
        ),
        (
            "three_class_mlp",
            "the model must return a [batch, 10] tensor of class scores for the mnist1d data set's samples of shape"
            " [1, 40] (10 classes); it returned shape [2, 3] for a batch of 2",
        ),
    ],
)
def test_a_user_model_that_does_not_fit_the_data(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], factory: str, needle: str
) -> None:
    # Found by the start's checks, before the run directory is made (it failed at the first step, in every restart).
    settings = (
        "[logging]\nconsole = false\n[tolaria]\ndataset_samples = 500\n"
        f'host_model = "tests.tolaria_factories:{factory}"\n'
    )
    err = refused(tmp_path, capsys, settings)
    expected = f"{tmp_path / 'c.toml'}: tolaria.host_model = 'tests.tolaria_factories:{factory}': {needle}"
    assert err.splitlines()[-1] == expected
    # Nothing of a run was written: the same --run-dir takes the corrected config.
    assert not (tmp_path / "r" / "checkpoints").exists()
    (tmp_path / "c.toml").write_text(
        settings.replace(factory, "tiny_mlp").replace("dataset_samples", "epochs = 1\ndataset_samples")
    )
    assert main([str(tmp_path / "c.toml"), "--run-dir", str(tmp_path / "r")]) == 0


def test_a_model_that_cannot_train_channels_last_is_refused_before_the_run_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A Conv2d model flattening with ``.view`` passed the start's checks (run contiguous), then failed at the first
    step and in each of its restarts (exit 1): the run makes it and its batches channels_last."""
    settings = (
        "[logging]\nconsole = false\n[tolaria]\nepochs = 1\ndataset_samples = 500\n"
        'host_model = "tests.tolaria_factories:conv2d_view_net"\n'
    )
    err = refused(tmp_path, capsys, settings)
    one_line(
        err,
        f"{tmp_path / 'c.toml'}: tolaria.host_model = 'tests.tolaria_factories:conv2d_view_net': the model cannot"
        " train on a batch of 2 in channels_last memory format (tolaria.channels_last = true: use .reshape in forward,"
        " or set tolaria.channels_last = false): RuntimeError: view size is not compatible",
    )
    assert not (tmp_path / "r").exists()
    # As the error says: the same model trains in the contiguous format.
    (tmp_path / "c.toml").write_text(settings + "channels_last = false\n")
    assert main([str(tmp_path / "c.toml"), "--run-dir", str(tmp_path / "r")]) == 0


def test_a_resume_refused_by_its_bus_leaves_the_run_as_it_was(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The refused resume had already rewritten the run's config.toml with its overrides (the printed --resume then
    failed too), and the events file got no line at all (a tail --follow of it never ended)."""
    (tmp_path / "c.toml").write_text("[tolaria]\nepochs = 1\ndataset_samples = 500\n[logging]\nconsole = false\n")
    run = tmp_path / "run"
    assert main([str(tmp_path / "c.toml"), "--run-dir", str(run)]) == 0
    written = (run / "config.toml").read_bytes()
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]  # nothing listens there once closed
    overrides = ["--set", "tolaria.epochs=2", "--set", 'oona.backend="redis"']
    overrides += ["--set", f'oona.redis_url="redis://127.0.0.1:{port}/0"']
    capsys.readouterr()
    assert main([str(run / "config.toml"), "--resume", str(run), *overrides]) == EXIT_CONFIG_ERROR
    one_line(capsys.readouterr().err, f"oona.redis_url: redis://127.0.0.1:{port}/0 does not answer: ")
    assert (run / "config.toml").read_bytes() == written
    last = json.loads((run / "events.jsonl").read_text().splitlines()[-1])
    assert (last["event"], last["status"]) == ("run_finished", "failed")
    assert main([str(run / "config.toml"), "--resume", str(run), "--set", "tolaria.epochs=2"]) == 0


def test_a_factory_raising_keyboard_interrupt_is_refused_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """It ended the run with exit 130 and not a word (the factory runs on a worker thread: no Ctrl-C raises there)."""
    host = "tests.tolaria_factories:interrupting_factory"
    err = refused(tmp_path, capsys, f'[tolaria]\nhost_model = "{host}"\n')
    one_line(err, f"{tmp_path / 'c.toml'}: tolaria.host_model = {host!r}: the factory raised KeyboardInterrupt (at ")
    assert re.search(r"tests/tolaria_factories\.py:\d+ in interrupting_factory\)\n$", err), err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    ("name", "statement", "detail"),
    [("interrupts", "raise KeyboardInterrupt", "KeyboardInterrupt"), ("exits", "raise SystemExit(4)", "SystemExit: 4")],
)
def test_a_host_module_that_escapes_as_it_imports_is_refused_in_one_line(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    name: str,
    statement: str,
    detail: str,
) -> None:
    module = f"{name}_on_import"
    (tmp_path / f"{module}.py").write_text(f"{statement}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    err = refused(tmp_path, capsys, f'[tolaria]\nhost_model = "{module}:f"\n')
    assert err == (
        f"{tmp_path / 'c.toml'}: tolaria.host_model = '{module}:f': cannot import {module!r}: {detail}"
        f" (at {tmp_path / module}.py:1 in <module>)\n"
    )
    assert not (tmp_path / "r").exists()


def test_an_npz_too_short_for_the_built_in_host_is_refused_before_the_run_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The config check built the host for MNIST-1D's 40 features and 10 classes, whatever the data: the refusal came
    only once the run directory was made (config.toml, data.json, events.jsonl and run.lock left in it)."""
    short = tmp_path / "short.npz"
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(80, 3)), np.arange(80) % 4
    np.savez(short, x_train=x[:60], y_train=y[:60], x_test=x[60:], y_test=y[60:])
    err = refused(tmp_path, capsys, f'[tolaria]\ndataset = "npz"\nnpz_path = "{short}"\nhost_model = "cnn1d"\n')
    one_line(
        err,
        f"{tmp_path / 'c.toml'}: tolaria.host_model = 'cnn1d': cannot be built for the npz data set (3 features a"
        " sample, 4 classes): CNN1dHost: need length >= 4",
    )
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    ("settings", "overrides", "start"),
    [
        (
            '[tamiyo]\npolicy = "gnn"\n',
            ['tamiyo.gnn_checkpoint=""'],
            '--set tamiyo.gnn_checkpoint="": tamiyo.gnn_checkpoint: expected the path of a safetensors file, got an'
            " empty string",
        ),
        (
            '[tolaria]\ndataset = "npz"\nnpz_path = ""\n',
            [],
            "c.toml: tolaria.npz_path: expected the path of an .npz file, got an empty string",
        ),
    ],
)
def test_an_empty_path_is_refused_as_empty_not_as_the_working_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], settings: str, overrides: list[str], start: str
) -> None:
    """``--set tamiyo.gnn_checkpoint=""`` said ``tamiyo.gnn_checkpoint = '/the/working/dir': not a regular file``: the
    empty path had been made absolute, as the working directory."""
    (tmp_path / "c.toml").write_text(settings, encoding="utf-8")
    sets = [arg for override in overrides for arg in ("--set", override)]
    assert main([str(tmp_path / "c.toml"), *sets, "--run-dir", str(tmp_path / "r")]) == EXIT_CONFIG_ERROR
    err = capsys.readouterr().err
    one_line(err.removeprefix(f"{tmp_path}/"), start)
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    ("override", "start"),
    [
        (
            "tolaria={validation_fraction=0.0001, lr=0.01}",
            "tolaria.validation_fraction = 0.0001: data set 'mnist1d': validation_fraction 0.0001 holds out no",
        ),
        (
            'tamiyo={policy="gnn", gnn_checkpoint="/nonexistent"}',
            "tamiyo.gnn_checkpoint = '/nonexistent': cannot read it",
        ),
    ],
)
def test_a_value_set_in_an_inline_table_names_the_set_that_gave_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], override: str, start: str
) -> None:
    """A value from ``--set 'tolaria={validation_fraction=0.0001}'`` was blamed on the config file, which never set
    it: only a --set of the key itself was matched."""
    (tmp_path / "c.toml").write_text("")
    sets = ["--set", "tolaria.epochs=1", "--set", override, "--set", "tamiyo.germinate_cooldown_epochs=1"]
    assert main([str(tmp_path / "c.toml"), *sets, "--run-dir", str(tmp_path / "r")]) == EXIT_CONFIG_ERROR
    one_line(capsys.readouterr().err, f"--set {override}: {start}")
    assert not (tmp_path / "r").exists()


def _tree(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def test_an_artifact_store_that_cannot_be_made_is_refused_before_the_run_directory_is_made(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """urza.root was opened only as the run assembled: the refusal came after the run directory was made, which was
    left holding this attempt's files and was not named (a cron job left one a try). A path under a regular file
    cannot be made, root or not; a resume refused for it leaves its run as it was."""
    (tmp_path / "file").write_text("not a directory")
    root = tmp_path / "file" / "urza"
    err = refused(tmp_path, capsys, f'[tolaria]\nepochs = 1\n[urza]\nroot = "{root}"\n')
    one_line(
        err,
        f"{tmp_path / 'c.toml'}: urza.root = '{root}': is under {tmp_path / 'file'}, which is a file, not a directory:"
        " point urza.root elsewhere",
    )
    assert not (tmp_path / "r").exists()
    (tmp_path / "c.toml").write_text("[tolaria]\nepochs = 1\ndataset_samples = 500\n[logging]\nconsole = false\n")
    run = tmp_path / "run"
    assert main([str(tmp_path / "c.toml"), "--run-dir", str(run)]) == 0
    before = _tree(run)
    capsys.readouterr()
    resumed = [str(run / "config.toml"), "--resume", str(run), "--set", "tolaria.epochs=2"]
    assert main([*resumed, "--set", f'urza.root="{root}"']) == EXIT_CONFIG_ERROR
    one_line(capsys.readouterr().err, f"--set urza.root=\"{root}\": urza.root = '{root}': is under ")
    assert _tree(run) == before


def test_an_artifact_store_on_a_read_only_file_system_is_refused_before_the_run_directory_is_made(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The finding as found: a read-only mount (modes do not stop root; a read-only file system does)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a read-only tmpfs needs root")
    mount = tmp_path / "ro"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,ro", "tmpfs", str(mount)], check=False)
    if done.returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        for root, what in (
            (mount / "u", f"the store cannot be made in {mount}, which is on a read-only file system"),
            (mount, f"the store is not writable ({mount} is on a read-only file system)"),
        ):
            err = refused(tmp_path, capsys, f'[tolaria]\nepochs = 1\n[urza]\nroot = "{root}"\n')
            one_line(
                err,
                f"{tmp_path / 'c.toml'}: urza.root = '{root}': {what}; a run stores its compiled blueprints there:"
                " make it writable or point urza.root elsewhere",
            )
            assert not (tmp_path / "r").exists()
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_a_damaged_catalogue_names_the_run_directory_it_leaves(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Found only as the store opens, after the run directory was made: named, as a Redis refusal names it."""
    root = tmp_path / "store"
    root.mkdir()
    (root / "catalog.sqlite").write_bytes(b"this is not a SQLite database, only some bytes long enough" * 4)
    err = refused(tmp_path, capsys, f'[tolaria]\nepochs = 1\n[urza]\nroot = "{root}"\n').splitlines()[-1]
    assert err.startswith(f"{tmp_path / 'c.toml'}: urza.root = '{root}': the catalogue "), err
    run_dir = tmp_path / "r"
    assert err.endswith(
        f"; nothing was trained: run again with --run-dir {run_dir} (a new run may reuse it) or remove it"
    )
    claim_run_dir(run_dir, resume=False).release()  # as it says: a new run may reuse it


def test_an_artifact_store_that_can_be_made_or_written_passes_its_check_and_nothing_is_made(tmp_path: Path) -> None:
    check_urza_root(UrzaConfig(root=str(tmp_path / "new" / "urza")))
    assert list(tmp_path.iterdir()) == []  # the store makes it as it opens, not the check
    UrzaStore(tmp_path / "store").close()
    check_urza_root(UrzaConfig(root=str(tmp_path / "store")))


def test_an_artifact_store_at_a_dangling_link_is_refused_naming_the_link(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The check walked up past a link to a missing directory; the store then failed with 'File exists' for a path
    the user saw as missing, after the run directory was made."""
    link = tmp_path / "store"
    link.symlink_to(tmp_path / "gone")
    err = refused(tmp_path, capsys, f'[tolaria]\nepochs = 1\n[urza]\nroot = "{link}"\n')
    one_line(
        err,
        f"{tmp_path / 'c.toml'}: urza.root = '{link}': {link} is a symbolic link to {tmp_path / 'gone'}, which does"
        " not exist: make that directory or point urza.root elsewhere",
    )
    assert not (tmp_path / "r").exists()
