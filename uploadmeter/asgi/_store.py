"""Store reads for the ASGI shell, never on the event loop's time.

A store with an async ``aget`` (:class:`~uploadmeter.stores.RedisStore`, on
``redis.asyncio``) is read on the loop without blocking it: no thread, no GIL handover.
Any other store (SQLite, memory, a custom one) is read on a worker thread.
"""

from __future__ import annotations

from uploadmeter.asgi._types import OffLoop
from uploadmeter.core._endpoints import StoreRead
from uploadmeter.core._http import Reply
from uploadmeter.exceptions import StoreError
from uploadmeter.stores._base import ProgressStore


async def read(store: ProgressStore, key: str, off_loop: OffLoop) -> str | None:
    """The value of ``key`` (raises :class:`StoreError` when the store is away)."""
    aget = getattr(store, "aget", None)
    if aget is not None:
        value: str | None = await aget(key)
        return value
    return await off_loop(store.get, key)  # type: ignore[no-any-return]


async def answer_read(step: StoreRead, off_loop: OffLoop) -> Reply:
    """Run the core's one-read step the loop's way."""
    try:
        value = await read(step.store, step.key, off_loop)
    except StoreError as exc:
        return step.unavailable(exc)
    return step.then(value)
