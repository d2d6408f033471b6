"""A run an unrecoverable write error stopped says what to fix by the cause, not "free the disk" for every one."""

from __future__ import annotations

import errno
import os

import pytest

from esper.runtime.errors import UnrecoverableFailure, unrecoverable_remedy


@pytest.mark.parametrize(
    ("code", "remedy"),
    [
        (
            errno.ENOSPC,
            "free space on the disk (the checkpoints take up to (tolaria.checkpoint_keep_last + 1) x one checkpoint's"
            " size; a smaller checkpoint_keep_last takes less)",
        ),
        (errno.EDQUOT, "free space within the quota (or raise it)"),
        (errno.EFBIG, "raise the file-size limit (ulimit -f)"),
        (errno.EROFS, "make the file system writable"),
        (
            errno.EACCES,
            "make the file the error names (or its directory) accessible: its permissions or an immutable attribute",
        ),
        (
            errno.EPERM,
            "make the file the error names (or its directory) accessible: its permissions or an immutable attribute",
        ),
    ],
)
def test_each_cause_gets_its_own_remedy_from_the_chain_or_the_text(code: int, remedy: str) -> None:
    failure = UnrecoverableFailure("writer failed")
    failure.__cause__ = OSError(code, os.strerror(code))
    assert unrecoverable_remedy(failure) == remedy
    # A nested supervisor's escalation keeps only the text, which names the system's wording of the cause.
    text_only = UnrecoverableFailure(f"sub/writer failed: {os.strerror(code)}; a restart cannot fix that")
    assert unrecoverable_remedy(text_only) == remedy


def test_a_failure_that_names_no_known_cause_says_fix_the_cause() -> None:
    assert unrecoverable_remedy(UnrecoverableFailure("tolaria could not be built")) == "fix the cause"


@pytest.mark.parametrize("code", [errno.EACCES, errno.EPERM])
def test_a_file_refused_is_named_wherever_it_is(code: int) -> None:
    """ "make the run directory writable" was said of urza.root's files, the npz file and a user's own too."""
    failure = UnrecoverableFailure("urza failed")
    failure.__cause__ = OSError(code, os.strerror(code), "/data/urza/catalog.sqlite")
    assert unrecoverable_remedy(failure) == (
        "make /data/urza/catalog.sqlite (or its directory) accessible: its permissions or an immutable attribute"
    )
