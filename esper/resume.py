"""What ``--resume`` checks before it touches a run directory: the config still trains the same run."""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from esper.baseline import SAME_TRAINING
from esper.config import load_config
from esper.runtime.errors import ConfigError

if TYPE_CHECKING:
    from pathlib import Path

    from schemas.config import RunConfig

# Everything the checkpoint, the batch order and the controller's journal depend on. tolaria.epochs may grow (train
# further); device, threads, logging and the like may change freely.
SAME_RUN: Final = (
    *(f"tolaria.{key}" for key in SAME_TRAINING if key != "epochs"),
    "kasmina.slot_targets",
    "tamiyo.policy",
)


def check_resumable(directory: Path, config: RunConfig) -> None:
    """Refuse a resume whose config would train a different run than the one in ``directory`` (its config.toml).

    A run directory without a readable config.toml (made by an older version, or by hand) is not checked: the
    checkpoint's own checks still apply. Blocking (file I/O).

    Raises:
        ConfigError: one line naming the first differing key and both values.
    """
    try:
        earlier = load_config(directory / "config.toml")
    except ConfigError:
        return
    for dotted in SAME_RUN:
        section, key = dotted.split(".")
        theirs, ours = getattr(getattr(earlier, section), key), getattr(getattr(config, section), key)
        if theirs != ours:
            raise ConfigError(
                f"--resume {directory}: {dotted} is {theirs!r} in the run and {ours!r} here; a resume continues the"
                " same training (drop that change, or start a new run)"
            )
