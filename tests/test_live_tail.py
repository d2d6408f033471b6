"""``python -m esper.tail D/events.jsonl --follow --state`` on a live run shows every actor's state updating.

A real short training runs in one subprocess while the tail follows its events file in another. Nothing waits on
time: the test reads the tail's output table by table until the facts it needs have appeared, under one deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from schemas.enums import ActorStatus

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Sequence

REPO = Path(__file__).resolve().parent.parent
# Long enough (a few seconds) for several state reports 0.1 s apart while it trains.
RUN = (
    "--set",
    "tolaria.epochs=40",
    "--set",
    "tolaria.dataset_samples=1000",
    "--set",
    "logging.state_interval_s=0.1",
)
# `python -m esper.tail`, except that Ctrl-C is restored first: a child can inherit SIGINT ignored (a background job).
TAIL = (
    "import runpy, signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "runpy.run_module('esper.tail', run_name='__main__', alter_sys=True)"
)
FOOTER = re.compile(r"^\d+ actors?, (\d+) malformed lines? skipped$")

Table = dict[str, dict[str, str]]
"""One printed state table: actor -> column name -> cell text."""


def parse_table(lines: Sequence[str]) -> Table:
    """A state table as esper.tail prints it into a pipe: header, one row per actor, footer."""
    header = lines[0].split()
    assert header[0] == "actor", f"not a state table: {lines[0]!r}"
    assert FOOTER.match(lines[-1]), f"not a state table footer: {lines[-1]!r}"
    table: Table = {}
    for line in lines[1:-1]:
        if line == "(no actor_state events yet)":
            continue
        cells = re.split(r"\s{2,}", line.strip())  # cells are joined by at least two spaces and never contain two
        assert len(cells) == len(header), f"row does not match the header {header}: {line!r}"
        table[cells[0]] = dict(zip(header, cells, strict=True))
    return table


async def read_tables(stream: asyncio.StreamReader) -> AsyncIterator[Table]:
    """Each table the tail prints; in a pipe (not a TTY) every version is printed after the last, then a blank line."""
    block: list[str] = []
    while line := await stream.readline():
        text = line.decode().rstrip("\n")
        if text:
            block.append(text)
        elif block:
            yield parse_table(block)
            block = []


def handled_changes(tables: Sequence[Table]) -> int:
    """How many successive pairs of tables show some actor's ``handled`` count changing."""
    return sum(
        any(actor in before and before[actor]["handled"] != row["handled"] for actor, row in after.items())
        for before, after in itertools.pairwise(tables)
    )


def live_updates_seen(tables: Sequence[Table]) -> bool:
    """Tolaria is in a table, ``handled`` changed in two successive updates, and every actor's row was refreshed."""
    with_tolaria = [table for table in tables if "tolaria" in table]
    if not with_tolaria or handled_changes(tables) < 2:
        return False
    # Every actor shown once Tolaria appears must be shown again later with a newer update time.
    return all(len({table[actor]["updated"] for table in tables if actor in table}) >= 2 for actor in with_tolaria[0])


def all_stopped(tables: Sequence[Table]) -> bool:
    return bool(tables) and {row["status"] for row in tables[-1].values()} == {ActorStatus.STOPPED.value}


async def wait_for(tables: AsyncIterator[Table], seen: list[Table], fact: Callable[[list[Table]], bool]) -> None:
    """Collect tables into ``seen`` until ``fact(seen)`` holds."""
    while not fact(seen):
        try:
            seen.append(await anext(tables))
        except StopAsyncIteration:
            raise AssertionError(f"the tail's output ended after {len(seen)} tables") from None


@contextlib.asynccontextmanager
async def spawn(*args: str, cwd: Path) -> AsyncIterator[asyncio.subprocess.Process]:
    """A subprocess with piped output that is killed (and reaped) if the test leaves before it ended."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, *args, cwd=cwd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        yield process
    finally:
        if process.returncode is None:
            process.kill()
            await process.communicate()


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_follow_state_on_a_live_run_shows_every_actor_updating(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    events = run_dir / "events.jsonl"
    seen: list[Table] = []
    # The tail starts first and waits for the file to appear, so it sees the run from its first line.
    async with (
        spawn("-c", TAIL, str(events), "--follow", "--state", "--color", "never", cwd=tmp_path) as tail,
        spawn("-m", "esper.run", str(REPO / "config.toml"), "--run-dir", str(run_dir), *RUN, cwd=tmp_path) as run,
        asyncio.TaskGroup() as tg,
    ):
        # Drain the run's pipes all along: its console log must never fill a pipe buffer and stall training.
        run_output = tg.create_task(run.communicate())
        assert tail.stdout is not None
        tables = read_tables(tail.stdout)
        try:
            async with asyncio.timeout(90):
                await wait_for(tables, seen, live_updates_seen)
                await run_output
                assert run.returncode == 0, run_output.result()[1].decode()[-2000:]
                # After the run's final actor_state lines the tail shows every actor stopped.
                await wait_for(tables, seen, all_stopped)
        except TimeoutError:
            raise AssertionError(f"after {len(seen)} tables: {seen[-3:]}") from None
        async with asyncio.timeout(20):  # no Ctrl-C: following ends by itself once the run has finished
            rest, err = await tail.communicate()
    assert tail.returncode == 0, err.decode()
    assert "malformed" not in err.decode(), err.decode()
    assert "tolaria" in seen[-1]
    assert b"Traceback" not in rest
