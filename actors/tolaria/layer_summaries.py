"""The host layers that hold seed slots, as the controller's policy graph sees them (its ``layer`` nodes)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

from esper.nn.wrap import SLOT_ATTR, host_class
from schemas.state import LayerSummary

if TYPE_CHECKING:
    from collections.abc import Mapping

    from esper.nn.slots import SeedSlot

_ACTIVATIONS = (nn.ReLU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.LeakyReLU, nn.ELU, nn.Mish, nn.Softplus)


def slot_layer_summaries(model: nn.Module, slots: Mapping[str, SeedSlot]) -> tuple[LayerSummary, ...]:
    """One LayerSummary per slot, for the module the slot follows: its name (the slot's), its depth (the slot's place
    in ``slots``, as each SeedState's ``layer_depth``, which the graph links a seed to its layer by), its class, its own
    parameters (its seeds' left out) and, for an activation or dropout module, what it is. No gradient norm: the
    packet's ``layer_gradient_norms`` holds it under the same name, which readers of a summary fall back to, so the
    summaries depend on the architecture only and are built once per change of it."""
    summaries: list[LayerSummary] = []
    for depth, name in enumerate(slots):
        module = model.get_submodule(name)
        # Not a seed's: under this slot, or under a slot nested deeper in the module ("0.esper_slot.seed.weight").
        own = sum(p.numel() for key, p in module.named_parameters() if SLOT_ATTR not in key.split("."))
        kind = host_class(module)
        summaries.append(
            LayerSummary(
                name=name,
                depth=depth,
                layer_type=kind.__name__.lower(),
                parameter_count=own,
                activation=kind.__name__.lower() if issubclass(kind, _ACTIVATIONS) else None,
                # Dropout1d/2d/3d and AlphaDropout share only this private base with nn.Dropout.
                dropout=float(module.p) if isinstance(module, nn.modules.dropout._DropoutNd) else 0.0,
            )
        )
    return tuple(summaries)
