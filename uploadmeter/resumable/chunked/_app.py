"""Resumable chunked uploads: the protocol of simple-uploader.js, resumable.js and flow.js.

A WSGI app the middleware mounts under its prefix::

    meter = UploadMeterMiddleware(app, secret_key="...")
    chunks = ChunkUploads(meter, "/var/lib/myapp/uploads", on_complete=store_file)
    meter.mount("/chunks", chunks)      # target: "/uploadmeter/chunks"

The unmodified npm clients work against it with only ``target`` set:

* ``GET`` (test) -- ``200`` + JSON when the tested chunk is stored, ``204`` when it is not
  (the clients then send it; a 404 would abort them).  When the upload is complete every
  test answers ``200`` with ``{"skipUpload": true, ...}``.  Answers carry ``uploaded``
  (chunk numbers stored), for ``checkChunkUploadedByResponse``.  A test never changes
  anything: it neither merges nor completes an upload (a cross-site navigation is a GET).
* ``POST`` (chunk, multipart field ``file`` or ``method: "octet"``) -- stored under a
  temp name, size-checked against the declared sizes, renamed into place; ``200`` + JSON.
  When every chunk is there the file is merged at once.  The first chunk of a file the
  server already has (instant upload) completes it without storing the chunk.
* ``POST /merge`` -- explicit merge for clients that ask for one; also completes an
  instant upload with no chunk sent (the chunked component asks it first).
* ``DELETE`` -- cancel: the chunks are deleted.

Permanent errors use statuses both clients give up on (``permanentErrors`` of
simple-uploader.js ``[404, 415, 500, 501]``, flow.js adds ``413``): ``415`` for any upload
refused (bad or hostile parameters, sizes, quota, hash mismatch, cancelled), ``404`` for
an unknown upload, ``500`` for a server fault.  ``503`` (store or lock busy) and ``507``
(disk full) are temporary.

The merge joins chunks in numeric order in one streaming pass that computes MD5 and
SHA-256, checks the identifier when it is an MD5 (32 hex) or SHA-256 (64 hex), or a
declared ``sha256`` parameter, deletes the chunk folder and hands the file to
``on_complete(FileInfo)``.  Progress goes to the session's ordinary progress record (id
in every answer as ``upload_id``), so ``GET {prefix}/progress?id=`` works as for forms.
One store lock per upload orders its merge and its progress writes, so a chunk stored on
one worker cannot overwrite the final record a merge on another worker wrote.

Every request needs the session cookie (a page of the app or ``GET {prefix}/session``
sets it); without it the answer is ``415`` ``no_session``.  Chunk requests never issue a
session: the first requests of a file arrive in parallel, and each would get its own.

Only an identifier that is a verified hash (MD5 or SHA-256, ``hash_identifiers``) is
the same file whenever it comes back.  Any other identifier (the clients' default
``<size>-<name>``) names one upload: a request that arrives after that upload completed
starts a new one, so an edited file of the same name and size is stored again.

A cancel (``DELETE``, or ``POST {prefix}/cancel``) refuses the requests the client had
sent before it learnt of the cancel -- chunks in flight are not stored -- and a later
attempt with the same identifier starts afresh.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from werkzeug.datastructures import MultiDict
from werkzeug.wrappers import Request, Response

from uploadmeter.core._ids import valid_upload_id
from uploadmeter.core._locks import StoreLock
from uploadmeter.core._record import (
    CANCELLED,
    DONE,
    ERROR,
    FINISHED,
    UPLOADING,
    FieldProgress,
    UploadRecord,
)
from uploadmeter.core._tracker import CANCELLED_ERROR, cancel_key, record_key
from uploadmeter.exceptions import (
    ChunkRefused,
    CompletionFailed,
    DiskFull,
    LockLost,
    LockTimeout,
    ProcessingCancelled,
    QuotaExceeded,
    StoreError,
    UploadRejected,
)
from uploadmeter.processing import ProcessingTask
from uploadmeter.resumable._completion import OnComplete, ResumableEndpoint
from uploadmeter.resumable._storage import (
    DISK_FULL_MESSAGE,
    Digests,
    FileInfo,
    FileStore,
    digest_name,
    is_disk_full,
)
from uploadmeter.resumable.chunked._params import (
    SHA256,
    ChunkBody,
    ChunkParams,
    disk_full,
    merge_values,
    param,
    parse_params,
)
from uploadmeter.wsgi._responses import NO_STORE, json_response

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

    from uploadmeter.wsgi._middleware import UploadMeterMiddleware

log = logging.getLogger("uploadmeter")

__all__ = ["ChunkParams", "ChunkUploads"]

_MD5 = re.compile(r"[0-9a-fA-F]{32}")
_CHUNK_FILE = re.compile(r"(\d{1,9})\.chunk")
# How long a chunk's progress write waits for the upload's lock: far longer than another
# chunk's write holds it, far shorter than a merge does.
_PROGRESS_LOCK_WAIT = 1.0
# What meta.json keeps of the first chunk's parameters: the file, not one chunk.
_META_FIELDS = (
    "identifier",
    "filename",
    "relative_path",
    "total_size",
    "chunk_size",
    "total_chunks",
    "sha256",
)


def _cancelled() -> ChunkRefused:
    return ChunkRefused("cancelled", "The upload was cancelled.")


def _as_refusal(exc: Exception) -> ChunkRefused:
    """The answer to a chunk request that raised ``exc``: every error response is built
    from one."""
    if isinstance(exc, ChunkRefused):
        return exc
    if isinstance(exc, ProcessingCancelled):
        return _cancelled()
    if isinstance(exc, (StoreError, LockTimeout, LockLost)):
        log.warning("uploadmeter: chunk request deferred: %s", exc)
        return ChunkRefused(
            "busy", "The server is busy; try again.", status=503, headers={"Retry-After": "2"}
        )
    if is_disk_full(exc):  # temporary: the client retries once space returns
        log.warning("uploadmeter: chunk request deferred: %s", exc)
        return disk_full()
    log.exception("uploadmeter: chunk request failed")
    return ChunkRefused("server_error", "The server failed.", status=500)


@dataclass(frozen=True)
class _Upload:
    """Where one upload of one session lives: its folder and its keys in the store."""

    session: str
    identifier: str
    upload_id: str
    directory: str
    key: str

    def chunk_path(self, number: int) -> str:
        return os.path.join(self.directory, f"{number}.chunk")

    @property
    def meta_path(self) -> str:
        return os.path.join(self.directory, "meta.json")

    @property
    def record_key(self) -> str:
        return record_key(self.session, self.upload_id)

    @property
    def cancel_key(self) -> str:
        return cancel_key(self.session, self.upload_id)

    @property
    def done_key(self) -> str:
        return "chunks-done:" + self.key

    @property
    def told_key(self) -> str:
        """When the client learnt of a cancel (the moment a request was refused for it)."""
        return "chunks-told:" + self.key

    @property
    def lock_name(self) -> str:
        return "chunks:" + self.key

    def stored(self, total_chunks: int) -> list[int]:
        """Chunk numbers on disk, ascending (numerically: 2 before 10)."""
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return []
        numbers = (int(m.group(1)) for m in map(_CHUNK_FILE.fullmatch, names) if m)
        return sorted(n for n in numbers if 1 <= n <= total_chunks)


class ChunkUploads(ResumableEndpoint):
    """The chunk endpoint (WSGI app); mount it with ``meter.mount("/chunks", chunks)``.

    :param meter: the :class:`~uploadmeter.UploadMeterMiddleware` (store, sessions).
    :param files: a :class:`~uploadmeter.resumable.FileStore` or its directory; share one
        with :class:`~uploadmeter.resumable.TusUploads` to share quota and finished files.
    :param on_complete: ``on_complete(FileInfo)`` once a file is merged and verified (or
        found already stored).  Return a dict to show to the client (e.g. ``{"url": ...}``),
        or a started :class:`~uploadmeter.processing.ProcessingTask` when processing
        follows; raise :class:`UploadRejected` to refuse the file.
    :param max_file_size: largest file accepted, in bytes.
    :param session_quota: bytes one session may have in unfinished uploads (chunked and tus).
    :param max_chunk_size: largest declared ``chunkSize``; a request body may hold up to
        twice that (the last chunk takes the remainder).
    :param max_chunks: largest ``totalChunks``.
    :param auto_merge: merge as soon as every chunk is stored (else wait for ``/merge``).
    :param instant_upload: ``"session"``: a file this session already uploaded (MD5 or
        SHA-256 identifier) is not sent again; ``"global"``: also files of other sessions,
        for SHA-256 identifiers only (MD5 collisions can be forged); ``None``: never.
        Global de-duplication lets anyone who knows a file's SHA-256 obtain it.
    :param hash_identifiers: treat 32/64-hex identifiers as MD5/SHA-256 of the file and
        reject a merge that does not match (turn off for clients sending hex UUIDs).
    :param file_field: the multipart field of the chunk (``fileParameterName``).
    :param lock_ttl: seconds an upload's lock outlives a stalled merge.
    """

    def __init__(
        self,
        meter: UploadMeterMiddleware,
        files: FileStore | str | os.PathLike[str],
        *,
        on_complete: OnComplete | None = None,
        max_file_size: int = 4 * 1024**3,
        session_quota: int = 16 * 1024**3,
        max_chunk_size: int = 64 * 1024**2,
        max_chunks: int = 10_000,
        auto_merge: bool = True,
        instant_upload: Literal["session", "global"] | None = "session",
        hash_identifiers: bool = True,
        file_field: str = "file",
        lock_ttl: float = 30.0,
    ) -> None:
        super().__init__(meter, files, on_complete, session_quota, lock_ttl)
        self.max_file_size = max_file_size
        self.max_chunk_size = max_chunk_size
        self.max_chunks = max_chunks
        self.auto_merge = auto_merge
        self.instant_upload = instant_upload
        self.hash_identifiers = hash_identifiers
        self.file_field = file_field

    # -- dispatch ------------------------------------------------------------------------

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        arrived = time.time()  # before the body: tells chunks in flight from new ones
        extra: list[tuple[str, str]] = []
        try:
            response = self._dispatch(environ, extra, arrived)
        except Exception as exc:
            refused = _as_refusal(exc)
            body = {
                "error": {
                    "status": refused.status,
                    "reason": refused.reason,
                    "message": refused.message,
                }
            }
            body.update(refused.extra)
            response = json_response(body, refused.status, [*extra, *refused.headers.items()])
        return response(environ, start_response)

    def _dispatch(
        self, environ: dict[str, Any], extra: list[tuple[str, str]], arrived: float
    ) -> Response:
        method = environ.get("REQUEST_METHOD", "GET")
        path = environ.get("PATH_INFO", "").rstrip("/")
        self.files.maybe_cleanup(self.store)
        if path == "":
            if method in ("GET", "HEAD"):
                return self._test(environ, extra, arrived)
            if method == "POST":
                return self._post_chunk(environ, extra, arrived)
            if method == "DELETE":
                return self._delete(environ, extra)
            allow = "GET, HEAD, POST, DELETE"
        elif path == "/merge":
            if method == "POST":
                return self._merge_request(environ, extra, arrived)
            allow = "POST"
        else:
            raise ChunkRefused("not_found", "No such chunk endpoint.", status=404)
        raise ChunkRefused("method", f"Use {allow}.", status=405, headers={"Allow": allow})

    # -- sessions and names --------------------------------------------------------------

    def _session(self, environ: dict[str, Any]) -> str:
        """The request's session; never a new one (parallel first chunks would each get
        their own, and no request would see the whole file)."""
        session = self.meter.cookie.session_of(environ)
        if session is None:
            raise ChunkRefused(
                "no_session",
                "No upload session: load a page of this site first, or "
                f"GET {self.meter.prefix}/session (its cookie keys the upload).",
            )
        return session

    def _upload(self, session: str, identifier: str) -> _Upload:
        key = digest_name("chunks", session, identifier)
        return _Upload(
            session=session,
            identifier=identifier,
            upload_id=identifier if valid_upload_id(identifier) else "chunks-" + key[:32],
            directory=self.files.upload_dir("partial", session, key),
            key=key,
        )

    def _params(self, values: MultiDict[str, str], *, chunk: bool) -> ChunkParams:
        return parse_params(
            values,
            chunk=chunk,
            max_file_size=self.max_file_size,
            max_chunk_size=self.max_chunk_size,
            max_chunks=self.max_chunks,
        )

    # -- GET: test -----------------------------------------------------------------------

    def _test(
        self, environ: dict[str, Any], extra: list[tuple[str, str]], arrived: float
    ) -> Response:
        """Report what is stored; change nothing (only POST and DELETE do)."""
        params = self._params(Request(environ).args, chunk=False)
        up = self._upload(self._session(environ), params.identifier)
        self._check_cancelled(up, arrived, write=False)
        mark = self._done_mark(up)
        if mark is not None and self._covers(up, mark, arrived):
            return self._answer(up, params, extra, done=mark)
        # The chunks of a finished upload whose folder is not removed yet are not this one's.
        meta = self._read_meta(up, newer_than=None if mark is None else mark.get("at", 0.0))
        stored: list[int] = []
        if meta is not None:
            _check_same_split(meta, params)
            stored = up.stored(meta.total_chunks)
            if len(stored) == meta.total_chunks and self.auto_merge:
                # All there but not merged (the merging worker died, or it merges now):
                # the last chunk reads as missing, so the client sends it again and that
                # POST merges -- else it would call the file complete on these tests.
                stored = stored[:-1]
        if params.chunk_number is not None and params.chunk_number not in stored:
            return Response(status=204, headers=[*NO_STORE.items(), *extra])
        return self._answer(up, params, extra, stored)

    # -- POST: one chunk -----------------------------------------------------------------

    def _post_chunk(
        self, environ: dict[str, Any], extra: list[tuple[str, str]], arrived: float
    ) -> Response:
        session = self._session(environ)  # before reading the body
        body = ChunkBody(environ, file_field=self.file_field, max_chunk_size=self.max_chunk_size)
        # Checked before a byte of the chunk is read: a refused, cancelled or complete
        # upload costs no disk, and the declared size bounds the read.
        params = self._params(body.parameters(), chunk=True)
        up = self._upload(session, params.identifier)
        self._check_cancelled(up, arrived)
        done = self._done(up, arrived) or self._instant(up, params)
        if done is not None:  # a late duplicate of a finished upload, or an instant upload
            return self._answer(up, params, extra, done=done)
        assert params.chunk_number is not None
        received, size = body.save(self.files, params.expected_size(params.chunk_number))
        try:
            # Again with the whole body's parameters; a cancel or a merge may have come
            # while it was read.
            params = self._params(body.values, chunk=True)
            number = params.chunk_number
            assert number is not None
            if size != params.expected_size(number):
                raise ChunkRefused(
                    "size_mismatch",
                    f"Chunk {number} has {size} bytes; the declared sizes say "
                    f"{params.expected_size(number)}.",
                )
            up = self._upload(session, params.identifier)
            self._check_cancelled(up, arrived)
            mark = self._done_mark(up)
            done = mark if mark is not None and self._covers(up, mark, arrived) else None
            done = done or self._instant(up, params)
            if done is None and mark is not None:
                self._wait_for_previous(up)
            meta = None if done is not None else self._store_chunk(up, params, received, arrived)
        finally:
            self.files.discard(received)  # a no-op once the chunk was renamed into place
        if meta is None:  # a late duplicate of a finished upload, or an instant upload
            return self._answer(up, params, extra, done=done or self._done(up, arrived) or {})
        self._write_progress(up, meta, arrived)
        # Listed after the progress write let go of the lock: if the last chunk's merge
        # found it taken by this write, this request sees every chunk and merges.
        stored = up.stored(meta.total_chunks)
        if len(stored) == meta.total_chunks and self.auto_merge:
            return self._merge(up, meta, extra, arrived)
        return self._answer(up, params, extra, stored)

    def _store_chunk(
        self, up: _Upload, params: ChunkParams, received: str, arrived: float
    ) -> ChunkParams | None:
        """Rename a received chunk into place; return the upload's declared sizes, or
        ``None`` when the upload was merged meanwhile (a late duplicate)."""
        assert params.chunk_number is not None
        for _ in range(2):
            meta = self._read_meta(up) or self._create_meta(up, params, arrived)
            if meta is None:
                return None
            _check_same_split(meta, params)
            try:
                os.replace(received, up.chunk_path(params.chunk_number))
                return meta
            except FileNotFoundError:
                # The folder went away meanwhile: merged (the done mark is written before
                # the folder is removed), cancelled or expired.
                if self._done(up, arrived) is not None:
                    return None
                self._check_cancelled(up, arrived)
        raise ChunkRefused("busy", "The upload changed meanwhile; try again.", status=503)

    # -- per-upload state ----------------------------------------------------------------

    def _read_meta(self, up: _Upload, newer_than: float | None = None) -> ChunkParams | None:
        """The upload's declared file (``meta.json``), or ``None`` before its first chunk
        (or when it was created before ``newer_than``)."""
        data = self.files.read_json(up.meta_path)
        if data is None:
            return None
        if newer_than is not None and float(data.get("created", 0.0)) <= newer_than:
            return None
        fields: dict[str, Any] = {name: data.get(name) for name in _META_FIELDS}
        return ChunkParams(**fields, chunk_number=None, current_chunk_size=None)

    def _create_meta(self, up: _Upload, params: ChunkParams, arrived: float) -> ChunkParams | None:
        """Start an upload on its first chunk (quota checked).  ``None`` if it was merged."""
        try:
            with self.files.session_lock(self.store, up.session):
                meta = self._read_meta(up)
                if meta is not None:
                    return meta  # a parallel first chunk was quicker
                if self._done(up, arrived) is not None:
                    return None  # merged since we looked: a late duplicate
                self._check_cancelled(up, arrived)  # DELETE takes this lock too
                self.files.check_room(up.session, params.total_size, self.session_quota)
                os.makedirs(up.directory, exist_ok=True)
                data = {name: getattr(params, name) for name in _META_FIELDS}
                self.files.write_json(up.meta_path, dict(data, created=time.time()))
                return dataclasses.replace(params, chunk_number=None, current_chunk_size=None)
        except QuotaExceeded as exc:
            raise ChunkRefused("quota", str(exc)) from None
        except DiskFull:
            raise disk_full() from None

    def _record(self, up: _Upload) -> UploadRecord | None:
        text = self.store.get(up.record_key)
        return None if text is None else UploadRecord.loads(text)

    def _check_cancelled(self, up: _Upload, arrived: float, *, write: bool = True) -> None:
        """Refuse a request of a cancelled upload; let a later attempt start afresh.

        A request the client sent before it learnt of the cancel (it *arrived* before
        that moment) is refused, so chunks in flight do not bring the upload back.  The
        client learns at ``DELETE``; after ``{prefix}/cancel`` it learns from the first
        request refused here.  Requests that arrive later belong to a new attempt.
        ``write=False`` (a test GET): refuse or let pass the same way, writing nothing.
        """
        flagged = self.store.get(up.cancel_key) is not None
        record = self._record(up)
        if not flagged and (record is None or record.state != CANCELLED):
            return
        told = self.store.get(up.told_key)
        if told is None:
            if write:
                self._tell_cancelled(up, record)
                self._forget(up)
        elif arrived > float(told):
            if write:
                for key in (up.cancel_key, up.told_key, up.done_key, up.record_key):
                    self.store.delete(key)
            return
        raise _cancelled()

    def _tell_cancelled(self, up: _Upload, record: UploadRecord | None) -> None:
        """Mark ``up`` cancelled now: the record, the cancel flag (stops a merge or a
        processing task at its next write) and the moment the client was told."""
        settings = self.meter.settings
        flag_ttl = settings.stale_after + settings.ttl
        self.store.set(up.cancel_key, "1", flag_ttl)
        self.store.set(up.told_key, repr(time.time()), flag_ttl)
        record = record or UploadRecord(id=up.upload_id)
        if record.state != CANCELLED:
            record.state = CANCELLED
            record.finished_at = record.updated_at = time.time()
            record.error = dict(CANCELLED_ERROR)
        self.store.set(up.record_key, record.dumps(), settings.ttl)

    def _forget(self, up: _Upload) -> None:
        """Drop the chunks and the completion mark of ``up``."""
        self.files.remove_tree(up.directory)
        self.store.delete(up.done_key)

    def _write_progress(self, up: _Upload, meta: ChunkParams, arrived: float) -> None:
        """Record the bytes stored so far.

        Under the upload's lock, waited for briefly.  Another chunk's request holds it for
        the moment its own write takes; that write may have counted the chunks before
        this one was stored, so this one must still write after it (skipping it left the
        bar behind what the server had until the next chunk came).  A merge holds it for
        long: then this write is dropped, the merge's record being the one that counts.
        """
        lock = StoreLock(self.store, up.lock_name, ttl=self.lock_ttl, wait=_PROGRESS_LOCK_WAIT)
        try:
            lock.acquire()
        except LockTimeout:
            return
        with lock:
            if self._done(up, arrived) is not None or self.store.get(up.cancel_key) is not None:
                return
            stored = up.stored(meta.total_chunks)
            record = self._record(up)
            if record is None or record.state in FINISHED:
                # The clock starts when the first chunk request arrived, not when its body
                # was stored: otherwise a few parallel chunks look instantaneous.
                record = UploadRecord(id=up.upload_id, started_at=arrived)
            received = sum(meta.expected_size(n) for n in stored)
            record.state = UPLOADING
            record.content_length = meta.total_size
            record.bytes_received = received
            record.updated_at = time.time()
            state = DONE if len(stored) == meta.total_chunks else UPLOADING
            record.fields = [FieldProgress("file", meta.filename, None, received, state)]
            record.field_count = 1
            settings = self.meter.settings
            self.store.set(up.record_key, record.dumps(), settings.stale_after + settings.ttl)

    # -- merge ---------------------------------------------------------------------------

    def _done_mark(self, up: _Upload) -> dict[str, Any] | None:
        """The completion mark of ``up``: ``{"upload_id", "result", "at"}``."""
        text = self.store.get(up.done_key)
        return None if text is None else dict(json.loads(text))

    def _covers(self, up: _Upload, mark: dict[str, Any], arrived: float | None) -> bool:
        """Whether a request that ``arrived`` then belongs to the completed upload.

        A verified hash is that file whenever it comes back.  Another identifier names one
        upload: a request that arrived after it completed is a new upload (an edited file
        of the same name and size), one that arrived before is a late duplicate.
        """
        if arrived is None or self._hash_kind(up.identifier) is not None:
            return True
        return arrived <= float(mark.get("at", 0.0))

    def _done(self, up: _Upload, arrived: float | None = None) -> dict[str, Any] | None:
        """The completion mark, if the request that ``arrived`` then belongs to it."""
        mark = self._done_mark(up)
        return mark if mark is not None and self._covers(up, mark, arrived) else None

    def _wait_for_previous(self, up: _Upload) -> None:
        """Before a new upload reuses the identifier of a completed one (not a verified
        hash), let the completing request finish: it removes the old chunks under the
        upload's lock (LockTimeout: 503, the client retries)."""
        with StoreLock(self.store, up.lock_name, ttl=self.lock_ttl, wait=_PROGRESS_LOCK_WAIT):
            pass

    def _hash_kind(self, identifier: str) -> Literal["md5", "sha256"] | None:
        """``"md5"``/``"sha256"`` when the merge verifies ``identifier`` as that hash."""
        if not self.hash_identifiers:
            return None
        if _MD5.fullmatch(identifier):
            return "md5"
        if SHA256.fullmatch(identifier):
            return "sha256"
        return None

    def _merge_request(
        self, environ: dict[str, Any], extra: list[tuple[str, str]], arrived: float
    ) -> Response:
        session = self._session(environ)  # before a byte of the body
        params = self._params(merge_values(environ), chunk=False)
        up = self._upload(session, params.identifier)
        self._check_cancelled(up, arrived)
        done = self._done(up, arrived) or self._instant(up, params)
        if done is not None:
            return self._answer(up, params, extra, done=done)
        meta = self._read_meta(up)
        if meta is None:
            raise ChunkRefused("not_found", "No such upload (it may have expired).", status=404)
        missing = sorted(set(meta.numbers) - set(up.stored(meta.total_chunks)))
        if missing:
            raise ChunkRefused(
                "incomplete", "Some chunks are missing.", status=409, missing=missing[:1000]
            )
        return self._merge(up, meta, extra, arrived)

    def _merge(
        self, up: _Upload, meta: ChunkParams, extra: list[tuple[str, str]], arrived: float
    ) -> Response:
        lock = StoreLock(self.store, up.lock_name, ttl=self.lock_ttl, wait=0)
        if not lock.try_acquire():
            # Another request is merging it (its answer or the progress record tells), or
            # writing progress (it merges next: it lists the chunks once it let go).
            body = self._body(up, meta, meta.numbers)
            body["merging"] = True
            return json_response(body, 200, extra)
        with lock:
            done = self._done(up, arrived)
            if done is not None:
                return self._answer(up, meta, extra, done=done)
            stored = up.stored(meta.total_chunks)
            if len(stored) != meta.total_chunks:
                return self._answer(up, meta, extra, stored)
            task = self.start_task(up.session, up.upload_id, "merging", meta.total_size)
            temp, out = self.files.temp_file()
            try:
                with out:
                    chunks = (up.chunk_path(n) for n in meta.numbers)
                    digests = self.hash_files(task, lock, chunks, out)
                problem = self._verify(meta, digests)
                if problem is not None:
                    task.fail(problem, 415)
                    raise ChunkRefused("checksum_mismatch", problem)
                path, created = self.files.adopt(temp, digests.sha256)
            except (ChunkRefused, ProcessingCancelled, FileNotFoundError) as exc:
                # A mismatch, or cancelled meanwhile (a DELETE may have taken the chunks).
                self.files.discard(temp)
                self._forget(up)
                raise exc if isinstance(exc, ChunkRefused) else _cancelled() from None
            except BaseException as exc:
                self.files.discard(temp)
                if is_disk_full(exc):
                    # The record says so; the chunks stay, and the client's retry merges
                    # again once space returns.
                    task.fail(DISK_FULL_MESSAGE, 507)
                    raise disk_full() from None
                raise
            info = FileInfo(
                path=path,
                filename=meta.filename,
                size=digests.size,
                sha256=digests.sha256,
                md5=digests.md5,
                session=up.session,
                upload_id=up.upload_id,
                protocol="chunks",
                relative_path=meta.relative_path,
            )
            try:
                done = self._complete(up, info, task, new_file=created)
            finally:
                # After the done mark: a late duplicate finding no folder then finds it.
                self.files.remove_tree(up.directory)
            return self._answer(up, meta, extra, done=done)

    def _verify(self, meta: ChunkParams, digests: Digests) -> str | None:
        if digests.size != meta.total_size:
            return f"The merged file has {digests.size} bytes, not {meta.total_size}."
        if meta.sha256 and meta.sha256 != digests.sha256:
            return "The merged file does not match its declared SHA-256; upload it again."
        if self.hash_identifiers:
            ident = meta.identifier
            if _MD5.fullmatch(ident) and ident.lower() != digests.md5:
                return "The merged file does not match its MD5 identifier; upload it again."
            if SHA256.fullmatch(ident) and ident.lower() != digests.sha256:
                return "The merged file does not match its SHA-256 identifier; upload it again."
        return None

    def _complete(
        self, up: _Upload, info: FileInfo, task: ProcessingTask, *, new_file: bool
    ) -> dict[str, Any]:
        """Hand the file to the app, remember it, and end (or hand over) the record."""
        # "at": requests that arrive later may be a new upload (see _covers).
        done: dict[str, Any] = {"upload_id": up.upload_id, "result": None, "at": time.time()}

        def mark_done(result: dict[str, Any] | None) -> None:
            done["result"] = result
            self.store.set(
                up.done_key, json.dumps(done, ensure_ascii=False), self.meter.settings.ttl
            )

        # Marked before the hook runs: however long it takes (the merge lock may expire),
        # a late chunk or test request finds the upload complete instead of merging again.
        mark_done(None)
        try:
            self.hand_over(info, task, mark_done, new_file=new_file)
        except (UploadRejected, CompletionFailed) as exc:
            self.store.delete(up.done_key)
            if isinstance(exc, UploadRejected):
                raise ChunkRefused("rejected", exc.message) from None
            raise ChunkRefused(
                "server_error", "The server could not take the file.", status=500
            ) from None
        self._remember(up.session, info)
        return done

    # -- instant upload ------------------------------------------------------------------

    def _have_key(self, scope: str, algorithm: str, digest: str) -> str:
        return f"chunks-have:{scope}:{algorithm}:{digest}"

    def _remember(self, session: str, info: FileInfo) -> None:
        if self.instant_upload is None:
            return
        value = json.dumps({"sha256": info.sha256, "md5": info.md5, "size": info.size})
        keep = self.files.keep_completed
        ttl = keep if keep is not None else 30 * 24 * 3600.0
        scope = self.files.session_key(session)
        self.store.set(self._have_key(scope, "md5", info.md5), value, ttl)
        self.store.set(self._have_key(scope, "sha256", info.sha256), value, ttl)
        if self.instant_upload == "global":
            self.store.set(self._have_key("global", "sha256", info.sha256), value, ttl)

    def _instant(self, up: _Upload, params: ChunkParams) -> dict[str, Any] | None:
        """Complete an upload without its bytes when the file is already stored (POST only:
        the first chunk, or ``/merge`` before any chunk)."""
        kind = self._hash_kind(params.identifier)
        if self.instant_upload is None or kind is None:
            return None
        ident = params.identifier.lower()
        scope = self.files.session_key(up.session)
        keys = [self._have_key(scope, kind, ident)]
        if kind == "sha256" and self.instant_upload == "global":
            keys.append(self._have_key("global", "sha256", ident))
        texts = (self.store.get(key) for key in keys)
        found = next((json.loads(text) for text in texts if text is not None), None)
        if found is None or found["size"] != params.total_size:
            return None
        if params.sha256 and params.sha256 != found["sha256"]:
            return None
        path = self.files.existing(found["sha256"], found["size"])
        if path is None:
            return None
        # The first chunks arrive at once: one of them completes the upload.
        with StoreLock(self.store, up.lock_name, ttl=self.lock_ttl, wait=5):
            done = self._done(up)
            if done is not None:
                return done
            task = self.start_task(up.session, up.upload_id, "instant", 0)
            info = FileInfo(
                path=path,
                filename=params.filename,
                size=found["size"],
                sha256=found["sha256"],
                md5=found["md5"],
                session=up.session,
                upload_id=up.upload_id,
                protocol="chunks",
                relative_path=params.relative_path,
                instant=True,
            )
            done = self._complete(up, info, task, new_file=False)
            self.files.remove_tree(up.directory)  # chunks an earlier attempt left
            return done

    # -- DELETE: cancel ------------------------------------------------------------------

    def _delete(self, environ: dict[str, Any], extra: list[tuple[str, str]]) -> Response:
        identifier = param(Request(environ).args, "identifier")
        if not identifier or len(identifier) > 255:
            raise ChunkRefused("bad_identifier", "Missing or invalid identifier.")
        up = self._upload(self._session(environ), identifier)
        # Under the session's lock: a chunk cannot start the upload again meanwhile.
        with self.files.session_lock(self.store, up.session):
            existed = os.path.isdir(up.directory)
            record = self._record(up)
            if record is None or record.state not in (DONE, ERROR):
                # Cancel it (again, after {prefix}/cancel: the client knows from now on).
                self._tell_cancelled(up, record)
            self._forget(up)
        return json_response({"upload_id": up.upload_id, "deleted": existed}, 200, extra)

    # -- answers -------------------------------------------------------------------------

    def _body(self, up: _Upload, params: ChunkParams, stored: list[int]) -> dict[str, Any]:
        return {
            "upload_id": up.upload_id,
            "skipUpload": False,
            "uploaded": stored,
            "totalChunks": params.total_chunks,
            "bytes_stored": sum(params.expected_size(n) for n in stored),
            "complete": False,
            "merging": False,
            "result": None,
        }

    def _answer(
        self,
        up: _Upload,
        params: ChunkParams,
        extra: list[tuple[str, str]],
        stored: list[int] | None = None,
        *,
        done: dict[str, Any] | None = None,
    ) -> Response:
        """The JSON answer: the chunks stored, or with ``done`` the completed upload."""
        if done is None:
            return json_response(self._body(up, params, stored or []), 200, extra)
        body = self._body(up, params, params.numbers)
        result = done.get("result") or {}
        body.update(skipUpload=True, complete=True, result=result, url=result.get("url"))
        return json_response(body, 200, extra)


def _check_same_split(meta: ChunkParams, params: ChunkParams) -> None:
    if not meta.same_split(params):
        raise ChunkRefused(
            "conflict",
            "This identifier is already uploading with other sizes; use a new identifier.",
        )
