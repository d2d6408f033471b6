"""Opening a Redis bus: a client for a URL, the check that a Redis server answers there, and closing both after."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Final
from urllib.parse import parse_qs, unquote, urlsplit

import structlog

from esper.runtime.bus import ALL_TOPICS
from esper.runtime.bus_redis import DEFAULT_MAX_PAYLOAD_BYTES, RedisBus, redacted
from esper.runtime.bus_redis_scripts import cancel_safe

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterable

    from redis.asyncio import Redis

    from esper.runtime.bus import BusLimits, Topic
    from esper.runtime.clock import Clock

_log = structlog.get_logger("esper.runtime.bus_redis_open")

DEFAULT_TIMEOUT_S = 1.0
"""How long a call waits for the server (connecting, or for its reply) before the call fails with BusUnavailable.
The client's own default, 5 s, held the publisher that long per event on a hung server (stopped, accepting but never
answering), so events piled up in its mailbox; every script answers in well under a millisecond when the server is
well. A ``socket_timeout`` (and ``socket_connect_timeout``) in the URL's query wins."""


REDIS_SCHEMES: Final = ("redis", "rediss", "unix")
"""The URL schemes the Redis client accepts."""


def redis_url_problem(url: str) -> str | None:
    """Why the Redis client would refuse ``url`` before connecting or only when it connects (its scheme, a port that
    is not a number, a database path that is not one, a query value its parser refuses), said with any password
    masked; None if it would try it. Checked with the config, before the run directory is made."""
    scheme, separator, _ = url.partition("://")
    if not separator or scheme.lower() not in REDIS_SCHEMES:
        return f"expected a redis://, rediss:// or unix:// URL, got {redacted(url)!r}"
    parts = urlsplit(url)
    if scheme.lower() != "unix":
        try:
            parts.port  # noqa: B018  # reading it is the check: it raises for a port that is no number
        except ValueError:
            return f"expected a port number from 0 to 65535 in {redacted(url)!r}"
        database = unquote(parts.path).replace("/", "")
        # The client drops a path that int() refuses and uses database 0: the streams went where nobody looked. A
        # ?db= in the query wins over the path, which the client then never reads.
        if database and "db" not in parse_qs(parts.query) and not _is_int(database):
            return f"expected a database number as the path, got {database!r} in {redacted(url)!r}"
    return _query_problem(url, parts.query)


def _is_int(text: str) -> bool:
    """Whether ``int`` takes ``text``, as the client's parser of the path does."""
    try:
        int(text)
    except ValueError:
        return False
    return True


def _query_problem(url: str, query: str) -> str | None:
    """The first query value the client's own URL parser refuses (it says so only when it connects, naming no value),
    as ``key=value``; None without the redis package, which is refused on its own."""
    try:
        from redis.asyncio.connection import URL_QUERY_ARGUMENT_PARSERS  # the optional dependency, as below
    except ImportError:
        return None
    for key, values in parse_qs(query).items():
        parser = URL_QUERY_ARGUMENT_PARSERS.get(key)
        if parser is None or not values:
            continue
        try:
            parser(values[0])  # the value the client takes: the first
        except (TypeError, ValueError):
            shown = "***" if key == "password" else values[0]
            return f"the Redis client refuses {key}={shown!r} in {redacted(url)!r}"
    return None


@contextlib.asynccontextmanager
async def open_redis_bus(
    url: str,
    clock: Clock,
    *,
    prefix: str,
    topics: Iterable[Topic] = ALL_TOPICS,
    limits: BusLimits | None = None,
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> AsyncIterator[RedisBus]:
    """Connect to ``url`` (e.g. "redis://127.0.0.1:6379/0"), check the server answers, yield a RedisBus, then close
    the bus and the client. Needs the optional ``redis`` dependency, imported here so the default install lacks it.
    ``timeout_s``: see DEFAULT_TIMEOUT_S (the URL's ``socket_timeout`` wins).

    Raises:
        ModuleNotFoundError: the redis package is not installed (pip install 'esper-morphogenesis[redis]').
        ConnectionError: the server does not answer (the builtin, an OSError; the client's own error is chained).
        ValueError: ``url`` is not a Redis URL, or the server refuses it (a database number it does not have).
    """
    # Imported here: redis is an optional dependency that only this backend needs.
    import redis.exceptions

    client = redis_client(url, timeout_s=timeout_s)  # ValueError: not a Redis URL
    try:
        try:
            await cancel_safe(client.ping())
        except redis.exceptions.AuthenticationError as err:  # a ConnectionError to the client, but the server answered
            raise ValueError(f"the server refused the credentials: {err}") from err
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as err:
            raise ConnectionError(str(err)) from err
        except redis.exceptions.ResponseError as err:  # e.g. a database number the server does not have
            raise ValueError(f"the server refused it: {err}") from err
        except redis.exceptions.RedisError as err:  # something answers there, but not as a Redis server
            raise ValueError(f"what answers there is not a Redis server ({type(err).__name__}: {err})") from err
        except TypeError as err:  # a query parameter the client does not know reaches its connection only now
            raise ValueError(f"the URL holds a setting the Redis client does not know ({err})") from err
        await _warn_if_password_unneeded(client, url)
        bus = RedisBus(clock, client, prefix=prefix, topics=topics, limits=limits, max_payload_bytes=max_payload_bytes)
        try:
            yield bus
        finally:
            await bus.close()
    finally:
        await client.aclose()


_NO_PASSWORD_SET: Final = ("without any password configured", "no password is set")
"""How a server that requires no password answers AUTH <password> (Redis 6 and later, then earlier versions)."""


async def _warn_if_password_unneeded(client: Redis, url: str) -> None:
    """Say once (``oona_redis_password_unneeded``) that the URL's password was never asked for: the server accepts
    any password for its default user when it has none (the client's HELLO AUTH succeeds), so a server meant to be
    protected is not. Only a plain AUTH with the password alone tells, in one round trip."""
    import redis.exceptions  # the optional dependency, as above

    settings = client.connection_pool.connection_kwargs
    password, username = settings.get("password"), settings.get("username")
    if not password or username not in (None, "default"):
        return  # a named user's password was checked by the connection's own AUTH
    try:
        await cancel_safe(client.auth(password))
    except redis.exceptions.AuthenticationError as err:
        if any(marker in str(err) for marker in _NO_PASSWORD_SET):
            _log.warning(
                "oona_redis_password_unneeded",
                url=redacted(url),
                detail="the URL gives a password but the Redis server requires none: anyone who reaches it can read"
                " and write the run's streams",
            )
    except redis.exceptions.RedisError:
        pass  # the server answered the ping: whatever this is, the bus works, and this was only a courtesy


def redis_client(url: str, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> Redis:
    """A client for ``url`` as RedisBus needs it (binary replies), whose calls wait at most ``timeout_s`` for the
    server unless the URL's query sets ``socket_timeout`` / ``socket_connect_timeout``. Does not connect yet.

    Raises:
        ValueError: ``url`` is not a Redis URL.
    """
    import redis.asyncio  # the optional dependency, as above

    return redis.asyncio.Redis.from_url(
        url, decode_responses=False, socket_timeout=timeout_s, socket_connect_timeout=timeout_s
    )
