"""What a ``--resume`` changes from the run's own config.toml: one notice per setting that differs."""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec

from esper.config import load_config
from esper.config_paths import absolute_paths
from esper.config_toml import format_value, plain
from esper.resume import threads_as_trained
from schemas.base import ConfigSection
from schemas.domain_enums import TelemetryLevel
from schemas.telemetry import TelemetryEvent

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from schemas.config import RunConfig

RESUME_SETTING_CHANGED = "esper.resume_setting_changed"


def changed_settings(
    before: ConfigSection, after: ConfigSection, path: tuple[str, ...] = ()
) -> Iterator[tuple[str, object, object]]:
    """Each key (recursively, dotted) whose value differs between two configs: its name and both values."""
    for name in before.__struct_fields__:
        old, new = getattr(before, name), getattr(after, name)
        if isinstance(old, ConfigSection) and isinstance(new, ConfigSection):
            yield from changed_settings(old, new, (*path, name))
        elif old != new:
            yield ".".join((*path, name)), old, new


def _shown(value: object) -> str:
    """A value as the config file writes it (strings quoted), or ``unset``."""
    return "unset" if value is None else format_value(plain(msgspec.to_builtins(value)))


def resume_changes(directory: Path, config: RunConfig) -> list[TelemetryEvent]:
    """A warning per setting of ``config`` that differs from the run's config.toml in ``directory`` (which the resume
    then rewrites): a resume with another config file silently trained 50 epochs of a 400-epoch run and moved its
    artifact store. The keys a resume may not change were refused before (esper.resume.check_resumable). Blocking."""
    # As the run trained: an earlier version's unset thread count was one thread, which the resume keeps; and a path an
    # earlier version wrote relative was read from the working directory, as it is now (the resume writes it absolute),
    # so that form alone is no change.
    earlier = threads_as_trained(directory, absolute_paths(load_config(directory / "config.toml", written=True)))
    config = absolute_paths(config)
    return [
        TelemetryEvent(
            name=RESUME_SETTING_CHANGED,
            level=TelemetryLevel.WARNING,
            description=f"{dotted}: {_shown(old)} in the run, {_shown(new)} now",
            attributes={"key": dotted, "in_run": _shown(old), "now": _shown(new)},
        )
        for dotted, old, new in changed_settings(earlier, config)
        # A resume keeps the run's id: a config that leaves it unset changes nothing.
        if not (dotted == "run_id" and new is None)
    ]
