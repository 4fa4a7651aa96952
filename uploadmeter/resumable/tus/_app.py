"""A tus 1.0.0 server (https://tus.io/protocols/resumable-upload), for WSGI and ASGI.

Core protocol plus the ``creation``, ``creation-with-upload``, ``creation-defer-length``,
``termination``, ``checksum``, ``expiration`` and ``concatenation`` extensions::

    meter = UploadMeterMiddleware(app, secret_key="...")
    meter.mount("/tus", TusUploads(meter, "/var/lib/myapp/uploads", on_complete=keep))
    # creation URL: /uploadmeter/tus/

As with tusd, an upload is addressed by its URL, and the URL is the capability: its
last segment holds 144 random bits, and HEAD, PATCH and DELETE need nothing else (no
cookie: tus-js-client in Node keeps none).  Its progress record belongs to the session
that created it (the ``uploadmeter_session`` cookie or the middleware's ``session_id``
hook); a creation without a session is issued one (``Set-Cookie``), so a browser can poll
``GET {prefix}/progress?id=`` and ``POST {prefix}/cancel?id=`` as for forms.  The owner is
kept in the upload's ``info.json``; a request carrying another session may still use the
URL, but never sees nor changes that session's records.

PATCH requests to one upload are serialized by a :class:`~uploadmeter.core.StoreLock`,
which holds across worker processes (SQLite store) and machines (Redis store).  A PATCH
reads its body in pieces sized to what the client sends in a fraction of ``lock_ttl``, so
even a client at 1 KB/s keeps the lock alive; a PATCH whose lock expired anyway (the
client stalled) takes it back only if nobody wrote meanwhile, else it touches the file no
more.  A full disk is answered ``507`` + ``Retry-After``; what was written whole stays.
When the last byte arrives the file is hashed (SHA-256 and MD5, shown as processing phase
``verifying``), moved into the content-addressed store and handed to ``on_complete``.

Concatenation (tus-js-client's ``parallelUploads``): a *partial* upload
(``Upload-Concat: partial``) is stored but never delivered; the creation of a *final* one
(``Upload-Concat: final;/tus/a /tus/b``) joins its finished partial uploads in order
(:meth:`Storage.concatenate <uploadmeter.resumable.Storage.concatenate>`, hashing on
the way, shown as processing phase ``merging`` of the final upload's record), hands the
whole file to ``on_complete`` once, and deletes the partial uploads (the spec allows it:
they would otherwise hold a second copy of the file until they expire; reusing one then
gets ``410``).  A final upload may name the partial uploads of its own session, and those
of sessions that a tus creation issued to a client that had none (tus-js-client in Node
keeps no cookie; a browser's parallel first requests each get a new one, and the later
ones may carry any of them), which, like every tus upload, only their URL protects; a
partial upload of another session reads as not found (``404``).
``concatenation-unfinished`` is not offered: an unfinished partial upload gets ``400``.

What the headers mean and which status refuses a request is :mod:`._protocol` (no I/O);
this module adapts werkzeug's request to it and does the storage, locks and records, as
an exchange (:meth:`TusUploads.exchange`: the body comes through ``yield``) that the WSGI
app (calling the endpoint) and the ASGI middleware's mount both drive.

Errors are short JSON (or HTML) messages with the spec's statuses, and every answer
carries ``Tus-Resumable`` (OPTIONS too, as in the spec's example).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from werkzeug.exceptions import HTTPException, RequestEntityTooLarge
from werkzeug.wrappers import Request, Response

from uploadmeter.core._context import HasContext, MeterContext
from uploadmeter.core._exchange import Exchange, run_exchange
from uploadmeter.core._locks import StoreLock
from uploadmeter.core._record import (
    CANCELLED,
    DONE,
    FINISHED,
    UPLOADING,
    FieldProgress,
    UploadRecord,
)
from uploadmeter.core._tracker import UploadTracker
from uploadmeter.exceptions import (
    CompletionFailed,
    DiskFull,
    InvalidName,
    LockLost,
    LockTimeout,
    ProcessingCancelled,
    QuotaExceeded,
    StoreError,
    TusError,
    UploadRejected,
)
from uploadmeter.resumable._completion import OnComplete, ResumableEndpoint, issue_session
from uploadmeter.resumable._storage import (
    DISK_FULL_MESSAGE,
    DISK_FULL_RETRY_AFTER,
    DataWriter,
    Digests,
    FileInfo,
    Storage,
    clean_filename,
    is_disk_full,
)
from uploadmeter.resumable.tus import _protocol as tus
from uploadmeter.resumable.tus._protocol import Checksum
from uploadmeter.wsgi._requests import body_reader
from uploadmeter.wsgi._responses import NO_STORE, error_response

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

log = logging.getLogger("uploadmeter")

__all__ = ["TusUploads"]

# An upload id: its owner's FileStore folder (32 hex: where to find it without a cookie)
# and 144 random bits (the capability).
_ID = re.compile(r"([0-9a-f]{32})[A-Za-z0-9_-]{24}")
# A PATCH reads its body in pieces of 1 KiB to 256 KiB: what the client sends in a quarter
# of the lock's life, so the lock is refreshed in time however slow the client is.
_MIN_READ = 1024
_MAX_READ = 256 * 1024


def _disk_full() -> TusError:
    return TusError(
        DISK_FULL_MESSAGE, status=507, headers={"Retry-After": str(DISK_FULL_RETRY_AFTER)}
    )


_TERMINATED = "The upload was terminated."


def _as_tus_error(exc: Exception) -> TusError:
    """The tus answer to a request that raised ``exc``: every error response is built from one."""
    if isinstance(exc, TusError):
        return exc
    if isinstance(exc, (StoreError, LockLost, LockTimeout)):
        log.warning("uploadmeter: tus request deferred: %s", exc)
        return TusError("The server is busy; try again.", status=503, headers={"Retry-After": "2"})
    if is_disk_full(exc):  # temporary: the client retries once space returns
        log.warning("uploadmeter: tus request deferred: %s", exc)
        return _disk_full()
    log.exception("uploadmeter: tus request failed")
    return TusError("The server failed.", status=500)


@dataclass
class _Upload:
    id: str
    session: str
    directory: str
    info: dict[str, Any]

    @property
    def info_path(self) -> str:
        return os.path.join(self.directory, "info.json")

    @property
    def length(self) -> int | None:
        """``None`` while deferred (creation-defer-length)."""
        length = self.info.get("length")
        return None if length is None else int(length)

    @property
    def concat(self) -> str | None:
        """``Upload-Concat`` as received: ``partial``, ``final;...`` or ``None``."""
        value = self.info.get("concat")
        return value if isinstance(value, str) else None

    @property
    def is_partial(self) -> bool:
        return self.concat == "partial"

    @property
    def is_final(self) -> bool:
        return bool(self.concat) and not self.is_partial

    @property
    def complete(self) -> bool:
        return bool(self.info.get("complete"))

    def offset(self, files: Storage) -> int:
        if self.complete and self.length is not None:
            return self.length
        try:
            return files.data_size(self.directory)
        except FileNotFoundError:
            raise tus.not_found() from None


class TusUploads(ResumableEndpoint):
    """The tus endpoint (WSGI app); mount it with ``meter.mount("/tus", tus)``.

    :param meter: the meter (the middleware, the Flask extension) or its
        :class:`~uploadmeter.core.MeterContext`: store, settings, sessions.
    :param files: a :class:`~uploadmeter.resumable.FileStore` or its directory, or an
        :class:`~uploadmeter.S3Storage` (its ``expire_after`` is the uploads' expiration).
    :param on_complete: ``on_complete(FileInfo)``, as for
        :class:`~uploadmeter.resumable.ChunkUploads`; ``FileInfo.metadata`` holds the
        decoded ``Upload-Metadata``.
    :param max_size: ``Tus-Max-Size``; larger uploads get ``413``.
    :param session_quota: bytes one session may have in unfinished uploads.
    :param lock_ttl: seconds a PATCH's lock outlives a stalled worker.
    :param lock_wait: seconds a PATCH waits for another one on the same upload
        before ``423 Locked``.
    :param max_metadata_length: longest ``Upload-Metadata`` header accepted.
    """

    def __init__(
        self,
        meter: MeterContext | HasContext,
        files: Storage | str | os.PathLike[str],
        *,
        on_complete: OnComplete | None = None,
        max_size: int = 4 * 1024**3,
        session_quota: int = 16 * 1024**3,
        lock_ttl: float = 15.0,
        lock_wait: float = 20.0,
        max_metadata_length: int = 8192,
    ) -> None:
        super().__init__(meter, files, on_complete, session_quota, lock_ttl)
        self.max_size = max_size
        self.lock_wait = lock_wait
        self.max_metadata_length = max_metadata_length

    # -- dispatch ------------------------------------------------------------------------

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        response = run_exchange(self.exchange(environ), body_reader(environ))
        return response(environ, start_response)

    def exchange(self, environ: WSGIEnvironment) -> Exchange[Response]:
        """The request as an exchange (``uploadmeter.core._exchange``): the protocol
        for every shell (WSGI: calling the endpoint; ASGI: the middleware's mount).
        ``environ`` has no body stream of its own: the body comes through ``yield``."""
        try:
            response = yield from self._dispatch(Request(environ))
        except Exception as exc:
            error = _as_tus_error(exc)
            response = error_response(environ, error.status, error.message)
            response.headers.update(error.headers)
        response.headers["Tus-Resumable"] = tus.TUS_VERSION
        return response

    def _dispatch(self, request: Request) -> Exchange[Response]:
        method = tus.request_method(request.method, request.headers)
        if method == "OPTIONS":
            return Response(status=204, headers=tus.options_headers(self.max_size))
        tus.check_version(request.headers)
        self.files.maybe_cleanup(self.store)
        if request.path in ("", "/"):
            if method == "POST":
                return (yield from self._create(request))
            raise TusError(
                "Use POST to create an upload.", status=405, headers={"Allow": "POST, OPTIONS"}
            )
        match = re.fullmatch(r"/([^/]+)/?", request.path)
        if match is None or _ID.fullmatch(match.group(1)) is None:
            raise tus.not_found()
        upload_id = match.group(1)
        if method == "HEAD":
            return self._head(request, upload_id)
        if method == "PATCH":
            return (yield from self._patch(request, upload_id))
        if method == "DELETE":
            return self._delete(request, upload_id)
        raise TusError(
            "Use HEAD, PATCH or DELETE.",
            status=405,
            headers={"Allow": "HEAD, PATCH, DELETE, OPTIONS"},
        )

    # -- lookup --------------------------------------------------------------------------

    @staticmethod
    def _gone_key(upload_id: str) -> str:
        return f"tus-gone:{upload_id}"

    def _find(self, upload_id: str) -> _Upload:
        """The upload its URL names, whatever session the request carries (the URL is
        the capability); records and quota stay with the session that created it."""
        match = _ID.fullmatch(upload_id)
        assert match is not None  # checked by _dispatch
        directory = os.path.join(self.files.tus_root, match.group(1), upload_id)
        info = self.files.read_json(os.path.join(directory, "info.json"))
        if info is None:
            if self.store.get(self._gone_key(upload_id)) is not None:
                raise tus.gone("The upload was terminated or has expired.")
            raise tus.not_found()
        session = info.get("session")
        if not isinstance(session, str) or self.files.session_key(session) != match.group(1):
            raise tus.not_found()
        upload = _Upload(upload_id, session, directory, info)
        if float(info["expires_at"]) < time.time():
            self._terminate(upload)
            raise tus.gone("The upload has expired.")
        return upload

    def _terminate(self, upload: _Upload) -> None:
        self.files.remove_tree(upload.directory)
        self.store.set(self._gone_key(upload.id), "1", max(self.files.expire_after, 3600))

    def _headers(self, upload: _Upload, offset: int) -> dict[str, str]:
        return {**tus.offset_headers(offset, float(upload.info["expires_at"])), **NO_STORE}

    # -- POST: creation (with upload) ----------------------------------------------------

    def _create(self, request: Request) -> Exchange[Response]:
        creation = tus.parse_creation(
            request.headers, max_size=self.max_size, max_metadata_length=self.max_metadata_length
        )
        if creation.concat is not None and creation.concat.final:
            return self._create_final(request, creation)
        length = creation.length
        try:
            filename = clean_filename(creation.metadata.filename or "upload")
        except InvalidName as exc:
            raise TusError(exc.message, status=exc.status) from None
        has_body = tus.has_body(request.headers)
        if has_body:
            tus.require_offset_type(request.headers, "A creation request with data")
        checksum = tus.parse_checksum(request.headers) if has_body else None

        # Without a session (a first visit, a client that keeps no cookies) the upload
        # starts one: the cookie lets a browser poll its progress; the URL needs none.
        session, cookie = issue_session(self.context, request.environ)
        if cookie is not None:  # see _anonymous
            self.store.set(self._issued_key(session), "1", self.files.expire_after)
        upload = self._new_upload(session, cookie, creation, filename, length)
        try:
            with self.files.session_lock(self.store, session):
                self.files.check_room(session, length or 0, self.session_quota)
                self.files.begin(upload.directory, data=True)
                self.files.write_json(upload.info_path, upload.info)
        except QuotaExceeded as exc:
            raise TusError(exc.message, status=exc.status) from None
        except (DiskFull, OSError) as exc:
            if not is_disk_full(exc):
                raise
            self.files.remove_tree(upload.directory)  # a new random id: ours alone
            raise _disk_full() from None
        self._save_record(upload, self._new_record(upload))

        headers = self._created_headers(request, upload, cookie)
        if has_body or length == 0:
            try:
                with self._lock(upload) as lock:
                    offset = yield from self._receive(request, upload, 0, checksum, lock)
                    headers["Upload-Offset"] = str(offset)
            except BaseException:
                # Without a Location the client cannot resume this upload: drop it now
                # rather than let it hold the session's quota until it expires.
                self.files.remove_tree(upload.directory)
                self.records.forget(upload.session, upload.id)
                raise
        return Response(status=201, headers=headers)

    def _new_upload(
        self,
        session: str,
        cookie: str | None,
        creation: tus.Creation,
        filename: str,
        length: int | None,
    ) -> _Upload:
        upload_id = self.files.session_key(session) + secrets.token_urlsafe(18)
        now = time.time()
        info = {
            "id": upload_id,
            "session": session,
            "anonymous": cookie is not None,  # the request carried no session
            "length": length,
            "metadata": creation.metadata.raw,
            "meta": dict(creation.metadata.values),
            "filename": filename,
            "created": now,
            "expires_at": now + self.files.expire_after,
            "complete": False,
            "concat": creation.concat.raw if creation.concat is not None else None,
        }
        return _Upload(upload_id, session, self.files.upload_dir("tus", session, upload_id), info)

    @staticmethod
    def _created_headers(request: Request, upload: _Upload, cookie: str | None) -> dict[str, str]:
        headers = {
            "Location": request.script_root.rstrip("/") + "/" + upload.id,
            "Upload-Expires": tus.upload_expires(upload.info["expires_at"]),
        }
        if cookie is not None:
            headers["Set-Cookie"] = cookie
        return headers

    # -- POST: concatenation -------------------------------------------------------------

    def _create_final(self, request: Request, creation: tus.Creation) -> Response:
        """Create a final upload from finished partial ones, deliver it, delete them."""
        assert creation.concat is not None
        try:
            filename = clean_filename(creation.metadata.filename or "upload")
        except InvalidName as exc:
            raise TusError(exc.message, status=exc.status) from None
        session, cookie = issue_session(self.context, request.environ)
        urls = creation.concat.urls
        named = list(zip(creation.concat.upload_names, urls, strict=True))
        partials = [self._partial(name, url, session) for name, url in named]
        length = tus.check_final_length([p.length for p in partials], urls, self.max_size)
        final = self._new_upload(session, cookie, creation, filename, length)
        with contextlib.ExitStack() as locks:
            # Each partial upload once, in one order: two finals naming the same ones
            # cannot deadlock.  Under their locks no PATCH or DELETE changes them.
            held = [
                locks.enter_context(self._lock(p))
                for p in sorted({p.id: p for p in partials}.values(), key=lambda p: p.id)
            ]
            partials = [self._partial(name, url, session) for name, url in named]
            try:
                with self.files.session_lock(self.store, session):
                    self.files.check_room(session, length, self.session_quota)
                    self.files.begin(final.directory)
                    self.files.write_json(final.info_path, final.info)
            except QuotaExceeded as exc:
                raise TusError(exc.message, status=exc.status) from None
            try:
                held.append(locks.enter_context(self._lock(final)))
                record = self._new_record(final)
                record.bytes_received = length
                self._save_record(final, record)
                self._concatenate(final, record, partials, held)
            except BaseException:
                self.files.remove_tree(final.directory)  # the client retries the POST
                raise
            for partial in {p.id: p for p in partials}.values():
                self._terminate(partial)
        return Response(status=201, headers=self._created_headers(request, final, cookie))

    def _partial(self, name: str, url: str, session: str) -> _Upload:
        """The finished partial upload a final one names at ``url``: of the request's
        session, or created by a request without one; else ``404``."""
        unknown = TusError(f"Upload-Concat names an unknown upload: {url}", status=404)
        if _ID.fullmatch(name) is None:
            raise unknown
        try:
            upload = self._find(name)
        except TusError as exc:
            if exc.status == 404:
                raise unknown from None
            raise TusError(f"{exc.message} ({url})", status=exc.status) from None
        ours = upload.session == session or self._anonymous(upload)
        if not ours:
            raise unknown
        if not upload.is_partial:
            raise tus.not_partial(url)
        if not upload.complete:
            raise tus.partial_unfinished(url)
        return upload

    def _anonymous(self, upload: _Upload) -> bool:
        """Whether the upload's session is one a tus creation issued (to a client that
        had none): such a client's parallel first requests each get a new session, so
        its partial uploads are split over several, and no one else's."""
        if upload.info.get("anonymous"):
            return True
        return self.store.get(self._issued_key(upload.session)) is not None

    def _issued_key(self, session: str) -> str:
        return "tus-issued-session:" + self.files.session_key(session)

    def _concatenate(
        self, final: _Upload, record: UploadRecord, partials: list[_Upload], locks: list[StoreLock]
    ) -> None:
        """Join, hash, store and deliver the final upload (every lock held)."""
        assert final.length is not None
        if record.fields:
            record.fields[0].bytes_received = final.length
            record.fields[0].state = DONE
        self._save_record(final, record)
        task = self.start_task(final.session, final.id, "merging", final.length)

        def progress(done: int) -> None:
            task.update(done)
            for lock in locks:
                lock.refresh(every=lock.ttl / 3)

        try:
            tmp, digests = self.files.concatenate([p.directory for p in partials], progress)
            if digests.size != final.length:  # a part changed on disk behind our back
                self.files.discard(tmp)
                raise TusError("The partial uploads changed; upload them again.", status=409)
            path, created = self.files.adopt(tmp, digests.sha256)
        except ProcessingCancelled:
            raise tus.cancelled() from None
        except Exception as exc:  # the record ends in the truth; the client retries
            error = _as_tus_error(exc)
            task.fail(error.message, error.status)
            if error is exc:
                raise
            raise error from exc
        self._deliver(final, task, path, created, digests)

    # -- HEAD ----------------------------------------------------------------------------

    def _head(self, request: Request, upload_id: str) -> Response:
        upload = self._find(upload_id)
        if (
            not upload.complete
            and not upload.is_final
            and upload.offset(self.files) == upload.length
        ):
            # Every byte is here but the worker that received the last ones stopped
            # before handing the file over: do it now (unless another request is).
            lock = StoreLock(self.store, "tus:" + upload.id, ttl=self.lock_ttl, wait=0)
            if lock.try_acquire():
                with lock:
                    upload = self._find(upload_id)
                    if not upload.complete:
                        self._finish(upload, self._load_record(upload), lock)
        headers = tus.head_headers(
            None if upload.is_final and not upload.complete else upload.offset(self.files),
            upload.length,
            float(upload.info["expires_at"]),
            upload.info.get("metadata"),
            upload.concat,
        )
        return Response(status=200, headers={**headers, **NO_STORE})

    # -- PATCH ---------------------------------------------------------------------------

    def _patch(self, request: Request, upload_id: str) -> Exchange[Response]:
        patch = tus.parse_patch(request.headers)
        upload = self._find(upload_id)
        if upload.is_final:
            raise tus.modify_final()
        patch.check_fits(patch.declared_length(upload.length, self.max_size), self.max_size)
        with self._lock(upload) as lock:
            # Re-read under the lock: another PATCH or a DELETE may have run meanwhile.
            upload = self._find(upload_id)
            current = upload.offset(self.files)
            tus.check_offset(patch.offset, current)
            length = patch.declared_length(upload.length, self.max_size)
            if length is not None and upload.length is None:
                self._declare_length(upload, length)
            if upload.complete:  # an empty PATCH at the end of a finished upload
                return Response(status=204, headers=self._headers(upload, current))
            new_offset = yield from self._receive(request, upload, current, patch.checksum, lock)
        return Response(status=204, headers=self._headers(upload, new_offset))

    def _declare_length(self, upload: _Upload, length: int) -> None:
        """Set a deferred upload's length (its lock held), within the session's quota."""
        try:
            with self.files.session_lock(self.store, upload.session):
                self.files.check_room(upload.session, length, self.session_quota)
                upload.info["length"] = length
                self.files.write_json(upload.info_path, upload.info)
        except QuotaExceeded as exc:
            raise TusError(exc.message, status=exc.status) from None

    def _lock(self, upload: _Upload) -> StoreLock:
        lock = StoreLock(self.store, "tus:" + upload.id, ttl=self.lock_ttl, wait=self.lock_wait)
        try:
            lock.acquire()
        except LockTimeout:
            raise tus.locked() from None
        return lock

    def _receive(
        self,
        request: Request,
        upload: _Upload,
        start: int,
        checksum: Checksum | None,
        lock: StoreLock,
    ) -> Exchange[int]:
        """Append the request body at ``start``; finish the upload when it is whole.

        Called with the upload's ``lock`` held.  Returns the new offset.  The bytes are
        flushed to disk (``fsync``) before the offset is answered: an offset is a promise.
        """
        hasher = checksum.hasher() if checksum else None
        record = self._load_record(upload)
        record.bytes_received = start
        record.content_length = upload.length
        tracker = UploadTracker(self.store, upload.session, record, self.context.settings)
        try:
            writer = self.files.open_data(
                upload.directory, start, length=upload.length, hold=hasher is not None
            )
        except FileNotFoundError:
            raise tus.not_found() from None
        with writer as f:
            try:
                written, failure = yield from self._append(
                    request, f, upload, start, hasher, lock, tracker
                )
                # Still ours?  Otherwise another PATCH writes this file now: leave it be.
                self._keep_lock(lock, upload, f.committed)
            except LockLost:
                raise TusError("The upload's lock was lost; retry.", status=423) from None
            if failure is not None and (
                hasher is not None
                or failure.status == 413
                or (failure.status == 507 and written == 0)
            ):
                # a checksum covers the whole body, or nothing is kept
                written = f.truncate(start) - start
            elif checksum is not None and hasher is not None:
                try:
                    checksum.verify(hasher.digest())
                except TusError as mismatch:
                    written = f.truncate(start) - start
                    failure = mismatch
            if written:
                try:
                    f.sync()
                except OSError as exc:
                    if not is_disk_full(exc):
                        raise
                    # which bytes reached the disk is unknown: none count
                    written = f.truncate(start) - start
                    failure = _disk_full()
        offset = start + written
        upload.info["expires_at"] = time.time() + self.files.expire_after
        self.files.write_json(upload.info_path, upload.info)
        tracker.record.bytes_received = offset
        tracker.write_now()
        if failure is not None:
            raise failure
        if offset == upload.length:
            self._finish(upload, tracker.record, lock)
        return offset

    def _append(
        self,
        request: Request,
        f: DataWriter,
        upload: _Upload,
        start: int,
        hasher: Any,
        lock: StoreLock,
        tracker: UploadTracker,
    ) -> Exchange[tuple[int, TusError | None]]:
        """Copy the body into ``f``: ``(bytes written, the failure that stopped it)``.

        Keeps what arrived when the client goes away (the spec asks servers to), and
        what was written whole when the disk fills up (``507``).  Terminates the upload
        and raises ``410`` when the user cancels.
        """
        # A deferred length is bounded by Tus-Max-Size until the client declares it.
        remaining = (self.max_size if upload.length is None else upload.length) - start
        written = 0
        size = _MIN_READ
        try:
            declared = request.content_length
            if declared is not None and declared > remaining:
                raise RequestEntityTooLarge()  # before a byte is read
            while True:
                # Up to the next multiple of ``size``: a client that pauses at a round
                # offset has every byte it sent written, none waiting in a half-read piece.
                began = time.monotonic()
                block = yield size - written % size
                took = time.monotonic() - began
                if not block:
                    break
                if written + len(block) > remaining:
                    raise RequestEntityTooLarge()
                self._keep_lock(lock, upload, f.committed)
                try:
                    f.write(block)  # all of it or (disk full) none
                except OSError as exc:
                    if not is_disk_full(exc):
                        raise
                    log.warning("uploadmeter: tus PATCH of %s: disk full", upload.id)
                    return written, _disk_full()
                written += len(block)
                if hasher is not None:
                    hasher.update(block)
                if tracker.progress(start + written, time.monotonic()):
                    f.close()
                    self._terminate(upload)
                    raise tus.cancelled()
                size = _next_read_size(size, len(block), took, lock.ttl)
        except RequestEntityTooLarge:
            return written, tus.past_length()
        except (HTTPException, OSError, ValueError) as exc:
            log.info("uploadmeter: tus PATCH of %s interrupted: %s", upload.id, exc)
            return written, tus.body_ended_early()
        return written, None

    def _keep_lock(self, lock: StoreLock, upload: _Upload, offset: int) -> None:
        """Make sure this request still holds the upload's lock before it writes at
        ``offset``; raises :class:`LockLost` when another request took the upload over.

        The lock is refreshed at most every third of its ttl.  If it expired (the client
        stalled) and nobody took it, it is taken again, provided the file still ends at
        ``offset``: no other request wrote meanwhile, so these bytes are still the next.
        """
        try:
            lock.refresh(every=lock.ttl / 3)
            return
        except LockLost:
            if not lock.try_acquire():
                raise
        try:
            unchanged = self.files.data_size(upload.directory) == offset
        except FileNotFoundError:  # terminated meanwhile
            unchanged = False
        if not unchanged:
            lock.release()
            raise LockLost(f"tus upload {upload.id} changed while its lock was lost")

    def _new_record(self, upload: _Upload) -> UploadRecord:
        return UploadRecord(
            id=upload.id,
            state=UPLOADING,
            content_length=upload.length,
            fields=[FieldProgress("file", upload.info.get("filename"), None, 0, UPLOADING)],
            field_count=1,
        )

    def _load_record(self, upload: _Upload) -> UploadRecord:
        record = self.records.load(upload.session, upload.id, stale=False)
        if record is not None and record.state == CANCELLED:
            self._terminate(upload)
            raise tus.cancelled()
        if record is None or record.state in FINISHED:
            return self._new_record(upload)
        return record

    def _save_record(self, upload: _Upload, record: UploadRecord) -> None:
        record.updated_at = time.time()
        self.records.save(upload.session, record)

    # -- completion ----------------------------------------------------------------------

    def _finish(self, upload: _Upload, record: UploadRecord, lock: StoreLock) -> None:
        """Verify and hand over the whole file (the upload's lock held).  A partial
        upload is only marked complete: its final upload is what gets delivered."""
        if upload.is_partial:
            upload.info["complete"] = True
            self.files.write_json(upload.info_path, upload.info)
            self.records.forget(upload.session, upload.id)
            return
        assert upload.length is not None
        if record.fields:
            record.fields[0].bytes_received = upload.length
            record.fields[0].state = DONE
        self._save_record(upload, record)

        try:
            task = self.start_task(upload.session, upload.id, "verifying", upload.length)
            joined, digests = self.files.join_data(upload.directory, self.progress(task, lock))
        except ProcessingCancelled:
            self._terminate(upload)
            raise tus.cancelled() from None
        path, created = self.files.adopt(joined, digests.sha256)
        self._deliver(upload, task, path, created, digests)

    def _deliver(
        self, upload: _Upload, task: Any, path: str, created: bool, digests: Digests
    ) -> None:
        """Mark the upload complete and hand its stored file to ``on_complete``."""
        upload.info.update(complete=True, sha256=digests.sha256, md5=digests.md5)
        self.files.write_json(upload.info_path, upload.info)
        info = FileInfo(
            **self.files.file_fields(path),
            filename=str(upload.info.get("filename") or "upload"),
            size=digests.size,
            sha256=digests.sha256,
            md5=digests.md5,
            session=upload.session,
            upload_id=upload.id,
            protocol="tus",
            metadata=dict(upload.info.get("meta") or {}),
        )
        try:
            self.hand_over(info, task, new_file=created)
        except (UploadRejected, CompletionFailed) as exc:
            if isinstance(exc, UploadRejected):
                raise TusError(exc.message, status=exc.status) from None
            raise TusError("The server could not take the file.", status=500) from None

    # -- DELETE: termination -------------------------------------------------------------

    def _delete(self, request: Request, upload_id: str) -> Response:
        upload = self._find(upload_id)
        # Cancel first: a PATCH in progress stops at its next write.
        self._cancel(upload)
        with self._lock(upload):
            self._terminate(upload)
        # Again if the PATCH's last write came between the cancel and its stop.
        self._cancel(upload)
        return Response(status=204)

    def _cancel(self, upload: _Upload) -> None:
        record = self.records.load(upload.session, upload.id, stale=False)
        if record is None or record.state not in FINISHED:
            self.records.cancel(upload.session, upload.id, record, message=_TERMINATED)


def _next_read_size(size: int, got: int, took: float, ttl: float) -> int:
    """The next piece to read: what the client sent in a quarter of ``ttl`` at the rate
    just seen, a power of two from 1 KiB to 256 KiB, growing at most 4x at a time."""
    affordable = got / max(took, 1e-6) * ttl / 4
    target = _MIN_READ
    while target * 2 <= min(affordable, size * 4, _MAX_READ):
        target *= 2
    return target
