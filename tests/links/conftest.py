"""A real store for the link and share units: every backend the links keep their records in."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from uploadmeter.stores import ProgressStore, open_store


@pytest.fixture(params=["memory", "sqlite", "redis"])
def store(request: pytest.FixtureRequest) -> Iterator[ProgressStore]:
    if request.param == "memory":
        url = "memory://"
    elif request.param == "sqlite":
        url = "sqlite://" + request.getfixturevalue("sqlite_path")
    else:
        url = request.getfixturevalue("redis_url")
    yield open_store(url)
