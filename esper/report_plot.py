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
from esper.report_ladder import draw_bands, draw_ladder, label_ladder, ladder_steps, shows_ladder
from esper.report_placement import plan_labels
from esper.report_timeline import BLUEPRINT_WIDTH, SLOT_WIDTH, draw_timeline, label_seeds
from schemas.enums import SeedLifecycleStage as Stage

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from matplotlib.axes import Axes
    from matplotlib.text import Text

    from esper.report_emergency import Ladder

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
    ladder: Ladder | None = None,
) -> bytes:
    """The report as PNG bytes. Pure CPU work (a few hundred ms); call it from a thread or a script, not a loop."""
    buffer = io.BytesIO()
    figure = report_figure(curves, events, title=title, pauses=pauses, timeline_note=timeline_note, ladder=ladder)
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def report_figure(
    curves: Curves,
    events: Sequence[StageEvent],
    *,
    title: str,
    pauses: Sequence[PauseEvent] = (),
    timeline_note: str = "",
    ladder: Ladder | None = None,
) -> Figure:
    """The report's figure, laid out (render_report_png saves it); ``timeline_note`` follows the seed timeline's
    title (what it leaves out). A run whose emergency ``ladder`` moved off L1, rolled back or halted gets its panel
    above the seed timeline (see esper.report_ladder); the axes are loss, accuracy, timeline, then that panel. Pure
    CPU work, as that."""
    figure = Figure(figsize=(12, 10), dpi=100, layout="constrained")
    canvas = FigureCanvasAgg(figure)
    shown = ladder if shows_ladder(ladder) else None
    grid = figure.add_gridspec(4 if shown else 3, 1, height_ratios=(3, 2, 1.2, 2) if shown else (3, 2, 2))
    loss_ax = figure.add_subplot(grid[0])
    acc_ax = figure.add_subplot(grid[1], sharex=loss_ax)
    lane_ax = figure.add_subplot(grid[-1], sharex=loss_ax)
    ladder_ax = figure.add_subplot(grid[2], sharex=loss_ax) if shown else None
    for upper in (loss_ax, acc_ax, ladder_ax):
        if upper is not None:
            upper.tick_params(labelbottom=False)  # the timeline at the bottom names the steps
    figure.suptitle(title, fontsize=12)

    marked = sorted((e for e in events if e.to_stage in MARKED_STAGES), key=lambda e: e.step)
    all_x = [x for x in (*curves.x, *(e.step for e in events), *ladder_steps(shown)) if math.isfinite(x)]
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
    if shown is not None:
        draw_bands(loss_ax, shown, x_max)
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
    if shown is not None:
        draw_bands(acc_ax, shown, x_max)
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
    if ladder_ax is not None and shown is not None:
        draw_ladder(ladder_ax, shown, x_min, x_max)
    _marker_labels(loss_ax, labelled, slots, canvas)
    label_seeds(lane_ax, rows)
    if ladder_ax is not None and shown is not None:
        label_ladder(ladder_ax, shown, canvas)
    return figure
