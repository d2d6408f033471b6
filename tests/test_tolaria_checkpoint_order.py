"""The checkpoint writer thread reads a captured state only after the capture has completed on its stream.

It waits for an event recorded on the capturing stream after the capture has completed: at an epoch end and at the run's
end (a stop or a halt writes the same way), with no host sync of the train stream in between. CUDA's stream and event
are stood in for (no GPU here); the loop, capture and writer are the real ones."""

from __future__ import annotations

import itertools
import threading
from typing import TYPE_CHECKING

import pytest
import torch

import actors.tolaria.cuda_streams as cuda_streams
from actors.tolaria.build import load_data
from actors.tolaria.checkpoint_codec import encode_state_chunks
from actors.tolaria.loop import TrainingLoop
from actors.tolaria.loop_options import LoopOptions
from actors.tolaria.plans import PlanInbox
from actors.tolaria.snapshots import SnapshotStore, capture
from schemas.config import TolariaConfig

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from actors.tolaria.build import Trainee
    from actors.tolaria.snapshots import TrainState
    from schemas.base import Message, Record
    from schemas.boundary import BoundaryApplied
    from schemas.state import SystemStatePacket

pytestmark = pytest.mark.timeout(90)


class _Box:
    def packet(self, packet: SystemStatePacket) -> None:
        pass

    def applied(self, receipt: BoundaryApplied) -> None:
        pass

    def event(self, event: Message | Record) -> None:
        pass


class _Journal:
    """What happened, in order: (position, what, thread, the state's or the event's id)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counter = itertools.count()
        self.entries: list[tuple[int, str, int, int]] = []

    def note(self, what: str, key: int) -> None:
        with self._lock:
            self.entries.append((next(self._counter), what, threading.get_ident(), key))


class _FakeStream:
    device = torch.device("cuda", 0)


def test_every_checkpoint_is_read_after_an_event_recorded_after_its_capture(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    journal = _Journal()
    stream = _FakeStream()

    class FakeEvent:
        def record(self, on: object) -> None:
            assert on is stream
            journal.note("record", id(self))

        def synchronize(self) -> None:
            journal.note("synchronize", id(self))

    monkeypatch.setattr(cuda_streams, "lane_stream", lambda device: stream)
    monkeypatch.setattr(torch.cuda, "Event", FakeEvent)

    def noted_capture(trainee: Trainee, **kwargs: object) -> TrainState:
        state = capture(trainee, **kwargs)  # type: ignore[arg-type]  # the loop's own keyword arguments
        journal.note("capture", id(state))
        return state

    def noted_encode(state: TrainState) -> Iterator[memoryview]:
        journal.note("read", id(state))  # the pieces it returns are read later, on the same thread
        return encode_state_chunks(state)

    monkeypatch.setattr("actors.tolaria.loop_state.capture", noted_capture)
    monkeypatch.setattr("actors.tolaria.checkpoints.encode_state_chunks", noted_encode)

    config = TolariaConfig(epochs=2, dataset_samples=600, batch_size=50, state_every_steps=4)
    loop = TrainingLoop(
        config,
        LoopOptions(run_id="t", checkpoint_dir=tmp_path / "checkpoints"),
        inbox=PlanInbox(),
        outbox=_Box(),
        snapshots=SnapshotStore(int(config.snapshot_memory_cap_mb * 2**20)),
        data=load_data(config),
    )
    trainer = threading.get_ident()
    assert loop.run().status == "completed"

    entries = journal.entries
    reads = [entry for entry in entries if entry[1] == "read"]
    assert len(reads) == 2  # the first epoch's checkpoint and the run's last
    for position, _, reader, state in reads:
        assert reader != trainer
        captured = next(p for p, what, _, key in entries if what == "capture" and key == state)
        recorded = {key: p for p, what, thread, key in entries if what == "record" and thread == trainer}
        ordered = [
            p
            for p, what, thread, key in entries
            if what == "synchronize" and thread == reader and recorded.get(key, position) > captured and p < position
        ]
        assert ordered, f"the checkpoint read at #{position} waits for no event recorded after its capture"


def test_the_stream_helpers_do_nothing_on_a_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_cuda(device: torch.device) -> None:
        raise AssertionError("a CPU device asked CUDA for a stream")

    monkeypatch.setattr(torch.cuda, "current_stream", no_cuda)
    cpu = torch.device("cpu")
    assert cuda_streams.lane_stream(cpu) is None
    assert cuda_streams.mark_ready(cpu) is None
    assert cuda_streams.record_use([torch.zeros(2)], cpu) == 0


def test_the_lane_stream_is_the_threads_current_stream_on_the_device(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[torch.device] = []
    stream = _FakeStream()

    def current(device: torch.device) -> _FakeStream:
        asked.append(device)
        return stream

    monkeypatch.setattr(torch.cuda, "current_stream", current)
    device = torch.device("cuda", 1)
    found: object = cuda_streams.lane_stream(device)
    assert found is stream
    assert asked == [device]
