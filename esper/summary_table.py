"""The end-of-run summary table the command line prints (the figures themselves are in summary.json)."""

from __future__ import annotations

import shlex
from typing import TYPE_CHECKING

from schemas.enums import LIVE_STAGES, SeedLifecycleStage

if TYPE_CHECKING:
    from collections.abc import Iterable

    from schemas.run import GrowthFigures, RunSummary


def seed_outcomes(transitions: Iterable[tuple[str, int, SeedLifecycleStage]], last_step: int | None) -> dict[str, int]:
    """Seeds counted by the stage they ended training in (lower-case stage name), from their (seed id, effect step,
    stage) transitions in order, leaving out those that take effect after ``last_step``, the last trained step (planned
    at the run's last boundaries, never applied). ``last_step`` None: every transition counts. A seed whose last
    transition took its slot back to DORMANT is no outcome: its germination was withdrawn (the trainer refused its
    attach for the emergency level), so it never grew."""
    return _by_stage(final_stages(transitions, last_step).values())


def final_stages(
    transitions: Iterable[tuple[str, int, SeedLifecycleStage]], last_step: int | None
) -> dict[str, SeedLifecycleStage]:
    """Each seed's stage at the end of training (see seed_outcomes), by seed id; withdrawn germinations (back to
    DORMANT) left out."""
    final: dict[str, SeedLifecycleStage] = {}
    for seed_id, step, stage in transitions:
        if last_step is None or step <= last_step:
            final[seed_id] = stage
    return {seed_id: stage for seed_id, stage in final.items() if stage is not SeedLifecycleStage.DORMANT}


def paused_outcomes(
    transitions: Iterable[tuple[str, int, SeedLifecycleStage]], last_step: int | None, paused: Iterable[str]
) -> dict[str, int]:
    """Of the seeds seed_outcomes counts, those ``paused`` (seed ids) at the end, by the same stage name: a paused
    seed passes the host's output through, so "probationary 4" read as four seeds at work when all four were held."""
    final = final_stages(transitions, last_step)
    return _by_stage(final[seed_id] for seed_id in set(paused) if final.get(seed_id) in LIVE_STAGES)


def _by_stage(stages: Iterable[SeedLifecycleStage]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for stage in stages:
        counts[stage.name.lower()] = counts.get(stage.name.lower(), 0) + 1
    return counts


def unapplied_transitions(steps: Iterable[int], last_step: int | None) -> int:
    """How many lifecycle transitions, of their effect ``steps``, take effect after ``last_step`` (never applied): a
    seed's and a slot's alike (a cull's embargo and reset carry no seed id), as report.png's timeline leaves out."""
    return 0 if last_step is None else sum(1 for step in steps if step > last_step)


def unapplied_note(count: int, last_step: int | None) -> str:
    """The words for ``count`` unapplied transitions: the summary table, the report's digest and its timeline's title
    say the same."""
    after = "the last step" if last_step is None else f"step {last_step}"
    return f"{count} transition{'' if count == 1 else 's'} planned for after {after}, not applied"


def format_summary(summary: RunSummary) -> str:
    """The end-of-run table shown on the console."""
    lines = [
        f"run {summary.run_id}: {summary.status}{_by(summary.signal)} in {summary.duration_s:.2f} s"
        f" (exit {summary.exit_code})",
        f"run directory: {summary.run_dir}",
        f"{'actor':<16}{'status':<12}{'handled':>9}{'failed':>8}{'restarts':>10}",
    ]
    lines += [
        f"{state.actor:<16}{state.status.value:<12}{state.handled:>9}{state.failed:>8}{state.restarts:>10}"
        for state in summary.actors
    ]
    if summary.bus_dropped:
        lines.append(f"bus: {summary.bus_dropped} events never reached its observers (training was unaffected)")
    if summary.alerts_fired:
        fired = ", ".join(f"{rule} {n}" for rule, n in sorted(summary.alerts_fired.items()))
        lines.append(f"alerts fired: {fired} (events.jsonl: alert_fired)")
    figures = summary.training
    if figures is not None:
        lines.append(
            f"training: {figures.epochs} epoch{'' if figures.epochs == 1 else 's'}, {figures.global_step} steps, "
            f"{figures.host_parameters + figures.seed_parameters} parameters ({figures.seed_parameters} in seeds)"
        )
        for split, loss, acc in (
            ("train", figures.train_loss, figures.train_accuracy),
            ("val", figures.val_loss, figures.val_accuracy),
            ("test", figures.test_loss, figures.test_accuracy),
        ):
            if acc is not None:  # a NaN loss is kept as None: said, not left out (its accuracy read as real)
                shown = f"{loss:.4f}" if loss is not None else "not finite"
                lines.append(f"  {split:<6} loss {shown}  accuracy {acc:.4f}")
        if figures.skipped_steps or figures.rollbacks:
            # Said only in summary.json: a run of 658 rollbacks read "completed" with "emergency events 3".
            lines.append(
                f"  skipped {figures.skipped_steps} non-finite steps, rolled back {figures.rollbacks}"
                f" time{'' if figures.rollbacks == 1 else 's'}"
                " (events.jsonl: nonfinite_step_skipped, tolaria_rolled_back)"
            )
    growth = summary.growth
    if growth is not None:
        lines += growth_lines(growth, last_step=None if figures is None else figures.global_step)
    if summary.error:
        lines.append(f"error: {summary.error}")
    if summary.status == "interrupted":
        # The run directory's config.toml is the resolved config: the command runs as printed.
        run_dir = summary.run_dir
        config, where = shlex.quote(f"{run_dir}/config.toml"), shlex.quote(str(run_dir))
        lines.append(f"continue it with: python -m esper.run {config} --resume {where}")
    return "\n".join(lines) + "\n"


def _by(signal: str | None) -> str:
    return "" if signal is None else f" by {signal}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} ms"


def growth_lines(growth: GrowthFigures, *, last_step: int | None = None) -> list[str]:
    """The growth part of the summary table: accuracy against the host-only baseline, seeds, decisions;
    ``last_step``: the last trained step, which the unapplied transitions are said to come after."""
    # The baseline ends where the first seed to reach training was germinated: seeds culled before that (at their
    # attach's gate, G1) never changed the host's output.
    where = {
        # An early epoch flatters growth; the hint names the fair comparison.
        "run": (
            f"epoch {growth.baseline_epoch}, before the first seed that trained; nissa.baseline_run compares fairly"
            if growth.baseline_epoch is not None
            else "the first seed that trained came before any epoch ended; nissa.baseline_run compares fairly"
        ),
        "recorded": f"run {growth.baseline_run}, host only, {growth.baseline_epoch} epochs",
        "unknown": "unknown: the earlier sessions' event log was lost, and with it when the first seed trained",
    }.get(growth.baseline_source, "no seed reached training" if growth.seeds else "no seed was grafted")
    seeds = outcomes_text(growth.seeds, growth.paused_seeds) or (
        "none recorded (the earlier sessions' seed transitions were lost)"
        if growth.baseline_source == "unknown"
        else f"none{_why_idle(growth)}"
    )
    if growth.unapplied_transitions:
        seeds += f" ({unapplied_note(growth.unapplied_transitions, last_step)})"
    return [
        f"{'final val accuracy':<28}{_pct(growth.final_val_accuracy)}",
        f"{'host-only val accuracy':<28}{_pct(growth.baseline_val_accuracy)} ({where})",
        f"{'parameters added':<28}{parameters_added(growth)}",
        f"{'seeds by outcome':<28}{seeds}",
        f"{'decision latency p50 / p95':<28}{_ms(growth.decision_p50_ms)} / {_ms(growth.decision_p95_ms)} "
        f"({growth.decisions} decisions{_fallback_share(growth)})",
        f"{'emergency events':<28}{growth.emergency_events}",
        *_rejected_line(growth),
        *_timing_note(growth),
        *(f"earlier sessions' figures incomplete: {note}" for note in growth.earlier_incomplete),
        *(f"note: {note}" for note in growth.end_notes),
    ]


def outcomes_text(counts: dict[str, int], paused: dict[str, int]) -> str:
    """``fossilized 1, probationary 2 (1 paused)``: seeds by final stage, with how many of each were held paused."""
    held = {stage: f" ({n} paused)" for stage, n in paused.items() if n}
    return ", ".join(f"{stage} {n}{held.get(stage, '')}" for stage, n in sorted(counts.items()))


def parameters_added(growth: GrowthFigures) -> str:
    """The grafted parameters in the model at the end, and how many of them are fossilized: the figure counts the
    seeds still on trial too (the final accuracy was measured with them), which the bare number did not say."""
    added, fossilized = growth.parameters_added, growth.parameters_fossilized
    if fossilized is None or not added:
        return str(added)
    if fossilized == added:
        return f"{added} (all fossilized)"
    return f"{added} ({fossilized} fossilized, {added - fossilized} in seeds not yet fossilized)"


# Why the fallback decided (the Decision's fallback_reason): how the summary's note says it, and the events.jsonl
# event that tells more.
_FALLBACK_CAUSES = {
    "timeout_inference": ("over the decision budget at this machine's load", "fallback_applied"),
    "breaker_open": ("while the inference breaker was open", "breaker_transition"),
    "policy_error": ("after the policy failed", "inference_failed"),
    "policy_restarting": ("while the GNN worker restarted", "tamiyo_gnn_worker_restarted"),
    "policy_busy": ("while the policy was still deciding an earlier packet", "tamiyo_state_not_journaled"),
    "unrecorded": ("for a reason not recorded", "fallback_applied"),
}


def _timing_note(growth: GrowthFigures) -> list[str]:
    # A run is reproducible while every plan arrives in time and the policy decides every packet: a fallback decision
    # or an emergency depends on the machine (its load, a worker process that died), and a rerun may then differ.
    notes: list[str] = []
    n = growth.fallback_decisions
    if n:
        reasons = sorted(growth.fallback_reasons.items(), key=lambda rn: (-rn[1], rn[0])) or [("unrecorded", n)]
        causes = [_FALLBACK_CAUSES.get(reason, (reason.replace("_", " "), "fallback_applied")) for reason, _ in reasons]
        said = ", ".join(f"{count} {cause}" for (_, count), (cause, _) in zip(reasons, causes, strict=True))
        events = ["fallback_applied", *(event for _, event in causes)]
        if growth.worker_hangs:
            # The overruns, busy packets and open breaker a hung worker causes name nothing of the hang itself.
            h = growth.worker_hangs
            said += f"; the GNN worker hung {h} time{'s' if h > 1 else ''} and was restarted"
            events.append("tamiyo_gnn_worker_hung")
        where = ", ".join(dict.fromkeys(events))
        notes.append(
            f"note: the fallback decided {n} time{'s' if n > 1 else ''} ({said}); a rerun of the same config may then"
            f" differ (events.jsonl: {where})"
        )
    if growth.emergency_events:
        notes.append(
            "note: an emergency a wall-clock budget raised (hook or epoch time) depends on this machine's load, so a"
            " rerun of the same config may differ; those of non-finite steps repeat (events.jsonl: emergency_signal)"
        )
    return notes


# Reasons every run gives between epoch ends; they say nothing about why the host was not grown.
_ROUTINE_NO_OPS = frozenset({"not_epoch_end", "not_due"})


def _fallback_share(growth: GrowthFigures) -> str:
    return f", {growth.fallback_decisions} by the fallback" if growth.fallback_decisions else ""


def _rejected_line(growth: GrowthFigures) -> list[str]:
    if not growth.rejected_commands:
        return []
    counts = ", ".join(f"{r} {n}" for r, n in sorted(growth.rejected_commands.items(), key=lambda rn: (-rn[1], rn[0])))
    return [f"{'commands rejected':<28}{counts} (by Kasmina; events.jsonl: command_rejected)"]


def _why_idle(growth: GrowthFigures) -> str:
    reasons = _most(r for r in growth.no_op_reasons.items() if r[0] not in _ROUTINE_NO_OPS)
    # A germination the policy chose and the risk engine turned down is named by the risk engine's reason: the
    # policy's own (plateau) is not why nothing was grown.
    vetoed = _most(growth.vetoed_reasons.items())
    # A germination Kasmina refused leaves the controller waiting out a cooldown: its refusal is the reason.
    rejected = _most(growth.rejected_commands.items())
    parts = [f"commands rejected: {rejected}"] if rejected else []
    parts += [f"the controller's reasons: {reasons}"] if reasons else []
    parts += [f"vetoed: {vetoed}"] if vetoed else []
    return f" ({'; '.join(parts)})" if parts else ""


def _most(counts: Iterable[tuple[str, int]]) -> str:
    """The three largest counts, as ``name n, ...`` (ties by name); empty with none."""
    top = sorted(counts, key=lambda rn: (-rn[1], rn[0]))[:3]
    return ", ".join(f"{r} {n}" for r, n in top)
