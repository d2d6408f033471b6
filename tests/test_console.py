"""The console a person watches: epoch bars, one line per lifecycle change, and the events that change the run."""

from __future__ import annotations

import io
import json
from pathlib import Path

import msgspec
import structlog

from esper.console import LOG_LINES, Console, clock_time, progress_bar, stage_line
from esper.log_events import StructlogSink
from esper.logs import configure_logging
from schemas.control import CommandResult
from schemas.domain_enums import CommandKind, CommandRejectReason, TelemetryLevel
from schemas.enums import BreakerState, EmergencyLevel, SeedLifecycleStage
from schemas.nissa import LifecycleRestored, SeedStageChanged
from schemas.runtime import BreakerTransition, ChildRestarted, EmergencySignal
from schemas.telemetry import TelemetryEvent
from tests.nissa_packets import packet


def _console() -> tuple[Console, io.StringIO]:
    stream = io.StringIO()
    return Console(stream, epochs=50, interactive=False), stream


def test_the_progress_bar_fills_in_proportion_and_clamps() -> None:
    assert progress_bar(0.5, width=10) == "[#####-----]"
    assert progress_bar(-1.0, width=4) == "[----]"
    assert progress_bar(2.0, width=4) == "[####]"


def test_a_lifecycle_change_is_one_line_and_the_slot_clean_up_is_not_shown() -> None:
    console, stream = _console()
    culled = SeedStageChanged(
        slot="blocks.1",
        from_stage=SeedLifecycleStage.BLENDING,
        to_stage=SeedLifecycleStage.CULLED,
        step=288,
        seed_id="seed-blocks.1-140",
        blueprint_id="BP005",
        reason="cull:policy:paused",
    )
    console.emit(culled)
    console.emit(
        SeedStageChanged(
            slot="blocks.1", from_stage=SeedLifecycleStage.CULLED, to_stage=SeedLifecycleStage.EMBARGOED, step=288
        )
    )
    line = "  step    288  culled       seed seed-blocks.1-140 in slot blocks.1, blueprint BP005 (cull:policy:paused)"
    assert stage_line(culled) == line
    assert stream.getvalue() == line + "\n"


def test_a_seed_paused_or_resumed_is_a_lifecycle_line_and_a_refused_pause_is_not() -> None:
    """The risk engine's pause showed nothing: a loss spike, then epochs later "culled ... (cull:policy:paused)"."""
    console, stream = _console()

    def result(command_id: str, kind: CommandKind, step: int | None = None, **rejected: object) -> CommandResult:
        fields = {"accepted": step is not None, "applied_step": step, **rejected}
        return msgspec.convert(
            {"command_id": command_id, "kind": kind.value, "seed_id": "seed-blocks.1-140", "target_slot": "blocks.1"}
            | fields,
            CommandResult,
        )

    console.emit(result("c1", CommandKind.PAUSE, 212))
    console.emit(result("c2", CommandKind.RESUME, 260))
    console.emit(result("c3", CommandKind.PAUSE, reason=CommandRejectReason.ILLEGAL_TRANSITION.value))
    console.emit(result("c4", CommandKind.GERMINATE, 300))
    assert stream.getvalue().splitlines() == [
        "  step    212  paused       seed seed-blocks.1-140 in slot blocks.1, held in its stage",
        "  step    260  resumed      seed seed-blocks.1-140 in slot blocks.1",
    ]
    # A rollback past the pause takes its line back, as it does a stage change's.
    console.emit(LifecycleRestored(run_id="r", step=200, lag_steps=8))
    assert stream.getvalue().splitlines()[-1] == (
        "  step    200  rolled back  the seeds are as at step 200 again; 2 lifecycle lines above are undone"
    )


def test_a_rollback_says_how_many_lifecycle_lines_it_undid_and_a_resume_says_nothing() -> None:
    """After a rollback the transitions after its state show again: without a word, a line appeared twice."""
    console, stream = _console()
    for step in (60, 72):
        console.emit(
            SeedStageChanged(
                slot="blocks.2",
                from_stage=SeedLifecycleStage.BLENDING,
                to_stage=SeedLifecycleStage.SHADOWING,
                step=step,
                seed_id="seed-blocks.2-32",
            )
        )
    console.emit(LifecycleRestored(run_id="r", step=64, lag_steps=4))  # undoes 72 (decided at 68), keeps 60
    assert stream.getvalue().splitlines()[-1] == (
        "  step     64  rolled back  the seeds are as at step 64 again; 1 lifecycle line above is undone"
    )
    fresh, quiet = _console()
    fresh.emit(LifecycleRestored(run_id="r", step=64, lag_steps=4))  # a resume's: nothing shown was undone
    assert quiet.getvalue() == ""


def test_loss_spikes_conservative_mode_refused_operations_and_unbuilt_seeds_are_shown_others_are_not() -> None:
    console, stream = _console()
    shown = [
        TelemetryEvent(
            name="loss_spike",
            level=TelemetryLevel.ERROR,
            description="loss_delta 0.7981 > 0.15",
            attributes={"step": 200, "epoch": 9, "rule": 6},
        ),
        TelemetryEvent(
            name="conservative_entered",
            level=TelemetryLevel.WARNING,
            description="conservative mode entered: loss_spike",
            attributes={"reason": "loss_spike", "epoch": 9},
        ),
        TelemetryEvent(
            name="seed_op_failed",
            level=TelemetryLevel.ERROR,
            description="detach of seed s in slot blocks.1 failed: no slot",
            attributes={"slot": "blocks.1"},
        ),
        TelemetryEvent(  # its attach refused at L3 after a rollback: the slot is free again, nothing failed
            name="seed_germination_withdrawn",
            level=TelemetryLevel.INFO,
            description="attach of seed s3 in slot blocks.2 refused (adaptation paused): withdrawn",
            attributes={"slot": "blocks.2", "seed_id": "s3", "step": 52},
        ),
        TelemetryEvent(
            name="preparation_failed",
            level=TelemetryLevel.ERROR,
            description="seed s2 in slot blocks.1: ArtifactCorrupt: blob failed verification",
            attributes={"slot": "blocks.1", "seed_id": "s2"},
        ),
        TelemetryEvent(
            name="kasmina.seed_built_from_catalogue",
            level=TelemetryLevel.WARNING,
            description="blueprint BP005: its artifact is unusable (corrupt); built from the catalogue",
            attributes={"blueprint_id": "BP005"},
        ),
        TelemetryEvent(  # the GNN worker gone for good was said only in events.jsonl
            name="inference_failed",
            level=TelemetryLevel.ERROR,
            description="policy gnn raised: tamiyo gnn worker died (exit code -9) after 3 restarts",
            attributes={"step": 400},
        ),
        TelemetryEvent(  # after a worker restart nothing said when the GNN decided again
            name="tamiyo_gnn_worker_ready",
            level=TelemetryLevel.INFO,
            description="the restarted worker is ready: gnn decides again from step 420",
            attributes={"step": 420, "epoch": 20},
        ),
    ]
    for event in shown:
        console.emit(event)
    console.emit(TelemetryEvent(name="kernel_attached", level=TelemetryLevel.INFO, attributes={"step": 3}))
    assert stream.getvalue().splitlines() == [
        "  step    200  loss spike   loss_delta 0.7981 > 0.15",
        "  epoch    10  conservative mode entered: loss_spike",  # the event's epoch 9 counts from 0
        "  op failed    detach of seed s in slot blocks.1 failed: no slot",
        "  step     52  withdrawn    attach of seed s3 in slot blocks.2 refused (adaptation paused): withdrawn",
        "  not built    seed s2 in slot blocks.1: ArtifactCorrupt: blob failed verification",
        "  catalogue    blueprint BP005: its artifact is unusable (corrupt); built from the catalogue",
        "  step    400  policy failed policy gnn raised: tamiyo gnn worker died (exit code -9) after 3 restarts",
        "  step    420  policy back  the restarted worker is ready: gnn decides again from step 420",
    ]


def test_conservative_mode_entered_again_by_a_rewound_controller_shows_once() -> None:
    """After an L3 rollback the controller, rewound to before its entry, entered conservative mode again at the epoch
    trained again: the console said "conservative mode entered" twice for what the user saw as one entry."""
    console, stream = _console()

    def conservative(name: str, epoch: int) -> TelemetryEvent:
        reason = "emergency_l3_conservative"
        text = "conservative mode entered: " + reason if name == "conservative_entered" else "conservative mode exited"
        return TelemetryEvent(name=name, level=TelemetryLevel.WARNING, description=text, attributes={"epoch": epoch})

    for name, epoch in [
        ("conservative_entered", 0),
        ("conservative_entered", 0),  # the rewound controller's
        ("conservative_exited", 4),
        ("conservative_entered", 6),  # a new entry after the exit shows
    ]:
        console.emit(conservative(name, epoch))
    assert stream.getvalue().splitlines() == [
        "  epoch     1  conservative mode entered: emergency_l3_conservative",
        "  epoch     5  conservative mode exited",
        "  epoch     7  conservative mode entered: emergency_l3_conservative",
    ]


def test_the_header_names_the_run_and_how_to_watch_it() -> None:
    console, stream = _console()
    console.started("20261205-1", Path("runs/20261205-1"), "events.jsonl", resume=False)
    console.started("20261205-1", Path("runs/20261205-1"), "events.jsonl", resume=True)
    url = "http://127.0.0.1:9100/metrics"
    console.started("20261205-1", Path("runs/20261205-1"), "events.jsonl", resume=False, metrics_url=url)
    assert stream.getvalue().splitlines() == [
        "run 20261205-1 in runs/20261205-1",
        "  watch it: python -m esper.tail runs/20261205-1/events.jsonl --follow --state",
        "resuming 20261205-1 in runs/20261205-1",
        "  watch it: python -m esper.tail runs/20261205-1/events.jsonl --follow --state",
        "run 20261205-1 in runs/20261205-1",
        "  watch it: python -m esper.tail runs/20261205-1/events.jsonl --follow --state",
        "  metrics:  http://127.0.0.1:9100/metrics",
    ]


def _listening(port: int) -> TelemetryEvent:
    url = f"http://127.0.0.1:{port}/metrics"
    return TelemetryEvent(
        name="metrics_endpoint_listening", level=TelemetryLevel.INFO, description=f"serving {url}",
        attributes={"port": port, "url": url},
    )  # fmt: skip


def test_the_metrics_url_of_port_0_is_shown_once_nissa_has_bound_it() -> None:
    """With nissa.prometheus_port = 0 the header cannot name the port; Nissa's event does, once (again only if a
    restarted Nissa bound another). A header that named the URL is not repeated."""
    console, stream = _console()
    console.started("r", Path("runs/r"), "events.jsonl", resume=False)
    for event in (_listening(41234), _listening(41234), _listening(41999)):
        console.emit(event)
    assert stream.getvalue().splitlines()[2:] == [
        "  metrics:  http://127.0.0.1:41234/metrics",
        "  metrics:  http://127.0.0.1:41999/metrics",
    ]
    console, stream = _console()
    console.started("r", Path("runs/r"), "events.jsonl", resume=False, metrics_url="http://127.0.0.1:9100/metrics")
    console.emit(_listening(9100))
    assert stream.getvalue().splitlines()[2:] == ["  metrics:  http://127.0.0.1:9100/metrics"]


def test_a_restarted_nissa_that_lost_its_port_says_so_then_gives_the_new_url() -> None:
    console, stream = _console()
    console.started("r", Path("runs/r"), "events.jsonl", resume=False)
    moved = TelemetryEvent(
        name="metrics_endpoint_moved", level=TelemetryLevel.WARNING, attributes={"port": 41234},
        description="cannot serve /metrics on 127.0.0.1:41234 again (address in use): a scraper of that URL loses it;"
        " serving on another free port",
    )  # fmt: skip
    for event in (_listening(41234), moved, _listening(41999)):
        console.emit(event)
    assert stream.getvalue().splitlines()[2:] == [
        "  metrics:  http://127.0.0.1:41234/metrics",
        "  metrics moved cannot serve /metrics on 127.0.0.1:41234 again (address in use): a scraper of that URL loses"
        " it; serving on another free port",
        "  metrics:  http://127.0.0.1:41999/metrics",
    ]


def test_on_a_terminal_the_epoch_line_keeps_the_full_bar() -> None:
    stream = io.StringIO()
    console = Console(stream, epochs=10, interactive=True)
    console.on_packet(packet(8, epoch=0, val=0.9))
    assert stream.getvalue().splitlines()[-1].startswith(f"epoch   1/10 {progress_bar(1.0)} loss ")


def test_epoch_lines_show_the_time_elapsed_and_the_time_left_at_the_sessions_pace() -> None:
    now = [100.0]
    stream = io.StringIO()
    console = Console(stream, epochs=10, interactive=False, clock=lambda: now[0])
    now[0] = 104.0  # start-up: counts as elapsed, not in the pace
    console.on_packet(packet(4, epoch=0))  # half-way through the first epoch: the pace's origin
    now[0] = 106.0
    console.on_packet(packet(8, epoch=0, val=0.9))  # half an epoch in 2 s: 9 epochs left take 36 s
    now[0] = 3704.0
    console.on_packet(packet(16, epoch=1, val=0.8))
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("epoch   1/10 loss ")  # off a terminal: no bar, as README says
    assert lines[0].endswith("params +0  [0:06<0:36]")
    assert lines[1].endswith("[1:00:04<5:20:00]")  # 1.5 epochs in 3600 s: 8 epochs left take 19200 s
    assert [clock_time(s) for s in (0.4, 59.6, 61, 3599, 3600)] == ["0:00", "1:00", "1:01", "59:59", "1:00:00"]


def test_a_breaker_closing_again_is_shown_as_its_opening_is() -> None:
    """The bus coming back (oona.publish's breaker closing) was info-level and never on the console, while the
    outage's warnings were: the operator saw the outage and never its end."""
    console, stream = _console()
    for from_state, to_state, reason in (
        (BreakerState.CLOSED, BreakerState.OPEN, "3 consecutive failures, last: BusUnavailable"),
        (BreakerState.OPEN, BreakerState.HALF_OPEN, "open_elapsed"),
        (BreakerState.HALF_OPEN, BreakerState.CLOSED, "probe_succeeded 1/1"),
    ):
        console.emit(
            BreakerTransition(breaker="oona.publish", from_state=from_state, to_state=to_state, reason=reason, at_s=1.0)
        )
    assert stream.getvalue().splitlines() == [
        "  recovered oona.publish: its breaker closed again (probe_succeeded 1/1)"
    ]


def test_the_runs_warnings_without_a_progress_line_get_one_and_the_file_keeps_their_fields(tmp_path: Path) -> None:
    """These printed as structlog's key=value lines among the progress lines (a breaker's with a monotonic at_s that
    means nothing to a reader) while their counterparts ('policy back', 'recovered') had lines of their own."""
    console = io.StringIO()
    handle = configure_logging(tmp_path, console_stream=console, colors=False, console_lines=LOG_LINES)
    try:
        log = structlog.get_logger("test")
        log.warning("tamiyo_gnn_worker_restarted", actor="tamiyo", exit_code=-9, restarts=1, max_restarts=3)
        log.warning("tamiyo_gnn_worker_hung", actor="tamiyo", silent_s=0.5, pid=14707)
        log.warning("tamiyo_gnn_worker_hung", actor="tamiyo", silent_s=10.0, starting=True)
        log.warning("tamiyo_state_not_journaled", step=80, reason="policy_busy")
        log.warning(
            "oona_bus_unavailable",
            actor="oona-publisher",
            error="the Redis server did not answer: ConnectionError: Connection closed by server.",
            dropping="until it answers",
        )
        sink = StructlogSink()
        for to_state, from_state in (
            (BreakerState.OPEN, BreakerState.CLOSED),
            (BreakerState.CLOSED, BreakerState.OPEN),
        ):
            reason = "3 consecutive failures, last: deadline_exceeded"
            sink.emit(BreakerTransition("tamiyo.inference", from_state, to_state, reason, at_s=11424.127))
        log.warning("oona_redis_password_unneeded", url="redis://:***@127.0.0.1:6379/0", detail="no password asked")
        log.info("oona_bus_restored", actor="oona-publisher", dropped=3)  # no line of its own: structlog's as before
    finally:
        handle.release()
    lines = console.getvalue().splitlines()
    assert lines[:6] == [
        "  policy down  the GNN worker was killed by signal 9: restart 1 of 3, ready in a few seconds (it imports"
        " torch); the fallback decides meanwhile",
        "  policy hung  the GNN worker (pid 14707) did not answer within 0.5 s: killed (a new one is started while"
        " its restarts last)",
        "  policy hung  the restarted GNN worker was not ready within 10.0 s: killed (a new one is started while its"
        " restarts last)",
        "  step     80  not saved    the controller's state at this epoch end (the policy was still deciding an"
        " earlier packet): a resume from here starts from its previous saved state",
        "  bus down     the Redis server did not answer: ConnectionError: Connection closed by server: events for"
        " observers are dropped until it answers (training goes on)",
        "  breaker open tamiyo.inference: 3 consecutive failures, last: deadline_exceeded",
    ]
    # Closed again: the progress console's "recovered" line says so (Console.emit), so not twice.
    assert lines[6] == "  bus password redis://:***@127.0.0.1:6379/0: no password asked"
    assert len(lines) == 8
    assert "oona_bus_restored" in lines[7]
    assert "at_s" not in console.getvalue()
    logged = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert [entry["event"] for entry in logged] == [
        "tamiyo_gnn_worker_restarted",
        "tamiyo_gnn_worker_hung",
        "tamiyo_gnn_worker_hung",
        "tamiyo_state_not_journaled",
        "oona_bus_unavailable",
        "breaker_transition",
        "breaker_transition",
        "oona_redis_password_unneeded",
        "oona_bus_restored",
    ]
    assert logged[5]["at_s"] == 11424.127  # the file keeps every field


def test_an_emergency_or_a_restart_the_console_formats_is_not_also_printed_raw(tmp_path: Path) -> None:
    """An emergency printed twice: structlog's ``emergency_signal ... monotonic_time_ms=...`` warning line, then the
    console's ``emergency L2_ELEVATED: ...`` line. The file keeps the event with every field; the restart's line keeps
    the raw line's restart count and backoff (``restarted nissa`` alone lost them)."""
    stream = io.StringIO()
    handle = configure_logging(
        tmp_path, console_stream=stream, colors=False, console_level="info", console_lines=LOG_LINES
    )
    console = Console(stream, epochs=3, interactive=False)
    try:
        sink = StructlogSink()
        for event in (
            EmergencySignal(
                level=EmergencyLevel.L2_ELEVATED,
                previous=EmergencyLevel.L1_NOTICE,
                reason="failed epoch: hook_budget",
                origin="tolaria",
                monotonic_time_ms=19985844.99,
                run_id="rb",
                step=420,
                epoch=21,
            ),
            ChildRestarted(supervisor="root", child="nissa", restarts=2, backoff_s=0.25),
        ):
            sink.emit(event)
            console.emit(event)
    finally:
        handle.release()
    assert stream.getvalue().splitlines() == [
        "  emergency L2_ELEVATED: failed epoch: hook_budget",
        "  restarted nissa (restart 2, backoff 0.25 s)",
    ]
    logged = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert [entry["event"] for entry in logged] == ["emergency_signal", "child_restarted"]
    assert logged[0]["monotonic_time_ms"] == 19985844.99


def _rejected(reason: str, step: int, detail: str = "") -> TelemetryEvent:
    return TelemetryEvent(
        name="command_rejected",
        level=TelemetryLevel.WARNING,
        description=f"command cmd-{step} (germinate) rejected: {reason}{detail}",
        attributes={"reason": reason, "command_id": f"cmd-{step}", "kind": "germinate", "step": step},
    )


def test_commands_kasmina_refused_show_once_per_reason_then_as_a_count_each_time_it_doubles() -> None:
    """A nonce ledger too small refused 78 commands and a budget too small 24: the console said nothing at all."""
    console, stream = _console()
    for step in (10, 20, 30):
        console.emit(_rejected("memory_budget_exceeded", step, ": G0: memory_budget"))
    console.emit(_rejected("stale", 35))
    console.emit(
        TelemetryEvent(
            name="nonce_ledger_full",
            level=TelemetryLevel.CRITICAL,
            description="nonce ledger full of 1 fresh entries; refusing commands",
            attributes={"capacity": 1},
        )
    )
    console.on_packet(packet(40, epoch=0, val=0.9))
    console.on_packet(packet(80, epoch=1, val=0.9))  # nothing refused in this epoch: no count line
    for step in (81, 82):
        console.emit(_rejected("memory_budget_exceeded", step))
    console.on_packet(packet(120, epoch=2, val=0.9))  # 5 refused: not yet twice the 3 told
    console.emit(_rejected("memory_budget_exceeded", 121))
    console.on_packet(packet(160, epoch=3, val=0.9))
    lines = stream.getvalue().splitlines()
    assert lines[0] == (
        "  step     10  rejected     command cmd-10 (germinate) rejected: memory_budget_exceeded: G0: memory_budget"
        " (repeats: a count each time it doubles)"
    )
    assert lines[1].startswith("  step     35  rejected     command cmd-35 (germinate) rejected: stale")
    assert lines[2] == "  ledger full  nonce ledger full of 1 fresh entries; refusing commands"
    assert lines[3].startswith("epoch   1/50 ")
    assert lines[4] == "  epoch     1  rejected     3 commands so far: memory_budget_exceeded"
    assert [line[:12] for line in lines[5:7]] == ["epoch   2/50", "epoch   3/50"]
    assert lines[7].startswith("epoch   4/50 ")
    assert lines[8] == "  epoch     4  rejected     6 commands so far: memory_budget_exceeded"
    assert len(lines) == 9
