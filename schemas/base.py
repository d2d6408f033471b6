"""The one Struct policy for messages (frozen, keyword-only, tagged, no unknown fields) and for config sections."""

from __future__ import annotations

import msgspec


class Message(msgspec.Struct, frozen=True, kw_only=True, tag=True, forbid_unknown_fields=True):
    """Base of every message. The tag is the class name, in the field ``type`` of the encoded form.

    Building a Struct checks nothing; decoding with a typed decoder checks everything. Boundaries that must refuse a
    wrong type (the mailbox) check it themselves.
    """


class Record(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Base of untagged immutable records: statistics, snapshots, nested parts of messages, on-disk rows."""


class ConfigSection(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Base of every config section: decoded from TOML with unknown keys rejected."""
