"""The Redis store: progress shared by every worker on every machine.

Needs the ``redis`` extra (``pip install uploadmeter[redis]``).  Short socket timeouts
keep a dead Redis from stalling uploads: the upload path catches :class:`StoreError`,
logs a warning and carries on without progress until Redis answers again.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from uploadmeter.exceptions import MissingDependency, StoreError
from uploadmeter.stores._base import ProgressStore

if TYPE_CHECKING:
    import redis

# INCR then PEXPIRE on the first increment, atomically, on every Redis version.
_INCR_SCRIPT = """
local value = redis.call('INCR', KEYS[1])
if value == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return value
"""

# Compare-and-delete and compare-and-expire: one round trip, atomic in Redis.
_DELETE_IF_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
_EXPIRE_IF_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""


class RedisStore(ProgressStore):
    """Keeps values in Redis under ``key_prefix``.

    >>> store = RedisStore("redis://127.0.0.1:6379/0")  # doctest: +SKIP
    """

    def __init__(
        self,
        url_or_client: str | redis.Redis[str] = "redis://127.0.0.1:6379/0",
        *,
        key_prefix: str = "uploadmeter:",
        socket_timeout: float = 1.0,
    ) -> None:
        try:
            import redis
        except ImportError as exc:
            raise MissingDependency("RedisStore", "the redis package", "redis") from exc
        self._errors: tuple[type[BaseException], ...] = (redis.RedisError, OSError)
        if isinstance(url_or_client, str):
            self._redis: redis.Redis[str] = redis.Redis.from_url(
                url_or_client,
                socket_timeout=socket_timeout,
                socket_connect_timeout=socket_timeout,
                decode_responses=True,
            )
        else:
            self._redis = url_or_client
        self.key_prefix = key_prefix
        self._async: tuple[Any, Any] | None = None  # (event loop, redis.asyncio client)
        self._incr = self._redis.register_script(_INCR_SCRIPT)
        self._delete_if = self._redis.register_script(_DELETE_IF_SCRIPT)
        self._expire_if = self._redis.register_script(_EXPIRE_IF_SCRIPT)

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        try:
            return getattr(self._redis, method)(*args, **kwargs)
        except self._errors as exc:
            raise StoreError(f"Redis store: {exc}") from exc

    def get(self, key: str) -> str | None:
        value = self._call("get", self.key_prefix + key)
        return None if value is None else str(value)

    def set(self, key: str, value: str, ttl: float) -> None:
        self._call("set", self.key_prefix + key, value, px=_ms(ttl))

    def add(self, key: str, value: str, ttl: float) -> bool:
        return bool(self._call("set", self.key_prefix + key, value, px=_ms(ttl), nx=True))

    def delete(self, key: str) -> bool:
        return bool(self._call("delete", self.key_prefix + key))

    def delete_if(self, key: str, value: str) -> bool:
        return bool(self._script(self._delete_if, key, value))

    def expire_if(self, key: str, value: str, ttl: float) -> bool:
        return bool(self._script(self._expire_if, key, value, _ms(ttl)))

    def incr(self, key: str, ttl: float) -> int:
        return int(self._script(self._incr, key, _ms(ttl)))

    def _script(self, script: Any, key: str, *args: Any) -> Any:
        try:
            return script(keys=[self.key_prefix + key], args=list(args))
        except self._errors as exc:
            raise StoreError(f"Redis store: {exc}") from exc

    async def aget(self, key: str) -> str | None:
        """:meth:`get` for asyncio code, on ``redis.asyncio``: no thread, the loop never
        waits (the ASGI shell reads polls and event streams this way).  One client per
        event loop, on the synchronous client's connection settings."""
        try:
            value = await self._async_client().get(self.key_prefix + key)
        except self._errors as exc:
            raise StoreError(f"Redis store: {exc}") from exc
        return None if value is None else str(value)

    def _async_client(self) -> Any:
        import asyncio

        import redis.asyncio

        loop = asyncio.get_running_loop()
        if self._async is None or self._async[0] is not loop:
            kwargs = dict(self._redis.connection_pool.connection_kwargs)
            # A few connections, shared: a hundred polls at once wait for one (a GET is
            # ~0.1 ms) instead of each opening its own on the loop.
            pool = redis.asyncio.BlockingConnectionPool(max_connections=8, timeout=5, **kwargs)
            self._async = (loop, redis.asyncio.Redis(connection_pool=pool))
        return self._async[1]

    def close(self) -> None:
        self._redis.close()


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))
