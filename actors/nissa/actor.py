"""The Nissa actor: ingests state packets, telemetry and lifecycle events; writes metrics.csv; raises alerts."""

from __future__ import annotations

import contextlib
import time
from typing import TYPE_CHECKING, Final, assert_never, final

import structlog

from actors.nissa.alerts import DEFAULT_RULES, AlertEvaluator, assess_health
from actors.nissa.csv_writer import MetricsCsvWriter, RowBacklog
from actors.nissa.metric_registry import RUN_INFO
from actors.nissa.metrics import MetricsAggregator
from actors.nissa.prometheus import MetricsServer, host_port
from actors.nissa.slo import DAY_S, DEFAULT_SLOS, SloTracker
from esper.runtime.actor import Actor
from schemas.boundary import BoundaryApplied, TrainingRestored
from schemas.domain_enums import TelemetryLevel
from schemas.enums import EmergencyLevel
from schemas.nissa import (
    EvaluateAlerts,
    LifecycleRestored,
    NissaSnapshot,
    QueryNissa,
    SeedStageChanged,
)
from schemas.runtime import BreakerTransition, ChildRestarted, EmergencySignal
from schemas.state import SystemStatePacket
from schemas.telemetry import TelemetryEvent, TelemetryPacket

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence
    from pathlib import Path

    from actors.nissa.alerts import AlertRule
    from actors.nissa.metrics import SlotTransition
    from actors.nissa.slo import SloObjective
    from esper.runtime.clock import Clock
    from esper.runtime.events import EventSink
    from esper.runtime.stage_refusals import Refusal
    from schemas.config import NissaConfig
    from schemas.nissa import ActiveAlert, AlertNotice

NissaMessage = (
    SystemStatePacket
    | TelemetryPacket
    | BoundaryApplied
    | SeedStageChanged
    | LifecycleRestored
    | TrainingRestored
    | EmergencySignal
    | BreakerTransition
    | ChildRestarted
    | EvaluateAlerts
    | QueryNissa
)
NISSA_INBOX: Final = (
    SystemStatePacket,
    TelemetryPacket,
    BoundaryApplied,
    SeedStageChanged,
    LifecycleRestored,
    TrainingRestored,
    EmergencySignal,
    BreakerTransition,
    ChildRestarted,
    EvaluateAlerts,
    QueryNissa,
)
"""What Nissa consumes: every state packet, telemetry, lifecycle and supervision events, the tick and the query."""

METRICS_ENDPOINT_UNAVAILABLE: Final = "metrics_endpoint_unavailable"
METRICS_ENDPOINT_LISTENING: Final = "metrics_endpoint_listening"
METRICS_ENDPOINT_MOVED: Final = "metrics_endpoint_moved"
ALERT_FIRED: Final = "alert_fired"
ALERT_CLEARED: Final = "alert_cleared"
ALERTS_FIRED_TOTAL: Final = "nissa.alerts.fired_total"


@final
class Nissa(Actor[NissaMessage]):
    """Observability: metrics from everything it is told, one metrics.csv row per epoch end, alert rules, SLO burn,
    health, and (when ``config.prometheus_port`` is set) the HTTP endpoint.

    Each alert that fires or clears, a rule's or an SLO's (``slo_<name>``), goes to ``sink`` once, as a
    TelemetryEvent (``alert_fired`` / ``alert_cleared``, WARNING at L2, INFO at L1), and is counted by rule in
    ``nissa.alerts.fired_total``; the firing ones are the snapshot's alerts and ``nissa.alerts.active``. Nissa never
    changes the emergency level. A QueryNissa ask returns a NissaSnapshot. A failure writing metrics.csv crashes the
    actor (its supervisor restarts it; the file is resumed, not rewritten).
    """

    def __init__(
        self,
        config: NissaConfig,
        run_dir: Path,
        *,
        clock: Clock,
        sink: EventSink,
        started_s: float,
        continues: bool = False,
        on_origin: Callable[[float], None] | None = None,
        rules: Sequence[AlertRule] = DEFAULT_RULES,
        slos: Sequence[SloObjective] = DEFAULT_SLOS,
        capacity: int = 1024,
        backlog: RowBacklog | None = None,
        transitions: Sequence[SlotTransition] | None = None,
        refusals: Sequence[Refusal] = (),
        rebind_port: int | None = None,
        on_listening: Callable[[int], None] | None = None,
        run_id: str = "",
    ) -> None:
        """Args:
        config: the ``[nissa]`` section; ``prometheus_port`` 0 binds any free port (``rebind_port`` first), which
            the ``metrics_endpoint_listening`` event names.
        run_dir: the run directory (must exist); metrics.csv goes there.
        clock: alert, SLO and wall-time arithmetic read it.
        sink: where alerts go.
        started_s: the clock time at which the run started (``wall_time_s`` of a row counts from it).
        continues: a resumed run's first incarnation: its rows count on from metrics.csv's last ``wall_time_s`` (the
            earlier sessions' time), this session's time since ``started_s`` added to it.
        on_origin: told the clock time the rows count from once the file is read (``started_s``, or earlier for a
            resumed run), for a restarted incarnation to count from.
        rules / slos: the alert table and SLOs (REFERENCE.md section 9 by default).
        capacity: mailbox capacity.
        backlog: the rows not yet written, kept by the spec across incarnations (None: this incarnation's own).
        transitions: the slot transitions that stand from a resumed run's earlier sessions (they are not reported
            again: the replay that rebuilds the lifecycle is silent), or from before a restart, in order.
        refusals: the stage ops the trainer refused that stand from before this incarnation (see transitions).
        rebind_port: with ``prometheus_port`` 0, the port an earlier incarnation bound: bound again, so a scraper
            keeps the URL the run printed; taken meanwhile, a ``metrics_endpoint_moved`` warning says so and any
            free port is bound (whose URL ``metrics_endpoint_listening`` gives).
        on_listening: told the port the endpoint bound.
        run_id: the run's id, which /metrics (``esper_run_info``, with the run directory) and /metrics/summary give.
        """
        super().__init__(inbox=NISSA_INBOX, capacity=capacity)
        self._config = config
        self._clock = clock
        self._sink = sink
        self._started_s = started_s
        self._continues = continues
        self._on_origin = on_origin
        self._csv = MetricsCsvWriter(run_dir / config.metrics_csv)
        self._backlog = RowBacklog() if backlog is None else backlog
        self._metrics = MetricsAggregator(transitions=transitions, refusals=refusals)
        self._run_id = run_id
        # Absolute: two runs started from different directories may both be "runs/x" as given.
        self._metrics.registry.set_gauge(RUN_INFO, 1.0, {"run_id": run_id, "run_dir": str(run_dir.absolute())})
        self._alerts = AlertEvaluator(rules)
        self._slos = SloTracker(
            slos,
            window_s=config.slo_window_days * DAY_S,
            burn_threshold=config.slo_burn_threshold,
            min_samples=config.slo_min_samples,
        )
        for rule in (*(r.name for r in self._alerts.rules), *self._slos.rules):
            # At 0 from the start: an alert that fired and cleared between two scrapes still shows in the count.
            self._metrics.registry.inc(ALERTS_FIRED_TOTAL, 0.0, {"rule": rule})
        self._emergency = EmergencyLevel.L1_NOTICE
        self._server: MetricsServer | None = None
        self._rebind_port = rebind_port
        self._on_listening = on_listening

    async def on_start(self) -> None:
        written = await self._csv.open()  # metrics.csv counts epochs from 1; packets index them from 0
        # A row the last incarnation crashed while writing goes in now (its packet will not come again).
        self._backlog.drop_written(written)
        pending = self._backlog.rows
        if pending and isinstance(pending[-1]["epoch"], int):
            written = pending[-1]["epoch"]
        await self._write_backlog()
        self._metrics.last_epoch = None if written is None else written - 1
        earlier = self._csv.last_wall_time_s
        if earlier is not None and self._continues:
            # A resumed run's wall_time_s goes on from its earlier sessions' instead of starting again at 0.
            self._started_s -= earlier
        elif earlier is not None and earlier > self._clock.now() - self._started_s:
            # Never back: a row the column has is past this incarnation's count (an origin nobody moved).
            self._started_s = self._clock.now() - earlier
        if self._on_origin is not None:
            self._on_origin(self._started_s)
        # Epochs a resume continues after whose rows were never written (killed after their checkpoint, before
        # their packets reached this actor): their packets come from Kasmina's journal, not again from the trainer.
        for packet in self._backlog.take_missed():
            row = self._metrics.missed_row(packet, wall_time_s=self._clock.now() - self._started_s)
            if row is not None:
                self._backlog.rows.append(row)
        await self._write_backlog()
        port = self._config.prometheus_port
        if port is not None:
            await self._serve_metrics(port)

    async def _serve_metrics(self, port: int) -> None:
        """Bind the endpoint: ``port``, or with port 0 the one an earlier incarnation bound (a scraper keeps the URL
        the run printed), else any free one."""
        host = self._config.prometheus_host
        earlier = self._rebind_port if port == 0 else None
        server = MetricsServer(
            self.snapshot, host=host, port=earlier if earlier is not None else port, run_id=self._run_id
        )
        try:
            await server.start()
        except OSError as err:
            if earlier is None:
                # Taken since the start's check (or still held by an incarnation that crashed): the run's observers
                # lose the endpoint, the run goes on; every restart failed the same way and ended the run.
                self._emit(
                    TelemetryEvent(
                        name=METRICS_ENDPOINT_UNAVAILABLE,
                        level=TelemetryLevel.WARNING,
                        description=(
                            f"cannot serve /metrics on {host_port(host, port)} ({err}); training goes on without it"
                        ),
                        attributes={"port": port},
                    )
                )
                return
            self._emit(
                TelemetryEvent(
                    name=METRICS_ENDPOINT_MOVED,
                    level=TelemetryLevel.WARNING,
                    description=(
                        f"cannot serve /metrics on {host_port(host, earlier)} again ({err}): a scraper of that URL"
                        " loses it; serving on another free port"
                    ),
                    attributes={"port": earlier},
                )
            )
            self._rebind_port = None
            await self._serve_metrics(0)
            return
        self._listening(server)

    def _listening(self, server: MetricsServer) -> None:
        self._server = server
        if self._on_listening is not None:
            self._on_listening(server.port)
        # The port bound, which differs from the config's with port 0 (any free one): the console and events.jsonl
        # say where to scrape.
        url = f"http://{server.endpoint}/metrics"
        self._emit(
            TelemetryEvent(
                name=METRICS_ENDPOINT_LISTENING,
                level=TelemetryLevel.INFO,
                description=f"serving {url}",
                attributes={"port": server.port, "url": url},
            )
        )

    async def on_stop(self) -> None:
        server, self._server = self._server, None
        try:
            if server is not None:
                await server.close()
        finally:
            await self._csv.close()

    def on_abandon(self) -> None:
        self._csv.abandon()

    async def handle(self, msg: NissaMessage) -> NissaSnapshot | None:
        started = time.perf_counter()
        now = self._clock.now()
        metrics = self._metrics
        changed: list[str]
        match msg:
            case SystemStatePacket():
                self._emergency = msg.emergency_level
                row, changed = metrics.observe_state(msg, wall_time_s=now - self._started_s)
                if row is not None:
                    self._backlog.rows.append(row)
                    await self._write_backlog()
            case TelemetryPacket():
                changed = metrics.observe_telemetry(msg)
            case BoundaryApplied():
                changed = metrics.observe_boundary(msg)
            case SeedStageChanged():
                changed = metrics.observe_stage(msg)
            case LifecycleRestored():
                changed = metrics.observe_restored(msg)
            case TrainingRestored(step=step):
                # The epochs that ended after the restored step are trained again (a rollback at an epoch end, a
                # restart, a resume after a kill): their rows go, so metrics.csv keeps the attempt that stands.
                self._backlog.drop_after(step)
                last = await self._csv.cut_after(step)
                metrics.last_epoch = None if last is None else last - 1
                changed = metrics.observe_training_restored(step)
            case EmergencySignal():
                self._emergency = msg.level
                changed = metrics.observe_emergency(msg)
            case BreakerTransition():
                changed = metrics.observe_breaker(msg)
            case ChildRestarted():
                changed = metrics.observe_restart(msg)
            case EvaluateAlerts():
                self._raise(self._alerts.evaluate(now))
                self._raise(self._slos.notices(now))
                return None
            case QueryNissa():
                return self.snapshot(include_metrics=msg.include_metrics)
            case _:
                assert_never(msg)
        metrics.registry.inc("nissa.messages_total", labels={"type": type(msg).__name__})
        self._ingest(changed, now)
        metrics.registry.set_gauge("nissa.ingest.latency_ms", (time.perf_counter() - started) * 1e3)
        return None

    async def _write_backlog(self) -> None:
        rows = self._backlog.rows
        while rows:
            await self._csv.append(rows[0])
            del rows[0]

    def snapshot(self, *, include_metrics: bool = True) -> NissaSnapshot:
        """Health, alerts, SLOs and (optionally) every metric sample, as of now. Event loop; never blocks."""
        now = self._clock.now()
        alerts = self._active(now)
        slos = self._slos.statuses(now)
        health = assess_health(
            alerts=alerts, slos=slos, emergency_level=self._emergency, open_breakers=self._metrics.open_breakers()
        )
        server = self._server
        return NissaSnapshot(
            health=health,
            alerts=alerts,
            slos=slos,
            metrics=self._metrics.registry.samples() if include_metrics else (),
            epochs_written=self._csv.rows_written,
            last_epoch=None if self._metrics.last_epoch is None else self._metrics.last_epoch + 1,
            final_figures=self._metrics.final_figures(),
            endpoint=server.endpoint if server is not None else None,
        )

    def _ingest(self, changed: list[str], now: float) -> None:
        registry = self._metrics.registry
        watched: list[str] = []
        for name in changed:
            value = registry.value(name)
            if value is None:
                continue  # only labelled series changed; no rule reads those
            if self._alerts.watches(name):
                self._alerts.observe(name, value, now)
                watched.append(name)
            if self._slos.watches(name):
                self._slos.observe(name, value, now)
        if watched:
            self._raise(self._alerts.evaluate(now, watched))
        self._raise(self._slos.notices(now))

    def _active(self, now: float) -> tuple[ActiveAlert, ...]:
        """Every alert firing now: the rules' (table order), then the SLOs'."""
        return (*self._alerts.active(), *self._slos.active(now))

    @contextlib.contextmanager
    def _as_nissa(self) -> Iterator[None]:
        # The run's log names the actor of these lines, so `esper.tail --actor nissa` keeps them (a TelemetryEvent
        # carries no actor of its own).
        if not self.name:
            yield
            return
        with structlog.contextvars.bound_contextvars(actor=self.name):
            yield

    def _emit(self, event: TelemetryEvent) -> None:
        with self._as_nissa():
            self._sink.emit(event)

    def _raise(self, notices: list[AlertNotice]) -> None:
        registry = self._metrics.registry
        for notice in notices:
            severe = notice.level >= EmergencyLevel.L2_ELEVATED and notice.active
            if notice.active:
                registry.inc(ALERTS_FIRED_TOTAL, labels={"rule": notice.rule})
            self._emit(
                TelemetryEvent(
                    name=ALERT_FIRED if notice.active else ALERT_CLEARED,
                    level=TelemetryLevel.WARNING if severe else TelemetryLevel.INFO,
                    description=f"{notice.rule}: {notice.metric} {notice.condition} (value {notice.value:g})",
                    attributes={
                        "rule": notice.rule,
                        "metric": notice.metric,
                        "value": notice.value,
                        "threshold": notice.threshold,
                        "emergency_level": int(notice.level),
                        "routes": ",".join(notice.routes),
                    },
                )
            )
        registry.set_gauge("nissa.alerts.active", len(self._active(self._clock.now())))
