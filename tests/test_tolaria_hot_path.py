"""The trainer's hot-path pieces: deferred interval statistics and the fused finite check."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from actors.tolaria.epoch_end import FiniteCheck
from actors.tolaria.telemetry import IntervalStats


def test_interval_means_equal_the_per_step_reference_across_folds_and_a_short_last_batch() -> None:
    generator = torch.Generator().manual_seed(7)
    stats = IntervalStats()
    loss_sum = 0.0
    hits = 0
    samples = 0
    for step in range(41):  # crosses the fold threshold and ends on a short batch
        batch = 5 if step == 40 else 16
        logits = torch.randn(batch, 10, generator=generator)
        labels = torch.randint(0, 10, (batch,), generator=generator)
        loss = F.cross_entropy(logits, labels)
        stats.add(loss, logits, labels, batch)
        loss_sum += float(loss) * batch
        hits += int((logits.argmax(1) == labels).sum())
        samples += batch
    mean_loss, accuracy = stats.means()
    assert stats.samples == samples
    assert abs(mean_loss - loss_sum / samples) < 1e-5
    assert accuracy == hits / samples


def test_interval_sums_add_into_an_epoch_total() -> None:
    epoch = IntervalStats()
    for value in (1.0, 3.0):
        interval = IntervalStats()
        interval.add(torch.tensor(value), torch.eye(2), torch.tensor([0, 0]), 2)
        epoch.add_sums(interval)
    assert epoch.means() == (2.0, 0.5)


def test_the_finite_check_catches_a_bad_gradient_under_a_finite_loss_and_changes_no_value() -> None:
    weight = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.SGD([weight], lr=0.1)
    check = FiniteCheck(torch.device("cpu"))
    weight.grad = torch.tensor([0.5, -0.0, 1e-40])
    before = weight.grad.clone()
    assert check(torch.tensor(1.0), optimizer)
    assert torch.equal(weight.grad, before)
    assert torch.equal(torch.signbit(weight.grad), torch.signbit(before))
    weight.grad = torch.tensor([0.5, float("inf"), 0.0])
    assert not check(torch.tensor(1.0), optimizer)
    weight.grad = torch.tensor([0.5, 0.0, 0.0])
    assert check(torch.tensor(2.0), optimizer)  # the flag was reset: one bad step does not stick
    assert not check(torch.tensor(float("nan")), optimizer)
