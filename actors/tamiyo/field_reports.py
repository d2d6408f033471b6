"""The field-report write-ahead log: checksummed frames appended from coroutines, read back with recovery.

Frame layout (all integers big-endian)::

    magic   4 bytes  b"\\xe5FR1", a sync marker that lets a reader find the next frame after damage
    length  4 bytes  payload length in bytes (at most MAX_PAYLOAD_BYTES)
    crc32   4 bytes  zlib.crc32 over the length bytes and the payload, so a damaged length is caught too
    payload          msgspec msgpack encoding of one FieldReport

Recovery rule, applied by ``scan_frames`` from the start of the file:
  - a frame whose magic, length and CRC check out and whose payload decodes is a record;
  - a frame that is damaged (bad magic, impossible length, CRC mismatch, undecodable payload) is counted as
    corrupt, and reading resumes at the next offset holding the magic whose frame checks out; a CRC-checked
    frame is never accepted by accident at a magic that happens to sit inside a payload;
  - bytes after the last good frame that form no good frame are a torn tail (a write cut short by a crash):
    counted once and ignored. ``FieldReportWal.open`` truncates them so later appends follow the good frames.
So one damaged record costs only itself; records before and after it survive. The bytes checksummed for frames that
turn out damaged are bounded (``DAMAGED_CHECKSUM_FACTOR`` times the file's size): a crafted file of headers each
claiming the rest of the file would otherwise cost work quadratic in its size; past the bound, the rest of the file is
one corrupt frame.
"""

from __future__ import annotations

import asyncio
import os
import struct
import zlib
from typing import TYPE_CHECKING, final

import aiofiles
import msgspec
import structlog

from esper.runtime.atomic_write import named_os_errors
from esper.runtime.file_release import close_now
from schemas.base import Record
from schemas.reports import FieldReport

if TYPE_CHECKING:
    from collections.abc import Iterable
    from pathlib import Path

    from aiofiles.threadpool.binary import AsyncBufferedIOBase

MAGIC = b"\xe5FR1"
HEADER = struct.Struct(">4sII")
MAX_PAYLOAD_BYTES = 16 * 1024 * 1024
WAL_FILENAME = "field_reports.wal"
DAMAGED_CHECKSUM_FACTOR = 2
"""A scan checksums at most this many times the file's size for frames that turn out damaged (good frames are free)."""

_log = structlog.get_logger("actors.tamiyo")
_ENCODER = msgspec.msgpack.Encoder()
_DECODER = msgspec.msgpack.Decoder(FieldReport)


def encode_frame(report: FieldReport) -> bytes:
    """One frame (header plus payload) for ``report``."""
    payload = _ENCODER.encode(report)
    length = struct.pack(">I", len(payload))
    return HEADER.pack(MAGIC, len(payload), zlib.crc32(length + payload)) + payload


class WalScan(Record, frozen=True):
    """What a scan of a WAL found.

    Attributes:
        reports: the good records, in file order.
        corrupt: damaged frames skipped in the middle of the file.
        torn: 1 if the file ends in a partial frame (a crash mid-write), else 0.
        good_end: offset just past the last good frame; a torn tail starts there.
        size_bytes: the file size scanned.
        ends: the offset just past each good frame, in the order of ``reports``.
        frame_ends: the offset just past each frame, damaged ones included (a damaged stretch counts as one frame),
            in file order: a resume's cut counts these, so a damaged record before its checkpoint still counts.
        exact: False when a damaged stretch may hold more than one frame (its magic or length was hit), so
            ``frame_ends`` may count fewer frames than were written.
    """

    reports: tuple[FieldReport, ...]
    corrupt: int
    torn: int
    good_end: int
    size_bytes: int
    ends: tuple[int, ...] = ()
    frame_ends: tuple[int, ...] = ()
    exact: bool = True


@final
class _ChecksumBudget:
    """The bytes a scan may still checksum for frames that turn out damaged; spent, the scan stops."""

    def __init__(self, size: int) -> None:
        self.left = DAMAGED_CHECKSUM_FACTOR * size

    def charge(self, count: int) -> None:
        self.left -= count
        if self.left < 0:
            raise _BudgetSpentError


class _BudgetSpentError(Exception):
    """Raised inside a scan once damaged frames have cost more checksumming than the budget allows."""


def _checksum(data: memoryview, offset: int, end: int) -> int:
    """The CRC32 of a frame's length field and payload (the frame starting at ``offset``, ending at ``end``)."""
    return zlib.crc32(data[offset + 12 : end], zlib.crc32(data[offset + 4 : offset + 8]))


def _frame_at(data: bytes, offset: int, budget: _ChecksumBudget) -> tuple[FieldReport | None, int, bool]:
    """Try the frame at ``offset``: (report or None, end offset, whether the frame runs past the end of data)."""
    end_header = offset + HEADER.size
    if end_header > len(data):
        return None, len(data), data[offset : offset + len(MAGIC)] == MAGIC[: len(data) - offset]
    magic, length, crc = HEADER.unpack_from(data, offset)
    if magic != MAGIC or length > MAX_PAYLOAD_BYTES:
        return None, offset, False
    end = end_header + length
    if end > len(data):
        return None, len(data), True
    report: FieldReport | None = None
    if _checksum(memoryview(data), offset, end) == crc:
        try:
            report = _DECODER.decode(data[end_header:end])
        except msgspec.DecodeError:
            pass
    if report is None:
        budget.charge(length + 4)
    return report, end, False


def scan_frames(data: bytes) -> WalScan:
    """Read every good record out of a WAL's bytes, skipping damage by the rule in the module docstring. Pure."""
    reports: list[FieldReport] = []
    ends: list[int] = []
    frame_ends: list[int] = []
    exact = True
    corrupt = 0
    torn = 0
    offset = 0
    good_end = 0
    budget = _ChecksumBudget(len(data))
    try:
        while offset < len(data):
            report, end, truncated = _frame_at(data, offset, budget)
            if report is not None:
                reports.append(report)
                ends.append(end)
                frame_ends.append(end)
                offset = good_end = end
                continue
            # Damage at ``offset``: look for the next frame that checks out. If there is none, what is left is a torn
            # tail when it looks like the start of a frame cut short, and a corrupt frame otherwise.
            resume = _next_good_frame(data, offset + 1, budget)
            if resume is None:
                if truncated:
                    torn = 1
                else:
                    corrupt += 1
                    frame_ends.append(len(data))
                    exact = exact and end == len(data) and end > offset
                break
            corrupt += 1
            frame_ends.append(resume)
            # One frame exactly when its header held (a bad checksum or payload) and the next good frame follows it.
            exact = exact and end == resume and end > offset
            offset = resume
    except _BudgetSpentError:
        # Damage this costly is no crash's torn write: the rest of the file counts as one corrupt stretch.
        corrupt += 1
        frame_ends.append(len(data))
        exact = False
    return WalScan(
        reports=tuple(reports),
        corrupt=corrupt,
        torn=torn,
        good_end=good_end,
        size_bytes=len(data),
        ends=tuple(ends),
        frame_ends=tuple(frame_ends),
        exact=exact,
    )


def _next_good_frame(data: bytes, start: int, budget: _ChecksumBudget) -> int | None:
    position = data.find(MAGIC, start)
    while position != -1:
        report, _, _ = _frame_at(data, position, budget)
        if report is not None:
            return position
        position = data.find(MAGIC, position + 1)
    return None


async def read_field_reports(path: Path) -> WalScan:
    """Read and scan a WAL file; a missing file is an empty log. Reads through aiofiles' thread pool and scans on a
    worker thread: checksumming a large file must not block the event loop."""
    try:
        async with aiofiles.open(path, "rb") as file:
            data = await file.read()
    except FileNotFoundError:
        data = b""
    return await asyncio.to_thread(scan_frames, data)


class WalStatistics(Record, frozen=True):
    """A FieldReportWal at one instant; never blocks, never changes state."""

    path: str
    appended: int
    bytes_written: int
    recovered_reports: int
    recovered_corrupt: int
    truncated_torn_bytes: int


@final
class FieldReportWal:
    """An append-only, checksummed log of FieldReports (``runs/<run-id>/field_reports.wal``).

    ``await open()`` scans what is already there (returning it), cuts a torn tail off, and opens the file for
    appending. ``await append(report)`` writes one frame, flushes, and fsyncs before returning, so a report whose
    append returned survives a crash. Appends are serialised by a lock, so concurrent coroutines never interleave
    frames. File work runs on aiofiles' thread pool (the fsync on asyncio's default executor); the event loop never
    blocks. Cancelling an append after its write was handed to the thread may still leave the frame on disk (a
    complete frame, or a torn tail that the next open() removes); a retry may then write it twice, which readers
    deduplicate by report_id.
    """

    def __init__(self, path: Path, *, fsync: bool = True, keep: int | None = None) -> None:
        """Args: path: the WAL file; fsync: whether each append waits for the disk (tests may turn it off); keep: a
        resume's count of the reports its controller state had written: at ``open`` the records after the first
        ``keep`` good ones are cut off (a session killed past its checkpoint wrote them, and the resumed controller
        writes them again), and fewer good records than that are warned of (``field_reports_missing``); None:
        nothing is cut."""
        self._path = path
        self._fsync = fsync
        self._keep = keep
        self._file: AsyncBufferedIOBase | None = None
        self._lock = asyncio.Lock()
        self._appended = 0
        self._bytes_written = 0
        self._recovered = WalScan(reports=(), corrupt=0, torn=0, good_end=0, size_bytes=0)

    @property
    def path(self) -> Path:
        return self._path

    async def open(self) -> WalScan:
        """Recover the existing log (cut to ``keep`` records when given) and open it for appending; returns what the
        scan found before any cut.

        Raises:
            RuntimeError: the WAL is already open.
            OSError: the directory is missing or not writable.
        """
        if self._file is not None:
            raise RuntimeError(f"field-report WAL {self._path} is already open")
        scan = await read_field_reports(self._path)
        keep = self._keep
        # The state counted every report written, so damaged frames count too: over good ones only, a damaged record
        # before the checkpoint moved the cut one record later, and the resumed controller duplicated that one.
        frames = scan.frame_ends
        if keep is not None and not scan.exact:
            _log.warning(
                "field_reports_cut_inexact",
                file=str(self._path),
                keep=keep,
                detail="a damaged stretch of the file may hold more than one record: the cut after the checkpoint's "
                f"{keep} records may keep one written after it (readers deduplicate by report_id)",
            )
        if keep is not None and len(frames) > keep:
            end = frames[keep - 1] if keep > 0 else 0
            await asyncio.to_thread(os.truncate, self._path, end)
            _log.info("field_reports_cut", file=str(self._path), kept=keep, cut=len(frames) - keep)
        elif scan.torn:
            # Drop the partial frame so the next good frame follows the last good one directly.
            await asyncio.to_thread(os.truncate, self._path, scan.good_end)
        if keep is not None and len(frames) < keep:
            # Emptied, cut or replaced since the state was saved: those reports are gone for good, and the file
            # alone no longer says so (a damaged frame is counted, a missing one is not).
            _log.warning(
                "field_reports_missing",
                file=str(self._path),
                expected=keep,
                found=len(frames),
                detail=f"the controller state had written {keep} field reports; the file holds {len(frames)}",
            )
        self._recovered = scan
        self._file = await aiofiles.open(self._path, "ab")
        return scan

    async def append(self, report: FieldReport) -> None:
        """Append one report durably (write, flush, fsync).

        Raises:
            RuntimeError: the WAL is not open.
            OSError: the write or fsync failed; the file may end in a torn frame, removed by the next open().
        """
        await self.append_many((report,))

    async def append_many(self, reports: Iterable[FieldReport]) -> None:
        """Append several reports with one flush and one fsync; same errors as append()."""
        encoded = [encode_frame(report) for report in reports]
        if not encoded:
            return
        frames = b"".join(encoded)
        async with self._lock:
            file = self._file
            if file is None:
                raise RuntimeError(f"field-report WAL {self._path} is not open")
            with named_os_errors(self._path):  # a full disk's write error says no file
                await file.write(frames)
                await file.flush()
                if self._fsync:
                    await asyncio.to_thread(os.fsync, file.fileno())
            self._appended += len(encoded)
            self._bytes_written += len(frames)

    async def close(self) -> None:
        """Flush and close the file; closing twice is harmless."""
        async with self._lock:
            file, self._file = self._file, None
            if file is not None:
                with named_os_errors(self._path):  # it flushes what a failed write left buffered, failing again
                    await file.close()

    def abandon(self) -> None:
        """Close the file without awaiting (the actor's task is being cancelled); a frame cut short is a torn tail
        the next open() removes."""
        file, self._file = self._file, None
        if file is not None:
            close_now(file)

    def statistics(self) -> WalStatistics:
        return WalStatistics(
            path=str(self._path),
            appended=self._appended,
            bytes_written=self._bytes_written,
            recovered_reports=len(self._recovered.reports),
            recovered_corrupt=self._recovered.corrupt,
            truncated_torn_bytes=self._recovered.size_bytes - self._recovered.good_end if self._recovered.torn else 0,
        )
