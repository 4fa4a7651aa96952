"""Resumable chunked uploads: the protocol of simple-uploader.js, resumable.js and flow.js.

An endpoint the middleware (WSGI or ASGI: the same line) mounts under its prefix::

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

Every request is an exchange (:meth:`ChunkUploads.exchange`, see
``uploadmeter.core._exchange``): the body comes through ``yield`` in pieces of at most
64 KiB, so the WSGI app (calling the endpoint) and the ASGI middleware's mount
run the same code.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from werkzeug.datastructures import MultiDict
from werkzeug.wrappers import Request, Response

from uploadmeter.core._context import HasContext, MeterContext
from uploadmeter.core._exchange import Exchange, run_exchange
from uploadmeter.core._locks import StoreLock
from uploadmeter.core._record import (
    DONE,
    ERROR,
)
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
from uploadmeter.resumable._completion import OnComplete, ResumableEndpoint, request_session
from uploadmeter.resumable._storage import (
    DISK_FULL_MESSAGE,
    FileInfo,
    Storage,
    is_disk_full,
)
from uploadmeter.resumable.chunked._cancel import Cancels, cancelled
from uploadmeter.resumable.chunked._instant import Completions, InstantUpload
from uploadmeter.resumable.chunked._layout import Upload
from uploadmeter.resumable.chunked._merge import join_chunks
from uploadmeter.resumable.chunked._params import (
    ChunkBody,
    ChunkParams,
    disk_full,
    merge_values,
    param,
    parse_params,
)
from uploadmeter.resumable.chunked._progress import PROGRESS_LOCK_WAIT, write_progress
from uploadmeter.wsgi._requests import body_reader
from uploadmeter.wsgi._responses import NO_STORE, json_response

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

log = logging.getLogger("uploadmeter")

__all__ = ["ChunkParams", "ChunkUploads"]


def _as_refusal(exc: Exception) -> ChunkRefused:
    """The answer to a chunk request that raised ``exc``: every error response is built
    from one."""
    if isinstance(exc, ChunkRefused):
        return exc
    if isinstance(exc, ProcessingCancelled):
        return cancelled()
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


class ChunkUploads(ResumableEndpoint):
    """The chunk endpoint (WSGI app); mount it with ``meter.mount("/chunks", chunks)``.

    :param meter: the meter (the middleware, the Flask extension) or its
        :class:`~uploadmeter.core.MeterContext`: store, settings, sessions.
    :param files: a :class:`~uploadmeter.resumable.FileStore` or its directory, or an
        :class:`~uploadmeter.S3Storage`; share one with
        :class:`~uploadmeter.resumable.TusUploads` to share quota and finished files.
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
        meter: MeterContext | HasContext,
        files: Storage | str | os.PathLike[str],
        *,
        on_complete: OnComplete | None = None,
        max_file_size: int = 4 * 1024**3,
        session_quota: int = 16 * 1024**3,
        max_chunk_size: int = 64 * 1024**2,
        max_chunks: int = 10_000,
        auto_merge: bool = True,
        instant_upload: InstantUpload = "session",
        hash_identifiers: bool = True,
        file_field: str = "file",
        lock_ttl: float = 30.0,
    ) -> None:
        super().__init__(meter, files, on_complete, session_quota, lock_ttl)
        self.max_file_size = max_file_size
        self.max_chunk_size = max_chunk_size
        self.max_chunks = max_chunks
        self.auto_merge = auto_merge
        self.file_field = file_field
        self.completions = Completions(
            self.context,
            self.files,
            instant_upload=instant_upload,
            hash_identifiers=hash_identifiers,
        )
        self.cancels = Cancels(self.context, self.files, self.completions)

    @property
    def instant_upload(self) -> InstantUpload:
        """``"session"``, ``"global"`` or ``None``: whose earlier uploads complete a new one."""
        return self.completions.instant_upload

    @property
    def hash_identifiers(self) -> bool:
        """Whether identifiers of 32 or 64 hex digits are checked as the file's MD5 or SHA-256."""
        return self.completions.hash_identifiers

    # -- dispatch ------------------------------------------------------------------------

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        response = run_exchange(self.exchange(environ), body_reader(environ))
        return response(environ, start_response)

    def exchange(self, environ: dict[str, Any]) -> Exchange[Response]:
        """The request as an exchange (``uploadmeter.core._exchange``): the protocol
        for every shell (WSGI: calling the endpoint; ASGI: the middleware's mount).
        ``environ`` has no body stream of its own: the body comes through ``yield``."""
        arrived = time.time()  # before the body: tells chunks in flight from new ones
        extra: list[tuple[str, str]] = []
        try:
            response = yield from self._dispatch(environ, extra, arrived)
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
        return response

    def _dispatch(
        self, environ: dict[str, Any], extra: list[tuple[str, str]], arrived: float
    ) -> Exchange[Response]:
        method = environ.get("REQUEST_METHOD", "GET")
        path = environ.get("PATH_INFO", "").rstrip("/")
        self.files.maybe_cleanup(self.store)
        if path == "":
            if method in ("GET", "HEAD"):
                return self._test(environ, extra, arrived)
            if method == "POST":
                return (yield from self._post_chunk(environ, extra, arrived))
            if method == "DELETE":
                return self._delete(environ, extra)
            allow = "GET, HEAD, POST, DELETE"
        elif path == "/merge":
            if method == "POST":
                return (yield from self._merge_request(environ, extra, arrived))
            allow = "POST"
        else:
            raise ChunkRefused("not_found", "No such chunk endpoint.", status=404)
        raise ChunkRefused("method", f"Use {allow}.", status=405, headers={"Allow": allow})

    # -- sessions and names --------------------------------------------------------------

    def _session(self, environ: dict[str, Any]) -> str:
        """The request's session; never a new one (parallel first chunks would each get
        their own, and no request would see the whole file)."""
        session = request_session(self.context, environ)
        if session is None:
            raise ChunkRefused(
                "no_session",
                "No upload session: load a page of this site first, or "
                f"GET {self.context.prefix}/session (its cookie keys the upload).",
            )
        return session

    def _upload(self, session: str, identifier: str) -> Upload:
        return Upload.of(self.files, session, identifier)

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
        self.cancels.check(up, arrived, write=False)
        mark = self.completions.mark(up)
        if mark is not None and self.completions.covers(up, mark, arrived):
            return self._answer(up, params, extra, done=mark)
        # The chunks of a finished upload whose folder is not removed yet are not this one's.
        meta = up.read_meta(self.files, newer_than=None if mark is None else mark.get("at", 0.0))
        stored: list[int] = []
        if meta is not None:
            _check_same_split(meta, params)
            stored = up.stored(meta)
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
    ) -> Exchange[Response]:
        session = self._session(environ)  # before reading the body
        body = ChunkBody(environ, file_field=self.file_field, max_chunk_size=self.max_chunk_size)
        # Checked before a byte of the chunk is read: a refused, cancelled or complete
        # upload costs no disk, and the declared size bounds the read.
        params = self._params((yield from body.parameters()), chunk=True)
        up = self._upload(session, params.identifier)
        self.cancels.check(up, arrived)
        done = self.completions.done(up, arrived) or self._instant(up, params)
        if done is not None:  # a late duplicate of a finished upload, or an instant upload
            return self._answer(up, params, extra, done=done)
        assert params.chunk_number is not None
        received, size = yield from body.save(self.files, params.expected_size(params.chunk_number))
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
            self.cancels.check(up, arrived)
            mark = self.completions.mark(up)
            done = mark if mark is not None and self.completions.covers(up, mark, arrived) else None
            done = done or self._instant(up, params)
            if done is None and mark is not None:
                self._wait_for_previous(up)
            meta = None if done is not None else self._store_chunk(up, params, received, arrived)
        finally:
            self.files.discard(received)  # a no-op once the chunk was renamed into place
        if meta is None:  # a late duplicate of a finished upload, or an instant upload
            done = done or self.completions.done(up, arrived) or {}
            return self._answer(up, params, extra, done=done)
        write_progress(self.cancels, up, meta, arrived, lock_ttl=self.lock_ttl)
        # Listed after the progress write let go of the lock: if the last chunk's merge
        # found it taken by this write, this request sees every chunk and merges.
        stored = up.stored(meta)
        if len(stored) == meta.total_chunks and self.auto_merge:
            return self._merge(up, meta, extra, arrived)
        return self._answer(up, params, extra, stored)

    def _store_chunk(
        self, up: Upload, params: ChunkParams, received: str, arrived: float
    ) -> ChunkParams | None:
        """Rename a received chunk into place; return the upload's declared sizes, or
        ``None`` when the upload was merged meanwhile (a late duplicate)."""
        assert params.chunk_number is not None
        for _ in range(2):
            meta = up.read_meta(self.files) or self._create_meta(up, params, arrived)
            if meta is None:
                return None
            _check_same_split(meta, params)
            if up.put_chunk(meta, params.chunk_number, received):
                return meta
            # The folder went away meanwhile: merged (the done mark is written before
            # the folder is removed), cancelled or expired.
            if self.completions.done(up, arrived) is not None:
                return None
            self.cancels.check(up, arrived)
        raise ChunkRefused("busy", "The upload changed meanwhile; try again.", status=503)

    # -- per-upload state ----------------------------------------------------------------

    def _create_meta(self, up: Upload, params: ChunkParams, arrived: float) -> ChunkParams | None:
        """Start an upload on its first chunk (quota checked).  ``None`` if it was merged."""
        try:
            with self.files.session_lock(self.store, up.session):
                meta = up.read_meta(self.files)
                if meta is not None:
                    return meta  # a parallel first chunk was quicker
                if self.completions.done(up, arrived) is not None:
                    return None  # merged since we looked: a late duplicate
                self.cancels.check(up, arrived)  # DELETE takes this lock too
                self.files.check_room(up.session, params.total_size, self.session_quota)
                return up.write_meta(self.files, params)
        except QuotaExceeded as exc:
            raise ChunkRefused("quota", str(exc)) from None
        except DiskFull:
            raise disk_full() from None

    # -- merge ---------------------------------------------------------------------------

    def _wait_for_previous(self, up: Upload) -> None:
        """Before a new upload reuses the identifier of a completed one (not a verified
        hash), let the completing request finish: it removes the old chunks under the
        upload's lock (LockTimeout: 503, the client retries)."""
        with StoreLock(self.store, up.lock_name, ttl=self.lock_ttl, wait=PROGRESS_LOCK_WAIT):
            pass

    def _merge_request(
        self, environ: dict[str, Any], extra: list[tuple[str, str]], arrived: float
    ) -> Exchange[Response]:
        session = self._session(environ)  # before a byte of the body
        params = self._params((yield from merge_values(environ)), chunk=False)
        up = self._upload(session, params.identifier)
        self.cancels.check(up, arrived)
        done = self.completions.done(up, arrived) or self._instant(up, params)
        if done is not None:
            return self._answer(up, params, extra, done=done)
        meta = up.read_meta(self.files)
        if meta is None:
            raise ChunkRefused("not_found", "No such upload (it may have expired).", status=404)
        missing = sorted(set(meta.numbers) - set(up.stored(meta)))
        if missing:
            raise ChunkRefused(
                "incomplete", "Some chunks are missing.", status=409, missing=missing[:1000]
            )
        return self._merge(up, meta, extra, arrived)

    def _merge(
        self, up: Upload, meta: ChunkParams, extra: list[tuple[str, str]], arrived: float
    ) -> Response:
        lock = StoreLock(self.store, up.lock_name, ttl=self.lock_ttl, wait=0)
        if not lock.try_acquire():
            # Another request is merging it (its answer or the progress record tells), or
            # writing progress (it merges next: it lists the chunks once it let go).
            body = self._body(up, meta, meta.numbers)
            body["merging"] = True
            return json_response(body, 200, extra)
        with lock:
            done = self.completions.done(up, arrived)
            if done is not None:
                return self._answer(up, meta, extra, done=done)
            stored = up.stored(meta)
            if len(stored) != meta.total_chunks:
                return self._answer(up, meta, extra, stored)
            task = self.start_task(up.session, up.upload_id, "merging", meta.total_size)
            try:
                path, created, digests = join_chunks(
                    self, up, meta, task, lock, hash_identifiers=self.hash_identifiers
                )
            except (ChunkRefused, ProcessingCancelled, FileNotFoundError) as exc:
                # A mismatch, or cancelled meanwhile (a DELETE may have taken the chunks).
                self.cancels.forget(up)
                raise exc if isinstance(exc, ChunkRefused) else cancelled() from None
            except BaseException as exc:
                if is_disk_full(exc):
                    # The record says so; the chunks stay, and the client's retry merges
                    # again once space returns.
                    task.fail(DISK_FULL_MESSAGE, 507)
                    raise disk_full() from None
                raise
            info = FileInfo(
                **self.files.file_fields(path),
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

    def _complete(
        self, up: Upload, info: FileInfo, task: ProcessingTask, *, new_file: bool
    ) -> dict[str, Any]:
        """Hand the file to the app, remember it, and end (or hand over) the record."""
        # "at": requests that arrive later may be a new upload (see _covers).
        done: dict[str, Any] = {"upload_id": up.upload_id, "result": None, "at": time.time()}

        def mark_done(result: dict[str, Any] | None) -> None:
            done["result"] = result
            self.completions.set_done(up, done)

        # Marked before the hook runs: however long it takes (the merge lock may expire),
        # a late chunk or test request finds the upload complete instead of merging again.
        mark_done(None)
        try:
            self.hand_over(info, task, mark_done, new_file=new_file)
        except (UploadRejected, CompletionFailed) as exc:
            self.completions.clear_done(up)
            if isinstance(exc, UploadRejected):
                raise ChunkRefused("rejected", exc.message) from None
            raise ChunkRefused(
                "server_error", "The server could not take the file.", status=500
            ) from None
        self.completions.remember(up.session, info)
        return done

    # -- instant upload ------------------------------------------------------------------

    def _instant(self, up: Upload, params: ChunkParams) -> dict[str, Any] | None:
        """Complete an upload without its bytes when the file is already stored (POST only:
        the first chunk, or ``/merge`` before any chunk)."""
        stored = self.completions.find(up, params)
        if stored is None:
            return None
        found, path = stored
        # The first chunks arrive at once: one of them completes the upload.
        with StoreLock(self.store, up.lock_name, ttl=self.lock_ttl, wait=5):
            done = self.completions.done(up)
            if done is not None:
                return done
            task = self.start_task(up.session, up.upload_id, "instant", 0)
            info = FileInfo(
                **self.files.file_fields(path),
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
            existed = self.files.exists(up.directory)
            record = self.cancels.record(up)
            if record is None or record.state not in (DONE, ERROR):
                # Cancel it (again, after {prefix}/cancel: the client knows from now on).
                self.cancels.tell(up, record)
            self.cancels.forget(up)
        return json_response({"upload_id": up.upload_id, "deleted": existed}, 200, extra)

    # -- answers -------------------------------------------------------------------------

    def _body(self, up: Upload, params: ChunkParams, stored: list[int]) -> dict[str, Any]:
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
        up: Upload,
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
