"""The names a run directory's files go by: the defaults, or what the run's resolved config.toml set."""

from __future__ import annotations

import tomllib
from typing import TYPE_CHECKING, Final, NamedTuple, final

if TYPE_CHECKING:
    from pathlib import Path

METRICS_CSV: Final = "metrics.csv"
EVENTS_JSONL: Final = "events.jsonl"
SUMMARY_JSON: Final = "summary.json"


@final
class RunFiles(NamedTuple):
    """The names of a run directory's files, as its config.toml set them (``logging.json_file`` and Nissa's)."""

    events: str = EVENTS_JSONL
    metrics: str = METRICS_CSV
    summary: str = SUMMARY_JSON


def run_files(run_dir: Path) -> RunFiles:
    """The file names the run in ``run_dir`` wrote, from its resolved config.toml; the defaults without one (or
    for a name it does not set)."""
    try:
        table = tomllib.loads((run_dir / "config.toml").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return RunFiles()

    def name(section: str, key: str, default: str) -> str:
        value = table.get(section, {}).get(key) if isinstance(table.get(section), dict) else None
        return value if isinstance(value, str) and value else default

    return RunFiles(
        events=name("logging", "json_file", EVENTS_JSONL),
        metrics=name("nissa", "metrics_csv", METRICS_CSV),
        summary=name("nissa", "summary_json", SUMMARY_JSON),
    )
