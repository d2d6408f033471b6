"""Fixtures of the tests that use the real Redis server: a client, and a fresh key prefix cleaned up after the test."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

import pytest

from tests.test_bus_conformance import connect_redis

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from redis.asyncio import Redis


@pytest.fixture
async def client() -> AsyncIterator[Redis]:
    redis_client = await connect_redis()
    try:
        yield redis_client
    finally:
        await redis_client.aclose()


@pytest.fixture
async def prefix(client: Redis) -> AsyncIterator[str]:
    """A fresh key prefix; every key under it is deleted after the test."""
    name = f"esper-test-{uuid.uuid4().hex}"
    yield name
    keys = [key async for key in client.scan_iter(match=f"{name}:*")]
    if keys:
        await client.unlink(*keys)
