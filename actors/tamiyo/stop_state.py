"""Tamiyo's stop state file (``tamiyo_state.json``): the controller's state at a graceful stop, with its SHA-256.

Format: one JSON object, ``{"sha256": <64 hex digits>, "state": <TamiyoState>}`` (the state as state_codec.py writes
it), the digest taken over the bytes of ``state`` exactly as they stand in the file. A flipped byte anywhere, a
truncated file or one without the digest (an older version's) is refused with StopStateDamaged: a resume then takes the
journaled state at or before its checkpoint instead (see state_journal.resume_state), as after a ``kill -9``.
"""

from __future__ import annotations

import hashlib
import re
from typing import TYPE_CHECKING

import msgspec

from actors.tamiyo import state_codec
from actors.tamiyo.state import TamiyoState
from esper.runtime.atomic_write import atomic_write_bytes
from esper.runtime.errors import EsperError
from schemas.base import Record

if TYPE_CHECKING:
    from pathlib import Path

STOP_STATE_FILENAME = "tamiyo_state.json"

__all__ = ["STOP_STATE_FILENAME", "StopStateDamaged", "encode_stop_state", "read_stop_state", "write_stop_state"]


class StopStateDamaged(EsperError):
    """The stop state file exists but cannot be trusted; the message is one line naming why."""


class _Envelope(Record, frozen=True):
    sha256: str
    state: msgspec.Raw


_ENVELOPE = msgspec.json.Decoder(_Envelope)
_STATE = state_codec.decoder(TamiyoState)
_HEX64 = re.compile(r"[0-9a-f]{64}")


def encode_stop_state(state: TamiyoState) -> bytes:
    """The file's bytes for ``state``."""
    payload = state_codec.encode(state)
    return b'{"sha256":"%s","state":%s}\n' % (hashlib.sha256(payload).hexdigest().encode(), payload)


def write_stop_state(path: Path, state: TamiyoState) -> None:
    """Replace the stop state file atomically. Blocking.

    Raises:
        OSError: the directory is not writable or the disk is full; the file is then unchanged.
    """
    atomic_write_bytes(path, encode_stop_state(state), shared=True)


def read_stop_state(path: Path) -> TamiyoState | None:
    """The state the file holds, or None when there is no file. Blocking.

    Raises:
        StopStateDamaged: the file cannot be read, is not the format above (truncated, an older version's without a
            digest), its digest does not match its state's bytes, or the state does not decode.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as err:
        raise StopStateDamaged(f"cannot be read: {err.strerror or err}") from err
    try:
        envelope = _ENVELOPE.decode(data)
    except msgspec.DecodeError as err:
        if _bare_state(data):
            # The decoder's "Object contains unknown field `policy`" said nothing a user could act on.
            raise StopStateDamaged(
                "written by an earlier version of Esper (a controller state without a checksum), which this version"
                " does not read"
            ) from err
        raise StopStateDamaged(f"not a checksummed controller state: {err}") from err
    if _HEX64.fullmatch(envelope.sha256) is None:
        raise StopStateDamaged(f"damaged: the recorded sha256 {envelope.sha256[:16]!r} is not 64 hex digits")
    payload = bytes(envelope.state)
    digest = hashlib.sha256(payload).hexdigest()
    if digest != envelope.sha256:
        raise StopStateDamaged(f"damaged: sha256 {digest[:12]} does not match the recorded {envelope.sha256[:12]}")
    try:
        return _STATE.decode(payload)
    except msgspec.DecodeError as err:  # a state its digest vouches for that this version cannot read
        raise StopStateDamaged(
            f"written by another version of Esper, whose controller state this version does not read ({err})"
        ) from err


def _bare_state(data: bytes) -> bool:
    """Whether ``data`` is a JSON object with no digest but a policy: an earlier version wrote the state bare."""
    try:
        tree = msgspec.json.decode(data)
    except msgspec.DecodeError:
        return False
    return isinstance(tree, dict) and "sha256" not in tree and "policy" in tree
