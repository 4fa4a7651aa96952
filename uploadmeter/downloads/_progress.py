"""A download's progress: the record of a tracked download and the body that feeds it.

With a meter and a tracking id the download's record lives under the browser's session:
remote sources loading, bytes sent of the total, zip entries written; ``POST
{prefix}/cancel?id=`` stops it at the next chunk.  The body's ``close()`` settles the
record, also when the client went away mid-way.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable
from typing import IO, Any, cast

from werkzeug.http import HTTP_STATUS_CODES
from werkzeug.wrappers import Response

from uploadmeter.core._context import HasContext, MeterContext, context_of
from uploadmeter.core._ids import INVALID_ID_MESSAGE, valid_upload_id
from uploadmeter.core._record import CANCELLED, DONE, ERROR, UploadRecord
from uploadmeter.core._tracker import UploadTracker
from uploadmeter.exceptions import DownloadCancelled, StoreError
from uploadmeter.wsgi._requests import requested_upload_id, session_for
from uploadmeter.wsgi._responses import error_response

__all__ = ["CANCELLED_MESSAGE", "DownloadProgress", "TrackedBody", "start_progress"]

CANCELLED_MESSAGE = "The download was cancelled."


def start_progress(
    meter: MeterContext | HasContext | None,
    env: dict[str, Any] | None,
    tracking_id: str | None,
) -> DownloadProgress | Response | None:
    """The download's progress record, none (untracked), or the answer to a bad id."""
    if meter is None or env is None or env.get("REQUEST_METHOD") == "HEAD":
        return None
    wanted = tracking_id if tracking_id is not None else requested_upload_id(env)
    if wanted is None:
        return None
    if not valid_upload_id(wanted):
        return error_response(env, 400, INVALID_ID_MESSAGE)
    progress = DownloadProgress(context_of(meter), env, wanted)
    if not progress.claimed:
        message = "A download with this id is already in progress."
        return progress.respond(error_response(env, 409, message))
    return progress


class TrackedBody:
    """The response body: counts what is sent, reports progress, closes what it opened.

    ``close()`` (called by every WSGI server, also when the body was never read) settles
    the record: ``done`` when the body ran out, ``cancelled``, ``error`` when reading
    failed, otherwise the client went away.
    """

    def __init__(
        self,
        chunks: Iterable[bytes],
        files: list[IO[bytes]] | None = None,
        total: int | None = None,
        entries_done: Callable[[], int] | None = None,
    ) -> None:
        self._chunks = iter(chunks)
        self._close_chunks = getattr(chunks, "close", None)
        self._files = files or []
        self.total = total
        self._entries_done = entries_done
        self.progress: DownloadProgress | None = None
        self.sent = 0
        self._outcome: str | None = None  # DONE, CANCELLED or what went wrong

    def __iter__(self) -> TrackedBody:
        return self

    def __next__(self) -> bytes:
        try:
            chunk = next(self._chunks)
        except StopIteration:
            self._outcome = DONE
            raise
        except Exception as exc:
            self._outcome = f"Reading the files failed ({type(exc).__name__})."
            raise
        self.sent += len(chunk)
        if self.progress is not None and self.progress.sent(self.sent, self.entries_done()):
            self._outcome = CANCELLED
            raise DownloadCancelled()
        return chunk

    def entries_done(self) -> int | None:
        return self._entries_done() if self._entries_done is not None else None

    def close(self) -> None:
        for file in self._files:
            with contextlib.suppress(OSError):
                file.close()
        if self._close_chunks is not None:
            self._close_chunks()
        if self.progress is None:
            return
        status: int | None
        if self._outcome == DONE:
            state, status, message = DONE, None, None
        elif self._outcome == CANCELLED:
            state, status, message = CANCELLED, 499, CANCELLED_MESSAGE
        elif self._outcome is not None:
            state, status, message = ERROR, 500, self._outcome
        else:
            of = f" of {self.total}" if self.total is not None else ""
            state, status = ERROR, 499
            message = f"The connection closed after {self.sent}{of} bytes."
        self.progress.finish(
            state, status, message, sent=self.sent, entries_done=self.entries_done()
        )


class DownloadProgress:
    """A download's record, written through the uploads' :class:`UploadTracker`.

    States: ``starting`` (remote sources loading: ``processing.phase == "loading"``),
    ``uploading`` (bytes going out; ``processing.phase == "zipping"`` counts zip entries),
    then ``done``/``error``/``cancelled``.  Every write in flight first looks for the cancel
    flag, and once it is seen the download ends ``cancelled``: a cancel is not written over
    with an earlier state.  (One that lands between that look and the write is seen at the
    next write; ruling that out too needs a compare-and-set the stores do not offer.)
    """

    def __init__(self, context: MeterContext, env: dict[str, Any], upload_id: str) -> None:
        session, self.cookie = session_for(context, env)
        self.tracker = UploadTracker(
            context.store, session, UploadRecord(id=upload_id), context.settings
        )
        self.claimed = self.tracker.claim()
        self._records = context.records
        self._session = session
        self._interval = context.settings.update_interval
        self._next_report = 0.0
        if self.claimed:
            self.tracker.write_now()

    def respond(self, response: Response) -> Response:
        if self.cookie:
            response.headers.add("Set-Cookie", self.cookie)
        return response

    def cancelled(self) -> bool:
        try:
            return self._records.cancel_requested(self._session, self.tracker.record.id)
        except StoreError:
            return False  # no store, no cancel: the download goes on

    def loading(self, done: int, total: int) -> bool:
        """Note remote sources loaded; ``True`` when the download was cancelled."""
        if self.cancelled():
            return True
        self.tracker.record.processing = {"phase": "loading", "done": done, "total": total}
        self.tracker.write_now()
        return False

    def track(
        self, response: Response, filename: str, entries: int | None, env: dict[str, Any] | None
    ) -> Response:
        """Count ``response``'s body as it goes out; settle the record if there is none."""
        status = response.status_code
        if status not in (200, 206):  # 304: the client has it; 412, 416: nothing to send
            message = f"Nothing was sent: {status} {HTTP_STATUS_CODES.get(status, '')}."
            self.finish(DONE if status == 304 else ERROR, status, message)
            return self.respond(response)
        body = response.response
        if not isinstance(body, TrackedBody):
            body = TrackedBody(cast("Iterable[bytes]", body), total=response.content_length)
        record = self.tracker.record
        record.content_length = response.content_length
        record.processing = (
            None if entries is None else {"phase": "zipping", "done": 0, "total": entries}
        )
        record.result = {"filename": filename}
        if self.tracker.progress(0, time.monotonic()):  # cancelled before the first byte
            response.close()
            self.finish(CANCELLED, 499, CANCELLED_MESSAGE)
            return self.respond(error_response(env or {}, 409, CANCELLED_MESSAGE))
        body.progress = self
        response.response = body
        response.direct_passthrough = True
        # The record counts bytes handed to the server; a proxy that buffers the response
        # (nginx's default) would take them all at once and the record read done while the
        # client has read a few KiB.  nginx honours this header without any config.
        response.headers["X-Accel-Buffering"] = "no"
        return self.respond(response)

    def sent(self, sent: int, entries_done: int | None) -> bool:
        """Note bytes sent (at most once per update interval, and at the end); ``True``
        when the download was cancelled meanwhile."""
        now = time.monotonic()
        tracker = self.tracker
        if now < self._next_report and sent != tracker.record.content_length:
            return False
        self._next_report = now + self._interval
        if entries_done is not None and tracker.record.processing is not None:
            tracker.record.processing["done"] = entries_done
        return tracker.progress(sent, now)

    def finish(
        self,
        state: str,
        status: int | None = None,
        message: str | None = None,
        *,
        sent: int | None = None,
        entries_done: int | None = None,
    ) -> None:
        record = self.tracker.record
        if sent is not None:
            record.bytes_received = sent
        if entries_done is not None and record.processing is not None:
            record.processing["done"] = entries_done
        if state == DONE:
            record.result = dict(record.result or {}, bytes=record.bytes_received)
            self.tracker.finish(DONE)
        else:
            self.tracker.finish(state, {"status": status, "message": message})
