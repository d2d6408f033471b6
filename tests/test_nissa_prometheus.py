"""Prometheus exposition (names, HELP/TYPE, label escaping) and the HTTP endpoint, over real sockets on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import socket

import pytest
import structlog

from actors.nissa.prometheus import (
    MetricsServer,
    check_bindable,
    escape_label_value,
    label_name,
    metric_name,
    render_exposition,
)
from esper.runtime.errors import ConfigError
from schemas.enums import EmergencyLevel, HealthStatus
from schemas.nissa import ActiveAlert, HealthReport, MetricSample, NissaSnapshot


def test_names_turn_dots_into_underscores_with_the_esper_prefix() -> None:
    assert metric_name("tolaria.training.loss") == "esper_tolaria_training_loss"
    assert metric_name("field_reports_total") == "esper_field_reports_total"
    assert metric_name("oona.queue-depth/high") == "esper_oona_queue_depth_high"
    assert label_name("slot.name") == "slot_name"
    assert label_name("3d") == "_3d"


def test_label_values_escape_backslash_quote_and_newline() -> None:
    assert escape_label_value('a\\b"c\nd') == 'a\\\\b\\"c\\nd'


def test_exposition_has_help_and_type_per_family_and_escaped_labels() -> None:
    samples = [
        MetricSample(name="tolaria.training.loss", value=0.25, kind="gauge", help="Mean training loss."),
        MetricSample(name="telemetry.events_total", value=2.0, kind="counter", labels={"name": 'say "hi"\n'}),
        MetricSample(name="telemetry.events_total", value=1.0, kind="counter", labels={"name": "b", "level": "info"}),
        MetricSample(name="tolaria.validation.loss", value=float("nan"), kind="gauge"),
        MetricSample(name="kasmina.seed.alpha", value=float("inf"), kind="gauge", labels={"slot": "a\\b"}),
    ]
    assert render_exposition(samples).splitlines() == [
        "# HELP esper_kasmina_seed_alpha kasmina.seed.alpha",
        "# TYPE esper_kasmina_seed_alpha gauge",
        'esper_kasmina_seed_alpha{slot="a\\\\b"} +Inf',
        "# HELP esper_telemetry_events_total telemetry.events_total",
        "# TYPE esper_telemetry_events_total counter",
        'esper_telemetry_events_total{name="say \\"hi\\"\\n"} 2.0',
        'esper_telemetry_events_total{level="info",name="b"} 1.0',
        "# HELP esper_tolaria_training_loss Mean training loss.",
        "# TYPE esper_tolaria_training_loss gauge",
        "esper_tolaria_training_loss 0.25",
        "# HELP esper_tolaria_validation_loss tolaria.validation.loss",
        "# TYPE esper_tolaria_validation_loss gauge",
        "esper_tolaria_validation_loss NaN",
    ]
    assert render_exposition([]) == ""


def _snapshot(status: HealthStatus) -> NissaSnapshot:
    return NissaSnapshot(
        health=HealthReport(status=status, summary=f"{status.name}: test", indicators={"alerts_active": "1"}),
        alerts=(
            ActiveAlert(
                rule="training_latency_high",
                metric="tolaria.training.latency_ms",
                condition="> 18",
                threshold=18.0,
                value=25.0,
                level=EmergencyLevel.L1_NOTICE,
                since_s=3.0,
                breaches=3,
            ),
        ),
        metrics=(MetricSample(name="tolaria.training.loss", value=0.5, kind="gauge", help="Loss."),),
        epochs_written=2,
        last_epoch=1,
    )


async def http_get(port: int, path: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    """One request over asyncio streams; (status, headers, body)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"{method} {path} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode("ascii"))
        await writer.drain()
        raw = await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in header_lines)
    return int(status_line.split()[1]), headers, body


async def test_the_endpoint_serves_metrics_summary_and_health() -> None:
    current = {"status": HealthStatus.DEGRADED}
    server = MetricsServer(lambda: _snapshot(current["status"]), host="127.0.0.1", port=0)
    port = await server.start()
    try:
        await server.wait_started()
        assert port > 0
        assert server.endpoint == f"127.0.0.1:{port}"
        async with asyncio.timeout(5):
            status, headers, body = await http_get(port, "/metrics")
            assert status == 200
            assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
            assert int(headers["Content-Length"]) == len(body)
            assert body.decode().splitlines() == [
                "# HELP esper_tolaria_training_loss Loss.",
                "# TYPE esper_tolaria_training_loss gauge",
                "esper_tolaria_training_loss 0.5",
            ]

            status, headers, body = await http_get(port, "/metrics/summary")
            summary = json.loads(body)
            assert (status, headers["Content-Type"]) == (200, "application/json")
            assert [alert["rule"] for alert in summary["alerts"]] == ["training_latency_high"]
            assert summary["health"]["status"] == "degraded"
            assert summary["slos"] == []
            assert summary["last_epoch"] == 1

            status, _, body = await http_get(port, "/healthz")
            assert status == 200
            assert json.loads(body) == {
                "status": "degraded",  # as /metrics/summary says it (it said DEGRADED here)
                "summary": "DEGRADED: test",
                "indicators": {"alerts_active": "1"},
            }
            current["status"] = HealthStatus.CRITICAL
            status, _, body = await http_get(port, "/healthz")
            assert (status, json.loads(body)["status"]) == (503, "critical")

            status, headers, body = await http_get(port, "/metrics", method="HEAD")
            assert (status, body) == (200, b"")
            assert int(headers["Content-Length"]) > 0
            assert (await http_get(port, "/nope"))[0] == 404
            status, headers, _ = await http_get(port, "/metrics", method="POST")
            assert (status, headers.get("Allow")) == (405, "GET, HEAD")
            assert server.requests == 7
    finally:
        await server.close()
        await server.close()


@pytest.mark.parametrize(
    "request_bytes",
    [b"garbage\r\n\r\n", b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n", b"GET / HTTP/1.1\r\nX: " + b"b" * 70_000],
    ids=["garbage", "a line past the limit", "a header past the limit"],
)
async def test_a_malformed_request_gets_400(request_bytes: bytes) -> None:
    """An oversized line printed the stream's traceback on the training console and got no answer."""
    server = MetricsServer(lambda: _snapshot(HealthStatus.HEALTHY))
    port = await server.start()
    try:
        async with asyncio.timeout(5):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(request_bytes + b"\r\n\r\n")
            await writer.drain()
            raw = await reader.read()
            writer.close()
            await writer.wait_closed()
        assert raw.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    finally:
        await server.close()


async def test_an_endpoint_reachable_from_other_machines_is_warned_about() -> None:
    loopback = MetricsServer(lambda: _snapshot(HealthStatus.HEALTHY))
    exposed = MetricsServer(lambda: _snapshot(HealthStatus.HEALTHY), host="0.0.0.0")  # the point
    with structlog.testing.capture_logs() as logs:
        await loopback.start()
        await loopback.close()
        assert not logs
        await exposed.start()
        await exposed.close()
    [warning] = logs
    assert (warning["event"], warning["addresses"]) == ("metrics_endpoint_exposed", ["0.0.0.0"])


def test_ports_are_validated_and_unstarted_servers_have_no_port() -> None:
    with pytest.raises(ValueError, match=r"port must be in 0\.\.65535"):
        MetricsServer(lambda: _snapshot(HealthStatus.HEALTHY), port=70000)
    with pytest.raises(RuntimeError, match="no port until start"):
        _ = MetricsServer(lambda: _snapshot(HealthStatus.HEALTHY)).port


def test_a_port_another_process_listens_on_is_a_one_line_config_error() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(ConfigError, match=rf"^nissa.prometheus_port = {port}: cannot listen on 127.0.0.1:{port}: "):
            check_bindable("127.0.0.1", port)
    check_bindable("127.0.0.1", port)  # free again: the check binds and lets go
    check_bindable("127.0.0.1", 0)
