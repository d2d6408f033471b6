"""probe_validate: check a built blueprint module on a probe batch before it is stored or attached.

Tezzeret calls it after building a representative module, Urza or Kasmina may call it before attach. It is pure: it
reads the module, never changes its parameters, their ``.grad`` or its train/eval mode, and returns a record of what
it found (failures included) rather than raising, so the caller decides what a failure means.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, final

import torch

from esper.nn.blueprints.registry import param_count_range

if TYPE_CHECKING:
    from collections.abc import Callable

    from torch import nn

    from esper.nn.blueprints.descriptors import BlueprintDescriptor, SlotShape

__all__ = ["ProbeReport", "probe_validate"]


@final
@dataclass(frozen=True, kw_only=True)
class ProbeReport:
    """What ``probe_validate`` measured. ``failures`` holds one line per failed check; empty means it passed.

    ``forward_ms`` and ``backward_ms`` are wall-clock milliseconds of one probe pass (informational: no check reads
    them). ``output_is_zero`` is whether the output was exactly zero (the function-preserving state of a fresh seed).
    """

    blueprint_id: str
    kind: str
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    param_count: int
    param_min: int
    param_max: int
    forward_ms: float
    backward_ms: float
    output_finite: bool
    grads_finite: bool
    output_is_zero: bool
    failures: tuple[str, ...]

    @property
    def ok(self) -> bool:
        """True when every check passed."""
        return not self.failures


def _sync(device: torch.device) -> None:
    # Timing a CUDA forward without a sync measures only the launch; this runs on a lane thread, never on the loop.
    # The current stream only (the lane's, which queued the probe's kernels): a device-wide sync would wait for the
    # training step's kernels on the train lane's stream too.
    if device.type == "cuda":
        torch.cuda.current_stream(device).synchronize()


def probe_validate(
    module: nn.Module,
    descriptor: BlueprintDescriptor,
    slot: SlotShape,
    example_shape: tuple[int, ...],
    *,
    seed: int = 0,
    expect_zero_output: bool = True,
    timer: Callable[[], float] = time.perf_counter,
) -> ProbeReport:
    """Run one forward and backward pass of ``module`` on a random probe batch and check the results.

    Checks: ``example_shape`` fits the slot (rank, feature axis); the output has the input's shape and dtype; output
    and parameter gradients are finite; the parameter count lies within the descriptor's bounds for this slot
    (``param_count_range``); with ``expect_zero_output``, the output is exactly zero (a freshly built seed).

    Args:
        module: the seed module, on the device (and in the dtype) it will run on.
        descriptor: the blueprint the module was built from.
        slot: the slot it is meant for.
        example_shape: the probe input shape, batch first, e.g. ``(2, slot.features, 16)`` for conv1d.
        seed: seeds the probe input and the random loss weights (a private CPU generator).
        expect_zero_output: require the output to be exactly zero.
        timer: seconds clock for the informational timings.

    Runs on the calling thread (the io lane); on CUDA it synchronises the thread's current stream to time the passes.
    """
    failures: list[str] = []
    params = list(module.parameters())
    device = params[0].device if params else torch.device("cpu")
    dtype = params[0].dtype if params else slot.dtype
    count = sum(p.numel() for p in params)
    lo, hi = param_count_range(descriptor, slot)
    who = f"blueprint {descriptor.blueprint_id} on {slot.kind}"
    if not lo <= count <= hi:
        failures.append(f"{who}: {count} parameters outside the descriptor's [{lo}, {hi}]")
    if any(not p.requires_grad for p in params):
        failures.append(f"{who}: some parameters do not require grad")
    if len(example_shape) != slot.rank or example_shape[slot.feature_axis] != slot.features:
        failures.append(
            f"{who}: example shape {example_shape} does not fit a {slot.kind} slot of {slot.features} features"
        )
        return ProbeReport(
            blueprint_id=descriptor.blueprint_id,
            kind=slot.kind,
            input_shape=example_shape,
            output_shape=(),
            param_count=count,
            param_min=lo,
            param_max=hi,
            forward_ms=math.nan,
            backward_ms=math.nan,
            output_finite=False,
            grads_finite=False,
            output_is_zero=False,
            failures=tuple(failures),
        )

    generator = torch.Generator(device="cpu").manual_seed(seed)
    x = torch.randn(example_shape, generator=generator).to(device=device, dtype=dtype)
    weights = torch.randn(example_shape, generator=generator).to(device=device, dtype=torch.float32)
    with torch.enable_grad():
        _sync(device)
        start = timer()
        y = module(x)
        _sync(device)
        forward_ms = (timer() - start) * 1e3
        output_shape = tuple(y.shape)
        output_finite = bool(torch.isfinite(y).all())
        output_is_zero = int(torch.count_nonzero(y)) == 0
        grads_finite = not params
        backward_ms = math.nan
        if output_shape != example_shape:
            failures.append(f"{who}: output shape {output_shape} differs from input shape {example_shape}")
        elif params:
            loss = (y.float() * weights).sum()
            start = timer()
            grads = torch.autograd.grad(loss, params, allow_unused=True)
            _sync(device)
            backward_ms = (timer() - start) * 1e3
            grads_finite = all(g is None or bool(torch.isfinite(g).all()) for g in grads)
    if y.dtype != dtype:
        failures.append(f"{who}: output dtype {y.dtype} differs from input dtype {dtype}")
    if not output_finite:
        failures.append(f"{who}: output has non-finite values")
    if output_shape == example_shape and not grads_finite:
        failures.append(f"{who}: parameter gradients are missing or non-finite")
    if expect_zero_output and not output_is_zero:
        failures.append(f"{who}: output is not exactly zero at birth")
    return ProbeReport(
        blueprint_id=descriptor.blueprint_id,
        kind=slot.kind,
        input_shape=example_shape,
        output_shape=output_shape,
        param_count=count,
        param_min=lo,
        param_max=hi,
        forward_ms=forward_ms,
        backward_ms=backward_ms,
        output_finite=output_finite,
        grads_finite=grads_finite,
        output_is_zero=output_is_zero,
        failures=tuple(failures),
    )
