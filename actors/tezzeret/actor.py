"""The Tezzeret actor: compiles the catalogue in the background at start-up, and on request, one io-lane job at a time.

Start-up never waits for compilation: ``on_start`` only queues a CompileRequest to itself, so the supervisor starts
the next sibling (and training) at once while the pass runs job by job on the ``io`` lane. Each stored artifact is
reported as a KernelCatalogUpdate, each failure as a ``tezzeret.compilation.failed`` TelemetryEvent (ERROR), and
each pass ends with a ``tezzeret.compilation.total`` TelemetryEvent; an ask gets a CompileResult.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import TYPE_CHECKING, assert_never, final

import structlog
import torch

from actors.tezzeret.compile import (
    CompileJob,
    CompileOutcome,
    CompileSettings,
    CompileSummary,
    finish_pass,
    plan_jobs,
    run_job,
    unknown_blueprints,
    warm_compiled,
)
from esper.nn.blueprints import SlotShape, build_blueprint
from esper.runtime.actor import Actor
from schemas.domain_enums import TelemetryLevel, TensorDtype
from schemas.kernels import CompileRequest, CompileResult, KernelCatalogUpdate, SlotSignature
from schemas.telemetry import TelemetryEvent

if TYPE_CHECKING:
    from collections.abc import Sequence

    from actors.tezzeret.compile import ArtifactSink, BlueprintBuilder, Warmer
    from esper.nn.blueprints import Catalogue
    from esper.runtime.clock import Clock
    from esper.runtime.events import EventSink
    from esper.runtime.lanes import Lane

__all__ = [
    "COMPILATION_FAILED",
    "COMPILATION_TOTAL",
    "EAGER_FALLBACK",
    "START_REQUEST_PREFIX",
    "StartPass",
    "Tezzeret",
]

COMPILATION_TOTAL = "tezzeret.compilation.total"
COMPILATION_FAILED = "tezzeret.compilation.failed"
EAGER_FALLBACK = "tezzeret.compilation.eager_fallback"
START_REQUEST_PREFIX = "tezzeret-start"

_TORCH_DTYPES = {
    TensorDtype.FLOAT32: torch.float32,
    TensorDtype.FLOAT16: torch.float16,
    TensorDtype.BFLOAT16: torch.bfloat16,
    TensorDtype.FLOAT64: torch.float64,
}


_log = structlog.get_logger("actors.tezzeret")


@final
@dataclass(slots=True)
class StartPass:
    """The start-up pass across Tezzeret's incarnations (one per child spec): an incarnation that ended before its
    pass did (a crash) leaves ``pending`` set, and the next one does not queue the pass again: a compile that crashes
    every time would otherwise crash every incarnation and end the run, although Kasmina builds seeds from the
    catalogue without Tezzeret's artifacts."""

    pending: bool = False
    skipped: bool = False


def _slot(signature: SlotSignature) -> SlotShape:
    if signature.kind is None or signature.features is None:
        raise ValueError(f"compile signature {signature} must name its kind and features")
    return SlotShape(signature.kind, signature.features, _TORCH_DTYPES[signature.dtype])


@final
class Tezzeret(Actor[CompileRequest]):
    """Compiles blueprints into Urza through an ArtifactSink; handles one CompileRequest at a time.

    Runs on the event loop; every blocking step is a job on ``lane`` (the io lane). A stop requested during a pass
    ends it after the running job (a lane job is never abandoned); the jobs done so far are kept and reported.
    Failure rules: a blueprint's failure is an outcome, never an exception; a broken store (OSError from the sink)
    fails the ask, or crashes the actor on the start-up tell, and the supervisor decides.
    """

    def __init__(
        self,
        *,
        catalogue: Catalogue,
        slots: Sequence[SlotShape],
        artifacts: ArtifactSink,
        lane: Lane,
        clock: Clock,
        sink: EventSink,
        settings: CompileSettings,
        compile_at_start: bool = True,
        build: BlueprintBuilder = build_blueprint,
        warm: Warmer = warm_compiled,
        capacity: int = 64,
        start_pass: StartPass | None = None,
    ) -> None:
        """Args:
        catalogue: Karn's blueprints (esper.nn descriptors) to compile.
        slots: the run's slots; a request with no signatures compiles for these.
        artifacts: where modules go (Urza's store) and where failures are marked.
        lane: the io lane.
        clock: stamps issued_at of replies and events.
        sink: receives KernelCatalogUpdate and TelemetryEvents.
        settings: device (of the lane), seed and config knobs.
        compile_at_start: queue a full pass in on_start (config ``tezzeret.compile_at_start``).
        build, warm: the blueprint builder and the CUDA cache warmer (tests inject broken ones).
        capacity: mailbox capacity.
        start_pass: shared by the incarnations of one child (see StartPass); None: this instance's own.
        """
        super().__init__(inbox=(CompileRequest,), capacity=capacity)
        self._catalogue = catalogue
        self._slots = tuple(slots)
        self._artifacts = artifacts
        self._lane = lane
        self._clock = clock
        self._sink = sink
        self._settings = settings
        self._compile_at_start = compile_at_start
        self._build = build
        self._warm = warm
        self._passes = itertools.count()
        self._start_pass = start_pass if start_pass is not None else StartPass()
        self.compiled = 0
        self.failed = 0

    async def on_start(self) -> None:
        # Only queue the pass: returning at once lets the supervisor start the siblings (and training) now.
        if not self._compile_at_start:
            return
        start_pass = self._start_pass
        if start_pass.pending:
            if not start_pass.skipped:
                start_pass.skipped = True
                _log.warning(
                    "tezzeret_start_pass_skipped",
                    reason="the start-up compile pass crashed Tezzeret; it is not run again this run",
                    detail="seeds are built from the catalogue without compiled artifacts",
                )
            return
        start_pass.pending = True
        request_id = f"{START_REQUEST_PREFIX}-{next(self._passes)}"
        self.ref.tell_nowait(CompileRequest(request_id=request_id, issued_at=self._clock.now()))

    async def handle(self, msg: CompileRequest) -> CompileResult:
        match msg:
            case CompileRequest():
                result = await self._compile(msg)
                if msg.request_id.startswith(START_REQUEST_PREFIX):
                    self._start_pass.pending = False
                return result
            case _:
                assert_never(msg)

    async def _compile(self, msg: CompileRequest) -> CompileResult:
        unknown = unknown_blueprints(self._catalogue, msg.blueprint_ids)
        try:
            slots = tuple(_slot(s) for s in msg.signatures) if msg.signatures else self._slots
        except ValueError as err:
            return self._finish(msg, CompileSummary(()), {"<signatures>": str(err)}, started_s=self._clock.now())
        started_s = self._clock.now()
        jobs = plan_jobs(self._catalogue, slots, blueprint_ids=msg.blueprint_ids)
        outcomes: list[CompileOutcome] = []
        for job in jobs:
            if self.stopping:
                break
            outcome = await self._lane.run(self._run_job, job)
            outcomes.append(outcome)
            self._report(msg, outcome)
        full_pass = not msg.blueprint_ids and not msg.signatures and len(outcomes) == len(jobs)
        if full_pass:
            await self._lane.run(finish_pass, outcomes, self._artifacts)
        extra = {b: f"blueprint {b!r} is not in the catalogue" for b in unknown}
        return self._finish(msg, CompileSummary(tuple(outcomes)), extra, started_s=started_s)

    def _run_job(self, job: CompileJob) -> CompileOutcome:
        return run_job(job, self._artifacts, self._settings, build=self._build, warm=self._warm)

    def _report(self, msg: CompileRequest, outcome: CompileOutcome) -> None:
        job = outcome.job
        slot = f"{job.slot.kind}/{job.slot.features}"
        if outcome.artifact is not None:
            self.compiled += 1
            self._sink.emit(
                KernelCatalogUpdate(
                    blueprint_id=job.blueprint_id,
                    artifact_ref=outcome.artifact,
                    checksum=outcome.artifact,
                    guard_digest=outcome.guard_digest,
                    issued_at=self._clock.now(),
                    compile_ms=outcome.compile_ms,
                    prewarm_ms=outcome.prewarm_ms,
                    eager_fallback=outcome.eager_fallback,
                    tags=(f"slot:{slot}",),
                )
            )
        else:
            self.failed += 1
            self._sink.emit(
                TelemetryEvent(
                    name=COMPILATION_FAILED,
                    level=TelemetryLevel.ERROR,
                    description=outcome.failure or "",
                    attributes={"blueprint_id": job.blueprint_id, "slot": slot, "request_id": msg.request_id},
                )
            )
        if outcome.eager_fallback:
            self._sink.emit(
                TelemetryEvent(
                    name=EAGER_FALLBACK,
                    level=TelemetryLevel.WARNING,
                    description=f"blueprint {job.blueprint_id} on {slot}: torch.compile failed; eager weights stored",
                    attributes={"blueprint_id": job.blueprint_id, "slot": slot},
                )
            )

    def _finish(
        self, msg: CompileRequest, summary: CompileSummary, extra: dict[str, str], *, started_s: float
    ) -> CompileResult:
        failures = {**summary.failures, **extra}
        failed = summary.failed + len(extra)
        self._sink.emit(
            TelemetryEvent(
                name=COMPILATION_TOTAL,
                level=TelemetryLevel.WARNING if failed else TelemetryLevel.INFO,
                description=f"compile {msg.request_id}: {summary.compiled} stored, {failed} failed",
                attributes={
                    "request_id": msg.request_id,
                    "compiled": summary.compiled,
                    "failed": failed,
                    "blueprints_failed": len(failures),
                    "elapsed_s": self._clock.now() - started_s,
                },
            )
        )
        return CompileResult(
            request_id=msg.request_id,
            issued_at=self._clock.now(),
            compiled=summary.compiled,
            failed=failed,
            artifacts=summary.artifacts,
            failures=failures,
        )
