"""Redis bus latency: publish and delivery p50/p95 (same object, second object) against the in-process bus."""

from __future__ import annotations

import asyncio
import json
import statistics
import time
import uuid

import redis.asyncio

from esper.runtime.bus import Bus, Topic
from esper.runtime.bus_inproc import InProcessBus
from esper.runtime.bus_redis import RedisBus
from esper.runtime.clock import MonotonicClock
from schemas.enums import BusMessageType, EmergencyLevel
from schemas.runtime import EmergencySignal

N = 1000


def msg(i: int) -> EmergencySignal:
    return EmergencySignal(
        level=EmergencyLevel.L1_NOTICE,
        previous=EmergencyLevel.L1_NOTICE,
        reason=f"m{i}",
        origin="bench",
        monotonic_time_ms=0.0,
        run_id="r",
    )


def pct(xs: list[float], q: float) -> float:
    return statistics.quantiles(xs, n=100)[int(q) - 1] * 1000


async def run(pub: Bus, sub: Bus) -> dict[str, float]:
    await sub.subscribe(Topic.NORMAL, group="g")
    publish_s: list[float] = []
    sent: dict[int, float] = {}
    deliver_s: list[float] = []

    async def consumer() -> None:
        for _ in range(N):
            env = await sub.receive(Topic.NORMAL, group="g", consumer="c")
            payload = env.payload
            assert isinstance(payload, EmergencySignal)
            deliver_s.append(time.perf_counter() - sent[int(payload.reason[1:])])
            await sub.ack(env)

    async with asyncio.TaskGroup() as tg:
        tg.create_task(consumer())
        for i in range(N):
            t0 = time.perf_counter()
            sent[i] = t0
            await pub.publish(Topic.NORMAL, msg(i), message_type=BusMessageType.ADAPTATION_COMMAND)
            publish_s.append(time.perf_counter() - t0)
            await asyncio.sleep(0.002)  # a paced publisher (~400/s), not a flood
    return {
        "publish_p50_ms": pct(publish_s, 50),
        "publish_p95_ms": pct(publish_s, 95),
        "delivery_p50_ms": pct(deliver_s, 50),
        "delivery_p95_ms": pct(deliver_s, 95),
    }


async def main() -> None:
    clock = MonotonicClock()
    base_bus = InProcessBus(clock)
    base = await run(base_bus, base_bus)
    c1 = redis.asyncio.Redis(host="127.0.0.1", port=6379)
    c2 = redis.asyncio.Redis(host="127.0.0.1", port=6379)
    prefix = f"bench-{uuid.uuid4().hex}"
    a = RedisBus(clock, c1, prefix=prefix)
    b = RedisBus(clock, c2, prefix=prefix)
    local = await run(a, a)
    remote = await run(a, b)
    await a.purge()
    await c1.aclose()
    await c2.aclose()
    print(
        json.dumps(
            {
                "n": N,
                "inprocess": base,
                "redis_same_object": local,
                "redis_other_object": remote,
                "publish_p95_ratio_vs_inprocess": local["publish_p95_ms"] / max(base["publish_p95_ms"], 1e-6),
            }
        )
    )


if __name__ == "__main__":
    asyncio.run(main())
