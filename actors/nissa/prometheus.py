"""Prometheus text exposition and a minimal HTTP/1.1 endpoint on asyncio streams: /metrics, /metrics/summary, /healthz.

Names: dots (and anything else Prometheus refuses) become underscores, with an ``esper_`` prefix
(``tolaria.training.loss`` -> ``esper_tolaria_training_loss``). Each family gets ``# HELP`` and ``# TYPE`` lines.
The endpoint serves GET (and HEAD) only, one request per connection, and binds 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import asyncio
import ipaddress
import math
import re
import socket
from typing import TYPE_CHECKING, Final, final

import msgspec
import structlog

from esper.runtime.errors import ConfigError
from schemas.enums import HealthStatus

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from schemas.nissa import MetricSample, NissaSnapshot

_log = structlog.get_logger("actors.nissa")

PREFIX: Final = "esper_"
CONTENT_TYPE_METRICS: Final = "text/plain; version=0.0.4; charset=utf-8"
CONTENT_TYPE_JSON: Final = "application/json"
REQUEST_DEADLINE_S: Final = 5.0
"""How long one client may take to send its request before the connection is dropped."""
MAX_HEADER_LINES: Final = 100

_INVALID_NAME_CHARS: Final = re.compile(r"[^a-zA-Z0-9_:]")
_INVALID_LABEL_CHARS: Final = re.compile(r"[^a-zA-Z0-9_]")
_REASONS: Final = {
    200: "OK",
    404: "Not Found",
    405: "Method Not Allowed",
    400: "Bad Request",
    503: "Service Unavailable",
}


def metric_name(name: str) -> str:
    """The Prometheus name of a dotted Esper metric name: ``esper_`` plus the name with invalid characters as ``_``."""
    return PREFIX + _INVALID_NAME_CHARS.sub("_", name)


def label_name(name: str) -> str:
    """A valid label name: invalid characters as ``_``, and a leading ``_`` if it would start with a digit."""
    cleaned = _INVALID_LABEL_CHARS.sub("_", name) or "_"
    return f"_{cleaned}" if cleaned[0].isdigit() else cleaned


def escape_label_value(value: str) -> str:
    """Escape a label value for the text format: backslash, double quote and newline."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def format_value(value: float) -> str:
    """A sample value as the text format writes it (``NaN``, ``+Inf``, ``-Inf`` or a float literal)."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def render_exposition(samples: Iterable[MetricSample]) -> str:
    """The Prometheus text format (version 0.0.4) for ``samples``: one HELP and TYPE block per family."""
    families: dict[str, list[MetricSample]] = {}
    for sample in samples:
        families.setdefault(metric_name(sample.name), []).append(sample)
    lines: list[str] = []
    for name in sorted(families):
        members = families[name]
        first = members[0]
        lines.append(f"# HELP {name} {_escape_help(first.help or first.name)}")
        lines.append(f"# TYPE {name} {first.kind}")
        for sample in members:
            if sample.labels:
                labels = ",".join(
                    f'{label_name(key)}="{escape_label_value(value)}"' for key, value in sorted(sample.labels.items())
                )
                lines.append(f"{name}{{{labels}}} {format_value(sample.value)}")
            else:
                lines.append(f"{name} {format_value(sample.value)}")
    return "\n".join(lines) + "\n" if lines else ""


def summary_body(snapshot: NissaSnapshot, run_id: str = "") -> bytes:
    """The /metrics/summary JSON: the run's id, health, active alerts and SLO figures."""
    return msgspec.json.encode(
        {
            "run_id": run_id,
            "health": snapshot.health,
            "alerts": snapshot.alerts,
            "slos": snapshot.slos,
            "epochs_written": snapshot.epochs_written,
            "last_epoch": snapshot.last_epoch,
        }
    )


def health_body(snapshot: NissaSnapshot) -> bytes:
    """The /healthz JSON: status (``healthy``, ``degraded``, ... as /metrics/summary writes it), summary and
    indicators."""
    health = snapshot.health
    return msgspec.json.encode(
        {"status": health.status.value, "summary": health.summary, "indicators": health.indicators}
    )


def route(method: str, path: str, snapshot: Callable[[], NissaSnapshot], *, run_id: str = "") -> tuple[int, str, bytes]:
    """(status code, content type, body) for one request; ``snapshot`` is called only for a known path; ``run_id``
    goes into /metrics/summary.

    /healthz answers 503 when UNHEALTHY or CRITICAL, so a plain HTTP probe sees the difference.
    """
    if method not in ("GET", "HEAD"):
        return 405, CONTENT_TYPE_JSON, b'{"error":"method not allowed"}'
    path = path.split("?", 1)[0]
    if path == "/metrics":
        return 200, CONTENT_TYPE_METRICS, render_exposition(snapshot().metrics).encode("utf-8")
    if path == "/metrics/summary":
        return 200, CONTENT_TYPE_JSON, summary_body(snapshot(), run_id)
    if path == "/healthz":
        current = snapshot()
        bad = current.health.status in (HealthStatus.UNHEALTHY, HealthStatus.CRITICAL)
        return (503 if bad else 200), CONTENT_TYPE_JSON, health_body(current)
    return 404, CONTENT_TYPE_JSON, b'{"error":"not found"}'


def host_port(host: str, port: int) -> str:
    """``host:port`` as a URL writes it: an IPv6 address in brackets (``[::1]:9100``; ``::1:9100`` is no address)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@final
class MetricsServer:
    """The HTTP endpoint. ``snapshot`` is called on the event loop for each request and must not block.

    start() binds and returns the port (pass port 0 for an ephemeral one); close() stops listening. Connection
    handlers are tasks asyncio's server owns; each is bounded by REQUEST_DEADLINE_S and ends after one response.
    """

    def __init__(
        self, snapshot: Callable[[], NissaSnapshot], *, host: str = "127.0.0.1", port: int = 0, run_id: str = ""
    ) -> None:
        if not 0 <= port <= 65535:
            raise ValueError(f"port must be in 0..65535, got {port}")
        self._snapshot = snapshot
        self._run_id = run_id
        self._host = host
        self._port = port
        self._server: asyncio.Server | None = None
        self._started = asyncio.Event()
        self.requests = 0

    @property
    def port(self) -> int:
        """The bound port.

        Raises:
            RuntimeError: the server has not been started.
        """
        if self._server is None:
            raise RuntimeError("MetricsServer has no port until start() returns")
        return self._port

    @property
    def endpoint(self) -> str:
        return host_port(self._host, self.port)

    async def start(self) -> int:
        """Bind and start serving; returns the bound port.

        Raises:
            OSError: the address is in use or cannot be bound.
            RuntimeError: already started.
        """
        if self._server is not None:
            raise RuntimeError("MetricsServer already started")
        server = await asyncio.start_server(self._serve, self._host, self._port)
        self._server = server
        self._port = int(server.sockets[0].getsockname()[1])
        self._started.set()
        exposed = [sock.getsockname()[0] for sock in server.sockets if not _loopback(sock.getsockname()[0])]
        if exposed:
            _log.warning(
                "metrics_endpoint_exposed",
                endpoint=self.endpoint,
                addresses=exposed,
                detail="reachable from other machines, without authentication; the default is 127.0.0.1",
            )
        return self._port

    async def wait_started(self) -> None:
        """Wait until start() has bound the socket."""
        await self._started.wait()

    async def close(self) -> None:
        """Stop listening and wait for the listening socket to close. Safe to call twice."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
            await server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(REQUEST_DEADLINE_S):
                request = await _read_request(reader)
                if request is None:
                    status, content_type, body = 400, CONTENT_TYPE_JSON, b'{"error":"bad request"}'
                    method = "GET"
                else:
                    method, path = request
                    status, content_type, body = route(method, path, self._snapshot, run_id=self._run_id)
                self.requests += 1
                head = (
                    f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\n"
                    f"Content-Type: {content_type}\r\n"
                    f"Content-Length: {len(body)}\r\n"
                    + ("Allow: GET, HEAD\r\n" if status == 405 else "")  # RFC 9110: a 405 names what is allowed
                    + "Connection: close\r\n\r\n"
                ).encode("ascii")
                writer.write(head if method == "HEAD" else head + body)
                await writer.drain()
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass  # a slow or vanished client is its own problem; the endpoint keeps serving others
        finally:
            writer.close()
            try:
                await writer.wait_closed()
            except ConnectionError:
                pass  # the peer reset the connection while we closed it


async def _read_request(reader: asyncio.StreamReader) -> tuple[str, str] | None:
    """(method, path) from the request line, after reading the headers; None for a malformed request."""
    try:
        line = await reader.readline()
    except ValueError:  # a line past the stream's limit: a bad request, answered 400 (it printed a traceback)
        return None
    parts = line.decode("latin-1").split()
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        return None
    for _ in range(MAX_HEADER_LINES):
        try:
            header = await reader.readline()
        except ValueError:
            return None
        if header in (b"\r\n", b"\n", b""):
            return parts[0], parts[1]
    return None


def _loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def check_bindable(host: str, port: int) -> None:
    """Fail fast, before a run starts, when the metrics endpoint could not listen on ``host:port``. Blocking.

    Binds and closes a socket as the server will (SO_REUSEADDR, as asyncio sets it), so a port another process
    listens on fails here, in one line, instead of failing Nissa's start again and again. Port 0 (ephemeral) always
    binds.

    Raises:
        ConfigError: naming nissa.prometheus_port and the error.
    """
    if port == 0:
        return
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, kind, proto, _, address = infos[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(address)
    except OSError as err:
        raise ConfigError(
            f"nissa.prometheus_port = {port}: cannot listen on {host}:{port}: {err.strerror or err}"
        ) from err
