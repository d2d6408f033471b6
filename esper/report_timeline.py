"""report.png's seed timeline: one row per slot, each seed's stages as coloured segments on it, pauses hatched.

A row per slot rather than per seed keeps the panel readable whatever the seed count (a long churny run grows hundreds
of seeds in a few slots), and the segments of every row are one collection, so drawing costs the same few artists at
any count. A dark tick marks where each seed starts; a seed is named on its bar only where its own span has room for
the name, and a slot with one seed names it in the row's label.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, final

from matplotlib.collections import LineCollection, PolyCollection
from matplotlib.patches import Patch

from esper.report_labels import ellipsize, seed_tag, short_slot_names
from schemas.enums import SeedLifecycleStage as Stage

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from matplotlib.axes import Axes

    from esper.report_plot import PauseEvent, StageEvent

STAGE_COLOURS: Final[dict[Stage, str]] = {
    Stage.GERMINATED: "#9ecae1",
    Stage.TRAINING: "#3182bd",
    Stage.BLENDING: "#fd8d3c",
    Stage.SHADOWING: "#9e9ac8",
    Stage.PROBATIONARY: "#17becf",
    Stage.FOSSILIZED: "#31a354",
    Stage.CULLED: "#de2d26",
    Stage.EMBARGOED: "#fcbba1",
    Stage.RESETTING: "#bdbdbd",
    Stage.TERMINATED: "#636363",
}
"""Timeline colour per stage; DORMANT and UNKNOWN draw nothing (the slot is empty)."""

SLOT_WIDTH: Final = 24
"""At most this many characters of a slot's name in a label (see short_slot_names)."""
BLUEPRINT_WIDTH: Final = 12
_SEED_WIDTH: Final = 16
_PAUSE_HATCH: Final = "////"
_PAUSE_EDGE: Final = "#252525"
_BAR_HEIGHT: Final = 0.7
_LABEL_FONT_SIZE: Final = 7
_MIN_LABEL_ROW_PX: Final = 14.0
"""Rows thinner than this (many slots) name no seed on its bar: the text would not fit the bar's height."""
_MIN_LABEL_SPAN_PX: Final = 30.0
"""A seed narrower than this is not measured for a name (none fits): the labelling work stays bounded."""


@final
@dataclass(frozen=True, slots=True)
class Segment:
    """A seed's time in one stage: from ``start`` to ``end`` (steps)."""

    stage: Stage
    start: float
    end: float


@final
@dataclass(frozen=True, slots=True)
class Lane:
    """One seed's stages (a slot's embargo and reset after it included), in step order."""

    name: str  # in full: "slot · seed id (blueprint)"
    slot: str
    seed_id: str | None
    blueprint_id: str | None
    segments: list[Segment]


@final
@dataclass(frozen=True, slots=True)
class SlotRow:
    """One row of the timeline: a slot and its seeds' lanes, in step order."""

    slot: str
    lanes: list[Lane]


def seed_lanes(events: Sequence[StageEvent], end_step: float) -> dict[str, list[Segment]]:
    """Group transitions into one lane per seed (by seed id; a slot-only event joins the slot's latest seed) and
    turn them into stage segments; the last stage of each lane runs to ``end_step``."""
    return {lane.name: lane.segments for lane in lanes_of(events, end_step)}


def lanes_of(events: Sequence[StageEvent], end_step: float) -> list[Lane]:
    """The seeds' lanes (see seed_lanes), in the order each seed first appears."""
    grouped: dict[str, list[StageEvent]] = {}
    latest_by_slot: dict[str, str] = {}
    for event in sorted(events, key=lambda e: e.step):
        if event.seed_id is not None:
            key = f"{event.slot} · {event.seed_id}"
            latest_by_slot[event.slot] = key
        else:
            key = latest_by_slot.get(event.slot, event.slot)
        grouped.setdefault(key, []).append(event)
    result: list[Lane] = []
    for key, lane in grouped.items():
        segments: list[Segment] = []
        for index, event in enumerate(lane):
            end = lane[index + 1].step if index + 1 < len(lane) else max(end_step, event.step)
            if event.to_stage in STAGE_COLOURS:
                segments.append(Segment(event.to_stage, float(event.step), float(end)))
        if segments:
            blueprint = next((e.blueprint_id for e in lane if e.blueprint_id), None)
            seed_id = next((e.seed_id for e in lane if e.seed_id), None)
            name = f"{key} ({blueprint})" if blueprint else key
            result.append(Lane(name, lane[0].slot, seed_id, blueprint, segments))
    return result


def _natural(slot: str) -> list[str | int]:
    # blocks.2 before blocks.10. re.split with a group alternates text and digits, so the types line up by position.
    return [int(part) if index % 2 else part for index, part in enumerate(re.split(r"(\d+)", slot))]


def slot_rows(events: Sequence[StageEvent], end_step: float) -> list[SlotRow]:
    """One row per slot that had a seed (slots in natural order: blocks.2 before blocks.10), its seeds' lanes on it."""
    by_slot: dict[str, list[Lane]] = {}
    for lane in lanes_of(events, end_step):
        by_slot.setdefault(lane.slot, []).append(lane)
    return [SlotRow(slot, by_slot[slot]) for slot in sorted(by_slot, key=_natural)]


def paused_spans(
    pauses: Sequence[PauseEvent], events: Sequence[StageEvent], end_step: float
) -> dict[str, list[tuple[float, float]]]:
    """Per seed id, the (start, end) steps it spent paused: from a pause to its resume, else to the seed's next
    lifecycle change (a cull), else to ``end_step``."""
    changes: dict[str, list[int]] = {}
    for event in events:
        if event.seed_id is not None:
            changes.setdefault(event.seed_id, []).append(event.step)
    spans: dict[str, list[tuple[float, float]]] = {}
    ordered = sorted(pauses, key=lambda p: p.step)
    for index, pause in enumerate(ordered):
        if pause.resumed:
            continue
        resume = next((p.step for p in ordered[index + 1 :] if p.resumed and p.seed_id == pause.seed_id), None)
        change = min((step for step in changes.get(pause.seed_id, []) if step > pause.step), default=None)
        ends = [step for step in (resume, change) if step is not None]
        end = float(min(ends)) if ends else max(end_step, float(pause.step))
        spans.setdefault(pause.seed_id, []).append((float(pause.step), end))
    return spans


def row_labels(events: Sequence[StageEvent]) -> list[str]:
    """The timeline's row labels, top to bottom (see slot_rows): the slot's name shortened (see short_slot_names);
    its seed and blueprint when it had one seed, else how many seeds and their blueprint when they share one."""
    slots = short_slot_names((e.slot for e in events), SLOT_WIDTH)
    return [_row_label(row, slots) for row in slot_rows(events, 0.0)]


def _row_label(row: SlotRow, slots: Mapping[str, str]) -> str:
    label = slots.get(row.slot, row.slot)
    blueprints = {lane.blueprint_id for lane in row.lanes}
    if len(row.lanes) == 1:
        seed_id = row.lanes[0].seed_id
        label = f"{label} · {seed_tag(seed_id, row.slot, _SEED_WIDTH)}" if seed_id else label
    else:
        label = f"{label} · {len(row.lanes)} seeds"
    blueprint = next(iter(blueprints)) if len(blueprints) == 1 else None
    return f"{label} ({ellipsize(blueprint, BLUEPRINT_WIDTH)})" if blueprint else label


def _bar(start: float, end: float, row: int, min_width: float) -> list[tuple[float, float]]:
    left, right = start, start + max(end - start, min_width)
    top, bottom = row - _BAR_HEIGHT / 2, row + _BAR_HEIGHT / 2
    return [(left, top), (right, top), (right, bottom), (left, bottom)]


def draw_timeline(
    ax: Axes, events: Sequence[StageEvent], pauses: Sequence[PauseEvent], *, end_step: float, x_span: float
) -> list[SlotRow]:
    """Draw the rows, their legend and labels on ``ax`` and return the rows (see label_seeds, once laid out).

    Every segment is one polygon of one collection, the pauses another, the seeds' starts one set of lines.
    """
    rows = slot_rows(events, end_step)
    if not rows:
        return rows
    slots = short_slot_names((e.slot for e in events), SLOT_WIDTH)
    min_width = x_span * 0.004  # a stage of a step or two still shows
    bars: list[list[tuple[float, float]]] = []
    colours: list[str] = []
    starts: list[list[tuple[float, float]]] = []
    row_of_seed: dict[str, int] = {}
    for index, row in enumerate(rows):
        for lane in row.lanes:
            if lane.seed_id is not None:
                row_of_seed[lane.seed_id] = index
            if len(row.lanes) > 1:
                first = lane.segments[0].start
                starts.append([(first, index - _BAR_HEIGHT / 2 - 0.08), (first, index + _BAR_HEIGHT / 2 + 0.08)])
            for segment in lane.segments:
                bars.append(_bar(segment.start, segment.end, index, min_width))
                colours.append(STAGE_COLOURS[segment.stage])
    # White edges part the stages while bars are wide; on a crowded row they would paint it white.
    edge = 0.5 if len(bars) <= 400 else 0.0
    ax.add_collection(PolyCollection(bars, facecolors=colours, edgecolors="white", linewidths=edge))
    if starts:
        ax.add_collection(LineCollection(starts, colors=_PAUSE_EDGE, linewidths=0.6))
    spans = paused_spans(pauses, events, end_step)
    hatched = [
        _bar(start, end, row_of_seed[seed_id], min_width)
        for seed_id, seed_spans in spans.items()
        if seed_id in row_of_seed
        for start, end in seed_spans
    ]
    if hatched:
        ax.add_collection(
            PolyCollection(hatched, facecolors="none", hatch=_PAUSE_HATCH, edgecolors=_PAUSE_EDGE, linewidths=0.0)
        )
    ax.set_yticks(range(len(rows)), [_row_label(row, slots) for row in rows], fontsize=8)
    ax.set_ylim(len(rows) - 0.5, -0.5)
    shown = sorted({segment.stage for row in rows for lane in row.lanes for segment in lane.segments})
    handles = [Patch(facecolor=STAGE_COLOURS[stage], label=stage.name.lower()) for stage in shown]
    if hatched:
        handles.append(Patch(facecolor="white", hatch=_PAUSE_HATCH, edgecolor=_PAUSE_EDGE, label="paused"))
    ax.legend(
        handles=handles, loc="upper left", bbox_to_anchor=(1.005, 1.0), fontsize=8, title="stage", title_fontsize=8
    )
    return rows


def label_seeds(ax: Axes, rows: Sequence[SlotRow]) -> int:
    """Name a seed on its bar where the name fits inside the seed's own span, on a row of more than one seed (a
    slot's only seed is named by its row's label); returns how many were named. Call it once the layout is settled
    (it measures in pixels). Seeds too narrow for any name are not measured."""
    row_px = abs(float(ax.transData.transform((0.0, 1.0))[1] - ax.transData.transform((0.0, 0.0))[1]))
    if row_px * _BAR_HEIGHT < _MIN_LABEL_ROW_PX:
        return 0
    named = 0
    probe = ax.text(0, 0, "", fontsize=_LABEL_FONT_SIZE)
    for index, row in enumerate(rows):
        if len(row.lanes) < 2:
            continue
        blueprints = {lane.blueprint_id for lane in row.lanes}
        for lane in row.lanes:
            if lane.seed_id is None:
                continue
            left = float(ax.transData.transform((lane.segments[0].start, 0.0))[0])
            right = float(ax.transData.transform((lane.segments[-1].end, 0.0))[0])
            if right - left < _MIN_LABEL_SPAN_PX:
                continue
            text = seed_tag(lane.seed_id, lane.slot, _SEED_WIDTH)
            if len(blueprints) > 1 and lane.blueprint_id:
                text += f" {ellipsize(lane.blueprint_id, BLUEPRINT_WIDTH)}"
            probe.set_text(f" {text} ")
            if probe.get_window_extent().width > right - left:
                continue
            label = ax.text(
                lane.segments[0].start,
                index,
                f" {text} ",
                fontsize=_LABEL_FONT_SIZE,
                va="center",
                ha="left",
                color="#252525",
                clip_on=True,
                bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.6, "pad": 0.3},
            )
            label.set_in_layout(False)  # the layout was settled without it
            named += 1
    probe.remove()
    return named
