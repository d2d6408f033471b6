"""Parameter ownership: every parameter has exactly one owner, the host or one seed (REFERENCE.md section 4).

The registry knows each parameter by identity and by qualified name. Kasmina registers the host once, registers a
seed's parameters when it is grafted, releases them when it is culled and hands them to the host when it fossilizes.
Before any change that names parameters (an optimizer update, a seed-scoped operation), ``assert_owned`` refuses a
parameter the seed does not own, with a one-line reason. Not thread-safe: it lives with the model on one thread.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, final

if TYPE_CHECKING:
    from collections.abc import Iterable

    from torch import Tensor, nn

__all__ = ["HOST", "ForeignParameterError", "OwnershipError", "ParameterRegistry"]

HOST = "host"


class OwnershipError(ValueError):
    """Raised when a registration would give a parameter a second owner or a name twice, or names an unknown owner
    or an unregistered parameter."""


class ForeignParameterError(OwnershipError):
    """Raised by ``assert_owned`` when a change for one seed touches a parameter owned by the host or another seed."""


@final
@dataclass(slots=True)
class _Entry:
    owner: str
    name: str
    param: Tensor


@final
class ParameterRegistry:
    """Owner and qualified name of every registered parameter."""

    def __init__(self) -> None:
        self._by_id: dict[int, _Entry] = {}
        self._by_name: dict[str, _Entry] = {}

    def __len__(self) -> int:
        return len(self._by_id)

    def register(self, owner: str, named_params: Iterable[tuple[str, Tensor]]) -> None:
        """Give ``owner`` ("host" or a seed id) the parameters ``(qualified name, parameter)``; all or nothing.

        Raises:
            OwnershipError: an empty owner, or a parameter or name that is already registered (naming both owners).
        """
        if not owner:
            raise OwnershipError("owner: expected 'host' or a non-empty seed id")
        entries = [_Entry(owner, name, p) for name, p in named_params]
        seen: set[int | str] = set()
        for e in entries:
            prior = self._by_id.get(id(e.param)) or self._by_name.get(e.name)
            if prior is not None or id(e.param) in seen or e.name in seen:
                holder = prior.owner if prior is not None else owner
                raise OwnershipError(
                    f"parameter {e.name!r} is already owned by {holder!r}; cannot give it to {owner!r}"
                )
            seen.update((id(e.param), e.name))
        for e in entries:
            self._by_id[id(e.param)] = e
            self._by_name[e.name] = e

    def register_host(self, model: nn.Module) -> None:
        """Register every parameter of ``model`` not registered yet as the host's, under its qualified name."""
        self.register(HOST, [(n, p) for n, p in model.named_parameters() if id(p) not in self._by_id])

    def owner_of(self, param: Tensor | str) -> str:
        """Owner of a parameter given by identity or qualified name.

        Raises:
            OwnershipError: the parameter is not registered.
        """
        return self._entry(param).owner

    def name_of(self, param: Tensor) -> str:
        """Qualified name the parameter was registered under.

        Raises:
            OwnershipError: the parameter is not registered.
        """
        return self._entry(param).name

    def params_of(self, owner: str) -> list[tuple[str, Tensor]]:
        """``(name, parameter)`` pairs owned by ``owner``, in registration order."""
        return [(e.name, e.param) for e in self._by_id.values() if e.owner == owner]

    def owners(self) -> set[str]:
        """Every owner with at least one parameter."""
        return {e.owner for e in self._by_id.values()}

    def assert_owned(self, seed_id: str, params: Iterable[Tensor | str]) -> None:
        """Refuse a change for ``seed_id`` that touches any parameter it does not own.

        Raises:
            ForeignParameterError: a parameter belongs to the host or another seed (the message names it and its
                owner).
            OwnershipError: a parameter is not registered at all.
        """
        for param in params:
            entry = self._entry(param)
            if entry.owner != seed_id:
                raise ForeignParameterError(
                    f"parameter {entry.name!r} is owned by {entry.owner!r}, not by seed {seed_id!r}"
                )

    def release(self, seed_id: str) -> list[tuple[str, Tensor]]:
        """Forget the seed's parameters (cull) and return them.

        Raises:
            OwnershipError: ``seed_id`` is the host or owns nothing.
        """
        owned = self._owned_by_seed(seed_id)
        for name, p in owned:
            del self._by_id[id(p)]
            del self._by_name[name]
        return owned

    def transfer_to_host(self, seed_id: str) -> list[tuple[str, Tensor]]:
        """Make the seed's parameters the host's (fossilize) and return them; names stay.

        Raises:
            OwnershipError: ``seed_id`` is the host or owns nothing.
        """
        owned = self._owned_by_seed(seed_id)
        for name, _ in owned:
            self._by_name[name].owner = HOST
        return owned

    def check_model(self, model: nn.Module) -> None:
        """Check that every parameter of ``model`` is registered under its current name, and nothing else is.

        Raises:
            OwnershipError: naming the first unregistered, renamed or stale parameter.
        """
        current = dict(model.named_parameters())
        for name, p in current.items():
            entry = self._by_id.get(id(p))
            if entry is None:
                raise OwnershipError(f"parameter {name!r} has no owner")
            if entry.name != name:
                raise OwnershipError(f"parameter {name!r} is registered as {entry.name!r}")
        live = {id(p) for p in current.values()}
        for e in self._by_id.values():
            if id(e.param) not in live:
                raise OwnershipError(f"parameter {e.name!r} (owner {e.owner!r}) is registered but not in the model")

    def _owned_by_seed(self, seed_id: str) -> list[tuple[str, Tensor]]:
        if seed_id == HOST:
            raise OwnershipError("seed_id: the host is not a seed")
        owned = self.params_of(seed_id)
        if not owned:
            raise OwnershipError(f"seed {seed_id!r} owns no parameters")
        return owned

    def _entry(self, param: Tensor | str) -> _Entry:
        entry = self._by_name.get(param) if isinstance(param, str) else self._by_id.get(id(param))
        if entry is None:
            label = repr(param) if isinstance(param, str) else f"of shape {tuple(param.shape)}"
            raise OwnershipError(f"parameter {label} is not registered")
        return entry
