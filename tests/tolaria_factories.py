"""Host-model factories that tests reference from config as ``tests.tolaria_factories:<name>``."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from esper.nn.hosts import CNN1dHost
from esper.nn.wrap import wrap


def _mlp(features: int = 40, classes: int = 10, slot_targets: object = ("1",)) -> nn.Module:
    """Flatten, Linear(features, 16), ReLU, Linear(16, classes); ``slot_targets`` set as given (None: not set)."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(features, 16), nn.ReLU(), nn.Linear(16, classes))
    if slot_targets is not None:
        model.slot_targets = slot_targets  # type: ignore[assignment]  # nn.Module.__setattr__ takes any value
    return model


def tiny_mlp() -> nn.Module:
    """A user model for MNIST-1D's native ``[batch, 1, 40]`` samples; slots go after ``body``."""
    return _mlp()


_ONE_MODEL = _mlp()


def singleton_mlp() -> nn.Module:
    """A factory that hands out one model object on every call."""
    return _ONE_MODEL


def once_only_mlp() -> nn.Module:
    """A factory that works on its first call only."""
    if getattr(once_only_mlp, "called", False):
        raise RuntimeError("only one model per process")
    once_only_mlp.called = True  # type: ignore[attr-defined]
    return _mlp()


def not_a_module() -> object:
    """A factory that returns the wrong kind of object."""
    return {"layers": 3}


def broken() -> nn.Module:
    """A factory that fails."""
    raise RuntimeError("out of widgets")


def slotless_mlp() -> nn.Module:
    """A user model that names no slot targets: the run needs kasmina.slot_targets."""
    return _mlp(slot_targets=None)


def wrong_input_mlp() -> nn.Module:
    """A user model built for 7 features, given MNIST-1D's 40."""
    return _mlp(features=7)


def three_class_mlp() -> nn.Module:
    """A user model scoring 3 classes, given MNIST-1D's 10."""
    return _mlp(classes=3)


def frozen_mlp() -> nn.Module:
    """A user model with nothing to train: every parameter has requires_grad False."""
    return _mlp().requires_grad_(False)


def empty_slot_name_mlp() -> nn.Module:
    """A user model whose slot_targets names the empty string."""
    return _mlp(slot_targets=("",))


def set_slot_targets_mlp() -> nn.Module:
    """slot_targets as a set: it has no order, so it cannot name the slots reproducibly."""
    return _mlp(slot_targets={"1", "3"})


def string_slot_targets_mlp() -> nn.Module:
    """A user model whose slot_targets is one string instead of a list of names."""
    return _mlp(slot_targets="1")


def exiting() -> nn.Module:
    """A user factory that calls sys.exit()."""
    raise SystemExit(3)


class _Odd(nn.Module):
    """Linear(40, 16) -> ``inner`` -> Linear(16, 10), with a ``spare`` layer the forward never calls; ``slot_targets``
    as given."""

    def __init__(self, inner: nn.Module, slot_targets: tuple[str, ...]) -> None:
        super().__init__()
        self.a = nn.Linear(40, 16)
        self.inner = inner
        self.spare = nn.Linear(16, 16)
        self.h = nn.Linear(16, 10)
        self.slot_targets = slot_targets

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mid = self.inner(torch.relu(self.a(x.flatten(1))))
        if isinstance(mid, dict):
            mid = mid["h"]
        return self.h(mid.reshape(x.shape[0], 16).float())  # type: ignore[no-any-return]


class _AsDict(nn.Module):
    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"h": x}


class _Flattened(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(-1)


class _Double(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.double()


def uncalled_slot_model() -> nn.Module:
    """A slot target the forward never calls."""
    return _Odd(nn.Identity(), ("spare",))


class _TrainingOnly(_Odd):
    """_Odd whose forward calls ``spare`` only in training mode (an auxiliary branch)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mid = torch.relu(self.a(x.flatten(1)))
        if self.training:
            mid = mid + 0.1 * self.spare(mid)
        return self.h(mid)  # type: ignore[no-any-return]


def training_only_slot_model() -> nn.Module:
    """A slot target the forward calls only when ``self.training``."""
    return _TrainingOnly(nn.Identity(), ("spare",))


def dict_slot_model() -> nn.Module:
    """A slot target returning a dict."""
    return _Odd(_AsDict(), ("inner",))


def rank1_slot_model() -> nn.Module:
    """A slot target returning a rank-1 tensor."""
    return _Odd(_Flattened(), ("inner",))


def float64_slot_model() -> nn.Module:
    """A slot target returning float64 activations."""
    return _Odd(_Double(), ("inner",))


class _SharedActivation(nn.Module):
    """Linear(40, 16) -> ``act`` -> Linear(16, ``width``) -> ``act`` -> Linear(``width``, 10): one ReLU module
    called twice, after layers ``width`` apart or not."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(40, 16)
        self.fc2 = nn.Linear(16, width)
        self.act = nn.ReLU()
        self.out = nn.Linear(width, 10)
        self.slot_targets = ("act",)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.out(self.act(self.fc2(self.act(self.fc1(x.flatten(1))))))
        return out


def shared_activation_model() -> nn.Module:
    """A slot target the forward calls after a 16-wide and an 8-wide layer: its outputs have two shapes."""
    return _SharedActivation(8)


def twice_called_slot_model() -> nn.Module:
    """A slot target the forward calls twice, both times 16 wide: one shape, a slot like any other."""
    return _SharedActivation(16)


class Hidden(NamedTuple):
    hidden: torch.Tensor
    aux: torch.Tensor


class _Pair(tuple[torch.Tensor, ...]):
    """A tuple subclass whose constructor takes its elements one by one, so the slot cannot rebuild it."""

    def __new__(cls, hidden: torch.Tensor, aux: torch.Tensor) -> _Pair:
        return super().__new__(cls, (hidden, aux))


class _Encoder(nn.Module):
    def __init__(self, pair: bool) -> None:
        super().__init__()
        self.lin = nn.Linear(40, 16)
        self.pair = pair

    def forward(self, x: torch.Tensor) -> Hidden | _Pair:
        h = torch.relu(self.lin(x.flatten(1)))
        return _Pair(h, h.mean()) if self.pair else Hidden(h, h.mean())


class _Fielded(nn.Module):
    """An ``enc`` slot target returning a Hidden namedtuple (or a _Pair), and a head that reads it by field."""

    def __init__(self, pair: bool) -> None:
        super().__init__()
        self.enc = _Encoder(pair)
        self.head = nn.Linear(16, 10)
        self.slot_targets = ("enc",)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.enc(x)
        return self.head(out[0] if isinstance(out, _Pair) else out.hidden)  # type: ignore[no-any-return]


def namedtuple_slot_model() -> nn.Module:
    """A slot target returning a namedtuple whose field the model reads."""
    return _Fielded(pair=False)


def unrebuildable_tuple_slot_model() -> nn.Module:
    """A slot target returning a tuple subclass a slot cannot rebuild."""
    return _Fielded(pair=True)


class _SharedBlock(nn.Module):
    """Linear(40, 16) -> ``mid`` twice (also registered as ``again``) -> Linear(16, 10); the slot follows ``mid``."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(40, 16)
        self.mid = nn.Linear(16, 16)
        self.again = self.mid
        self.h = nn.Linear(16, 10)
        self.slot_targets = ("mid",)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.h(self.again(torch.relu(self.mid(self.a(x.flatten(1))))))  # type: ignore[no-any-return]


def shared_block_model() -> nn.Module:
    """A slot target registered under two names, so state_dict saves its slot twice."""
    return _SharedBlock()


class _Sequence(nn.Module):
    """MNIST-1D read as 40 steps of one feature: [batch, 40, 16] activations in ``mid``."""

    def __init__(self, slot_kinds: object) -> None:
        super().__init__()
        self.inp = nn.Linear(1, 16)
        self.mid = nn.Linear(16, 16)
        self.head = nn.Linear(16, 10)
        self.slot_targets = ("mid",)
        self.slot_kinds = slot_kinds

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.mid(torch.relu(self.inp(x.reshape(x.shape[0], -1, 1)))))
        return self.head(h.mean(1))  # type: ignore[no-any-return]


def sequence_model() -> nn.Module:
    """A slot whose [batch, seq, features] activations the model declares as a sequence."""
    return _Sequence({"mid": "sequence"})


def undeclared_sequence_model() -> nn.Module:
    """The same model without slot_kinds: its [batch, 40, 16] slot reads as conv1d with 40 channels."""
    return _Sequence(None)


def misdeclared_sequence_model() -> nn.Module:
    """slot_kinds naming a module that is not a slot target."""
    return _Sequence({"head": "sequence"})


class _Conv2dNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(8 * 40, 10)
        self.slot_targets = ("body.1",)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x.reshape(x.shape[0], 1, 5, 8)).flatten(1))  # type: ignore[no-any-return]


def conv2d_net() -> nn.Module:
    """2-D convolutions over MNIST-1D's samples seen as 5 x 8 images: Tolaria makes them channels_last."""
    return _Conv2dNet()


class _ImageNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(2, 8, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(8 * 4 * 5, 10)
        self.slot_targets = ("body.1",)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x).flatten(1))  # type: ignore[no-any-return]


def image_net() -> nn.Module:
    """A 2-D convolution over images of 2 channels, 4 x 5 (MNIST-1D's 40 features reshaped): channels_last input."""
    return _ImageNet()


class _Conv2dViewNet(_Conv2dNet):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.body(x.reshape(x.shape[0], 1, 5, 8))
        return self.head(h.view(h.size(0), -1))  # type: ignore[no-any-return]


def conv2d_view_net() -> nn.Module:
    """conv2d_net flattening with ``.view``, the usual PyTorch idiom: fails on a channels_last activation."""
    return _Conv2dViewNet()


class _TrainTimeOutput(nn.Module):
    """Scores in eval mode; in training mode returns what ``kind`` names instead."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(40, 16), nn.ReLU())
        self.head = nn.Linear(16, 10)
        self.slot_targets = ("body.2",)
        self.kind = kind

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        scores: torch.Tensor = self.head(self.body(x))
        if not self.training:
            return scores
        if self.kind == "aux_tuple":
            return scores, scores  # an auxiliary head, as torchvision's Inception returns
        return scores.detach()


def aux_tuple_in_training() -> nn.Module:
    return _TrainTimeOutput("aux_tuple")


def detached_output() -> nn.Module:
    return _TrainTimeOutput("detached")


def flat_batchnorm() -> nn.Module:
    """BatchNorm1d over features: a training batch of one sample is an error."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(40, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 10))
    model.slot_targets = ("3",)  # type: ignore[assignment]  # nn.Module.__setattr__ takes any value
    return model


RESIZABLE_WIDTH = 16
RESIZABLE_SLOTS = ("1",)
"""The hidden width and slot targets ``resizable_mlp`` builds with: a test changes them as a user edits a model."""


def resizable_mlp() -> nn.Module:
    model = nn.Sequential(nn.Flatten(), nn.Linear(40, RESIZABLE_WIDTH), nn.ReLU(), nn.Linear(RESIZABLE_WIDTH, 10))
    model.slot_targets = RESIZABLE_SLOTS  # type: ignore[assignment]  # nn.Module.__setattr__ takes any value
    return model


class _NanInEval(nn.Module):
    """tiny_mlp whose outputs are NaN in eval mode only (training is clean)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = _mlp()
        self.slot_targets = ("body.1",)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.body(x)
        return out if self.training else out * float("nan")


def nan_in_eval() -> nn.Module:
    """A user model that validates to NaN: its training steps are finite."""
    return _NanInEval()


class _Escaping(nn.Module):
    """tiny_mlp whose forward raises ``escape`` (in training mode only when ``training_only``)."""

    def __init__(self, escape: type[BaseException], *, training_only: bool) -> None:
        super().__init__()
        self.body = _mlp()
        self.slot_targets = ("body.1",)
        self._escape = escape
        self._training_only = training_only

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training or not self._training_only:
            raise self._escape("boom from user forward")
        out: torch.Tensor = self.body(x)
        return out


def interrupt_in_training() -> nn.Module:
    """Raises KeyboardInterrupt in a training-mode forward (user code, not a Ctrl-C)."""
    return _Escaping(KeyboardInterrupt, training_only=True)


def exit_in_forward() -> nn.Module:
    """Raises SystemExit in every forward."""
    return _Escaping(SystemExit, training_only=False)


class _FailsInTraining(nn.Module):
    """tiny_mlp whose training-mode forwards raise from the third on (the start's check makes the first)."""

    calls = 0

    def __init__(self) -> None:
        super().__init__()
        self.body = _mlp()
        self.slot_targets = ("body.1",)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            type(self).calls += 1
            if type(self).calls > 2:
                raise RuntimeError("user forward broke")
        out: torch.Tensor = self.body(x)
        return out


def fails_in_training() -> nn.Module:
    """A model that passes the start's checks and then fails every training step (a restart storm, a failed run)."""
    return _FailsInTraining()


class NanForThreeSteps(nn.Module):
    """The default host whose training forward gives NaN on three calls in a row from call ``first``, counted across
    every instance (a rollback rebuilds the model), then never again. Set ``first`` and reset ``calls`` first."""

    calls = 0
    first = 70

    def __init__(self) -> None:
        super().__init__()
        self.host = CNN1dHost()
        self.slot_targets = tuple(f"host.{name}" for name in self.host.slot_targets)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y: torch.Tensor = self.host(x)
        if self.training and torch.is_grad_enabled():
            NanForThreeSteps.calls += 1
            if NanForThreeSteps.first <= NanForThreeSteps.calls < NanForThreeSteps.first + 3:
                return y * float("nan")
        return y


def nan_for_three_steps() -> nn.Module:
    return NanForThreeSteps()


def interrupting_factory() -> nn.Module:
    """A user factory that raises KeyboardInterrupt (user code, not a Ctrl-C)."""
    raise KeyboardInterrupt


def lazy_mlp() -> nn.Module:
    """tiny_mlp with a LazyLinear first layer and a lazy BatchNorm (parameters and buffers shaped by the first
    forward)."""
    model = nn.Sequential(nn.Flatten(), nn.LazyLinear(16), nn.LazyBatchNorm1d(), nn.ReLU(), nn.Linear(16, 10))
    model.slot_targets = ("3",)  # type: ignore[assignment]  # nn.Module.__setattr__ takes any value
    return model


class _LazySpare(nn.Module):
    """tiny_mlp with a LazyLinear the forward never calls."""

    def __init__(self) -> None:
        super().__init__()
        self.body = _mlp()
        self.spare = nn.LazyLinear(4)
        self.slot_targets = ("body.1",)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.body(x)
        return out


def lazy_never_called() -> nn.Module:
    """A lazy module no forward initialises."""
    return _LazySpare()


def lazy_wrong_input() -> nn.Module:
    """A lazy model whose forward cannot take MNIST-1D's samples (it does not flatten [batch, 1, 40] into features
    before a BatchNorm1d sized for 16)."""
    model = nn.Sequential(nn.LazyLinear(16), nn.BatchNorm1d(16), nn.Linear(16, 10))
    model.slot_targets = ("0",)  # type: ignore[assignment]  # nn.Module.__setattr__ takes any value
    return model


class _MixedKinds(nn.Module):
    """A conv1d block then a Linear block: one slot of kind conv1d (``features.1``, ``[batch, 8, 40]``) and two of
    kind flat (``hidden.1``, ``[batch, 32]``, and ``wide.1``, ``[batch, 24]``)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv1d(1, 8, 5, padding=2), nn.ReLU())
        self.hidden = nn.Sequential(nn.Linear(8 * 40, 32), nn.ReLU())
        self.wide = nn.Sequential(nn.Linear(32, 24), nn.ReLU())
        self.out = nn.Linear(24, 10)
        self.slot_targets = ("features.1", "hidden.1", "wide.1")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.wide(self.hidden(self.features(x).flatten(1))))  # type: ignore[no-any-return]


def mixed_kinds() -> nn.Module:
    """A host whose slots are of two kinds, conv1d and flat (of two widths)."""
    return _MixedKinds()


class FailsAtSixthStep(nn.Module):
    """tiny_mlp whose sixth training step raises, in every instance (a restart builds the model anew and replays to
    it): a bug in the user's own forward that no restart gets past, until a test sets ``broken`` False."""

    instances = 0
    broken = True

    def __init__(self) -> None:
        super().__init__()
        type(self).instances += 1
        self.body = _mlp()
        self.slot_targets = ("body.1",)
        self.steps = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and x.shape[0] > 2:  # not the start's two-sample check
            self.steps += 1
            if self.steps == 6 and type(self).broken:
                raise RuntimeError("the user's model broke on its sixth step")
        out: torch.Tensor = self.body(x)
        return out


def fails_at_sixth_step() -> nn.Module:
    return FailsAtSixthStep()


class ReshapesLater(nn.Module):
    """The default MLP whose output turns to ``[batch, width]`` from its third training step (``eval``: its third
    eval-mode forward of more than two samples instead); the start's two-sample check sees the right shape."""

    def __init__(self, width: int, *, in_eval: bool) -> None:
        super().__init__()
        self.body = _mlp()
        self.slot_targets = ("body.1",)
        self.width = width
        self.in_eval = in_eval
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.body(x)
        if x.shape[0] > 2 and self.training != self.in_eval:
            self.calls += 1
            if self.calls >= 3:
                return out[:, : self.width] if self.width <= 10 else torch.cat([out, out], dim=1)[:, : self.width]
        return out


def wide_from_third_step() -> nn.Module:
    return ReshapesLater(20, in_eval=False)


def narrow_from_third_step() -> nn.Module:
    return ReshapesLater(5, in_eval=False)


def narrow_in_eval() -> nn.Module:
    return ReshapesLater(5, in_eval=True)


def one_layer_model() -> nn.Module:
    """One Linear, its slot after it: the only layer the state packets report a gradient norm for."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(40, 10))
    model.slot_targets = ("1",)  # type: ignore[assignment]  # nn.Module.__setattr__ takes any value
    return model


def relu_slot_mlp() -> nn.Module:
    """``tiny_mlp`` with a second slot after its ReLU, a module with no parameter: no gradient norm, no strain."""
    return _mlp(slot_targets=("1", "2"))


def ballast_mlp() -> nn.Module:
    """``tiny_mlp`` with a 40 MB buffer nothing reads: a capture as large as a big model's at a tiny model's step cost
    (above glibc's largest mmap threshold, so each fresh capture buffer is new, untouched memory)."""
    model = _mlp()
    model.register_buffer("ballast", torch.zeros(10_000_000))
    return model


def prewrapped_own_mlp() -> nn.Module:
    """``tiny_mlp`` for digits' 64 features (its own ``slot_targets`` naming "1") returned already wrapped at "1" and
    "3" by its factory."""
    return wrap(_mlp(features=64), ["1", "3"])
