"""A checkpoint keeps the training device's CUDA RNG state only, and puts it back on the training device.

A resume that sees fewer GPUs or numbers them otherwise neither crashes nor restores another GPU's state; an earlier
version's list of every GPU's state still loads. torch.cuda is stood in for by CPU generators (torch's own get/set code
runs)."""

from __future__ import annotations

import pytest
import structlog.testing
import torch

from actors.tolaria.checkpoint_codec import decode_state, encode_state
from actors.tolaria.cuda_rng import cuda_rng_problem
from actors.tolaria.snapshots import TrainState, rng_state, set_rng_state


def _gpus(monkeypatch: pytest.MonkeyPatch, count: int) -> tuple[torch.Generator, ...]:
    """A machine with ``count`` visible GPUs, CUDA initialised; their generators."""
    generators = tuple(torch.Generator().manual_seed(100 + index) for index in range(count))
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda.random, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda.random, "_lazy_init", lambda: None)
    monkeypatch.setattr(torch.cuda, "default_generators", generators, raising=False)
    return generators


def _state_of(seed: int) -> torch.Tensor:
    return torch.Generator().manual_seed(seed).get_state()


def _checkpoint(rng: dict[str, object]) -> TrainState:
    return TrainState(
        global_step=4,
        epoch=0,
        batch_index=4,
        model={},
        optimizer={"groups": [], "state": {}},
        rng=rng,
        graft_log=[],
        paused={},
        counters={},
    )


def test_a_capture_keeps_the_training_devices_state_only(monkeypatch: pytest.MonkeyPatch) -> None:
    generators = _gpus(monkeypatch, 2)
    saved = rng_state(torch.device("cuda", 1))
    assert isinstance(saved["cuda"], torch.Tensor)
    assert torch.equal(saved["cuda"], generators[1].get_state())
    assert "cuda" not in rng_state(torch.device("cpu"))


def test_the_state_goes_back_onto_the_training_device(monkeypatch: pytest.MonkeyPatch) -> None:
    generators = _gpus(monkeypatch, 2)
    saved = rng_state(torch.device("cuda", 1))
    first = generators[0].get_state()
    generators[1].manual_seed(9)
    set_rng_state(saved, torch.device("cuda", 1))
    assert torch.equal(generators[1].get_state(), _state_of(101))
    assert torch.equal(generators[0].get_state(), first)


def test_an_earlier_versions_list_resumes_on_fewer_gpus_from_the_training_devices_entry(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    saved = rng_state()
    saved["cuda"] = [_state_of(1), _state_of(2)]  # as an earlier version wrote it on two GPUs
    (only,) = _gpus(monkeypatch, 1)
    decoded, _ = decode_state(encode_state(_checkpoint(saved)))  # the checkpoint check accepts the list
    set_rng_state(decoded.rng, torch.device("cuda", 0))  # was IndexError: tuple index out of range
    assert torch.equal(only.get_state(), _state_of(1))


def test_an_earlier_list_without_the_training_devices_entry_is_passed_over_with_a_warning(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    saved = rng_state()
    saved["cuda"] = [_state_of(1)]
    generators = _gpus(monkeypatch, 2)
    with structlog.testing.capture_logs() as logs:
        set_rng_state(saved, torch.device("cuda", 1))
    assert [log["event"] for log in logs] == ["cuda_rng_state_not_restored"]
    assert logs[0]["device"] == "cuda:1"
    assert torch.equal(generators[1].get_state(), _state_of(101))


def test_a_cuda_state_is_left_alone_by_a_run_on_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_cuda(*args: object) -> None:
        raise AssertionError("a CPU run set a CUDA generator")

    monkeypatch.setattr(torch.cuda, "set_rng_state", no_cuda)
    saved = rng_state()
    saved["cuda"] = _state_of(1)
    expected = torch.rand(2)
    set_rng_state(saved, torch.device("cpu"))
    assert torch.equal(torch.rand(2), expected)  # the CPU generator's state went back all the same


def test_this_versions_state_round_trips_through_a_checkpoint() -> None:
    saved = rng_state()
    saved["cuda"] = _state_of(5)
    decoded, _ = decode_state(encode_state(_checkpoint(saved)))
    cuda = decoded.rng["cuda"]
    assert isinstance(cuda, torch.Tensor)
    assert torch.equal(cuda, _state_of(5))


@pytest.mark.parametrize(
    "saved",
    [torch.zeros(16), [torch.zeros(16, dtype=torch.uint8), 3], "state", torch.zeros(2, 8, dtype=torch.uint8)],
    ids=["float-tensor", "list-with-a-number", "string", "two-dimensional"],
)
def test_a_cuda_state_of_neither_shape_is_a_problem(saved: object) -> None:
    assert cuda_rng_problem(saved) == "rng.cuda: expected a uint8 tensor or a list of them"


def test_both_shapes_and_none_are_accepted() -> None:
    state = _state_of(1)
    assert cuda_rng_problem(state) is None
    assert cuda_rng_problem([state, state]) is None
    assert cuda_rng_problem(None) is None


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda_the_training_devices_draws_resume_where_they_were() -> None:
    device = torch.device("cuda", torch.cuda.current_device())
    saved = rng_state(device)
    expected = torch.rand(4, device=device)
    set_rng_state(saved, device)
    assert torch.equal(torch.rand(4, device=device), expected)
