"""A synthetic run directory for the report tests: metrics.csv, events.jsonl with lifecycle events, summary.json."""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING

from actors.nissa.csv_writer import format_row, header_line
from actors.nissa.metrics import METRICS_COLUMNS

if TYPE_CHECKING:
    from pathlib import Path

    from actors.nissa.metrics import CellValue

STEPS_PER_EPOCH = 100

# (step, slot, seed_id, blueprint_id, from_stage, to_stage): two seeds fossilize, one is culled and its slot reset.
TRANSITIONS: list[tuple[int, str, str | None, str | None, str, str]] = [
    (300, "features.1", "seed-1", "BP001", "DORMANT", "GERMINATED"),
    (320, "features.1", "seed-1", "BP001", "GERMINATED", "TRAINING"),
    (500, "features.1", "seed-1", "BP001", "TRAINING", "BLENDING"),
    (700, "features.1", "seed-1", "BP001", "BLENDING", "SHADOWING"),
    (800, "features.1", "seed-1", "BP001", "SHADOWING", "PROBATIONARY"),
    (1000, "features.1", "seed-1", "BP001", "PROBATIONARY", "FOSSILIZED"),
    (600, "features.3", "seed-2", "BP005", "DORMANT", "GERMINATED"),
    (620, "features.3", "seed-2", "BP005", "GERMINATED", "TRAINING"),
    (900, "features.3", "seed-2", "BP005", "TRAINING", "CULLED"),
    (905, "features.3", None, None, "CULLED", "EMBARGOED"),
    (1100, "features.3", None, None, "EMBARGOED", "RESETTING"),
    (1110, "features.3", None, None, "RESETTING", "DORMANT"),
    (1200, "features.3", "seed-3", "BP002", "DORMANT", "GERMINATED"),
    (1220, "features.3", "seed-3", "BP002", "GERMINATED", "TRAINING"),
    (1400, "features.3", "seed-3", "BP002", "TRAINING", "BLENDING"),
    (1600, "features.3", "seed-3", "BP002", "BLENDING", "SHADOWING"),
]


def synthetic_row(epoch: int) -> dict[str, CellValue]:
    row: dict[str, CellValue] = dict.fromkeys(METRICS_COLUMNS)
    row.update(
        epoch=epoch,
        step=(epoch + 1) * STEPS_PER_EPOCH,
        train_loss=1.8 * math.exp(-epoch / 6) + 0.2,
        train_accuracy=min(0.98, 0.3 + 0.05 * epoch),
        val_loss=1.9 * math.exp(-epoch / 7) + 0.3,
        val_accuracy=min(0.95, 0.25 + 0.045 * epoch),
        step_ms=7.5,
        host_parameters=12_000,
        seed_parameters=800 if epoch >= 3 else 0,
        emergency_level=1,
        wall_time_s=epoch * 2.5,
    )
    return row


def write_run(
    run_dir: Path, *, epochs: int = 18, lifecycle: bool = True, summary: bool = True, last_step: int | None = None
) -> Path:
    """Write a synthetic run into ``run_dir`` (created) and return it; ``last_step``: the summary's last trained
    step (none by default)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    csv_text = header_line() + "".join(format_row(synthetic_row(epoch)) for epoch in range(epochs))
    (run_dir / "metrics.csv").write_text(csv_text, encoding="utf-8")
    lines: list[dict[str, object]] = [
        {"timestamp": "2026-01-01T00:00:00Z", "level": "info", "event": "run_starting", "run_id": run_dir.name},
    ]
    if lifecycle:
        for step, slot, seed_id, blueprint_id, from_stage, to_stage in TRANSITIONS:
            lines.append(
                {
                    "timestamp": "2026-01-01T00:00:01Z",
                    "level": "info",
                    "event": "seed_stage",
                    "actor": "kasmina",
                    "slot": slot,
                    "seed_id": seed_id,
                    "blueprint_id": blueprint_id,
                    "from_stage": from_stage,
                    "to_stage": to_stage,
                    "step": step,
                }
            )
    text = "".join(json.dumps(line) + "\n" for line in lines) + '{"torn": '
    (run_dir / "events.jsonl").write_text(text, encoding="utf-8")
    if summary:
        (run_dir / "summary.json").write_text(
            json.dumps(
                {
                    "run_id": run_dir.name,
                    "run_dir": str(run_dir),
                    "status": "completed",
                    "started_at": "2026-01-01T00:00:00.000000Z",
                    "duration_s": 45.0,
                    "exit_code": 0,
                    "dead_letters": 0,
                    "actors": [],
                    "error": None,
                    **({"training": {"global_step": last_step}} if last_step is not None else {}),
                }
            ),
            encoding="utf-8",
        )
    return run_dir
