"""Resumable chunked uploads: the protocol of simple-uploader.js, resumable.js and flow.js.

A WSGI app the middleware mounts under its prefix::

    meter = UploadMeterMiddleware(app, secret_key="...")
    chunks = ChunkUploads(meter, "/var/lib/myapp/uploads", on_complete=store_file)
    meter.mount("/chunks", chunks)      # target: "/uploadmeter/chunks"

The unmodified npm clients work against it with only ``target`` set:

* ``GET`` (test) -- ``200`` + JSON when the tested chunk is stored, ``204`` when it is not
  (the clients then send it; a 404 would abort them).  When the whole file is already
  there (instant upload) every test answers ``200`` with ``{"skipUpload": true, ...}``.
  Answers carry ``uploaded`` (chunk numbers stored), for ``checkChunkUploadedByResponse``.
* ``POST`` (chunk, multipart field ``file`` or ``method: "octet"``) -- stored under a
  temp name, size-checked against the declared sizes, renamed into place; ``200`` + JSON.
  When every chunk is there the file is merged at once.
* ``POST /merge`` -- explicit merge for clients that ask for one.
* ``DELETE`` -- cancel: the chunks are deleted.

Permanent errors use statuses both clients give up on (``permanentErrors`` of
simple-uploader.js ``[404, 415, 500, 501]``, flow.js adds ``413``): ``415`` for any upload
refused (bad or hostile parameters, sizes, quota, hash mismatch), ``404`` for an unknown
upload, ``500`` for a server fault.  ``503`` (store or lock busy) is temporary.

The merge joins chunks in numeric order in one streaming pass that computes MD5 and
SHA-256, checks the identifier when it is an MD5 (32 hex) or SHA-256 (64 hex), or a
declared ``sha256`` parameter, deletes the chunk folder and hands the file to
``on_complete(FileInfo)``.  Progress goes to the session's ordinary progress record (id
in every answer as ``upload_id``), so ``GET {prefix}/progress?id=`` works as for forms.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any, Literal

from werkzeug.datastructures import MultiDict
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge
from werkzeug.formparser import parse_form_data
from werkzeug.wrappers import Request, Response
from werkzeug.wsgi import get_input_stream

from uploadmeter.completion import CompletionFailed, OnComplete, UploadRejected, deliver
from uploadmeter.endpoints import valid_upload_id
from uploadmeter.errors import StoreError
from uploadmeter.filestore import (
    Digests,
    FileInfo,
    FileStore,
    InvalidName,
    clean_filename,
    clean_relative_path,
    digest_name,
)
from uploadmeter.locks import LockLost, LockTimeout, StoreLock
from uploadmeter.processing import ProcessingCancelled, ProcessingTask
from uploadmeter.record import (
    CANCELLED,
    DONE,
    FINISHED,
    PROCESSING,
    UPLOADING,
    FieldProgress,
    UploadRecord,
)
from uploadmeter.responses import NO_STORE, json_response
from uploadmeter.stores import ProgressStore
from uploadmeter.tracker import cancel_key, record_key

if TYPE_CHECKING:
    from uploadmeter.middleware import UploadMeterMiddleware

log = logging.getLogger("uploadmeter")

__all__ = ["ChunkParams", "ChunkUploads", "UploadRejected"]

_INT = re.compile(r"\d{1,18}")
_MD5 = re.compile(r"[0-9a-fA-F]{32}")
_SHA256 = re.compile(r"[0-9a-fA-F]{64}")
_CHUNK_FILE = re.compile(r"(\d{1,9})\.chunk")

_NAMES = {
    "chunk_number": "ChunkNumber",
    "chunk_size": "ChunkSize",
    "current_chunk_size": "CurrentChunkSize",
    "total_size": "TotalSize",
    "identifier": "Identifier",
    "filename": "Filename",
    "relative_path": "RelativePath",
    "total_chunks": "TotalChunks",
}


class _Refused(Exception):
    """An answer other than success; becomes a short JSON error."""

    def __init__(self, status: int, reason: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.reason, self.message, self.extra = status, reason, message, extra

    def response(self, headers: Iterable[tuple[str, str]] = ()) -> Response:
        body = {"error": {"status": self.status, "reason": self.reason, "message": self.message}}
        body.update(self.extra)
        return json_response(body, self.status, headers)


class _LateDuplicate(Exception):
    """A chunk of an upload that was merged while the chunk was being received."""


@dataclass(frozen=True)
class ChunkParams:
    """The protocol parameters of one request, checked."""

    identifier: str
    filename: str
    relative_path: str | None
    total_size: int
    chunk_size: int
    total_chunks: int
    chunk_number: int | None
    current_chunk_size: int | None
    sha256: str | None

    def expected_size(self, number: int) -> int:
        """Size of chunk ``number``: the last one takes the remainder (< 2 x chunk_size)."""
        if number < self.total_chunks:
            return self.chunk_size
        return self.total_size - (self.total_chunks - 1) * self.chunk_size


@dataclass(frozen=True)
class _Upload:
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

    def stored(self, total_chunks: int) -> list[int]:
        """Chunk numbers on disk, ascending (numerically: 2 before 10)."""
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return []
        numbers = []
        for name in names:
            m = _CHUNK_FILE.fullmatch(name)
            if m and 1 <= int(m.group(1)) <= total_chunks:
                numbers.append(int(m.group(1)))
        return sorted(numbers)


class ChunkUploads:
    """The chunk endpoint (WSGI app); mount it with ``meter.mount("/chunks", chunks)``.

    :param meter: the :class:`~uploadmeter.UploadMeterMiddleware` (store, sessions).
    :param files: a :class:`~uploadmeter.filestore.FileStore` or its directory; share one
        with :class:`~uploadmeter.tus.TusUploads` to share quota and finished files.
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
        self.meter = meter
        self.files = files if isinstance(files, FileStore) else FileStore(files)
        self.on_complete = on_complete
        self.max_file_size = max_file_size
        self.session_quota = session_quota
        self.max_chunk_size = max_chunk_size
        self.max_chunks = max_chunks
        self.auto_merge = auto_merge
        self.instant_upload = instant_upload
        self.hash_identifiers = hash_identifiers
        self.file_field = file_field
        self.lock_ttl = lock_ttl

    @property
    def store(self) -> ProgressStore:
        return self.meter.store

    # -- dispatch ------------------------------------------------------------------------

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        extra: list[tuple[str, str]] = []
        try:
            response = self._dispatch(environ, extra)
        except _Refused as refused:
            response = refused.response(extra)
        except (StoreError, LockTimeout, LockLost) as exc:
            log.warning("uploadmeter: chunk request deferred: %s", exc)
            response = _Refused(503, "busy", "The server is busy; try again.").response(extra)
            response.headers["Retry-After"] = "2"
        except Exception:
            log.exception("uploadmeter: chunk request failed")
            response = _Refused(500, "server_error", "The server failed.").response(extra)
        return response(environ, start_response)

    def _dispatch(self, environ: dict[str, Any], extra: list[tuple[str, str]]) -> Response:
        method = environ.get("REQUEST_METHOD", "GET")
        path = environ.get("PATH_INFO", "").rstrip("/")
        self.files.maybe_cleanup(self.store)
        if path == "":
            if method in ("GET", "HEAD"):
                return self._test(environ, extra)
            if method == "POST":
                return self._post_chunk(environ, extra)
            if method == "DELETE":
                return self._delete(environ, extra)
            allow = "GET, HEAD, POST, DELETE"
        elif path == "/merge":
            if method == "POST":
                return self._merge_request(environ, extra)
            allow = "POST"
        else:
            raise _Refused(404, "not_found", "No such chunk endpoint.")
        response = _Refused(405, "method", f"Use {allow}.").response(extra)
        response.headers["Allow"] = allow
        return response

    # -- sessions and names --------------------------------------------------------------

    def _session(
        self, environ: dict[str, Any], extra: list[tuple[str, str]], *, issue: bool
    ) -> str:
        session: str | None
        if issue:
            session, cookie = self.meter.session_for(environ)
            if cookie:
                extra.append(("Set-Cookie", cookie))
        else:
            session = self.meter.cookie.session_of(environ)
        if session is None:
            # Parallel first chunks without a cookie would each start a new session.
            raise _Refused(
                415,
                "no_session",
                "No upload session: load the page from this server first (its cookie "
                "keys the upload).",
            )
        return session

    def _upload(self, session: str, identifier: str) -> _Upload:
        key = digest_name("chunks", session, identifier)
        upload_id = identifier if valid_upload_id(identifier) else "chunks-" + key[:32]
        return _Upload(
            session=session,
            identifier=identifier,
            upload_id=upload_id,
            directory=self.files.upload_dir("partial", session, key),
            key=key,
        )

    # -- parameters ----------------------------------------------------------------------

    def _params(self, values: MultiDict[str, str], *, chunk: bool) -> ChunkParams:
        def get(name: str) -> str | None:
            suffix = _NAMES[name]
            for key in (suffix[0].lower() + suffix[1:], "resumable" + suffix, "flow" + suffix):
                value = values.get(key)
                if value is not None:
                    return value
            return None

        def integer(name: str, *, required: bool = True) -> int | None:
            value = get(name)
            label = _NAMES[name][0].lower() + _NAMES[name][1:]
            if value is None:
                if required:
                    raise _Refused(415, "bad_parameter", f"Missing parameter {label}.")
                return None
            if not _INT.fullmatch(value):
                raise _Refused(415, "bad_parameter", f"Parameter {label} is not a number.")
            return int(value)

        identifier = get("identifier")
        if not identifier or len(identifier) > 255 or re.search(r"[\x00-\x1f\x7f]", identifier):
            raise _Refused(
                415, "bad_identifier", "The identifier must be 1-255 printable characters."
            )
        try:
            filename = clean_filename(get("filename") or "")
            relative = get("relative_path")
            relative_path = clean_relative_path(relative) if relative else None
        except InvalidName as exc:
            raise _Refused(415, "bad_filename", str(exc)) from None
        total_size = integer("total_size")
        chunk_size = integer("chunk_size")
        total_chunks = integer("total_chunks")
        assert total_size is not None and chunk_size is not None and total_chunks is not None
        if total_size > self.max_file_size:
            raise _Refused(
                415,
                "too_large",
                f"The file is larger than this server accepts ({self.max_file_size} bytes).",
            )
        if not 1 <= chunk_size <= self.max_chunk_size:
            raise _Refused(
                415, "bad_chunk_size", f"chunkSize must be 1 to {self.max_chunk_size} bytes."
            )
        # Clients split with floor (last chunk up to 2 x chunkSize) or, with
        # forceChunkSize, ceil (last chunk smaller); anything else is not a real split.
        floor = max(total_size // chunk_size, 1)
        ceil = max(-(-total_size // chunk_size), 1)
        if total_chunks not in (floor, ceil) or total_chunks > self.max_chunks:
            raise _Refused(
                415,
                "bad_total_chunks",
                f"totalChunks must be {floor}"
                + (f" or {ceil}" if ceil != floor else "")
                + f" for this size, and at most {self.max_chunks}.",
            )
        number = integer("chunk_number", required=chunk)
        if number is not None and not 1 <= number <= total_chunks:
            raise _Refused(415, "bad_chunk_number", "chunkNumber is out of range.")
        current = integer("current_chunk_size", required=False)
        sha256 = values.get("sha256")
        if sha256 is not None and not _SHA256.fullmatch(sha256):
            raise _Refused(415, "bad_parameter", "sha256 must be 64 hex digits.")
        params = ChunkParams(
            identifier=identifier,
            filename=filename,
            relative_path=relative_path,
            total_size=total_size,
            chunk_size=chunk_size,
            total_chunks=total_chunks,
            chunk_number=number,
            current_chunk_size=current,
            sha256=sha256.lower() if sha256 else None,
        )
        if number is not None and current is not None and current != params.expected_size(number):
            raise _Refused(
                415, "size_mismatch", "currentChunkSize does not match the declared sizes."
            )
        return params

    # -- GET: test -----------------------------------------------------------------------

    def _test(self, environ: dict[str, Any], extra: list[tuple[str, str]]) -> Response:
        values = Request(environ).args
        params = self._params(values, chunk=False)
        session = self._session(environ, extra, issue=True)
        up = self._upload(session, params.identifier)
        self._honour_cancel(up)
        done = self._done(up)
        if done is None:
            done = self._instant(up, params)
        if done is not None:
            return self._answer(up, params, list(range(1, params.total_chunks + 1)), extra, done)
        meta = self._read_meta(up)
        stored = up.stored(params.total_chunks) if meta is not None else []
        if meta is not None and len(stored) == meta.total_chunks and self.auto_merge:
            # All there but never merged (the merging worker died): merge now, or the
            # client would call the file complete on the strength of these tests.
            return self._merge(up, meta, extra)
        if params.chunk_number is not None and params.chunk_number not in stored:
            return Response(status=204, headers=[*NO_STORE.items(), *extra])
        return self._answer(up, params, stored, extra)

    # -- POST: one chunk -----------------------------------------------------------------

    def _post_chunk(self, environ: dict[str, Any], extra: list[tuple[str, str]]) -> Response:
        values, received_path, received = self._receive(environ)
        tmp: str | None = received_path
        try:
            session = self._session(environ, extra, issue=False)
            params = self._params(values, chunk=True)
            number = params.chunk_number
            assert number is not None
            if received != params.expected_size(number):
                raise _Refused(
                    415,
                    "size_mismatch",
                    f"Chunk {number} has {received} bytes; the declared sizes say "
                    f"{params.expected_size(number)}.",
                )
            up = self._upload(session, params.identifier)
            self._honour_cancel(up)
            done = self._done(up)
            if done is not None:  # a late duplicate of a finished upload
                all_chunks = list(range(1, params.total_chunks + 1))
                return self._answer(up, params, all_chunks, extra, done)
            for attempt in (1, 2):
                try:
                    meta = self._ensure_meta(up, params)
                except _LateDuplicate:
                    all_chunks = list(range(1, params.total_chunks + 1))
                    return self._answer(up, params, all_chunks, extra, self._done(up))
                try:
                    os.replace(received_path, up.chunk_path(number))
                    break
                except FileNotFoundError:
                    # The folder went away meanwhile: merged (the done mark is written
                    # before the folder is removed), cancelled or expired.
                    if attempt == 2:
                        raise
                    done = self._done(up)
                    if done is not None:
                        all_chunks = list(range(1, params.total_chunks + 1))
                        return self._answer(up, params, all_chunks, extra, done)
            tmp = None
        finally:
            if tmp is not None:
                self.files.discard(tmp)
        stored = up.stored(meta.total_chunks)
        self._write_progress(up, meta, stored)
        if len(stored) == meta.total_chunks and self.auto_merge:
            return self._merge(up, meta, extra)
        return self._answer(up, params, stored, extra)

    def _receive(self, environ: dict[str, Any]) -> tuple[MultiDict[str, str], str, int]:
        """Read the request: ``(parameters, temp file with the chunk, its size)``."""
        limit = 2 * self.max_chunk_size + 64 * 1024
        args = Request(environ).args
        content_type = environ.get("CONTENT_TYPE", "")
        created: list[tuple[IO[bytes], str]] = []

        def factory(*_: Any, **__: Any) -> IO[bytes]:
            path, f = self.files.temp_file()
            created.append((f, path))
            return f

        try:
            if content_type.lower().startswith("multipart/form-data"):
                _, form, files = parse_form_data(
                    environ,
                    stream_factory=factory,
                    max_content_length=limit,
                    max_form_memory_size=500_000,  # also bounds its read buffer: not lower
                    max_form_parts=32,
                    silent=False,
                )
                storage = files.get(self.file_field)
                if storage is None:
                    raise _Refused(
                        415, "no_file", f"The request has no file field {self.file_field!r}."
                    )
                path = next(p for f, p in created if f is storage.stream)
                values: MultiDict[str, str] = MultiDict(args)
                for key, value in form.items(multi=True):
                    values.setlist(key, [value])  # the body's values win over the query's
            else:
                # method: "octet": the body is the chunk, the parameters are in the query.
                declared = environ.get("CONTENT_LENGTH")
                if declared and declared.isdigit() and int(declared) > limit:
                    raise RequestEntityTooLarge()
                stream = get_input_stream(environ, max_content_length=None if declared else limit)
                factory()
                path = created[0][1]
                f = created[0][0]
                while block := stream.read(1024 * 1024):
                    f.write(block)
                values = MultiDict(args)
            for f, _ in created:
                f.close()
            size = os.path.getsize(path)
        except _Refused:
            _discard_all(self.files, created)
            raise
        except RequestEntityTooLarge:
            _discard_all(self.files, created)
            raise _Refused(
                415, "too_large", f"A chunk request may hold at most {limit} bytes."
            ) from None
        except (HTTPException, ValueError, OSError) as exc:
            # The client went away mid-body, or the body is not valid multipart.
            _discard_all(self.files, created)
            raise _Refused(
                415, "bad_body", "The chunk request body is incomplete or invalid."
            ) from exc
        for _, other in created:
            if other != path:
                self.files.discard(other)
        return values, path, size

    # -- per-upload state ----------------------------------------------------------------

    def _read_meta(self, up: _Upload) -> ChunkParams | None:
        data = self.files.read_json(up.meta_path)
        if data is None:
            return None
        return ChunkParams(
            identifier=data["identifier"],
            filename=data["filename"],
            relative_path=data.get("relative_path"),
            total_size=data["total_size"],
            chunk_size=data["chunk_size"],
            total_chunks=data["total_chunks"],
            chunk_number=None,
            current_chunk_size=None,
            sha256=data.get("sha256"),
        )

    def _ensure_meta(self, up: _Upload, params: ChunkParams) -> ChunkParams:
        """The upload's declared sizes, created on its first chunk (quota checked)."""
        meta = self._read_meta(up)
        if meta is None:
            lock = StoreLock(
                self.store, "files-session:" + self.files.session_key(up.session), wait=10
            )
            with lock:
                meta = self._read_meta(up)
                if meta is None and self._done(up) is not None:
                    # Merged between our check and now; a late duplicate must not
                    # start the upload over.
                    raise _LateDuplicate()
                if meta is None:
                    self._check_room(up.session, params.total_size)
                    os.makedirs(up.directory, exist_ok=True)
                    data = {
                        "identifier": params.identifier,
                        "upload_id": up.upload_id,
                        "filename": params.filename,
                        "relative_path": params.relative_path,
                        "total_size": params.total_size,
                        "chunk_size": params.chunk_size,
                        "total_chunks": params.total_chunks,
                        "sha256": params.sha256,
                        "created": time.time(),
                    }
                    self.files.write_json(up.meta_path, data, exclusive=True)
                    # A new upload: no cancel flag of an earlier one with this id applies.
                    self.store.delete(cancel_key(up.session, up.upload_id))
                    meta = self._read_meta(up)
                    assert meta is not None
        if (meta.total_size, meta.chunk_size, meta.total_chunks) != (
            params.total_size,
            params.chunk_size,
            params.total_chunks,
        ):
            raise _Refused(
                415,
                "conflict",
                "This identifier is already uploading with other sizes; use a new identifier.",
            )
        return meta

    def _check_room(self, session: str, size: int) -> None:
        reserved = self.files.reserved_bytes(session)
        if reserved + size > self.session_quota:
            raise _Refused(
                415,
                "quota",
                f"This session already has {reserved} bytes of unfinished uploads; "
                f"the limit is {self.session_quota}.",
            )
        if self.files.free_space() < size:
            raise _Refused(507, "disk_full", "The server has no room for this file now.")

    def _honour_cancel(self, up: _Upload) -> None:
        """The user cancelled through ``{prefix}/cancel``: drop the chunks, refuse once."""
        flag = cancel_key(up.session, up.upload_id)
        if self.store.get(flag) is None:
            return
        self.files.remove_tree(up.directory)
        self.store.delete(flag)
        raise _Refused(415, "cancelled", "The upload was cancelled.")

    def _write_progress(self, up: _Upload, meta: ChunkParams, stored: list[int]) -> None:
        received = sum(meta.expected_size(n) for n in stored)
        key = record_key(up.session, up.upload_id)
        text = self.store.get(key)
        record = UploadRecord.loads(text) if text is not None else None
        if record is None or record.state in FINISHED:
            if self._done(up) is not None:
                return  # a duplicate that raced the merge: the upload is complete
            record = UploadRecord(id=up.upload_id)
        elif record.state == PROCESSING:
            return  # a late duplicate while another worker merges: leave its record
        elif record.state == UPLOADING:
            # Workers store chunks in parallel; a slower one must not move the bar back.
            received = max(received, record.bytes_received)
        record.state = UPLOADING
        record.content_length = meta.total_size
        record.bytes_received = received
        record.updated_at = time.time()
        state = DONE if len(stored) == meta.total_chunks else UPLOADING
        record.fields = [FieldProgress("file", meta.filename, None, received, state)]
        record.field_count = 1
        settings = self.meter.settings
        self.store.set(key, record.dumps(), settings.stale_after + settings.ttl)

    # -- completion ----------------------------------------------------------------------

    def _done_key(self, up: _Upload) -> str:
        return "chunks-done:" + up.key

    def _done(self, up: _Upload) -> dict[str, Any] | None:
        text = self.store.get(self._done_key(up))
        return None if text is None else dict(json.loads(text))

    def _merge_request(self, environ: dict[str, Any], extra: list[tuple[str, str]]) -> Response:
        request = Request(environ)
        values: MultiDict[str, str] = MultiDict(request.args)
        if request.is_json:
            body = request.get_json(silent=True)
            if isinstance(body, dict):
                for key, value in body.items():
                    values.setlist(key, [str(value)])
        else:
            for key, value in request.form.items(multi=True):
                values.setlist(key, [value])
        params = self._params(values, chunk=False)
        session = self._session(environ, extra, issue=False)
        up = self._upload(session, params.identifier)
        self._honour_cancel(up)
        done = self._done(up)
        if done is not None:
            return self._answer(up, params, list(range(1, params.total_chunks + 1)), extra, done)
        meta = self._read_meta(up)
        if meta is None:
            raise _Refused(404, "not_found", "No such upload (it may have expired).")
        stored = up.stored(meta.total_chunks)
        missing = sorted(set(range(1, meta.total_chunks + 1)) - set(stored))
        if missing:
            raise _Refused(409, "incomplete", "Some chunks are missing.", missing=missing[:1000])
        return self._merge(up, meta, extra)

    def _merge(self, up: _Upload, meta: ChunkParams, extra: list[tuple[str, str]]) -> Response:
        lock = StoreLock(self.store, "chunks-merge:" + up.key, ttl=self.lock_ttl, wait=0)
        try:
            lock.acquire()
        except LockTimeout:
            # Another request is merging it; its answer or the progress record tells.
            body = self._body(up, meta, list(range(1, meta.total_chunks + 1)))
            body.update(complete=False, merging=True)
            return json_response(body, 200, extra)
        try:
            done = self._done(up)
            if done is not None:
                return self._answer(up, meta, list(range(1, meta.total_chunks + 1)), extra, done)
            stored = up.stored(meta.total_chunks)
            if len(stored) != meta.total_chunks:
                return self._answer(up, meta, stored, extra)
            task = ProcessingTask(
                self.store,
                up.session,
                up.upload_id,
                "merging",
                total=meta.total_size,
                settings=self.meter.settings,
            ).start()
            out_path, out = self.files.temp_file()
            try:
                with out:

                    def progress(done: int) -> None:
                        task.update(done)
                        lock.refresh(every=self.lock_ttl / 3)

                    digests = self.files.concatenate(
                        (up.chunk_path(n) for n in range(1, meta.total_chunks + 1)),
                        out,
                        progress,
                    )
            except ProcessingCancelled:
                self.files.discard(out_path)
                self.files.remove_tree(up.directory)
                raise _Refused(415, "cancelled", "The upload was cancelled.") from None
            except BaseException:
                self.files.discard(out_path)
                raise
            problem = self._verify(meta, digests)
            if problem is not None:
                self.files.discard(out_path)
                self.files.remove_tree(up.directory)
                task.fail(problem, 415)
                raise _Refused(415, "checksum_mismatch", problem)
            path = self.files.adopt(out_path, digests.sha256)
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
                done = self._complete(up, info, task)
            finally:
                # After the done mark: a late duplicate finding no folder then finds it.
                self.files.remove_tree(up.directory)
            return self._answer(up, meta, list(range(1, meta.total_chunks + 1)), extra, done)
        finally:
            lock.release()

    def _verify(self, meta: ChunkParams, digests: Digests) -> str | None:
        if digests.size != meta.total_size:
            return f"The merged file has {digests.size} bytes, not {meta.total_size}."
        if meta.sha256 and meta.sha256 != digests.sha256:
            return "The merged file does not match its declared SHA-256; upload it again."
        if self.hash_identifiers:
            ident = meta.identifier
            if _MD5.fullmatch(ident) and ident.lower() != digests.md5:
                return "The merged file does not match its MD5 identifier; upload it again."
            if _SHA256.fullmatch(ident) and ident.lower() != digests.sha256:
                return "The merged file does not match its SHA-256 identifier; upload it again."
        return None

    def _complete(self, up: _Upload, info: FileInfo, task: ProcessingTask) -> dict[str, Any]:
        """Hand the file to the app, remember it, and end (or hand over) the record."""
        done: dict[str, Any] = {"upload_id": up.upload_id, "result": None}

        def mark_done(result: dict[str, Any] | None) -> None:
            done["result"] = result
            self.store.set(
                self._done_key(up), json.dumps(done, ensure_ascii=False), self.meter.settings.ttl
            )

        # Marked before the hook runs: however long it takes (the merge lock may expire),
        # a late chunk or test request finds the upload complete instead of merging again.
        mark_done(None)
        try:
            deliver(info, task, self.on_complete, mark_done)
        except (UploadRejected, CompletionFailed) as exc:
            self.store.delete(self._done_key(up))
            if isinstance(exc, UploadRejected):
                raise _Refused(415, "rejected", exc.message) from None
            raise _Refused(500, "server_error", "The server could not take the file.") from None
        self._remember(up.session, info)
        return done

    # -- instant upload ------------------------------------------------------------------

    def _index_ttl(self) -> float:
        keep = self.files.keep_completed
        return keep if keep is not None else 30 * 24 * 3600.0

    def _remember(self, session: str, info: FileInfo) -> None:
        if self.instant_upload is None:
            return
        value = json.dumps({"sha256": info.sha256, "md5": info.md5, "size": info.size})
        scope = self.files.session_key(session)
        ttl = self._index_ttl()
        self.store.set(f"chunks-have:{scope}:md5:{info.md5}", value, ttl)
        self.store.set(f"chunks-have:{scope}:sha256:{info.sha256}", value, ttl)
        if self.instant_upload == "global":
            self.store.set(f"chunks-have:global:sha256:{info.sha256}", value, ttl)

    def _instant(self, up: _Upload, params: ChunkParams) -> dict[str, Any] | None:
        """Complete an upload without its bytes when the file is already stored."""
        if self.instant_upload is None or not self.hash_identifiers:
            return None
        ident = params.identifier.lower()
        if _MD5.fullmatch(ident):
            keys = [("md5", ident, False)]
        elif _SHA256.fullmatch(ident):
            keys = [("sha256", ident, False), ("sha256", ident, True)]
        else:
            return None
        scope = self.files.session_key(up.session)
        found = None
        for algo, digest, is_global in keys:
            if is_global and self.instant_upload != "global":
                continue
            text = self.store.get(f"chunks-have:{'global' if is_global else scope}:{algo}:{digest}")
            if text is not None:
                found = json.loads(text)
                break
        if found is None or found["size"] != params.total_size:
            return None
        if params.sha256 and params.sha256 != found["sha256"]:
            return None
        path = self.files.existing(found["sha256"], found["size"])
        if path is None:
            return None
        # Tests of several chunks arrive at once: one of them completes the upload.
        claim = StoreLock(self.store, "chunks-instant:" + up.key, ttl=self.lock_ttl, wait=5)
        with claim:
            done = self._done(up)
            if done is not None:
                return done
            task = ProcessingTask(
                self.store,
                up.session,
                up.upload_id,
                "instant",
                total=0,
                settings=self.meter.settings,
            ).start()
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
            return self._complete(up, info, task)

    # -- DELETE: cancel ------------------------------------------------------------------

    def _delete(self, environ: dict[str, Any], extra: list[tuple[str, str]]) -> Response:
        values = Request(environ).args
        identifier = (
            values.get("identifier")
            or values.get("resumableIdentifier")
            or values.get("flowIdentifier")
        )
        if not identifier or len(identifier) > 255:
            raise _Refused(415, "bad_identifier", "Missing or invalid identifier.")
        session = self._session(environ, extra, issue=False)
        up = self._upload(session, identifier)
        existed = os.path.isdir(up.directory)
        self.files.remove_tree(up.directory)
        self.store.delete(self._done_key(up))
        key = record_key(up.session, up.upload_id)
        text = self.store.get(key)
        if text is not None:
            record = UploadRecord.loads(text)
            if record.state not in FINISHED:
                record.state = CANCELLED
                record.finished_at = record.updated_at = time.time()
                record.error = {"status": 499, "message": "The upload was cancelled."}
                self.store.set(key, record.dumps(), self.meter.settings.ttl)
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
        stored: list[int],
        extra: list[tuple[str, str]],
        done: dict[str, Any] | None = None,
    ) -> Response:
        body = self._body(up, params, stored)
        if done is not None:
            result = done.get("result") or {}
            body.update(skipUpload=True, complete=True, result=result, url=result.get("url"))
        return json_response(body, 200, extra)


def _discard_all(files: FileStore, created: list[tuple[IO[bytes], str]]) -> None:
    for f, path in created:
        f.close()
        files.discard(path)
