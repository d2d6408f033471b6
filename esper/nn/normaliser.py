"""A persisted EWMA normaliser for the policy graph's numeric features, and the deterministic category registries."""

from __future__ import annotations

import bisect
import hashlib
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, final

import torch

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence

__all__ = ["DEFAULT_ALPHA", "CategoryRegistry", "EwmaNormaliser"]

DEFAULT_ALPHA = 0.1
"""Weight of the newest observation in the running mean and variance (REFERENCE.md section 5)."""

_CLIP = 5.0
_ALPHA_KEY = "__alpha__"


@dataclass(slots=True)
class _Moments:
    mean: float
    var: float
    count: int


@final
class EwmaNormaliser:
    """Per-feature exponentially weighted mean and variance; ``normalise`` returns a clipped z-score.

    The update after observing ``x`` is ``d = x - mean; mean += alpha * d; var = (1 - alpha) * (var + alpha * d * d)``.
    The first observation of a key sets its mean and leaves its variance 0, so it normalises to 0. Z-scores are divided
    by ``sqrt(var + eps)`` and clipped to [-5, 5]. Not thread-safe: one owner (Tamiyo's policy lane) updates it.

    The state is a dict of float64 tensors (one ``[mean, var, count]`` per key, plus the alpha), so it can go into a
    safetensors checkpoint beside the policy weights.
    """

    def __init__(self, alpha: float = DEFAULT_ALPHA, *, eps: float = 1e-6) -> None:
        """Create an empty normaliser.

        Raises:
            ValueError: alpha not in (0, 1], or eps not positive.
        """
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"alpha must be in (0, 1], got {alpha}")
        if not eps > 0.0:
            raise ValueError(f"eps must be positive, got {eps}")
        self._alpha = alpha
        self._eps = eps
        self._moments: dict[str, _Moments] = {}

    @property
    def alpha(self) -> float:
        return self._alpha

    def keys(self) -> tuple[str, ...]:
        """The feature names seen so far, sorted."""
        return tuple(sorted(self._moments))

    def moments(self, key: str) -> tuple[float, float, int] | None:
        """``(mean, var, count)`` of a key, or None if it was never observed."""
        m = self._moments.get(key)
        return None if m is None else (m.mean, m.var, m.count)

    def update(self, key: str, value: float) -> None:
        """Fold one finite observation into the key's moments; non-finite values are ignored (treated as missing)."""
        if not math.isfinite(value):
            return
        m = self._moments.get(key)
        if m is None:
            self._moments[key] = _Moments(mean=value, var=0.0, count=1)
            return
        d = value - m.mean
        m.mean += self._alpha * d
        m.var = (1.0 - self._alpha) * (m.var + self._alpha * d * d)
        m.count += 1

    def update_many(self, key: str, values: Sequence[float]) -> None:
        """Fold one graph's worth of observations of a key as ONE step: the batch mean moves the mean as ``update``
        would, and the batch's own (population) variance is mixed into the variance with weight alpha. Non-finite
        values are ignored; a single value is exactly ``update``.
        """
        finite = [v for v in values if math.isfinite(v)]
        if not finite:
            return
        n = len(finite)
        mean_b = math.fsum(finite) / n
        var_b = math.fsum((v - mean_b) ** 2 for v in finite) / n
        m = self._moments.get(key)
        if m is None:
            self._moments[key] = _Moments(mean=mean_b, var=var_b, count=1)
            return
        d = mean_b - m.mean
        m.mean += self._alpha * d
        m.var = (1.0 - self._alpha) * (m.var + self._alpha * d * d) + self._alpha * var_b
        m.count += 1

    def normalise(self, key: str, value: float) -> float:
        """The clipped z-score of ``value`` under the key's moments (0 for an unseen key or a non-finite value)."""
        m = self._moments.get(key)
        if m is None or not math.isfinite(value):
            return 0.0
        z = (value - m.mean) / math.sqrt(m.var + self._eps)
        return max(-_CLIP, min(_CLIP, z))

    def observe(self, key: str, value: float, *, update: bool = True) -> float:
        """Update with ``value`` (when ``update``) and then normalise it: the graph builder's one call per number."""
        if update:
            self.update(key, value)
        return self.normalise(key, value)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The state as float64 CPU tensors: ``{"__alpha__": [alpha, eps], key: [mean, var, count], ...}``."""
        out = {_ALPHA_KEY: torch.tensor([self._alpha, self._eps], dtype=torch.float64)}
        for key in sorted(self._moments):
            m = self._moments[key]
            out[key] = torch.tensor([m.mean, m.var, float(m.count)], dtype=torch.float64)
        return out

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Replace the state with one from ``state_dict``; on an error nothing changes.

        Raises:
            ValueError: the alpha entry is missing, or an entry does not hold exactly 3 numbers.
        """
        head = state.get(_ALPHA_KEY)
        if head is None or head.numel() != 2:
            raise ValueError(f"normaliser state needs a 2-number {_ALPHA_KEY!r} entry")
        alpha, eps = (float(v) for v in head.tolist())
        moments: dict[str, _Moments] = {}
        for key, tensor in state.items():
            if key == _ALPHA_KEY:
                continue
            if tensor.numel() != 3:
                raise ValueError(f"normaliser state entry {key!r} must hold [mean, var, count], got {tensor.numel()}")
            mean, var, count = (float(v) for v in tensor.tolist())
            moments[key] = _Moments(mean=mean, var=var, count=int(count))
        self._alpha, self._eps, self._moments = alpha, eps, moments


@final
@dataclass(frozen=True)
class CategoryRegistry:
    """A deterministic name -> code table: names are sorted and deduplicated, so the same set always gives the same
    codes and the same SHA-256 digest (checkpointed with the policy and compared on load).

    Code 0 is reserved for unknown names; known names get ``(index + 1) / (len + 1)`` in (0, 1).
    """

    kind: str
    names: tuple[str, ...] = field(default=())

    @classmethod
    def of(cls, kind: str, names: Iterable[str]) -> CategoryRegistry:
        """Build a registry of ``kind`` from any iterable of names (order and duplicates do not matter)."""
        return cls(kind=kind, names=tuple(sorted(set(names))))

    def __post_init__(self) -> None:
        if list(self.names) != sorted(set(self.names)):
            raise ValueError(
                f"registry {self.kind!r} names must be sorted and unique; build it with CategoryRegistry.of"
            )

    def index(self, name: str | None) -> int | None:
        """The 0-based index of a known name, else None."""
        if name is None:
            return None
        i = bisect.bisect_left(self.names, name)
        return i if i < len(self.names) and self.names[i] == name else None

    def code(self, name: str | None) -> float:
        """The feature value of a name: ``(index + 1) / (len + 1)``, or 0.0 for None or an unknown name."""
        i = self.index(name)
        return 0.0 if i is None else (i + 1) / (len(self.names) + 1)

    def digest(self) -> str:
        """SHA-256 (hex) over the kind and the sorted names, one per line."""
        h = hashlib.sha256()
        h.update(self.kind.encode())
        for name in self.names:
            h.update(b"\n")
            h.update(name.encode())
        return h.hexdigest()
