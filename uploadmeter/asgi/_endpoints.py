"""The endpoints the ASGI middleware answers itself, under its prefix.

What progress, cancel, session and static answer is decided in the core
(:class:`uploadmeter.core._endpoints.MeterEndpoints`, shared with WSGI); this module runs
the core's store steps on a store thread, writes the replies, streams
``{prefix}/events`` (:mod:`uploadmeter.asgi._events`) and dispatches to mounted apps.
"""

from __future__ import annotations

from uploadmeter.asgi._events import stream_events
from uploadmeter.asgi._requests import request_head, send_reply
from uploadmeter.asgi._store import answer_read
from uploadmeter.asgi._types import ASGIApp, OffLoop, Receive, Scope, Send
from uploadmeter.core._context import MeterContext
from uploadmeter.core._endpoints import MeterEndpoints, StoreRead, find_mount
from uploadmeter.core._http import Reply


class Endpoints:
    """Dispatches requests under the prefix; owned by the middleware."""

    def __init__(self, context: MeterContext, off_loop: OffLoop, events_interval: float) -> None:
        self.core = MeterEndpoints(context)
        self.off_loop = off_loop
        self.events_interval = events_interval
        self.mounts: dict[str, ASGIApp] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send, sub: str) -> None:
        head = request_head(scope, sub)
        if sub == "/events":
            await stream_events(
                self.core, self.off_loop, self.events_interval, head, scope, receive, send
            )
            return
        answer = self.core.answer(head, sub, scope)
        if answer is None:
            mounted = find_mount(self.mounts, sub)
            if mounted is not None:
                mount, app = mounted
                root_path = scope.get("root_path", "") + self.core.context.prefix + mount
                # As the ASGI spec has it: ``path`` is the full path, ``root_path`` its
                # mount; uploadmeter.asgi.route_path(scope) is what follows the mount.
                path = root_path + sub[len(mount) :]
                await app(dict(scope, root_path=root_path, path=path), receive, send)
                return
            answer = self.core.not_found(head)
        if isinstance(answer, Reply):
            reply = answer
        elif isinstance(answer, StoreRead):
            reply = await answer_read(answer, self.off_loop)
        else:
            reply = await self.off_loop(answer)
        await send_reply(send, reply, head_only=head.method == "HEAD")
