"""The in-process store: a dict behind a lock.

Right for tests and single-process servers (werkzeug's dev server, one threaded worker).
Under gunicorn with several workers each process has its own dict, so a poll answered
by another worker would not see the upload: use the SQLite default or Redis there.
"""

from __future__ import annotations

import threading
import time

from uploadmeter.stores._base import ProgressStore


class MemoryStore(ProgressStore):
    """Keeps values in this process only.

    >>> store = MemoryStore()
    >>> store.set("k", "v", ttl=60)
    >>> store.get("k")
    'v'
    """

    def __init__(self) -> None:
        self._data: dict[str, tuple[str, float]] = {}
        self._lock = threading.Lock()
        self._next_purge = 0.0

    def get(self, key: str) -> str | None:
        item = self._data.get(key)
        if item is None or item[1] <= time.monotonic():
            return None
        return item[0]

    def set(self, key: str, value: str, ttl: float) -> None:
        now = time.monotonic()
        with self._lock:
            self._data[key] = (value, now + ttl)
            self._purge(now)

    def add(self, key: str, value: str, ttl: float) -> bool:
        now = time.monotonic()
        with self._lock:
            item = self._data.get(key)
            if item is not None and item[1] > now:
                return False
            self._data[key] = (value, now + ttl)
            return True

    def delete(self, key: str) -> bool:
        with self._lock:
            item = self._data.pop(key, None)
        return item is not None and item[1] > time.monotonic()

    def delete_if(self, key: str, value: str) -> bool:
        with self._lock:
            item = self._data.get(key)
            if item is None or item[0] != value or item[1] <= time.monotonic():
                return False
            del self._data[key]
            return True

    def expire_if(self, key: str, value: str, ttl: float) -> bool:
        now = time.monotonic()
        with self._lock:
            item = self._data.get(key)
            if item is None or item[0] != value or item[1] <= now:
                return False
            self._data[key] = (value, now + ttl)
            return True

    def incr(self, key: str, ttl: float) -> int:
        now = time.monotonic()
        with self._lock:
            item = self._data.get(key)
            if item is None or item[1] <= now:
                self._data[key] = ("1", now + ttl)
                return 1
            value = int(item[0]) + 1
            self._data[key] = (str(value), item[1])
            return value

    def _purge(self, now: float) -> None:
        # Called with the lock held; at most once a minute so writes stay O(1).
        if now < self._next_purge:
            return
        self._next_purge = now + 60
        for key in [k for k, (_, expires) in self._data.items() if expires <= now]:
            del self._data[key]
