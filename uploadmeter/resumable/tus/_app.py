"""A tus 1.0.0 server (https://tus.io/protocols/resumable-upload) as a WSGI app.

Core protocol plus the ``creation``, ``creation-with-upload``, ``termination``,
``checksum`` and ``expiration`` extensions::

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

Errors are short JSON (or HTML) messages with the spec's statuses, and every answer
carries ``Tus-Resumable`` (OPTIONS too, as in the spec's example).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import os
import re
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any

from werkzeug.exceptions import HTTPException, RequestEntityTooLarge
from werkzeug.http import http_date
from werkzeug.wrappers import Request, Response
from werkzeug.wsgi import get_input_stream

from uploadmeter.core._locks import StoreLock
from uploadmeter.core._record import (
    CANCELLED,
    DONE,
    FINISHED,
    UPLOADING,
    FieldProgress,
    UploadRecord,
)
from uploadmeter.core._tracker import (
    CANCELLED_ERROR,
    UploadTracker,
    cancel_key,
    record_key,
)
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
from uploadmeter.resumable._completion import OnComplete, ResumableEndpoint
from uploadmeter.resumable._storage import (
    DISK_FULL_MESSAGE,
    DISK_FULL_RETRY_AFTER,
    FileInfo,
    FileStore,
    clean_filename,
    is_disk_full,
)
from uploadmeter.wsgi._responses import NO_STORE, error_response

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

    from uploadmeter.wsgi._middleware import UploadMeterMiddleware

log = logging.getLogger("uploadmeter")

__all__ = ["TusUploads"]

TUS_VERSION = "1.0.0"
EXTENSIONS = "creation,creation-with-upload,termination,checksum,expiration"
OFFSET_TYPE = "application/offset+octet-stream"
_ALGORITHMS: dict[str, Callable[[], Any]] = {
    "sha1": hashlib.sha1,
    "sha256": hashlib.sha256,
    "sha512": hashlib.sha512,
    "md5": hashlib.md5,
}
_INT = re.compile(r"\d{1,18}")
# An upload id: its owner's FileStore folder (32 hex: where to find it without a cookie)
# and 144 random bits (the capability).
_ID = re.compile(r"([0-9a-f]{32})[A-Za-z0-9_-]{24}")
_METADATA_KEY = re.compile(r"[!-+\--~]+")  # printable ASCII without space and comma
# A PATCH reads its body in pieces of 1 KiB to 256 KiB: what the client sends in a quarter
# of the lock's life, so the lock is refreshed in time however slow the client is.
_MIN_READ = 1024
_MAX_READ = 256 * 1024


def _gone() -> TusError:
    return TusError("The upload was cancelled.", status=410, headers={"Connection": "close"})


def _disk_full() -> TusError:
    return TusError(
        DISK_FULL_MESSAGE, status=507, headers={"Retry-After": str(DISK_FULL_RETRY_AFTER)}
    )


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
    def data_path(self) -> str:
        return os.path.join(self.directory, "data")

    @property
    def info_path(self) -> str:
        return os.path.join(self.directory, "info.json")

    @property
    def record_key(self) -> str:
        return record_key(self.session, self.id)

    @property
    def length(self) -> int:
        return int(self.info["length"])

    @property
    def complete(self) -> bool:
        return bool(self.info.get("complete"))

    def offset(self) -> int:
        if self.complete:
            return self.length
        try:
            return os.path.getsize(self.data_path)
        except FileNotFoundError:
            raise TusError("Upload not found.", status=404) from None


class TusUploads(ResumableEndpoint):
    """The tus endpoint (WSGI app); mount it with ``meter.mount("/tus", tus)``.

    :param meter: the :class:`~uploadmeter.UploadMeterMiddleware` (store, sessions).
    :param files: a :class:`~uploadmeter.resumable.FileStore` or its directory (its
        ``expire_after`` is the uploads' expiration).
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
        meter: UploadMeterMiddleware,
        files: FileStore | str | os.PathLike[str],
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
        try:
            response = self._dispatch(Request(environ))
        except Exception as exc:
            error = _as_tus_error(exc)
            response = error_response(environ, error.status, error.message)
            response.headers.update(error.headers)
        response.headers["Tus-Resumable"] = TUS_VERSION
        return response(environ, start_response)

    def _dispatch(self, request: Request) -> Response:
        method = (request.headers.get("X-HTTP-Method-Override") or request.method).upper()
        if method == "OPTIONS":
            return self._options()
        if request.headers.get("Tus-Resumable") != TUS_VERSION:
            raise TusError(
                "Unsupported tus version.", status=412, headers={"Tus-Version": TUS_VERSION}
            )
        self.files.maybe_cleanup(self.store)
        if request.path in ("", "/"):
            if method == "POST":
                return self._create(request)
            raise TusError(
                "Use POST to create an upload.", status=405, headers={"Allow": "POST, OPTIONS"}
            )
        match = re.fullmatch(r"/([^/]+)/?", request.path)
        if match is None or _ID.fullmatch(match.group(1)) is None:
            raise TusError("Upload not found.", status=404)
        upload_id = match.group(1)
        if method == "HEAD":
            return self._head(request, upload_id)
        if method == "PATCH":
            return self._patch(request, upload_id)
        if method == "DELETE":
            return self._delete(request, upload_id)
        raise TusError(
            "Use HEAD, PATCH or DELETE.",
            status=405,
            headers={"Allow": "HEAD, PATCH, DELETE, OPTIONS"},
        )

    def _options(self) -> Response:
        return Response(
            status=204,
            headers={
                "Tus-Version": TUS_VERSION,
                "Tus-Extension": EXTENSIONS,
                "Tus-Max-Size": str(self.max_size),
                "Tus-Checksum-Algorithm": ",".join(_ALGORITHMS),
            },
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
                raise TusError("The upload was terminated or has expired.", status=410)
            raise TusError("Upload not found.", status=404)
        session = info.get("session")
        if not isinstance(session, str) or self.files.session_key(session) != match.group(1):
            raise TusError("Upload not found.", status=404)
        upload = _Upload(upload_id, session, directory, info)
        if float(info["expires_at"]) < time.time():
            self._terminate(upload)
            raise TusError("The upload has expired.", status=410)
        return upload

    def _terminate(self, upload: _Upload) -> None:
        self.files.remove_tree(upload.directory)
        self.store.set(self._gone_key(upload.id), "1", max(self.files.expire_after, 3600))

    def _headers(self, upload: _Upload, offset: int) -> dict[str, str]:
        return {
            "Upload-Offset": str(offset),
            "Upload-Expires": http_date(float(upload.info["expires_at"])),
            **NO_STORE,
        }

    # -- POST: creation (with upload) ----------------------------------------------------

    def _create(self, request: Request) -> Response:
        if "Upload-Defer-Length" in request.headers:
            raise TusError("Deferred upload length is not supported.")
        length = _int_header(request, "Upload-Length")
        if length is None:
            raise TusError("Upload-Length must be a non-negative integer.")
        if length > self.max_size:
            raise TusError(f"Uploads may have at most {self.max_size} bytes.", status=413)
        raw_metadata, metadata = self._metadata(request.headers.get("Upload-Metadata"))
        try:
            filename = clean_filename(metadata.get("filename") or metadata.get("name") or "upload")
        except InvalidName as exc:
            raise TusError(exc.message, status=exc.status) from None
        has_body = _has_body(request)
        if has_body and request.mimetype != OFFSET_TYPE:
            raise TusError(f"A creation request with data must be {OFFSET_TYPE}.", status=415)
        checksum = self._checksum(request) if has_body else None

        # Without a session (a first visit, a client that keeps no cookies) the upload
        # starts one: the cookie lets a browser poll its progress; the URL needs none.
        session, cookie = self.meter.session_for(request.environ)
        upload_id = self.files.session_key(session) + secrets.token_urlsafe(18)
        now = time.time()
        upload = _Upload(
            upload_id,
            session,
            self.files.upload_dir("tus", session, upload_id),
            {
                "id": upload_id,
                "session": session,
                "length": length,
                "metadata": raw_metadata,
                "meta": metadata,
                "filename": filename,
                "created": now,
                "expires_at": now + self.files.expire_after,
                "complete": False,
            },
        )
        try:
            with self.files.session_lock(self.store, session):
                self.files.check_room(session, length, self.session_quota)
                os.makedirs(upload.directory)
                open(upload.data_path, "wb").close()
                self.files.write_json(upload.info_path, upload.info)
        except QuotaExceeded as exc:
            raise TusError(exc.message, status=exc.status) from None
        except (DiskFull, OSError) as exc:
            if not is_disk_full(exc):
                raise
            self.files.remove_tree(upload.directory)  # a new random id: ours alone
            raise _disk_full() from None
        self._save_record(upload, self._new_record(upload))

        location = request.script_root.rstrip("/") + "/" + upload_id
        headers = {"Location": location, "Upload-Expires": http_date(upload.info["expires_at"])}
        if cookie is not None:
            headers["Set-Cookie"] = cookie
        if has_body or length == 0:
            try:
                with self._lock(upload) as lock:
                    headers["Upload-Offset"] = str(
                        self._receive(request, upload, 0, checksum, lock)
                    )
            except BaseException:
                # Without a Location the client cannot resume this upload: drop it now
                # rather than let it hold the session's quota until it expires.
                self.files.remove_tree(upload.directory)
                self.store.delete(upload.record_key)
                raise
        return Response(status=201, headers=headers)

    def _metadata(self, header: str | None) -> tuple[str | None, dict[str, str]]:
        """Validate ``Upload-Metadata``; return it re-encoded and decoded."""
        if header is None or not header.strip():
            return None, {}
        if len(header) > self.max_metadata_length:
            raise TusError("Upload-Metadata is too long.")
        raw: list[str] = []
        decoded: dict[str, str] = {}
        for pair in header.split(","):
            key, _, value = pair.strip().partition(" ")
            value = value.strip()
            if not _METADATA_KEY.fullmatch(key) or key in decoded:
                raise TusError("Upload-Metadata keys must be unique, non-empty ASCII.")
            try:
                data = base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                raise TusError(f"Upload-Metadata value of {key!r} is not Base64.") from None
            decoded[key] = data.decode("utf-8", "replace")
            # Re-encoded from the decoded bytes, so nothing but Base64 is echoed back.
            raw.append(f"{key} {base64.b64encode(data).decode('ascii')}" if value else key)
        return ",".join(raw), decoded

    def _checksum(self, request: Request) -> tuple[str, bytes] | None:
        header = request.headers.get("Upload-Checksum")
        if header is None:
            return None
        algo, _, value = header.strip().partition(" ")
        if algo not in _ALGORITHMS:
            raise TusError(f"Unsupported checksum algorithm; use {','.join(_ALGORITHMS)}.")
        try:
            return algo, base64.b64decode(value.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise TusError("Upload-Checksum is not Base64.") from None

    # -- HEAD ----------------------------------------------------------------------------

    def _head(self, request: Request, upload_id: str) -> Response:
        upload = self._find(upload_id)
        if not upload.complete and upload.offset() == upload.length:
            # Every byte is here but the worker that received the last ones stopped
            # before handing the file over: do it now (unless another request is).
            lock = StoreLock(self.store, "tus:" + upload.id, ttl=self.lock_ttl, wait=0)
            if lock.try_acquire():
                with lock:
                    upload = self._find(upload_id)
                    if not upload.complete:
                        self._finish(upload, self._load_record(upload), lock)
        headers = self._headers(upload, upload.offset())
        headers["Upload-Length"] = str(upload.length)
        if upload.info.get("metadata"):
            headers["Upload-Metadata"] = upload.info["metadata"]
        return Response(status=200, headers=headers)

    # -- PATCH ---------------------------------------------------------------------------

    def _patch(self, request: Request, upload_id: str) -> Response:
        if request.mimetype != OFFSET_TYPE:
            raise TusError(f"PATCH requests must be {OFFSET_TYPE}.", status=415)
        offset = _int_header(request, "Upload-Offset")
        if offset is None:
            raise TusError("Upload-Offset must be a non-negative integer.")
        checksum = self._checksum(request)
        upload = self._find(upload_id)
        if request.content_length is not None and offset + request.content_length > upload.length:
            raise TusError("The data goes past Upload-Length.", status=413)
        with self._lock(upload) as lock:
            # Re-read under the lock: another PATCH or a DELETE may have run meanwhile.
            upload = self._find(upload_id)
            current = upload.offset()
            if offset != current:
                raise TusError(
                    f"Upload-Offset is {current}.",
                    status=409,
                    headers={"Upload-Offset": str(current)},
                )
            if upload.complete:  # an empty PATCH at the end of a finished upload
                return Response(status=204, headers=self._headers(upload, current))
            new_offset = self._receive(request, upload, current, checksum, lock)
        return Response(status=204, headers=self._headers(upload, new_offset))

    def _lock(self, upload: _Upload) -> StoreLock:
        lock = StoreLock(self.store, "tus:" + upload.id, ttl=self.lock_ttl, wait=self.lock_wait)
        try:
            lock.acquire()
        except LockTimeout:
            raise TusError("Another request is writing this upload.", status=423) from None
        return lock

    def _receive(
        self,
        request: Request,
        upload: _Upload,
        start: int,
        checksum: tuple[str, bytes] | None,
        lock: StoreLock,
    ) -> int:
        """Append the request body at ``start``; finish the upload when it is whole.

        Called with the upload's ``lock`` held.  Returns the new offset.  The bytes are
        flushed to disk (``fsync``) before the offset is answered: an offset is a promise.
        """
        hasher = _ALGORITHMS[checksum[0]]() if checksum else None
        record = self._load_record(upload)
        record.bytes_received = start
        tracker = UploadTracker(self.store, upload.session, record, self.meter.settings)
        # Unbuffered: every byte counted as written is in the file, and a HEAD meanwhile
        # sees the offset grow.
        with open(upload.data_path, "r+b", buffering=0) as f:
            f.seek(start)
            try:
                written, failure = self._append(request, f, upload, start, hasher, lock, tracker)
                # Still ours?  Otherwise another PATCH writes this file now: leave it be.
                self._keep_lock(lock, upload, start + written)
            except LockLost:
                raise TusError("The upload's lock was lost; retry.", status=423) from None
            if failure is not None and (
                hasher is not None
                or failure.status == 413
                or (failure.status == 507 and written == 0)
            ):
                f.truncate(start)  # a checksum covers the whole body, or nothing is kept
                written = 0
            elif checksum is not None and hasher is not None and hasher.digest() != checksum[1]:
                f.truncate(start)
                written = 0
                failure = TusError("Checksum Mismatch", status=460)
            if written:
                try:
                    os.fsync(f.fileno())
                except OSError as exc:
                    if not is_disk_full(exc):
                        raise
                    f.truncate(start)  # which bytes reached the disk is unknown: none count
                    written = 0
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
        f: IO[bytes],
        upload: _Upload,
        start: int,
        hasher: Any,
        lock: StoreLock,
        tracker: UploadTracker,
    ) -> tuple[int, TusError | None]:
        """Copy the body into ``f``: ``(bytes written, the failure that stopped it)``.

        Keeps what arrived when the client goes away (the spec asks servers to), and
        what was written whole when the disk fills up (``507``).  Terminates the upload
        and raises ``410`` when the user cancels.
        """
        remaining = upload.length - start
        written = 0
        size = _MIN_READ
        try:
            # One byte more than fits, to tell a body that is too long from one that ends.
            stream = get_input_stream(request.environ, max_content_length=remaining + 1)
            while True:
                # Up to the next multiple of ``size``: a client that pauses at a round
                # offset has every byte it sent written, none waiting in a half-read piece.
                began = time.monotonic()
                block = stream.read(size - written % size)
                took = time.monotonic() - began
                if not block:
                    break
                if written + len(block) > remaining:
                    raise RequestEntityTooLarge()
                self._keep_lock(lock, upload, start + written)
                try:
                    _write_all(f, block)
                except OSError as exc:
                    if not is_disk_full(exc):
                        raise
                    f.truncate(start + written)  # drop the piece's part that fitted
                    log.warning("uploadmeter: tus PATCH of %s: disk full", upload.id)
                    return written, _disk_full()
                written += len(block)
                if hasher is not None:
                    hasher.update(block)
                if tracker.progress(start + written, time.monotonic()):
                    f.close()
                    self._terminate(upload)
                    raise _gone()
                size = _next_read_size(size, len(block), took, lock.ttl)
        except RequestEntityTooLarge:
            return written, TusError("The data goes past Upload-Length.", status=413)
        except (HTTPException, OSError, ValueError) as exc:
            log.info("uploadmeter: tus PATCH of %s interrupted: %s", upload.id, exc)
            return written, TusError("The request body ended early.")
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
            unchanged = os.path.getsize(upload.data_path) == offset
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
        text = self.store.get(upload.record_key)
        record = UploadRecord.loads(text) if text is not None else None
        if record is not None and record.state == CANCELLED:
            self._terminate(upload)
            raise _gone()
        if record is None or record.state in FINISHED:
            return self._new_record(upload)
        return record

    def _save_record(self, upload: _Upload, record: UploadRecord) -> None:
        settings = self.meter.settings
        record.updated_at = time.time()
        self.store.set(upload.record_key, record.dumps(), settings.stale_after + settings.ttl)

    # -- completion ----------------------------------------------------------------------

    def _finish(self, upload: _Upload, record: UploadRecord, lock: StoreLock) -> None:
        """Verify and hand over the whole file (the upload's lock held)."""
        if record.fields:
            record.fields[0].bytes_received = upload.length
            record.fields[0].state = DONE
        self._save_record(upload, record)

        try:
            task = self.start_task(upload.session, upload.id, "verifying", upload.length)
            digests = self.hash_files(task, lock, [upload.data_path])
        except ProcessingCancelled:
            self._terminate(upload)
            raise _gone() from None
        path, created = self.files.adopt(upload.data_path, digests.sha256)
        upload.info.update(complete=True, sha256=digests.sha256, md5=digests.md5)
        self.files.write_json(upload.info_path, upload.info)
        info = FileInfo(
            path=path,
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
        # Raise the cancel flag first: a PATCH in progress stops at its next write.
        settings = self.meter.settings
        self.store.set(
            cancel_key(upload.session, upload.id), "1", settings.stale_after + settings.ttl
        )
        with self._lock(upload):
            self._terminate(upload)
        text = self.store.get(upload.record_key)
        if text is not None:
            record = UploadRecord.loads(text)
            if record.state not in FINISHED:
                record.state = CANCELLED
                record.finished_at = record.updated_at = time.time()
                record.error = dict(CANCELLED_ERROR, message="The upload was terminated.")
                self.store.set(upload.record_key, record.dumps(), settings.ttl)
        return Response(status=204)


def _write_all(f: IO[bytes], data: bytes) -> None:
    """Write ``data`` to an unbuffered file (whose writes may be short)."""
    view = memoryview(data)
    while view:
        view = view[f.write(view) or 0 :]


def _next_read_size(size: int, got: int, took: float, ttl: float) -> int:
    """The next piece to read: what the client sent in a quarter of ``ttl`` at the rate
    just seen, a power of two from 1 KiB to 256 KiB, growing at most 4x at a time."""
    affordable = got / max(took, 1e-6) * ttl / 4
    target = _MIN_READ
    while target * 2 <= min(affordable, size * 4, _MAX_READ):
        target *= 2
    return target


def _int_header(request: Request, name: str) -> int | None:
    """A non-negative integer header (``Upload-Length``, ``Upload-Offset``), else ``None``."""
    value = request.headers.get(name, "")
    return int(value) if _INT.fullmatch(value) else None


def _has_body(request: Request) -> bool:
    if request.content_length is not None:
        return request.content_length > 0
    return "chunked" in request.headers.get("Transfer-Encoding", "").lower()
