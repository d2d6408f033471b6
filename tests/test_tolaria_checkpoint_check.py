"""A checkpoint whose digest matches but whose state cannot be loaded is corrupt: skipped for the previous one.

Each mutation here once passed the SHA-256 check (the file re-signed in the manifest) and then failed the trainer at
its restore, at every restart, until the run ended with exit 1 (README: a bad checkpoint is skipped with a
``checkpoint_corrupt`` warning and the previous one used).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
import structlog
import torch

from actors.tolaria.checkpoint_codec import CheckpointError, decode_state, encode_state
from actors.tolaria.checkpoint_verify import latest_good, load_latest
from actors.tolaria.checkpoints import CheckpointWriter
from actors.tolaria.restore_point import choose_restore
from actors.tolaria.snapshots import TrainState, rng_state

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path


def _state(step: int) -> TrainState:
    return TrainState(
        global_step=step,
        epoch=step // 20,
        batch_index=step % 20,
        model={"layer.weight": torch.zeros(2, 3), "slot._extra_state": {"mode": "dormant"}},
        optimizer={"groups": [{"name": "host", "param_names": ["layer.weight"]}], "state": {}},
        rng=rng_state(),
        graft_log=[],
        paused={"slot": "training"},
        counters={
            "emergency_level": 2,
            "emergency_clean_ticks": 1,
            "nonfinite_window": "3,5",
            "expected_plans": "[[36,44]]",
            "last_val_loss": 1.5,
            "run_id": "r",
            "epoch_figures": "[1.0,0.5,null,0.25]",
        },
    )


def _set_numpy(key: str, value: object) -> Callable[[TrainState], None]:
    def change(state: TrainState) -> None:
        numpy = state.rng["numpy"]
        assert isinstance(numpy, dict)
        numpy[key] = value

    return change


def _set(part: str, key: str, value: object) -> Callable[[TrainState], None]:
    def change(state: TrainState) -> None:
        getattr(state, part)[key] = value

    return change


MUTATIONS: list[tuple[str, Callable[[TrainState], None], str]] = [
    ("python-rng-not-a-tuple", _set("rng", "python", 7), "rng.python: expected a tuple, got int"),
    ("python-rng-inner-not-a-tuple", _set("rng", "python", [3, "x", None]), "rng.python: state vector must be"),
    ("numpy-rng-kind", _set_numpy("kind", "XXX"), "rng.numpy: ValueError: set_state can only be used with legacy"),
    ("numpy-rng-pos", _set_numpy("pos", "first"), "rng.numpy: TypeError: "),
    ("torch-rng", _set("rng", "torch", torch.zeros(3, dtype=torch.uint8)), "rng.torch: "),
    ("emergency-level", _set("counters", "emergency_level", 99), "counters: Invalid enum value 99"),
    ("expected-plans", _set("counters", "expected_plans", "garbage"), "counters: JSON is malformed"),
    ("expected-plans-shape", _set("counters", "expected_plans", '[["a", 1]]'), "counters: Expected `int`"),
    ("a-count-as-text", _set("counters", "skipped_steps", "many"), "counters: Expected `int | null`, got `str`"),
    ("nonfinite-window", _set("counters", "nonfinite_window", "3,x"), "counters.nonfinite_window: invalid literal"),
    ("epoch-figures", _set("counters", "epoch_figures", "[1.0]"), "counters: Expected `array` of length 4"),
    ("isolation-totals", _set("counters", "isolation_violations", '{"s1": "x"}'), "counters: Expected `int`"),
    ("isolation-negative", _set("counters", "isolation_violations", '{"s1": -1}'), "counters: Expected `int` >= 0"),
    ("paused-mode", _set("paused", "slot", "sideways"), "paused: slot 'slot' in mode 'sideways'"),
]


def test_the_state_a_capture_writes_passes() -> None:
    state, _pending = decode_state(encode_state(_state(40)))
    assert state.counters["emergency_level"] == 2


@pytest.mark.parametrize(("case", "mutate", "says"), MUTATIONS, ids=[case for case, _, _ in MUTATIONS])
def test_a_state_that_cannot_be_loaded_is_a_checkpoint_error(
    case: str, mutate: Callable[[TrainState], None], says: str
) -> None:
    state = _state(40)
    mutate(state)
    with pytest.raises(CheckpointError) as info:
        decode_state(encode_state(state))
    assert str(info.value).startswith(f"malformed checkpoint: {says}"), case
    assert "\n" not in str(info.value)


def test_a_malformed_newest_checkpoint_is_skipped_for_the_previous_one(tmp_path: Path) -> None:
    newest = _state(40)
    newest.counters["emergency_level"] = 99
    writer = CheckpointWriter(tmp_path, keep_last=3)
    writer.submit(_state(20))
    writer.submit(newest)
    writer.close()
    with structlog.testing.capture_logs() as logs:
        loaded = load_latest(tmp_path)
    assert loaded is not None
    assert loaded[2].file == "step-20.pt"
    corrupt = [entry for entry in logs if entry["event"] == "checkpoint_corrupt"]
    assert [entry["file"] for entry in corrupt] == [str(tmp_path / "step-40.pt")]
    assert corrupt[0]["error"].startswith("malformed checkpoint: counters: Invalid enum value 99")


def test_when_every_checkpoint_is_malformed_there_is_no_usable_one(tmp_path: Path) -> None:
    writer = CheckpointWriter(tmp_path, keep_last=3)
    for step in (20, 40):
        state = _state(step)
        state.counters["expected_plans"] = "garbage"
        writer.submit(state)
    writer.close()
    with structlog.testing.capture_logs(), pytest.raises(CheckpointError, match=r"no usable checkpoint \(2 listed\)$"):
        load_latest(tmp_path)


@pytest.mark.parametrize(
    ("corrupt", "newest_good", "restored"),
    [([60], 80, 40), ([80, 40], 60, 20)],
    ids=["the next older one", "the newest and the one past the newest good"],
)
def test_a_corrupt_checkpoint_the_restores_search_walks_past_is_said_once(
    tmp_path: Path, corrupt: list[int], newest_good: int, restored: int
) -> None:
    """The journal does not cover the newest good checkpoint, so a resume walks back past a corrupt older one: it was
    skipped without a word (latest_good, which had said the newer ones, never reached it)."""
    writer = CheckpointWriter(tmp_path, keep_last=4)
    for step in (20, 40, 60, 80):
        writer.submit(_state(step))
    writer.close()
    for step in corrupt:
        path = tmp_path / f"step-{step}.pt"
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
    with structlog.testing.capture_logs() as logs:
        newest = latest_good(tmp_path)  # as esper.resume's resume_point: it says those newer than its own
        assert newest is not None
        assert newest.global_step == newest_good
        point = choose_restore(
            None,
            tmp_path,
            at_most=None,
            covered=lambda state: state.global_step < newest_good,  # the journal ends before its plans
            journal_known=True,
            checksums_said=newest.global_step,
        )
    assert point is not None
    assert point.state.global_step == restored
    said = [entry["file"] for entry in logs if entry["event"] == "checkpoint_corrupt"]
    assert said == [str(tmp_path / f"step-{step}.pt") for step in corrupt]
