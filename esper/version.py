"""Which Esper this is: the package version, and the git commit when the source is a git checkout."""

from __future__ import annotations

import functools
import re
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

_COMMIT = re.compile(r"[0-9a-f]{40}")


@functools.cache
def esper_version() -> str:
    """``0.1.0 (commit 2551a35c)``, or the package version alone when the commit cannot be read from the files
    (no git checkout, an unusual layout): no subprocess, so no git binary is needed and nothing can hang."""
    try:
        package = version("esper-morphogenesis")
    except PackageNotFoundError:
        package = "0.0.0+unknown"
    commit = _git_commit(Path(__file__).resolve().parent.parent)
    return package if commit is None else f"{package} (commit {commit[:8]})"


def _git_commit(root: Path) -> str | None:
    """HEAD's commit of the checkout at ``root`` (a worktree's too), read from .git's files; None when it cannot be."""
    try:
        git = root / ".git"
        if git.is_file():  # a worktree: "gitdir: <path>"
            git = Path(git.read_text().removeprefix("gitdir:").strip())
        head = (git / "HEAD").read_text().strip()
        if _COMMIT.fullmatch(head):
            return head  # detached
        ref = head.removeprefix("ref:").strip()
        common = git / (git / "commondir").read_text().strip() if (git / "commondir").is_file() else git
        for base in (git, common):
            if (base / ref).is_file():
                found = (base / ref).read_text().strip()
                return found if _COMMIT.fullmatch(found) else None
        for line in (common / "packed-refs").read_text().splitlines():
            sha, _, name = line.partition(" ")
            if name == ref and _COMMIT.fullmatch(sha):
                return sha
    except (OSError, UnicodeDecodeError):
        return None
    return None
