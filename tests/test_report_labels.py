"""report.png's labels: long slot names shortened to what tells them apart, every marker named, a sane step axis."""

from __future__ import annotations

import math

from matplotlib.legend import Legend
from matplotlib.text import Text

from esper.report_labels import ellipsize, seed_tag, short_slot_names
from esper.report_placement import LabelSpot, plan_labels
from esper.report_plot import Curves, StageEvent, report_figure
from esper.report_timeline import row_labels
from schemas.enums import SeedLifecycleStage as Stage

DEEP = "encoder_stack.residual_layers.{}.feed_forward_projection"


def _curves(xs: list[float]) -> Curves:
    values = [1.0 / (1 + i) for i in range(len(xs))]
    return Curves(x=xs, train_loss=values, val_loss=values, train_accuracy=values, val_accuracy=values)


def _deep_events() -> list[StageEvent]:
    events = []
    for index, step in enumerate((60, 100, 140)):
        slot = DEEP.format(index)
        for offset, stage in ((0, Stage.GERMINATED), (40, Stage.BLENDING), (80, Stage.CULLED)):
            seed = f"seed-{slot}-{step}"
            events.append(StageEvent(step + offset, slot, stage, seed_id=seed, blueprint_id=f"BP00{index + 1}"))
    return events


def test_ellipsize_cuts_the_middle_and_keeps_both_ends() -> None:
    assert ellipsize("short", 10) == "short"
    assert ellipsize("abcdefghijkl", 7) == "abc…jkl"
    assert len(ellipsize("abcdefghijkl", 8)) == 8


def test_slot_names_lose_the_components_every_slot_shares_and_keep_what_tells_them_apart() -> None:
    names = short_slot_names([DEEP.format(i) for i in range(3)], 24)
    assert names == {DEEP.format(i): f"…residual_layers.{i}…" for i in range(3)}
    assert short_slot_names(["blocks.0", "blocks.1"], 24) == {"blocks.0": "blocks.0", "blocks.1": "blocks.1"}
    (alone,) = short_slot_names(["a_single_very_long_module_name.with_parts"], 24).values()
    assert len(alone) == 24
    assert alone == "a_single_ver….with_parts"


def test_a_seed_id_that_names_its_slot_drops_it() -> None:
    assert seed_tag(f"seed-{DEEP.format(0)}-60", DEEP.format(0), 16) == "seed-…-60"
    assert seed_tag("my-own-seed", "blocks.1", 16) == "my-own-seed"


def test_row_labels_name_the_slot_once_and_stay_short() -> None:
    """Each lane read "slot · seed-slot-N (bp)", 110 characters for a deep model: the curves kept 5 % of the width."""
    assert row_labels(_deep_events()) == [
        f"…residual_layers.{i}… · seed-…-{step} (BP00{i + 1})" for i, step in enumerate((60, 100, 140))
    ]


def test_the_curves_keep_most_of_the_width_with_long_slot_names() -> None:
    figure = report_figure(_curves([20.0 * i for i in range(1, 21)]), _deep_events(), title="deep")
    figure.draw_without_rendering()
    loss_ax = figure.axes[0]
    assert loss_ax.get_position().width > 0.6
    labels = [text for text in loss_ax.texts if text.get_text().strip()]
    figure_right = figure.bbox.x1
    assert all(label.get_window_extent().x1 <= figure_right for label in labels)


def test_crowded_markers_each_get_a_label_the_slot_alone_when_the_full_one_does_not_fit() -> None:
    """Only 4 rows of full labels: 5 of 12 markers, both culls among them, had none."""
    xs = [48.0 + 18 * i for i in range(12)]
    plan = plan_labels(xs, [(130.0, 40.0)] * 12, (0.0, 900.0), 4)
    assert None not in plan
    spans: dict[int, list[tuple[float, float]]] = {}
    for x, spot in zip(xs, plan, strict=True):
        assert isinstance(spot, LabelSpot)
        width = (130.0, 40.0)[spot.text]
        span = (x, x + width) if spot.right else (x - width, x)
        assert all(span[1] <= a or b <= span[0] for a, b in spans.get(spot.row, []))
        spans.setdefault(spot.row, []).append(span)
    assert any(spot is not None and spot.text == 0 for spot in plan)  # widened where there is room
    # Sparse markers keep their full labels, and the last one turns left at the right edge.
    assert plan_labels([100.0, 880.0], [(130.0, 40.0)] * 2, (0.0, 900.0), 4) == [
        LabelSpot(0, 0, right=True),
        LabelSpot(0, 0, right=False),
    ]


def test_every_marker_kind_drawn_is_in_the_legend() -> None:
    figure = report_figure(_curves([20.0 * i for i in range(1, 21)]), _deep_events(), title="deep")
    legends = [artist for artist in figure.axes[0].artists if isinstance(artist, Legend)]
    assert [[text.get_text() for text in legend.get_texts()] for legend in legends] == [
        ["germinated", "blending", "culled"]
    ]
    marker_labels = [text for text in figure.axes[0].texts if isinstance(text, Text) and text.get_text().strip()]
    assert len(marker_labels) == 9  # one per marker


def test_a_single_epoch_gets_a_few_steps_either_side_and_whole_ticks() -> None:
    """tolaria.epochs=1: the axis ran 19.99 to 20.01 with ticks like 19.9975."""
    figure = report_figure(_curves([20.0]), [], title="one")
    figure.draw_without_rendering()
    low, high = figure.axes[2].get_xlim()
    assert (low, high) == (18.0, 22.0)
    ticks = [tick for tick in figure.axes[2].get_xticks() if low <= tick <= high]
    assert ticks
    assert all(math.isclose(tick, round(tick)) for tick in ticks)
