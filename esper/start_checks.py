"""Settings only the catalogue, the file system or the network can judge, checked before the run directory.

They are checked before the run directory is made: each refusal one line led by the ``section.key = value`` at fault
(esper.run names its file or ``--set``)."""

from __future__ import annotations

import importlib.util
import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING

import structlog
import torch

from actors.karn.catalogue import KarnCatalogue
from actors.tolaria.host_model import BUILT_IN_HOSTS
from esper.nn.blueprints import default_catalogue
from esper.runtime.errors import ConfigError
from schemas.domain_enums import BlueprintTier

if TYPE_CHECKING:
    from collections.abc import Collection, Sequence

    from actors.karn.catalogue import BlueprintEntry, TierPolicy
    from esper.nn.blueprints import Catalogue
    from schemas.config import KarnConfig, NissaConfig, OonaConfig, RunConfig, TamiyoConfig, UrzaConfig
    from schemas.kernels import SlotKind

_log = structlog.get_logger("esper.start")


def check_start(config: RunConfig) -> None:
    """Refuse blueprint ids the catalogue lacks, GNN weights that cannot be loaded, an artifact store that cannot be
    made or written, a metrics host that cannot be listened on and the Redis bus without its package. Each failed
    only while the run assembled, after its directory was made. Blocking (file I/O, name resolution).

    Raises:
        ConfigError: one line naming the key and its value.
    """
    check_karn(config.karn)
    check_gnn_weights(config.tamiyo)
    check_urza_root(config.urza)
    check_metrics_host(config.nissa)
    check_redis_installed(config.oona)


def check_default_dtype() -> None:
    """Refuse a process whose torch default dtype is not float32 (a notebook's ``torch.set_default_dtype``): the host
    was built in it and fed float32 data, and the probe's error blamed ``tolaria.host_model``.

    Raises:
        ConfigError: one line naming the dtype and how to set it back.
    """
    dtype = torch.get_default_dtype()
    if dtype != torch.float32:
        raise ConfigError(
            f"torch's default dtype is {dtype} (torch.set_default_dtype): Esper builds its models in float32 and"
            " trains them on float32 data; call torch.set_default_dtype(torch.float32) before starting a run"
        )


def check_redis_installed(oona: OonaConfig) -> None:
    """``oona.backend = "redis"`` needs the optional redis package; found, not imported (the bus imports it when it
    opens, and says what else is wrong then: a server that does not answer, a URL it refuses)."""
    if oona.backend == "redis" and importlib.util.find_spec("redis") is None:
        raise ConfigError(
            "oona.backend = 'redis': needs the redis package, which is not installed"
            " (pip install -e '.[redis]' in a checkout, pip install 'esper-morphogenesis[redis]' otherwise)"
        )


def check_karn(karn: KarnConfig) -> None:
    """``karn.include`` and ``karn.exclude`` name only blueprints of the catalogue."""
    ids = default_catalogue().ids
    for key, chosen in (("karn.include", karn.include), ("karn.exclude", karn.exclude)):
        unknown = [blueprint for blueprint in chosen if blueprint not in ids]
        if unknown:
            raise ConfigError(f"{key} = {list(chosen)!r}: unknown blueprints {unknown}; known: {', '.join(ids)}")


def check_gnn_weights(tamiyo: TamiyoConfig) -> None:
    """``tamiyo.gnn_checkpoint`` is a file that can be read. Tamiyo checks its contents when it loads them, naming
    the key too; a missing file is by far the likeliest mistake and is cheap to find now."""
    if tamiyo.policy != "gnn" or tamiyo.gnn_checkpoint is None:
        return
    path = Path(tamiyo.gnn_checkpoint)
    where = f"tamiyo.gnn_checkpoint = {tamiyo.gnn_checkpoint!r}"
    try:
        if path.exists() and not path.is_file():  # a device (/dev/zero) or a FIFO reads without end
            raise ConfigError(f"{where}: not a regular file")
        with path.open("rb"):
            pass
    except OSError as err:
        raise ConfigError(f"{where}: cannot read it: {err.strerror or err}") from err


def check_urza_root(urza: UrzaConfig) -> None:
    """``urza.root`` is a directory the run can write, or can be made: the store opened only as the run assembled,
    after the run directory was made, and a read-only one left that directory behind unnamed. Creates nothing (a
    refused ``--resume`` leaves everything as it was); a damaged catalogue is still found as the store opens."""
    root = Path(urza.root)
    where = f"urza.root = {urza.root!r}"
    existing = root
    while not os.path.exists(existing) and existing.parent != existing:  # False where a parent may not be read
        if os.path.islink(existing):
            # The store's mkdir fails on the link's name: "File exists" for a path the user sees as missing.
            raise ConfigError(
                f"{where}: {existing} is a symbolic link to {os.readlink(existing)}, which does not exist: make that"
                " directory or point urza.root elsewhere"
            )
        existing = existing.parent
    if not existing.is_dir():
        named = "is" if existing == root else f"is under {existing}, which is"
        raise ConfigError(f"{where}: {named} a file, not a directory: point urza.root elsewhere")
    # What the store writes in: the root (SQLite's journal beside the catalogue), and what it holds already.
    parts = [root / "catalog.sqlite", root / "blobs", root / "quarantine"] if existing == root else []
    for path in (existing, *(part for part in parts if part.exists())):
        needed = os.W_OK | (os.X_OK if path.is_dir() else 0)
        if os.access(path, needed):
            continue
        read_only = _read_only_mount(path)
        why = "on a read-only file system" if read_only else "not writable"
        if existing != root:
            what = f"the store cannot be made in {existing}, which is {why}"
        else:  # worded as the store's own refusal (open_store) is
            what = "the store is not writable" + (f" ({path} is {why})" if read_only or path != root else "")
        raise ConfigError(
            f"{where}: {what}; a run stores its compiled blueprints there: make it writable or point urza.root"
            " elsewhere"
        )


def _read_only_mount(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def check_metrics_host(nissa: NissaConfig) -> None:
    """``nissa.prometheus_host`` resolves to an address of this machine: otherwise the port's check blamed the port
    for the host (``cannot listen on 999.1.1.1:9555``)."""
    if nissa.prometheus_port is None:
        return
    host = nissa.prometheus_host
    try:
        infos = socket.getaddrinfo(host, 0, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, kind, proto, _, address = infos[0]
        with socket.socket(family, kind, proto) as probe:
            probe.bind(address)  # port 0: any free one, so only the address can fail
    except OSError as err:
        raise ConfigError(f"nissa.prometheus_host = {host!r}: cannot listen there: {err.strerror or err}") from err


def warn_at_start(config: RunConfig, steps_per_epoch: int, cpus: int | None) -> None:
    """Log, as warnings the console shows, settings a run accepts but that defeat it: a command lag no shorter than
    the whole run (no decision of the controller can take effect: the run completed with nothing applied), a
    learning-rate warm-up longer than the run (the rate never reaches ``tolaria.lr``), a failed-epoch halt that
    comes before Tolaria's breaker can open (the emergency ladder skips L3's rollback), an artifact wait no shorter
    than the decision deadline (the trainer gives up on the plan first), a host factory in ``__main__`` (no other
    process can rebuild the model: load_model, export and --resume failed), and more training threads than the
    machine has CPUs (64 threads on 2 cores made every epoch 37 times slower). A tiny smoke run (a few steps)
    has the first two too, which is why they are not refused. Once the run's logging is configured.
    """
    tolaria = config.tolaria
    steps = steps_per_epoch * tolaria.epochs
    epochs = f"{tolaria.epochs} epoch" + ("" if tolaria.epochs == 1 else "s")
    each = f"{steps_per_epoch} step" + ("" if steps_per_epoch == 1 else "s")
    if tolaria.command_lag_steps >= steps:
        _log.warning(
            "command_lag_outlasts_run",
            command_lag_steps=tolaria.command_lag_steps,
            run_steps=steps,
            detail=(
                f"tolaria.command_lag_steps = {tolaria.command_lag_steps} is not shorter than the run"
                f" ({epochs} x {each}): no decision of the controller can take effect"
            ),
        )
    if tolaria.warmup_steps > steps:
        _log.warning(
            "warmup_outlasts_run",
            warmup_steps=tolaria.warmup_steps,
            run_steps=steps,
            detail=(
                f"tolaria.warmup_steps = {tolaria.warmup_steps} is longer than the run ({epochs} x {each}): the"
                " learning rate never reaches tolaria.lr"
            ),
        )
    threshold = tolaria.breaker.failure_threshold
    if tolaria.failed_epochs_to_halt < threshold:
        # The emergency ladder's L3 (the breaker opens: a rollback) would come after its L4 (the streak halts).
        _log.warning(
            "ladder_skips_l3",
            failed_epochs_to_halt=tolaria.failed_epochs_to_halt,
            breaker_failure_threshold=threshold,
            detail=(
                f"tolaria.failed_epochs_to_halt = {tolaria.failed_epochs_to_halt} is below"
                f" tolaria.breaker.failure_threshold = {threshold}: epochs that keep failing halt the run (L4) before"
                " the breaker opens, with no rollback (L3) first"
            ),
        )
    wait_ms = config.kasmina.artifact_wait_ms
    if wait_ms >= tolaria.decision_deadline_ms:
        # A seed preparation waiting for its artifact outlasts the plan it belongs to: the trainer misses the plan
        # (plan_missed) before the wait can end. A rule across sections, so said rather than refused, as the
        # ladder's above is.
        _log.warning(
            "artifact_wait_outlasts_deadline",
            artifact_wait_ms=wait_ms,
            decision_deadline_ms=tolaria.decision_deadline_ms,
            detail=(
                f"kasmina.artifact_wait_ms = {wait_ms:g} is not below tolaria.decision_deadline_ms ="
                f" {tolaria.decision_deadline_ms:g}: the trainer gives up on a plan (plan_missed) before its"
                " seed's artifact wait ends"
            ),
        )
    if tolaria.host_model.startswith("__main__:"):
        # Imported afresh in another process, __main__ is that process's script: the factory is not there.
        _log.warning(
            "host_factory_in_main",
            host_model=tolaria.host_model,
            detail=f"tolaria.host_model = {tolaria.host_model!r}: the factory lives in __main__ (this script or"
            " notebook), so load_model, export and --resume from another process cannot rebuild the model: move it"
            " to an importable module",
        )
    if tolaria.num_threads is not None and cpus is not None and tolaria.num_threads > cpus:
        _log.warning(
            "num_threads_above_cpus",
            num_threads=tolaria.num_threads,
            cpus=cpus,
            detail=f"tolaria.num_threads = {tolaria.num_threads} is more than this machine's {cpus} CPUs: the threads"
            " contend for the cores and training slows down",
        )


def warn_unreachable_strain(config: RunConfig, slots: Collection[str], layers: Collection[str]) -> None:
    """Log a ``strain_unreachable`` warning when the heuristic, growth on, can never find a slot strained enough: a
    slot's strain is its layer's gradient norm over the mean of the ``layers`` the packets report, so at most their
    count, and with fewer layers than ``tamiyo.germinate_min_constraint`` every decision was ``no_strained_slot``
    without a word. Only when a slot is one of those layers: with none, no slot has a strain and the key is not
    applied."""
    threshold = config.tamiyo.germinate_min_constraint
    if config.tamiyo.policy != "heuristic" or config.kasmina.max_active_seeds == 0 or threshold <= 0.0:
        return
    if threshold <= len(layers) or not any(slot in layers for slot in slots):
        return
    count = len(layers)
    named = f"{count} layer" + ("" if count == 1 else "s")
    shown = ", ".join(repr(layer) for layer in sorted(layers))
    _log.warning(
        "strain_unreachable",
        germinate_min_constraint=threshold,
        layers=sorted(layers),
        slots=len(slots),
        detail=f"tamiyo.germinate_min_constraint = {threshold} is above the host's {named} with gradients"
        f" ({shown}): a slot's strain (its layer's gradient norm over their mean) is at most"
        f" {count}, so the heuristic never grows a seed (no_strained_slot): lower tamiyo.germinate_min_constraint"
        f" below {count}, or add slot targets after other layers with parameters (each is a layer of its own)",
    )


def warn_gradientless_slots(config: RunConfig, slots: Collection[str], layers: Collection[str]) -> None:
    """Log a ``slots_never_strained`` warning naming the slot targets whose layer has no trainable parameter (an
    activation, pooling or dropout module, a frozen layer: no gradient norm in the packets), when the heuristic grows
    and another slot's layer has one: such a slot's strain is 0, below any positive
    ``tamiyo.germinate_min_constraint``, so the heuristic never grows a seed there, which it did without a word.
    every_k and the GNN do not weigh strain (the GNN's fallback, the heuristic, does), so they are not warned of."""
    threshold = config.tamiyo.germinate_min_constraint
    if config.tamiyo.policy != "heuristic" or config.kasmina.max_active_seeds == 0 or threshold <= 0.0:
        return
    unstrained = [slot for slot in slots if slot not in layers]
    if not unstrained or len(unstrained) == len(slots):
        return  # with no slot's layer reporting a gradient, no slot has a strain and the key is not applied
    shown = ", ".join(repr(slot) for slot in unstrained)
    many = len(unstrained) > 1
    named = f"slot targets {shown} have" if many else f"slot target {shown} has"
    _log.warning(
        "slots_never_strained",
        slots=unstrained,
        germinate_min_constraint=threshold,
        detail=f"{named} no gradient norm in the state packets (no trainable parameter of {'their' if many else 'its'}"
        " own: an activation, pooling or dropout module, a frozen layer), so a strain of 0, below"
        f" tamiyo.germinate_min_constraint = {threshold}:"
        " the heuristic policy never grows a seed there (every_k and gnn do not weigh strain); target the layer with"
        " parameters before it instead",
    )


def warn_slot_targets_override(config: RunConfig, slots: Collection[str], model_targets: Sequence[str]) -> None:
    """Log a ``slot_targets_override`` warning when ``kasmina.slot_targets`` is set and a user's host also names its
    own slots: its ``slot_targets`` attribute (``model_targets``), which the key replaces, or slots it came with (a
    factory returning ``esper.nn.wrap(model, [...])``), which the key adds to. Either happened without a word."""
    given = list(config.kasmina.slot_targets)
    if not given or config.tolaria.host_model in BUILT_IN_HOSTS:
        return  # a built-in host's slots are chosen with this key, as README says: nothing of the user's is replaced
    parts: list[str] = []
    if model_targets and set(model_targets) != set(given):  # slots follow the model's order whatever the list's
        parts.append(f"replaces the model's own slot_targets {list(model_targets)!r}")
    came_with = [slot for slot in slots if slot not in given]
    if came_with:
        parts.append(f"adds to the slots the model came with, {came_with!r}")
    if not parts:
        return
    _log.warning(
        "slot_targets_override",
        slot_targets=given,
        model_slot_targets=list(model_targets),
        slots=list(slots),
        detail=f"kasmina.slot_targets = {given!r} {' and '.join(parts)}: seeds may grow after {list(slots)!r}",
    )


def warn_no_blueprint(
    config: RunConfig, karn: KarnCatalogue, tiers: TierPolicy, kinds: Collection[SlotKind], catalogue: Catalogue
) -> None:
    """Log a ``no_blueprint_offered`` warning when growth is on but no blueprint may be offered for any of the host's
    slot kinds (``karn.include`` / ``karn.exclude`` chose none that fits, or the tier rules or the store's marks
    leave none): every decision of the run is then ``no_candidate`` and nothing grows, which the run used to do
    without a word. ``catalogue`` (unfiltered) names the blueprints that would be offered without the selection."""
    if config.kasmina.max_active_seeds == 0 or any(karn.offered(kind, tiers) for kind in kinds):
        return
    shown = "/".join(sorted(kinds))
    chosen = [entry.blueprint_id for entry in karn]
    filters = [(k, list(v)) for k, v in (("karn.include", config.karn.include), ("karn.exclude", config.karn.exclude))]
    named = " and ".join(f"{key} = {value!r}" for key, value in filters if value)
    kept = f"{named} leave{'' if ' and ' in named else 's'}" if named else "the catalogue has"
    fitting = [entry for entry in karn if any(entry.fits(kind) for kind in kinds)]
    if fitting:
        why = "; ".join(f"{entry.blueprint_id} {_not_offered(entry, tiers)}" for entry in fitting)
    else:
        every = KarnCatalogue.from_catalogue(catalogue)
        would = sorted({d.blueprint_id for kind in kinds for d in every.offered(kind, tiers)})
        why = f"none of them fits a {shown} slot (without the selection: {', '.join(would) or 'none'})"
    _log.warning(
        "no_blueprint_offered",
        slot_kinds=sorted(kinds),
        blueprints=chosen,
        detail=f"no blueprint can be offered for this host's {shown} slots, so nothing will grow: {kept}"
        f" {', '.join(chosen) or 'no blueprint'}; {why}",
    )


def _not_offered(entry: BlueprintEntry, tiers: TierPolicy) -> str:
    """Why a blueprint that fits is not offered, in a few words."""
    descriptor = entry.descriptor
    if entry.standing != "ok":
        return f"is marked {entry.standing} in the artifact store (urza.root): {entry.reason}"
    if descriptor.quarantine_only:
        return "is quarantine_only"
    if descriptor.tier is BlueprintTier.HIGH_RISK and not tiers.allow_high_risk:
        return "is HIGH_RISK"
    if descriptor.approval_required and descriptor.blueprint_id not in tiers.approvals:
        return "requires an approval"
    return "is not SAFE (conservative mode offers only SAFE blueprints)"


def available_cpus() -> int | None:
    """The CPUs this process may run on (its affinity mask where the platform has one), None when unknown."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count()
