"""The cross-process lock (uploadmeter.core.StoreLock) on the SQLite and Redis stores:
it serializes real processes, expires for a crashed holder, and a holder that stalled past
its ttl can neither free nor take over its successor's lock."""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable
from typing import Any

import pytest

from tests.support.servers import wait_until
from uploadmeter.core import LockLost, LockTimeout, StoreLock
from uploadmeter.stores import MemoryStore, open_store


def _count_under_lock(store_url: str, path: str, rounds: int) -> None:
    store = open_store(store_url)
    for _ in range(rounds):
        with StoreLock(store, "test-counter", ttl=5, wait=30):
            with open(path) as f:
                value = int(f.read())
            os.sched_yield()  # invite another process in, if the lock would let it
            with open(path, "w") as f:
                f.write(str(value + 1))


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_store_lock_serializes_processes(
    backend: str, tmp_path: Any, sqlite_path: str, request: Any
) -> None:
    url = "sqlite://" + sqlite_path if backend == "sqlite" else request.getfixturevalue("redis_url")
    counter = tmp_path / "counter"
    counter.write_text("0")
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_count_under_lock, args=(url, str(counter), 40)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert counter.read_text() == "160"


def test_store_lock_times_out_expires_and_detects_loss(sqlite_path: str) -> None:
    store = open_store("sqlite://" + sqlite_path)
    held = StoreLock(store, "k", ttl=0.3, wait=0)
    held.acquire()
    with pytest.raises(LockTimeout):
        StoreLock(store, "k", wait=0.05).acquire()
    assert not StoreLock(store, "k").try_acquire()
    wait_until(lambda: store.get("lock:k") is None, timeout=5)  # a crashed holder's ttl
    with StoreLock(store, "k", ttl=5, wait=0) as successor:
        with pytest.raises(LockLost):
            held.refresh()
        assert store.get("lock:k") == successor.token  # the refresh did not take it over
        held.release()  # must not free the successor's lock
        assert store.get("lock:k") == successor.token
    assert store.get("lock:k") is None


class ExpiresOnTouch(MemoryStore):
    """The worst moment for a stalled holder: its lock expires and a successor takes it
    the instant the holder touches the key -- right *after* a read (a ``get`` followed by
    a write leaves that gap), or right before an atomic ``delete_if``/``expire_if``
    (which leave none)."""

    def __init__(self) -> None:
        super().__init__()
        self.takeover: Callable[[], None] | None = None

    def _fire(self) -> None:
        takeover, self.takeover = self.takeover, None
        if takeover is not None:
            takeover()

    def get(self, key: str) -> str | None:
        value = super().get(key)
        self._fire()
        return value

    def delete_if(self, key: str, value: str) -> bool:
        self._fire()
        return super().delete_if(key, value)

    def expire_if(self, key: str, value: str, ttl: float) -> bool:
        self._fire()
        return super().expire_if(key, value, ttl)


@pytest.mark.parametrize("operation", ["release", "refresh"])
def test_a_stalled_holder_never_frees_or_takes_its_successors_lock(operation: str) -> None:
    store = ExpiresOnTouch()
    held = StoreLock(store, "upload", ttl=60)
    held.acquire()
    successor = StoreLock(store, "upload", ttl=60, wait=0)

    def takeover() -> None:
        store.delete(held.key)  # the holder's ttl ran out
        successor.acquire()

    store.takeover = takeover
    if operation == "release":
        held.release()
    else:
        with pytest.raises(LockLost):
            held.refresh()
    assert successor.held and store.get(successor.key) == successor.token
