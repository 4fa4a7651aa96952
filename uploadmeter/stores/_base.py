"""The store interface every backend implements (see :mod:`uploadmeter.stores`)."""

from __future__ import annotations

from abc import ABC, abstractmethod

__all__ = ["ProgressStore"]


class ProgressStore(ABC):
    """An expiring string map shared by every worker that serves the app.

    Every method may raise :class:`uploadmeter.exceptions.StoreError` when the backend cannot
    be reached; callers on the upload path catch it and degrade instead of failing the
    upload.  ``ttl`` is in seconds.
    """

    @abstractmethod
    def get(self, key: str) -> str | None:
        """The value of ``key``, or ``None`` when absent or expired."""

    @abstractmethod
    def set(self, key: str, value: str, ttl: float) -> None:
        """Store ``value`` under ``key`` for ``ttl`` seconds, replacing any value."""

    @abstractmethod
    def add(self, key: str, value: str, ttl: float) -> bool:
        """Store ``value`` only if ``key`` is absent or expired; tell whether it did."""

    @abstractmethod
    def delete(self, key: str) -> bool:
        """Remove ``key``; tell whether it was there."""

    @abstractmethod
    def incr(self, key: str, ttl: float) -> int:
        """Add one to the counter at ``key`` and return it.

        A new counter starts at 1 and expires ``ttl`` seconds after its creation; later
        increments do not extend it (a fixed window, as rate limits want).
        """

    def delete_if(self, key: str, value: str) -> bool:
        """Remove ``key`` only while it holds ``value``; tell whether it did.

        Backends should make this atomic (compare-and-delete): the default reads, then
        deletes, so the key could change in between.
        """
        return self.get(key) == value and self.delete(key)

    def expire_if(self, key: str, value: str, ttl: float) -> bool:
        """Give ``key`` a new ``ttl`` only while it holds ``value``; tell whether it did.

        Backends should make this atomic; the default reads, then writes.
        """
        if self.get(key) != value:
            return False
        self.set(key, value, ttl)
        return True

    def close(self) -> None:  # noqa: B027 - optional hook, most stores hold nothing
        """Release connections.  The store must not be used afterwards."""
