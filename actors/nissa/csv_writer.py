"""metrics.csv: one row per epoch end, appended and flushed per row with aiofiles; resumes an existing file.

On open an existing file is checked: its header must be METRICS_COLUMNS, a torn last line (a crash mid-write) is cut
off, and the last epoch written is returned so the caller does not write it again. Rows are then appended with no
second header. Values: integers as written, floats by repr (round-trips exactly), None as an empty cell.
"""

from __future__ import annotations

import csv
import functools
import io
import math
from typing import TYPE_CHECKING, final

import aiofiles
import anyio

from actors.nissa.metrics import METRICS_COLUMNS
from esper.runtime.atomic_write import atomic_write_text
from esper.runtime.errors import EsperError
from esper.runtime.file_release import close_now

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

    from aiofiles.threadpool.text import AsyncTextIOWrapper

    from actors.nissa.metrics import CellValue, EpochRow
    from schemas.state import SystemStatePacket


class MetricsFileError(EsperError, ValueError):
    """Raised by MetricsCsvWriter.open() when an existing metrics file has a different header or an unreadable row."""


def format_cell(value: CellValue) -> str:
    """A CSV cell: empty for None, ``nan`` / ``inf`` / ``-inf`` for non-finite floats, else the exact literal."""
    if value is None:
        return ""
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return repr(value)


def format_row(row: EpochRow) -> str:
    """One CSV line (with its newline) in METRICS_COLUMNS order.

    Raises:
        ValueError: the row's columns are not METRICS_COLUMNS.
    """
    if tuple(row) != METRICS_COLUMNS:
        raise ValueError(f"row columns {tuple(row)} differ from METRICS_COLUMNS")
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(format_cell(row[column]) for column in METRICS_COLUMNS)
    return buffer.getvalue()


def header_line() -> str:
    return ",".join(METRICS_COLUMNS) + "\n"


def _checked(path: Path, text: str) -> tuple[int | None, int]:
    """(last epoch, row count) of an existing file's whole lines.

    Raises:
        MetricsFileError: its header is not METRICS_COLUMNS, or its last row has no integer epoch.
    """
    first = text.split("\n", 1)[0] + "\n"
    if first != header_line():
        raise MetricsFileError(f"{path}: header {first.strip()!r} differs from the expected {header_line().strip()!r}")
    rows = list(csv.reader(io.StringIO(text)))[1:]
    if not rows:
        return None, 0
    try:
        return int(rows[-1][0]), len(rows)
    except (ValueError, IndexError) as err:
        raise MetricsFileError(f"{path}: last row has no integer epoch: {rows[-1]!r}") from err


def _last_wall_time(text: str) -> float | None:
    rows = list(csv.DictReader(io.StringIO(text)))
    try:
        return float(rows[-1]["wall_time_s"]) if rows else None
    except (KeyError, TypeError, ValueError):
        return None


def check_existing(path: Path) -> None:
    """Refuse, as ``MetricsCsvWriter.open`` would, an existing file this version cannot append to: another header or
    a last row without an integer epoch (a torn last line is fine: open cuts it). Read-only and blocking.

    Raises:
        MetricsFileError: what is wrong, naming the file.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return
    except (OSError, UnicodeDecodeError) as err:
        raise MetricsFileError(f"{path}: unreadable: {err}") from err
    text = text[: text.rfind("\n") + 1]
    if text:
        _checked(path, text)


@final
class MetricsCsvWriter:
    """Appends epoch rows to one file. Event-loop only; file I/O runs on aiofiles' worker threads.

    Cancellation: a cancelled append may or may not have written its row (the thread finishes the write); the next
    open() cuts a torn line, so the file never holds half a row after a restart.
    """

    def __init__(self, path: Path) -> None:
        self._path = path
        self._file: AsyncTextIOWrapper | None = None
        self.rows_written = 0
        # The last row's wall_time_s when open() found rows: a resumed run's clock goes on from there.
        self.last_wall_time_s: float | None = None

    @property
    def path(self) -> Path:
        return self._path

    async def open(self) -> int | None:
        """Open for appending, writing the header to a new or empty file; returns the last epoch already written.

        Raises:
            MetricsFileError: the existing file's header is not METRICS_COLUMNS, or its last row is unreadable.
            OSError: the file cannot be read or created.
        """
        if self._file is not None:
            raise RuntimeError(f"{self._path} is already open")
        last_epoch: int | None = None
        try:
            async with aiofiles.open(self._path, encoding="utf-8", newline="") as existing:
                text = await existing.read()
        except FileNotFoundError:
            text = ""
        if text:
            if not text.endswith("\n"):
                # A crash mid-write left half a row: drop it so the next row starts on its own line.
                text = text[: text.rfind("\n") + 1]
                async with aiofiles.open(self._path, "r+", encoding="utf-8", newline="") as torn:
                    await torn.truncate(len(text.encode("utf-8")))
            if text:
                last_epoch, self.rows_written = _checked(self._path, text)
                self.last_wall_time_s = _last_wall_time(text)
        self._file = await aiofiles.open(self._path, "a", encoding="utf-8", newline="")
        if not text:
            await self._file.write(header_line())
            await self._file.flush()
        return last_epoch

    async def append(self, row: EpochRow) -> None:
        """Append one row and flush it to the OS.

        Raises:
            RuntimeError: open() has not been called (or close() has).
            ValueError: the row's columns are not METRICS_COLUMNS.
        """
        if self._file is None:
            raise RuntimeError(f"{self._path} is not open")
        line = format_row(row)
        await self._file.write(line)
        await self._file.flush()
        self.rows_written += 1

    async def cut_after(self, step: int) -> int | None:
        """Remove the rows of epochs that ended after optimizer step ``step`` (a rollback or a restore went back
        there, and those epochs are trained again: their rows would otherwise keep the undone attempt's figures) and
        return the last epoch kept. The file is rewritten atomically, only when a row goes.

        Raises:
            RuntimeError: open() has not been called (or close() has).
            OSError: the file cannot be read or replaced (it is then unchanged).
        """
        if self._file is None:
            raise RuntimeError(f"{self._path} is not open")
        async with aiofiles.open(self._path, encoding="utf-8", newline="") as existing:
            text = await existing.read()
        lines = text.splitlines(keepends=True)
        kept = [lines[0]] if lines else [header_line()]
        kept += [line for line in lines[1:] if not _ends_after(line, step)]
        if len(kept) < len(lines):
            await self._file.close()
            self._file = None
            await anyio.to_thread.run_sync(functools.partial(atomic_write_text, shared=True), self._path, "".join(kept))
            self._file = await aiofiles.open(self._path, "a", encoding="utf-8", newline="")
            self.rows_written = len(kept) - 1
        last = next(csv.reader(io.StringIO(kept[-1]))) if len(kept) > 1 else None
        return int(last[0]) if last else None

    async def close(self) -> None:
        """Close the file; safe to call twice."""
        file, self._file = self._file, None
        if file is not None:
            await file.close()

    def abandon(self) -> None:
        """Close the file without awaiting (the actor's task is being cancelled); every row was flushed already."""
        file, self._file = self._file, None
        if file is not None:
            close_now(file)


@final
class RowBacklog:
    """Epoch rows handed to metrics.csv and not yet known to be in it, oldest first.

    Nissa's spec keeps one across incarnations: a crash while a row is written (a full disk, a cancelled write) costs
    no row, since the next incarnation writes the rows its file lacks (``drop_written`` then ``rows``).

    ``missed``: the epoch-end packets of a resume's epochs whose rows the file lacks (see esper.resume_rows); the first
    incarnation to open the file makes them rows (``take_missed``).
    """

    def __init__(self, missed: Sequence[SystemStatePacket] = ()) -> None:
        self.rows: list[EpochRow] = []
        self._missed = list(missed)

    def take_missed(self) -> list[SystemStatePacket]:
        """The missed epoch-end packets, once (later incarnations start from the rows made of them)."""
        missed, self._missed = self._missed, []
        return missed

    def drop_after(self, step: int) -> None:
        """Forget the rows of epochs that ended after ``step`` (see MetricsCsvWriter.cut_after)."""
        self.rows = [row for row in self.rows if not (isinstance(row["step"], int) and row["step"] > step)]

    def drop_written(self, last_epoch: int | None) -> None:
        """Forget the rows the file already holds (epochs up to ``last_epoch``, as ``open`` returned it)."""
        if last_epoch is not None:
            self.rows = [row for row in self.rows if not _epoch_at_most(row, last_epoch)]


def _ends_after(line: str, step: int) -> bool:
    """Whether a metrics.csv line is the row of an epoch that ended after ``step`` (its second column)."""
    cells = next(csv.reader(io.StringIO(line)), [])
    try:
        return int(cells[1]) > step
    except (IndexError, ValueError):
        return False


def _epoch_at_most(row: EpochRow, epoch: int) -> bool:
    value = row["epoch"]
    return isinstance(value, int) and value <= epoch
