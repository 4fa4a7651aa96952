"""Shared fixtures: a real redis-server and a fresh SQLite path per test."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.servers import run_redis


@pytest.fixture(scope="session")
def redis_server() -> Iterator[tuple[str, Any]]:
    """``(url, process)`` of a redis-server started for this test session."""
    with run_redis() as server:
        yield server


@pytest.fixture
def redis_url(redis_server: tuple[str, Any]) -> Iterator[str]:
    import redis

    url = redis_server[0]
    client = redis.Redis.from_url(url)
    client.flushdb()
    client.close()
    yield url


@pytest.fixture
def sqlite_path(tmp_path: Any) -> str:
    return str(tmp_path / "uploadmeter.sqlite3")


@pytest.fixture
def dirs(tmp_path: Any) -> tuple[str, str]:
    """``(upload dir, spool dir)``: where a test app stores files and spools parts."""
    upload_dir, spool_dir = tmp_path / "uploads", tmp_path / "spool"
    upload_dir.mkdir()
    spool_dir.mkdir()
    return str(upload_dir), str(spool_dir)


@pytest.fixture(scope="session")
def swift(tmp_path_factory: Any) -> Iterator[Any]:
    """A real S3 endpoint (Swift's s3api, tests/support/s3/start_swift.sh) for the session."""
    from tests.support.s3 import running_swift

    with running_swift(str(tmp_path_factory.mktemp("swift"))) as server:
        yield server
