"""The ASGI middleware in process, as a user mounts it, driven with scripted messages:
what the app receives (the very messages the server sent), what passes through untouched,
and where store calls run (never on the event loop's thread)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from tests.integration.test_e2e import BODY, CTYPE, PARTS
from uploadmeter.asgi import UploadMeterMiddleware, current_upload
from uploadmeter.processing import task
from uploadmeter.stores import MemoryStore

Message = dict[str, Any]


class OffLoopStore(MemoryStore):
    """A memory store that fails any call made on a thread running an event loop."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0
        self.on_loop: list[str] = []

    def _check(self, what: str) -> None:
        self.calls += 1
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return
        self.on_loop.append(what)

    def get(self, key: str) -> str | None:
        self._check("get")
        return super().get(key)

    def set(self, key: str, value: str, ttl: float) -> None:
        self._check("set")
        super().set(key, value, ttl)

    def add(self, key: str, value: str, ttl: float) -> bool:
        self._check("add")
        return super().add(key, value, ttl)

    def delete(self, key: str) -> bool:
        self._check("delete")
        return super().delete(key)


def scope_for(
    method: str, path: str, query: str = "", headers: list[tuple[str, str]] | None = None
) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": query.encode(),
        "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers or []],
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 8000),
    }


def body_messages(body: bytes, piece: int = 65536) -> list[Message]:
    pieces = [body[i : i + piece] for i in range(0, len(body), piece)]
    return [
        {"type": "http.request", "body": p, "more_body": i < len(pieces) - 1}
        for i, p in enumerate(pieces)
    ]


async def call(
    app: Any, scope: dict[str, Any], messages: list[Message]
) -> tuple[int, dict[str, str], bytes]:
    """Run one request; after ``messages`` the client stays connected (receive waits)."""
    queue = list(messages)
    sent: list[Message] = []

    async def receive() -> Message:
        if queue:
            return queue.pop(0)
        await asyncio.Event().wait()  # the client stays until the response is sent
        raise AssertionError("unreachable")

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope, receive, send)
    start = sent[0]
    headers = {k.decode(): v.decode() for k, v in start["headers"]}
    return start["status"], headers, b"".join(m.get("body", b"") for m in sent[1:])


class Recorder:
    """An ASGI app that receives the whole body and remembers everything it was given."""

    def __init__(self) -> None:
        self.scope: dict[str, Any] | None = None
        self.receive: Callable[[], Awaitable[Message]] | None = None
        self.messages: list[Message] = []
        self.handle: Any = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.scope, self.receive = scope, receive
        if scope["type"] == "http":
            self.handle = current_upload(scope)
            while True:
                message = await receive()
                self.messages.append(message)
                if message["type"] != "http.request" or not message.get("more_body"):
                    break
        headers = [(b"content-type", b"text/html; charset=utf-8")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"<p>ok</p>"})


def meter_for(app: Any, store: Any = None, **options: Any) -> UploadMeterMiddleware:
    return UploadMeterMiddleware(
        app, secret_key="test", store=store or MemoryStore(), update_interval=0, **options
    )


def test_untracked_requests_pass_through_untouched() -> None:
    app = Recorder()
    meter = meter_for(app, set_cookie_on_pages=False)
    for scope in (
        scope_for("POST", "/form", headers=[("content-type", "application/json")]),
        scope_for("POST", "/form", headers=[("content-type", CTYPE)]),  # no tracking id
    ):
        messages = body_messages(b'{"a": 1}' * 10000)

        async def receive(messages: list[Message] = messages) -> Message:
            return messages.pop(0)

        async def send(message: Message) -> None:
            pass

        asyncio.run(meter(scope, receive, send))
        assert app.scope is scope and app.receive is receive  # same objects, no wrapping
    lifespan = {"type": "lifespan", "asgi": {"version": "3.0"}}

    async def lifespan_app(scope: Any, receive: Any, send: Any) -> None:
        seen.append((scope, receive))

    seen: list[Any] = []
    asyncio.run(meter_for(lifespan_app)(lifespan, receive, send))
    assert seen == [(lifespan, receive)]


def test_the_app_receives_the_very_messages_the_server_sent() -> None:
    app = Recorder()
    store = OffLoopStore()
    meter = meter_for(app, store)
    messages = body_messages(BODY, 50_000)
    scope = scope_for("POST", "/upload", "uploadmeter_id=abcdefgh1", [("content-type", CTYPE)])
    status, headers, _ = asyncio.run(call(meter, scope, list(messages)))
    assert status == 200 and "uploadmeter_session=" in headers["set-cookie"]
    assert len(app.messages) == len(messages)
    assert all(got is sent for got, sent in zip(app.messages, messages, strict=True))
    assert app.handle is not None and app.handle.id == "abcdefgh1"
    record = app.handle.record
    assert record.state == "done" and record.bytes_received == len(BODY)
    assert [(f.name, f.bytes_received) for f in record.fields] == [
        (name, len(data)) for name, _, data in PARTS
    ]
    assert store.calls > 2 and store.on_loop == []


def test_no_store_call_runs_on_the_event_loop() -> None:
    """An upload, a poll, a cancel, SSE and a processing task from a coroutine: every store
    call on a worker thread."""
    store = OffLoopStore()
    progressed = asyncio.Event()
    done: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        handle = current_upload(scope)
        while (await receive()).get("more_body"):
            progressed.set()
        await handle.start_processing("scan", total=3)
        async with task(meter, handle.session, handle.id, "scan", total=3) as t:
            for _ in range(3):
                await t.aadvance(1)
        done.append(handle.id)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    meter = meter_for(app, store)

    async def scenario() -> None:
        upload = asyncio.ensure_future(
            call(
                meter,
                scope_for("POST", "/upload", "uploadmeter_id=abcdefgh1", [("content-type", CTYPE)]),
                body_messages(BODY),
            )
        )
        await progressed.wait()
        status, headers, _ = await upload
        cookie = headers["set-cookie"].split(";")[0]
        status, _, body = await call(
            meter,
            scope_for("GET", "/uploadmeter/progress", "id=abcdefgh1", [("cookie", cookie)]),
            [],
        )
        assert json.loads(body)["state"] == "done"
        status, _, body = await call(
            meter, scope_for("GET", "/uploadmeter/events", "id=abcdefgh1", [("cookie", cookie)]), []
        )
        assert b'"state":"done"' in body
        status, _, body = await call(
            meter,
            scope_for("POST", "/uploadmeter/cancel", "id=abcdefgh1", [("cookie", cookie)]),
            [],
        )
        assert status == 409

    asyncio.run(scenario())
    assert done == ["abcdefgh1"]
    assert store.calls > 10 and store.on_loop == []


def test_html_pages_get_a_session_cookie_and_others_do_not() -> None:
    meter = meter_for(Recorder())
    empty = [{"type": "http.request", "body": b"", "more_body": False}]
    _, headers, body = asyncio.run(call(meter, scope_for("GET", "/"), list(empty)))
    assert body == b"<p>ok</p>" and headers["set-cookie"].startswith("uploadmeter_session=")
    cookie = headers["set-cookie"].split(";")[0]
    _, headers, _ = asyncio.run(
        call(meter, scope_for("GET", "/", headers=[("cookie", cookie)]), list(empty))
    )
    assert "set-cookie" not in headers


def test_options_are_the_wsgi_middlewares() -> None:
    meter = meter_for(Recorder(), prefix="/meter/", max_content_length=10, ttl=5)
    assert (meter.prefix, meter.max_content_length, meter.settings.ttl) == ("/meter", 10, 5)
    with pytest.raises(ValueError, match="secret_key"):
        UploadMeterMiddleware(Recorder(), secret_key="")


def test_the_session_hook_is_called_with_the_scope() -> None:
    """``session_id(scope)``: the app's own session owns the upload, no cookie needed."""
    app = Recorder()
    meter = meter_for(
        app, session_id=lambda scope: dict(scope["headers"]).get(b"x-user", b"").decode()
    )
    user = [("content-type", CTYPE), ("x-user", "alice")]
    scope = scope_for("POST", "/upload", "uploadmeter_id=abcdefgh1", user)
    _, headers, _ = asyncio.run(call(meter, scope, body_messages(BODY)))
    assert "set-cookie" not in headers  # the app's session, not ours
    empty = [{"type": "http.request", "body": b"", "more_body": False}]
    for who, state in (("alice", "done"), ("bob", "unknown")):
        poll = scope_for("GET", "/uploadmeter/progress", "id=abcdefgh1", [("x-user", who)])
        _, _, body = asyncio.run(call(meter, poll, list(empty)))
        assert json.loads(body)["state"] == state
