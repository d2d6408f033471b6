"""Host-model factories that tests reference from config as ``tests.tolaria_factories:<name>``."""

from __future__ import annotations

from torch import nn


def tiny_mlp() -> nn.Module:
    """A user model for MNIST-1D's native ``[batch, 1, 40]`` samples; slots go after ``body``."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(40, 16), nn.ReLU(), nn.Linear(16, 10))
    model.slot_targets = ("1",)  # type: ignore[assignment]  # nn.Module.__setattr__ takes any value
    return model


def not_a_module() -> object:
    """A factory that returns the wrong kind of object."""
    return {"layers": 3}


def broken() -> nn.Module:
    """A factory that fails."""
    raise RuntimeError("out of widgets")


def slotless_mlp() -> nn.Module:
    """A user model that names no slot targets: the run needs kasmina.slot_targets."""
    return nn.Sequential(nn.Flatten(), nn.Linear(40, 16), nn.ReLU(), nn.Linear(16, 10))


def wrong_input_mlp() -> nn.Module:
    """A user model built for 7 features, given MNIST-1D's 40."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(7, 16), nn.ReLU(), nn.Linear(16, 10))
    model.slot_targets = ("1",)  # type: ignore[assignment]  # nn.Module.__setattr__ takes any value
    return model


def three_class_mlp() -> nn.Module:
    """A user model scoring 3 classes, given MNIST-1D's 10."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(40, 16), nn.ReLU(), nn.Linear(16, 3))
    model.slot_targets = ("1",)  # type: ignore[assignment]  # nn.Module.__setattr__ takes any value
    return model


def frozen_mlp() -> nn.Module:
    """A user model with nothing to train: every parameter has requires_grad False."""
    model = three_class_mlp()
    model.requires_grad_(False)
    return model


def empty_slot_name_mlp() -> nn.Module:
    """A user model whose slot_targets names the empty string."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(40, 16), nn.ReLU(), nn.Linear(16, 10))
    model.slot_targets = ("",)  # type: ignore[assignment]  # nn.Module.__setattr__ takes any value
    return model


def string_slot_targets_mlp() -> nn.Module:
    """A user model whose slot_targets is one string instead of a list of names."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(40, 16), nn.ReLU(), nn.Linear(16, 10))
    model.slot_targets = "1"  # type: ignore[assignment]  # nn.Module.__setattr__ takes any value
    return model


def exiting() -> nn.Module:
    """A user factory that calls sys.exit()."""
    raise SystemExit(3)
