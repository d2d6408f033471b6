"""The gradient-isolation probe: does a seed's output put any gradient on host parameters?

Until a seed is fossilized, its output is computed from the detached slot input, so differentiating the seed's output
with respect to every host parameter must give nothing (``None``) or exact zeros. The probe checks exactly that on
one micro-batch (REFERENCE.md section 4): it runs a forward pass with a hook that keeps each non-dormant,
non-fossilized slot's seed output, then asks autograd for the gradient of each seed output with respect to the host
parameters. A non-zero gradient is a violation: the detach was lost, or the seed shares a host parameter.

The overlap of host and seed gradients during training is measured separately (esper.nn.grad_sketch).

Runs on the train lane between steps; it returns plain Python numbers (one host sync per probe, never per step).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, final

import torch
from torch import Tensor, nn

from esper.nn.slots import SeedSlot, SlotMode
from esper.nn.wrap import find_slots

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence

__all__ = [
    "LIVE_MODES",
    "MONITORED_MODES",
    "IsolationResult",
    "host_parameters_of",
    "live_seed_slots",
    "probe_isolation",
]

LIVE_MODES = (SlotMode.TRAINING, SlotMode.BLENDING, SlotMode.FULL)
MONITORED_MODES = (SlotMode.TRAINING, SlotMode.BLENDING)
"""Where REFERENCE.md section 4 runs the isolation monitor: TRAINING and BLENDING only."""


@final
@dataclass(frozen=True, slots=True)
class IsolationResult:
    """One slot's probe outcome.

    Attributes:
        slot: the slot's qualified host name.
        seed_id: the attached seed's id (None if the slot carries none).
        violations: host parameters that received a non-zero gradient from the seed's output.
        max_abs_host_grad: the largest absolute such gradient entry (0.0 when isolated).
        offenders: the names of the offending host parameters (at most 8).
    """

    slot: str
    seed_id: str | None
    violations: int
    max_abs_host_grad: float
    offenders: tuple[str, ...] = ()

    @property
    def isolated(self) -> bool:
        return self.violations == 0


def probe_isolation(
    model: nn.Module,
    run_forward: Callable[[], object],
    *,
    host_parameters: Sequence[tuple[str, Tensor]] | None = None,
    modes: Iterable[SlotMode] = LIVE_MODES,
) -> list[IsolationResult]:
    """Differentiate every live seed's output with respect to the host parameters on one forward pass.

    Args:
        model: the wrapped host (slots found with find_slots).
        run_forward: runs one forward pass of ``model`` on a micro-batch (e.g. ``lambda: model(x[:8])``); its result
            is ignored. It runs with gradients enabled; nothing is accumulated into ``.grad``.
        host_parameters: (name, parameter) pairs owned by the host; default: every trainable parameter not inside a
            live (non-fossilized) seed.
        modes: which live slots to probe (Tolaria's monitor passes ``MONITORED_MODES``).

    Returns:
        One result per probed slot, in slot order.
    """
    live = live_seed_slots(model)
    wanted = frozenset(modes)
    slots = {name: slot for name, slot in live.items() if slot.mode in wanted}
    if not slots:
        return []
    outputs: dict[str, Tensor] = {}
    handles = [_seed_module(slot).register_forward_hook(_keep_output(outputs, name)) for name, slot in slots.items()]
    try:
        with torch.enable_grad():
            run_forward()
    finally:
        for handle in handles:
            handle.remove()
    host = list(host_parameters) if host_parameters is not None else host_parameters_of(model, live.values())
    names = [name for name, _ in host]
    params = [param for _, param in host]
    results: list[IsolationResult] = []
    for name, slot in slots.items():
        seed_out = outputs.get(name)
        if seed_out is None or not seed_out.requires_grad or not params:
            results.append(IsolationResult(slot=name, seed_id=slot.seed_id, violations=0, max_abs_host_grad=0.0))
            continue
        grads = torch.autograd.grad(seed_out.float().sum(), params, allow_unused=True, retain_graph=True)
        leaks = [(n, g) for n, g in zip(names, grads, strict=True) if g is not None]
        maxima = torch.stack([g.detach().abs().max() for _, g in leaks]) if leaks else None
        peaks = maxima.tolist() if maxima is not None else []  # one sync per slot probed
        offenders = tuple(n for (n, _), peak in zip(leaks, peaks, strict=True) if peak > 0.0)
        results.append(
            IsolationResult(
                slot=name,
                seed_id=slot.seed_id,
                violations=len(offenders),
                max_abs_host_grad=max(peaks, default=0.0),
                offenders=offenders[:8],
            )
        )
    return results


def _keep_output(store: dict[str, Tensor], name: str) -> Callable[[nn.Module, object, object], None]:
    def hook(module: nn.Module, args: object, output: object) -> None:
        if isinstance(output, Tensor):
            store[name] = output

    return hook


def _seed_module(slot: SeedSlot) -> nn.Module:
    seed = slot.seed_module
    if seed is None:
        raise ValueError(f"slot after {slot.host_name!r} is live but holds no seed")
    return seed


def live_seed_slots(model: nn.Module) -> dict[str, SeedSlot]:
    """The slots whose seed is attached and not yet fossilized (TRAINING, BLENDING or FULL), in forward order."""
    return {name: slot for name, slot in find_slots(model).items() if slot.mode in LIVE_MODES}


def host_parameters_of(model: nn.Module, live: Iterable[SeedSlot]) -> list[tuple[str, Tensor]]:
    """Trainable (name, parameter) pairs of ``model`` outside every seed in ``live`` (fossilized seeds are host)."""
    seed_ids = {id(p) for slot in live for p in _seed_module(slot).parameters()}
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad and id(p) not in seed_ids]
