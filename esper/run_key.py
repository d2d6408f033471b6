"""The run's command-signing key: the secret environment variable's, or a random one kept in the run directory."""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, final

from esper.runtime.atomic_write import atomic_write_bytes
from esper.runtime.errors import ConfigError

if TYPE_CHECKING:
    from pathlib import Path

    from schemas.config import RunConfig

KEY_FILE = "command.key"
_KEY_BYTES = 32
# The shortest secret the variable may hold: HMAC keys this short can be guessed offline from one signed command in
# the journal (a 1-byte secret was accepted, 256 tries to forge any command).
MIN_SECRET_BYTES = 16


@final
@dataclass(frozen=True, slots=True)
class RunKey:
    """The key Tamiyo signs its commands with and Kasmina verifies them with, live and when it replays its journal.

    Attributes:
        secret: the key; never in a repr, a log line or an event.
        env: the environment variable it was read from; None for the run's own random key, kept in KEY_FILE.
        stored: KEY_FILE already holds it (a resumed run's); a new random key is written by ``keep_run_key``.
    """

    secret: bytes = field(repr=False)
    env: str | None
    stored: bool

    @property
    def origin(self) -> str:
        """Where the key comes from, for a message: the variable, or the file."""
        return f"the environment variable {self.env}" if self.env is not None else KEY_FILE


def env_key(config: RunConfig, *, resuming: bool = False) -> RunKey | None:
    """The key of the environment variable ``security.secret_env``, or None when it is unset or empty. ``resuming``:
    a shorter secret is taken (a run an earlier version started with one signed its journal with it: refused, the run
    could be finished by no secret at all; the resume warns instead, see ``short_secret``).

    Raises:
        ConfigError: the variable is unset while weatherlight.require_secret is true, or (for a new run) holds fewer
            than MIN_SECRET_BYTES bytes (the line names the variable and the length, never the value).
    """
    name = config.security.secret_env
    value = os.environ.get(name)
    if value:
        secret = value.encode("utf-8")
        if len(secret) < MIN_SECRET_BYTES and not resuming:
            raise ConfigError(
                f"security.secret_env: the environment variable {name} holds {len(secret)} bytes, fewer than the"
                f" {MIN_SECRET_BYTES} a command-signing key needs (use e.g. 32 random bytes, hex-encoded)"
            )
        return RunKey(secret=secret, env=name, stored=False)
    if config.weatherlight.require_secret:
        raise ConfigError(f"weatherlight.require_secret: the environment variable {name} is not set")
    return None


def short_secret(key: RunKey) -> bool:
    """Whether ``key`` is an environment secret shorter than a new run may use (a resume takes one, with a warning)."""
    return key.env is not None and len(key.secret) < MIN_SECRET_BYTES


def new_run_key() -> RunKey:
    """A random key for this run, not written yet (``keep_run_key`` writes it)."""
    return RunKey(secret=secrets.token_bytes(_KEY_BYTES), env=None, stored=False)


def read_run_key(directory: Path) -> RunKey | None:
    """The random key a run without the environment variable kept in its directory; None when there is no key file.
    Blocking, read-only.

    Raises:
        ConfigError: the key file cannot be read or does not hold a key (one line naming it).
    """
    path = directory / KEY_FILE
    try:
        secret = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as err:
        raise ConfigError(f"--resume {directory}: {KEY_FILE} cannot be read ({err.strerror or err})") from err
    if len(secret) != _KEY_BYTES:
        raise ConfigError(
            f"--resume {directory}: {KEY_FILE} holds {len(secret)} bytes, not a {_KEY_BYTES}-byte key: it is not the"
            " key this run signed its commands with"
        )
    return RunKey(secret=secret, env=None, stored=True)


def keep_run_key(directory: Path, key: RunKey) -> None:
    """Make the run directory's key file hold ``key`` if it is the run's own random key, so that a ``--resume``
    verifies the journaled commands with the key that signed them; a key from the environment stays out of the
    directory (a key file an earlier attempt left is removed). Written atomically, readable by its owner only (mode
    0600), before the first command is signed. Blocking.

    Raises:
        ConfigError: the directory cannot be written.
    """
    path = directory / KEY_FILE
    try:
        if key.env is not None:
            path.unlink(missing_ok=True)
        elif not key.stored:
            atomic_write_bytes(path, key.secret)  # its temp file is made 0600 and renamed, so the mode holds
    except OSError as err:
        raise ConfigError(f"run directory {directory}: cannot write there: {err.strerror or err}") from err
