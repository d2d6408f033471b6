"""The work the step loop does between two epochs: validation, the finite and output checks, the log record.

Validation, the finite check and the output check it shares with every step, and the epoch's log record. Lane-thread
only.

What blocks the loop at an epoch end (the stall the benchmark reports) is kept to O(model size) copies: the packet
reads the device once, the snapshot clones tensors, and the checkpoint is serialised and written on the writer
thread (``CheckpointWriter``), never here.
"""

from __future__ import annotations

import contextlib
import inspect
from typing import TYPE_CHECKING, final

import torch
import torch.nn.functional as F

from esper.runtime.errors import EsperError

if TYPE_CHECKING:
    from torch import nn

    from actors.tolaria.build import Trainee
    from esper.nn.data import TensorPair

_EVAL_BATCH = 1024


def model_input(trainee: Trainee, x: torch.Tensor) -> torch.Tensor:
    """A batch of inputs as the training step gives them to the model: on its device, channels_last for a
    channels_last model's images."""
    x = x.to(trainee.device)
    if trainee.channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def autocast(trainee: Trainee) -> contextlib.AbstractContextManager[object]:
    """The run's autocast (bf16, ``tolaria.precision``) for a forward outside the training step; none in fp32."""
    dtype = trainee.autocast_dtype
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=trainee.device.type, dtype=dtype)


class ModelOutputError(EsperError, ValueError):
    """A model's forward returned something other than ``[batch, classes]`` class scores in the middle of a run (the
    start's probe checked its first output): a failure of its forward, restarted as any other."""


def check_output(model: nn.Module, out: object, rows: int, classes: int, step: int | None) -> None:
    """Raise ModelOutputError unless ``out`` is a ``[rows, classes]`` tensor: a tuple comparison, no device work.

    ``step``: the training step's index, or None for an evaluation pass. Without it, ``[batch, 20]`` for 10 classes
    trained on silently (a 20-way softmax) and ``[batch, 5]`` failed inside the loss ("Target 9 is out of bounds"; a
    device-side assert on CUDA), naming neither the model nor the shape."""
    if isinstance(out, torch.Tensor) and out.shape == (rows, classes):
        return
    got = f"shape {list(out.shape)}" if isinstance(out, torch.Tensor) else f"a {type(out).__name__}"
    where = "in an evaluation pass (eval mode)" if step is None else f"at step {step}"
    raise ModelOutputError(
        f"the model's forward{_defined_at(model)} returned {got} {where}: expected [batch, classes] ="
        f" [{rows}, {classes}] (class scores for the data set's {classes} classes)"
    )


def _defined_at(model: nn.Module) -> str:
    """`` (Class.forward at file:line)`` of ``model``'s forward, where its source can be found; "" otherwise."""
    forward = type(model).forward
    try:
        file = inspect.getsourcefile(forward)
        _, line = inspect.getsourcelines(forward)
    except (OSError, TypeError):
        return ""
    return f" ({type(model).__qualname__}.forward at {file}:{line})" if file else ""


def evaluate(trainee: Trainee, split: TensorPair, classes: int) -> tuple[float, float]:
    """(mean loss, accuracy) of the current model on a split of ``classes`` classes, in eval mode; (nan, 0) for an
    empty split.

    One device read for the whole split. The model is back in train mode afterwards, even if this raises.

    Raises:
        ModelOutputError: the model's output is not ``[batch, classes]``.
    """
    n = split.num_samples
    if n == 0:
        return float("nan"), 0.0
    model = trainee.model
    model.eval()
    loss_sum = torch.zeros((), device=trainee.device)
    correct = torch.zeros((), device=trainee.device, dtype=torch.int64)
    try:
        with torch.no_grad():
            for start in range(0, n, _EVAL_BATCH):
                x = model_input(trainee, split.x[start : start + _EVAL_BATCH])
                y = split.y[start : start + _EVAL_BATCH].to(trainee.device)
                with autocast(trainee):
                    out = model(x)
                check_output(model, out, y.shape[0], classes, None)
                loss_sum += F.cross_entropy(out.float(), y, reduction="sum")
                correct += (out.argmax(1) == y).sum()
    finally:
        model.train()
    both = torch.stack((loss_sum.float(), correct.float())).tolist()
    return both[0] / n, both[1] / n


@final
class FiniteCheck:
    """Whether a step's loss and every gradient are finite: one fused kernel and one device read per step.

    Uses the kernel GradScaler uses (``_amp_foreach_non_finite_check_and_unscale_``) with a scale of exactly 1.0,
    which leaves every value bitwise unchanged; where that kernel is unavailable (a device or dtype it does not
    support), it falls back to a foreach norm of the gradients. The read is a host sync on CUDA: skipping a
    non-finite step needs the answer before ``optimizer.step()``.
    """

    def __init__(self, device: torch.device) -> None:
        self._found = torch.zeros(1, device=device)
        self._one = torch.ones(1, device=device)
        self._fused = True
        # On the CPU the flag is read through a NumPy view of its memory: no torch call (``item`` costs the step a
        # dispatch, on caches the backward just used).
        self._flag = self._found.numpy() if device.type == "cpu" else None

    def __call__(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> bool:
        """True when ``loss`` (0-d, detached) and every gradient of ``optimizer``'s parameters are finite."""
        tensors = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        tensors.append(loss)
        if self._fused:
            found = self._found
            try:
                torch._amp_foreach_non_finite_check_and_unscale_(tensors, found, self._one)
            except (RuntimeError, NotImplementedError):
                self._fused = False
            else:
                flag = self._flag
                finite = bool(found.item() == 0.0) if flag is None else bool(flag[0] == 0.0)
                if not finite:
                    # The kernel only ever sets the flag, so it is zeroed after a hit instead of before every step.
                    found.zero_()
                return finite
        total = torch.nn.utils.get_total_norm(tensors, foreach=True)
        return bool(torch.isfinite(total))


def epoch_fields(
    *,
    epoch: int,
    epochs: int,
    step: int,
    train: tuple[float, float],
    validation: tuple[float, float] | None,
    epoch_ms: float,
    hook_ms: float,
    capture_ms: float,
    emergency_level: int,
) -> dict[str, object]:
    """The ``epoch_end`` log record (``epoch`` counts from 1): ``hook_ms`` the whole epoch end's time, ``capture_ms``
    the part of it spent copying the state (which ``tolaria.epoch_hook_budget_ms`` does not bound)."""
    return {
        "epoch": epoch,
        "epochs": epochs,
        "step": step,
        "train_loss": round(train[0], 4),
        "train_acc": round(train[1], 4),
        "val_loss": None if validation is None else round(validation[0], 4),
        "val_acc": None if validation is None else round(validation[1], 4),
        "epoch_s": round(epoch_ms / 1e3, 3),
        "hook_ms": round(hook_ms, 3),
        "capture_ms": round(capture_ms, 3),
        "emergency_level": emergency_level,
    }
