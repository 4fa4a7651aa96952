"""The ASGI 3 callables, typed (as asgiref.typing, without the dependency)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# Runs a blocking call (store I/O) off the event loop: ``await off_loop(fn, *args)``.
OffLoop = Callable[..., Awaitable[Any]]

DISCONNECT: Message = {"type": "http.disconnect"}
