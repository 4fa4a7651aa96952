"""``GET {prefix}/events?id=ID``: one upload's record pushed as Server-Sent Events.

The events and when the stream ends are decided in the core
(:class:`uploadmeter.core._events.RecordEvents`); this module is the loop.  It holds no
thread while it waits: every ``interval`` it reads the record (one store read, like a
poll: on ``redis.asyncio`` for Redis, on a worker thread otherwise), sends what
changed, and sleeps on the event loop; a client that goes away ends the stream at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from uploadmeter.asgi._requests import encode_headers, send_reply
from uploadmeter.asgi._store import read
from uploadmeter.asgi._types import OffLoop, Receive, Scope, Send
from uploadmeter.core._context import MeterContext
from uploadmeter.core._endpoints import Lookup, MeterEndpoints, method_not_allowed
from uploadmeter.core._events import EVENT_STREAM_HEADERS, RecordEvents
from uploadmeter.core._http import Reply, RequestHead
from uploadmeter.core._record import unknown_record
from uploadmeter.core._records import record_key
from uploadmeter.exceptions import StoreError


async def stream_events(
    core: MeterEndpoints,
    off_loop: OffLoop,
    interval: float,
    head: RequestHead,
    scope: Scope,
    receive: Receive,
    send: Send,
) -> None:
    if head.method != "GET":
        await send_reply(send, method_not_allowed(head, ("GET",)))
        return
    found = core.lookup(head, ("GET",), scope)
    if isinstance(found, Reply):
        await send_reply(send, found)
        return
    headers = encode_headers([*EVENT_STREAM_HEADERS, *found.headers])
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    if found.cookie is not None:
        # A session issued just now owns no upload: say so, and let EventSource come back
        # with its cookie.
        await _body(send, b"retry: 500\n" + _unknown(found), more=False)
        return
    gone = asyncio.Event()
    watcher = asyncio.ensure_future(_watch_disconnect(receive, gone))
    try:
        await _stream(core.context, off_loop, interval, found, send, gone)
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher


async def _stream(
    context: MeterContext,
    off_loop: OffLoop,
    interval: float,
    found: Lookup,
    send: Send,
    gone: asyncio.Event,
) -> None:
    records = context.records
    key = record_key(found.session, found.upload_id)
    events = RecordEvents(found.upload_id, give_up_after=context.settings.stale_after)
    while not gone.is_set():
        try:
            record = records.parse(await read(records.store, key, off_loop))
        except StoreError:
            chunk = events.update_unavailable(time.monotonic())
        else:
            chunk = events.update(record, time.monotonic())
        if chunk:
            await _body(send, chunk, more=not events.done)
        if events.done:
            return
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(gone.wait(), interval)
    with contextlib.suppress(OSError):
        await _body(send, b"", more=False)


async def _watch_disconnect(receive: Receive, gone: asyncio.Event) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            gone.set()
            return


async def _body(send: Send, data: bytes, *, more: bool) -> None:
    await send({"type": "http.response.body", "body": data, "more_body": more})


def _unknown(found: Lookup) -> bytes:
    events = RecordEvents(found.upload_id)
    events.done = True
    return events.update(unknown_record(found.upload_id), 0.0)
