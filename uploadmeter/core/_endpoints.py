"""The meter's own endpoints, without I/O: which record to answer, in which format.

* ``GET  {prefix}/progress?id=ID[&format=xml]`` -- the upload's record, JSON or XML
* ``POST {prefix}/cancel?id=ID`` -- stop an upload of this session
* ``GET  {prefix}/session`` -- ``204``, with the session cookie when the request has none
  (for clients whose page does not come from this app: scripts, other servers' pages)
* ``GET  {prefix}/events?id=ID`` -- the record as Server-Sent Events (the ASGI shell)
* ``GET  {prefix}/static/...`` -- the component's script and stylesheet

:meth:`MeterEndpoints.answer` takes a :class:`~uploadmeter.core._http.RequestHead` and
returns a :class:`~uploadmeter.core._http.Reply` when no store is needed, or a
:data:`StoreStep` -- a function that talks to the store and returns the reply -- which the
shell runs where blocking is allowed (WSGI: at once; ASGI: on a worker thread, never on
the event loop).  Polls never reach the application, so they stay cheap however busy
the app is.
"""

from __future__ import annotations

import mimetypes
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any, TypeVar
from urllib.parse import parse_qs

from werkzeug.http import generate_etag, http_date
from werkzeug.sansio.http import is_resource_modified

from uploadmeter.core._context import MeterContext
from uploadmeter.core._http import JSON, Reply, RequestHead, error_reply, json_reply, negotiate
from uploadmeter.core._ids import INVALID_ID_MESSAGE, valid_upload_id
from uploadmeter.core._record import CANCELLED, IN_FLIGHT, UploadRecord, unknown_record
from uploadmeter.core._records import TOO_LATE_TO_CANCEL, record_key
from uploadmeter.exceptions import StoreError
from uploadmeter.stores._base import ProgressStore

# A step that may block on the store; returns the reply to send.
StoreStep = Callable[[], Reply]


@dataclass(frozen=True, slots=True)
class StoreRead:
    """A :data:`StoreStep` that is one read: the shell may read ``key`` its own way (an
    async client) and hand the value to :meth:`then`, or call it as a step (``get``)."""

    store: ProgressStore
    key: str
    then: Callable[[str | None], Reply]
    unavailable: Callable[[StoreError], Reply]

    def __call__(self) -> Reply:
        try:
            value = self.store.get(self.key)
        except StoreError as exc:
            return self.unavailable(exc)
        return self.then(value)


_T = TypeVar("_T")

NO_SUCH_ENDPOINT = "No such uploadmeter endpoint."

#: Where a WSGI environ that the ASGI shell built to run a feature (downloads, links, the
#: resumable protocols) keeps the request's scope: the ``session_id`` hook of an ASGI app
#: is called with the scope, whatever code reads the environ.
ASGI_SCOPE = "asgi.scope"


def app_session(context: MeterContext, request: Any) -> str | None:
    """The app's own session id for ``request`` (the shell's request: a WSGI environ, an
    ASGI scope), from the ``session_id`` hook; ``None`` without a hook."""
    hook = context.sessions.hook
    return hook(request) if hook is not None else None


def session_for(context: MeterContext, head: RequestHead, request: Any) -> tuple[str, str | None]:
    """``(session, Set-Cookie value or None)``; issues a session when the request has none
    (requests that start one thing: an upload, a poll, a cancel)."""
    return context.sessions.find_or_issue(
        head.header("cookie") or "", head.https, app_session(context, request)
    )


def session_of(context: MeterContext, head: RequestHead, request: Any) -> str | None:
    """The request's session, or ``None``; never issues one."""
    return context.sessions.find(head.header("cookie") or "", app_session(context, request))


def query_value(query: str, name: str) -> str | None:
    """The first value of ``name`` in a raw query string (``None``: absent or empty)."""
    if name + "=" not in query:  # cheap pre-check on the poll path; the parse decides
        return None
    values = parse_qs(query).get(name)
    return values[0] if values else None


def find_mount(mounts: Mapping[str, _T], sub: str) -> tuple[str, _T] | None:
    """The mount serving ``sub`` (the path below the prefix): ``(mount path, app)``."""
    for mount, app in mounts.items():
        if sub == mount or sub.startswith(mount + "/"):
            return mount, app
    return None


@dataclass(frozen=True, slots=True)
class Lookup:
    """A valid request for one upload of one session."""

    upload_id: str
    session: str
    # Set-Cookie when the session was issued just now (it cannot own an upload yet).
    cookie: str | None

    @property
    def headers(self) -> list[tuple[str, str]]:
        return [("Set-Cookie", self.cookie)] if self.cookie else []


class MeterEndpoints:
    """The endpoints under the prefix, for any shell; owned by a middleware, which gives it
    its :class:`~uploadmeter.core.MeterContext`."""

    def __init__(self, context: MeterContext) -> None:
        self.context = context
        self.static = StaticAssets()

    def answer(self, head: RequestHead, sub: str, request: Any) -> Reply | StoreStep | None:
        """The answer to ``head`` for the endpoint ``sub`` (the path below the prefix), or
        ``None`` when ``sub`` is none of the built-in endpoints (the shell's mounts next).
        ``request`` is what the ``session_id`` hook is called with."""
        if sub == "/progress":
            return self.progress(head, request)
        if sub == "/cancel":
            return self.cancel(head, request)
        if sub == "/session":
            return self.session(head, request)
        if sub.startswith("/static/"):
            return self.static.answer(head, sub[len("/static/") :])
        return None

    def not_found(self, head: RequestHead) -> Reply:
        return error_reply(head.header("accept"), 404, NO_SUCH_ENDPOINT)

    # -- progress, cancel, session -------------------------------------------------------

    def progress(self, head: RequestHead, request: Any) -> Reply | StoreRead:
        found = self.lookup(head, ("GET", "HEAD"), request)
        if isinstance(found, Reply):
            return found
        if found.cookie is not None:
            # A session issued just now cannot own an upload: no store round trip.
            return self.progress_reply(head, found, None)
        records = self.context.records
        return StoreRead(
            records.store,
            record_key(found.session, found.upload_id),
            lambda text: self.progress_reply(head, found, records.parse(text)),
            lambda exc: self.unavailable(head, "Progress is unavailable", exc),
        )

    def progress_reply(
        self, head: RequestHead, found: Lookup, record: UploadRecord | None
    ) -> Reply:
        record = record or unknown_record(found.upload_id)
        if wants_xml(head):
            return Reply(
                200,
                [
                    ("Content-Type", "text/xml; charset=utf-8"),
                    ("Cache-Control", "no-store"),
                    *found.headers,
                ],
                record.to_xml(),
            )
        return json_reply(record.to_json_dict(), 200, found.headers)

    def cancel(self, head: RequestHead, request: Any) -> Reply | StoreStep:
        found = self.lookup(head, ("POST",), request)
        if isinstance(found, Reply):
            return found
        if found.cookie is not None:
            return self.cancel_reply(found, None)
        records = self.context.records

        def step() -> Reply:
            try:
                record = records.request_cancel(found.session, found.upload_id)
            except StoreError as exc:
                return self.unavailable(head, "Cannot cancel now", exc)
            return self.cancel_reply(found, record)

        return step

    def cancel_reply(self, found: Lookup, record: UploadRecord | None) -> Reply:
        if record is None:
            body = unknown_record(found.upload_id).to_json_dict()
            body["error"] = {"status": 404, "message": "No such upload in this session."}
            return json_reply(body, 404, found.headers)
        # Cancelled now (200), or it had already finished (409): its final state either way.
        if record.state == CANCELLED:
            return json_reply(record.to_json_dict(), 200, found.headers)
        body = record.to_json_dict()
        if record.state in IN_FLIGHT:
            # The app has the whole body: it decides the outcome, the cancel changes nothing.
            body["error"] = {"status": 409, "message": TOO_LATE_TO_CANCEL}
        return json_reply(body, 409, found.headers)

    def session(self, head: RequestHead, request: Any) -> Reply:
        """Make sure the client has a session (the progress endpoint issues it the same way)."""
        if head.method not in ("GET", "HEAD"):
            return method_not_allowed(head, ("GET", "HEAD"))
        _, cookie = session_for(self.context, head, request)
        headers = [("Cache-Control", "no-store")]
        if cookie is not None:
            headers.append(("Set-Cookie", cookie))
        return Reply(204, headers)

    def lookup(self, head: RequestHead, methods: tuple[str, ...], request: Any) -> Lookup | Reply:
        """Check method and id, find (or issue) the session: a :class:`Lookup`, or the
        error to answer."""
        if head.method not in methods:
            return method_not_allowed(head, methods)
        upload_id = (
            query_value(head.query, "id")
            or head.header("x-upload-id")
            or head.header("x-progress-id")
        )
        if upload_id is None or not valid_upload_id(upload_id):
            return error_reply(head.header("accept"), 400, INVALID_ID_MESSAGE)
        session, cookie = session_for(self.context, head, request)
        return Lookup(upload_id, session, cookie)

    def unavailable(self, head: RequestHead, what: str, exc: StoreError) -> Reply:
        """The store is away: a temporary error the client retries."""
        return error_reply(head.header("accept"), 503, f"{what}: {exc}", [("Retry-After", "1")])


def method_not_allowed(head: RequestHead, methods: tuple[str, ...]) -> Reply:
    allow = ", ".join(methods)
    return error_reply(head.header("accept"), 405, f"Use {allow}.", [("Allow", allow)])


def wants_xml(head: RequestHead) -> bool:
    fmt = query_value(head.query, "format")
    if fmt:
        return fmt.lower() == "xml"
    return negotiate(head.header("accept"), (JSON, "application/xml", "text/xml")) != JSON


class StaticAssets:
    """The component's files (``uploadmeter.ui``'s ``static`` folder), with validators.

    Read once per process, on the first request for each (a :data:`StoreStep`-shaped
    step, so the ASGI shell reads them off the loop), then answered from memory.
    """

    max_age = 3600

    def __init__(self, package: str = "uploadmeter.ui", folder: str = "static") -> None:
        self._root = resources.files(package).joinpath(folder)
        self._cache: dict[str, tuple[bytes, str, str]] = {}
        self._loaded_at = http_date(time.time())

    def answer(self, head: RequestHead, name: str) -> Reply | StoreStep:
        if head.method not in ("GET", "HEAD"):
            return method_not_allowed(head, ("GET", "HEAD"))
        cached = self._cache.get(name)
        if cached is not None:
            return self._reply(head, *cached)

        def step() -> Reply:
            found = self._load(name)
            if found is None:
                return error_reply(head.header("accept"), 404, "No such file.")
            return self._reply(head, *found)

        return step

    def _load(self, name: str) -> tuple[bytes, str, str] | None:
        if not name or any(part in ("", ".", "..") for part in name.split("/")):
            return None
        entry = self._root.joinpath(name)
        if not entry.is_file():
            return None
        data = entry.read_bytes()
        mimetype = mimetypes.guess_type(name)[0] or "application/octet-stream"
        if mimetype.startswith("text/") or mimetype.endswith("javascript"):
            mimetype += "; charset=utf-8"
        found = (data, mimetype, generate_etag(data))
        self._cache[name] = found
        return found

    def _reply(self, head: RequestHead, data: bytes, mimetype: str, etag: str) -> Reply:
        headers = [
            ("Cache-Control", f"max-age={self.max_age}, public"),
            ("ETag", f'"{etag}"'),
            ("Last-Modified", self._loaded_at),
        ]
        if not is_resource_modified(
            http_if_none_match=head.header("if-none-match"),
            http_if_modified_since=head.header("if-modified-since"),
            etag=etag,
            last_modified=self._loaded_at,
        ):
            return Reply(304, headers)
        headers += [("Content-Type", mimetype), ("Content-Length", str(len(data)))]
        return Reply(200, headers, data)
