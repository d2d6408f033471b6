"""wrap / find_slots / unwrap: put seed slots after chosen submodules of any nn.Module, find them, take them out.

How a slot is inserted after a target module ``m`` (qualified name ``name``):

- The slot always becomes the child ``esper_slot`` of ``m`` (``SLOT_ATTR``), so it lives at ``<name>.esper_slot``
  and an attached seed's parameters at ``<name>.esper_slot.seed.<param>``. No existing module moves: every
  original parameter and buffer keeps its qualified name, and a wrapped model's ``state_dict`` is the unwrapped one
  plus one ``<name>.esper_slot._extra_state`` entry per slot (plus seed tensors once attached).
- If ``m`` is a plain ``nn.Sequential`` (its forward not overridden), the slot is its last element and the Sequential
  itself calls it; ``len(m)`` and ``m[-1]`` therefore include the slot, and modules appended later run after it.
- Otherwise, while the slot holds a seed, ``m``'s class is swapped for a generated subclass (``Slotted<Class>``,
  the technique of ``torch.nn.utils.parametrize``) whose ``forward`` calls the original ``forward`` and then the
  slot; the slot swaps it in when a seed arrives (attach, or loading a live checkpoint) and back out when it leaves.
  ``isinstance(m, Class)`` always holds. A module with swapped class pickles only through its ``state_dict`` (the
  generated class has no importable name); checkpoints use ``state_dict`` anyway.

So a dormant slot after such a module is never called at all (the module runs its own class's forward), and one in
a Sequential costs one Python branch on ``slot.mode``: no tensor operation, no sync.
"""

from __future__ import annotations

import functools
import inspect
import keyword
from collections import OrderedDict
from typing import TYPE_CHECKING, TypeVar

from torch import nn

from esper.nn.slots import SeedSlot, SlotMode

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from torch import Tensor

__all__ = ["SLOT_ATTR", "WrapTarget", "find_slots", "host_class", "slot_path", "unwrap", "wrap"]

SLOT_ATTR = "esper_slot"
_REF_ATTR = "_esper_slot_ref"
_BASE_ATTR = "_esper_base_class"

WrapTarget = type[nn.Module] | str
_M = TypeVar("_M", bound=nn.Module)


def slot_path(host_name: str) -> str:
    """Qualified module path of the slot after the module named ``host_name`` ("" is the root)."""
    return f"{host_name}.{SLOT_ATTR}" if host_name else SLOT_ATTR


def wrap(model: _M, targets: WrapTarget | Iterable[WrapTarget]) -> _M:
    """Insert a dormant ``SeedSlot`` after every submodule of ``model`` that matches ``targets``; return ``model``.

    Args:
        model: any module; modified in place. Existing slots and the seeds inside them are never matched.
        targets: module classes (matched with ``isinstance``) and/or exact qualified names (as in
            ``named_modules()``, "" for the root), one or an iterable of them.

    Raises:
        ValueError: a target names a module registered earlier under another name (naming that first name, under which
            its slot is found and checkpointed), a target matches nothing (all such targets are named), a matched
            module already has a slot, or a matched module has no forward of its own (``ModuleList``, ``ModuleDict``).
        TypeError: a target is neither a string nor an nn.Module subclass.
    """
    wanted = _normalise(targets)
    candidates = _host_modules(model)
    matched: dict[int, tuple[str, nn.Module]] = {}
    unmatched: list[str] = []
    for target in wanted:
        hits = [(n, m) for n, m in candidates if (n == target if isinstance(target, str) else isinstance(m, target))]
        if not hits and isinstance(target, str):
            _refuse_alias(model, target, candidates)
        if not hits:
            unmatched.append(repr(target) if isinstance(target, str) else target.__name__)
        for name, module in hits:
            matched.setdefault(id(module), (name, module))
    if unmatched:
        raise ValueError(f"wrap: target(s) {', '.join(unmatched)} match no submodule of {type(model).__name__}")
    for name, module in matched.values():
        if SLOT_ATTR in module._modules:
            raise ValueError(f"wrap: module {name!r} already has a slot")
        if type(module).forward is nn.Module.forward:
            raise ValueError(f"wrap: module {name!r} ({type(module).__name__}) has no forward to follow")
    for name, module in matched.values():
        _insert(module, SeedSlot(host_name=name))
    return model


def find_slots(model: nn.Module) -> OrderedDict[str, SeedSlot]:
    """Every slot in ``model``, keyed by the qualified name of the module it follows (``slot.host_name``).

    Order is module registration order (``named_modules()``), which is forward order for models that register
    submodules in the order they run (Sequential stacks, ModuleList loops, the hosts in ``esper.nn.hosts``). A slot
    after a module comes after the slots inside that module. The slot module itself is at ``slot_path(key)``.
    """
    found: OrderedDict[str, SeedSlot] = OrderedDict()
    for name, module in model.named_modules():
        if isinstance(module, SeedSlot):
            found[name.removesuffix(SLOT_ATTR).removesuffix(".")] = module
    return found


def unwrap(model: _M) -> _M:
    """Remove every slot from ``model``, restoring swapped classes; return ``model``.

    Raises:
        ValueError: a slot is not dormant (cull it first; a fossilized seed is part of the host and cannot be removed).
    """
    slots = find_slots(model)
    busy = [name for name, slot in slots.items() if slot.mode is not SlotMode.DORMANT]
    if busy:
        raise ValueError(f"unwrap: slots after {', '.join(repr(n) for n in busy)} are not dormant")
    for name, slot in slots.items():
        host = model.get_submodule(name)
        slot.unbind_host()
        del host._modules[SLOT_ATTR]
        base = host.__dict__.pop(_BASE_ATTR, None)
        if isinstance(base, type):
            host.__dict__.pop(_REF_ATTR, None)
            host.__class__ = base
    return model


def _normalise(targets: WrapTarget | Iterable[WrapTarget]) -> list[WrapTarget]:
    items: list[object] = [targets] if isinstance(targets, str | type) else list(targets)
    if not items:
        raise ValueError("targets: expected at least one module class or qualified name")
    out: list[WrapTarget] = []
    for item in items:
        if isinstance(item, str) or (isinstance(item, type) and issubclass(item, nn.Module)):
            out.append(item)
        else:
            raise TypeError(f"targets: expected nn.Module subclasses or qualified names, got {item!r}")
    return out


def _host_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    out: list[tuple[str, nn.Module]] = []
    skip: list[str] = []
    for name, module in model.named_modules():
        if any(name == p or name.startswith(p + ".") for p in skip):
            continue
        if isinstance(module, SeedSlot):
            skip.append(name)
            continue
        out.append((name, module))
    return out


def _refuse_alias(model: nn.Module, target: str, candidates: list[tuple[str, nn.Module]]) -> None:
    """Raise if ``target`` is a second name of a module registered earlier under another (``named_modules()`` lists
    each module once, under its first name). Its slot would be found, checkpointed and snapshotted under that first
    name, so the caller must use it."""
    try:
        module = model.get_submodule(target)
    except AttributeError:
        return
    first = next((name for name, m in candidates if m is module), None)
    if first is not None:
        raise ValueError(f"wrap: target {target!r} is the same module as {first!r}; target {first!r}")


def _insert(module: nn.Module, slot: SeedSlot) -> None:
    anchor: Tensor | None = next(module.parameters(), None)
    if anchor is None:
        anchor = next(module.buffers(), None)
    if anchor is not None:
        slot.to(device=anchor.device)
    module.add_module(SLOT_ATTR, slot)
    if type(module) is nn.Sequential or (
        isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward
    ):
        return
    # Stored in __dict__ (not _modules) so the hot path is a plain instance-attribute read.
    module.__dict__[_REF_ATTR] = slot
    module.__dict__[_BASE_ATTR] = type(module)
    slot.bind_host(module, _switch_class)


def host_class(module: nn.Module) -> type[nn.Module]:
    """The class ``module`` was built as: its own while no seed is live in its slot, and the one ``Slotted<Class>``
    stands in for while one is."""
    base = module.__dict__.get(_BASE_ATTR)
    return base if isinstance(base, type) else type(module)


def _switch_class(host: nn.Module, live: bool) -> None:
    """The slot's callback: ``host`` runs ``Slotted<Class>`` while its slot is live and its own class otherwise."""
    base = host.__dict__[_BASE_ATTR]
    wanted = _slotted_class(base) if live else base
    if host.__class__ is not wanted:
        host.__class__ = wanted


@functools.cache
def _slotted_class(base: type[nn.Module]) -> type[nn.Module]:
    base_forward: Callable[..., object] = base.forward
    single = _single_input_name(base_forward)
    forward = _forward_of_one(base_forward, single) if single is not None else _forward_of_any(base_forward)
    forward.__doc__ = base_forward.__doc__
    return type(f"Slotted{base.__name__}", (base,), {"forward": forward, "__module__": base.__module__})


def _forward_of_any(base_forward: Callable[..., object]) -> Callable[..., object]:
    def forward(self: nn.Module, *args: object, **kwargs: object) -> object:
        slot: SeedSlot = self.__dict__[_REF_ATTR]
        return slot(base_forward(self, *args, **kwargs))  # type: ignore[type-var]  # the slot checks the type itself

    return forward


def _forward_of_one(base_forward: Callable[..., object], name: str) -> Callable[..., object]:
    # A forward taking exactly one argument gets a wrapper with that very signature: packing ``*args, **kwargs``
    # costs about 1 us a call here (BENCHMARKS.md, dormant overhead), and the signature stays introspectable. The
    # argument keeps its name so a keyword call still works; ``name`` is a checked identifier. The class is swapped in
    # only while the slot is live, and a dormant slot's __call__ returns its input anyway, so there is no mode test.
    # The template's one other name is ``name`` with a prefix, so it can never be the argument's (an argument named
    # ``ref_attr`` shadowed the template's own name of that spelling); the slot's key is a literal.
    base = f"_esper_base_forward_{name}"
    source = f"def forward(self, {name}):\n    return self.__dict__[{_REF_ATTR!r}]({base}(self, {name}))\n"
    namespace: dict[str, object] = {base: base_forward}
    exec(source, namespace)  # fixed template; the one interpolated name passed str.isidentifier
    forward = namespace["forward"]
    assert callable(forward)
    return forward


def _single_input_name(forward: Callable[..., object]) -> str | None:
    """The parameter name if ``forward(self, x)`` takes exactly one plain argument without a default, else None."""
    try:
        parameters = list(inspect.signature(forward).parameters.values())[1:]
    except (TypeError, ValueError):
        return None
    if len(parameters) != 1:
        return None
    (parameter,) = parameters
    plain = parameter.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD and parameter.default is inspect.Parameter.empty
    name = parameter.name
    if not plain or not name.isidentifier() or keyword.iskeyword(name) or name == "self":
        return None
    return name
