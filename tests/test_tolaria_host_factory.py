"""A user's host factory is called with the data's ``input_shape=`` and ``num_classes=`` as it asks.

With them when its signature names them, with nothing when it takes nothing or only ``*args``/``**kwargs``, and refused
in one line when it asks for anything else."""

from __future__ import annotations

import pytest
import torch

from actors.tolaria.build import build_trainee, check_config
from actors.tolaria.host_model import TolariaConfigError, build_host
from schemas.config import TolariaConfig
from tests.host_factory_forms import CALLS

FORMS = "tests.host_factory_forms"
SHAPE = (1, 8, 8)


def _built(factory: str) -> dict[str, object]:
    CALLS.clear()
    build_host(TolariaConfig(host_model=f"{FORMS}:{factory}", dataset="digits"), SHAPE, 7)
    return CALLS[factory]


@pytest.mark.parametrize(
    ("factory", "called_with"),
    [
        ("no_arguments", {}),
        ("shape_and_classes", {"input_shape": SHAPE, "num_classes": 7}),
        ("classes_only", {"num_classes": 7, "width": 16}),  # a parameter with a default keeps it
        ("keyword_only", {"input_shape": SHAPE}),
        # Only **kwargs: it may hand them on to a constructor that takes neither (nn.Module's), as it was always
        # called. A decorated factory: what the function it wraps names (its wrapper hands them on).
        ("any_keywords", {"args": ()}),
        ("decorated", {"input_shape": SHAPE, "num_classes": 7}),
        # Its wrapper takes nothing: called with nothing, as always ("got an unexpected keyword argument").
        ("decorated_taking_nothing", {}),
        # Its decorator gives width itself: not refused in advance for it.
        ("decorated_filling_width", {"num_classes": 7, "width": 16}),
    ],
)
def test_a_factory_gets_the_arguments_its_signature_names(factory: str, called_with: dict[str, object]) -> None:
    """``def needs_args(input_shape, num_classes)`` failed: "missing 2 required positional arguments"."""
    assert _built(factory) == called_with


def test_a_class_is_called_with_the_arguments_its_init_names() -> None:
    model = build_host(TolariaConfig(host_model=f"{FORMS}:Sized"), SHAPE, 3)
    assert model(torch.zeros(2, *SHAPE)).shape == (2, 3)


def test_a_factory_handing_its_keywords_on_is_called_with_nothing() -> None:
    """``def make(**overrides): return Net(**overrides)`` trained before the factories got arguments; given
    input_shape= and num_classes= it raised, and runs it had trained could not be resumed or loaded."""
    assert _built("forwarding") == {}


def test_a_factory_asking_for_another_parameter_is_refused_in_one_line() -> None:
    with pytest.raises(TolariaConfigError) as info:
        build_host(TolariaConfig(host_model=f"{FORMS}:needs_width"), SHAPE, 7)
    assert str(info.value) == (
        f"tolaria.host_model = '{FORMS}:needs_width': the factory requires 'width', 'depth', which Esper cannot"
        " give: it is called with input_shape= and num_classes= when it names them (give any other parameter a"
        " default)"
    )


def test_the_start_check_builds_a_factory_that_takes_arguments_twice() -> None:
    """The start's check calls the factory a second time (a new model each call): with the same arguments."""
    config = TolariaConfig(host_model=f"{FORMS}:shape_and_classes", dataset="digits", epochs=1)
    CALLS.clear()
    splits = check_config(config)
    assert CALLS["shape_and_classes"] == {"input_shape": (1, 8, 8), "num_classes": 10}
    assert splits.input_shape == (1, 8, 8)


def test_a_factory_returning_its_model_wrapped_at_its_own_slot_targets_is_not_wrapped_twice() -> None:
    """README says a factory may return an esper.nn.wrap'ed model; one whose slot_targets attribute names a module
    it wrapped already was refused: "wrap: module '1' already has a slot"."""
    config = TolariaConfig(host_model="tests.tolaria_factories:prewrapped_own_mlp", dataset="digits", epochs=1)
    trainee = build_trainee(config, check_config(config), (), torch.device("cpu"))
    assert list(trainee.slots) == ["1", "3"]
