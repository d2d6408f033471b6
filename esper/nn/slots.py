"""SeedSlot: the point after a host module where a seed may live, and the forward arithmetic of every stage.

A slot sits after a host module (``esper.nn.wrap`` puts it there) and receives that module's output ``h``. While
DORMANT it returns ``h`` itself: one Python branch on a plain attribute, no tensor work, no device sync.

``SlotMode`` is local to esper.nn (which may not import schemas). Mapping to ``SeedLifecycleStage``:

| SeedLifecycleStage                                           | SlotMode   | slot output                         |
|--------------------------------------------------------------|------------|-------------------------------------|
| DORMANT, GERMINATED, CULLED, EMBARGOED, RESETTING, TERMINATED | DORMANT    | ``h`` (no seed attached)            |
| TRAINING                                                     | TRAINING   | ``h + (s - s.detach())``, value ``h`` |
| BLENDING                                                     | BLENDING   | ``blend(h, s, alpha)``, alpha ramps |
| SHADOWING, PROBATIONARY                                      | FULL       | ``blend(h, s, 1)``                  |
| FOSSILIZED                                                   | FOSSILIZED | ``blend(h, seed(h), 1)``            |

A fossilized CONVEX slot is the plain composition ``seed(h)`` (the same value as FULL, now with the detach gone).

Until FOSSILIZED the seed reads ``h.detach()``, so no seed gradient reaches host parameters; the host branch ``h``
stays attached. What trains a seed while alpha = 0 (TRAINING) is the straight-through gradient of the task loss:
``d loss / d out`` reaches ``s`` unchanged through ``s - s.detach()``, exactly as if the seed's output replaced the
host's, while the forward value and every host gradient stay those of the host alone. The seed never sees its own
effect on the loss, so the longer TRAINING lasts, the further its output drifts along that gradient; the blend then
pays for the drift (BENCHMARKS.md, growth section: the loss rises against the host when alpha ramps).

Control state (mode, seed id, alpha steps, blend spec, schedule) is plain CPU Python state and travels in the
module's extra state. The only tensor is the ``alpha`` buffer (0-dim, non-persistent: its value is restored from the
extra state), updated in place only at step boundaries. All methods run on whatever thread owns the model (Tolaria's
train lane) between steps; none blocks on the device.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, TypeVar, final

import torch
from torch import Tensor, nn

from esper.nn.blending import AlphaSchedule, BlendMode, BlendSpec, ScheduleMethod, blend, straight_through

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

__all__ = ["SeedSlot", "SlotMode", "SlotStateError", "rebuild_problem", "with_first"]

_Out = TypeVar("_Out", Tensor, tuple[Tensor, ...])


class SlotMode(enum.Enum):
    """What a slot does in the forward pass; see the module docstring for the mapping to SeedLifecycleStage."""

    DORMANT = "dormant"
    TRAINING = "training"
    BLENDING = "blending"
    FULL = "full"
    FOSSILIZED = "fossilized"


class SlotStateError(ValueError):
    """Raised when a slot operation does not fit the slot's current mode (attach to an occupied slot, detach from a
    dormant or fossilized one, a mode change that needs a seed, extra state that disagrees with the attached seed)."""


_DORMANT = SlotMode.DORMANT
_HOST_KEY = "_esper_host"


@final
class SeedSlot(nn.Module):
    """A seed slot after the host module named ``host_name``.

    The seed, once attached, is the child ``seed``, so its parameters are named ``<slot path>.seed.<name>`` in the
    model's ``named_parameters()`` and ``state_dict()``.

    Args:
        host_name: qualified name of the host module this slot follows ("" for the root); informational.

    Attributes:
        channel_dim: the activation's dim a CHANNEL blend weighs, its feature axis: 1 (the default) for flat and conv
            activations, 2 for a ``[batch, seq, features]`` sequence. Structural, like the host: whoever knows the
            slot's kind sets it after wrapping (Tolaria does, from the measured slot shape); not in the extra state.
    """

    alpha: Tensor
    channel_weights: Tensor

    def __init__(self, host_name: str = "") -> None:
        super().__init__()
        self.host_name = host_name
        self.channel_dim = 1
        self.mode = SlotMode.DORMANT
        self.seed_id: str | None = None
        self.alpha_steps = 0
        self.blend_spec = BlendSpec()
        self.schedule = AlphaSchedule()
        self._alpha_value = 0.0
        self.register_buffer("alpha", torch.zeros(()), persistent=False)
        self.register_buffer("channel_weights", torch.zeros(0), persistent=False)

    def bind_host(self, host: nn.Module, switch: Callable[[nn.Module, bool], None]) -> None:
        """Have ``switch(host, live)`` called whenever this slot goes from dormant to live or back (esper.nn.wrap).

        Both are kept in the instance dict, not as submodules: the host is this slot's parent, and a deep copy of the
        model maps the reference to the copied host.
        """
        self.__dict__[_HOST_KEY] = (host, switch)
        switch(host, self.mode is not _DORMANT)

    def unbind_host(self) -> None:
        self.__dict__.pop(_HOST_KEY, None)

    def _mode_changed(self) -> None:
        bound = self.__dict__.get(_HOST_KEY)
        if bound is not None:
            host, switch = bound
            switch(host, self.mode is not _DORMANT)

    def __call__(self, out: _Out) -> _Out:
        # Skips Module.__call__'s machinery for a dormant slot (it runs as a Sequential element after some hosts).
        if self.mode is _DORMANT:
            return out
        result: _Out = super().__call__(out)
        return result

    def forward(self, out: _Out) -> _Out:
        """Apply the stage arithmetic to the host output ``out``.

        Args:
            out: the host module's output ``h`` (any shape the seed maps to itself), or a tuple whose first element is
                ``h`` (Hugging Face blocks); the rest of the tuple passes through untouched, and the tuple keeps its
                type (a namedtuple stays one, see ``with_first``).

        Raises:
            ValueError: the seed's output differs from ``h`` in shape, is not a floating-point tensor when ``h`` is one
                (a floating-point output of another dtype, as autocast makes, is cast to ``h``'s), or the blend spec
                does not fit it.
        """
        if self.mode is _DORMANT:
            return out
        if isinstance(out, tuple):
            return with_first(out, self._run_seed(out[0]))
        return self._run_seed(out)

    def _run_seed(self, h: Tensor) -> Tensor:
        seed = self._modules["seed"]
        assert seed is not None  # a non-dormant slot always holds a seed (attach/detach keep this invariant)
        fossilized = self.mode is SlotMode.FOSSILIZED
        s = seed(h if fossilized else h.detach())
        if isinstance(s, Tensor) and s.dtype != h.dtype and s.is_floating_point() and h.is_floating_point():
            # Under autocast each op picks its own precision (layer_norm computes in fp32, a Linear in bf16), so a
            # seed's output dtype need not be the host's. The cast is differentiable and reads only the seed's output,
            # so the seed still gets its gradient (in its own dtype) and no seed gradient reaches the host; with no
            # mismatch (an fp32 run) nothing is cast.
            s = s.to(h.dtype)
        if not isinstance(s, Tensor) or s.shape != h.shape or s.dtype != h.dtype:
            got = f"{tuple(s.shape)} {s.dtype}" if isinstance(s, Tensor) else type(s).__name__
            raise ValueError(
                f"slot after {self.host_name!r}: seed output {got} must match host {tuple(h.shape)} {h.dtype}"
            )
        if self.mode is SlotMode.TRAINING:
            return straight_through(h, s)
        if fossilized and self.blend_spec.mode is BlendMode.CONVEX:
            return s
        alpha = self.alpha if self.alpha.dtype == h.dtype else self.alpha.to(h.dtype)
        weights = self.channel_weights if self.channel_weights.dtype == h.dtype else self.channel_weights.to(h.dtype)
        return blend(h, s, alpha, self.blend_spec, weights, self.channel_dim)

    # ---------------------------------------------------------------- control (step boundaries only)

    @property
    def seed_module(self) -> nn.Module | None:
        """The attached seed module, or None when dormant."""
        return self._modules.get("seed")

    @property
    def alpha_value(self) -> float:
        """Alpha as last set, from CPU state (no device read)."""
        return self._alpha_value

    def attach(
        self,
        seed: nn.Module,
        mode: SlotMode = SlotMode.TRAINING,
        *,
        seed_id: str | None = None,
        blend_spec: BlendSpec | None = None,
        schedule: AlphaSchedule | None = None,
    ) -> None:
        """Attach a prepared seed (already on the slot's device and dtype) and enter ``mode``.

        A pointer assignment plus a few in-place writes to the alpha buffer; no device sync.

        Args:
            seed: maps the host activation ``h`` to a tensor of the same shape and dtype (logits for CONFIDENCE); under
                autocast a floating-point output of another dtype is cast to ``h``'s.
            mode: any mode but DORMANT; usually TRAINING. Replaying a checkpoint may attach straight into a later one.
            seed_id: the seed's id (kept for checkpoints and error messages).
            blend_spec: how BLENDING/FULL/FOSSILIZED mix; default CONVEX.
            schedule: the alpha ramp for BLENDING; default the 20-step tanh ramp.

        Raises:
            SlotStateError: the slot already holds a seed, or ``mode`` is DORMANT.
            TypeError: ``seed`` is not an nn.Module.
        """
        if self.mode is not _DORMANT:
            raise SlotStateError(
                f"slot after {self.host_name!r} already holds seed {self.seed_id!r} ({self.mode.name})"
            )
        if mode is _DORMANT:
            raise SlotStateError("mode: attach needs a live mode (TRAINING, BLENDING, FULL or FOSSILIZED), got DORMANT")
        if not isinstance(seed, nn.Module):
            raise TypeError(f"seed: expected an nn.Module, got {type(seed).__name__}")
        self.seed_id = seed_id
        self.blend_spec = blend_spec if blend_spec is not None else BlendSpec()
        self.schedule = schedule if schedule is not None else AlphaSchedule()
        self.channel_weights = self._weights_tensor(self.blend_spec)
        self.add_module("seed", seed)
        self._enter(mode)

    def detach(self) -> nn.Module:
        """Remove the seed (cull) and return it; the slot becomes DORMANT with alpha 0.

        Raises:
            SlotStateError: the slot is dormant, or the seed is fossilized (it is host now and only leaves with it).
        """
        if self.mode is _DORMANT or self.mode is SlotMode.FOSSILIZED:
            raise SlotStateError(f"slot after {self.host_name!r}: cannot detach in mode {self.mode.name}")
        seed = self._modules.pop("seed")
        assert seed is not None
        self.mode = SlotMode.DORMANT
        self._mode_changed()
        self.seed_id = None
        self.alpha_steps = 0
        self.blend_spec = BlendSpec()
        self.schedule = AlphaSchedule()
        self.channel_weights = self.channel_weights.new_zeros(0)
        self._set_alpha(0.0)
        return seed

    def set_mode(self, mode: SlotMode) -> None:
        """Move an attached seed to ``mode`` at a step boundary.

        Entering BLENDING restarts the ramp (``alpha_steps = 0``, alpha = ``schedule.value(0)``); entering FULL or
        FOSSILIZED sets alpha to exactly 1; entering TRAINING sets alpha to 0. Which transitions are legal is the
        lifecycle's business (actors/kasmina); the slot only refuses what it cannot do.

        Raises:
            SlotStateError: no seed attached, ``mode`` is DORMANT (use ``detach``), or the seed is already fossilized.
        """
        if self.mode is _DORMANT:
            raise SlotStateError(f"slot after {self.host_name!r} holds no seed; attach one first")
        if mode is _DORMANT:
            raise SlotStateError("mode: use detach() to make a slot dormant")
        if self.mode is SlotMode.FOSSILIZED and mode is not SlotMode.FOSSILIZED:
            raise SlotStateError(f"slot after {self.host_name!r}: a fossilized seed cannot return to {mode.name}")
        self._enter(mode)

    def advance_alpha(self) -> float:
        """Advance the blending ramp by one optimizer step and return the new alpha (call once per step).

        Only BLENDING advances; in any other mode this is a no-op that returns the current alpha. The buffer is
        written in place (``fill_``), so a compiled graph keeps reading the same tensor.
        """
        if self.mode is not SlotMode.BLENDING:
            return self.alpha_value
        self.alpha_steps += 1
        self._set_alpha(self.schedule.value(self.alpha_steps))
        return self._alpha_value

    def _enter(self, mode: SlotMode) -> None:
        self.mode = mode
        self._mode_changed()
        if mode is SlotMode.TRAINING:
            self.alpha_steps = 0
            self._set_alpha(0.0)
        elif mode is SlotMode.BLENDING:
            self.alpha_steps = 0
            self._set_alpha(self.schedule.value(0))
        else:
            self._set_alpha(1.0)

    def _set_alpha(self, value: float) -> None:
        self._alpha_value = min(1.0, max(0.0, value))
        with torch.no_grad():
            self.alpha.fill_(self._alpha_value)

    def _weights_tensor(self, spec: BlendSpec) -> Tensor:
        if spec.mode is not BlendMode.CHANNEL:
            return self.channel_weights.new_zeros(0)
        return torch.tensor(spec.channel_weights, dtype=self.alpha.dtype, device=self.alpha.device)

    # ---------------------------------------------------------------- checkpoints

    def get_extra_state(self) -> dict[str, object]:
        """Control state for ``state_dict``: plain Python values only."""
        spec = self.blend_spec
        sched = self.schedule
        return {
            "mode": self.mode.value,
            "seed_id": self.seed_id,
            "alpha": self.alpha_value,
            "alpha_steps": self.alpha_steps,
            "blend": {
                "mode": spec.mode.value,
                "channel_weights": list(spec.channel_weights),
                "confidence_k": spec.confidence_k,
                "confidence_tau": spec.confidence_tau,
                "alpha_lo": spec.alpha_lo,
                "alpha_hi": spec.alpha_hi,
            },
            "schedule": {
                "method": sched.method.value,
                "total_steps": sched.total_steps,
                "temperature": sched.temperature,
                "start": sched.start,
                "end": sched.end,
            },
        }

    def set_extra_state(self, state: object) -> None:
        """Restore control state written by ``get_extra_state``.

        The seed itself is not in the extra state: replay the graft log (attach the seed) before loading.

        Raises:
            SlotStateError: the checkpoint's mode needs a seed and none is attached, or vice versa.
            ValueError: the state is malformed.
        """
        if not isinstance(state, dict):
            raise ValueError(f"slot after {self.host_name!r}: extra state must be a dict, got {type(state).__name__}")
        try:
            mode = SlotMode(state["mode"])
            blend_d = _mapping(state, "blend")
            sched_d = _mapping(state, "schedule")
            weights = blend_d["channel_weights"]
            if not isinstance(weights, list | tuple):
                raise TypeError(f"channel_weights is {type(weights).__name__}")
            spec = BlendSpec(
                mode=BlendMode(blend_d["mode"]),
                channel_weights=tuple(_as_float(v) for v in weights),
                confidence_k=_as_float(blend_d["confidence_k"]),
                confidence_tau=_as_float(blend_d["confidence_tau"]),
                alpha_lo=_as_float(blend_d["alpha_lo"]),
                alpha_hi=_as_float(blend_d["alpha_hi"]),
            )
            schedule = AlphaSchedule(
                method=ScheduleMethod(sched_d["method"]),
                total_steps=_as_int(sched_d["total_steps"]),
                temperature=_as_float(sched_d["temperature"]),
                start=_as_float(sched_d["start"]),
                end=_as_float(sched_d["end"]),
            )
            alpha = _as_float(state["alpha"])
            alpha_steps = _as_int(state["alpha_steps"])
            seed_id = state["seed_id"]
        except (KeyError, TypeError) as err:
            raise ValueError(f"slot after {self.host_name!r}: malformed extra state ({err!r})") from err
        has_seed = "seed" in self._modules
        if (mode is _DORMANT) == has_seed:
            raise SlotStateError(
                f"slot after {self.host_name!r}: checkpoint mode {mode.name} but a seed is "
                f"{'attached' if has_seed else 'not attached'}; replay the graft log before loading"
            )
        self.mode = mode
        self._mode_changed()
        self.seed_id = seed_id if isinstance(seed_id, str) else None
        self.blend_spec = spec
        self.schedule = schedule
        self.alpha_steps = alpha_steps
        self.channel_weights = self._weights_tensor(spec)
        self._set_alpha(alpha)

    def extra_repr(self) -> str:
        return f"host={self.host_name!r}, mode={self.mode.name}, seed_id={self.seed_id!r}, alpha={self.alpha_value:.4f}"


def with_first(out: tuple[Tensor, ...], first: Tensor) -> tuple[Tensor, ...]:
    """``out`` with its first element replaced by ``first``, rebuilt as ``out``'s own type.

    A plain tuple, a namedtuple (through ``_make``) and a tuple subclass whose constructor takes one iterable (the
    ``torch.return_types`` structs) are rebuilt; ``rebuild_problem`` tells, before a run, whether this works for an
    output.
    """
    kind = type(out)
    items = (first, *out[1:])
    if kind is tuple:
        return items
    make = getattr(kind, "_make", None)
    rebuilt: tuple[Tensor, ...] = make(items) if callable(make) else kind(items)
    return rebuilt


def rebuild_problem(out: tuple[object, ...]) -> str | None:
    """Why a slot could not hand back a host's tuple output ``out`` with a seed's output in its place (one line), or
    None when ``with_first`` rebuilds it: same type, same elements, same instance attributes."""
    kind = type(out)
    if not out:
        return "it returns an empty tuple"
    if kind is tuple:
        return None
    cannot = (
        f"it returns a {kind.__name__}, which a live slot cannot rebuild with the seed's output as its first element"
    )
    try:
        rebuilt: tuple[object, ...] = with_first(out, out[0])  # type: ignore[arg-type]  # only identity matters here
    except Exception as err:  # noqa: BLE001  # whatever a user's constructor raises becomes the one-line reason
        return f"{cannot} ({type(err).__name__}: {err})"
    same = type(rebuilt) is kind and len(rebuilt) == len(out) and all(a is b for a, b in zip(rebuilt, out, strict=True))
    if not same or getattr(rebuilt, "__dict__", None) != getattr(out, "__dict__", None):
        return f"{cannot} (its constructor, given the elements, returns a different {type(rebuilt).__name__})"
    return None


def _mapping(state: Mapping[object, object], key: str) -> Mapping[object, object]:
    value = state[key]
    if not isinstance(value, dict):
        raise TypeError(f"{key} is {type(value).__name__}, expected dict")
    return value


def _as_float(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"expected a number, got {value!r}")
    return float(value)


def _as_int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected an int, got {value!r}")
    return value
