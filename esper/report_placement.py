"""Where labels beside markers go: in rows, right of each marker or left of it, none overlapping (in pixels)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, final

if TYPE_CHECKING:
    from collections.abc import Sequence


@final
@dataclass(frozen=True, slots=True)
class LabelSpot:
    """Where a marker's label goes: which of its texts, which row from the top, right of the marker or left of it."""

    text: int
    row: int
    right: bool = True


def plan_labels(
    xs: Sequence[float], widths: Sequence[Sequence[float]], bounds: tuple[float, float], rows: int
) -> list[LabelSpot | None]:
    """A spot for each marker's label, or None where none fits (pixels).

    ``widths[i]`` are marker i's texts' widths, the preferred first. Each label goes in the first row with room,
    right of its marker or else left of it, within ``bounds``. The first texts are tried first; if that leaves any
    marker without a label, the shorter texts alone are placed, then each widened to its first text where that still
    fits; the plan that labels more markers wins (the first of equals).
    """
    if not widths:
        return []
    plans = [_plan(xs, widths, bounds, rows, texts=range(len(widths[0])))]
    if None in plans[0] and len(widths[0]) > 1:
        plans.append(_widened(_plan(xs, widths, bounds, rows, texts=range(1, len(widths[0]))), xs, widths, bounds))
    return max(plans, key=lambda plan: sum(spot is not None for spot in plan))


def _span(x: float, width: float, *, right: bool) -> tuple[float, float]:
    return (x, x + width) if right else (x - width, x)


def _free(span: tuple[float, float], bounds: tuple[float, float], taken: Sequence[tuple[float, float]]) -> bool:
    inside = bounds[0] <= span[0] and span[1] <= bounds[1]
    return inside and all(span[1] <= start or end <= span[0] for start, end in taken)


def _plan(
    xs: Sequence[float], widths: Sequence[Sequence[float]], bounds: tuple[float, float], rows: int, texts: range
) -> list[LabelSpot | None]:
    taken: list[list[tuple[float, float]]] = [[] for _ in range(rows)]
    plan: list[LabelSpot | None] = []
    for x, width_of in zip(xs, widths, strict=True):
        plan.append(_spot(x, width_of, bounds, taken, texts))
    return plan


def _spot(
    x: float, widths: Sequence[float], bounds: tuple[float, float], taken: list[list[tuple[float, float]]], texts: range
) -> LabelSpot | None:
    for text in texts:
        for row, spans in enumerate(taken):
            for right in (True, False):
                if _free(span := _span(x, widths[text], right=right), bounds, spans):
                    spans.append(span)
                    return LabelSpot(text, row, right)
    return None


def _widened(
    plan: list[LabelSpot | None], xs: Sequence[float], widths: Sequence[Sequence[float]], bounds: tuple[float, float]
) -> list[LabelSpot | None]:
    """Each placed label in its first text, in its row, where that overlaps no other label."""
    spots = {i: spot for i, spot in enumerate(plan) if spot is not None}
    spans = {i: _span(xs[i], widths[i][spot.text], right=spot.right) for i, spot in spots.items()}
    for i, spot in spots.items():
        others = [spans[j] for j, other in spots.items() if j != i and other.row == spot.row]
        for right in (spot.right, not spot.right):
            if _free(span := _span(xs[i], widths[i][0], right=right), bounds, others):
                plan[i], spans[i] = LabelSpot(0, spot.row, right), span
                break
    return plan
