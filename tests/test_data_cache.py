"""Generated data sets kept between runs (actors.tolaria.data_cache): hit, miss, corruption, unwritable directory."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import zipfile
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import pytest
import structlog
import torch

from actors.tolaria import data_cache
from actors.tolaria.build import load_data
from actors.tolaria.data_cache import NpzArrayCache, log_cache_events
from esper.config import load_config
from esper.run_args import checked_start
from esper.runtime.atomic_write import temp_prefix
from esper.runtime.errors import ConfigError
from schemas.config import RunConfig, TolariaConfig

if TYPE_CHECKING:
    from collections.abc import MutableMapping
    from pathlib import Path

    from esper.nn.data import Arrays4


def _said(cache: NpzArrayCache) -> list[MutableMapping[str, Any]]:
    """What the run's log gets of ``cache``'s events (the cache itself logs nothing: see the last test)."""
    with structlog.testing.capture_logs() as logs:
        log_cache_events(cache.events)
    return logs


def _arrays(offset: float = 0.0) -> Arrays4:
    x = np.arange(12, dtype=np.float32).reshape(3, 1, 4) + np.float32(offset)
    return x, np.array([0, 1, 2], dtype=np.int64), x[:2].copy(), np.array([1, 0], dtype=np.int64)


class Generator:
    def __init__(self, arrays: Arrays4) -> None:
        self.arrays = arrays
        self.calls = 0

    def __call__(self) -> Arrays4:
        self.calls += 1
        return self.arrays


def _equal(a: Arrays4, b: Arrays4) -> bool:
    left: tuple[npt.NDArray[np.generic], ...] = a
    right: tuple[npt.NDArray[np.generic], ...] = b
    return all(x.dtype == y.dtype and np.array_equal(x, y) for x, y in zip(left, right, strict=True))


def test_the_first_load_generates_and_stores_the_next_reads_back(tmp_path: Path) -> None:
    cache = NpzArrayCache(tmp_path / "cache")
    generate = Generator(_arrays())
    first = cache("k", generate)
    assert generate.calls == 1
    assert (tmp_path / "cache" / "k.npz").is_file()
    second = NpzArrayCache(tmp_path / "cache")("k", generate)
    assert generate.calls == 1
    assert _equal(first, second)
    assert _equal(second, _arrays())


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage"])
def test_a_damaged_file_is_regenerated_and_replaced_with_a_warning(tmp_path: Path, damage: str) -> None:
    cache = NpzArrayCache(tmp_path)
    cache("k", Generator(_arrays()))
    path = tmp_path / "k.npz"
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        path.write_bytes(bytes(data[: len(data) // 2]))
    elif damage == "flip":
        # A byte inside the first array's data: the zip container stays readable, the checksum does not match.
        start = data.index(np.arange(12, dtype=np.float32).tobytes())
        data[start + 5] ^= 0xFF
        path.write_bytes(bytes(data))
    else:
        path.write_bytes(b"not an npz file")
    generate = Generator(_arrays(offset=0.0))
    reader = NpzArrayCache(tmp_path)
    again = reader("k", generate)
    assert generate.calls == 1
    assert _equal(again, _arrays())
    assert [entry["event"] for entry in _said(reader) if entry["log_level"] == "warning"] == ["data_cache_corrupt"]
    assert _equal(NpzArrayCache(tmp_path)("k", Generator(_arrays(offset=9.0))), _arrays())  # replaced, valid again


def test_an_unwritable_directory_costs_only_the_cache(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache directory should be")
    generate = Generator(_arrays())
    cache = NpzArrayCache(blocker / "cache")
    out = cache("k", generate)
    assert _equal(out, _arrays())
    assert any(entry["event"] == "data_cache_unwritable" for entry in _said(cache))


def test_an_unwritable_directory_is_warned_about_once_per_process(tmp_path: Path) -> None:
    """A run loads its data twice (the start's checks, then the run): the console showed the warning twice."""
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache directory should be")
    logs: list[MutableMapping[str, Any]] = []
    for _ in range(3):
        cache = NpzArrayCache(blocker / "cache")
        cache("k", Generator(_arrays()))
        logs += _said(cache)
    levels = [entry["log_level"] for entry in logs if entry["event"] == "data_cache_unwritable"]
    assert levels == ["warning", "info", "info"]  # the run's log still records each


def test_mnist1d_through_the_cache_equals_a_fresh_generation(tmp_path: Path) -> None:
    cached_config = TolariaConfig(dataset_samples=500, data_cache_dir=str(tmp_path))
    first, second = load_data(cached_config), load_data(cached_config)
    fresh = load_data(TolariaConfig(dataset_samples=500, data_cache_dir=""))
    assert len(list(tmp_path.glob("mnist1d-*-n500-*.npz"))) == 1
    for split in ("train", "val", "test"):
        for data in (first, second):
            assert torch.equal(getattr(data, split).x, getattr(fresh, split).x)
            assert torch.equal(getattr(data, split).y, getattr(fresh, split).y)


def test_a_cached_array_declaring_more_than_it_holds_is_regenerated_not_allocated(tmp_path: Path) -> None:
    """A cache file whose x_train header declared (10**7, 10**6) float32 made numpy allocate 36 TiB: a MemoryError
    traceback ended the run; it is a corrupt cache file like any other."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": (10**7, 10**6)})
    with zipfile.ZipFile(tmp_path / "k.npz", "w") as archive:
        archive.writestr("x_train.npy", header.getvalue())
    generate = Generator(_arrays())
    cache = NpzArrayCache(tmp_path)
    out = cache("k", generate)
    logs = _said(cache)
    assert generate.calls == 1
    assert _equal(out, _arrays())
    warnings = [entry for entry in logs if entry["log_level"] == "warning"]
    assert [entry["event"] for entry in warnings] == ["data_cache_corrupt"]
    assert (
        warnings[0]["error"]
        == "array 'x_train' declares shape (10000000, 1000000) of float32 (36.4 TiB) but holds 0 bytes"
    )


def test_a_load_that_stores_the_data_carries_the_file_for_the_runs_log(tmp_path: Path) -> None:
    """The file is logged by whoever owns the run's log (log_cache_events), not by the cache as it writes."""
    config = TolariaConfig(dataset_samples=500, data_cache_dir=str(tmp_path))
    with structlog.testing.capture_logs() as logs:
        first = load_data(config)
        again = load_data(config)
    assert [e["event"] for e in logs] == []
    [stored] = tmp_path.glob("*.npz")
    assert again.cache_events == (), "read back from the cache: nothing stored"
    with structlog.testing.capture_logs() as logs:
        log_cache_events(first.cache_events)
        log_cache_events(again.cache_events)
    assert logs == [
        {"event": "data_cache_written", "file": str(stored), "size_bytes": stored.stat().st_size, "log_level": "info"}
    ]


# Writes one cache file and is killed (-9) at the rename, its temp file complete: the user's run killed mid-write.
_KILLED_WRITER = """
import os, sys
from pathlib import Path
import numpy as np
from actors.tolaria.data_cache import NpzArrayCache

def stop_at_the_rename(_src, _dst):
    print("written", flush=True)
    sys.stdin.read()

os.replace = stop_at_the_rename
x = np.zeros((3, 1, 4), dtype=np.float32)
y = np.zeros(3, dtype=np.int64)
NpzArrayCache(Path(sys.argv[1]))("k", lambda: (x, y, x, y))
"""


@pytest.mark.timeout(90)  # a real writer process (imports torch)
def test_a_killed_writers_temp_file_is_swept_when_a_cache_opens_and_a_live_writers_is_kept(tmp_path: Path) -> None:
    """A kill -9 while the cache wrote left `.mnist1d-...npz.<random>.tmp` (673 KB) in the cache directory forever:
    the temp name did not say whose it was. Now it carries the writer's pid and a cache open removes the dead
    writers' ones, never a live process's (a concurrent run may be writing it)."""
    writer = subprocess.Popen(
        [sys.executable, "-c", _KILLED_WRITER, str(tmp_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert writer.stdout is not None
        assert writer.stdout.readline() == "written\n"  # the barrier: the temp file is complete, not renamed
        os.kill(writer.pid, signal.SIGKILL)
        assert writer.wait(timeout=30) == -signal.SIGKILL
    finally:
        writer.kill()
        writer.wait(timeout=30)
        assert writer.stdin is not None
        assert writer.stdout is not None
        writer.stdin.close()
        writer.stdout.close()
    [left] = tmp_path.iterdir()
    assert left.name.startswith(f".tmp-{writer.pid}-k.npz.")
    live = tmp_path / f"{temp_prefix()}k.npz.abcd1234.tmp"  # this process's: a write in progress
    live.write_bytes(b"partial")
    cache = NpzArrayCache(tmp_path)
    assert sorted(tmp_path.iterdir()) == [live]
    assert [(e["event"], e["count"]) for e in _said(cache)] == [("data_cache_temp_files_removed", 1)]
    assert _equal(cache("k", Generator(_arrays())), _arrays())
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, "k.npz"])  # the write leaves no temp


def test_generating_mnist1d_is_announced_before_it_starts_and_a_cached_load_is_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """200000 samples were 138 s of silence before the first console line (400,000,000 never ended)."""
    said: list[str] = []
    load_data(TolariaConfig(dataset_samples=200, data_cache_dir=""), said.append)
    assert said == []  # a second or less: not worth a line
    monkeypatch.setattr(data_cache, "ANNOUNCED_FROM_SAMPLES", 200)
    config = TolariaConfig(dataset_samples=200, data_cache_dir=str(tmp_path / "cache"))
    load_data(config, said.append)
    assert said == [f"generating MNIST-1D: 200 samples, about 1 s (kept in {tmp_path / 'cache'} for later runs)"]
    load_data(config, said.append)  # read back from the cache: nothing to wait for
    assert len(said) == 1
    load_data(TolariaConfig(dataset_samples=200, data_cache_dir=""), said.append)
    assert said[1] == "generating MNIST-1D: 200 samples, about 1 s (not kept: tolaria.data_cache_dir is off)"
    load_data(TolariaConfig(dataset="digits", data_cache_dir=""), said.append)
    assert len(said) == 2


def test_a_data_set_size_past_the_bound_is_refused_in_one_line() -> None:
    with pytest.raises(ConfigError, match=r"tolaria\.dataset_samples: expected an integer between 1 and 1000000"):
        load_config(None, ["tolaria.dataset_samples=400000000"])
    assert load_config(None, ["tolaria.dataset_samples=1000000"]).tolaria.dataset_samples == 1_000_000


async def test_a_run_says_it_is_generating_its_data_before_it_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The start's checks load the data before the run's console has a line: the command line's stream is told."""
    monkeypatch.setattr(data_cache, "ANNOUNCED_FROM_SAMPLES", 100)
    config = RunConfig(tolaria=TolariaConfig(dataset_samples=100, data_cache_dir=str(tmp_path / "cache")))
    stream = io.StringIO()
    await checked_start(config, tmp_path / "run", (), None, progress=stream)
    assert stream.getvalue() == (
        f"generating MNIST-1D: 100 samples, about 1 s (kept in {tmp_path / 'cache'} for later runs)\n"
    )
    await checked_start(config, tmp_path / "run", (), None)  # no stream: said nowhere, and not refused
