"""The five store operations behave the same on memory, SQLite and a real redis-server."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from servers import wait_until

from uploadmeter import MemoryStore, ProgressStore, RedisStore, SQLiteStore, StoreError, open_store


@pytest.fixture(params=["memory", "sqlite", "redis"])
def store(request: Any, tmp_path: Any) -> Iterator[ProgressStore]:
    if request.param == "memory":
        s: ProgressStore = MemoryStore()
    elif request.param == "sqlite":
        s = SQLiteStore(str(tmp_path / "kv.sqlite3"))
    else:
        s = RedisStore(request.getfixturevalue("redis_url"))
    yield s
    s.close()


def test_set_get_delete(store: ProgressStore) -> None:
    assert store.get("k") is None
    store.set("k", "välue", ttl=60)
    assert store.get("k") == "välue"
    store.set("k", "second", ttl=60)
    assert store.get("k") == "second"
    assert store.delete("k") is True
    assert store.delete("k") is False
    assert store.get("k") is None


def test_add_only_when_absent(store: ProgressStore) -> None:
    assert store.add("lock", "a", ttl=60) is True
    assert store.add("lock", "b", ttl=60) is False
    assert store.get("lock") == "a"


def test_delete_if_and_expire_if_touch_only_the_expected_value(store: ProgressStore) -> None:
    # What a lock's release and refresh rely on: never act on a successor's value.
    store.set("lock", "mine", ttl=60)
    assert store.delete_if("lock", "theirs") is False
    assert store.expire_if("lock", "theirs", ttl=0.2) is False
    assert store.get("lock") == "mine"
    assert store.expire_if("lock", "mine", ttl=0.2) is True
    wait_until(lambda: store.get("lock") is None, timeout=5)  # the new ttl applied
    assert store.expire_if("lock", "mine", ttl=60) is False  # expired: not revived
    assert store.delete_if("lock", "mine") is False
    store.set("lock", "mine", ttl=60)
    assert store.delete_if("lock", "mine") is True
    assert store.get("lock") is None
    assert store.delete_if("absent", "x") is False and store.expire_if("absent", "x", 1) is False


def test_values_expire(store: ProgressStore) -> None:
    store.set("short", "v", ttl=0.2)
    assert store.add("short-lock", "v", ttl=0.2) is True
    wait_until(lambda: store.get("short") is None, timeout=5)
    assert store.delete("short") is False
    # An expired key can be added again.
    wait_until(lambda: store.add("short-lock", "w", ttl=60), timeout=5)
    assert store.get("short-lock") == "w"


def test_incr_counts_in_a_fixed_window(store: ProgressStore) -> None:
    assert [store.incr("hits", ttl=60) for _ in range(3)] == [1, 2, 3]
    assert store.incr("brief", ttl=0.2) == 1
    wait_until(lambda: store.get("brief") is None, timeout=5)
    assert store.incr("brief", ttl=60) == 1


def test_open_store_by_url(tmp_path: Any, redis_url: str) -> None:
    assert isinstance(open_store("memory://"), MemoryStore)
    sqlite_store = open_store(f"sqlite://{tmp_path}/x.db")
    assert isinstance(sqlite_store, SQLiteStore) and sqlite_store.path == f"{tmp_path}/x.db"
    assert isinstance(open_store(redis_url), RedisStore)
    assert isinstance(open_store(None), SQLiteStore)  # the embedded default
    existing = MemoryStore()
    assert open_store(existing) is existing
    with pytest.raises(ValueError, match="Unknown store"):
        open_store("postgres://nope")


def test_sqlite_is_shared_across_processes(tmp_path: Any) -> None:
    path = str(tmp_path / "shared.sqlite3")
    store = SQLiteStore(path)
    store.set("from-parent", "1", ttl=60)
    code = (
        "from uploadmeter import SQLiteStore;"
        f"s = SQLiteStore({path!r});"
        "assert s.get('from-parent') == '1';"
        "s.set('from-child', '2', ttl=60)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    assert store.get("from-child") == "2"


def test_sqlite_waits_out_a_lock_instead_of_failing(tmp_path: Any) -> None:
    path = str(tmp_path / "locked.sqlite3")
    store = SQLiteStore(path, busy_timeout=5)
    blocker = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    blocker.execute("BEGIN EXCLUSIVE")
    writer_started = threading.Event()
    result: list[str | None] = []

    def write() -> None:
        writer_started.set()
        store.set("k", "written", ttl=60)
        result.append(store.get("k"))

    thread = threading.Thread(target=write)
    thread.start()
    writer_started.wait(5)
    thread.join(0.3)
    assert thread.is_alive(), "the write should be waiting for the lock"
    blocker.execute("COMMIT")
    thread.join(10)
    assert result == ["written"]
    blocker.close()


def test_sqlite_gives_up_with_a_store_error_after_its_timeout(tmp_path: Any) -> None:
    path = str(tmp_path / "stuck.sqlite3")
    store = SQLiteStore(path, busy_timeout=0.3)
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(StoreError, match="locked"):
            store.set("k", "v", ttl=60)
    finally:
        blocker.execute("COMMIT")
        blocker.close()


def test_redis_down_is_a_store_error_not_a_hang() -> None:
    from servers import free_port

    store = RedisStore(f"redis://127.0.0.1:{free_port()}/0", socket_timeout=0.5)
    with pytest.raises(StoreError):
        store.get("k")
