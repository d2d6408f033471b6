"""report.png's seed timeline: one row per slot whatever the seed count, drawn as a few collections."""

from __future__ import annotations

from matplotlib.collections import LineCollection, PolyCollection

from esper.report_plot import Curves, PauseEvent, StageEvent, report_figure
from esper.report_timeline import row_labels, slot_rows
from schemas.enums import SeedLifecycleStage as Stage

SEED_STAGES = ((0, Stage.GERMINATED), (2, Stage.TRAINING), (5, Stage.BLENDING), (9, Stage.CULLED))
SLOT_STAGES = ((9, Stage.EMBARGOED), (10, Stage.RESETTING), (11, Stage.DORMANT))


def _churn(seeds: int, slots: int) -> list[StageEvent]:
    """A long churny run: ``seeds`` seeds over ``slots`` slots, each germinated, culled and its slot reset."""
    events: list[StageEvent] = []
    for index in range(seeds):
        slot = f"blocks.{index % slots}"
        start = 100 + (index // slots) * 12 + index % slots
        seed_id = f"seed-{slot}-{start}"
        events += [
            StageEvent(start + at, slot, stage, seed_id=seed_id, blueprint_id="BP005") for at, stage in SEED_STAGES
        ]
        events += [StageEvent(start + at, slot, stage) for at, stage in SLOT_STAGES]
    return events


def _curves(last_step: int) -> Curves:
    xs = [float(step) for step in range(3, last_step + 3, 3)]
    values = [1.0 / (1 + i) for i in range(len(xs))]
    return Curves(x=xs, train_loss=values, val_loss=values, train_accuracy=values, val_accuracy=values)


def test_hundreds_of_seeds_draw_one_row_per_slot_in_a_few_artists() -> None:
    """Run r3 of the long sweep (182 seeds; 1500 epochs): one lane per seed made the labels a black block, and the
    2,500 broken_barh calls, axvlines and marker labels took 10-16 s and 100 MB."""
    events = _churn(400, 4)
    pauses = [PauseEvent(e.step + 1, e.seed_id) for e in events if e.to_stage is Stage.BLENDING and e.seed_id]
    figure = report_figure(_curves(max(e.step for e in events)), events, title="churn", pauses=pauses)
    loss_ax, acc_ax, lane_ax = figure.axes[:3]
    assert [label.get_text() for label in lane_ax.get_yticklabels()] == [
        f"blocks.{i} · 100 seeds (BP005)" for i in range(4)
    ]
    polygons = [c for c in lane_ax.collections if isinstance(c, PolyCollection)]
    assert len(polygons) == 2  # every stage segment in one, every pause in the other
    assert len(polygons[0].get_paths()) == 400 * 6  # each seed's four stages, its slot's embargo and reset
    assert len(polygons[1].get_paths()) == 400
    assert len([c for c in lane_ax.collections if isinstance(c, LineCollection)]) == 1  # the seeds' starts
    assert len(lane_ax.texts) <= 4 * 30  # a seed is named only where its own span has room
    for ax in (loss_ax, acc_ax):
        assert len(ax.collections) == 3  # one per marker kind, not one line per marker
        assert [line.get_label() for line in ax.lines] == [f"train {ax.get_ylabel()}", f"validation {ax.get_ylabel()}"]
    assert not [text for text in loss_ax.texts if text.get_text().strip()]  # 1,200 markers: no label is its own


def test_a_slots_seeds_share_its_row_each_named_where_there_is_room() -> None:
    events = _churn(3, 2)
    assert [(row.slot, [lane.seed_id for lane in row.lanes]) for row in slot_rows(events, 200.0)] == [
        ("blocks.0", ["seed-blocks.0-100", "seed-blocks.0-112"]),
        ("blocks.1", ["seed-blocks.1-101"]),
    ]
    assert row_labels(events) == ["blocks.0 · 2 seeds (BP005)", "blocks.1 · seed-…-101 (BP005)"]
    figure = report_figure(_curves(130), events, title="few")
    lane_ax = figure.axes[2]
    # blocks.1's only seed is named by its row; blocks.0's two on their bars, over their own 12 steps of 130.
    assert sorted(text.get_text().strip() for text in lane_ax.texts) == ["seed-…-100", "seed-…-112"]


def test_slots_come_in_natural_order() -> None:
    events = [StageEvent(10, f"blocks.{i}", Stage.GERMINATED, seed_id=f"s{i}") for i in (10, 2, 1)]
    assert [row.slot for row in slot_rows(events, 20.0)] == ["blocks.1", "blocks.2", "blocks.10"]
