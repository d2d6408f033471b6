"""Checks beyond the config's types: values no run can use, the run's own file names, settings this version ignores."""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING, Final, TypeVar

import msgspec

from esper.config_toml import format_value, plain
from esper.run_key import KEY_FILE
from esper.runtime.bus_redis_open import redis_url_problem
from schemas.base import ConfigSection
from schemas.config import KarnConfig, KasminaConfig, OonaConfig, RunConfig, TamiyoConfig, TolariaConfig
from schemas.config_inert import INERT_KEYS
from schemas.config_platform import WeatherlightConfig
from schemas.config_types import MIN_MAILBOX_CAPACITY

if TYPE_CHECKING:
    from collections.abc import Iterator

_S = TypeVar("_S", bound=ConfigSection)
_RUN_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")


SCOPED_KEYS: Final[tuple[tuple[type[ConfigSection], str, tuple[str, ...], tuple[str, ...]], ...]] = (
    (TolariaConfig, "dataset", ("npz",), ("npz_path",)),
    # digits and npz come with their own sizes.
    (TolariaConfig, "dataset", ("mnist1d",), ("dataset_samples",)),
    # The floor of a decay: a constant schedule never decays.
    (TolariaConfig, "lr_schedule", ("cosine", "linear"), ("lr_min_factor",)),
    # Adam and AdamW have no momentum coefficient of this name (their betas are fixed).
    (TolariaConfig, "optimizer", ("sgd",), ("momentum",)),
    (
        TamiyoConfig,
        "policy",
        ("gnn",),
        (
            "gnn_checkpoint",
            "policy_process",
            "policy_worker_silence_s",
            "compile",
            "max_layer_nodes",
            "normaliser_alpha",
        ),
    ),
    (TamiyoConfig, "policy", ("every_k",), ("every_k_epochs",)),
    # The in-process bus has no server, no stream names and encodes nothing.
    (OonaConfig, "backend", ("redis",), ("redis_url", "stream_prefix", "max_payload_bytes")),
)
"""Keys read only when another key of their section has one of some values: (section, that key, its values, the
keys). Set to anything but their default otherwise, they would do nothing, so they are refused."""

# The path keys whose empty string became the working directory (Path("") is "."), silently: an empty urza.root
# made a store where the run started, and was recorded as "", so a resume from elsewhere made a second one.
_EMPTY_PATHS: Final = (
    ("runs_dir", "expected a directory path, got an empty string (leave the key out for runs/)"),
    ("urza.root", "expected a directory path, got an empty string (leave the key out for .esper/urza)"),
    ("nissa.baseline_run", "expected a run directory, got an empty string (leave the key out for no baseline)"),
)


def value_problems(section: ConfigSection, path: tuple[str, ...] = ()) -> Iterator[tuple[str, str]]:
    """Values the schema's types admit but no run can use: a non-finite number (lr = inf halted the run at L4), an
    empty slot target or path, an npz file for a data set that is not npz (it was silently ignored, as is any of
    SCOPED_KEYS where it is not read), amp with fp32."""
    for name in section.__struct_fields__:
        value = getattr(section, name)
        dotted = ".".join((*path, name))
        if isinstance(value, float) and not math.isfinite(value):
            yield dotted, f"expected a finite number, got {value}"
        elif isinstance(value, ConfigSection):
            yield from value_problems(value, (*path, name))
        elif name == "slot_targets" and isinstance(value, tuple) and any(not str(t).strip() for t in value):
            yield dotted, f"expected module names, got an empty one in {list(value)!r}"
        elif name == "slot_targets" and isinstance(value, tuple) and len(set(value)) != len(value):
            # A module names one slot: the second was silently dropped.
            twice = sorted({str(t) for t in value if value.count(t) > 1})
            yield dotted, f"names {', '.join(repr(t) for t in twice)} more than once in {list(value)!r}: one slot each"
    # An empty path became the working directory (Path("") is "."), and the refusal named that directory instead.
    if isinstance(section, TolariaConfig) and section.npz_path == "":
        yield ".".join((*path, "npz_path")), "expected the path of an .npz file, got an empty string"
    if isinstance(section, TamiyoConfig) and section.gnn_checkpoint == "":
        yield (
            ".".join((*path, "gnn_checkpoint")),
            "expected the path of a safetensors file, got an empty string (leave the key out for fresh weights)",
        )
    if isinstance(section, TolariaConfig) and section.amp and section.precision == "fp32":
        # amp forced bf16 autocast over an explicit fp32: the run trained in another precision than it asked for.
        precision = ".".join((*path, "precision"))
        yield (
            ".".join((*path, "amp")),
            f'true asks for bf16 autocast, but {precision} = "fp32" asks for none: '
            'set amp = false for fp32, or precision = "bf16"',
        )
    if isinstance(section, TolariaConfig) and section.dataset == "mnist1d" and section.dataset_samples % 10:
        # MNIST-1D makes as many samples of each of its 10 digits (checked here, before the run directory is made).
        samples = section.dataset_samples
        yield ".".join((*path, "dataset_samples")), f"expected a multiple of 10 for mnist1d, got {samples}"
    if isinstance(section, KasminaConfig) and section.g4_min_improvement < 0.0:
        # A negative minimum was accepted and gated exactly as 0 (the mean must also beat its noise, never below 0).
        yield (
            ".".join((*path, "g4_min_improvement")),
            f"expected a number >= 0, got {format_value(section.g4_min_improvement)} (G4 passes a seed only when its"
            " mean benefit is above a multiple of its standard error, so above 0: a negative minimum would do nothing)",
        )
    if isinstance(section, TamiyoConfig) and section.normaliser_alpha == 0.0:
        # The GNN's feature normaliser refuses a weight of 0 (it would never learn): the run failed to start, after
        # its directory was made, in a line that named no key.
        yield (
            ".".join((*path, "normaliser_alpha")),
            "expected a number > 0 and <= 1, got 0.0 (the GNN policy's feature normaliser would never learn)",
        )
    if isinstance(section, KarnConfig) and (both := [b for b in section.include if b in section.exclude]):
        # An excluded blueprint is never offered, whatever include says.
        yield (
            ".".join((*path, "exclude")),
            f"names {', '.join(repr(b) for b in both)}, which {'.'.join((*path, 'include'))} names too: an excluded"
            " blueprint is never offered; name each blueprint in one of them",
        )
    if isinstance(section, WeatherlightConfig) and section.mailbox_capacity < MIN_MAILBOX_CAPACITY:
        # Not a bound of the type: a run an earlier version wrote with a smaller mailbox (accepted then, and covered
        # now by Kasmina's own floor) is still resumed and read as a baseline.
        capacity = section.mailbox_capacity
        yield ".".join((*path, "mailbox_capacity")), f"expected an integer >= {MIN_MAILBOX_CAPACITY}, got {capacity}"
    yield from _scope_problems(section, path)
    if isinstance(section, OonaConfig) and section.backend == "redis":
        # Refused by the client only once the run directory was made, which then held a run that never began.
        problem = redis_url_problem(section.redis_url)
        if problem is not None:
            yield ".".join((*path, "redis_url")), problem
    if isinstance(section, RunConfig):
        for key, problem in _EMPTY_PATHS:
            if dotted_value(section, key) == "":
                yield key, problem
        yield from _run_file_problems(section)
    if isinstance(section, RunConfig) and section.run_id is not None and not _RUN_ID.fullmatch(section.run_id):
        yield "run_id", f"expected letters, digits, '.', '_' or '-' (it names a directory), got {section.run_id!r}"


RUN_FILE_KEYS: Final = ("nissa.metrics_csv", "nissa.summary_json", "logging.json_file")
"""The keys that name the run's own files in its directory."""

# What else the run directory holds: the files the keys below name may take none of these names (the event log
# appended to command.key made the run's signing key unreadable, and the run could not be resumed).
RESERVED_RUN_NAMES: Final = frozenset(
    {"checkpoints", "config.toml", "data.json", "field_reports.wal", "report.png", "run.lock", KEY_FILE}
)


def _scope_problems(section: ConfigSection, path: tuple[str, ...]) -> Iterator[tuple[str, str]]:
    """Each of SCOPED_KEYS in ``section`` set where its section does not read it."""
    default = type(section)()
    for kind, switch, values, keys in SCOPED_KEYS:
        current = getattr(section, switch) if isinstance(section, kind) else None
        if current is None or current in values:
            continue
        wanted = " or ".join(f'"{value}"' for value in values)
        for key in keys:
            if getattr(section, key) != getattr(default, key):
                yield ".".join((*path, key)), f"is read only with {switch} = {wanted}, and {switch} is {current!r}"


def _run_file_problems(config: RunConfig) -> Iterator[tuple[str, str]]:
    """The run's own file names (nissa.metrics_csv, nissa.summary_json, logging.json_file) must be plain file names
    inside the run directory, distinct and not another run file's: "../other-run/summary.json" rewrote another
    run, "checkpoints/manifest.json" this run's manifest."""
    names = {key: str(dotted_value(config, key)) for key in RUN_FILE_KEYS}
    defaults = {key: str(dotted_value(RunConfig(), key)) for key in RUN_FILE_KEYS}
    for key, name in names.items():
        if not name or name in {".", ".."} or "/" in name or "\\" in name or "\x00" in name:
            yield key, f"expected a file name inside the run directory (no directories), got {name!r}"
        elif name in RESERVED_RUN_NAMES:
            yield key, f"{name!r} is a file the run directory already holds; choose another name"
        elif list(names.values()).count(name) > 1:
            # The key the user moved onto another's name is the one to blame, not the other still at its default
            # (logging.json_file = "metrics.csv" was reported as nissa.metrics_csv).
            moved = [other for other, taken in names.items() if taken == name and taken != defaults[other]]
            if key in moved or not moved:
                yield key, f"{name!r} is also the name of another of the run's files; choose another name"


def as_acted_on(config: RunConfig) -> RunConfig:
    """A run directory's config with each value an earlier version accepted but acted on as another replaced by that
    other: a negative kasmina.g4_min_improvement gated as 0, a tamiyo.normaliser_alpha of 0, which only the GNN
    policy reads (and could not start with), did nothing, and neither did a key INERT_KEYS lists (``simic.enabled =
    true``, which some versions wrote as their default) or one of SCOPED_KEYS where it is not read, read as its
    default; an empty runs_dir or urza.root was the working directory ("."), a slot target named twice one slot and a
    blueprint both included and excluded an excluded one. Its resume compares, and a baseline reads, the run it was,
    rather than refusing its config.toml (or the ``--set`` given with it)."""
    config = _inert_as_default(config)
    kasmina, tamiyo, urza, karn = config.kasmina, config.tamiyo, config.urza, config.karn
    if kasmina.g4_min_improvement < 0.0:
        kasmina = msgspec.structs.replace(kasmina, g4_min_improvement=0.0)
    if len(set(kasmina.slot_targets)) != len(kasmina.slot_targets):
        kasmina = msgspec.structs.replace(kasmina, slot_targets=tuple(dict.fromkeys(kasmina.slot_targets)))
    if tamiyo.normaliser_alpha == 0.0:
        tamiyo = msgspec.structs.replace(tamiyo, normaliser_alpha=TamiyoConfig().normaliser_alpha)
    if urza.root == "":
        urza = msgspec.structs.replace(urza, root=".")
    kept = tuple(b for b in karn.include if b not in karn.exclude)
    if kept and kept != karn.include:  # all of them excluded offered none, which no include can say
        karn = msgspec.structs.replace(karn, include=kept)
    config = msgspec.structs.replace(
        config, kasmina=kasmina, tamiyo=tamiyo, urza=urza, karn=karn, runs_dir=config.runs_dir or "."
    )
    changes = {name: _scoped_as_default(getattr(config, name)) for name in ("tolaria", "tamiyo", "oona")}
    return msgspec.structs.replace(config, **changes)


def _scoped_as_default(section: _S) -> _S:
    """``section`` with each of SCOPED_KEYS it does not read at its default."""
    default = type(section)()
    changes: dict[str, object] = {}
    for kind, switch, values, keys in SCOPED_KEYS:
        if isinstance(section, kind) and getattr(section, switch) not in values:
            changes |= {key: getattr(default, key) for key in keys}
    return msgspec.structs.replace(section, **changes) if changes else section


def _inert_as_default(section: _S) -> _S:
    """``section`` with every INERT_KEYS key (in it and its tables) at its default."""
    default = type(section)()
    changes: dict[str, object] = {}
    for name in section.__struct_fields__:
        value = getattr(section, name)
        if (type(section), name) in INERT_KEYS:
            if value != getattr(default, name):
                changes[name] = getattr(default, name)
        elif isinstance(value, ConfigSection):
            acted = _inert_as_default(value)
            if acted is not value:
                changes[name] = acted
    return msgspec.structs.replace(section, **changes) if changes else section


def dotted_value(config: RunConfig, dotted: str) -> object:
    """The value of a ``section.key`` (or top-level ``key``) of ``config``."""
    value: object = config
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


def inert_settings(section: ConfigSection, path: tuple[str, ...] = ()) -> Iterator[tuple[str, object, str]]:
    """Each key of ``section`` (recursively) that INERT_KEYS lists and that differs from its default: its dotted
    name, its value and why this version does not act on it."""
    default = type(section)()
    for name in section.__struct_fields__:
        value = getattr(section, name)
        reason = INERT_KEYS.get((type(section), name))
        if reason is not None:
            if value != getattr(default, name):
                yield ".".join((*path, name)), value, reason
        elif isinstance(value, ConfigSection):
            yield from inert_settings(value, (*path, name))


def inert_message(source: str, dotted: str, value: object, reason: str) -> str:
    if isinstance(value, ConfigSection):
        shown = "a table that differs from the defaults"
    else:  # as the file writes it (true, "x"), not as Python does (True, 'x')
        shown = format_value(plain(msgspec.to_builtins(value)))
    return f"{source}: {dotted}: set to {shown}, but this version does not act on it ({reason}); remove it"
