"""Tezzeret's compile pipeline: build each blueprint for each slot, probe it, and hand it to the artifact sink.

Pure and blocking: no event loop, no messages. The actor runs one ``run_job`` per lane job on the ``io`` lane, so other
io work interleaves with a long pass; ``compile_all`` runs a whole pass synchronously (tests, benchmarks).

Rules: a blueprint whose build, probe or encoding fails on any slot is marked failed in Urza's catalogue with the
reason, and is never replaced by another kernel; one blueprint's failure never stops the others. ``torch.compile``
cache warming runs only when the device is CUDA and the config asks for it, never on the CPU.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Final, Protocol, final

import torch

from esper.nn.blueprints import build_blueprint, probe_validate, validate_params

if TYPE_CHECKING:
    from torch import nn

    from esper.nn.blueprints import BlueprintDescriptor, Catalogue, ProbeReport, SlotShape
    from schemas.config import TezzeretConfig

__all__ = [
    "ArtifactSink",
    "BlueprintBuilder",
    "CompileJob",
    "CompileOutcome",
    "CompileSettings",
    "CompileSummary",
    "compile_all",
    "example_shape",
    "finish_pass",
    "guard_digest",
    "plan_jobs",
    "run_job",
    "unknown_blueprints",
    "warm_compiled",
]

# Probe inputs are small: they check shape, zero output and finiteness, not speed. 0 marks the feature axis.
_PROBE_TEMPLATES: Mapping[str, tuple[int, ...]] = MappingProxyType(
    {"conv1d": (2, 0, 8), "conv2d": (2, 0, 4, 4), "flat": (2, 0), "sequence": (2, 4, 0)}
)


class ArtifactSink(Protocol):
    """Where compiled modules go: Urza's store (``actors.urza.publish.UrzaArtifactSink`` satisfies this).

    Every method blocks (encoding, hashing, disk, SQLite): call them on the io lane.
    """

    def publish(
        self,
        module: nn.Module,
        *,
        descriptor: BlueprintDescriptor,
        slot: SlotShape,
        params: Mapping[str, float],
        report: ProbeReport,
        guard_digest: str,
    ) -> str:
        """Store the module's weights as an artifact; return its content address.

        Raises:
            ValueError: the module cannot be encoded as an artifact (a blueprint failure).
            OSError: the store could not write (not the blueprint's fault).
        """
        ...

    def mark_failed(self, blueprint_id: str, reason: str) -> None:
        """Mark the blueprint failed: nothing of it is served until it compiles cleanly again."""
        ...

    def clear_failed(self, blueprint_id: str) -> None:
        """Lift a failed mark (not a quarantine) from a blueprint that has just compiled cleanly on every slot."""
        ...


class BlueprintBuilder(Protocol):
    """Builds a blueprint's module for a slot (``esper.nn.blueprints.build_blueprint``; tests inject broken ones)."""

    def __call__(
        self, descriptor: BlueprintDescriptor, slot: SlotShape, params: Mapping[str, float], *, seed: int
    ) -> nn.Module: ...


Warmer = Callable[["nn.Module", tuple[int, ...], torch.device], None]
"""Runs ``torch.compile`` on a module on a CUDA device and one forward of an example input (cache warming)."""


COMPILE_SEED: Final = 0
"""Tezzeret's build seed: fixed, never a run's, so a blueprint's stored weights do not depend on which run compiled
them (and a module built from the catalogue when no artifact is usable gets the same weights)."""


@final
@dataclass(frozen=True)
class CompileSettings:
    """How a pass compiles: the device of the io lane, build seed, and the Tezzeret config knobs.

    ``timeout_s`` is checked after a job (a lane never abandons running work): a job slower than it is a failure of
    this pass, never marked in the shared store.
    """

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    seed: int = COMPILE_SEED
    torch_compile: bool = False
    eager_fallback: bool = True
    timeout_s: float = 60.0

    @classmethod
    def from_config(cls, config: TezzeretConfig, *, device: torch.device, seed: int = COMPILE_SEED) -> CompileSettings:
        return cls(
            device=device,
            seed=seed,
            torch_compile=config.torch_compile,
            eager_fallback=config.eager_fallback,
            timeout_s=config.compile_timeout_s,
        )

    @property
    def warms(self) -> bool:
        """Whether jobs warm torch.compile's cache: only with torch_compile on a CUDA device."""
        return self.torch_compile and self.device.type == "cuda"


@final
@dataclass(frozen=True)
class CompileJob:
    """One blueprint on one slot. ``params`` are the builder parameters; missing ones take their defaults."""

    descriptor: BlueprintDescriptor
    slot: SlotShape
    params: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def blueprint_id(self) -> str:
        return self.descriptor.blueprint_id


@final
@dataclass(frozen=True)
class CompileOutcome:
    """What one job did: the artifact it stored, or the one-line reason it failed. Times in milliseconds."""

    job: CompileJob
    artifact: str | None
    failure: str | None
    guard_digest: str
    compile_ms: float
    prewarm_ms: float = 0.0
    eager_fallback: bool = False

    @property
    def ok(self) -> bool:
        return self.failure is None


@final
@dataclass(frozen=True)
class CompileSummary:
    """A whole pass: every outcome in job order, and the blueprints that failed with their first reason."""

    outcomes: tuple[CompileOutcome, ...]

    @property
    def artifacts(self) -> tuple[str, ...]:
        return tuple(o.artifact for o in self.outcomes if o.artifact is not None)

    @property
    def compiled(self) -> int:
        return sum(1 for o in self.outcomes if o.ok)

    @property
    def failed(self) -> int:
        return sum(1 for o in self.outcomes if not o.ok)

    @property
    def failures(self) -> dict[str, str]:
        """Failed blueprint id -> the reason of its last failed job (the one its store record holds)."""
        found: dict[str, str] = {}
        for outcome in self.outcomes:
            if outcome.failure is not None:
                found[outcome.job.blueprint_id] = outcome.failure
        return found


def example_shape(slot: SlotShape) -> tuple[int, ...]:
    """The probe input shape for a slot: conv1d ``[2, F, 8]``, conv2d ``[2, F, 4, 4]``, flat ``[2, F]``,
    sequence ``[2, 4, F]`` (F the slot's features)."""
    return tuple(slot.features if d == 0 else d for d in _PROBE_TEMPLATES[slot.kind])


def guard_digest(slot: SlotShape, example: tuple[int, ...]) -> str:
    """SHA-256 of the guard spec: per input its shape (batch excluded), dtype, contiguous stride and requires_grad."""
    strides = [math.prod(example[i + 1 :]) for i in range(len(example))]
    spec = {
        "kind": slot.kind,
        "inputs": [
            {
                "shape": list(example[1:]),
                "dtype": str(slot.dtype).removeprefix("torch."),
                "stride": strides[1:],
                "requires_grad": False,
            }
        ],
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def plan_jobs(
    catalogue: Catalogue, slots: Sequence[SlotShape], *, blueprint_ids: Collection[str] = ()
) -> tuple[CompileJob, ...]:
    """Every (blueprint, slot) pair where the blueprint claims the slot's kind, in catalogue then slot order.

    Equal slots are compiled once. ``blueprint_ids`` restricts the pass to those blueprints (empty: all); an id not
    in the catalogue is ignored here (see ``unknown_blueprints``).
    """
    wanted = set(blueprint_ids)
    unique = tuple(dict.fromkeys(slots))
    return tuple(
        CompileJob(descriptor, slot)
        for descriptor in catalogue
        if not wanted or descriptor.blueprint_id in wanted
        for slot in unique
        if descriptor.fits(slot.kind)
    )


def unknown_blueprints(catalogue: Catalogue, blueprint_ids: Collection[str]) -> tuple[str, ...]:
    """The ids among ``blueprint_ids`` that the catalogue does not have, in the order given."""
    return tuple(b for b in blueprint_ids if b not in catalogue)


def warm_compiled(module: nn.Module, example: tuple[int, ...], device: torch.device) -> None:
    """Warm torch.compile's caches with a copy of ``module`` on a CUDA ``device`` (one forward of zeros).

    The artifact stays the eager weights: a compiled module object is never stored (REFERENCE.md section 7).
    """
    params = list(module.parameters())
    dtype = params[0].dtype if params else torch.float32
    compiled = torch.compile(copy.deepcopy(module).to(device))
    with torch.no_grad():
        compiled(torch.zeros(example, device=device, dtype=dtype))
    # The calling lane's stream only, which ran the forward: a device-wide sync would wait for training's kernels too.
    torch.cuda.current_stream(device).synchronize()


def _one_line(err: BaseException) -> str:
    return " ".join(f"{type(err).__name__}: {err}".split())


def run_job(
    job: CompileJob,
    artifacts: ArtifactSink,
    settings: CompileSettings,
    *,
    build: BlueprintBuilder = build_blueprint,
    warm: Warmer = warm_compiled,
    timer: Callable[[], float] = time.perf_counter,
) -> CompileOutcome:
    """Build, probe, (on CUDA, warm) and publish one job; a failure marks the blueprint failed with its reason, a
    timeout excepted (the run's setting, not the blueprint's fault: this pass reports it, the shared store keeps none).

    Runs on the io lane's thread and blocks. Never raises for a failure of the blueprint itself (bad params, a
    builder error, a failed probe, weights that cannot be encoded, a timeout): that is returned in the outcome.

    Raises:
        OSError, sqlite3.Error: the sink could not write (the store is broken, not the blueprint).
    """
    descriptor, slot = job.descriptor, job.slot
    example = example_shape(slot)
    digest = guard_digest(slot, example)
    start = timer()
    failure: str | None = None
    artifact: str | None = None
    prewarm_ms = 0.0
    eager = False
    timed_out = False
    try:
        params = validate_params(descriptor, job.params, fill_defaults=True)
        module = build(descriptor, slot, params, seed=settings.seed)
        report = probe_validate(module, descriptor, slot, example, seed=settings.seed)
    # A blueprint's builder may raise anything torch raises; it must fail that blueprint, not the pass.
    except Exception as err:  # noqa: BLE001  # recorded as this blueprint's failure and reported, never swallowed
        failure = f"blueprint {descriptor.blueprint_id} on {slot.kind}/{slot.features}: build failed: {_one_line(err)}"
    else:
        if not report.ok:
            failure = "; ".join(report.failures)
        else:
            if settings.warms:
                warm_start = timer()
                try:
                    warm(module, example, settings.device)
                except Exception as err:  # noqa: BLE001  # torch.compile failures are many; recorded below
                    if not settings.eager_fallback:
                        failure = f"blueprint {descriptor.blueprint_id}: torch.compile failed: {_one_line(err)}"
                    eager = True
                prewarm_ms = (timer() - warm_start) * 1e3
            built_s = timer() - start
            if failure is None and built_s > settings.timeout_s:
                # Before publishing: a compile this run's setting calls too slow is not served to its seeds (nor
                # to later runs'), and not marked in the store either (the setting is this run's, not a fault of
                # the blueprint, and the store is shared: a mark made under a tiny timeout kept every later run,
                # default settings too, from growing it).
                limit_s = settings.timeout_s
                failure = f"blueprint {descriptor.blueprint_id}: compile took {built_s:.3g} s, over its {limit_s:g} s"
                timed_out = True
            if failure is None:
                try:
                    artifact = artifacts.publish(
                        module, descriptor=descriptor, slot=slot, params=params, report=report, guard_digest=digest
                    )
                except ValueError as err:
                    failure = f"blueprint {descriptor.blueprint_id}: artifact refused: {_one_line(err)}"
    compile_ms = (timer() - start) * 1e3
    if failure is not None and not timed_out:
        artifact = None
        artifacts.mark_failed(descriptor.blueprint_id, failure)
    return CompileOutcome(
        job=job,
        artifact=artifact,
        failure=failure,
        guard_digest=digest,
        compile_ms=compile_ms,
        prewarm_ms=prewarm_ms,
        eager_fallback=eager,
    )


def finish_pass(outcomes: Sequence[CompileOutcome], artifacts: ArtifactSink) -> None:
    """After a full pass: lift a stale failed mark from every blueprint all of whose jobs succeeded. Blocking."""
    failed = {o.job.blueprint_id for o in outcomes if not o.ok}
    for blueprint_id in dict.fromkeys(o.job.blueprint_id for o in outcomes):
        if blueprint_id not in failed:
            artifacts.clear_failed(blueprint_id)


def compile_all(
    catalogue: Catalogue,
    slots: Sequence[SlotShape],
    artifacts: ArtifactSink,
    settings: CompileSettings | None = None,
    *,
    build: BlueprintBuilder = build_blueprint,
    warm: Warmer = warm_compiled,
) -> CompileSummary:
    """Compile every blueprint of ``catalogue`` for every slot it fits, synchronously, and finish the pass. Blocking.

    Raises:
        OSError, sqlite3.Error: as run_job.
    """
    chosen = settings if settings is not None else CompileSettings()
    outcomes = tuple(run_job(job, artifacts, chosen, build=build, warm=warm) for job in plan_jobs(catalogue, slots))
    finish_pass(outcomes, artifacts)
    return CompileSummary(outcomes)
