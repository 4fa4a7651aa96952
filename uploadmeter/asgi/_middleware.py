"""The ASGI middleware: measures multipart uploads as the application receives them.

The same meter as the WSGI shell (:mod:`uploadmeter.wsgi`), over the same sans-IO core:
requests that are not ``multipart/form-data`` pass straight through (same scope, same
``receive``); multipart requests that carry a tracking id get a counting ``receive``
(:class:`~uploadmeter.asgi._receive.MeteredReceive`), and their progress goes to the store
every worker shares, in the same records as WSGI's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar

from uploadmeter.asgi._endpoints import Endpoints
from uploadmeter.asgi._exchange import ExchangeApp, ExchangeFeature
from uploadmeter.asgi._receive import CappedReceive, MeteredReceive
from uploadmeter.asgi._requests import encode_headers, request_head, route_path, send_reply
from uploadmeter.asgi._responses import WerkzeugApp
from uploadmeter.asgi._types import ASGIApp, Message, Receive, Scope, Send
from uploadmeter.core._http import Reply, error_reply
from uploadmeter.core._limits import SMALL_BODY
from uploadmeter.core._meter import (
    CANCELLED_FAILURE,
    BodyMeter,
    HandleBase,
    UploadStart,
    closing,
    is_form_upload,
    plan_upload,
    settle,
    start_upload,
    too_large_reply,
)
from uploadmeter.core._record import FINISHED, PROCESSING
from uploadmeter.core._records import CANCELLED_ERROR
from uploadmeter.core._shell import MeterBase, MeterOptions
from uploadmeter.exceptions import UploadCancelled
from uploadmeter.stores import ProgressStore

if TYPE_CHECKING:
    from typing_extensions import Unpack

SCOPE_KEY = "uploadmeter.upload"
SETTLED = FINISHED | {PROCESSING}
_T = TypeVar("_T")


class UploadHandle(HandleBase):
    """What the application can do with the upload it is receiving.

    Found with :func:`current_upload` while a tracked upload is handled::

        upload = current_upload(request)        # a Starlette/FastAPI request, or its scope
        if upload:
            upload.set_result(filename=saved_name)
            # or: upload.fail("Only PDF files are accepted.", status=400)
    """

    def __init__(self, meter: UploadMeterMiddleware, start: UploadStart) -> None:
        super().__init__(start.tracker, start.session)
        self._meter = meter

    async def start_processing(self, phase: str, total: int | None = None) -> None:
        """Processing follows: the record goes to ``processing`` now, never to ``done``
        (a store write, made off the event loop).  Raises
        :class:`~uploadmeter.UploadCancelled` when the user already cancelled."""
        if await self._meter.off_loop(self._tracker.start_processing, phase, total):
            raise UploadCancelled()


def current_upload(scope_or_request: Mapping[str, Any] | Any) -> UploadHandle | None:
    """The :class:`UploadHandle` of the tracked upload of this request (an ASGI ``scope``
    or a framework request with a ``.scope``: Starlette, FastAPI, Quart, Litestar,
    Django's ``ASGIRequest``), or ``None``."""
    scope = getattr(scope_or_request, "scope", scope_or_request)
    handle = scope.get(SCOPE_KEY) if isinstance(scope, Mapping) else None
    return handle if isinstance(handle, UploadHandle) else None


class UploadMeterMiddleware(MeterBase):
    """Measure multipart uploads and answer progress polls, for any ASGI app.

    ::

        from uploadmeter.asgi import UploadMeterMiddleware
        app = UploadMeterMiddleware(app, secret_key="change me")
        # Starlette / FastAPI:
        app.add_middleware(UploadMeterMiddleware, secret_key="change me")

    The options are the WSGI middleware's (:class:`uploadmeter.wsgi.UploadMeterMiddleware`;
    ``session_id`` is called with the ASGI scope), and:

    :param store_threads: worker threads for the uploads' store writes (the loop never
        waits on one); polls and event streams read on one more thread of their own.
    :param events_interval: how often ``{prefix}/events`` streams look at the record
        (default: ``update_interval``, at least 0.1 s).
    """

    def __init__(
        self,
        app: ASGIApp,
        secret_key: str | bytes | list[str] | list[bytes],
        store: str | ProgressStore | None = None,
        *,
        store_threads: int = 2,
        events_interval: float | None = None,
        **options: Unpack[MeterOptions],
    ) -> None:
        super().__init__(secret_key, store, **options)
        self.app = app
        # Store calls run on these threads, never on the event loop.  Threads, not
        # redis.asyncio: the record policy (Records, UploadTracker, the final-write
        # retries) is one synchronous implementation shared with the WSGI shell, and
        # SQLite -- the default store -- has no async driver.  A write is one store round
        # trip (~0.1 ms on Redis) plus a thread hop; bench/asgi_loop_lag.py measures what
        # the loop feels.  A pool of its own keeps the app's to_thread work from queueing
        # behind store calls, and the other way round.
        # Polls and event streams read on a thread of their own, so they never queue behind
        # the uploads' writes; few threads, because each one competes with the loop for
        # the GIL (bench/asgi_loop_lag.py: 2 writers beat 8 on a 2-core machine).
        self._pool = ThreadPoolExecutor(store_threads, thread_name_prefix="uploadmeter-store")
        self._read_pool = ThreadPoolExecutor(1, thread_name_prefix="uploadmeter-read")
        # Events look at the store at most ten times a second, however often records are written.
        interval = (
            events_interval
            if events_interval is not None
            else max(self.settings.update_interval, 0.1)
        )
        self.endpoints = Endpoints(self.context, self.read_off_loop, interval)

    async def read_off_loop(self, fn: Callable[..., _T], *args: Any) -> _T:
        """:meth:`off_loop` for reads that answer a client now (polls, events)."""
        return await asyncio.get_running_loop().run_in_executor(self._read_pool, fn, *args)

    async def off_loop(self, fn: Callable[..., _T], *args: Any) -> _T:
        """Run ``fn(*args)`` (store I/O) on a store thread; the loop goes on meanwhile."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    @property
    def mounts(self) -> dict[str, ASGIApp]:
        return self.endpoints.mounts

    def _context_changed(self) -> None:
        self.endpoints.core.context = self._context

    def mount(self, path: str, app: ASGIApp | ExchangeFeature) -> None:
        """Serve the ASGI ``app`` under ``{prefix}{path}``: the one way to add an endpoint.

        The app gets a copy of the scope whose ``root_path`` ends with ``{prefix}{path}``
        (the full ``path`` stays, as the ASGI spec and Starlette's ``Mount`` have it);
        :func:`route_path` gives what follows the mount (WSGI's ``PATH_INFO``).  An app
        with a ``mounted_at(path)`` method is told its path from the site root
        (``{prefix}{path}``), to build its own URLs.

        The resumable endpoints (:class:`~uploadmeter.resumable.TusUploads`,
        :class:`~uploadmeter.resumable.ChunkUploads`) are mounted as they are under WSGI:
        their protocol is served natively (``uploadmeter.asgi._exchange``).  The package's
        other endpoints that serve both shells -- ``DownloadLinks`` -- say so
        (``shell_neutral = True``), decide with ``respond(environ)``, and this shell writes
        the answer (:class:`~uploadmeter.asgi._responses.WerkzeugApp`).
        """
        super().mount(path, ExchangeApp(app) if isinstance(app, ExchangeFeature) else app)
        if getattr(app, "shell_neutral", False) is True:
            # A small form (a share's code) at most: SMALL_BODY, as the WSGI shell reads.
            respond = getattr(app, "respond")  # noqa: B009 (an ASGIApp has none)
            self.mounts["/" + path.strip("/")] = WerkzeugApp(respond, body_limit=SMALL_BODY)

    # -- dispatch ------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)  # lifespan, websocket: not ours
            return
        path = route_path(scope)
        if path.startswith(self._prefix_slash):
            await self.endpoints(scope, receive, send, path[len(self.prefix) :])
            return
        content_type = cookie = None
        for name, value in scope["headers"]:
            if name == b"content-type":
                content_type = value.decode("latin-1")
            elif name == b"cookie":
                cookie = value.decode("latin-1") if cookie is None else None
        if is_form_upload(content_type):
            await self._upload(scope, receive, send)
            return
        if (
            self.set_cookie_on_pages
            and scope.get("method") == "GET"
            and not self.sessions.has_valid_cookie(cookie or "")
        ):
            await self.app(scope, receive, self._page_send(scope, send))
            return
        await self.app(scope, receive, send)

    def _page_send(self, scope: Scope, send: Send) -> Send:
        """``send``, adding a new session cookie to an HTML page's response."""

        async def page_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                for name, value in message.get("headers", ()):
                    if name.lower() == b"content-type" and value.startswith(b"text/html"):
                        https = scope.get("scheme") == "https"
                        cookie = self.sessions.issue(https)[1].encode("latin-1")
                        message = dict(message)
                        message["headers"] = [*message["headers"], (b"set-cookie", cookie)]
                        break
            await send(message)

        return page_send

    # -- uploads -------------------------------------------------------------------------

    async def _upload(self, scope: Scope, receive: Receive, send: Send) -> None:
        head = request_head(scope)
        plan = plan_upload(head, self.max_content_length)
        if plan.reply is not None:
            await send_reply(send, plan.reply)
            return
        if plan.upload_id is None:
            if plan.cap is not None:
                capped = CappedReceive(receive, plan.cap)
                await self._stoppable(scope, capped, send, lambda: self._too_large(head))
                return
            await self.app(scope, receive, send)
            return
        started = await self.off_loop(
            start_upload, self.context, head, scope, plan, self.max_tracked_fields
        )
        if isinstance(started, Reply):
            await send_reply(send, started)
            return
        meter = BodyMeter(
            started.tracker,
            content_length=plan.length,
            limit=plan.cap,
            update_interval=self.settings.update_interval,
        )
        handle = UploadHandle(self, started)
        scope[SCOPE_KEY] = handle
        metered = MeteredReceive(receive, meter, self.off_loop)
        extra = encode_headers(started.headers)
        accept = head.header("accept")

        def stop_reply() -> Reply:
            if meter.failure == CANCELLED_FAILURE:
                message = str(CANCELLED_ERROR["message"])
                return closing(error_reply(accept, 400, message, started.headers))
            return too_large_reply(accept, started.headers)

        async def settled(status: int | None, crashed: BaseException | None = None) -> None:
            if started.tracker.record.state in SETTLED:
                return  # decided already: no thread hop
            await self.off_loop(lambda: settle(meter, handle, status, crashed=crashed))

        await self._stoppable(scope, metered, send, stop_reply, settled, extra)

    async def _stoppable(
        self,
        scope: Scope,
        receive: MeteredReceive | CappedReceive,
        send: Send,
        stop_reply: Callable[[], Reply],
        settled: Callable[[int | None, BaseException | None], Awaitable[None]] | None = None,
        extra: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        """Run the app on ``receive``; once that stopped the body (cancel, limit), answer
        ``stop_reply()`` instead of what the app answers.  ``settled(status, crashed)``
        decides the record's outcome (when the response starts, or the app ends)."""
        state = {"started": False, "ours": False}

        async def app_send(message: Message) -> None:
            if state["ours"]:
                return  # we answered for the app: drop what it sends
            if message["type"] == "http.response.start" and not state["started"]:
                if receive.stopped:
                    state["ours"] = True
                    await send_reply(send, stop_reply())
                    return
                state["started"] = True
                if settled is not None:
                    await settled(int(message["status"]), None)
                if extra:
                    message = dict(message)
                    message["headers"] = [*message.get("headers", ()), *extra]
            await send(message)

        try:
            await self.app(scope, receive, app_send)
        except Exception as exc:
            if receive.stopped and not state["started"]:
                # What the app raised on the "disconnect" we gave it: answered below.
                pass
            else:
                if settled is not None:
                    await settled(None, exc)
                raise
        except BaseException as exc:  # the server cancelled the request task
            if settled is not None:
                await settled(None, exc)
            raise
        if not state["started"] and not state["ours"] and receive.stopped:
            state["ours"] = True
            await send_reply(send, stop_reply())
        if settled is not None:
            await settled(None, None)

    def _too_large(self, head: Any) -> Reply:
        return too_large_reply(head.header("accept"))
