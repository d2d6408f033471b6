"""The host model tolaria.host_model names, built on the CPU, and TolariaConfigError for a tolaria key that is unusable.

A built-in host or a user's ``module:factory``, called with the data's ``input_shape=`` and ``num_classes=`` when its
signature names them (or takes ``**kwargs``); a user model's lazy modules get their parameters from one dry forward.
"""

from __future__ import annotations

import importlib
import inspect
import math
from typing import TYPE_CHECKING, Final

import torch
from torch import nn

from esper.nn.hosts import CNN1dHost, MLPHost
from esper.runtime.errors import ConfigError
from esper.runtime.failure_trace import raised_in_one_line

if TYPE_CHECKING:
    from collections.abc import Callable

    from schemas.config import TolariaConfig

BUILT_IN_HOSTS: Final = ("cnn1d", "mlp")
"""The hosts ``tolaria.host_model`` names without a ``module:factory``; their slots are chosen by config alone."""


class TolariaConfigError(ConfigError):
    """Raised when the tolaria section names something that cannot be used: a ``module:factory`` host model that
    does not import, fails, or returns no nn.Module, or a data set file that is missing or malformed. One line,
    naming the config key and value."""


def load_factory(spec: str) -> Callable[..., object]:
    """Import ``package.module:factory`` and return the factory.

    Raises:
        TolariaConfigError: the module does not import or has no such callable.
    """
    module_name, _, attr = spec.partition(":")
    who = f"tolaria.host_model = {spec!r}"
    try:
        module = importlib.import_module(module_name)
    # Any import failure is the user's config problem, reported in one line; a module that calls sys.exit() or raises
    # KeyboardInterrupt as it imports (on a worker thread: not a Ctrl-C) would otherwise end the run without a word.
    except (Exception, KeyboardInterrupt, SystemExit) as err:
        raise TolariaConfigError(f"{who}: cannot import {module_name!r}: {raised_in_one_line(err)}") from err
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise TolariaConfigError(f"{who}: module {module_name!r} has no callable {attr!r}")
    return factory  # type: ignore[no-any-return]  # getattr on a user module; callable() checked above


def build_host(config: TolariaConfig, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """The unwrapped host model on the CPU.

    Raises:
        TolariaConfigError: a user factory fails or returns something other than an nn.Module.
    """
    who = f"tolaria.host_model = {config.host_model!r}"
    features = math.prod(input_shape)
    try:
        if config.host_model == "cnn1d":
            return CNN1dHost(length=features, num_classes=num_classes)
        if config.host_model == "mlp":
            return MLPHost(in_features=features, num_classes=num_classes)
    except ValueError as err:  # the data set does not suit the built-in host (too short a signal, one class)
        data = f"the {config.dataset} data set ({features} features a sample, {num_classes} classes)"
        raise TolariaConfigError(f"{who}: cannot be built for {data}: {err}") from err
    model = _call_factory(config.host_model, input_shape, num_classes)
    if not isinstance(model, nn.Module):
        raise TolariaConfigError(f"{who}: the factory returned {type(model).__name__}, not an nn.Module")
    _materialise_lazy(model, input_shape, who)
    if not any(p.requires_grad for p in model.parameters()):
        raise TolariaConfigError(f"{who}: the model has no trainable parameter (none requires grad)")
    return model


def check_new_each_call(
    config: TolariaConfig, first: nn.Module, input_shape: tuple[int, ...], num_classes: int
) -> None:
    """Call a user's factory once more and refuse it when it hands back ``first``, the model its earlier call returned:
    the run builds the model again at its start and at every restart, rollback and resume, and a second build of the
    same object, its slots already wrapped in, failed ("already has a slot") once the run directory was made.

    Raises:
        TolariaConfigError: the factory returned ``first`` again, or raised on its second call.
    """
    if config.host_model in BUILT_IN_HOSTS:
        return
    who = f"tolaria.host_model = {config.host_model!r}"
    again = _call_factory(config.host_model, input_shape, num_classes, when=" on its second call")
    if again is first:
        raise TolariaConfigError(
            f"{who}: the factory returned the same model object on its second call; it must return a new model on"
            " each call (the run builds the model again at its start and at every restart, rollback and resume)"
        )


def factory_arguments(spec: str, factory: Callable[..., object], offered: dict[str, object]) -> dict[str, object]:
    """The keyword arguments of ``offered`` (``input_shape``, ``num_classes``) that ``factory``'s own signature names;
    none for a factory that takes none, only ``**kwargs`` (it may hand them on to a constructor that takes neither,
    as ``nn.Module.__init__`` does: such factories were always called with nothing), or whose signature cannot be
    read. A decorated factory (``functools.wraps``) gets what the function it wraps names, if its wrapper takes
    them (a wrapper that takes nothing is called with nothing, as before), and is refused nothing in advance (its
    decorator may fill a parameter in itself).

    Raises:
        TolariaConfigError: the factory has a required parameter Esper does not give (a positional-only one too).
    """
    try:
        wrapped = inspect.signature(factory)
        own = inspect.signature(factory, follow_wrapped=False)
    except (TypeError, ValueError):  # a builtin or C callable without a signature: called as before, with nothing
        return {}
    parameters = wrapped.parameters.values()
    named: dict[str, object] = {}
    required: list[str] = []
    variadic = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    for parameter in parameters:
        if parameter.kind is not inspect.Parameter.POSITIONAL_ONLY and parameter.name in offered:
            named[parameter.name] = offered[parameter.name]
        elif parameter.kind not in variadic and parameter.default is inspect.Parameter.empty:
            required.append(parameter.name)
    if own != wrapped:
        try:
            own.bind(**named)
        except TypeError:
            return {}
        return named
    if required:
        names = ", ".join(repr(name) for name in required)
        given = " and ".join(f"{name}=" for name in offered)
        raise TolariaConfigError(
            f"tolaria.host_model = {spec!r}: the factory requires {names}, which Esper cannot give: it is called"
            f" with {given} when it names them (give any other parameter a default)"
        )
    return named


def _call_factory(spec: str, input_shape: tuple[int, ...], num_classes: int, when: str = "") -> object:
    """Import the factory ``spec`` names and call it with the arguments its signature takes (factory_arguments).

    Raises:
        TolariaConfigError: it does not import, asks for a parameter Esper cannot give, or raises.
    """
    who = f"tolaria.host_model = {spec!r}"
    factory = load_factory(spec)
    arguments = factory_arguments(spec, factory, {"input_shape": input_shape, "num_classes": num_classes})
    try:
        return factory(**arguments)
    except SystemExit as err:  # a factory that calls sys.exit() would end the run without a word
        raise TolariaConfigError(f"{who}: the factory called exit({err.code!r}){when}") from err
    # KeyboardInterrupt too: this runs on a worker thread, where no signal arrives, so it is the user's code raising
    # it (it ended the run as if Ctrl-C had been pressed: exit 130, no word).
    except (Exception, KeyboardInterrupt) as err:
        raise TolariaConfigError(f"{who}: the factory raised {raised_in_one_line(err)}{when}") from err


def _materialise_lazy(model: nn.Module, input_shape: tuple[int, ...], who: str) -> None:
    """Give a model's lazy modules (``nn.LazyLinear``, ...) their parameters with one eval-mode forward on a batch of
    two zero samples of the data's shape, as PyTorch's own dry run does: the parameter count, the slot shapes and the
    optimizer all need real tensors. Their initialisation draws from torch's global RNG right after the factory's own
    draws, so every build from the same seed (the check, the run's, each restore and a resume) makes the same weights.

    Raises:
        TolariaConfigError: the forward fails, or leaves a parameter or buffer uninitialised (a lazy module it never
            calls).
    """
    if not _lazy_tensors(model):
        return
    batch = torch.zeros(2, *input_shape)
    was_training = model.training
    model.eval()  # no BatchNorm statistics, no dropout draws: only the lazy modules' initialisation uses the RNG
    try:
        with torch.no_grad():
            model(batch)
    # Whatever the user's forward raises, KeyboardInterrupt and SystemExit included (see host_slots.fitting_shapes).
    except (Exception, KeyboardInterrupt, SystemExit) as err:
        raise TolariaConfigError(
            f"{who}: the model's lazy modules could not be initialised by a forward on a batch of shape"
            f" {list(batch.shape)}: {raised_in_one_line(err)}"
        ) from err
    finally:
        model.train(was_training)
    left = _lazy_tensors(model)
    if left:
        raise TolariaConfigError(
            f"{who}: {left[0]!r} is still uninitialised after a forward on a batch of shape {list(batch.shape)} (a lazy"
            " module the forward never calls)"
        )


def _lazy_tensors(model: nn.Module) -> list[str]:
    named = [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]
    return [name for name, tensor in named if nn.parameter.is_lazy(tensor)]
