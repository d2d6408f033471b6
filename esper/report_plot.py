"""Rendering of report.png with matplotlib's Agg backend (no display): curves, lifecycle markers, a seed timeline.

Panels, sharing the step axis: losses (train, validation) with lifecycle markers and labels; accuracies with the
same markers; one lane per seed with a coloured segment per lifecycle stage, hatched where the seed was paused (a
flag, not a stage), and a legend of the stages shown.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, final

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from schemas.enums import SeedLifecycleStage as Stage

if TYPE_CHECKING:
    from collections.abc import Sequence

    from matplotlib.axes import Axes

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

MARKED_STAGES: Final[dict[Stage, tuple[str, str]]] = {
    Stage.GERMINATED: ("germinated", "#2171b5"),
    Stage.BLENDING: ("blending", "#d94801"),
    Stage.FOSSILIZED: ("fossilized", "#238b45"),
    Stage.CULLED: ("culled", "#cb181d"),
}
"""Transitions into these stages get a vertical marker on the curves (name, a colour dark enough for text),
labelled with slot and blueprint."""

_PAUSE_HATCH: Final = "////"
_PAUSE_EDGE: Final = "#252525"
_LABEL_ROWS: Final = 4
_CHARS_PER_AXES_WIDTH: Final = 150.0
"""Roughly how many 7 pt characters fit across the curve panels at the figure's width; spaces labels apart."""


@final
@dataclass(frozen=True, slots=True)
class StageEvent:
    """One lifecycle transition as read back from events.jsonl."""

    step: int
    slot: str
    to_stage: Stage
    from_stage: Stage | None = None
    seed_id: str | None = None
    blueprint_id: str | None = None


@final
@dataclass(frozen=True, slots=True)
class PauseEvent:
    """A seed paused (or resumed) at ``step``, as read back from events.jsonl."""

    step: int
    seed_id: str
    resumed: bool = False


@final
@dataclass(frozen=True, slots=True)
class Curves:
    """Per-epoch figures from metrics.csv; x is the step of each epoch end (or the epoch when steps are absent)."""

    x: Sequence[float]
    train_loss: Sequence[float]
    val_loss: Sequence[float]
    train_accuracy: Sequence[float]
    val_accuracy: Sequence[float]
    x_label: str = "step"


@final
@dataclass(frozen=True, slots=True)
class Segment:
    """A seed's time in one stage: from ``start`` to ``end`` (steps)."""

    stage: Stage
    start: float
    end: float


@final
@dataclass(frozen=True, slots=True)
class _Lane:
    name: str
    seed_id: str | None
    segments: list[Segment]


def seed_lanes(events: Sequence[StageEvent], end_step: float) -> dict[str, list[Segment]]:
    """Group transitions into one lane per seed (by seed id; a slot-only event joins the slot's latest seed) and
    turn them into stage segments; the last stage of each lane runs to ``end_step``."""
    return {lane.name: lane.segments for lane in _lanes(events, end_step)}


def _lanes(events: Sequence[StageEvent], end_step: float) -> list[_Lane]:
    lanes: dict[str, list[StageEvent]] = {}
    latest_by_slot: dict[str, str] = {}
    for event in sorted(events, key=lambda e: e.step):
        if event.seed_id is not None:
            key = f"{event.slot} · {event.seed_id}"
            latest_by_slot[event.slot] = key
        else:
            key = latest_by_slot.get(event.slot, event.slot)
        lanes.setdefault(key, []).append(event)
    result: list[_Lane] = []
    for key, lane in lanes.items():
        segments: list[Segment] = []
        for index, event in enumerate(lane):
            end = lane[index + 1].step if index + 1 < len(lane) else max(end_step, event.step)
            if event.to_stage in STAGE_COLOURS:
                segments.append(Segment(event.to_stage, float(event.step), float(end)))
        if segments:
            blueprint = next((e.blueprint_id for e in lane if e.blueprint_id), None)
            seed_id = next((e.seed_id for e in lane if e.seed_id), None)
            result.append(_Lane(f"{key} ({blueprint})" if blueprint else key, seed_id, segments))
    return result


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


def _finite(values: Sequence[float]) -> bool:
    return any(math.isfinite(v) for v in values)


def _marker_labels(ax: Axes, events: Sequence[StageEvent], x_span: float) -> None:
    """Label markers in up to _LABEL_ROWS rows at the top of ``ax``; a label that fits in no row is left out."""
    row_ends = [-math.inf] * _LABEL_ROWS
    char_width = x_span / _CHARS_PER_AXES_WIDTH
    transform = ax.get_xaxis_transform()
    for event in events:
        verb, colour = MARKED_STAGES[event.to_stage]
        text = f"{verb} {event.slot}"
        if event.blueprint_id:
            text += f" {event.blueprint_id}"
        width = (len(text) + 2) * char_width
        for row in range(_LABEL_ROWS):
            if event.step >= row_ends[row]:
                row_ends[row] = event.step + width
                ax.text(
                    event.step,
                    0.97 - 0.075 * row,
                    f" {text}",
                    transform=transform,
                    fontsize=7,
                    va="top",
                    ha="left",
                    color=colour,
                    bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.75, "pad": 0.5},
                )
                break


def _draw_markers(ax: Axes, events: Sequence[StageEvent]) -> None:
    for event in events:
        ax.axvline(event.step, color=MARKED_STAGES[event.to_stage][1], linestyle="--", linewidth=0.9, alpha=0.7)


def render_report_png(
    curves: Curves, events: Sequence[StageEvent], *, title: str, pauses: Sequence[PauseEvent] = ()
) -> bytes:
    """The report as PNG bytes. Pure CPU work (a few hundred ms); call it from a thread or a script, not a loop."""
    figure = Figure(figsize=(12, 10), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    loss_ax, acc_ax, lane_ax = figure.subplots(3, 1, sharex=True, height_ratios=(3, 2, 2))
    figure.suptitle(title, fontsize=12)

    marked = sorted((e for e in events if e.to_stage in MARKED_STAGES), key=lambda e: e.step)
    all_x = [*curves.x, *(e.step for e in events)]
    x_min = min(all_x, default=0.0)
    x_max = max(all_x, default=1.0)
    x_span = max(x_max - x_min, 1.0)

    if _finite(curves.train_loss):
        loss_ax.plot(curves.x, curves.train_loss, marker="o", markersize=3, label="train loss", color="#1f77b4")
    if _finite(curves.val_loss):
        loss_ax.plot(curves.x, curves.val_loss, marker="o", markersize=3, label="validation loss", color="#ff7f0e")
    loss_ax.set_ylabel("loss")
    _draw_markers(loss_ax, marked)
    # Headroom above the curves for the marker labels.
    low, high = loss_ax.get_ylim()
    loss_ax.set_ylim(low, high + (high - low) * 0.35)
    _marker_labels(loss_ax, marked, x_span)
    if loss_ax.get_legend_handles_labels()[0]:
        loss_ax.legend(loc="lower left", fontsize=8)
    else:
        loss_ax.text(0.5, 0.5, "no epoch rows in metrics.csv", transform=loss_ax.transAxes, ha="center")
    loss_ax.grid(alpha=0.3)

    if _finite(curves.train_accuracy):
        acc_ax.plot(curves.x, curves.train_accuracy, marker="o", markersize=3, label="train accuracy", color="#1f77b4")
    if _finite(curves.val_accuracy):
        acc_ax.plot(
            curves.x, curves.val_accuracy, marker="o", markersize=3, label="validation accuracy", color="#ff7f0e"
        )
    acc_ax.set_ylabel("accuracy")
    _draw_markers(acc_ax, marked)
    if acc_ax.get_legend_handles_labels()[0]:
        acc_ax.legend(loc="lower right", fontsize=8)
    acc_ax.grid(alpha=0.3)

    lanes = _lanes(events, x_max)
    if lanes:
        spans = paused_spans(pauses, events, x_max)
        any_paused = False
        for index, lane in enumerate(lanes):
            for segment in lane.segments:
                lane_ax.broken_barh(
                    [(segment.start, max(segment.end - segment.start, x_span * 0.004))],
                    (index - 0.35, 0.7),
                    facecolors=STAGE_COLOURS[segment.stage],
                    edgecolor="white",
                    linewidth=0.5,
                )
            for start, end in spans.get(lane.seed_id or "", []):
                any_paused = True
                lane_ax.broken_barh(
                    [(start, max(end - start, x_span * 0.004))],
                    (index - 0.35, 0.7),
                    facecolors="none",
                    hatch=_PAUSE_HATCH,
                    edgecolor=_PAUSE_EDGE,
                    linewidth=0.0,
                )
        names = [lane.name for lane in lanes]
        lane_ax.set_yticks(range(len(names)), names, fontsize=8)
        lane_ax.set_ylim(len(names) - 0.5, -0.5)
        shown = sorted({segment.stage for lane in lanes for segment in lane.segments})
        handles = [Patch(facecolor=STAGE_COLOURS[stage], label=stage.name.lower()) for stage in shown]
        if any_paused:
            handles.append(Patch(facecolor="white", hatch=_PAUSE_HATCH, edgecolor=_PAUSE_EDGE, label="paused"))
        lane_ax.legend(
            handles=handles,
            loc="upper left",
            bbox_to_anchor=(1.005, 1.0),
            fontsize=8,
            title="stage",
            title_fontsize=8,
        )
    else:
        lane_ax.set_yticks([])
        lane_ax.text(0.5, 0.5, "no seed lifecycle events", transform=lane_ax.transAxes, ha="center", color="#636363")
    lane_ax.set_title("seed timeline", fontsize=9, loc="left")
    lane_ax.set_xlabel(curves.x_label)
    lane_ax.set_xlim(x_min - x_span * 0.01, x_max + x_span * 0.01)
    lane_ax.grid(axis="x", alpha=0.3)

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()
