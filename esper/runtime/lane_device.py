"""Device specs for lanes: ``"auto"``, ``"cpu"`` or ``"cuda[:n]"`` resolved to the concrete torch device."""

from __future__ import annotations

import torch


def resolve_device(spec: str | torch.device) -> torch.device:
    """Turn ``"auto"``, ``"cpu"`` or ``"cuda[:n]"`` (or such a torch.device) into a concrete device.

    ``"auto"`` is CUDA (the current device) if torch sees one, else CPU; an unindexed CUDA device is the current one.
    May initialise CUDA; never call at import.

    Raises:
        ValueError: spec is none of those, or names a CUDA device that is not available.
    """
    if isinstance(spec, torch.device):
        spec = str(spec)  # named in the errors as the config would spell it
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(spec)
    except RuntimeError as err:
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:n]', got {spec!r}") from err
    if device.type == "cpu":
        return torch.device("cpu")
    if device.type != "cuda":
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:n]', got {spec!r}")
    if not torch.cuda.is_available():
        raise ValueError(f"device {spec!r} needs CUDA, which torch reports as not available")
    index = torch.cuda.current_device() if device.index is None else device.index
    if index >= torch.cuda.device_count():
        raise ValueError(f"device {spec!r} does not exist: torch sees {torch.cuda.device_count()} CUDA devices")
    return torch.device("cuda", index)
