"""Pure torch building blocks: seed slots and blending, wrap(), host models.

``esper.nn.wrap`` is the function (the module of the same name stays importable as ``from esper.nn.wrap import ...``).
Only the slot modules are imported here (torch alone); hosts, blueprints and the policy network load on demand.
"""

from __future__ import annotations

from esper.nn.slots import SeedSlot as SeedSlot
from esper.nn.slots import SlotMode as SlotMode
from esper.nn.wrap import find_slots as find_slots
from esper.nn.wrap import unwrap as unwrap
from esper.nn.wrap import wrap as wrap

__all__ = ["SeedSlot", "SlotMode", "find_slots", "unwrap", "wrap"]
