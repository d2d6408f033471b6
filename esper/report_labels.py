"""Short labels for report.png: slot names cut to what tells them apart, seed ids without the slot they repeat."""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from collections.abc import Iterable

ELLIPSIS: Final = "…"


def ellipsize(text: str, width: int) -> str:
    """``text`` cut in the middle to at most ``width`` characters (its start and its end kept)."""
    if len(text) <= width:
        return text
    if width <= 1:
        return ELLIPSIS[:width]
    tail = (width - 1) // 2
    return text[: width - 1 - tail] + ELLIPSIS + text[len(text) - tail :]


def short_slot_names(slots: Iterable[str], width: int) -> dict[str, str]:
    """Each slot's name in at most ``width`` characters: whole when it fits; else without the dotted components that
    every slot's name starts or ends with (as many of them kept, nearest first, as fit), then cut in the middle.

    ``encoder_stack.residual_layers.{0,1,2}.feed_forward_projection`` become ``…residual_layers.0…`` and so on: the
    part that tells them apart stays.
    """
    distinct = sorted(set(slots))
    parts = [slot.split(".") for slot in distinct]
    prefix = suffix = 0
    if len(distinct) > 1:
        shortest = min(len(p) for p in parts)
        while prefix < shortest - 1 and len({p[prefix] for p in parts}) == 1:
            prefix += 1
        while prefix + suffix < shortest - 1 and len({p[-1 - suffix] for p in parts}) == 1:
            suffix += 1
    names: dict[str, str] = {}
    for slot, components in zip(distinct, parts, strict=True):
        if len(slot) <= width:
            names[slot] = slot
            continue
        start, end = prefix, len(components) - suffix
        for widen_start in (True, False) * len(components):
            wider = (start - 1, end) if widen_start else (start, end + 1)
            if 0 <= wider[0] and wider[1] <= len(components) and len(_joined(components, *wider)) <= width:
                start, end = wider
        names[slot] = ellipsize(_joined(components, start, end), width)
    return names


def _joined(components: list[str], start: int, end: int) -> str:
    head = ELLIPSIS if start > 0 else ""
    tail = ELLIPSIS if end < len(components) else ""
    return head + ".".join(components[start:end]) + tail


def seed_tag(seed_id: str, slot: str, width: int) -> str:
    """The seed id without the slot it names (Kasmina's ``seed-<slot>-<step>`` shows as ``seed-…-<step>``), cut to
    ``width`` characters."""
    own = f"seed-{slot}-"
    if seed_id.startswith(own) and len(seed_id) > len(own):
        return ellipsize(f"seed-{ELLIPSIS}-{seed_id[len(own) :]}", width)
    return ellipsize(seed_id, width)
