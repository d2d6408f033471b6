"""What ``--resume`` checks before it touches a run directory.

The config still trains the same run, and the files that rebuild it are all there and its journaled commands verify."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Final

import msgspec

from actors.kasmina.journal import (
    JOURNAL_FILENAME,
    JournalBoundary,
    JournalCorrupt,
    iter_journal,
)
from actors.kasmina.journal_check import JournalVerdicts
from actors.nissa.csv_writer import MetricsFileError, check_existing
from actors.tolaria.checkpoints import (
    MANIFEST,
    CheckpointError,
    checkpoint_files,
    read_manifest,
    read_run_keys,
    read_written_by,
)
from esper.baseline import SAME_TRAINING
from esper.config import load_config
from esper.config_checks import RUN_FILE_KEYS, as_acted_on, dotted_value
from esper.run_key import KEY_FILE
from esper.runtime.errors import ConfigError
from esper.runtime.signing import command_signature_valid, verdict_mac
from schemas.config import RunConfig

if TYPE_CHECKING:
    from pathlib import Path

    from esper.run_key import RunKey
    from schemas.config_platform import SecurityConfig

# What the lifecycle planner is built with: a resume replays Kasmina's journal through a planner with the new config's
# settings, so another dwell or gate threshold rebuilds a different past (a blending seed replayed back into TRAINING)
# than the one the checkpoint's model went through.
PLANNER_KEYS: Final = (
    "stage_min_dwell_steps",
    "embargo_epochs",
    "max_active_seeds",
    "seed_memory_budget_mb",
    "g2_window_steps",
    "g2_max_loss_variance",
    "g2_max_gradient_norm",
    "g4_min_improvement",
    "gate_patience_steps",
    "breaker",
)

# Everything the checkpoint, the batch order and the controller's journal depend on. tolaria.epochs may grow (train
# further); device, threads, logging, the controller's heuristics and the like may change freely. The command lag is
# here because the plans in flight at the checkpoint were decided for the old one (under a new one, Tolaria waits
# for a plan that the replay sends for another step, times out and enters conservative mode).
SAME_RUN: Final = (
    # The npz file is compared by its bytes (check_same_data), not its path: a moved file, or a relative path given
    # from another directory, is the same data.
    *(f"tolaria.{key}" for key in SAME_TRAINING if key not in ("epochs", "npz_path")),
    "tolaria.command_lag_steps",
    "tolaria.state_every_steps",  # Kasmina's evidence windows count packets: another cadence, another lifecycle
    "kasmina.slot_targets",
    *(f"kasmina.{key}" for key in PLANNER_KEYS),
    "tamiyo.policy",
    # The resumed controller is offered the first start's blueprints: another selection left it none, silently.
    "karn.include",
    "karn.exclude",
    # The journal's commands are verified on replay with the run's key under its id: another id or another secret
    # variable refused the resume as "signature does not match", naming no setting.
    "security.key_id",
    "security.secret_env",
)


def manifest_lost(manifest: str, files: list[str]) -> str:
    """Why checkpoint ``files`` a manifest does not list are not loaded (``manifest``: its path as said)."""
    return (
        f"{manifest} is missing or lists no checkpoint ({', '.join(files)} present, but a checkpoint is loaded only"
        " once its SHA-256 matches the manifest)"
    )


def run_keys(config: RunConfig) -> dict[str, object]:
    """The keys a resume must keep (SAME_RUN, the run's file names), as JSON values: every checkpoint manifest records
    them, since the run's config.toml is a text file an edit changes without the checkpoints knowing."""
    keys = {dotted: dotted_value(config, dotted) for dotted in (*SAME_RUN, *RUN_FILE_KEYS)}
    # Through JSON, so they compare equal to the manifest's (a tuple reads back as a list).
    decoded: dict[str, object] = msgspec.json.decode(msgspec.json.encode(keys))
    return decoded


def edited_keys(directory: Path, earlier: RunConfig) -> list[str]:
    """The keys whose value in ``earlier`` (the run's config.toml) is not what the run's checkpoints were trained with
    (the manifest's run_keys; a manifest written before they were recorded has none), each as "key is X there but the
    run trained with Y". Blocking.

    Raises:
        CheckpointError: the manifest cannot be read.
    """
    recorded = read_run_keys(directory / "checkpoints")
    if recorded is None:
        return []
    now = run_keys(earlier)
    differing = [dotted for dotted in now if dotted in recorded and recorded[dotted] != now[dotted]]
    if differing:
        # ``earlier`` was read as acted on (as_acted_on): a value an earlier version accepted and acted on as another
        # (a momentum no optimizer but SGD reads, a slot target named twice) was recorded as written. Read so too,
        # it is the same run; the file was not edited, and no edit could have put the recorded value back.
        acted_on = _recorded_as_acted_on(earlier, {dotted: recorded[dotted] for dotted in differing})
        differing = [dotted for dotted in differing if acted_on is None or acted_on[dotted] != now[dotted]]
    return [f"{dotted} is {now[dotted]!r} there but the run trained with {recorded[dotted]!r}" for dotted in differing]


def _recorded_as_acted_on(config: RunConfig, recorded: dict[str, object]) -> dict[str, object] | None:
    """run_keys of ``config`` with the ``recorded`` values put in and read as acted on; None when they do not make a
    config this version reads."""
    tree = msgspec.to_builtins(config)
    for dotted, value in recorded.items():
        *sections, key = dotted.split(".")
        node = tree
        for name in sections:
            node = node.setdefault(name, {})  # a section all at its defaults may be left out
        node[key] = value
    try:
        return run_keys(as_acted_on(msgspec.convert(tree, RunConfig)))
    except (msgspec.ValidationError, KeyError, TypeError):
        return None


def refuse_edited(directory: Path, earlier: RunConfig, *, caller: str, advice: str) -> None:
    """Refuse a run whose config.toml no longer says what its checkpoints were trained with (edited_keys): for a
    resume, an edited key was accepted and silently not acted on (the optimizer's state kept the old learning rate),
    and the next resume with the run's real config was refused, blaming the value nobody trained with. ``caller``
    leads the line, ``advice`` ends it. Blocking.

    Raises:
        ConfigError: one line naming each edited key, both values and the file.
    """
    try:
        edited = edited_keys(directory, earlier)
    except CheckpointError as err:
        raise ConfigError(f"{caller}: {err}") from err
    if edited:
        raise ConfigError(
            f"{caller}: {directory / 'config.toml'} was edited after the run's checkpoints were written"
            f" ({', '.join(edited)}, as checkpoints/{MANIFEST} records); {advice}"
        )


def threads_as_trained(directory: Path, config: RunConfig) -> RunConfig:
    """``config`` with an unset ``tolaria.num_threads`` read as 1 when the run in ``directory`` was written by a version
    from before the manifest recorded ``esper_version`` (its manifest lists checkpoints and names no version): those
    versions trained an unset count on one torch thread (torch's per-thread start-up copied the io and policy lanes'
    1; ddedda0 made unset mean every core), so the resumed run would silently train on more threads than its first
    sessions and not end as they would have. Blocking (reads the manifest); an unreadable one is left to the resume's
    other checks."""
    if config.tolaria.num_threads is not None:
        return config
    checkpoints = directory / "checkpoints"
    try:
        listed = read_manifest(checkpoints)
    except CheckpointError:
        return config
    if not listed or read_written_by(checkpoints) is not None:
        return config
    return msgspec.structs.replace(config, tolaria=msgspec.structs.replace(config.tolaria, num_threads=1))


def read_run_config(directory: Path) -> RunConfig:
    """The config.toml of the run in ``directory`` as that run wrote it (``load_config``'s ``written``: a key the
    writing version set and this one no longer acts on is kept, not refused). Blocking.

    Raises:
        ConfigError: the file is empty (it would read as all defaults, another run) or does not load (naming it).
        OSError: it cannot be read.
    """
    path = directory / "config.toml"
    if not path.read_bytes().strip():
        raise ConfigError(f"{path}: empty")
    return load_config(path, written=True)


def check_resumable(directory: Path, config: RunConfig) -> None:
    """Refuse a resume whose config would train a different run than the one in ``directory`` (its config.toml,
    which every run writes at its start, checked against what its checkpoints record). Blocking (file I/O).

    The run's file names (RUN_FILE_KEYS) must stay too: the earlier sessions' history is read from them (renamed,
    the summary forgot every epoch, seed and decision before the resume, and the history was split in two files).

    Raises:
        ConfigError: one line naming every differing key and both values, or every key of the run's config.toml
            edited since its checkpoints were written (see refuse_edited), or the run's config.toml missing or
            unreadable (without it nothing says which run this is: a changed host model crashed every restart).
    """
    try:
        earlier = read_run_config(directory)
    except OSError as err:
        raise ConfigError(
            f"--resume {directory}: the run's config.toml cannot be read ({err.strerror or err}); it says which run"
            " this is, and a resume must train that run"
        ) from err
    except ConfigError as err:
        raise ConfigError(
            f"--resume {directory}: the run's config.toml cannot be read ({err}); it says which run this is, and a"
            " resume must train that run"
        ) from err
    if config.run_id is not None and earlier.run_id is not None and config.run_id != earlier.run_id:
        # Else the journal's commands, signed for the run's id, were refused as tampered with, blaming the journal.
        raise ConfigError(
            f"--resume {directory}: run_id is {config.run_id!r} here but the run's id is {earlier.run_id!r}; a resume"
            " keeps the run's id (drop that setting)"
        )
    refuse_edited(
        directory,
        earlier,
        caller=f"--resume {directory}",
        advice="a resume continues the same training: put the run's values back in its config.toml, or start a new"
        " run with the new ones",
    )
    differing = [
        f"{dotted} is {dotted_value(earlier, dotted)!r} in the run and {dotted_value(config, dotted)!r} here"
        for dotted in (*SAME_RUN, *RUN_FILE_KEYS)
        if dotted_value(earlier, dotted) != dotted_value(config, dotted)
    ]
    if not differing:
        return
    renamed = [dotted for dotted in RUN_FILE_KEYS if dotted_value(earlier, dotted) != dotted_value(config, dotted)]
    why = "a resume continues the same training"
    if renamed:
        why += ", in the same files, which hold its history"
    change = "that change" if len(differing) == 1 else "those changes"
    raise ConfigError(f"--resume {directory}: {', '.join(differing)}; {why} (drop {change}, or start a new run)")


def _first_checkpoint_unlisted(found: list[str], checkpoints: Path, first_step: int | None) -> bool:
    """``found`` (the step files, no manifest listing any) is the first checkpoint's file alone, its manifest never
    written: one file, no manifest at all, at or before the run's first periodic checkpoint."""
    if first_step is None or len(found) != 1 or (checkpoints / MANIFEST).exists():
        return False
    step = found[0].removeprefix("step-").removesuffix(".pt")
    return step.isdigit() and int(step) <= first_step


def check_resume_files(
    directory: Path,
    metrics_csv: str = "metrics.csv",
    *,
    run_id: str,
    key: RunKey | None,
    security: SecurityConfig,
    first_checkpoint_step: int | None = None,
) -> None:
    """Refuse a resume that could only go wrong: checkpoints without their manifest cannot be verified (so training
    would restart from step 0 against a controller and a seed lifecycle at their last step, and stall on plans that
    never come), and without Kasmina's journal the seeds in the checkpoint have no lifecycle. A run stopped before
    its first checkpoint passes (it starts over), and so does one killed while it wrote it: no manifest and one step
    file, at or before ``first_checkpoint_step`` (the step of the run's first periodic checkpoint; None: none is
    periodic, and a lone file could be any checkpoint, so it is refused). A metrics.csv Nissa could not append to is
    refused too (Nissa would fail at every restart; ``metrics_csv`` is ``nissa.metrics_csv``). Blocking (reads the
    manifest, the journal and the metrics file).

    Every journaled command is verified with ``key`` as the replay will verify it (actors.kasmina.journal_check): the
    journal is a file anyone who can write the directory could add a command to. ``run_id``: the resumed run's id;
    ``key``: the run's key (None: the environment variable is unset and the run keeps no key file); ``security``:
    its id and the variable's name.

    Raises:
        ConfigError: one line naming the missing or unreadable file, or the journaled command that fails
            verification (its step and why), or a journal of commands with no key to verify them with, or a
            journal whose boundaries go backwards (naming the step).
    """
    checkpoints = directory / "checkpoints"
    try:
        listed = read_manifest(checkpoints)
    except CheckpointError as err:
        raise ConfigError(f"--resume {directory}: {err}") from err
    if not listed:
        found = checkpoint_files(checkpoints)
        if not found:
            return  # stopped before its first checkpoint: the resume starts it over from step 0
        if _first_checkpoint_unlisted(found, checkpoints, first_checkpoint_step):
            # Killed between its first checkpoint's file and the manifest that lists it (the writer puts the file
            # first): nothing verifiable to continue from, so, as a run stopped before its first checkpoint, it starts
            # over; refused, the directory could neither be resumed nor hold a new run. A later lone file (a manifest
            # lost when one checkpoint is kept) is refused: starting over would throw the run's progress away.
            return
        raise ConfigError(
            f"--resume {directory}: {manifest_lost(f'checkpoints/{MANIFEST}', found)}; nothing to resume from: start a"
            " new run with another --run-dir"
        )
    # Stopped before its first optimizer step (a Ctrl-C while the actors start): no packet was ever planned, so a
    # journal never written is an empty one.
    trained = any(info.global_step > 0 for info in listed)
    if trained and not (checkpoints / JOURNAL_FILENAME).is_file():
        raise ConfigError(
            f"--resume {directory}: checkpoints/{JOURNAL_FILENAME} is missing, so the seeds' lifecycle cannot be"
            " rebuilt; nothing to resume from"
        )
    journal = checkpoints / JOURNAL_FILENAME
    verdicts = None
    if key is not None:
        keys = {security.key_id: key.secret}
        verdicts = JournalVerdicts(
            run_id, functools.partial(command_signature_valid, keys=keys), functools.partial(verdict_mac, keys)
        )
    last: int | None = None
    try:
        for entry in iter_journal(journal):  # every line decodes (one at a time: it may be large)
            if isinstance(entry, JournalBoundary):
                step = entry.packet.global_step
                # The planner replays boundaries only forwards (a rollback cuts the file): one out of order (two
                # processes wrote the journal, an edit) crashed Kasmina on every restart until the run gave up.
                if last is not None and step <= last:
                    raise ConfigError(
                        f"--resume {directory}: checkpoints/{JOURNAL_FILENAME}: the boundary of step {step} follows"
                        f" that of step {last} (boundaries must go forwards), so the seeds' lifecycle cannot be"
                        " rebuilt; restore the journal, or start a new run"
                    )
                last = step
                _check_journaled_command(directory, entry, key, verdicts, security.secret_env)
    except JournalCorrupt as err:
        raise ConfigError(
            f"--resume {directory}: {err}, so the seeds' lifecycle cannot be rebuilt; nothing to resume from"
        ) from err
    try:
        check_existing(directory / metrics_csv)
    except MetricsFileError as err:
        raise ConfigError(
            f"--resume {directory}: {err}; the resumed run could not add its epochs to it (move it aside to start a new"
            " one)"
        ) from err


def _check_journaled_command(
    directory: Path,
    entry: JournalBoundary,
    key: RunKey | None,
    verdicts: JournalVerdicts | None,
    secret_env: str,
) -> None:
    """Refuse the resume if the boundary's command would not be replayed (see check_resume_files).

    Raises:
        ConfigError: one line naming the journal, the step and why.
    """
    step = entry.packet.global_step
    where = f"--resume {directory}: checkpoints/{JOURNAL_FILENAME}: step {step}"
    if verdicts is None or key is None:
        if entry.command is None:
            return
        missing = (
            f"{where} holds a signed command ({entry.command.kind.value}) and the run's key is missing (no {KEY_FILE}"
            f" in the run directory, {secret_env} unset), so it cannot be verified"
        )
        if read_written_by(directory / "checkpoints") is not None:  # a version that keeps a key it draws
            raise ConfigError(f"{missing}: set {secret_env} to the key the run was started with, or start a new run")
        # Versions before command.key drew a random key without saving it, but the manifest records which version wrote
        # it only since well after command.key came: nothing here dates the run, so both cases are named.
        raise ConfigError(
            f"{missing}: restore its {KEY_FILE} (from a backup) or set {secret_env} to the key it was started with;"
            f" if a version from before {KEY_FILE} was kept started it without {secret_env}, that version signed with"
            " a random key it never saved and no key can verify it: finish it with that version, or start a new run"
        )
    refusal = verdicts.refusal(entry)
    if refusal is not None:
        raise ConfigError(
            f"{where}: {refusal} (the run's key: {key.origin}); replaying it would act on a command this run did not"
            f" accept: {_restore_hint(key)}"
        )


def _restore_hint(key: RunKey) -> str:
    if key.env is not None:
        # The likeliest cause by far: the variable holds another value than in the run's first session.
        return f"give {key.env} the value the run started with, else restore the journal or start a new run"
    return "restore the journal, or start a new run"
