"""esper.start() inside an already running loop: snapshot, events, stop, wait; the summary and run files."""

from __future__ import annotations

import asyncio
import json
import os
import re
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec
import numpy as np
import pytest

import esper
from actors.tamiyo.actor import TamiyoActor
from esper.config_paths import absolute_paths
from esper.log_file import LogFileInUse
from esper.logs import reset_logging
from esper.runtime.errors import ChildStartFailed, ConfigError
from esper.session import EsperSystem
from esper.session_events import EventHub
from esper.wiring import RunHooks
from schemas.config import RunConfig, TamiyoConfig, TolariaConfig, UrzaConfig
from schemas.enums import ActorStatus
from schemas.run import RunSummary, TrainingFigures
from schemas.runtime import ActorState, ChildFailed
from schemas.state import SeedState
from tests import tolaria_factories
from tests.test_run_cli import ACTORS

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from schemas.base import Message, Record
    from schemas.state import SystemStatePacket


@pytest.fixture(autouse=True)
def _fresh_logging() -> None:
    reset_logging()


def quiet_config(tmp_path: Path) -> RunConfig:
    config = msgspec.convert(
        {
            "logging": {"console": False},
            "runs_dir": str(tmp_path / "runs"),
            "tolaria": {"epochs": 1, "dataset_samples": 500},
        },
        RunConfig,
    )
    assert isinstance(config, RunConfig)
    return config


async def test_start_returns_inside_the_running_loop_and_stops(tmp_path: Path) -> None:
    loop = asyncio.get_running_loop()
    system = await esper.start(quiet_config(tmp_path), run_dir=tmp_path / "run")
    assert isinstance(system, EsperSystem)
    assert asyncio.get_running_loop() is loop
    states = {state.actor: state for state in system.snapshot()}
    assert set(states) == ACTORS
    assert all(state.status is ActorStatus.RUNNING for state in states.values())
    summary = await system.stop()
    assert summary.status == "stopped"
    assert summary.exit_code == 0
    assert {state.status for state in summary.actors} == {ActorStatus.STOPPED}
    assert await system.wait() is summary, "wait after stop returns the same summary"
    on_disk = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert on_disk["status"] == "stopped"
    assert (tmp_path / "run" / "config.toml").is_file()


async def test_a_relative_run_dir_stays_where_the_run_started(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """summary.json named the run directory by its absolute path as of the summary's write: a caller that changed its
    working directory during the run got another directory there, and the run's files written after the change (its
    stop's checkpoint, summary.json itself) went to the relative path from there."""
    monkeypatch.chdir(tmp_path)
    started_in = Path(os.getcwd())  # the directory as the run reads it
    system = await esper.start(quiet_config(tmp_path), run_dir="run")
    assert system.run_dir == started_in / "run"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    summary = await system.stop()
    assert summary.run_dir == str(started_in / "run")
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["run_dir"] == summary.run_dir
    assert not (elsewhere / "run").exists()


async def test_start_accepts_a_path_and_overrides(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(f'runs_dir = "{tmp_path / "runs"}"\n[logging]\nconsole = false\n[tolaria]\ndataset_samples = 500\n')
    system = await esper.start(path, overrides=['run_id="nb"', "tolaria.epochs=1"])
    try:
        assert system.run_id == "nb"
        assert system.run_dir == tmp_path / "runs" / "nb"
        assert system.config.tolaria.epochs == 1
    finally:
        await system.stop()


async def test_events_stream_until_the_run_ends(tmp_path: Path) -> None:
    system = await esper.start(quiet_config(tmp_path), run_dir=tmp_path / "run")
    seen: list[Message | Record] = []
    stream = system.events()  # subscribed now: nothing the stop emits is missed

    async def collect() -> None:
        async for event in stream:
            seen.append(event)

    async with asyncio.timeout(5), asyncio.TaskGroup() as tg:
        collector = tg.create_task(collect())
        await system.stop()
        await collector
    final_states = [event for event in seen if isinstance(event, ActorState)]
    assert {state.actor for state in final_states} == ACTORS
    assert all(state.status is ActorStatus.STOPPED for state in final_states)
    assert isinstance(seen[-1], RunSummary)
    assert seen[-1].status == "stopped"


async def test_reading_events_to_their_end_then_waiting_finishes(tmp_path: Path) -> None:
    """README's notebook example read events() to its end, then called wait(): the stream only ended with the run,
    and the run only at wait(), so it waited forever. A stream open when training ends with nobody waiting ends
    after the TrainingFigures; wait() then gives the summary."""
    system = await esper.start(quiet_config(tmp_path), run_dir=tmp_path / "run")
    seen: list[Message | Record] = []
    async with asyncio.timeout(60):
        async for event in system.events():
            seen.append(event)
        summary = await system.wait()
    assert isinstance(seen[-1], TrainingFigures)
    assert summary.status == "completed"
    assert seen[-1] == summary.training


async def test_a_cancelled_wait_leaves_the_streams_to_end_after_training(tmp_path: Path) -> None:
    """A notebook's asyncio.wait_for(system.wait(), ...) timing out left the run counted as being ended for good: no
    stream ended after the TrainingFigures, so reading events() to its end waited forever."""
    system = await esper.start(quiet_config(tmp_path), run_dir=tmp_path / "run")
    started = asyncio.Event()

    async def wait_then_give_up() -> None:
        started.set()
        await system.wait()  # runs up to its first await before the test resumes

    waiting = asyncio.create_task(wait_then_give_up())
    await started.wait()
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    async with asyncio.timeout(20):  # within pytest's timeout: a stream that never ends fails here, by name
        seen = [event async for event in system.events()]
        later = [event async for event in system.events()]
        summary = await system.wait()
    assert isinstance(seen[-1], TrainingFigures)
    assert later == [seen[-1]]
    assert summary.status == "completed"
    assert seen[-1] == summary.training


async def test_a_stream_opened_after_training_ended_ends_too(tmp_path: Path) -> None:
    """A notebook's next cell opened events() after training had ended (before wait()): it waited forever."""
    system = await esper.start(quiet_config(tmp_path), run_dir=tmp_path / "run")
    async with asyncio.timeout(60):
        first = [event async for event in system.events()]
        later = [event async for event in system.events()]
        summary = await system.wait()
    assert isinstance(first[-1], TrainingFigures)
    assert later == [first[-1]]
    assert summary.status == "completed"


async def test_a_stream_ends_when_the_run_fails(tmp_path: Path) -> None:
    """The root supervisor gave up (a model failing every step): training never finished, so the stream never
    ended, and the README's loop waited forever before its wait()."""
    tolaria_factories._FailsInTraining.calls = 0
    config = msgspec.structs.replace(
        quiet_config(tmp_path),
        tolaria=TolariaConfig(epochs=3, dataset_samples=400, host_model="tests.tolaria_factories:fails_in_training"),
    )
    system = await esper.start(config, run_dir=tmp_path / "run")
    async with asyncio.timeout(120):
        seen = [event async for event in system.events()]
        summary = await system.wait()
    assert summary.status == "failed"
    assert any(isinstance(event, ChildFailed) for event in seen)


async def test_a_stream_read_while_the_run_is_waited_for_goes_on_to_the_summary(tmp_path: Path) -> None:
    system = await esper.start(quiet_config(tmp_path), run_dir=tmp_path / "run")
    seen: list[Message | Record] = []
    stream = system.events()

    async def collect() -> None:
        async for event in stream:
            seen.append(event)

    async with asyncio.timeout(60), asyncio.TaskGroup() as tg:
        collector = tg.create_task(collect())
        summary = await system.wait()
        await collector
    assert seen[-1] is summary
    assert [type(event) for event in seen].count(TrainingFigures) == 1


async def test_events_after_the_run_ended_is_empty(tmp_path: Path) -> None:
    system = await esper.start(quiet_config(tmp_path), run_dir=tmp_path / "run")
    await system.stop()
    assert [event async for event in system.events()] == []


async def test_event_hub_fans_out_drops_when_full_and_ends_on_close() -> None:
    hub = EventHub(buffer_size=2)
    first = hub.subscribe()
    second = hub.subscribe()
    event = ChildFailed(supervisor="s", child="c", error_type="E", error="x")

    async def next_event(stream: AsyncIterator[Message | Record]) -> Message | Record:
        return await anext(stream)

    async with asyncio.TaskGroup() as tg:
        hub.emit(event)  # both subscribed when subscribe() returned, before either is iterated
        got_first = tg.create_task(next_event(first))
        got_second = tg.create_task(next_event(second))
    assert got_first.result() == event
    assert got_second.result() == event
    for _ in range(5):
        hub.emit(event)
    assert hub.dropped == 6  # each subscriber buffers 2 of the 5
    last = RunSummary(
        run_id="r", run_dir="d", status="completed", started_at="", duration_s=0.0, exit_code=0, dead_letters=0
    )
    hub.close(last=last)  # a subscriber that fell behind still gets the run's last event (its summary)
    assert [e async for e in first] == [event, event, last]
    assert [e async for e in second] == [event, event, last]


async def test_a_second_run_in_the_process_waits_for_the_first_to_end(tmp_path: Path) -> None:
    config = quiet_config(tmp_path)
    first = await esper.start(config, run_dir=tmp_path / "first")
    try:
        # structlog's configuration is process-wide: a second live run would take the first one's events.
        with pytest.raises(LogFileInUse, match=f"still logging to {tmp_path / 'first' / 'events.jsonl'}"):
            await esper.start(config, run_dir=tmp_path / "second")
        assert not (tmp_path / "second").exists()
    finally:
        await first.stop()
    second = await esper.start(config, run_dir=tmp_path / "second")
    assert (await second.wait()).status == "completed"
    lines = (tmp_path / "first" / "events.jsonl").read_text().splitlines()
    run_ids = {json.loads(line).get("run_id") for line in lines}
    assert second.run_id not in run_ids


async def test_waiting_and_stopping_at_once_write_one_summary(tmp_path: Path) -> None:
    """A notebook waits in one task and stops from another: both get the same summary, written and logged once."""
    system = await esper.start(quiet_config(tmp_path), run_dir=tmp_path / "run")
    async with asyncio.TaskGroup() as tg:
        waiting = tg.create_task(system.wait())
        other = tg.create_task(system.wait())
        stopped = await system.stop()
    assert waiting.result() is stopped
    assert other.result() is stopped
    assert stopped.status == "stopped"
    events = [json.loads(line) for line in (tmp_path / "run" / "events.jsonl").read_text().splitlines()]
    assert [e["event"] for e in events].count("run_finished") == 1
    assert len([e for e in events if e["event"] == "actor_state" and e["status"] == "stopped"]) == len(ACTORS)


async def test_the_first_of_two_stops_says_how_the_run_ended(tmp_path: Path) -> None:
    """stop() then stop(status="interrupted") at once: the later call's status won, for the first caller too."""
    system = await esper.start(quiet_config(tmp_path), run_dir=tmp_path / "run")
    first, second = await asyncio.gather(system.stop(), system.stop(status="interrupted"))
    assert first is second
    assert first.status == "stopped"


async def test_a_stop_after_training_ended_on_its_own_keeps_the_status_completed(tmp_path: Path) -> None:
    system = await esper.start(quiet_config(tmp_path), run_dir=tmp_path / "run")
    training = system._training  # the trainer's watch: training ends before anyone waits or stops
    assert training is not None
    async with asyncio.timeout(60):
        await training.wait_finished()
    assert system.training_ended  # what the command line's Ctrl-C tells apart
    summary = await system.stop()
    assert summary.status == "completed"
    assert summary.training is not None
    assert summary.training.epochs == 1


def test_a_loop_that_ends_before_the_run_was_waited_for_lets_go_of_it(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """asyncio.run returning early (the user's code raised before wait() or stop()) left the lane threads training
    and the log file claimed: the process could not start or resume another run (LogFileInUse). Then the log was
    handed back before the trainer's last checkpoint and the actors' stops: their lines missed events.jsonl and
    printed on the caller's stdout."""
    config = msgspec.structs.replace(quiet_config(tmp_path), tolaria=TolariaConfig(epochs=30, dataset_samples=500))

    async def abandon() -> None:
        system = await esper.start(config, run_dir=tmp_path / "run")
        # A barrier: Kasmina reports seed states only from the trainer's packets, so the trainer's lane job is
        # running. Abandoned before that job began (a loaded machine), the run trains nothing and writes no
        # checkpoint, which is not the case this test is about.
        async for event in system.events():
            if isinstance(event, SeedState):
                break
        raise RuntimeError("the user's code failed")

    with pytest.raises(RuntimeError, match="the user's code failed"):
        asyncio.run(abandon())
    for thread in threading.enumerate():
        if thread.name.startswith("esper-lane"):
            thread.join(60)  # the train lane ends once its step and the stop's checkpoint are done
            assert not thread.is_alive(), thread.name
    assert capfd.readouterr().out == ""  # every line of the run went to its file, none to the caller's stdout
    events = [json.loads(line) for line in (tmp_path / "run" / "events.jsonl").read_text().splitlines()]
    names = [event["event"] for event in events]
    abandoned = names.index("run_abandoned")
    written = {event["file"] for event in events[abandoned:] if event["event"] == "checkpoint_written"}
    newest = max((tmp_path / "run" / "checkpoints").glob("step-*.pt"), key=lambda path: int(path.stem[5:]))
    assert newest.name in written  # the stop's checkpoint, written after the abandon, is in the log
    last = events[-1]  # the file ends as every run's does, so a tail --follow of it stops
    assert (last["event"], last["status"]) == ("run_finished", "interrupted")
    assert names.count("run_finished") == 1
    # Urza's store was closed with the lanes, under the io lane's last job: "Cannot operate on a closed database".
    assert "lane_job_failed_after_cancel" not in names

    async def resume() -> RunSummary:
        return await (await esper.start(config, resume=tmp_path / "run")).wait()

    summary = asyncio.run(resume())
    assert summary.status == "completed"
    assert summary.training is not None
    assert summary.training.epochs == 30


async def test_an_actor_that_cannot_be_built_fails_the_start_by_name_and_frees_the_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The start used to raise an ExceptionGroup, leave events.jsonl without its run_finished line (a tail hung)
    and the process's logging claimed, so every later start raised LogFileInUse."""

    def refuse(*_args: object, **_kwargs: object) -> None:
        raise ValueError("refused by a test")

    with monkeypatch.context() as patched:
        patched.setattr(TamiyoActor, "__init__", refuse)
        with pytest.raises(ChildStartFailed, match=r"^tamiyo could not be built: ValueError: refused by a test$"):
            await esper.start(quiet_config(tmp_path), run_dir=tmp_path / "broken")
    last = json.loads((tmp_path / "broken" / "events.jsonl").read_text().splitlines()[-1])
    assert (last["event"], last["status"]) == ("run_finished", "failed")
    # The same directory takes the run once the actor builds: nothing trained there (its metrics.csv a header).
    system = await esper.start(quiet_config(tmp_path), run_dir=tmp_path / "broken")
    assert (await system.wait()).status == "completed"


async def test_resuming_a_finished_run_through_the_api_is_refused_and_leaves_it_as_it_was(tmp_path: Path) -> None:
    """It used to "complete" again and rewrite summary.json with every training figure None."""
    config = quiet_config(tmp_path)
    await (await esper.start(config, run_dir=tmp_path / "run")).wait()
    before = (tmp_path / "run" / "summary.json").read_bytes()
    with pytest.raises(ConfigError, match=r"already trained 1 of tolaria.epochs = 1 epochs .*nothing to resume"):
        await esper.start(config, resume=tmp_path / "run")
    assert (tmp_path / "run" / "summary.json").read_bytes() == before


async def test_a_run_config_built_in_code_is_checked_as_a_file_would_be(tmp_path: Path) -> None:
    """A RunConfig is a Struct, not validated when built: epochs = 0 "completed" a run of no epochs, an inert key
    passed silently, and a wrong type failed deep in an actor."""
    config = quiet_config(tmp_path)
    bad = [
        (msgspec.structs.replace(config, tolaria=TolariaConfig(epochs=0)), "tolaria.epochs: expected an integer >= 1"),
        (msgspec.structs.replace(config, tamiyo=TamiyoConfig(max_activation_nodes=7)), "tamiyo.max_activation_nodes"),
        (
            msgspec.structs.replace(config, tamiyo=TamiyoConfig(decision_budget_ms="fast")),  # type: ignore[arg-type]
            'tamiyo.decision_budget_ms: expected a number > 0, got "fast"',
        ),
    ]
    for wrong, message in bad:
        with pytest.raises(ConfigError, match=rf"^RunConfig: {re.escape(message)}"):
            await esper.start(wrong, run_dir=tmp_path / "run")
    with pytest.raises(TypeError, match=r"^overrides: a list of 'section.key=value' strings"):
        await esper.start(config, run_dir=tmp_path / "run", overrides="tolaria.epochs=2")
    with pytest.raises(TypeError, match=r"^config: a TOML file's path or a RunConfig, got a dict"):
        await esper.start({"tolaria": {"epochs": 1}}, run_dir=tmp_path / "run")  # type: ignore[arg-type]
    assert not (tmp_path / "run").exists()


async def test_a_stop_as_training_ends_on_its_own_leaves_the_run_completed(tmp_path: Path) -> None:
    """stop() saw training still going, then the trainer finished its last epoch anyway: the summary said
    "stopped" with the completed run's test figures."""
    config = quiet_config(tmp_path)
    holder: list[EsperSystem] = []
    stopping: list[asyncio.Task[RunSummary]] = []

    def at_the_last_epoch_end(packet: SystemStatePacket) -> None:
        # The trainer sent its last epoch-end packet: it is past its last look at the stop flag.
        if packet.validation_loss is not None and packet.epoch + 1 == config.tolaria.epochs and not stopping:
            stopping.append(asyncio.get_running_loop().create_task(holder[0].stop()))

    system = await esper.start(config, run_dir=tmp_path / "run", hooks=RunHooks(packet_tap=at_the_last_epoch_end))
    holder.append(system)
    summary = await system.wait()
    assert stopping, "the stop was asked as the last epoch ended"
    assert await stopping[0] is summary
    assert summary.status == "completed"
    assert summary.training is not None
    assert summary.training.completed


async def test_stop_refuses_a_status_a_run_cannot_have(tmp_path: Path) -> None:
    system = await esper.start(quiet_config(tmp_path), run_dir=tmp_path / "run")
    with pytest.raises(ValueError, match=r"^status: one of"):
        await system.stop(status="bogus")  # type: ignore[arg-type]
    assert (await system.stop()).status == "stopped"


async def test_a_start_refused_after_the_store_opened_leaves_no_catalogue_open(tmp_path: Path) -> None:
    """Each refused start kept Urza's SQLite connection (and its -wal and -shm files) open until garbage collection."""
    root = tmp_path / "urza"
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    config = msgspec.structs.replace(quiet_config(tmp_path), urza=UrzaConfig(root=str(root)))
    overrides = ['tamiyo.policy="gnn"', f'tamiyo.gnn_checkpoint="{bad}"']
    for attempt in range(3):
        with pytest.raises(ConfigError, match=r"gnn_checkpoint"):
            await esper.start(config, run_dir=tmp_path / f"run{attempt}", overrides=overrides)
    open_files = [os.path.realpath(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd")]  # noqa: ASYNC240
    assert not [path for path in open_files if path.startswith(str(root))]


async def test_a_resume_of_a_model_whose_code_changed_is_refused_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The checkpoint's weights failed to load in the trainer and in each of its restarts (exit 1, a multi-line
    state-dict error)."""
    tolaria = TolariaConfig(epochs=1, dataset_samples=500, host_model="tests.tolaria_factories:resizable_mlp")
    config = msgspec.structs.replace(quiet_config(tmp_path), tolaria=tolaria)
    await (await esper.start(config, run_dir=tmp_path / "run")).wait()
    monkeypatch.setattr(tolaria_factories, "RESIZABLE_WIDTH", 24)
    longer = msgspec.structs.replace(config, tolaria=msgspec.structs.replace(tolaria, epochs=2))
    with pytest.raises(ConfigError) as info:
        await esper.start(longer, resume=tmp_path / "run")
    message = str(info.value)
    assert "does not fit tolaria.host_model = 'tests.tolaria_factories:resizable_mlp' as it builds now" in message
    assert "1.bias is [16] there and [24] in the model" in message
    assert "\n" not in message
    monkeypatch.setattr(tolaria_factories, "RESIZABLE_WIDTH", 16)
    monkeypatch.setattr(tolaria_factories, "RESIZABLE_SLOTS", ("3",))
    with pytest.raises(ConfigError, match=r"it holds 1\.esper_slot\._extra_state, which the model no longer has"):
        await esper.start(longer, resume=tmp_path / "run")
    monkeypatch.setattr(tolaria_factories, "RESIZABLE_SLOTS", ("1",))
    assert (await (await esper.start(longer, resume=tmp_path / "run")).wait()).status == "completed"


async def test_a_run_on_a_relative_npz_path_resumes_from_any_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The run's config.toml kept 'data.npz' as written, so the --resume command it printed failed from any other
    directory (file not found)."""
    first, elsewhere = tmp_path / "first", tmp_path / "elsewhere"
    first.mkdir()
    elsewhere.mkdir()
    rng = np.random.default_rng(0)
    arrays = {"x_train": rng.normal(size=(200, 40)).astype(np.float32), "y_train": np.arange(200) % 10}
    arrays |= {"x_test": rng.normal(size=(40, 40)).astype(np.float32), "y_test": np.arange(40) % 10}
    np.savez(first / "data.npz", **arrays)  # type: ignore[arg-type]  # numpy's stub wants ArrayLike values
    tolaria = TolariaConfig(epochs=1, dataset="npz", npz_path="data.npz", host_model="mlp")
    config = msgspec.structs.replace(quiet_config(tmp_path), tolaria=tolaria)
    monkeypatch.chdir(first)
    await (await esper.start(config, run_dir=tmp_path / "run")).wait()
    monkeypatch.chdir(elsewhere)
    written = tmp_path / "run" / "config.toml"
    system = await esper.start(written, resume=tmp_path / "run", overrides=["tolaria.epochs=2"])
    assert (await system.wait()).status == "completed"
    # The one setting the resume changed is said, in events.jsonl too (a relative npz_path made absolute is not).
    events = [json.loads(line) for line in (tmp_path / "run" / "events.jsonl").read_text().splitlines()]
    changed = [e["description"] for e in events if e.get("name") == "esper.resume_setting_changed"]
    assert changed == ["tolaria.epochs: 1 in the run, 2 now"]


async def test_a_consumer_that_fell_behind_is_said_before_the_events_files_last_line(tmp_path: Path) -> None:
    """events_missed came after run_finished, so a tail --follow of the file never ended."""
    config = msgspec.structs.replace(
        quiet_config(tmp_path),
        tolaria=TolariaConfig(epochs=60, dataset_samples=500),
        logging=msgspec.structs.replace(quiet_config(tmp_path).logging, state_interval_s=0.001),
    )
    system = await esper.start(config, run_dir=tmp_path / "run")
    behind = system.events()
    await anext(behind)  # read once, then never again while the run goes on: it falls behind
    summary = await system.wait()
    assert system._hub.dropped > 0, "the consumer fell behind"
    lines = [json.loads(line)["event"] for line in (tmp_path / "run" / "events.jsonl").read_text().splitlines()]
    assert lines[-1] == "run_finished"
    assert "events_missed" in lines
    assert [event async for event in behind][-1] == summary


def test_a_relative_or_home_gnn_checkpoint_is_stored_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """tamiyo.gnn_checkpoint kept 'ck.safetensors' as written in the run's config.toml, so the printed --resume
    failed from another directory; '~/ck.safetensors' was not expanded at all."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for written, expected in (
        ("ck.safetensors", tmp_path / "ck.safetensors"),
        ("~/ck.safetensors", tmp_path / "home" / "ck.safetensors"),
        ("/abs/ck.safetensors", Path("/abs/ck.safetensors")),
    ):
        config = RunConfig(tamiyo=TamiyoConfig(policy="gnn", gnn_checkpoint=written))
        assert absolute_paths(config).tamiyo.gnn_checkpoint == str(expected)


async def test_the_apis_refusals_name_its_parameters_not_the_command_lines_flags(tmp_path: Path) -> None:
    """esper.start's refusals said 'continue it with --resume DIR, or choose another --run-dir' to a caller who passes
    resume= and run_dir=."""
    await (await esper.start(quiet_config(tmp_path), run_dir=tmp_path / "run")).wait()
    with pytest.raises(ConfigError) as again:
        await esper.start(quiet_config(tmp_path), run_dir=tmp_path / "run")
    text = str(again.value)
    assert f"continue it with resume={tmp_path / 'run'}, or choose another run_dir" in text
    assert "--" not in text
    with pytest.raises(ConfigError, match=r"^resume=.*: already trained 1 of tolaria.epochs = 1 epochs"):
        await esper.start(quiet_config(tmp_path), resume=tmp_path / "run")


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"overrides": [1]}, "overrides[0]: expected a 'section.key=value' string, got 1"),
        (
            {"overrides": [("tolaria.epochs", 1)]},
            "overrides[0]: expected a 'section.key=value' string, got ('tolaria.epochs', 1)",
        ),
        ({"run_dir": 5}, "run_dir: expected a directory's path (a str or os.PathLike), got 5"),
        ({"resume": 5}, "resume: expected a directory's path (a str or os.PathLike), got 5"),
    ],
)
async def test_an_argument_of_the_wrong_type_is_a_type_error_naming_the_parameter(
    tmp_path: Path, arguments: dict[str, object], message: str
) -> None:
    """A non-string override raised a bare AttributeError; run_dir=5 pathlib's TypeError naming no parameter."""
    (tmp_path / "c.toml").write_text("")
    for config in (quiet_config(tmp_path), tmp_path / "c.toml"):
        with pytest.raises(TypeError) as refused:
            await esper.start(config, **arguments)  # type: ignore[arg-type]  # what is tested
        assert str(refused.value) == message
    assert not (tmp_path / "runs").exists()


async def test_a_stop_while_the_runs_own_end_stops_the_actors_asks_none_of_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Ctrl-C (the command line's stop) as training ended on its own joined wait(), which drained the pipeline a
    second time: it asked Tamiyo, which the run's own end had stopped (pipeline_drain_incomplete, one dead letter in
    summary.json). The run's end drains once, whoever ends it."""
    system = await esper.start(quiet_config(tmp_path), run_dir=tmp_path / "run")
    actors = system._actors
    stop_actors = actors.stop
    stopping: list[bool] = []
    stops: list[RunSummary] = []

    async def own_end_then_a_stop() -> None:
        await stop_actors()  # the run's own end: every actor, Tamiyo included, has stopped
        if not stopping:  # the Ctrl-C lands now, and is waited for: a barrier, no sleep
            stopping.append(True)
            stops.append(await system.stop(status="interrupted"))

    monkeypatch.setattr(actors, "stop", own_end_then_a_stop)
    async with asyncio.timeout(60):
        summary = await system.wait()
    assert stops == [summary]
    assert (summary.status, summary.dead_letters) == ("completed", 0)
    events = [json.loads(line) for line in (tmp_path / "run" / "events.jsonl").read_text().splitlines()]
    assert not [e for e in events if e["event"] in ("pipeline_drain_incomplete", "dead_letter")]
    written = msgspec.json.decode((tmp_path / "run" / "summary.json").read_bytes(), type=RunSummary)
    assert written.dead_letters == 0
