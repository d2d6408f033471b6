"""Which of NVML's devices CUDA_VISIBLE_DEVICES lets CUDA (and so torch) see, in the order torch numbers them cuda:N."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, final

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

__all__ = ["VisibleDevices", "visible_devices"]


@final
@dataclass(frozen=True, slots=True)
class VisibleDevices:
    """NVML's indices of the devices torch sees, ``nvml_indices[n]`` being torch's ``cuda:n``.

    ``by_index``: found by position (no CUDA_VISIBLE_DEVICES, or one of indices), which assumes CUDA numbers devices
    in NVML's PCI order; False when matched by UUID. ``note``: why the list is every device instead (a value that
    could not be mapped), else None.
    """

    nvml_indices: tuple[int, ...]
    by_index: bool
    note: str | None = None


def visible_devices(value: str | None, count: int, uuids: Callable[[], Sequence[str] | None]) -> VisibleDevices:
    """Map ``CUDA_VISIBLE_DEVICES`` (``value``; None when unset) onto NVML's ``count`` devices as CUDA reads it.

    A list of indices or of ``GPU-`` UUIDs (a unique prefix is enough), in the order given; the first entry that is
    not one (a negative or unknown index, a UUID matching no device or several) ends the list, a repeated one makes
    it empty, and an empty value hides every device, as in CUDA. ``MIG-`` instances have no device of NVML's own, and a
    value of which no entry names a device cannot be mapped: both give every device, with a note. ``uuids`` (NVML's,
    by index; None when they cannot be read, which gives every device with a note) is called only for a list of
    UUIDs.
    """
    everything = tuple(range(count))
    if value is None:
        return VisibleDevices(everything, by_index=True)
    entries = [entry.strip() for entry in value.split(",")]
    if value.strip() == "":
        return VisibleDevices((), by_index=True)
    if entries[0].startswith("MIG-"):
        note = f"CUDA_VISIBLE_DEVICES={value!r} names MIG instances, which NVML's device list cannot map"
        return VisibleDevices(everything, by_index=True, note=note)
    by_index = not entries[0].startswith("GPU-")
    if by_index:
        found = _by_index(entries, count)
    else:
        known = uuids()
        if known is None:
            note = f"CUDA_VISIBLE_DEVICES={value!r} names UUIDs, and NVML's could not be read"
            return VisibleDevices(everything, by_index=True, note=note)
        found = _by_uuid(entries, list(known))
    if found is None:
        note = f"CUDA_VISIBLE_DEVICES={value!r} names no device NVML knows of"
        return VisibleDevices(everything, by_index=True, note=note)
    return VisibleDevices(found, by_index=by_index)


def _by_index(entries: list[str], count: int) -> tuple[int, ...] | None:
    found: list[int] = []
    for entry in entries:
        digits = _leading_number(entry)
        if digits is None or digits >= count:
            break
        if digits in found:
            return ()
        found.append(digits)
    return tuple(found) if found else None


def _leading_number(entry: str) -> int | None:
    """The number ``entry`` starts with, as CUDA's strtoul reads it ("1gpu" is 1); None for none or a negative one."""
    end = 1 if entry[:1] == "+" else 0
    while end < len(entry) and entry[end].isdigit():
        end += 1
    digits = entry[:end].lstrip("+")
    return int(digits) if digits else None


def _by_uuid(entries: list[str], uuids: list[str]) -> tuple[int, ...] | None:
    found: list[int] = []
    for entry in entries:
        matches = [index for index, uuid in enumerate(uuids) if entry.startswith("GPU-") and uuid.startswith(entry)]
        if len(matches) != 1:
            break
        if matches[0] in found:
            return ()
        found.append(matches[0])
    return tuple(found) if found else None
