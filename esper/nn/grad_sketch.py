"""Count sketches of host and seed gradients, filled by backward hooks into preallocated buffers.

REFERENCE.md section 4 asks the isolation monitor to report how a seed's gradient lines up with the host's (cosine
over a fixed-size random sketch) and says the hooks fill preallocated buffers and never read the device. So the
sketch is taken inside a real training backward: ``GradientSketcher.arm`` registers a tensor hook on every host and
seed parameter for one step, each hook folds that parameter's gradient into a ``size``-bucket buffer on the
gradient's device, and ``disarm`` removes the hooks. ``read`` later turns the buffers into numbers with one
device read for all seeds.

The projection of one tensor (position ``i`` in its set, ``n`` elements) is fixed by ``(seed, i, n)``: its full rows
of ``size`` elements are summed with one random sign per row (``addmv``), the ``n % size`` tail elements go to random
buckets with random signs (``index_add_``). It is linear, so the sketch of several backward passes (gradient
accumulation) is the sketch of their summed gradient, and both sets use the same projection, so identical gradients
give cosine 1. Its tables hold ``n / size`` signs per tensor plus the tail (about 0.4 % of the parameter count), built
once per tensor and kept while the parameter lives.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, final

import torch
from torch import Tensor

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping, Sequence

    from torch.utils.hooks import RemovableHandle

__all__ = ["GradientSketch", "GradientSketcher", "gradient_sketch"]


@final
@dataclass(frozen=True, slots=True)
class GradientSketch:
    """Host and seed gradients compared through a count sketch: dot product, norms and cosine similarity."""

    dot: float
    host_norm: float
    seed_norm: float

    @property
    def cosine(self) -> float:
        denominator = self.host_norm * self.seed_norm
        return 0.0 if denominator == 0.0 else self.dot / denominator


@final
@dataclass(frozen=True, slots=True)
class _Projection:
    row_signs: Tensor  # (n // size,)
    tail_buckets: Tensor  # (n % size,) int64
    tail_signs: Tensor  # (n % size,)
    rows: int


def _projection(position: int, numel: int, size: int, seed: int, device: torch.device) -> _Projection:
    # A private generator: the global RNG (and so training) is untouched.
    generator = torch.Generator().manual_seed(seed * 1_000_003 + position)
    rows, tail = divmod(numel, size)
    row_signs = torch.randint(0, 2, (rows,), generator=generator).float() * 2 - 1
    tail_buckets = torch.randint(0, size, (tail,), generator=generator)
    tail_signs = torch.randint(0, 2, (tail,), generator=generator).float() * 2 - 1
    return _Projection(row_signs.to(device), tail_buckets.to(device), tail_signs.to(device), rows)


def _fold(buffer: Tensor, grad: Tensor, projection: _Projection) -> None:
    size = buffer.numel()
    flat = grad.detach().reshape(-1).to(buffer.dtype)
    full = projection.rows * size
    if projection.rows:
        buffer.addmv_(flat[:full].view(projection.rows, size).t(), projection.row_signs)
    if full < flat.numel():
        buffer.index_add_(0, projection.tail_buckets, flat[full:] * projection.tail_signs)


def gradient_sketch(
    host_grads: Iterable[Tensor | None],
    seed_grads: Iterable[Tensor | None],
    *,
    size: int = 256,
    seed: int = 0,
) -> GradientSketch:
    """Project two gradient sets with the same projection as the hooks and compare them (one device read).

    ``None`` entries (parameters without a gradient) keep their position, so a set sketches as the hooks would.
    """
    if size <= 0:
        raise ValueError(f"size must be > 0, got {size}")
    host, seed_vec = (_sketch_set(grads, size, seed) for grads in (host_grads, seed_grads))
    if host is None or seed_vec is None:
        return GradientSketch(dot=0.0, host_norm=0.0, seed_norm=0.0)
    seed_vec = seed_vec.to(host.device)
    values = torch.stack([host @ seed_vec, host.norm(), seed_vec.norm()]).tolist()
    return GradientSketch(dot=values[0], host_norm=values[1], seed_norm=values[2])


def _sketch_set(grads: Iterable[Tensor | None], size: int, seed: int) -> Tensor | None:
    buffer: Tensor | None = None
    for position, grad in enumerate(grads):
        if grad is None:
            continue
        if buffer is None:
            buffer = torch.zeros(size, device=grad.device)
        _fold(buffer, grad, _projection(position, grad.numel(), size, seed, grad.device))
    return buffer


@final
class GradientSketcher:
    """Sketches one training step's host and seed gradients with tensor hooks; one instance per trainee.

    Usage, all between steps on the thread that owns the model: ``arm(host, seeds)`` before the step, the step's
    backward fills the buffers, ``disarm()`` after it, ``read()`` whenever the figures are wanted. Arming again zeroes
    the buffers. Projections are cached per parameter (weakly: a culled seed's tables go with its parameters).
    """

    def __init__(self, *, size: int = 256, seed: int = 0) -> None:
        if size <= 0:
            raise ValueError(f"size must be > 0, got {size}")
        self._size = size
        self._seed = seed
        # Keyed by id (tensors compare elementwise, so they cannot be dict keys), checked through a weak reference.
        self._projections: dict[int, tuple[weakref.ref[Tensor], _Projection]] = {}
        self._buffers: dict[str, Tensor] = {}
        self._host: Tensor | None = None
        self._handles: list[RemovableHandle] = []
        self._folds = 0

    @property
    def armed(self) -> bool:
        return bool(self._handles)

    @property
    def filled(self) -> bool:
        """Whether any hooked gradient has been folded in since the last ``arm``."""
        return self._folds > 0

    def arm(self, host: Sequence[Tensor], seeds: Mapping[str, Sequence[Tensor]]) -> None:
        """Hook ``host`` parameters and each seed's parameters (keyed by a name of the caller's choosing)."""
        self.disarm()
        self._folds = 0
        self._projections = {k: v for k, v in self._projections.items() if v[0]() is not None}
        self._buffers = {key: self._zeroed(self._buffers.get(key), params) for key, params in seeds.items()}
        self._host = self._zeroed(self._host, host)
        self._hook_all(host, self._host)
        for key, params in seeds.items():
            self._hook_all(params, self._buffers[key])

    def disarm(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def read(self) -> dict[str, GradientSketch]:
        """Each seed's sketch against the host's, with one device read for all of them ({} before any arm)."""
        host = self._host
        if host is None or not self._buffers:
            return {}
        keys = list(self._buffers)
        rows = [torch.stack([host @ b.to(host.device), b.norm().to(host.device)]) for b in self._buffers.values()]
        values = torch.cat([host.norm().reshape(1), *rows]).tolist()
        host_norm = values[0]
        return {
            key: GradientSketch(dot=values[1 + 2 * k], host_norm=host_norm, seed_norm=values[2 + 2 * k])
            for k, key in enumerate(keys)
        }

    def _zeroed(self, buffer: Tensor | None, params: Sequence[Tensor]) -> Tensor:
        device = params[0].device if params else torch.device("cpu")
        if buffer is None or buffer.device != device:
            return torch.zeros(self._size, device=device)
        return buffer.zero_()

    def _hook_all(self, params: Sequence[Tensor], buffer: Tensor) -> None:
        for position, param in enumerate(params):
            if not param.requires_grad:
                continue
            cached = self._projections.get(id(param))
            projection = cached[1] if cached is not None and cached[0]() is param else None
            if projection is None or projection.row_signs.device != param.device:
                projection = _projection(position, param.numel(), self._size, self._seed, param.device)
                self._projections[id(param)] = (weakref.ref(param), projection)
            hook = self._hook(buffer, projection)
            self._handles.append(param.register_hook(hook))  # type: ignore[no-untyped-call]  # unannotated in torch

    def _hook(self, buffer: Tensor, projection: _Projection) -> Callable[[Tensor], None]:
        def fold(grad: Tensor) -> None:
            _fold(buffer, grad, projection)
            self._folds += 1

        return fold
