"""The field-report WAL: round trip, torn tail, corrupt middle record, reopen after a crash, concurrent appends."""

from __future__ import annotations

import asyncio
import threading
import zlib
from types import SimpleNamespace
from typing import TYPE_CHECKING

import pytest
import structlog

from actors.tamiyo import field_reports as field_reports_module
from actors.tamiyo.field_reports import (
    HEADER,
    MAGIC,
    WAL_FILENAME,
    FieldReportWal,
    WalScan,
    encode_frame,
    read_field_reports,
    scan_frames,
)
from schemas.domain_enums import FieldReportOutcome, PolicyAction
from schemas.reports import FieldReport, MitigationAction

if TYPE_CHECKING:
    from pathlib import Path


def report(i: int) -> FieldReport:
    return FieldReport(
        report_id=f"fr-cmd{i}-{i}+3",
        command_id=f"cmd{i}",
        training_run_id="run-1",
        outcome=FieldReportOutcome.NEUTRAL if i % 2 else FieldReportOutcome.SUCCESS,
        observation_window_epochs=3,
        start_epoch=i,
        issued_at=100.0 + i,
        tamiyo_policy_version="heuristic-1",
        action=PolicyAction.NO_OP if i % 3 else PolicyAction.GERMINATE,
        seed_id=f"seed-{i}" if i % 3 == 0 else None,
        metrics={"loss_delta_sum": -0.01 * i, "hook_latency_ms_max": 3.5},
        follow_up_actions=(MitigationAction(action_type="conservative_mode", rationale="spike"),) if i == 4 else (),
        notes="x" * (i % 7),
        log_prob=-0.5,
    )


async def write(path: Path, reports: list[FieldReport]) -> None:
    wal = FieldReportWal(path, fsync=False)
    await wal.open()
    for r in reports:
        await wal.append(r)
    await wal.close()


async def test_round_trip_of_many_reports(tmp_path: Path) -> None:
    path = tmp_path / WAL_FILENAME
    reports = [report(i) for i in range(200)]
    wal = FieldReportWal(path)
    scan = await wal.open()
    assert scan.reports == ()
    await wal.append_many(reports[:150])
    for r in reports[150:]:
        await wal.append(r)
    await wal.close()
    assert wal.statistics().appended == 200
    scan = await read_field_reports(path)
    assert scan.reports == tuple(reports)
    assert (scan.corrupt, scan.torn) == (0, 0)
    assert scan.good_end == scan.size_bytes == path.stat().st_size


async def test_missing_file_reads_as_empty(tmp_path: Path) -> None:
    scan = await read_field_reports(tmp_path / "absent.wal")
    assert (scan.reports, scan.corrupt, scan.torn) == ((), 0, 0)


async def test_torn_tail_keeps_every_earlier_record(tmp_path: Path) -> None:
    path = tmp_path / WAL_FILENAME
    reports = [report(i) for i in range(10)]
    await write(path, reports)
    data = path.read_bytes()
    last = len(encode_frame(reports[-1]))
    for cut in (1, 3, HEADER.size, HEADER.size + 5, last - 1):
        scan = scan_frames(data[: len(data) - last + cut])
        assert scan.reports == tuple(reports[:-1]), cut
        assert (scan.torn, scan.corrupt) == (1, 0), cut
        assert scan.good_end == len(data) - last


async def test_flipped_byte_in_the_middle_skips_only_that_record(tmp_path: Path) -> None:
    path = tmp_path / WAL_FILENAME
    reports = [report(i) for i in range(9)]
    await write(path, reports)
    data = bytearray(path.read_bytes())
    frame_sizes = [len(encode_frame(r)) for r in reports]
    start = sum(frame_sizes[:4])
    for position in (start + 1, start + 5, start + 9, start + HEADER.size + 7, start + frame_sizes[4] - 1):
        damaged = bytearray(data)
        damaged[position] ^= 0xFF
        scan = scan_frames(bytes(damaged))
        assert scan.reports == tuple(reports[:4] + reports[5:]), position
        assert (scan.corrupt, scan.torn) == (1, 0), position


async def test_a_huge_damaged_length_does_not_hide_later_records(tmp_path: Path) -> None:
    path = tmp_path / WAL_FILENAME
    reports = [report(i) for i in range(5)]
    await write(path, reports)
    data = bytearray(path.read_bytes())
    start = len(encode_frame(reports[0]))
    data[start + 4 : start + 8] = (1_000_000).to_bytes(4, "big")
    scan = scan_frames(bytes(data))
    assert scan.reports == (reports[0], *reports[2:])
    assert (scan.corrupt, scan.torn) == (1, 0)


def test_magic_inside_a_payload_is_not_taken_for_a_frame() -> None:
    tricky = FieldReport(
        report_id="fr-x-0+3",
        command_id="x",
        training_run_id="run-1",
        outcome=FieldReportOutcome.NEUTRAL,
        observation_window_epochs=3,
        start_epoch=0,
        issued_at=1.0,
        tamiyo_policy_version="h",
        action=PolicyAction.NO_OP,
        notes=(MAGIC + b"\x00\x00\x00\x01\x00\x00\x00\x00").decode("latin-1"),
    )
    frames = [encode_frame(report(0)), encode_frame(tricky), encode_frame(report(1))]
    damaged = bytearray(b"".join(frames))
    damaged[len(frames[0]) + 2] ^= 0x01  # break the tricky frame's own magic
    scan = scan_frames(bytes(damaged))
    assert scan.reports == (report(0), report(1))
    assert scan.corrupt == 1


async def test_reopen_after_a_torn_tail_truncates_and_appends_cleanly(tmp_path: Path) -> None:
    path = tmp_path / WAL_FILENAME
    reports = [report(i) for i in range(6)]
    await write(path, reports)
    size = path.stat().st_size
    with path.open("r+b") as file:
        file.truncate(size - 7)
    wal = FieldReportWal(path, fsync=False)
    scan = await wal.open()
    assert scan.reports == tuple(reports[:-1])
    assert scan.torn == 1
    assert wal.statistics().truncated_torn_bytes == len(encode_frame(reports[-1])) - 7
    await wal.append(report(100))
    await wal.append(report(101))
    await wal.close()
    scan = await read_field_reports(path)
    assert scan.reports == (*reports[:-1], report(100), report(101))
    assert (scan.corrupt, scan.torn) == (0, 0)


async def test_a_resume_cuts_the_reports_written_after_its_controller_state(tmp_path: Path) -> None:
    """A kill -9 past a checkpoint left reports the resumed controller (started from the state at the checkpoint)
    writes again: 20 report ids appeared twice. The WAL keeps the first ``keep`` records, then appends."""
    path = tmp_path / WAL_FILENAME
    reports = [report(i) for i in range(6)]
    await write(path, reports)
    with path.open("ab") as file:
        file.write(encode_frame(report(6))[:-3])  # and a torn tail
    wal = FieldReportWal(path, fsync=False, keep=4)
    await wal.open()
    await wal.append(report(4))  # written again by the resumed controller
    await wal.close()
    scan = await read_field_reports(path)
    assert scan.reports == (*reports[:4], report(4))
    assert (scan.corrupt, scan.torn) == (0, 0)
    empty = FieldReportWal(path, fsync=False, keep=0)
    await empty.open()
    await empty.close()
    assert (await read_field_reports(path)).reports == ()


async def test_a_damaged_record_before_the_checkpoint_still_counts_in_the_resumes_cut(tmp_path: Path) -> None:
    """The cut counted good records only: a damaged one before the checkpoint moved it one record later, so the
    record written after the checkpoint stayed and the resumed controller wrote it again (a duplicate), unwarned."""
    path = tmp_path / WAL_FILENAME
    reports = [report(i) for i in range(4)]
    await write(path, reports)
    data = bytearray(path.read_bytes())
    data[len(encode_frame(reports[0])) // 2] ^= 0xFF  # inside the first record's payload: its header still holds
    path.write_bytes(bytes(data))
    with structlog.testing.capture_logs() as logs:
        wal = FieldReportWal(path, fsync=False, keep=3)
        await wal.open()
    await wal.append(report(3))  # written again by the resumed controller
    await wal.close()
    scan = await read_field_reports(path)
    assert scan.reports == (report(1), report(2), report(3))
    assert scan.corrupt == 1
    assert [e["event"] for e in logs] == ["field_reports_cut"]  # the cut is exact: no warning
    # A damaged header: how many records the stretch held is unknown, and the resume says its cut may be off.
    data = bytearray(path.read_bytes())
    data[0] ^= 0xFF
    path.write_bytes(bytes(data))
    with structlog.testing.capture_logs() as logs:
        wal = FieldReportWal(path, fsync=False, keep=3)
        await wal.open()
    await wal.close()
    assert [(e["event"], e["log_level"]) for e in logs] == [
        ("field_reports_cut_inexact", "warning"),
        ("field_reports_cut", "info"),
    ]


async def test_appends_after_a_corrupt_tail_frame_stay_readable(tmp_path: Path) -> None:
    path = tmp_path / WAL_FILENAME
    await write(path, [report(0), report(1)])
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # a complete last frame with a bad checksum: corrupt, not torn
    path.write_bytes(bytes(data))
    wal = FieldReportWal(path, fsync=False)
    scan = await wal.open()
    assert (scan.reports, scan.corrupt, scan.torn) == ((report(0),), 1, 0)
    await wal.append(report(2))
    await wal.close()
    scan = await read_field_reports(path)
    assert scan.reports == (report(0), report(2))
    assert scan.corrupt == 1


async def test_concurrent_appends_never_interleave(tmp_path: Path) -> None:
    path = tmp_path / WAL_FILENAME
    wal = FieldReportWal(path, fsync=False)
    await wal.open()
    async with asyncio.TaskGroup() as group:
        for i in range(40):
            group.create_task(wal.append(report(i)))
    await wal.close()
    scan = await read_field_reports(path)
    assert sorted(r.start_epoch for r in scan.reports) == list(range(40))
    assert scan.corrupt == 0


@pytest.mark.parametrize("left", [0, 2])
async def test_a_resume_warns_of_reports_missing_from_the_file(tmp_path: Path, left: int) -> None:
    """A WAL emptied (or cut on a frame boundary) before a --resume was taken as it was, without a word: the file
    ended with fewer records than the controller state says it wrote. The open now warns, naming both counts."""
    path = tmp_path / WAL_FILENAME
    await write(path, [report(i) for i in range(left)])
    wal = FieldReportWal(path, fsync=False, keep=4)
    with structlog.testing.capture_logs() as logs:
        scan = await wal.open()
    await wal.close()
    assert len(scan.reports) == left
    assert [(e["event"], e["log_level"], e["file"], e["expected"], e["found"]) for e in logs] == [
        ("field_reports_missing", "warning", str(path), 4, left)
    ]
    with structlog.testing.capture_logs() as logs:
        for again in (FieldReportWal(path, fsync=False, keep=left), FieldReportWal(path, fsync=False)):
            await again.open()
            await again.close()
    assert logs == []


def _headers_each_claiming_the_rest(size: int) -> bytes:
    """Frame headers back to back, each claiming the rest of the file as its payload, none with a good checksum."""
    count = size // HEADER.size
    return b"".join(HEADER.pack(MAGIC, (count - i - 1) * HEADER.size, 0) for i in range(count))  # CRC 0 never matches


def test_a_crafted_file_costs_checksumming_linear_in_its_size_and_ends_corrupt(monkeypatch: pytest.MonkeyPatch) -> None:
    """Resyncing past each header would checksum the rest of the file per header (quadratic): the work done on
    damaged frames is bounded, and past the bound the rest of the file is one corrupt stretch."""
    checksummed: list[int] = []

    def crc32(data: bytes | memoryview, start: int = 0) -> int:
        checksummed.append(len(data))
        return zlib.crc32(data, start)

    monkeypatch.setattr(field_reports_module, "zlib", SimpleNamespace(crc32=crc32))
    good = b"".join(encode_frame(report(i)) for i in range(3))
    crafted = _headers_each_claiming_the_rest(64 * 1024)
    data = good + crafted
    scan = scan_frames(data)
    assert scan.reports == tuple(report(i) for i in range(3))  # the records before the damage survive
    assert (scan.corrupt, scan.torn, scan.good_end) == (1, 0, len(good))
    assert scan.frame_ends[-1] == len(data)
    assert not scan.exact
    # The good frames once (at most the size), the damaged ones up to DAMAGED_CHECKSUM_FACTOR (2) times the size plus
    # the one frame that went over (at most the size); each header here claims the rest, so unbounded it is quadratic.
    assert sum(checksummed) <= 4 * len(data)


async def test_reading_the_wal_scans_it_off_the_event_loop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / WAL_FILENAME
    await write(path, [report(1)])
    threads: list[int] = []
    real = field_reports_module.scan_frames

    def recording(data: bytes) -> WalScan:
        threads.append(threading.get_ident())
        return real(data)

    monkeypatch.setattr(field_reports_module, "scan_frames", recording)
    scan = await read_field_reports(path)
    assert scan.reports == (report(1),)
    assert threads
    assert threading.get_ident() not in threads
