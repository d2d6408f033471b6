"""The inference deadline and breaker: overruns fall back to the heuristic, 3 open the breaker, a probe closes it."""

from __future__ import annotations

import asyncio
import threading
from typing import TYPE_CHECKING, final

import msgspec
import structlog.testing

from actors.tamiyo.gnn_state import PolicyRestarting, PolicyWorker
from actors.tamiyo.heuristic import HeuristicState
from actors.tamiyo.observe import build_observation, has_candidate, no_candidate_reason
from actors.tamiyo.outcomes import OutcomeState
from actors.tamiyo.policy import BlueprintCandidate, Decision
from actors.tamiyo.state import TamiyoCounters, TamiyoState
from actors.tamiyo.state_journal import read_entries
from esper.run_tally import RunTally
from esper.summary_table import growth_lines
from schemas.config import BreakerConfig, TamiyoConfig
from schemas.domain_enums import PolicyAction, TelemetryLevel
from schemas.enums import BreakerState, SeedLifecycleStage
from schemas.runtime import BreakerTransition
from schemas.state import SeedState
from schemas.telemetry import TelemetryEvent
from tests._tamiyo_harness import SLOTS, GatedPolicy, TamiyoHarness, dormant, packet

if TYPE_CHECKING:
    from pathlib import Path

    import pytest

    from actors.tamiyo.policy import Observation
    from esper.runtime.events import RecordingSink

BUDGET_S = 0.045
CONFIG = TamiyoConfig(
    policy="gnn",
    decision_budget_ms=BUDGET_S * 1e3,
    inference_breaker=BreakerConfig(failure_threshold=3, open_s=30.0, success_threshold=2),
)


def fallback_reasons(sink: RecordingSink) -> list[object]:
    return [e.attributes["reason"] for e in sink.of_type(TelemetryEvent) if e.name == "fallback_applied"]


async def test_overruns_fall_back_open_the_breaker_and_a_probe_closes_it(tmp_path: Path, sink: RecordingSink) -> None:
    stub = GatedPolicy(asyncio.get_running_loop())
    async with TamiyoHarness(tmp_path, sink, config=CONFIG, policy=stub) as h:
        for step in (1, 2, 3):
            await h.ref.tell(packet(step, 0))
            async with asyncio.timeout(5):
                await stub.entered.wait()
            stub.entered.clear()
            h.clock.advance(BUDGET_S)  # the deadline passes while the policy is still blocked on the lane
            decision = await h.next()
            assert decision.decided_on_step == step
            assert decision.policy == "heuristic (fallback)"
            stub.gate.release()  # the late job finishes (it is never abandoned); its result is discarded
        stats = await h.stats()
        assert stats.inference_breaker is BreakerState.OPEN
        assert stats.timeouts == 3
        assert stats.fallbacks == 3

        # Open: the heuristic decides without asking the policy.
        calls = stub.calls
        open_decision = await h.decide(packet(4, 0))
        assert open_decision.policy == "heuristic (fallback)"
        assert stub.calls == calls

        # After the cool-down, half-open probes reach the policy again; two successes close the breaker.
        stub.slow = False
        h.clock.advance(30.0)
        probe = await h.decide(packet(5, 0))
        assert probe.policy == "gnn"
        assert (await h.stats()).inference_breaker is BreakerState.HALF_OPEN
        second = await h.decide(packet(6, 0))
        assert second.policy == "gnn"
        stats = await h.stats()
    assert stats.inference_breaker is BreakerState.CLOSED
    assert stats.breaker_opened == 1
    assert fallback_reasons(sink) == ["timeout_inference"] * 3 + ["breaker_open"]
    assert [e.name for e in sink.of_type(TelemetryEvent)].count("timeout_inference") == 3
    states = [t.to_state for t in sink.of_type(BreakerTransition)]
    assert states == [BreakerState.OPEN, BreakerState.HALF_OPEN, BreakerState.HALF_OPEN, BreakerState.CLOSED]


async def test_a_policy_still_deciding_an_earlier_packet_is_passed_over_until_it_returns(
    tmp_path: Path, sink: RecordingSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A late job held the actor until it returned (the next decisions waited, and the trainer missed their plans):
    now the next decision gives it until its own deadline, then the fallback decides (policy_busy, an overrun), and
    the epoch end it decided is not journaled (the policy's state is the lane's)."""
    stub = GatedPolicy(asyncio.get_running_loop())
    journal = tmp_path / "tamiyo_state.jsonl"
    async with TamiyoHarness(tmp_path, sink, config=CONFIG, policy=stub, state_journal=journal) as h:
        try:
            await h.ref.tell(packet(1, 0))
            async with asyncio.timeout(5):
                await stub.entered.wait()
            h.clock.advance(BUDGET_S)
            first = await h.next()
            waiting = asyncio.Event()
            sleep = h.clock.sleep

            async def deadline(delay_s: float) -> None:
                waiting.set()
                await sleep(delay_s)

            monkeypatch.setattr(h.clock, "sleep", deadline)
            with structlog.testing.capture_logs() as logs:
                await h.ref.tell(packet(2, 0, validation_loss=1.0))  # an epoch end, while the policy is still blocked
                async with asyncio.timeout(5):
                    await waiting.wait()  # the decision waits for the late job up to its own deadline
                h.clock.advance(BUDGET_S)
                busy = await h.next()
                stats = await h.stats()
            assert (first.policy, busy.policy) == ("heuristic (fallback)", "heuristic (fallback)")
            assert stub.calls == 1, "no second inference while the first is on the lane"
            assert (stats.timeouts, stats.fallbacks) == (2, 2)
            assert [e["step"] for e in logs if e["event"] == "tamiyo_state_not_journaled"] == [2]

            # Once it returns, the policy decides again (the next decision waits for the late job's end, not longer).
            stub.slow = False
            stub.gate.release()
            after = await h.decide(packet(3, 1, validation_loss=1.0))
            assert after.policy == "gnn"
            assert stub.calls == 2
            await h.state()  # a state query waits out nothing now, and answers
        finally:
            stub.slow = False
            stub.gate.release()  # a failed assertion must not leave the lane blocked for the teardown
    assert fallback_reasons(sink) == ["timeout_inference", "policy_busy"]
    assert [e.step for e in read_entries(journal)[0]] == [3]


@final
class GatedGrower:
    """A GatedPolicy that proposes a germination, keeping each it returned and each the actor withdrew from it."""

    version = "grower-1"

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.gated = GatedPolicy(loop)
        self.returned: list[Decision] = []
        self.withdrawn: list[Decision] = []
        self.counted: list[int] = []

    def decide(self, observation: Observation) -> Decision:
        self.gated.decide(observation)
        decision = Decision(action=PolicyAction.GERMINATE, target_slot="s0", blueprint_id="bp-small", reason="grow")
        self.returned.append(decision)
        return decision

    def withdraw(self, decision: Decision) -> None:
        self.withdrawn.append(decision)

    def count_germination(self, epoch: int) -> None:
        self.counted.append(epoch)


async def test_a_late_decision_the_fallback_replaced_is_withdrawn_from_its_policy(
    tmp_path: Path, sink: RecordingSink
) -> None:
    """A germination that came past its deadline was discarded, yet counted as made in the policy's state (a
    schedule moved on, a cooldown started) for growth that never happened."""
    grower = GatedGrower(asyncio.get_running_loop())
    async with TamiyoHarness(tmp_path, sink, config=CONFIG, policy=grower) as h:
        await h.ref.tell(packet(1, 0))
        async with asyncio.timeout(5):
            await grower.gated.entered.wait()
        h.clock.advance(BUDGET_S)
        assert (await h.next()).policy == "heuristic (fallback)"
        grower.gated.gate.release()
        grower.gated.slow = False
        in_time = await h.decide(packet(2, 0))
    # The overrun entered conservative mode, which vetoes the germination decided in time: withdrawn too, after the
    # late one (collected before the policy decided again).
    assert (in_time.policy, in_time.command, in_time.risk_reason) == ("gnn", None, "pause_triggered")
    assert len(grower.returned) == 2
    assert [id(d) for d in grower.withdrawn] == [id(d) for d in grower.returned]


async def test_the_fallbacks_germination_in_place_of_a_late_one_starts_the_policys_cooldown(
    tmp_path: Path, sink: RecordingSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The heuristic's late germination was withdrawn although the fallback germinated at that same epoch end: the
    policy's cooldown did not start, and it germinated again at the first epoch end conservative mode allowed."""
    config = TamiyoConfig(
        policy="heuristic",
        deadline_fallback="heuristic",
        decision_budget_ms=BUDGET_S * 1e3,
        germinate_cooldown_epochs=3,
        plateau_patience_epochs=1,
        conservative_exit_clean_epochs=1,
    )
    seen = HeuristicState(first_epoch=0, last_epoch=0, best_validation_loss=1.0)
    state = TamiyoState(
        policy="heuristic",
        policy_version="heuristic-1",
        fallback=seen,
        outcomes=OutcomeState(),
        counters=TamiyoCounters(),
        heuristic=seen,
    )
    loop = asyncio.get_running_loop()
    gate, lane_held, waiting = threading.Semaphore(0), asyncio.Event(), asyncio.Event()

    def hold_the_lane() -> None:
        loop.call_soon_threadsafe(lane_held.set)
        gate.acquire()

    async with TamiyoHarness(tmp_path, sink, config=config, state=state) as h:
        sleep = h.clock.sleep

        async def deadline(delay_s: float) -> None:
            waiting.set()
            await sleep(delay_s)

        monkeypatch.setattr(h.clock, "sleep", deadline)
        holder = asyncio.create_task(h.lane.run(hold_the_lane))
        try:
            async with asyncio.timeout(5):
                await lane_held.wait()
            await h.ref.tell(packet(10, 1, validation_loss=1.0))  # a plateau: both heuristics germinate
            async with asyncio.timeout(5):
                await waiting.wait()  # the policy's job waits behind the held lane past its deadline
            h.clock.advance(BUDGET_S)
            replaced = await h.next()
        finally:
            gate.release()
            await holder
        # The late job germinates too, and is collected before the next decision.
        after = [await h.decide(packet(10 * epoch, epoch, validation_loss=1.0)) for epoch in (2, 3, 4)]
    assert (replaced.policy, replaced.reason) == ("heuristic (fallback)", "plateau")
    assert replaced.command is not None
    assert [(d.policy, d.reason, d.command is not None) for d in after] == [
        ("heuristic", "cooldown", False),
        ("heuristic", "cooldown", False),  # out of conservative mode: without the cooldown it germinated here
        ("heuristic", "plateau", True),  # 3 epochs after the fallback's germination
    ]


@final
class GerminatesThenFails:
    """A GNN stand-in that germinates once, then raises on every decision (its worker gone for good, say)."""

    version = "germinates-then-fails-1"

    def __init__(self) -> None:
        self.calls = 0

    def decide(self, observation: Observation) -> Decision:
        self.calls += 1
        if self.calls == 1:
            return Decision(action=PolicyAction.GERMINATE, target_slot="s0", blueprint_id="bp-small", reason="gnn")
        raise RuntimeError("the worker is gone")


async def test_the_policys_germination_starts_the_fallbacks_cooldown(tmp_path: Path, sink: RecordingSink) -> None:
    """The fallback knew only its own germinations: one the GNN made at the epoch end just before it failed (and its
    breaker opened) left the fallback's cooldown unstarted, so it germinated again at once."""
    config = msgspec.structs.replace(
        CONFIG, deadline_fallback="heuristic", germinate_cooldown_epochs=3, plateau_patience_epochs=1
    )
    seen = HeuristicState(first_epoch=0, last_epoch=0, best_validation_loss=1.0)
    state = TamiyoState(
        policy="gnn", policy_version="gnn-0", fallback=seen, outcomes=OutcomeState(), counters=TamiyoCounters()
    )
    async with TamiyoHarness(tmp_path, sink, config=config, policy=GerminatesThenFails(), state=state) as h:
        grown = await h.decide(packet(20, 1, validation_loss=1.0))
        after = [await h.decide(packet(10 * (epoch + 1), epoch, validation_loss=1.0)) for epoch in (2, 3, 4)]
        fallback = (await h.state()).fallback
    assert (grown.policy, grown.command is not None) == ("gnn", True)
    assert [(d.policy, d.reason, d.command is not None) for d in after] == [
        ("heuristic (fallback)", "cooldown", False),  # the plateau: without the GNN's germination it grew here
        ("heuristic (fallback)", "cooldown", False),
        ("heuristic (fallback)", "plateau", True),  # 3 epochs after the GNN's germination
    ]
    assert fallback.last_germination_epoch == 4
    assert fallback_reasons(sink) == ["policy_error", "policy_error", "policy_error"]


@final
class GraftRefusedThenFails:
    """An every_k stand-in: germinates, learns at the next packet that Kasmina refused the graft, then raises on every
    decision (so the fallback decides)."""

    version = "graft-refused-then-fails-1"

    def __init__(self) -> None:
        self.calls = 0
        self.unmade = False

    def decide(self, observation: Observation) -> Decision:
        self.calls += 1
        if self.calls == 1:
            return Decision(action=PolicyAction.GERMINATE, target_slot="s0", blueprint_id="bp-small", reason="every_k")
        if self.calls == 2:
            self.unmade = True
            return Decision(action=PolicyAction.NO_OP, reason="not_epoch_end")
        raise RuntimeError("the policy is gone")

    def take_unmade(self) -> bool:
        unmade, self.unmade = self.unmade, False
        return unmade


async def test_a_policy_germination_found_not_made_gives_the_fallbacks_cooldown_back(
    tmp_path: Path, sink: RecordingSink
) -> None:
    """The policy's germination started the fallback's cooldown at once; every_k then found it refused and put its
    own schedule back, but the fallback waited out a cooldown for a seed never made."""
    config = msgspec.structs.replace(
        CONFIG, deadline_fallback="heuristic", germinate_cooldown_epochs=3, plateau_patience_epochs=1
    )
    seen = HeuristicState(first_epoch=0, last_epoch=0, best_validation_loss=1.0)
    state = TamiyoState(
        policy="gnn", policy_version="gnn-0", fallback=seen, outcomes=OutcomeState(), counters=TamiyoCounters()
    )
    async with TamiyoHarness(tmp_path, sink, config=config, policy=GraftRefusedThenFails(), state=state) as h:
        grown = await h.decide(packet(20, 1, validation_loss=1.0))
        await h.decide(packet(25, 2))  # the graft's seed never appears: refused
        after = await h.decide(packet(30, 2, validation_loss=1.0))
        fallback = (await h.state()).fallback
    assert (grown.policy, grown.command is not None) == ("gnn", True)
    assert (after.policy, after.reason, after.command is not None) == ("heuristic (fallback)", "plateau", True)
    assert fallback.last_germination_epoch == 2


async def test_a_decision_in_time_is_the_policys_and_counts_as_a_success(tmp_path: Path, sink: RecordingSink) -> None:
    stub = GatedPolicy(asyncio.get_running_loop())
    stub.slow = False
    async with TamiyoHarness(tmp_path, sink, config=CONFIG, policy=stub) as h:
        decision = await h.decide(packet(1, 0))
        stats = await h.stats()
    assert decision.policy == "gnn"
    assert stats.fallbacks == 0
    assert stats.timeouts == 0
    assert stats.inference_breaker is BreakerState.CLOSED


async def test_with_no_candidate_and_no_live_seed_inference_is_skipped(tmp_path: Path, sink: RecordingSink) -> None:
    """Every slot taken and no seed live (run r6 of the long sweep: an initial seed in each slot) said no_candidate,
    which names a blueprint fitting no free slot; with a live seed the heuristic says no_free_slot for the same."""
    stub = GatedPolicy(asyncio.get_running_loop())
    fossilized = tuple(
        SeedState(slot=s, stage=SeedLifecycleStage.FOSSILIZED, layer_depth=i) for i, s in enumerate(SLOTS)
    )
    embargoed = (*fossilized[:2], SeedState(slot=SLOTS[2], stage=SeedLifecycleStage.EMBARGOED, layer_depth=2))
    unfit = BlueprintCandidate(blueprint_id="bp-conv", slot_parameters={"s9": 100})  # fits no slot of this host
    ends = ((1, 0, fossilized), (2, 1, embargoed))
    async with TamiyoHarness(tmp_path, sink, config=CONFIG, policy=stub) as h:
        decisions = [await h.decide(packet(step, e, validation_loss=1.0, seeds=seeds)) for step, e, seeds in ends]
        stats = await h.stats()
    assert [(d.command, d.reason) for d in decisions] == [(None, "no_free_slot")] * 2
    assert stub.calls == 0
    assert stats.inference_skipped == 2
    # A free slot no offered blueprint fits is what no_candidate names.
    free = build_observation(packet(3, 0, seeds=(*fossilized[:2], dormant(SLOTS[2]))), (unfit,))
    assert not has_candidate(free)
    assert no_candidate_reason(free) == "no_candidate"


async def test_a_skipped_inference_names_its_reason_once_per_epoch_end(tmp_path: Path, sink: RecordingSink) -> None:
    """With every slot taken, every packet said no_free_slot (2 epochs gave the summary ``no_free_slot 10``, where
    README counts one per epoch end): the packets between epoch ends are not_epoch_end, as the policies say."""
    stub = GatedPolicy(asyncio.get_running_loop())
    full = tuple(SeedState(slot=s, stage=SeedLifecycleStage.FOSSILIZED, layer_depth=i) for i, s in enumerate(SLOTS))
    epochs = [(1, 0, None), (2, 0, None), (3, 0, 1.0), (4, 1, None), (5, 1, 0.9), (6, 1, 0.9)]
    tally = RunTally()
    async with TamiyoHarness(tmp_path, sink, config=CONFIG, policy=stub) as h:
        decisions = [await h.decide(packet(s, e, validation_loss=v, seeds=full)) for s, e, v in epochs]
    assert [d.reason for d in decisions] == [
        "not_epoch_end",
        "not_epoch_end",
        "no_free_slot",
        "not_epoch_end",
        "no_free_slot",
        "not_epoch_end",  # a second packet of epoch 1 with a validation loss: not that epoch's first
    ]
    assert stub.calls == 0
    for d in decisions:
        tally.on_decision(d)
    growth = tally.figures(seed_parameters=0)
    assert growth.no_op_reasons == {"not_epoch_end": 4, "no_free_slot": 2}
    assert any("(the controller's reasons: no_free_slot 2)" in line for line in growth_lines(growth))


async def test_the_no_op_fallback_is_used_when_configured(tmp_path: Path, sink: RecordingSink) -> None:
    stub = GatedPolicy(asyncio.get_running_loop())
    config = TamiyoConfig(policy="gnn", deadline_fallback="no_op", decision_budget_ms=BUDGET_S * 1e3)
    async with TamiyoHarness(tmp_path, sink, config=config, policy=stub) as h:
        await h.ref.tell(packet(1, 0))
        async with asyncio.timeout(5):
            await stub.entered.wait()
        h.clock.advance(BUDGET_S)
        decision = await h.next()
        stub.gate.release()
        await h.stats()
    assert decision.policy == "no_op (fallback)"
    assert decision.command is None


class RestartingPolicy:
    """A policy whose worker is being started again for its first ``restarting`` calls, then decides."""

    version = "restarting-1"

    def __init__(self, restarting: int) -> None:
        self.restarting = restarting
        self.calls = 0

    def decide(self, observation: Observation) -> Decision:
        self.calls += 1
        if self.calls <= self.restarting:
            raise PolicyRestarting("tamiyo gnn worker died (restart 1 of 3 not ready yet)")
        return Decision(reason="ready")


async def test_decisions_while_the_worker_restarts_fall_back_without_opening_the_breaker(
    tmp_path: Path, sink: RecordingSink
) -> None:
    """A worker's start-up takes seconds: every decision meanwhile counted as a failure, so one death opened the
    breaker for its 30 s and, in a short run, switched the GNN off for good."""
    stub = RestartingPolicy(restarting=5)
    async with TamiyoHarness(tmp_path, sink, config=CONFIG, policy=stub) as h:
        fallbacks = [await h.decide(packet(step, 0)) for step in range(1, 6)]
        ready = await h.decide(packet(6, 0))
        stats = await h.stats()
    assert {d.policy for d in fallbacks} == {"heuristic (fallback)"}
    assert ready.policy == "gnn"
    assert stats.inference_breaker is BreakerState.CLOSED
    assert fallback_reasons(sink) == ["policy_restarting"] * 5
    assert {d.fallback_reason for d in fallbacks} == {"policy_restarting"}
    assert ready.fallback_reason == ""


async def test_the_policy_deciding_again_after_a_worker_restart_is_said_once(
    tmp_path: Path, sink: RecordingSink
) -> None:
    """After a worker restart nothing said when the GNN decided again: the console showed the restart, then silence,
    while the fallback decided for an unknown time."""
    stub = RestartingPolicy(restarting=3)
    async with TamiyoHarness(tmp_path, sink, config=CONFIG, policy=stub) as h:
        for step in range(1, 4):
            await h.decide(packet(step, 0))
        assert not [e for e in sink.of_type(TelemetryEvent) if e.name == "tamiyo_gnn_worker_ready"]
        for step in range(4, 7):
            await h.decide(packet(step, 0))
    [ready] = [e for e in sink.of_type(TelemetryEvent) if e.name == "tamiyo_gnn_worker_ready"]
    assert ready.level is TelemetryLevel.INFO
    assert ready.attributes["step"] == 4
    assert "decides again from step 4" in ready.description


@final
class CoveragePolicy:
    """Decides NO_OP on the coverages given in turn, as the GNN reports them."""

    version = "coverage-1"

    def __init__(self, coverages: list[float]) -> None:
        self.coverages = coverages

    def decide(self, observation: Observation) -> Decision:
        return Decision(reason="covered", feature_coverage=self.coverages.pop(0))


async def test_the_policys_input_coverage_reaches_the_wire_and_low_coverage_is_an_event(
    tmp_path: Path, sink: RecordingSink
) -> None:
    """Nothing reported the GNN's feature coverage: the tamiyo_coverage_low alert could never fire, and
    degraded_inputs (REFERENCE: WARNING below 0.3, CRITICAL below 0.1) was never raised."""
    stub = CoveragePolicy([0.95, 0.25, 0.05])
    async with TamiyoHarness(tmp_path, sink, config=CONFIG, policy=stub) as h:
        decisions = await h.run([packet(step, 0) for step in (4, 8, 12)])
    assert [d.feature_coverage for d in decisions] == [0.95, 0.25, 0.05]
    degraded = [e for e in sink.of_type(TelemetryEvent) if e.name == "degraded_inputs"]
    assert [(e.level, e.attributes["step"]) for e in degraded] == [
        (TelemetryLevel.WARNING, 8),
        (TelemetryLevel.CRITICAL, 12),
    ]


class HungThenRestartingPolicy:
    """A worker found hung (its decisions fail: killed), then restarting for ``restarting`` calls, then deciding."""

    version = "hung-1"

    def __init__(self, failing: int, restarting: int) -> None:
        self.failing = failing
        self.restarting = restarting
        self.calls = 0

    def decide(self, observation: Observation) -> Decision:
        self.calls += 1
        if self.calls <= self.failing:
            raise RuntimeError("tamiyo gnn worker: no answer within 0.5 s; killed, to be restarted")
        if self.calls <= self.failing + self.restarting:
            raise PolicyRestarting("tamiyo gnn worker died (restart 1 of 3 not ready yet)")
        return Decision(reason="ready")


async def test_a_half_open_probe_that_meets_a_restarting_worker_leaves_no_probe_in_flight(
    tmp_path: Path, sink: RecordingSink
) -> None:
    """The probe that met a restarting worker recorded nothing, so the breaker held it in flight, refused every later
    decision and reopened 5 s later (probe_deadline_exceeded) for another 30 s although the worker was ready by then.
    The slot is now given back: the next decision probes again and, once the worker is ready, closes the breaker."""
    stub = HungThenRestartingPolicy(failing=3, restarting=2)
    async with TamiyoHarness(tmp_path, sink, config=CONFIG, policy=stub) as h:
        for step in (1, 2, 3):
            await h.decide(packet(step, 0))
        assert (await h.stats()).inference_breaker is BreakerState.OPEN
        h.clock.advance(30.0)
        restarting = [await h.decide(packet(step, 0)) for step in (4, 5)]
        assert stub.calls == 5  # each one probed the worker: none was refused as a probe still in flight
        h.clock.advance(10.0)  # past the probe deadline: nothing is left to expire
        probes = [await h.decide(packet(step, 0)) for step in (6, 7)]
        stats = await h.stats()
    assert [d.fallback_reason for d in restarting] == ["policy_restarting"] * 2
    assert [d.policy for d in probes] == ["gnn", "gnn"]
    assert stats.inference_breaker is BreakerState.CLOSED
    assert stats.breaker_opened == 1
    assert "probe_deadline_exceeded" not in [t.reason for t in sink.of_type(BreakerTransition)]


class HangingWorker(PolicyWorker):
    """A worker policy whose first decision finds its worker hung (killed: a failed, late inference)."""

    version = "hanging-1"

    def decide(self, observation: Observation) -> Decision:
        if not self.hangs:
            self.hangs += 1
            raise RuntimeError("tamiyo gnn worker: no answer within 0.5 s; killed, to be restarted")
        return Decision(reason="ready")

    def close(self) -> None:
        pass

    def abort_start(self) -> None:
        pass


async def test_a_hung_worker_is_reported_as_an_event_the_summary_counts(tmp_path: Path, sink: RecordingSink) -> None:
    """The hang showed only in the log: the summary blamed the fallback decisions on overruns and the open breaker,
    never on the worker that caused them."""
    tally = RunTally()
    async with TamiyoHarness(tmp_path, sink, config=CONFIG, policy=HangingWorker()) as h:
        await h.decide(packet(1, 0))
        await h.decide(packet(2, 0))
    [hung] = [e for e in sink.of_type(TelemetryEvent) if e.name == "tamiyo_gnn_worker_hung"]
    assert hung.level is TelemetryLevel.WARNING
    assert hung.attributes["hangs"] == 1
    tally.emit(hung)
    growth = tally.figures(seed_parameters=0)
    assert growth.worker_hangs == 1
    [note] = [line for line in growth_lines(msgspec.structs.replace(growth, fallback_decisions=1)) if "note:" in line]
    assert "; the GNN worker hung 1 time and was restarted)" in note
    assert note.endswith("tamiyo_gnn_worker_hung)")


async def test_the_decision_line_carries_the_policys_feature_coverage(tmp_path: Path, sink: RecordingSink) -> None:
    """The GNN's coverage was only on Prometheus (tamiyo.gnn.feature_coverage): a user reading events.jsonl or the
    info console could not tell on how much of the state a decision rested. A policy that reports none (the
    heuristic, the fallback) adds no field."""
    with structlog.testing.capture_logs() as logs:
        async with TamiyoHarness(tmp_path, sink, policy=CoveragePolicy([0.8125])) as h:
            await h.decide(packet(5, 0))
        (tmp_path / "heuristic").mkdir()
        async with TamiyoHarness(tmp_path / "heuristic", sink) as h:
            await h.decide(packet(5, 0))
    decided = [entry for entry in logs if entry["event"] == "tamiyo_decision"]
    assert [entry.get("feature_coverage") for entry in decided] == [0.8125, None]
    assert "feature_coverage" not in decided[1]
