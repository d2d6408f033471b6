"""Karn's blueprint families as pure torch modules: descriptors, the default catalogue, builders and the probe.

A blueprint module maps a slot activation to a tensor of the same shape and is exactly zero at birth (its last layer
starts at zero), so attaching it never changes the host's output. Slot kinds: conv1d ``[batch, channels, length]``,
conv2d ``[batch, channels, height, width]``, flat ``[batch, features]``, sequence ``[batch, seq, hidden]``.
"""

from __future__ import annotations

from esper.nn.blueprints.descriptors import SLOT_KINDS as SLOT_KINDS
from esper.nn.blueprints.descriptors import BlueprintDescriptor as BlueprintDescriptor
from esper.nn.blueprints.descriptors import CostTier as CostTier
from esper.nn.blueprints.descriptors import ParamBounds as ParamBounds
from esper.nn.blueprints.descriptors import SlotKind as SlotKind
from esper.nn.blueprints.descriptors import SlotShape as SlotShape
from esper.nn.blueprints.descriptors import SlotSignature as SlotSignature
from esper.nn.blueprints.descriptors import Tier as Tier
from esper.nn.blueprints.descriptors import validate_params as validate_params
from esper.nn.blueprints.probe import ProbeReport as ProbeReport
from esper.nn.blueprints.probe import probe_validate as probe_validate
from esper.nn.blueprints.registry import FAMILIES as FAMILIES
from esper.nn.blueprints.registry import Catalogue as Catalogue
from esper.nn.blueprints.registry import Family as Family
from esper.nn.blueprints.registry import build_blueprint as build_blueprint
from esper.nn.blueprints.registry import default_catalogue as default_catalogue
from esper.nn.blueprints.registry import param_count as param_count
from esper.nn.blueprints.registry import param_count_range as param_count_range
from esper.nn.blueprints.sourced import SourcedModule as SourcedModule

__all__ = [
    "FAMILIES",
    "SLOT_KINDS",
    "BlueprintDescriptor",
    "Catalogue",
    "CostTier",
    "Family",
    "ParamBounds",
    "ProbeReport",
    "SlotKind",
    "SlotShape",
    "SlotSignature",
    "SourcedModule",
    "Tier",
    "build_blueprint",
    "default_catalogue",
    "param_count",
    "param_count_range",
    "probe_validate",
    "validate_params",
]
