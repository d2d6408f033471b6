"""What a run's assembly reads before it builds the actors: the data and slot probe, Karn's candidates, Urza's store."""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, final

import msgspec
import torch

from actors.kasmina.lifecycle_settings import EvidenceCadence
from actors.kasmina.spec import lifecycle_settings
from actors.tamiyo.horizon import GrowthHorizon
from actors.tamiyo.policy import BlueprintCandidate
from actors.tolaria.build import batch_plan, build_trainee
from actors.tolaria.telemetry import layer_key
from actors.tolaria.validation import validation_batch_count
from actors.urza.store import UrzaStore
from esper.nn.blueprints import param_count
from esper.resume_checkpoints import SEED_KEY
from esper.runtime.errors import ConfigError

if TYPE_CHECKING:
    from actors.karn.catalogue import KarnCatalogue, TierPolicy
    from esper.nn.blueprints import Catalogue, SlotShape
    from esper.nn.data import DataSplits
    from schemas.config import KasminaConfig, RunConfig, TolariaConfig
    from schemas.kernels import BlueprintDescriptor as KarnDescriptor
    from schemas.kernels import SlotKind


@final
@dataclass(frozen=True, slots=True)
class Probe:
    """What the run learns once at start: the data, the host's slots and its parameter count, and that of the seeds
    ``tolaria.initial_seeds`` attach before step 0."""

    data: DataSplits
    slots: dict[str, SlotShape]
    host_parameters: int
    initial_seed_parameters: int
    host_tensors: dict[str, tuple[int, ...] | None]  # the wrapped host's state entries: tensor shapes, seeds aside
    # The layers the state packets report gradient norms for (a slot's strain is its layer's over their mean).
    gradient_layers: tuple[str, ...]
    # The host's own ``slot_targets`` attribute (() without one), which a non-empty kasmina.slot_targets replaces.
    model_slot_targets: tuple[str, ...] = ()


def probe(config: RunConfig, device: torch.device, data: DataSplits) -> Probe:
    """Build the host once on the start's data to read its slot shapes (the step loop reuses the data; the start's
    checks proved it trains). Blocking."""
    trainee = build_trainee(config.tolaria, data, config.kasmina.slot_targets, device)
    tensors = {
        key: tuple(value.shape) if isinstance(value, torch.Tensor) else None
        for key, value in trainee.model.state_dict().items()
        if SEED_KEY not in key
    }
    return Probe(
        data=data,
        slots=dict(trainee.slot_shapes),
        host_parameters=trainee.host_parameters,
        initial_seed_parameters=sum(trainee.seed_parameters().values()),  # only they are attached yet
        host_tensors=tensors,
        gradient_layers=tuple(
            sorted({layer_key(n, tuple(trainee.slots)) for n, p in trainee.model.named_parameters() if p.requires_grad})
        ),
        model_slot_targets=_own_targets(trainee.model),
    )


def _own_targets(model: object) -> tuple[str, ...]:
    own = getattr(model, "slot_targets", None)
    return tuple(str(target) for target in own) if isinstance(own, tuple | list) else ()


def evidence_cadence(tolaria: TolariaConfig, data: DataSplits) -> EvidenceCadence:
    """When Tolaria's evidence reaches Kasmina's gates: a packet every ``state_every_steps`` (at epoch ends only when
    0), the epoch's steps (G4's validation comes at epoch ends) and the validation batches of each epoch end (as
    actors.tolaria.validation cuts the split); the command lag is kasmina_spec's ``lag_steps``."""
    steps = batch_plan(tolaria, data).num_batches
    every = tolaria.state_every_steps
    return EvidenceCadence(
        packet_every_steps=max(1, min(every, steps) if every else steps),
        epoch_steps=steps,
        validation_batches=validation_batch_count(data.val.num_samples),
    )


def growth_horizon(kasmina: KasminaConfig, cadence: EvidenceCadence, *, lag_steps: int) -> GrowthHorizon:
    """How long a seed germinated at an epoch end needs before it can be kept, from the settings of its lifecycle
    (Kasmina's dwells, G2's window, the blend ramp, G4's validation batches) at this run's cadence and command lag: the
    heuristic and every_k grow nothing that could not be kept before the run's last step."""
    settings = lifecycle_settings(kasmina, msgspec.structs.replace(cadence, lag_steps=lag_steps))
    return GrowthHorizon(
        lead_steps=settings.least_steps_to_g4(ramp_steps=kasmina.blend_ramp_steps),
        g4_epoch_ends=settings.least_g4_epoch_ends(),
        probation_dwell_steps=settings.dwell.probationary,
        lag_steps=lag_steps,
        steps_per_epoch=cadence.epoch_steps,
    )


def candidates(
    catalogue: Catalogue, karn: KarnCatalogue, policy: TierPolicy, slots: dict[str, SlotShape]
) -> tuple[BlueprintCandidate, ...]:
    """Karn's blueprints offered for the run's slot kinds, each with the slot kinds it fits and its size in every slot
    of those kinds (a blueprint grafted into a slot of a kind it does not fit is refused)."""
    kinds: dict[SlotKind, tuple[KarnDescriptor, ...]] = {}
    for shape in slots.values():
        if shape.kind not in kinds:
            kinds[shape.kind] = karn.offered(shape.kind, policy)
    fitting: dict[str, tuple[KarnDescriptor, list[SlotKind]]] = {}
    for kind, offered in kinds.items():
        for descriptor in offered:
            fitting.setdefault(descriptor.blueprint_id, (descriptor, []))[1].append(kind)
    out: list[BlueprintCandidate] = []
    for blueprint_id, (descriptor, fits) in fitting.items():
        blueprint = catalogue.get(blueprint_id)
        per_slot = {
            name: param_count(blueprint, shape, {}, fill_defaults=True)
            for name, shape in slots.items()
            if shape.kind in fits
        }
        out.append(
            BlueprintCandidate(
                blueprint_id=blueprint_id,
                cost_tier=descriptor.cost_tier,
                risk=descriptor.risk,
                parameter_count=next(iter(per_slot.values())),
                tier=descriptor.tier,
                quarantine_only=descriptor.quarantine_only,
                slot_kinds=tuple(fits),
                slot_parameters=per_slot,
            )
        )
    return tuple(out)


def open_store(root: str) -> UrzaStore:
    """Urza's store at ``urza.root``. Blocking.

    Raises:
        ConfigError: one line naming the root and what is wrong (a directory that cannot be made, a catalogue that is
            not a SQLite database or is locked past the busy timeout).
    """
    catalog = Path(root) / "catalog.sqlite"
    try:
        return UrzaStore(Path(root))
    except sqlite3.DatabaseError as err:
        if not os.access(root, os.W_OK) or (catalog.exists() and not os.access(catalog, os.W_OK)):
            # SQLite says "unable to open database file" for a sound catalogue it may not write: not a damaged one.
            raise ConfigError(
                f"urza.root = {root!r}: the store is not writable ({err}); a run stores its compiled blueprints"
                " there: make it writable or point urza.root elsewhere"
            ) from err
        hint = (
            "another process holds it; retry when it is done"
            if "locked" in str(err)
            else "move it aside to start a new catalogue (Tezzeret stores every blueprint again; blueprint quarantines"
            " recorded in it are lost) or point urza.root elsewhere"
        )
        raise ConfigError(f"urza.root = {root!r}: the catalogue {catalog} cannot be used ({err}); {hint}") from err
    except OSError as err:
        raise ConfigError(f"urza.root = {root!r}: the store cannot be opened: {err}") from err
