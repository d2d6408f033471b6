"""The full rollback tier: checkpoint files, their manifest (SHA-256 and graft log) and a writer thread.

Which of them a resume loads, each verified against its manifest entry: ``checkpoint_verify``.

Layout of ``<run dir>/checkpoints/``:

- ``step-<n>.pt``: a safetensors file, see ``checkpoint_codec`` (no pickle). (The ``.pt`` suffix is kept because tools
  and tests look for ``step-*.pt``.)
- ``manifest.json``: ``{"schema_version", "checkpoints": [{"file", "sha256", "size_bytes", "global_step", "epoch",
  "batch_index"}...] (oldest first), "graft_log": [...], "run_keys": {...}}``, rewritten atomically after each file.
  ``run_keys`` (absent in manifests written before it) holds the config keys the run trains with (see
  ``esper.resume.run_keys``), so a resume tells an edited run config.toml from the one the checkpoints were trained on.
  ``esper_version`` (absent before it was recorded) is the Esper version that wrote the manifest.

Every file is written atomically (temp file, fsync, rename, directory fsync). Only the last ``keep_last`` are kept.
A checkpoint is streamed to its temp file and hashed as it goes, never held whole in memory (see ``_write``).
"""

from __future__ import annotations

import hashlib
import json
import queue
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, final

import msgspec
import structlog

from actors.tolaria.checkpoint_codec import SCHEMA_VERSION, CheckpointError, encode_state_chunks
from actors.tolaria.cuda_streams import Ready, mark_ready
from esper.runtime.atomic_write import atomic_write_bytes, atomic_write_chunks

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator, Mapping
    from pathlib import Path

    import torch

    from actors.tolaria.snapshots import TrainState

__all__ = [
    "MANIFEST",
    "CheckpointError",
    "CheckpointInfo",
    "CheckpointWriter",
    "checkpoint_files",
    "read_manifest",
    "read_run_keys",
    "read_written_by",
]

MANIFEST = "manifest.json"

_log = structlog.get_logger("actors.tolaria")


def checkpoint_files(directory: Path) -> list[str]:
    """The names of the checkpoint files in ``directory``, sorted, whether its manifest lists them or not."""
    return sorted(path.name for path in directory.glob("step-*.pt"))


@final
@dataclass(frozen=True, slots=True)
class CheckpointInfo:
    """One manifest entry."""

    file: str
    sha256: str
    size_bytes: int
    global_step: int
    epoch: int
    batch_index: int


def _manifest_json(path: Path) -> Any:
    """The manifest at ``path`` as parsed JSON; None when there is none.

    Raises:
        CheckpointError: it exists but cannot be read or parsed.
    """
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (ValueError, OSError, RecursionError) as err:
        # RecursionError: the json module recurses per nesting level, so "[[[[..." 100 000 deep is no traceback.
        raise CheckpointError(f"{path}: unreadable manifest: {type(err).__name__}: {err}") from err


def read_manifest(directory: Path) -> list[CheckpointInfo]:
    """The manifest's entries, oldest first; [] when there is none.

    Raises:
        CheckpointError: the manifest exists but cannot be parsed, or an entry names anything but this directory's
            ``step-<its step>.pt`` (a resume would read, and rotation would delete, whatever it names).
    """
    path = directory / MANIFEST
    raw = _manifest_json(path)
    if raw is None:
        return []
    try:
        entries = [CheckpointInfo(**entry) for entry in raw["checkpoints"]]
    except (KeyError, TypeError) as err:
        raise CheckpointError(f"{path}: unreadable manifest: {type(err).__name__}: {err}") from err
    for info in entries:
        problem = _entry_problem(info)
        if problem is not None:
            raise CheckpointError(f"{path}: entry {info.file!r}: {problem}")
    return entries


def read_run_keys(directory: Path) -> dict[str, object] | None:
    """The manifest's ``run_keys`` (dotted key -> JSON value); None when there is no manifest or it records none (one
    written before they were recorded). Blocking.

    Raises:
        CheckpointError: the manifest exists but cannot be parsed, or its ``run_keys`` is not an object.
    """
    path = directory / MANIFEST
    raw = _manifest_json(path)
    keys = raw.get("run_keys") if isinstance(raw, dict) else None
    if keys is None:
        return None
    if not isinstance(keys, dict):
        raise CheckpointError(f"{path}: run_keys must be an object, got {type(keys).__name__}")
    return keys


def read_written_by(directory: Path) -> str | None:
    """The Esper version that wrote the manifest (``esper_version``); None when there is no manifest, it records none
    (an earlier version's) or it cannot be read (the resume's other checks say why). Blocking."""
    try:
        raw = _manifest_json(directory / MANIFEST)
    except CheckpointError:
        return None
    written = raw.get("esper_version") if isinstance(raw, dict) else None
    return written if isinstance(written, str) else None


def _entry_problem(info: CheckpointInfo) -> str | None:
    if not isinstance(info.global_step, int) or isinstance(info.global_step, bool) or info.global_step < 0:
        return f"global_step must be a step number, got {info.global_step!r}"
    if info.file != f"step-{info.global_step}.pt":
        return f"a checkpoint's file is step-<global_step>.pt in this directory, got {info.file!r}"
    if not isinstance(info.size_bytes, int) or info.size_bytes < 0:
        return f"size_bytes must be a byte count, got {info.size_bytes!r}"
    if not isinstance(info.sha256, str) or len(info.sha256) != 64:
        return f"sha256 must be 64 hex digits, got {info.sha256!r}"
    return None


@final
class CheckpointWriter:
    """Serialises and writes checkpoints on its own thread, so the step loop waits neither for serialisation nor
    for the disk (atomic writes with fsync).

    ``submit`` (lane thread) queues a captured TrainState; at most ``depth`` wait, after which submit blocks
    (backpressure rather than unbounded memory). ``flush`` waits until everything queued is on disk; ``close``
    flushes and ends the thread. A failed write is logged and re-raised by the next submit or flush.

    On CUDA a capture's copies are only queued on the submitting lane's stream when submit is called, and the writer
    thread reads on a stream of its own: ``submit`` records an event on ``device``'s current stream and the writer
    thread waits for it before it reads the state (``device``: the training device; on a CPU, or None, there is
    nothing to wait for).

    ``run_keys`` (JSON values by dotted key) and ``written_by`` (the Esper version, as ``esper_version``) go into
    every manifest it writes; None: not recorded.
    """

    def __init__(
        self,
        directory: Path,
        *,
        keep_last: int,
        depth: int = 2,
        on_written: Callable[[CheckpointInfo], None] | None = None,
        device: torch.device | None = None,
        run_keys: Mapping[str, object] | None = None,
        written_by: str | None = None,
    ) -> None:
        self._directory = directory
        self._written_by = written_by
        self._run_keys = None if run_keys is None else dict(run_keys)
        self._keep_last = keep_last
        self._device = device
        self._queue: queue.Queue[tuple[TrainState, Ready | None] | None] = queue.Queue(maxsize=depth)
        self._on_written = on_written
        self._error: BaseException | None = None
        self._entries: list[CheckpointInfo] | None = None
        self._thread = threading.Thread(target=self._work, name="esper-tolaria-checkpoints", daemon=True)
        self._thread.start()

    @property
    def directory(self) -> Path:
        return self._directory

    def submit(self, state: TrainState) -> None:
        """Queue a checkpoint of ``state``; lane thread.

        Returns at once unless ``depth`` checkpoints are already waiting. The writer thread reads ``state`` later,
        so nobody may change it after submitting (a captured TrainState holds private copies; the fast tier shares
        it read-only).

        Raises:
            OSError: an earlier write failed (the step loop learns it at its next checkpoint rather than at the end
                of the run, and a full disk stops the run with its last good checkpoint).
        """
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        # The ordering point: without it the writer could read buffers whose copies the train stream has not run yet
        # (the epoch end's checkpoints were safe only because the packet's read had synchronised the stream).
        ready = mark_ready(self._device) if self._device is not None else None
        self._queue.put((state, ready))

    def flush(self) -> None:
        """Wait until every submitted checkpoint is written.

        Raises:
            OSError: a write failed.
        """
        self.wait_written()
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def wait_written(self) -> None:
        """Wait until every submitted checkpoint is on disk or has failed, without raising: a failure stays for the
        next submit or flush (a full-tier rollback reads the newest checkpoint and must find the ones submitted)."""
        self._queue.join()

    def close(self) -> None:
        """Flush, then end the writer thread."""
        try:
            self.flush()
        finally:
            self._queue.put(None)
            self._thread.join()

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                state, ready = item
                if ready is not None:
                    ready.synchronize()
                self._write(state)
            except BaseException as err:  # noqa: BLE001  # handed to the next flush(), which re-raises it
                # The step and the file: the error alone ("No space left on device") said neither.
                step = item[0].global_step if item is not None else None
                named = err.filename if isinstance(err, OSError) else None
                file = str(named) if named is not None else str(self._directory / f"step-{step}.pt")
                _log.error("checkpoint_write_failed", step=step, file=file, error=f"{type(err).__name__}: {err}")
                self._error = err
            finally:
                self._queue.task_done()

    def _write(self, state: TrainState) -> None:
        # Streamed: a bytes copy of the file (and a join of the pieces) would be made holding the GIL, tens of
        # milliseconds for a 50 MB model that the step loop's epoch end waited through; a hash update and a file
        # write of a piece each release it. The manifest's SHA-256 is of exactly the pieces written.
        chunks = _HashedChunks(encode_state_chunks(state))
        log = [msgspec.to_builtins(e) for e in state.graft_log]
        step, epoch, batch_index = state.global_step, state.epoch, state.batch_index
        directory = self._directory
        directory.mkdir(parents=True, exist_ok=True)
        if self._entries is None:
            try:
                self._entries = read_manifest(directory)
            except CheckpointError:
                self._entries = []
        name = f"step-{step}.pt"
        atomic_write_chunks(directory / name, chunks, shared=True)
        info = CheckpointInfo(
            file=name,
            sha256=chunks.sha256.hexdigest(),
            size_bytes=chunks.size,
            global_step=step,
            epoch=epoch,
            batch_index=batch_index,
        )
        entries = [e for e in self._entries if e.file != name] + [info]
        dropped = entries[: max(0, len(entries) - self._keep_last)]
        entries = entries[len(dropped) :]
        manifest: dict[str, object] = {
            "schema_version": SCHEMA_VERSION,
            "checkpoints": [_info_dict(e) for e in entries],
            "graft_log": log,
        }
        if self._run_keys is not None:
            manifest["run_keys"] = self._run_keys
        if self._written_by is not None:
            manifest["esper_version"] = self._written_by
        # msgspec, not json.dumps: with an indent the standard library encodes in pure Python, on the writer thread.
        atomic_write_bytes(
            directory / MANIFEST, msgspec.json.format(msgspec.json.encode(manifest), indent=1), shared=True
        )
        self._entries = entries
        listed = {e.file for e in entries}
        # The dropped ones, and any a kill -9 left between an earlier manifest and its deletions (kept for good:
        # no manifest names it, so nothing read or removed it).
        for old in {e.file for e in dropped} | {p.name for p in directory.glob("step-*.pt")}:
            if old not in listed:
                (directory / old).unlink(missing_ok=True)
        if self._on_written is not None:
            self._on_written(info)


@final
class _HashedChunks:
    """Passes a file's pieces on (once) while hashing and counting them."""

    __slots__ = ("_chunks", "sha256", "size")

    def __init__(self, chunks: Iterable[memoryview]) -> None:
        self._chunks = chunks
        self.sha256 = hashlib.sha256()
        self.size = 0

    def __iter__(self) -> Iterator[memoryview]:
        for chunk in self._chunks:
            self.sha256.update(chunk)
            self.size += chunk.nbytes
            yield chunk


def _info_dict(info: CheckpointInfo) -> dict[str, object]:
    return {
        "file": info.file,
        "sha256": info.sha256,
        "size_bytes": info.size_bytes,
        "global_step": info.global_step,
        "epoch": info.epoch,
        "batch_index": info.batch_index,
    }
