"""A seed module prepared on the io lane is marked as used by the train lane's stream before that stream touches it.

The module's memory is allocated on the io stream, and it is attached, trained and culled on the train lane; marked
before the train lane's stream first touches it, its memory cannot be handed back to the io stream by the caching
allocator while the train stream's queued kernels still write it. The lanes, the preparer and the applier are the real
ones (on a CPU); the train stream is stood in for."""

from __future__ import annotations

import gc
import threading
import weakref

import pytest
import torch
import torch.nn.functional as F

import actors.tolaria.cuda_streams as cuda_streams
from actors.kasmina.preparation import CatalogueSource, PreparationRequest, Preparer
from actors.tolaria.boundary import BoundaryApplier
from actors.tolaria.build import build_trainee, load_data
from esper.runtime.handoff import Handoff
from esper.runtime.lanes import Lane
from schemas.boundary import SeedOp
from schemas.config import TolariaConfig
from schemas.enums import SeedLifecycleStage

pytestmark = pytest.mark.timeout(60)


def _no_module(op: SeedOp) -> torch.nn.Module:
    raise AssertionError(f"{op.kind} takes no module")


class _FakeStream:
    """The train lane's stream as the allocator sees it: a stream on the tensors' device."""

    device = torch.device("cpu")


async def test_a_seed_from_the_io_lane_is_marked_for_the_train_stream_before_it_trains(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = TolariaConfig(epochs=1, dataset_samples=300, batch_size=50)
    data = load_data(config)
    trainee = build_trainee(config, data, (), torch.device("cpu"))
    slot, shape = next(iter(trainee.slot_shapes.items()))
    handoff: Handoff[torch.nn.Module] = Handoff()
    io, train = Lane("io"), Lane("train")
    stream = _FakeStream()
    streams_by_thread: dict[int, _FakeStream] = {}
    marked: list[tuple[int, object, int]] = []  # (tensor id, stream, thread)

    def lane_stream(device: torch.device) -> _FakeStream:
        return streams_by_thread.setdefault(threading.get_ident(), stream)

    def record_stream(tensor: torch.Tensor, on: object) -> None:
        marked.append((id(tensor), on, threading.get_ident()))

    monkeypatch.setattr(cuda_streams, "lane_stream", lane_stream)
    monkeypatch.setattr(torch.Tensor, "record_stream", record_stream)
    freed_on: list[int] = []

    def attach_train_cull() -> tuple[int, set[int], int]:
        applier = BoundaryApplier(trainee)
        attach = SeedOp(
            kind="attach",
            slot=slot,
            seed_id="s1",
            handle=prepared.handle,
            stage=SeedLifecycleStage.TRAINING,
            blueprint_id="BP005",
        )
        outcome = applier.apply(attach, step=0, take_module=lambda op: handoff.take(op.handle or ""))
        assert outcome.applied, outcome.error
        seed = trainee.slots[slot].seed_module
        assert seed is not None
        tensors = [*seed.parameters(), *seed.buffers()]
        weakref.finalize(tensors[0], lambda: freed_on.append(threading.get_ident()))
        ids = {id(t) for t in tensors}
        marked_before_use = len(marked)
        F.cross_entropy(trainee.model(data.train.x[:8]), data.train.y[:8]).backward()  # type: ignore[no-untyped-call]
        trainee.optimizer.step()  # on CUDA: queued on the train stream, not waited for
        del seed, tensors
        outcome = applier.apply(SeedOp(kind="detach", slot=slot, seed_id="s1"), step=1, take_module=_no_module)
        assert outcome.applied, outcome.error
        gc.collect()
        return threading.get_ident(), ids, marked_before_use

    try:
        preparer = Preparer(CatalogueSource(), handoff, io)
        request = PreparationRequest(
            seed_id="s1",
            slot=slot,
            blueprint_id="BP005",
            slot_shape=shape,
            params=(("width", 0.5), ("kernel_radius", 1.0)),
            build_seed=7,
        )
        prepared = await preparer.prepare(request)
        trainer, seed_tensors, marked_before_use = await train.run(attach_train_cull)
    finally:
        await io.aclose()
        await train.aclose()

    assert io.thread_id != trainer
    assert freed_on == [trainer]  # the cull freed it on the train lane, with its stream's work maybe still queued
    assert len(seed_tensors) == 6
    on_train = {tensor for tensor, on, thread in marked[:marked_before_use] if on is stream and thread == trainer}
    assert on_train == seed_tensors


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda_the_helpers_use_the_threads_current_stream() -> None:
    device = torch.device("cuda", torch.cuda.current_device())
    side = torch.cuda.Stream(device=device)  # type: ignore[no-untyped-call]  # torch leaves Stream.__new__ untyped
    with torch.cuda.stream(side):
        tensor = torch.ones(4, device=device)
        assert cuda_streams.lane_stream(device) == side
        ready = cuda_streams.mark_ready(device)
        assert cuda_streams.record_use([tensor, torch.ones(2)], device) == 1  # the CPU tensor is left alone
    assert ready is not None
    ready.synchronize()
