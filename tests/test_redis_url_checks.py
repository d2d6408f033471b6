"""The Redis URL's checks before the run directory is made, and the masking of its password in what is said."""

from __future__ import annotations

import pytest

from esper.runtime.bus_redis import redacted
from esper.runtime.bus_redis_open import redis_url_problem

pytest.importorskip("redis")


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("unix://:hunter2@topsecret@/tmp/r.sock?db=7", "unix://:***@/tmp/r.sock?db=7"),  # urllib splits at the last @
        ("redis://u:pass@word@host:6379/0", "redis://u:***@host:6379/0"),
        ("redis://u:sec/ret@host/1", "redis://u:***@host/1"),
        ("redis://u:pw@h:6379/0", "redis://u:***@h:6379/0"),
        ("redis://h:6379/0?password=pw&db=1", "redis://h:6379/0?password=***&db=1"),
        ("redis://h:6379/0", "redis://h:6379/0"),
        ("redis://ops@corp:s3cret@127.0.0.1:6399/0", "redis://ops@corp:***@127.0.0.1:6399/0"),  # "@" in the user
        ("redis://127.0.0.1:6399/zz?client_name=me@lab", "redis://127.0.0.1:6399/zz?client_name=me@lab"),  # no password
    ],
)
def test_no_part_of_a_password_is_said(url: str, shown: str) -> None:
    """A password holding "@" or "/" left its tail (or all of it) in the console and events.jsonl."""
    assert redacted(url) == shown
    assert redacted(f"bus password {url}: unneeded") == f"bus password {shown}: unneeded"


@pytest.mark.parametrize("url", ["redis://host/abc?db=2", "redis://host/+1", "redis://host/%201", "redis://host/2"])
def test_a_database_the_client_would_use_is_not_refused(url: str) -> None:
    """The client reads the path with int() and only without a ?db=, which wins: both were refused."""
    assert redis_url_problem(url) is None


def test_a_database_path_the_client_would_drop_is_refused() -> None:
    assert (
        redis_url_problem("redis://host/abc")
        == "expected a database number as the path, got 'abc' in 'redis://host/abc'"
    )
    problem = redis_url_problem("redis://u:sec/ret@host/abc")
    assert problem is not None
    assert "sec" not in problem
    assert "ret" not in problem
