"""The default lanes of one device (train, policy, io), built, counted and closed together."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, final

from esper.runtime.lane_device import resolve_device
from esper.runtime.lanes import Lane

if TYPE_CHECKING:
    from collections.abc import Mapping
    from types import TracebackType

    import torch

    from esper.runtime.lanes import LaneStatistics

LaneName = Literal["train", "policy", "io"]
LANE_NAMES: tuple[LaneName, ...] = ("train", "policy", "io")

# train takes torch's default (all cores); inference and I/O must not compete with it for cores.
DEFAULT_NUM_THREADS: Mapping[LaneName, int | None] = {"train": None, "policy": 1, "io": 1}


@final
class Lanes:
    """The default lanes of one device: ``train`` (Tolaria), ``policy`` (Tamiyo, Simic) and ``io`` (loads, compiles,
    host-to-device copies). On CUDA each has its own stream, so policy inference overlaps backprop.
    """

    def __init__(self, device: str = "auto", *, num_threads: Mapping[LaneName, int | None] | None = None) -> None:
        """Build the three lanes (their threads start at first use).

        Args:
            device: ``"auto"``, ``"cpu"`` or ``"cuda[:n]"`` (see resolve_device).
            num_threads: per-lane torch thread budgets overriding DEFAULT_NUM_THREADS.

        Raises:
            ValueError: the device is invalid or unavailable, a budget is < 1, or a lane name is unknown.
        """
        budgets = dict(DEFAULT_NUM_THREADS)
        for name, budget in (num_threads or {}).items():
            if name not in LANE_NAMES:
                raise ValueError(f"num_threads names unknown lane {name!r}; lanes are {', '.join(LANE_NAMES)}")
            budgets[name] = budget
        self._device = resolve_device(device)
        self._lanes: dict[LaneName, Lane] = {
            name: Lane(name, self._device, num_threads=budgets[name]) for name in LANE_NAMES
        }

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def train(self) -> Lane:
        return self._lanes["train"]

    @property
    def policy(self) -> Lane:
        return self._lanes["policy"]

    @property
    def io(self) -> Lane:
        return self._lanes["io"]

    def __getitem__(self, name: LaneName) -> Lane:
        return self._lanes[name]

    def statistics(self) -> tuple[LaneStatistics, ...]:
        """Each lane's statistics, in LANE_NAMES order."""
        return tuple(lane.statistics() for lane in self._lanes.values())

    def close(self) -> None:
        """Close every lane (non-blocking); queued jobs still run."""
        for lane in self._lanes.values():
            lane.close()

    async def wait_closed(self) -> None:
        """Wait until every lane's thread has exited."""
        for lane in self._lanes.values():
            await lane.wait_closed()

    async def aclose(self) -> None:
        """close(), then wait_closed()."""
        self.close()
        await self.wait_closed()

    async def __aenter__(self) -> Lanes:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()
