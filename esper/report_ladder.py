"""report.png's emergency ladder: level bands on the curves, and a panel of the level with each move's reason.

Each level above L1 shades the steps the run spent at it (on the curves and the ladder panel); the panel draws the
level as a step line with a marker at each move (up or down) labelled with its reason where the label fits, and
marks each rollback (where the trainer went back to) and each L4 halt with a vertical line across the curves, labelled
in the panel's bottom row (the halt's reason in the panel's title). A legend names the levels shown, the rollback and
the halt.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from esper.report_labels import ellipsize
from esper.report_placement import plan_labels

if TYPE_CHECKING:
    from collections.abc import Sequence

    from matplotlib.axes import Axes
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.text import Text

    from esper.report_emergency import Ladder

LEVELS: Final[dict[int, tuple[str, str]]] = {
    1: ("L1 notice", "#737373"),
    2: ("L2 elevated", "#e6ab02"),
    3: ("L3 conservative", "#e6550d"),
    4: ("L4 halt", "#a50f15"),
}
"""Each level's legend name and colour (the bands are these colours, faint)."""

ROLLBACK_COLOUR: Final = "#6a51a3"
HALT_COLOUR: Final = "#a50f15"
_BAND_ALPHA: Final = 0.12
_FONT_SIZE: Final = 7
_REASON_WIDTH: Final = 48
"""A reason longer than this is cut in the middle (the run's events.jsonl and summary keep it whole)."""
_BOTTOM_ROW: Final = 0.7
"""The panel's row (in levels) for the rollback and halt labels, below L1's line."""


def shows_ladder(ladder: Ladder | None) -> bool:
    """Whether the run has anything for the ladder panel: a move off L1, a rollback or a halt."""
    if ladder is None:
        return False
    moved = ladder.moves or any(change.level != 1 for change in ladder.changes)
    return bool(moved or ladder.rollbacks or ladder.halts)


def level_spans(ladder: Ladder, end_step: float) -> list[tuple[float, float, int]]:
    """(start, end, level) for each stretch the run spent above L1, the last one to ``end_step``, in step order (a
    restore took back what the steps it went back over had drawn: see Ladder)."""
    spans: list[tuple[float, float, int]] = []
    changes = ladder.changes
    for index, change in enumerate(changes):
        end = float(changes[index + 1].step) if index + 1 < len(changes) else end_step
        if change.level > 1:
            spans.append((float(change.step), max(end, float(change.step)), change.level))
    return spans


def draw_bands(ax: Axes, ladder: Ladder, end_step: float) -> None:
    """The level bands, and each rollback's and halt's vertical line, on a panel of curves."""
    for start, end, level in level_spans(ladder, end_step):
        ax.axvspan(start, end, color=LEVELS.get(level, LEVELS[4])[1], alpha=_BAND_ALPHA, linewidth=0, zorder=0)
    _draw_lines(ax, ladder)


def _draw_lines(ax: Axes, ladder: Ladder) -> None:
    if ladder.rollbacks:
        ax.vlines(
            [rollback.step for rollback in ladder.rollbacks], 0.0, 1.0, transform=ax.get_xaxis_transform(),
            colors=ROLLBACK_COLOUR, linestyles=(0, (5, 2, 1, 2)), linewidth=1.2,
        )  # fmt: skip
    if ladder.halts:
        ax.vlines(
            [halt.step for halt in ladder.halts], 0.0, 1.0, transform=ax.get_xaxis_transform(), colors=HALT_COLOUR,
            linewidth=2.0,
        )  # fmt: skip


def draw_ladder(ax: Axes, ladder: Ladder, start_step: float, end_step: float) -> None:
    """The ladder panel (labels come after the layout: see label_ladder): the level over the steps from
    ``start_step`` to ``end_step``, the bands, a marker at each move (up or down), the rollback and halt lines and the
    legend."""
    draw_bands(ax, ladder, end_step)
    changes = ladder.changes
    if changes:
        first = min(start_step, float(changes[0].step))
        xs = [first] + [float(change.step) for change in changes] + [end_step]
        ys = [changes[0].previous] + [change.level for change in changes] + [changes[-1].level]
        ax.plot(xs, ys, drawstyle="steps-post", color="#525252", linewidth=1.2)
    for rising in (True, False):
        moves = [change for change in ladder.events if (change.level > change.previous) is rising]
        if moves:
            ax.scatter(
                [change.step for change in moves], [change.level for change in moves],
                c=[LEVELS.get(change.level, LEVELS[4])[1] for change in moves], marker="^" if rising else "v", s=36,
                zorder=3, edgecolors="black", linewidths=0.4,
            )  # fmt: skip
    ax.set_ylim(0.4, 4.8)
    ax.set_yticks(list(LEVELS), [f"L{level}" for level in LEVELS])
    ax.set_ylabel("emergency", fontsize=9)
    ax.set_title(ladder_title(ladder), fontsize=9, loc="left")
    ax.grid(axis="x", alpha=0.3)
    _ladder_legend(ax, ladder)


def ladder_title(ladder: Ladder) -> str:
    """The panel's title: the emergency events, rollbacks, and the halt that ended the run (step and reason)."""
    moves, rollbacks = ladder.moves, len(ladder.rollbacks)
    title = f"emergency level ({_count(moves, 'change')}, {_count(rollbacks, 'rollback')}"
    halt = ladder.last_halt
    return f"{title}; halted at step {halt.step}: {halt.reason or 'no reason given'})" if halt else f"{title})"


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def _ladder_legend(ax: Axes, ladder: Ladder) -> None:
    """The levels the run reached above L1, and the rollback and halt lines when there are some."""
    reached = sorted({change.level for change in ladder.changes if change.level > 1} & set(LEVELS))
    handles: list[Patch | Line2D] = [
        Patch(facecolor=LEVELS[level][1], alpha=0.5, label=LEVELS[level][0]) for level in reached
    ]
    if ladder.rollbacks:
        handles.append(Line2D([], [], color=ROLLBACK_COLOUR, linestyle=(0, (5, 2, 1, 2)), label="rollback"))
    if ladder.halts:
        handles.append(Line2D([], [], color=HALT_COLOUR, linewidth=2.0, label="halt"))
    if handles:
        ax.legend(
            handles=handles, loc="upper left", bbox_to_anchor=(1.005, 1.0), fontsize=8, title="emergency",
            title_fontsize=8,
        )  # fmt: skip


def ladder_labels(ladder: Ladder) -> list[tuple[float, float, tuple[str, str], str]]:
    """Each label the panel may show: (step, row in levels, its texts (full, short), colour). A move is labelled with
    its level and reason, a rollback with the step it went back to and the reason, a halt as such."""
    labels: list[tuple[float, float, tuple[str, str], str]] = []
    for change in ladder.events:
        colour = LEVELS.get(change.level, LEVELS[4])[1]
        reason = ellipsize(change.reason, _REASON_WIDTH)
        labels.append((change.step, change.level + 0.3, (f" L{change.level} {reason} ", f" L{change.level} "), colour))
    for rollback in ladder.rollbacks:
        full = f" rolled back to {rollback.step} ({ellipsize(rollback.reason, _REASON_WIDTH)}) "
        labels.append((rollback.step, _BOTTOM_ROW, (full, f" rolled back to {rollback.step} "), ROLLBACK_COLOUR))
    for halt in ladder.halts:  # its reason in the panel's title (see ladder_title): the row has no room for it
        labels.append((halt.step, _BOTTOM_ROW, (" halted ", " halted "), HALT_COLOUR))
    return labels


def label_ladder(ax: Axes, ladder: Ladder, canvas: FigureCanvasAgg) -> list[Text]:
    """Place the panel's labels, each beside its marker in its row where it fits (the full text, else the short one,
    else none: see plan_labels), measured as drawn. Call it once the figure is otherwise complete. Returns them."""
    canvas.figure.draw_without_rendering()
    placed: list[Text] = []
    candidates = ladder_labels(ladder)
    probe = ax.text(0, 0, "", fontsize=_FONT_SIZE)
    bounds = ax.get_window_extent().intervalx
    for row in sorted({label[1] for label in candidates}):
        in_row = sorted((label for label in candidates if label[1] == row), key=lambda label: label[0])
        widths = [[_width(probe, text) for text in label[2]] for label in in_row]
        xs = [float(ax.transData.transform((label[0], 0.0))[0]) for label in in_row]
        for (step, y, texts, colour), spot in zip(in_row, plan_labels(xs, widths, bounds, 1), strict=True):
            if spot is None:
                continue
            text = ax.text(
                step, y, texts[spot.text], fontsize=_FONT_SIZE, va="center", ha="left" if spot.right else "right",
                color=colour, bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.75, "pad": 0.5},
            )  # fmt: skip
            text.set_in_layout(False)  # the layout was settled without it
            placed.append(text)
    probe.remove()
    return placed


def _width(probe: Text, text: str) -> float:
    probe.set_text(text)
    return float(probe.get_window_extent().width)


def ladder_steps(ladder: Ladder | None) -> Sequence[float]:
    """Every step the ladder draws at (for the shared axis's range)."""
    if ladder is None:
        return []
    return [
        *(float(change.step) for change in ladder.changes),
        *(float(rollback.step) for rollback in ladder.rollbacks),
        *(float(halt.step) for halt in ladder.halts),
    ]
