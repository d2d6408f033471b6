"""Rendering of report.png with matplotlib's Agg backend (no display): curves, lifecycle markers, a seed timeline.

Panels, sharing the step axis (integer ticks): losses (train, validation) with lifecycle markers, the labels that fit
and a legend of the marker kinds; accuracies with the same markers; the seed timeline (esper.report_timeline: one row
per slot, each seed's stages as coloured segments on it, hatched where the seed was paused) and a legend of the stages
shown. Long slot names are shortened (see esper.report_labels) so that the labels leave the curves their width. The
markers of a kind are one collection per panel, so a run of hundreds of seeds draws as fast as one of a few.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Literal, final

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from esper.report_labels import ellipsize, short_slot_names
from esper.report_timeline import BLUEPRINT_WIDTH, SLOT_WIDTH, draw_timeline, label_seeds
from schemas.enums import SeedLifecycleStage as Stage

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from matplotlib.axes import Axes
    from matplotlib.text import Text

MARKED_STAGES: Final[dict[Stage, tuple[str, str, Literal["-", "--", "-.", ":"]]]] = {
    Stage.GERMINATED: ("germinated", "#2171b5", "--"),
    Stage.BLENDING: ("blending", "#d94801", "-."),
    Stage.FOSSILIZED: ("fossilized", "#238b45", "-"),
    Stage.CULLED: ("culled", "#cb181d", ":"),
}
"""Transitions into these stages get a vertical marker on the curves (name, a colour dark enough for text, a line
style: blending's orange and culled's red are told apart by it too), labelled with slot and blueprint where the label
fits; the legend names every kind shown."""

_LABEL_ROWS: Final = 4
_LABEL_FONT_SIZE: Final = 7
_SPARSE_MARKERS: Final = 60
"""Up to this many markers are drawn at full strength; more fade with their number."""
_LABELLED_MARKERS: Final = 120
"""Beyond this many markers none is labelled: a few pixels apart, a label could not be told to be its marker's (the
timeline below names each seed's slot at the same step)."""


@final
@dataclass(frozen=True, slots=True)
class StageEvent:
    """One lifecycle transition as read back from events.jsonl: at ``step``, the step its plan took effect
    (``planned_step``: the step it was planned for, when the trainer refused it there and it took effect later)."""

    step: int
    slot: str
    to_stage: Stage
    from_stage: Stage | None = None
    seed_id: str | None = None
    blueprint_id: str | None = None
    planned_step: int | None = None


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


def _finite(values: Sequence[float]) -> bool:
    return any(math.isfinite(v) for v in values)


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


def _marker_labels(ax: Axes, events: Sequence[StageEvent], slots: Mapping[str, str], canvas: FigureCanvasAgg) -> None:
    """Label markers in up to _LABEL_ROWS rows at the top of ``ax``, measured as drawn (see plan_labels): the kind,
    slot and blueprint, or the slot alone (the colour names the kind). A marker no label fits beside keeps its colour
    and line style, which the legend names, and its seed's bar on its slot's row below. Call it once the figure is
    otherwise complete: the layout it measures against must not change."""
    canvas.figure.draw_without_rendering()  # settles the constrained layout: the axes' width in pixels is final
    texts: list[tuple[str, str]] = []
    for event in events:
        slot = slots.get(event.slot, event.slot)
        full = f"{MARKED_STAGES[event.to_stage][0]} {slot}"
        if event.blueprint_id:
            full += f" {ellipsize(event.blueprint_id, BLUEPRINT_WIDTH)}"
        texts.append((f" {full} ", f" {slot} "))
    probe = ax.text(0, 0, "", fontsize=_LABEL_FONT_SIZE)
    measured: dict[str, float] = {}  # a long run repeats a few texts hundreds of times: each is measured once
    widths = [[measured.get(text) or measured.setdefault(text, _width(probe, text)) for text in pair] for pair in texts]
    probe.remove()
    xs = [float(ax.transData.transform((event.step, 0.0))[0]) for event in events]
    plan = plan_labels(xs, widths, ax.get_window_extent().intervalx, _LABEL_ROWS)
    for event, pair, spot in zip(events, texts, plan, strict=True):
        if spot is None:
            continue
        label = ax.text(
            event.step,
            0.97 - 0.075 * spot.row,
            pair[spot.text],
            transform=ax.get_xaxis_transform(),
            fontsize=_LABEL_FONT_SIZE,
            va="top",
            ha="left" if spot.right else "right",
            color=MARKED_STAGES[event.to_stage][1],
            bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.75, "pad": 0.5},
        )
        label.set_in_layout(False)  # the layout was settled without it


def _width(probe: Text, text: str) -> float:
    probe.set_text(text)
    return float(probe.get_window_extent().width)  # measured by the renderer of the figure's last draw


def _draw_markers(ax: Axes, events: Sequence[StageEvent]) -> None:
    """One collection of vertical lines per marker kind, fainter the more there are (hundreds would hide the curves)."""
    alpha = 0.7 if len(events) <= _SPARSE_MARKERS else max(0.12, 0.7 * _SPARSE_MARKERS / len(events))
    for stage, (_, colour, style) in MARKED_STAGES.items():
        xs = [event.step for event in events if event.to_stage is stage]
        if xs:
            ax.vlines(
                xs, 0.0, 1.0, transform=ax.get_xaxis_transform(), colors=colour, linestyles=style, linewidth=0.9,
                alpha=alpha,
            )  # fmt: skip


def _marker_legend(ax: Axes, events: Sequence[StageEvent]) -> None:
    """Every kind of marker drawn, by colour and line style: a marker whose label did not fit is still named."""
    kinds = [stage for stage in MARKED_STAGES if any(event.to_stage is stage for event in events)]
    if not kinds:
        return
    handles = [
        Line2D([], [], color=colour, linestyle=style, linewidth=1.2, label=verb)
        for verb, colour, style in (MARKED_STAGES[stage] for stage in kinds)
    ]
    ax.add_artist(
        ax.legend(
            handles=handles,
            loc="upper left",
            bbox_to_anchor=(1.005, 1.0),
            fontsize=8,
            title="marker",
            title_fontsize=8,
        )
    )


def render_report_png(
    curves: Curves,
    events: Sequence[StageEvent],
    *,
    title: str,
    pauses: Sequence[PauseEvent] = (),
    timeline_note: str = "",
) -> bytes:
    """The report as PNG bytes. Pure CPU work (a few hundred ms); call it from a thread or a script, not a loop."""
    buffer = io.BytesIO()
    report_figure(curves, events, title=title, pauses=pauses, timeline_note=timeline_note).savefig(buffer, format="png")
    return buffer.getvalue()


def report_figure(
    curves: Curves,
    events: Sequence[StageEvent],
    *,
    title: str,
    pauses: Sequence[PauseEvent] = (),
    timeline_note: str = "",
) -> Figure:
    """The report's figure, laid out (render_report_png saves it); ``timeline_note`` follows the seed timeline's
    title (what it leaves out). Pure CPU work, as that."""
    figure = Figure(figsize=(12, 10), dpi=100, layout="constrained")
    canvas = FigureCanvasAgg(figure)
    loss_ax, acc_ax, lane_ax = figure.subplots(3, 1, sharex=True, height_ratios=(3, 2, 2))
    figure.suptitle(title, fontsize=12)

    marked = sorted((e for e in events if e.to_stage in MARKED_STAGES), key=lambda e: e.step)
    all_x = [x for x in (*curves.x, *(e.step for e in events)) if math.isfinite(x)]
    x_min = min(all_x, default=0.0)
    x_max = max(all_x, default=1.0)
    x_span = max(x_max - x_min, 1.0)
    # One epoch (or every point at one step) spans nothing: a few steps either side, not 19.99 to 20.01.
    x_pad = x_span * 0.01 if x_max > x_min else max(1.0, abs(x_max) * 0.1)
    slots = short_slot_names((e.slot for e in events), SLOT_WIDTH)

    if _finite(curves.train_loss):
        loss_ax.plot(curves.x, curves.train_loss, marker="o", markersize=3, label="train loss", color="#1f77b4")
    if _finite(curves.val_loss):
        loss_ax.plot(curves.x, curves.val_loss, marker="o", markersize=3, label="validation loss", color="#ff7f0e")
    loss_ax.set_ylabel("loss")
    _draw_markers(loss_ax, marked)
    labelled = marked if len(marked) <= _LABELLED_MARKERS else []
    if labelled:  # headroom above the curves for the marker labels
        low, high = loss_ax.get_ylim()
        loss_ax.set_ylim(low, high + (high - low) * 0.35)
    _marker_legend(loss_ax, marked)
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

    rows = draw_timeline(lane_ax, events, pauses, end_step=x_max, x_span=x_span)
    if not rows:
        lane_ax.set_yticks([])
        lane_ax.text(0.5, 0.5, "no seed lifecycle events", transform=lane_ax.transAxes, ha="center", color="#636363")
    lane_ax.set_title(f"seed timeline ({timeline_note})" if timeline_note else "seed timeline", fontsize=9, loc="left")
    lane_ax.set_xlabel(curves.x_label)
    lane_ax.set_xlim(x_min - x_pad, x_max + x_pad)
    lane_ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps and epochs are whole numbers
    lane_ax.grid(axis="x", alpha=0.3)
    _marker_labels(loss_ax, labelled, slots, canvas)
    label_seeds(lane_ax, rows)
    return figure
