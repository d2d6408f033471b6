"""Host-model factories of each signature form, referenced as ``tests.host_factory_forms:<name>``.

Each records the keyword arguments it was called with in ``CALLS``."""

from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING

from torch import nn

if TYPE_CHECKING:
    from collections.abc import Callable

CALLS: dict[str, dict[str, object]] = {}


def _mlp(input_shape: tuple[int, ...] = (1, 8, 8), num_classes: int = 10) -> nn.Module:
    model = nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), 16), nn.ReLU(), nn.Linear(16, num_classes))
    model.slot_targets = ["1"]  # type: ignore[assignment]  # nn.Module.__setattr__ takes any value
    return model


def no_arguments() -> nn.Module:
    CALLS["no_arguments"] = {}
    return _mlp()


def shape_and_classes(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    CALLS["shape_and_classes"] = {"input_shape": input_shape, "num_classes": num_classes}
    return _mlp(input_shape, num_classes)


def classes_only(num_classes: int, width: int = 16) -> nn.Module:
    CALLS["classes_only"] = {"num_classes": num_classes, "width": width}
    return _mlp(num_classes=num_classes)


def keyword_only(*, input_shape: tuple[int, ...]) -> nn.Module:
    CALLS["keyword_only"] = {"input_shape": input_shape}
    return _mlp(input_shape)


def any_keywords(*args: object, **kwargs: object) -> nn.Module:
    CALLS["any_keywords"] = {"args": args, **kwargs}
    return _mlp()


def passing_on(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """A decorator (logging, registering) whose wrapper hands every argument on to the factory it wraps."""

    @functools.wraps(factory)
    def wrapper(*args: object, **kwargs: object) -> nn.Module:
        return factory(*args, **kwargs)

    return wrapper


@passing_on
def decorated(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    CALLS["decorated"] = {"input_shape": input_shape, "num_classes": num_classes}
    return _mlp(input_shape, num_classes)


def taking_nothing(factory: Callable[[], nn.Module]) -> Callable[[], nn.Module]:
    """A decorator whose wrapper takes no argument at all: the factory it wraps is called with its defaults."""

    @functools.wraps(factory)
    def wrapper() -> nn.Module:
        CALLS["decorated_taking_nothing"] = {}
        return factory()

    return wrapper


@taking_nothing
def decorated_taking_nothing(input_shape: tuple[int, ...] = (1, 8, 8), num_classes: int = 10) -> nn.Module:
    return _mlp(input_shape, num_classes)


def filling_width(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """A decorator that fills a parameter Esper does not give in itself."""

    @functools.wraps(factory)
    def wrapper(**kwargs: object) -> nn.Module:
        return factory(width=16, **kwargs)

    return wrapper


@filling_width
def decorated_filling_width(num_classes: int, width: int) -> nn.Module:
    CALLS["decorated_filling_width"] = {"num_classes": num_classes, "width": width}
    return _mlp(num_classes=num_classes)


def forwarding(**overrides: object) -> nn.Module:
    """Hands its keywords on to a constructor that takes none of Esper's: called with nothing, as always."""
    CALLS["forwarding"] = dict(overrides)
    return _mlp(**overrides)  # type: ignore[arg-type]  # overrides are the caller's: none here


class Sized(nn.Sequential):
    """A class as the factory: its __init__'s parameters are the signature."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int) -> None:
        super().__init__(nn.Flatten(), nn.Linear(math.prod(input_shape), 16), nn.ReLU(), nn.Linear(16, num_classes))
        self.slot_targets = ["1"]


def needs_width(num_classes: int, width: int, depth: int) -> nn.Module:
    """Asks for parameters Esper cannot give."""
    raise AssertionError("never called")
