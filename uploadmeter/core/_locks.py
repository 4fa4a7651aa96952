"""A lock shared by every worker process, built on the progress store.

Two requests for one upload may land on different gunicorn workers, or on different
machines when the store is Redis; a ``threading.Lock`` cannot serialize them.  The store's
``add`` (set-if-absent with a ttl) can: whoever adds the key holds the lock, and a holder
that dies loses it when the key expires.  Each holder writes a random token, and releases
or extends the lock with the store's atomic ``delete_if`` / ``expire_if``, so a holder
whose lock expired (it stalled for longer than ``ttl``) can neither free nor take over its
successor's lock: :meth:`StoreLock.refresh` tells it with :class:`LockLost` instead.
"""

from __future__ import annotations

import contextlib
import secrets
import time
from types import TracebackType

from uploadmeter.exceptions import LockLost, LockTimeout, StoreError
from uploadmeter.stores._base import ProgressStore

__all__ = ["StoreLock"]


class StoreLock:
    """A named lock in a :class:`~uploadmeter.stores.ProgressStore`.

    ::

        with StoreLock(store, "tus:abc", ttl=15, wait=20) as lock:
            for block in blocks:
                lock.refresh(every=5)   # LockLost: stop before touching shared state
                ...                     # one worker at a time, on every machine

    :param ttl: seconds before an unrefreshed lock frees itself (a crashed holder).
    :param wait: seconds :meth:`acquire` waits for a taken lock before
        :class:`LockTimeout`; ``0`` tries once.
    """

    def __init__(
        self, store: ProgressStore, key: str, *, ttl: float = 15.0, wait: float = 10.0
    ) -> None:
        self.store = store
        self.key = "lock:" + key
        self.ttl = ttl
        self.wait = wait
        self.token = secrets.token_hex(16)
        self.held = False
        self._refreshed = 0.0

    def acquire(self) -> None:
        """Take the lock, waiting up to ``wait`` seconds.  Raises :class:`LockTimeout`."""
        deadline = time.monotonic() + self.wait
        delay = 0.005
        while not self.store.add(self.key, self.token, self.ttl):
            now = time.monotonic()
            if now >= deadline:
                raise LockTimeout(f"{self.key} is held by another request")
            # The store has no blocking wait; poll with a short capped back-off.
            time.sleep(min(delay, deadline - now))
            delay = min(delay * 2, 0.05)
        self.held = True
        self._refreshed = time.monotonic()

    def try_acquire(self) -> bool:
        """Take the lock if it is free right now; tell whether it was."""
        if self.store.add(self.key, self.token, self.ttl):
            self.held = True
            self._refreshed = time.monotonic()
        return self.held

    def refresh(self, *, every: float = 0.0) -> None:
        """Extend the lock to a full ``ttl`` again; at most once per ``every`` seconds.

        Raises :class:`LockLost` when the lock is no longer ours.
        """
        if not self.held:
            raise LockLost(f"{self.key} is not held")
        now = time.monotonic()
        if now - self._refreshed < every:
            return
        if not self.store.expire_if(self.key, self.token, self.ttl):
            self.held = False
            raise LockLost(f"{self.key} expired while held")
        self._refreshed = now

    def release(self) -> None:
        """Give the lock back (a no-op when it is not held).  Never raises."""
        if not self.held:
            return
        self.held = False
        with contextlib.suppress(StoreError):  # it expires on its own
            self.store.delete_if(self.key, self.token)

    def __enter__(self) -> StoreLock:
        if not self.held:
            self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
