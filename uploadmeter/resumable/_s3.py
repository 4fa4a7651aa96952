"""Resumable uploads on S3-compatible object storage, for several machines.

::

    import boto3
    from uploadmeter import S3Storage
    from uploadmeter.resumable import ChunkUploads, TusUploads

    storage = S3Storage(boto3.client("s3", endpoint_url=...), bucket="uploads", prefix="um/")
    meter.mount("/chunks", ChunkUploads(meter, storage, on_complete=on_complete))
    meter.mount("/tus", TusUploads(meter, storage, on_complete=on_complete))

``pip install 'uploadmeter[s3]'`` brings boto3; uploadmeter never imports it (you pass the
client).  Every app server shares the bucket and the progress store (Redis): a chunk or a
PATCH may reach any of them, and none needs a shared disk.  Each server only spools the
request it is reading in a local temp directory (``spool_dir``).

How uploads map onto S3 (the design of tusd's ``s3store``)::

    <prefix>partial/<session>/<upload>/meta.json          a chunked upload's declared file
    <prefix>partial/<session>/<upload>/.multipart.json    its multipart upload (key, id)
    <prefix>partial/<session>/<upload>/chunks/<n>         small chunks waiting for their part
    <prefix>tus/<session>/<upload>/info.json              a tus upload's state
    <prefix>tus/<session>/<upload>/.multipart.json        its multipart upload
    <prefix>tus/<session>/<upload>/data.part.<N>          bytes not yet a whole part (< part_size)
    <prefix>blobs/<random>                                finished files (multipart targets)
    <prefix>files/<sha256>.json                           the blob holding these bytes
    <prefix>refs/<sha256>/<upload>                        one marker per upload referencing it

* **Chunks.**  S3 parts must be >= 5 MiB except the last, chunks are often 1 MiB.  Chunk
  ``n`` belongs to part ``(n - 1) // g + 1`` where ``g = ceil(part_size / chunk_size)``:
  the part number is a function of the chunk number, so a chunk sent twice (a retry, another
  server) lands in the same part, never in two.  With ``g == 1`` a chunk is uploaded as its
  part directly; otherwise it waits as ``chunks/<n>`` until its group is complete.  Which
  chunk objects are stored is noted in the progress store (a note per chunk, a count per
  group), so a chunk costs its ``put_object`` and a few store calls, no listing and no
  lock; the request whose note makes the group whole takes the part's store lock,
  fetches the group's chunk objects at once (8 threads), uploads the group as the
  part and deletes them.  A chunk is stored while its object
  or its part exists; a chunk that is its own part is stored once (a copy sent again
  meanwhile changes nothing).  Each stored part is also noted in the progress store
  (under the multipart upload's id), so answering which chunks are stored -- after every
  chunk -- costs store reads, not a ``list_parts`` (which Swift answers slower as parts
  accumulate); the merge still lists the parts in S3.
* **tus.**  A PATCH spools to local disk (unnamed temp files in ``spool_dir``); each
  full ``part_size`` is uploaded as the next part by a background thread (up to
  ``upload_concurrency`` at once) while the PATCH reads on: at most ``part_size x
  (upload_concurrency + 1)`` bytes spooled.  The whole file's MD5 and SHA-256 are
  computed as the body streams in; each part is read back only by botocore (its signed
  SHA-256, then the send).  What is left when the body ends (less than a part) is kept
  as the object ``data.part.<N>`` (``N``: the part it will start), read back by the next
  PATCH on any server.  The offset is the parts' sizes
  plus that object's; a PATCH answers only once its parts and that object are stored.
* **Parts are checked by the store.**  botocore signs each part's SHA-256 (SigV4,
  ``x-amz-content-sha256``), which S3 and Swift verify; a client configured without
  payload signing gets each part's Content-MD5 added instead.  One check per part, never
  two (each costs a hash of every byte).
* **Merge / verification.**  ``complete_multipart_upload`` makes the object, whose MD5
  and SHA-256 are then known or computed without the file in memory.  Chunks of
  ``part_size`` or more: each one that arrives in order is hashed as it is stored, the
  hash state kept in the progress store (``rehashes``, the ``s3`` extra: hash states
  another process resumes), so any server can take the next chunk; a chunk ahead of its
  turn waits for the one before (at most 2 s: parallel chunks of one client finish close
  together), and the merge hashes what was not hashed in order with one range GET from
  there (1 MiB blocks).  Smaller chunks are hashed the same way, a part at a time, by
  the request that makes the part.  Costs in reads of the file: chunks that came in
  order (the npm clients' default of 3 at a time included), 0 -- a size check -- plus,
  for chunks smaller than a part, the one read that makes the parts (and one more write:
  chunk objects, then parts); others, the part of the file from the first chunk not
  hashed in order (without ``rehashes``: 1).
  tus: an upload whose every byte reached one process (one PATCH), 0 -- hashed as it
  streamed to S3; other tus uploads, 1 (one streaming GET).
* **Deferred length** (``creation-defer-length``).  Until the length is declared every
  PATCH keeps its tail as ``data.part.<N>``; the PATCH that declares it may bring no
  bytes, so completing first makes that object the last part (read and uploaded: it is
  less than a part).
* **Concatenation** (tus ``concatenation``, tus-js-client's ``parallelUploads``).  Each
  finished partial upload is completed into its own object (kept until the partial
  upload is deleted, which the final upload does: a retried join starts from there).
  The final blob's parts are copied inside the store (``UploadPartCopy`` with a byte
  range) wherever one range of one object can be a part (>= 5 MiB, or the last part);
  partial uploads under 5 MiB are read with the neighbouring bytes and uploaded as parts
  of at least ``part_size``.  Verification: one streaming GET of the joined object (one
  read of the file), plus one read of the bytes that were joined through this process.
  A failed join aborts its multipart upload -- when the store is down, at the next join
  in this process, or :meth:`S3Storage.cleanup` after ``temp_ttl``.
* **Dedupe with reference counts.**  ``files/<sha256>.json`` names the one blob with those
  bytes; a second upload of them deletes its own blob.  Every upload handed to
  ``on_complete`` adds a marker under ``refs/<sha256>/``; :meth:`S3Storage.release` removes
  one, and the blob (and its index) is deleted when no marker is left.  Changes of one
  hash's references run under a store lock.
  An upload that found the file (:meth:`S3Storage.adopt`, an instant upload's lookup)
  holds a *claim* in the index until its reference is written: a ``release`` in between
  leaves the file (claims lapse after ``lock_ttl``; then cleanup deletes what stays
  unreferenced).
* **Clean-up.**  A cancelled, expired or abandoned upload's objects are deleted and its
  multipart upload aborted (:meth:`S3Storage.remove_tree`, :meth:`S3Storage.cleanup`), so
  ``list_multipart_uploads`` ends empty.
* **Faults.**  Connection errors, throttling and 5xx answers raise
  :class:`~uploadmeter.exceptions.ObjectStoreError` (a temporary
  :class:`~uploadmeter.exceptions.StoreError`, the same class downloads of S3 objects
  raise): the chunk endpoint answers ``503`` +
  ``Retry-After``, tus ``503`` + ``Retry-After`` (tus-js-client retries), nothing is
  recorded as stored that S3 did not keep, and a retry after the fault completes the upload.

Swift's ``s3api`` and older S3 servers do not take boto3's default flexible checksums over
plain HTTP: create the client with ``botocore.config.Config(request_checksum_calculation=
"when_required", response_checksum_validation="when_required")``.
"""

from __future__ import annotations

import base64
import concurrent.futures
import contextlib
import hashlib
import importlib
import importlib.metadata
import itertools
import json
import logging
import math
import os
import queue
import re
import shutil
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import IO, Any

from uploadmeter.core._locks import StoreLock
from uploadmeter.core._s3_errors import MISSING, TEMPORARY, s3_error_kind
from uploadmeter.exceptions import ObjectStoreError, StoreError, _ObjectMissing
from uploadmeter.resumable._storage import (
    BLOCK,
    CleanupStats,
    DataWriter,
    Digests,
    FileInfo,
    Storage,
    digest_name,
)
from uploadmeter.stores._base import ProgressStore

log = logging.getLogger("uploadmeter")

__all__ = ["S3Storage"]

MIN_PART = 5 * 1024 * 1024  # S3's smallest part (all but the last)
_NOTED_PARTS = 256  # beyond: one list_parts beats as many store reads
_MULTIPART = ".multipart.json"
_CHUNK_KEY = re.compile(r".*/chunks/(\d{1,9})")
_PENDING = re.compile(r".*/data\.part\.(\d{1,5})")
# How long a chunk that arrived before the one hashed next waits for it (see
# S3Storage._hash_in_order); the merge reads back what was not hashed in order.
_HASH_WAIT = 2.0
_HASH_POLL = 0.01
_IO_THREADS = 8  # S3 calls of one request at once (see S3Storage._pool)

try:  # the s3 extra: MD5 and SHA-256 whose state another process can resume
    _rehashes: Any = importlib.import_module("rehashes")
    _REHASHES = importlib.metadata.version("rehashes")
except ImportError:  # pragma: no cover - then every merge reads its object back
    _rehashes, _REHASHES = None, ""


class S3Storage(Storage):
    """Resumable uploads in an S3 bucket (see the module documentation).

    :param client: a boto3 S3 client (``boto3.client("s3", endpoint_url=...)``).
    :param bucket: the bucket (it must exist).
    :param prefix: prepended to every key (``"uploads/"``).
    :param part_size: bytes per multipart part (>= 5 MiB); a tus PATCH spools at most this
        much locally before uploading it.
    :param spool_dir: local directory for request bodies being received (default: a new
        private temp directory).  Never shared between machines.
    :param expire_after: seconds an unfinished upload may stay idle before cleanup.
    :param cleanup_interval: :meth:`maybe_cleanup` runs at most this often (all processes).
    :param temp_ttl: seconds after which a local spool file left by a crash is deleted.
    :param upload_concurrency: parts one tus PATCH uploads at once while it reads on (each
        spooled on local disk: at most ``part_size x (upload_concurrency + 1)`` there).
    :param lock_ttl: seconds a part's or a hash's lock outlives a crashed holder.
    :param store: the progress store its locks live in; the endpoints it is given to set
        it, so pass it only to use :meth:`release` apart from them.
    """

    keep_completed: float | None = None  # finished files live as long as references do

    def __init__(
        self,
        client: Any,
        *,
        bucket: str,
        prefix: str = "",
        part_size: int = 8 * 1024 * 1024,
        spool_dir: str | os.PathLike[str] | None = None,
        expire_after: float = 24 * 3600.0,
        cleanup_interval: float = 300.0,
        temp_ttl: float = 6 * 3600.0,
        upload_concurrency: int = 3,
        lock_ttl: float = 60.0,
        store: ProgressStore | None = None,
    ) -> None:
        super().__init__()
        self._store = store
        if part_size < MIN_PART:
            raise ValueError(f"part_size must be at least {MIN_PART} bytes")
        if prefix.startswith("/") or ".." in prefix.split("/"):
            raise ValueError(f"not a key prefix: {prefix!r}")
        self.client = client
        self._signs_payloads = _signs_payloads(client)
        self.bucket = bucket
        self.prefix = prefix
        self.part_size = part_size
        self.upload_concurrency = max(1, upload_concurrency)
        self.expire_after = expire_after
        self.cleanup_interval = cleanup_interval
        self.temp_ttl = temp_ttl
        self.lock_ttl = lock_ttl
        self.spool_dir = os.path.abspath(
            os.fspath(spool_dir) if spool_dir is not None else tempfile.mkdtemp("-uploadmeter")
        )
        os.makedirs(self.spool_dir, exist_ok=True)
        self.partial_root = prefix + "partial"
        self.tus_root = prefix + "tus"
        # Hashes of tus uploads this process received from their first byte, by location.
        self._hashes: dict[str, _Hashes] = {}
        self._chunk_states: dict[str, dict[str, Any]] = {}
        # Parts this process saw noted, by note prefix (which names the multipart upload:
        # a part once stored stays stored while its upload lives).
        self._parts_seen: dict[str, set[int]] = {}
        # Multipart uploads of joins that failed while the store was down: aborted later.
        self._orphans: list[dict[str, Any]] = []
        self._io_pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._pool_pid = 0
        self._pool_lock = threading.Lock()

    @property
    def cleanup_name(self) -> str:
        return f"s3:{self.bucket}/{self.prefix}"

    # -- calls ---------------------------------------------------------------------------

    def _call(self, operation: str, **kwargs: Any) -> Any:
        """One S3 call: missing -> :class:`_ObjectMissing`, temporary trouble ->
        :class:`ObjectStoreError`; anything else propagates (a 500: a bug)."""
        try:
            return getattr(self.client, operation)(Bucket=self.bucket, **kwargs)
        except Exception as exc:
            raise _translate(exc, operation) from exc

    def _lock(self, name: str) -> StoreLock:
        if self._store is None:
            raise RuntimeError("S3Storage needs a progress store: pass it to an endpoint")
        name = "s3:" + digest_name(self.cleanup_name, name)
        return StoreLock(self._store, name, ttl=self.lock_ttl)

    def _get_bytes(self, key: str) -> bytes | None:
        try:
            body = self._call("get_object", Key=key)["Body"]
            with _reading(key):
                return bytes(body.read())
        except _ObjectMissing:
            return None

    def _put_file(self, key: str, path: str) -> None:
        with open(path, "rb") as f:
            self._put(key, f)

    def _put(self, key: str, body: IO[bytes]) -> None:
        """Store ``body`` (a seekable file, read from its start) as the object ``key``."""
        size = body.seek(0, os.SEEK_END)
        body.seek(0)
        self._call("put_object", Key=key, Body=body, ContentLength=size)

    def _delete(self, key: str) -> None:
        with contextlib.suppress(_ObjectMissing):
            self._call("delete_object", Key=key)

    def _list(self, prefix: str) -> Iterator[dict[str, Any]]:
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"Prefix": prefix}
            if token:
                kwargs["ContinuationToken"] = token
            page = self._call("list_objects_v2", **kwargs)
            yield from page.get("Contents", [])
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return

    def _parts(self, state: Mapping[str, Any]) -> dict[int, int]:
        """The parts stored: ``{part number: size}``."""
        parts: dict[int, int] = {}
        marker = 0
        while True:
            page = self._call(
                "list_parts", Key=state["key"], UploadId=state["id"], PartNumberMarker=marker
            )
            for part in page.get("Parts", []):
                parts[int(part["PartNumber"])] = int(part["Size"])
            if not page.get("IsTruncated"):
                return parts
            marker = int(page["NextPartNumberMarker"])

    def _upload_part(self, state: Mapping[str, Any], number: int, body: IO[bytes]) -> str:
        """Upload part ``number`` from a seekable file (read from its start): its ETag.

        The store checks every part's bytes: botocore signs each body's SHA-256 with
        SigV4 (``x-amz-content-sha256``, which S3 and Swift verify) -- unless the
        client's configuration turns payload signing off: then the part carries its
        Content-MD5, computed here (one more read of the part).  Never both: either
        check costs one hash of every byte."""
        size = body.seek(0, os.SEEK_END)
        body.seek(0)
        extra: dict[str, str] = {}
        if not self._signs_payloads:
            md5 = hashlib.md5(usedforsecurity=False)
            while block := body.read(BLOCK):
                md5.update(block)
            body.seek(0)
            extra["ContentMD5"] = base64.b64encode(md5.digest()).decode()
        result = self._call(
            "upload_part",
            Key=state["key"],
            UploadId=state["id"],
            PartNumber=number,
            Body=body,
            ContentLength=size,
            **extra,
        )
        return str(result["ETag"])

    def _upload_part_file(self, state: Mapping[str, Any], number: int, path: str) -> str:
        with open(path, "rb") as f:
            return self._upload_part(state, number, f)

    def _complete(self, state: Mapping[str, Any]) -> None:
        parts = self._call("list_parts", Key=state["key"], UploadId=state["id"], MaxParts=10000)
        listed = [
            {"PartNumber": p["PartNumber"], "ETag": p["ETag"]} for p in parts.get("Parts", [])
        ]
        if not listed:  # an empty file: S3 completes no multipart upload without parts
            self._call("abort_multipart_upload", Key=state["key"], UploadId=state["id"])
            self._call("put_object", Key=state["key"], Body=b"")
            return
        self._call(
            "complete_multipart_upload",
            Key=state["key"],
            UploadId=state["id"],
            MultipartUpload={"Parts": listed},
        )

    def _hash_object(
        self, key: str, progress: Callable[[int], None] | None, hashes: _Hashes | None = None
    ) -> Digests:
        """One streaming GET: MD5, SHA-256 and size -- or, given the ``hashes`` of the
        object's first bytes, of the bytes after them (a range GET).  A thread reads 1 MiB
        blocks (at most 8 ahead) while this one hashes them (hashlib lets go of the GIL)."""
        hashes = _Hashes() if hashes is None else hashes
        blocks: queue.Queue[bytes | BaseException | None] = queue.Queue(maxsize=8)
        extra = {"Range": f"bytes={hashes.size}-"} if hashes.size else {}
        body = self._call("get_object", Key=key, **extra)["Body"]
        stop = threading.Event()

        def read() -> None:
            try:
                with contextlib.closing(body):
                    while not stop.is_set() and (block := body.read(BLOCK)):
                        blocks.put(block)
                blocks.put(None)
            except BaseException as exc:  # handed to the hashing thread
                blocks.put(exc)

        reader = threading.Thread(target=read, name="uploadmeter-s3-read", daemon=True)
        reader.start()
        try:
            with _reading(key):
                while (item := blocks.get()) is not None:
                    if isinstance(item, BaseException):
                        raise item
                    hashes.update(item)
                    if progress is not None:
                        progress(hashes.size)
        finally:
            stop.set()
            with contextlib.suppress(queue.Empty):
                while True:  # let a blocked reader finish
                    blocks.get_nowait()
            reader.join(5)
        return hashes.digests()

    # -- temp files (local spool) --------------------------------------------------------

    def temp_file(self, suffix: str = ".part") -> tuple[str, IO[bytes]]:
        fd, path = tempfile.mkstemp(suffix=suffix, dir=self.spool_dir)
        return path, os.fdopen(fd, "w+b")

    def discard(self, path: str) -> None:
        """Delete a local spool file (absolute path) or a joined object (key)."""
        if os.path.isabs(path):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        else:
            self._delete(path)

    # -- state documents -----------------------------------------------------------------

    def read_json(self, path: str) -> dict[str, Any] | None:
        raw = self._get_bytes(path)
        if raw is None:
            return None
        try:
            data = json.loads(raw)
        except ValueError:
            log.warning("uploadmeter: unreadable s3://%s/%s", self.bucket, path)
            return None
        return data if isinstance(data, dict) else None

    def write_json(self, path: str, data: Mapping[str, Any]) -> None:
        body = json.dumps(data, ensure_ascii=False).encode("utf-8")
        self._call("put_object", Key=path, Body=body, ContentType="application/json")

    def _state(self, location: str) -> dict[str, Any] | None:
        state = self.read_json(f"{location}/{_MULTIPART}")
        return None if state is None else dict(state, location=location)

    def _chunk_state(self, location: str, *, fresh: bool = False) -> dict[str, Any] | None:
        """:meth:`_state`, remembered by this process for the chunks that follow.  A
        remembered state can be stale only when another process removed the upload (and
        maybe began it again): its multipart upload is then gone, S3 says so
        (:class:`_ObjectMissing`), and the caller asks again with ``fresh``."""
        state = None if fresh else self._chunk_states.get(location)
        if state is None:
            state = self._state(location)
            if state is not None and not state.get("completed"):
                if len(self._chunk_states) > 1000:
                    self._chunk_states.clear()
                self._chunk_states[location] = state
        return state

    def begin(self, location: str, *, data: bool = False) -> None:
        """Start the upload's multipart upload (its key: a new blob) -- except for a tus
        final upload (no ``data``), whose object :meth:`concatenate` makes."""
        if not data and location.startswith(self.tus_root + "/"):
            return
        key = f"{self.prefix}blobs/{uuid.uuid4().hex}"
        upload_id = self._call("create_multipart_upload", Key=key)["UploadId"]
        try:
            self.write_json(f"{location}/{_MULTIPART}", {"key": key, "id": upload_id})
        except BaseException:
            with contextlib.suppress(Exception):
                self._call("abort_multipart_upload", Key=key, UploadId=upload_id)
            raise
        if self._store is not None and location.startswith(self.partial_root + "/"):
            self._store.set(self._note_key(location, ""), upload_id, self.expire_after)
            self._save_frontier(location, upload_id, 1, _Hashes.resumable())

    def exists(self, location: str) -> bool:
        return next(iter(self._list(location + "/")), None) is not None

    def remove_tree(self, location: str) -> None:
        """Abort the upload's multipart upload, delete its objects."""
        self._chunk_states.pop(location, None)
        if self._store is not None:
            self._store.delete(self._note_key(location, ""))
        state = self._state(location)
        if state is not None and not state.get("completed"):
            with contextlib.suppress(_ObjectMissing):
                self._call("abort_multipart_upload", Key=state["key"], UploadId=state["id"])
        elif state is not None and state.get("own"):  # a partial upload's own object
            self._delete(state["key"])
        for obj in list(self._list(location + "/")):
            self._delete(obj["Key"])

    # -- chunks --------------------------------------------------------------------------

    def _group(self, chunk_size: int) -> int:
        """Chunks per part."""
        return max(1, math.ceil(self.part_size / max(chunk_size, 1)))

    def put_chunk(
        self, location: str, number: int, received: str, *, chunk_size: int, total_chunks: int
    ) -> bool:
        for fresh in (False, True):
            state = self._chunk_state(location, fresh=fresh)
            if state is None:
                return False
            try:
                return self._put_chunk(location, state, number, received, chunk_size, total_chunks)
            except _ObjectMissing:  # the multipart upload is gone: removed (and begun again?)
                self._chunk_states.pop(location, None)
        return False

    def _put_chunk(
        self,
        location: str,
        state: Mapping[str, Any],
        number: int,
        received: str,
        chunk_size: int,
        total_chunks: int,
    ) -> bool:
        """Store chunk ``number``.  A chunk of a part of its own is stored once: sent
        again (a retry, another server) while its part is stored, it changes nothing, so
        its bytes hashed in order (:meth:`_hash_in_order`) stay the bytes of the object.
        Smaller chunks wait as objects, noted in the progress store, until their group is
        whole; the request that completes it makes the part (:meth:`_assemble`) and
        hashes it in order like a chunk of its own part."""
        g = self._group(chunk_size)
        part = (number - 1) // g + 1
        if g == 1:
            with self._lock(f"{location}#{part}"):
                if self._part_stored(state, part):
                    return True  # a duplicate
                self._upload_part_file(state, part, received)
                self._note_part(state, part)
            self._hash_in_order(location, state, number, received)
            return True
        if self._part_stored(state, part):
            return True  # its group is already a part: this chunk is a duplicate
        # Stored and noted without the part's lock: the chunks of a group arrive together.
        # A copy that lands after its group became the part is a stray object (removed
        # with the upload, or by the cleanup); the part holds the same bytes.
        self._put_file(f"{location}/chunks/{number}", received)
        self._note_chunk(state, number, part)
        first, last = (part - 1) * g + 1, min(part * g, total_chunks)
        noted = self._noted_chunks(state, range(first, last + 1))
        if noted is not None and len(noted) <= last - first:
            return True  # not whole yet: the chunk noted last finds it whole
        with self._lock(f"{location}#{part}"):
            if not self._part_stored(state, part):
                self._assemble(
                    location, state, part, chunk_size, total_chunks, noted=noted is not None
                )
        return True

    def _assemble(
        self,
        location: str,
        state: Mapping[str, Any],
        part: int,
        chunk_size: int,
        total_chunks: int,
        *,
        noted: bool = False,
    ) -> bool:
        """Upload part ``part`` from its chunk objects when all are there (part's lock
        held); delete them after.  Whether the part is stored.

        ``noted``: the chunk notes say the group is whole, so its objects are not listed
        and the part is hashed in order; should an object be missing after all (a note
        outlived it), S3 is asked, as it is without ``noted`` (the merge, lost notes).
        """
        g = self._group(chunk_size)
        first, last = (part - 1) * g + 1, min(part * g, total_chunks)
        numbers = range(first, last + 1)
        if noted:
            keys = [f"{location}/chunks/{n}" for n in numbers]
            try:
                self._make_part(state, part, keys, chunk_size, hash_from=first)
                return True
            except _ObjectMissing:  # made by another request meanwhile, or a note is wrong
                if part in self._parts(state):
                    return True
        have = self._chunk_objects(location)
        if any(n not in have for n in numbers):
            # A note without its object would report the chunk stored for ever: dropped,
            # so that its client sends it again.
            self._drop_chunk_notes(state, [n for n in numbers if n not in have])
            return False
        self._make_part(state, part, [have[n] for n in numbers], chunk_size)
        return True

    def _make_part(
        self,
        state: Mapping[str, Any],
        part: int,
        keys: Sequence[str],
        chunk_size: int,
        *,
        hash_from: int | None = None,
    ) -> None:
        """Upload the chunk objects ``keys`` (in order) as part ``part``, then delete them;
        ``hash_from``: the first chunk's number, to hash the part in order."""
        path, out = self.temp_file()
        try:
            with out:
                # Every chunk but the upload's last has chunk_size bytes (the endpoint
                # checks): each one is fetched at once and written at its offset.
                self._run_all(
                    [(self._get_at, key, out, i * chunk_size) for i, key in enumerate(keys)]
                )
            self._upload_part_file(state, part, path)
            self._note_part(state, part)
            if hash_from is not None:
                location = str(state["location"])
                self._hash_in_order(
                    location, state, hash_from, path, next_chunk=hash_from + len(keys)
                )
        finally:
            self.discard(path)
        try:  # the part is stored: an object left behind is the cleanup's
            self._run_all([(self._delete, key) for key in keys])
        except ObjectStoreError as exc:
            log.warning("uploadmeter: chunk objects left to the cleanup: %s", exc)

    def _run_all(self, calls: Sequence[tuple[Any, ...]]) -> None:
        """Run ``(function, *args)`` calls on the pool at once; return once every one has
        ended (none may still write into a file the caller closes next), raising the
        first failure."""
        jobs: list[concurrent.futures.Future[Any]] = []
        try:
            pool = self._pool()
            for fn, *args in calls:
                jobs.append(pool.submit(fn, *args))
        finally:
            concurrent.futures.wait(jobs)
        for job in jobs:
            job.result()

    def _pool(self) -> concurrent.futures.ThreadPoolExecutor:
        """Threads for the S3 calls of one request that can run at once (a part's chunk
        objects fetched, then deleted): each is a round trip, and Swift or S3 answers
        several as fast as one."""
        with self._pool_lock:
            # A pool made before a fork has no threads in the child: made again there.
            if self._io_pool is None or self._pool_pid != os.getpid():
                self._io_pool = concurrent.futures.ThreadPoolExecutor(
                    _IO_THREADS, thread_name_prefix="uploadmeter-s3"
                )
                self._pool_pid = os.getpid()
            return self._io_pool

    def _get_at(self, key: str, out: IO[bytes], offset: int) -> None:
        """Write the object ``key`` into ``out`` at ``offset``."""
        body = self._call("get_object", Key=key)["Body"]
        with _reading(key), contextlib.closing(body):
            while block := body.read(BLOCK):
                offset += os.pwrite(out.fileno(), block, offset)

    def _chunk_objects(self, location: str) -> dict[int, str]:
        found: dict[int, str] = {}
        for obj in self._list(f"{location}/chunks/"):
            m = _CHUNK_KEY.fullmatch(obj["Key"])
            if m:
                found[int(m.group(1))] = obj["Key"]
        return found

    def chunk_numbers(self, location: str, *, chunk_size: int, total_chunks: int) -> list[int]:
        g = self._group(chunk_size)
        for fresh in (False, True):
            state = self._chunk_state(location, fresh=fresh)
            if state is None:
                return []
            try:
                parts = self._noted_parts(state, math.ceil(total_chunks / g))
            except _ObjectMissing:
                self._chunk_states.pop(location, None)
                continue
            # With one chunk per part no chunk waits as an object.
            numbers: set[int] = set()
            if g > 1:
                waiting = self._waiting_chunks(state, g, total_chunks, parts)
                numbers = set(self._chunk_objects(location)) if waiting is None else waiting
            for part in parts:
                numbers.update(range((part - 1) * g + 1, part * g + 1))
            return sorted(n for n in numbers if 1 <= n <= total_chunks)
        return []

    # The parts of a chunked upload, noted in the progress store as they are stored: the
    # chunk endpoint asks which chunks are stored after every chunk, and ``list_parts``
    # answers slower as parts accumulate (Swift: 10 -> 50 ms) while the store answers in
    # well under a millisecond.  The keys name the multipart upload's id, and the store
    # also names the upload's current id: a state another process removed (and maybe
    # began again) is caught.  S3 stays the truth: without the notes (a store flushed,
    # more than _NOTED_PARTS parts) the parts are listed, and the merge lists them.

    def _note_key(self, location: str, suffix: str) -> str:
        return "s3-parts:" + digest_name(self.cleanup_name, location) + suffix

    def _notes(self, state: Mapping[str, Any]) -> str:
        """The prefix of the notes of ``state``'s multipart upload: then ``<n>`` for part
        n, ``c<n>`` for chunk object n, ``g<n>`` for the count of group n."""
        return self._note_key(str(state["location"]), f"#{state['id']}:")

    def _note_part(self, state: Mapping[str, Any], number: int) -> None:
        if self._store is not None:
            self._store.set(f"{self._notes(state)}{number}", "1", self.expire_after)

    def _note_chunk(self, state: Mapping[str, Any], number: int, part: int) -> None:
        """Note chunk ``number`` stored as an object; count it in its group once."""
        if self._store is not None:
            prefix = self._notes(state)
            if self._store.add(f"{prefix}c{number}", "1", self.expire_after):
                self._store.incr(f"{prefix}g{part}", self.expire_after)

    def _drop_chunk_notes(self, state: Mapping[str, Any], numbers: Iterable[int]) -> None:
        if self._store is not None:
            prefix = self._notes(state)
            for n in numbers:
                self._store.delete(f"{prefix}c{n}")

    def _notes_current(self, state: Mapping[str, Any]) -> bool:
        """Whether the store's notes are those of ``state``'s multipart upload."""
        if self._store is None:
            return False
        current = self._store.get(self._note_key(str(state["location"]), ""))
        return current is not None and current == state["id"]

    def _noted_chunks(self, state: Mapping[str, Any], numbers: Iterable[int]) -> set[int] | None:
        """The chunks among ``numbers`` noted as objects; ``None``: the notes cannot tell."""
        if not self._notes_current(state):
            return None
        assert self._store is not None
        prefix = self._notes(state)
        return {n for n in numbers if self._store.get(f"{prefix}c{n}") is not None}

    def _waiting_chunks(
        self, state: Mapping[str, Any], g: int, total_chunks: int, parts: set[int]
    ) -> set[int] | None:
        """The chunks stored as objects of the parts not in ``parts``, from the notes: a
        group's count first, its chunks' notes only when the count is not 0 (a few groups
        fill at a time).  ``None``: the notes cannot tell, or more than ``_NOTED_PARTS``
        groups would cost more reads than one listing.  A crash between a chunk's note and
        its count under-reports that chunk: its client sends it again, and its group is
        still found whole by the chunk notes (:meth:`_put_chunk`)."""
        groups = math.ceil(total_chunks / g)
        if groups > _NOTED_PARTS or not self._notes_current(state):
            return None  # then listing the waiting objects costs less than the reads
        assert self._store is not None
        prefix = self._notes(state)
        found: set[int] = set()
        for part in range(1, groups + 1):
            if part in parts or not self._store.get(f"{prefix}g{part}"):
                continue
            numbers = range((part - 1) * g + 1, min(part * g, total_chunks) + 1)
            found.update(n for n in numbers if self._store.get(f"{prefix}c{n}") is not None)
        return found

    def _noted_parts(self, state: Mapping[str, Any], count: int) -> set[int]:
        """The stored parts among ``1..count``: from the notes when the store holds the
        upload's current id, else :meth:`_parts`."""
        if count > _NOTED_PARTS or not self._notes_current(state):
            return set(self._parts(state))
        assert self._store is not None
        prefix = self._notes(state)
        if len(self._parts_seen) > 1000:
            self._parts_seen.clear()
        seen = self._parts_seen.setdefault(prefix, set())
        for n in range(1, count + 1):
            if n not in seen and self._store.get(f"{prefix}{n}") is not None:
                seen.add(n)
        return {n for n in seen if n <= count}

    def _part_stored(self, state: Mapping[str, Any], number: int) -> bool:
        """Whether part ``number`` is stored: from its note when the store holds the
        upload's current id, else from ``list_parts``."""
        if not self._notes_current(state):
            return number in self._parts(state)
        assert self._store is not None
        return self._store.get(f"{self._notes(state)}{number}") is not None

    # The whole file's MD5 and SHA-256, hashed as chunks arrive in order (the frontier),
    # their state kept in the progress store (``rehashes``: hash states that another
    # process resumes), so the merge reads back only the bytes after the frontier --
    # none when every chunk was hashed as it came.  A chunk that arrives before the next
    # one to hash waits for it (at most _HASH_WAIT; parallel chunks of one client
    # finish close together); one that waited in vain marks the frontier stalled, and
    # later chunks do not wait on that gap.  The bytes hashed are the request's own,
    # which the store checked as the part's (``_upload_part()``), and a chunk is stored
    # once (``_put_chunk()``): the hashes are the object's.

    def _frontier_key(self, location: str, upload_id: str, suffix: str = "") -> str:
        return self._note_key(location, f"#{upload_id}:hashed{suffix}")

    def _save_frontier(self, location: str, upload_id: str, next_chunk: int, h: _Hashes) -> None:
        if self._store is None or _rehashes is None:
            return
        value = json.dumps(dict(h.state() or {}, next=next_chunk, v=_REHASHES))
        self._store.set(self._frontier_key(location, upload_id), value, self.expire_after)

    def _frontier(self, location: str, upload_id: str) -> tuple[int, _Hashes] | None:
        """``(the next chunk to hash, the hashes of those before)``, or ``None``."""
        if self._store is None or _rehashes is None:
            return None
        raw = self._store.get(self._frontier_key(location, upload_id))
        try:
            data = json.loads(raw) if raw else None
            if not isinstance(data, dict) or data.get("v") != _REHASHES:
                return None
            return int(data["next"]), _Hashes.resume(data)
        except (ValueError, KeyError, TypeError):
            log.warning("uploadmeter: unreadable hash state of %s", location)
            return None

    def _hash_in_order(
        self,
        location: str,
        state: Mapping[str, Any],
        number: int,
        received: str,
        *,
        next_chunk: int | None = None,
    ) -> None:
        """(Chunk ``number`` just stored, or the part of chunks ``number`` to
        ``next_chunk - 1``, its lock held) add the bytes of the file ``received`` to the
        whole file's hashes if ``number`` is the next chunk -- waiting briefly for the
        ones before it.  Best effort: a store error leaves the bytes to the merge."""
        upload_id = str(state["id"])
        stalled = self._frontier_key(location, upload_id, "-stalled")
        deadline = time.monotonic() + _HASH_WAIT
        try:
            while True:
                frontier = self._frontier(location, upload_id)
                if frontier is None or frontier[0] > number:
                    return
                if frontier[0] == number:
                    break
                assert self._store is not None
                if self._store.get(stalled) == str(frontier[0]):
                    return  # a gap another chunk waited on in vain
                if time.monotonic() >= deadline:
                    self._store.set(stalled, str(frontier[0]), self.expire_after)
                    return
                time.sleep(_HASH_POLL)
            hashes = frontier[1]
            with open(received, "rb") as f:
                while block := f.read(BLOCK):
                    hashes.update(block)
            self._save_frontier(location, upload_id, next_chunk or number + 1, hashes)
        except StoreError as exc:
            log.warning(
                "uploadmeter: chunk %d of %s hashed at the merge: %s", number, location, exc
            )

    def join_chunks(
        self,
        location: str,
        numbers: list[int],
        *,
        chunk_size: int,
        progress: Callable[[int], None] | None = None,
    ) -> tuple[str, Digests]:
        state = self._state(location)
        if state is None:
            raise FileNotFoundError(location)  # cancelled meanwhile
        if state.get("completed"):  # an earlier attempt's hand-over failed after this
            return state["key"], self._hash_object(state["key"], progress)
        g = self._group(chunk_size)
        total = max(numbers) if numbers else 0
        parts = self._parts(state)
        for part in range(1, math.ceil(total / g) + 1):
            if part not in parts:  # its last chunk came, its assembly did not (yet)
                with self._lock(f"{location}#{part}"):
                    if part not in self._parts(state) and not self._assemble(
                        location, state, part, chunk_size, total
                    ):
                        raise FileNotFoundError(f"{location}: part {part} is missing")
        frontier = self._frontier(location, str(state["id"]))
        known = None
        if frontier is not None and (
            frontier[0] == total + 1 or frontier[1].size == (frontier[0] - 1) * chunk_size
        ):
            known = frontier[1]  # chunks 1 .. next - 1, as they came (the last: any size)
        return self._finish_multipart(location, state, progress, known)

    def _finish_multipart(
        self,
        location: str,
        state: Mapping[str, Any],
        progress: Callable[[int], None] | None,
        known: _Hashes | None = None,
    ) -> tuple[str, Digests]:
        """Complete the multipart upload (idempotent: a retry after a fault finds the
        object) and hash the object -- or, with the ``known`` hashes of its first bytes as
        they were sent (each part checked by the store, see ``_upload_part()``), only the
        bytes after those (none: then its size is checked)."""
        # _ObjectMissing: completed by an earlier attempt; the object is there (checked next).
        with contextlib.suppress(_ObjectMissing):
            self._complete(state)
        # The multipart upload is now the object: never abort it again (on Swift an abort
        # after the completion would delete the object's segments).
        self.write_json(f"{location}/{_MULTIPART}", dict(state, completed=True))
        if known is not None:
            head = self._call("head_object", Key=state["key"])
            if int(head["ContentLength"]) == known.size:
                if progress is not None:
                    progress(known.size)
                return state["key"], known.digests()
            if int(head["ContentLength"]) > known.size:
                return state["key"], self._hash_object(state["key"], progress, known)
        return state["key"], self._hash_object(state["key"], progress)

    # -- tus data ------------------------------------------------------------------------

    def _pending(self, location: str, parts: Mapping[int, int]) -> tuple[str, int, int] | None:
        """The bytes waiting to become the next part: ``(key, part number, size)``.
        Stale ones (their part was uploaded, the delete did not happen) are deleted."""
        found = None
        for obj in self._list(f"{location}/data.part."):
            m = _PENDING.fullmatch(obj["Key"])
            if m is None:
                continue
            number = int(m.group(1))
            if number in parts or number != len(parts) + 1:
                self._delete(obj["Key"])
            else:
                found = (obj["Key"], number, int(obj["Size"]))
        return found

    def data_size(self, location: str) -> int:
        state = self._state(location)
        if state is None:
            raise FileNotFoundError(location)
        if state.get("completed"):
            try:
                return int(self._call("head_object", Key=state["key"])["ContentLength"])
            except _ObjectMissing:  # adopted as another upload's identical file
                return 0
        parts = self._parts(state)
        pending = self._pending(location, parts)
        return sum(parts.values()) + (pending[2] if pending else 0)

    def open_data(self, location: str, start: int, *, length: int | None, hold: bool) -> DataWriter:
        state = self._state(location)
        if state is None or state.get("completed"):
            raise FileNotFoundError(location)
        return _S3Writer(self, location, state, start, length, hold=hold)

    def join_data(
        self, location: str, progress: Callable[[int], None] | None = None
    ) -> tuple[str, Digests]:
        state = self._state(location)
        if state is None:
            raise FileNotFoundError(location)
        if state.get("completed"):
            return state["key"], self._hash_object(state["key"], progress)
        known = self._hashes.pop(location, None)
        self._seal(location, state)
        return self._finish_multipart(location, state, progress, known)

    def _seal(self, location: str, state: Mapping[str, Any]) -> None:
        """Make the pending bytes (``data.part.<N>``) the last part.  A PATCH makes them
        a part itself when they end the upload, but with a deferred length the last
        PATCH may declare the length and bring no bytes: they are still an object then.
        (Read and uploaded, less than a part: ``list_parts`` on Swift does not show a
        copied part's ETag as ``complete_multipart_upload`` wants it.)"""
        pending = self._pending(location, self._parts(state))
        if pending is None:
            return
        key, number, size = pending
        self._concat_part(state, number, [(key, 0, size)], copy=False)
        self._delete(key)

    # -- tus concatenation ---------------------------------------------------------------

    def concatenate(
        self, locations: Sequence[str], progress: Callable[[int], None] | None = None
    ) -> tuple[str, Digests]:
        """Join the finished partial uploads at ``locations`` into a new blob.

        Each partial upload's multipart upload is completed into its own object (kept,
        marked ``own``, until the partial upload is deleted: a retried join starts from
        there).  The new blob's parts are copied inside the store (``UploadPartCopy``
        with a byte range) wherever a range of one object can be a part (>= 5 MiB, or the
        last part); a partial upload smaller than that, with the edges of its
        neighbours, is read and uploaded as a part (at least ``part_size``).  Then one
        streaming GET of the blob hashes it (the verification: one read of the file,
        plus one more of the bytes that went through this process).  On a failure the
        blob's multipart upload is aborted (when the store is down, at the next join in
        this process or by :meth:`cleanup` after ``temp_ttl``).
        """
        self._abort_orphans()
        sources = [self._source(location) for location in locations]
        if progress is not None:
            progress(0)
        key = f"{self.prefix}blobs/{uuid.uuid4().hex}"
        sizes = [size for _, size in sources]
        plan = _concat_plan(sizes, self.part_size)
        if not plan:  # only empty partial uploads
            self._call("put_object", Key=key, Body=b"")
            return key, self._hash_object(key, progress)
        upload_id = self._call("create_multipart_upload", Key=key)["UploadId"]
        state = {"key": key, "id": upload_id}
        try:
            workers = min(self.upload_concurrency, len(plan))
            with concurrent.futures.ThreadPoolExecutor(workers, "uploadmeter-s3-concat") as pool:
                futures = [
                    pool.submit(
                        self._concat_part,
                        state,
                        number,
                        [(sources[i][0], a, b) for i, a, b in ranges],
                    )
                    for number, ranges in enumerate(plan, 1)
                ]
                etags = []
                for future in futures:
                    etags.append(future.result())
                    if progress is not None:
                        progress(0)  # the caller's locks live on
            self._call(
                "complete_multipart_upload",
                Key=key,
                UploadId=upload_id,
                MultipartUpload={
                    "Parts": [{"PartNumber": n, "ETag": e} for n, e in enumerate(etags, 1)]
                },
            )
        except BaseException:
            self._orphans.append(state)
            self._abort_orphans()
            raise
        try:
            return key, self._hash_object(key, progress)
        except BaseException:
            with contextlib.suppress(Exception):
                self._delete(key)
            raise

    def _source(self, location: str) -> tuple[str, int]:
        """A finished partial upload's data as an object: ``(key, size)``."""
        state = self._state(location)
        if state is None:
            raise FileNotFoundError(location)
        if not state.get("completed"):
            self._seal(location, state)
            with contextlib.suppress(_ObjectMissing):  # completed by an earlier join
                self._complete(state)
            state = dict(state, completed=True, own=True)
            self.write_json(f"{location}/{_MULTIPART}", state)
        try:
            head = self._call("head_object", Key=state["key"])
        except _ObjectMissing:
            raise FileNotFoundError(location) from None
        return str(state["key"]), int(head["ContentLength"])

    def _concat_part(
        self,
        state: Mapping[str, Any],
        number: int,
        ranges: list[tuple[str, int, int]],
        *,
        copy: bool = True,
    ) -> str:
        """Part ``number`` from byte ranges ``[start, end)`` of objects: its ETag.  One
        range is copied inside the store (``copy``); several are read and uploaded."""
        if copy and len(ranges) == 1:
            source, start, end = ranges[0]
            result = self._call(
                "upload_part_copy",
                Key=state["key"],
                UploadId=state["id"],
                PartNumber=number,
                CopySource={"Bucket": self.bucket, "Key": source},
                CopySourceRange=f"bytes={start}-{end - 1}",
            )
            return str(result["CopyPartResult"]["ETag"])
        path, out = self.temp_file()
        try:
            with out:
                for source, start, end in ranges:
                    body = self._call("get_object", Key=source, Range=f"bytes={start}-{end - 1}")
                    with _reading(source), contextlib.closing(body["Body"]) as stream:
                        shutil.copyfileobj(stream, out, BLOCK)
            return self._upload_part_file(state, number, path)
        finally:
            self.discard(path)

    def _abort_orphans(self) -> None:
        """Abort the multipart uploads of failed joins (best effort: kept on failure)."""
        while self._orphans:
            state = self._orphans[0]
            try:
                self._call("abort_multipart_upload", Key=state["key"], UploadId=state["id"])
            except _ObjectMissing:
                pass
            except Exception as exc:
                log.warning("uploadmeter: cannot abort %s yet: %s", state["key"], exc)
                return
            self._orphans.pop(0)

    # -- finished files ------------------------------------------------------------------

    def _index_key(self, sha256: str) -> str:
        if not re.fullmatch(r"[0-9a-f]{64}", sha256):
            raise ValueError(f"not a SHA-256: {sha256!r}")
        return f"{self.prefix}files/{sha256}.json"

    def _refs(self, sha256: str) -> list[str]:
        return [obj["Key"] for obj in self._list(f"{self.prefix}refs/{sha256}/")]

    def adopt(self, path: str, sha256: str) -> tuple[str, bool]:
        """Keep the blob ``path`` as the one copy of these bytes -- or, when one exists,
        delete ``path`` and use that one."""
        with self._lock("file:" + sha256):
            index = self.read_json(self._index_key(sha256))
            if index is not None and index["key"] != path:
                self._delete(path)
                self._claim(index)
                return str(index["key"]), False
            self._claim({"key": path, "sha256": sha256})
            return path, True

    def existing(self, sha256: str, size: int) -> str | None:
        """The blob with these bytes, claimed (see ``_claim()``), or ``None``."""
        with self._lock("file:" + sha256):
            index = self.read_json(self._index_key(sha256))
            if index is None:
                return None
            try:
                head = self._call("head_object", Key=index["key"])
            except _ObjectMissing:
                return None
            if int(head["ContentLength"]) != size:
                return None
            self._claim(index)
            return str(index["key"])

    def _claim(self, index: dict[str, Any]) -> None:
        """(The hash's lock held) note that an upload is about to reference the file.

        Between :meth:`adopt` / :meth:`existing` and :meth:`retain` an upload holds no
        reference yet: a claim in the index keeps :meth:`release` from deleting the file
        meanwhile.  :meth:`retain` turns the oldest claim into the reference; a claim
        never turned (a crash, an instant upload answered otherwise) lapses after
        ``lock_ttl`` -- then :meth:`release` (or :meth:`cleanup`) may delete the file."""
        claims = [t for t in index.get("claims", []) if t > time.time() - self.lock_ttl]
        self.write_json(
            self._index_key(str(index["sha256"])), dict(index, claims=[*claims, time.time()])
        )

    def file_fields(self, location: str) -> dict[str, Any]:
        return {
            "path": f"s3://{self.bucket}/{location}",
            "bucket": self.bucket,
            "key": location,
            "storage": self,
        }

    def open_file(self, location: str) -> IO[bytes]:
        """The object's body, streamed (read it in blocks)."""
        key = location.removeprefix(f"s3://{self.bucket}/")
        body: IO[bytes] = self._call("get_object", Key=key)["Body"]
        return body

    def retain(self, info: FileInfo) -> None:
        """Add the reference of upload ``info`` on its file."""
        with self._lock("file:" + info.sha256):
            index = self.read_json(self._index_key(info.sha256))
            if index is None or index["key"] != info.key:
                raise FileNotFoundError(f"{info.path} was deleted")  # claimed too long ago
            self._call("put_object", Key=self._ref_key(info), Body=b"")
            claims = sorted(index.get("claims", []))
            if claims:
                self.write_json(self._index_key(info.sha256), dict(index, claims=claims[1:]))

    def release(self, info: FileInfo, *, new_file: bool = False) -> None:
        """Drop the reference of upload ``info`` on its file; the last one deletes it
        (unless another upload just found the file and is about to reference it: then
        :meth:`cleanup` does, once it stays unreferenced).

        Call this when the application deletes the file it kept from ``on_complete``.
        """
        with self._lock("file:" + info.sha256):
            self._delete(self._ref_key(info))
            if self._refs(info.sha256):
                return
            index = self.read_json(self._index_key(info.sha256))
            claimed = index is not None and any(
                t > time.time() - self.lock_ttl for t in index.get("claims", [])
            )
            if claimed:  # an upload is about to reference it: cleanup deletes it if not
                return
            if index is not None:
                self._delete(str(index["key"]))
            self._delete(self._index_key(info.sha256))

    def references(self, sha256: str) -> int:
        """How many uploads reference the file with these bytes."""
        return len(self._refs(sha256))

    def _ref_key(self, info: FileInfo) -> str:
        self._index_key(info.sha256)  # checks the hash
        return f"{self.prefix}refs/{info.sha256}/{digest_name(info.session, info.upload_id)}"

    # -- quota and cleanup ---------------------------------------------------------------

    def free_space(self) -> int:
        """The bucket's room is not known here; what can fill up is the local spool,
        which holds a request's body (a chunk, a part or two) at a time."""
        free = shutil.disk_usage(self.spool_dir).free
        return sys.maxsize if free >= 4 * self.part_size else free

    def upload_states(self, session_key: str) -> Iterable[dict[str, Any]]:
        for root, name in ((self.partial_root, "meta.json"), (self.tus_root, "info.json")):
            for obj in list(self._list(f"{root}/{session_key}/")):
                if obj["Key"].endswith("/" + name):
                    meta = self.read_json(obj["Key"])
                    if meta:
                        yield meta

    def cleanup(self, now: float | None = None) -> CleanupStats:
        """Delete abandoned chunked uploads, expired tus uploads (objects and multipart
        uploads), multipart uploads no upload refers to, files no upload references, blobs
        nothing names, and stray spool files (the last four only past ``temp_ttl``).
        Needs the progress store (for the locks)."""
        now = time.time() if now is None else now
        stats = CleanupStats()
        for entry in os.scandir(self.spool_dir):
            with contextlib.suppress(OSError):
                if entry.stat().st_mtime < now - self.temp_ttl:
                    os.unlink(entry.path)
                    stats.temp += 1
        live: set[str] = set()  # multipart upload ids of live uploads
        live_keys: set[str] = set()  # their blobs
        for root, kind in ((self.partial_root, "partial"), (self.tus_root, "tus")):
            uploads: dict[str, float] = {}
            for obj in self._list(root + "/"):
                location = obj["Key"].rsplit("/", 1)[0].removesuffix("/chunks")
                modified = obj["LastModified"].timestamp()
                uploads[location] = max(uploads.get(location, 0.0), modified)
            for location, modified in uploads.items():
                expires = modified + self.expire_after
                if kind == "tus":
                    info = self.read_json(f"{location}/info.json")
                    expires = float(info["expires_at"]) if info else modified + 3600
                if expires < now:
                    self.remove_tree(location)
                    stats.partial += kind == "partial"
                    stats.tus += kind == "tus"
                else:
                    state = self._state(location)
                    if state is not None:
                        live.add(state["id"])
                        live_keys.add(state["key"])
        # Multipart uploads whose state was lost (a crash between create and write).
        page = self._call("list_multipart_uploads", Prefix=f"{self.prefix}blobs/")
        for upload in page.get("Uploads", []):
            started = upload["Initiated"].timestamp()
            if upload["UploadId"] not in live and started < now - self.temp_ttl:
                with contextlib.suppress(_ObjectMissing):
                    self._call(
                        "abort_multipart_upload", Key=upload["Key"], UploadId=upload["UploadId"]
                    )
                stats.temp += 1
        # Files no upload references (a crash between filing and handing over), and blobs
        # no index names (a crash between completing and filing), once they are old.
        indexed: set[str] = set()
        for obj in list(self._list(f"{self.prefix}files/")):
            sha256 = obj["Key"].rsplit("/", 1)[1].removesuffix(".json")
            index = self.read_json(obj["Key"])
            if index is None:
                continue
            if obj["LastModified"].timestamp() < now - self.temp_ttl and not self._refs(sha256):
                with self._lock("file:" + sha256):
                    if not self._refs(sha256):
                        self._delete(str(index["key"]))
                        self._delete(obj["Key"])
                        stats.files += 1
                        continue
            indexed.add(str(index["key"]))
        for obj in list(self._list(f"{self.prefix}blobs/")):
            key = obj["Key"]
            old = obj["LastModified"].timestamp() < now - self.temp_ttl
            if old and key not in indexed and key not in live_keys:
                self._delete(key)
                stats.temp += 1
        return stats


_MAX_COPY = 5 * 1024**3  # S3's largest part


def _concat_plan(sizes: Sequence[int], part_size: int) -> list[list[tuple[int, int, int]]]:
    """The parts of a join of objects of ``sizes``: each a list of ``(object, start,
    end)`` ranges.  A part of one range is copied inside the store; every part but the
    last is >= ``MIN_PART`` (copied: a whole remainder of >= 5 MiB, in pieces of at most
    5 GiB; read: small objects with the neighbouring bytes, ``part_size`` at least)."""
    parts: list[list[tuple[int, int, int]]] = []
    buffer: list[tuple[int, int, int]] = []
    buffered = 0
    for index, size in enumerate(sizes):
        pos = 0
        if not size:
            continue
        if buffer:  # fill the part being gathered from this object's head
            pos = min(size, part_size - buffered)
            buffer.append((index, 0, pos))
            buffered += pos
            if buffered >= part_size:
                parts.append(buffer)
                buffer, buffered = [], 0
        rest = size - pos
        if rest >= MIN_PART:
            pieces = math.ceil(rest / _MAX_COPY)
            bounds = [pos + rest * k // pieces for k in range(pieces + 1)]
            parts.extend([(index, a, b)] for a, b in itertools.pairwise(bounds))
        elif rest:
            buffer.append((index, pos, size))
            buffered += rest
    if buffer:
        parts.append(buffer)
    return parts


class _Hashes:
    """MD5 and SHA-256 of an upload's first ``size`` bytes, as they streamed through:
    hashlib's, or (:meth:`resumable`) rehashes', whose :meth:`state` another process
    resumes."""

    def __init__(self, size: int = 0, md5: Any = None, sha256: Any = None) -> None:
        self.size = size
        self.md5 = hashlib.md5(usedforsecurity=False) if md5 is None else md5
        self.sha256 = hashlib.sha256() if sha256 is None else sha256

    @classmethod
    def resumable(cls) -> _Hashes:
        if _rehashes is None:
            return cls()
        return cls(0, _rehashes.PyMd5(), _rehashes.PySha256())

    @classmethod
    def resume(cls, state: Mapping[str, Any]) -> _Hashes:
        md5 = _rehashes.PyMd5.deserialize(base64.b64decode(state["md5"]))
        sha256 = _rehashes.PySha256.deserialize(base64.b64decode(state["sha256"]))
        return cls(int(state["size"]), md5, sha256)

    def state(self) -> dict[str, Any] | None:
        """The state to :meth:`resume` from, or ``None`` (hashlib's cannot be kept)."""
        md5: Any = self.md5
        sha256: Any = self.sha256
        if not hasattr(md5, "serialize"):
            return None
        return {
            "size": self.size,
            "md5": base64.b64encode(md5.serialize()).decode(),
            "sha256": base64.b64encode(sha256.serialize()).decode(),
        }

    def update(self, data: bytes) -> None:
        self.size += len(data)
        self.md5.update(data)
        self.sha256.update(data)

    def digests(self) -> Digests:
        return Digests(self.size, _hex(self.md5), _hex(self.sha256))


def _hex(h: Any) -> str:
    """The hex digest of a hashlib or a rehashes hash (``finalize()``)."""
    return str(h.hexdigest() if hasattr(h, "hexdigest") else h.finalize())


class _Hasher:
    """Feeds :class:`_Hashes` from a thread, in order, at most ``ahead`` blocks behind
    (hashlib lets go of the GIL: the request thread reads on meanwhile)."""

    def __init__(self, hashes: _Hashes, ahead: int = 8) -> None:
        self.hashes = hashes
        self.blocks: queue.Queue[bytes | None] = queue.Queue(maxsize=ahead)
        self.thread = threading.Thread(target=self._run, name="uploadmeter-s3-hash", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while (block := self.blocks.get()) is not None:
            self.hashes.update(block)

    def update(self, data: bytes) -> None:
        self.blocks.put(data)

    def finish(self) -> _Hashes:
        """Every block hashed; the thread ends."""
        self.blocks.put(None)
        self.thread.join()
        return self.hashes


class _S3Writer:
    """Appends a PATCH body: each full part is uploaded by a background thread while the
    next one spools (an unnamed temp file in ``spool_dir``); what is left when the body
    ends (less than a part) is kept as the pending object.  At most ``upload_concurrency``
    parts upload while one spools: ``part_size x (upload_concurrency + 1)`` bytes there,
    each part read once (botocore's signed SHA-256 and the send share its page cache).

    When this process saw every byte of the upload from the first (one PATCH, or PATCHes
    that all reached it), the whole file's hashes are kept for :meth:`S3Storage.join_data`,
    which then needs no second read."""

    def __init__(
        self,
        storage: S3Storage,
        location: str,
        state: Mapping[str, Any],
        start: int,
        length: int | None,
        *,
        hold: bool,
    ) -> None:
        self.s3 = storage
        self.location = location
        self.state = state
        self.length = length
        self.hold = hold
        parts = storage._parts(state)
        self.next_part = len(parts) + 1
        self.base = sum(parts.values())  # bytes in parts (stored or uploading)
        pending = storage._pending(location, parts)
        self.pending_key = pending[0] if pending else None
        self.committed = start
        # The whole file's hashes, when this process has them up to ``start``.
        known = storage._hashes.pop(location, None)
        if start == 0:
            known = _Hashes()
        self.hasher = _Hasher(known) if known is not None and known.size == start else None
        self.pool: concurrent.futures.ThreadPoolExecutor | None = None
        # Parts uploading, oldest first: (future, the offset at the part's end).
        self.uploading: list[tuple[concurrent.futures.Future[None], int]] = []
        self.pending_part = self.next_part  # the part that takes in the pending bytes
        self.spool = self._new_spool()
        try:
            if pending is not None:  # the bytes before ``start``: the next part begins there
                body = storage._call("get_object", Key=pending[0])["Body"]
                with _reading(pending[0]), contextlib.closing(body):
                    shutil.copyfileobj(body, self.spool, BLOCK)
            if self.base + self.spool.tell() != start:
                raise FileNotFoundError(f"{location}: stored data changed")
        except BaseException:
            self.close()
            raise

    def _new_spool(self) -> IO[bytes]:
        # Unnamed (gone with the process): the page cache holds it, not the heap, where
        # freed part-sized buffers stay (glibc) and grow the RSS past the parts in flight.
        return tempfile.TemporaryFile(dir=self.s3.spool_dir)

    def write(self, data: bytes) -> None:
        self.spool.write(data)
        if self.hasher is not None:
            self.hasher.update(data)
        if not self.hold and self.spool.tell() >= self.s3.part_size:
            self._hand_off()

    def _hand_off(self) -> None:
        """Give the spool to an uploading thread (once fewer than ``upload_concurrency``
        parts are uploading)."""
        while len(self.uploading) >= self.s3.upload_concurrency:
            self._wait_oldest()
        spool, number = self.spool, self.next_part
        self.next_part += 1
        self.base += spool.tell()
        self.spool = self._new_spool()
        if self.pool is None:
            workers = self.s3.upload_concurrency
            self.pool = concurrent.futures.ThreadPoolExecutor(workers, "uploadmeter-s3-part")
        future = self.pool.submit(self._upload, spool, number)
        self.uploading.append((future, self.base))

    def _upload(self, spool: IO[bytes], number: int) -> None:
        """(An uploading thread) upload the part, let go of its bytes."""
        with spool:
            self.s3._upload_part(self.state, number, spool)
        if number == self.pending_part and self.pending_key is not None:
            self.s3._delete(self.pending_key)  # its bytes are in this part now
            self.pending_key = None

    def _wait_oldest(self) -> None:
        future, end = self.uploading.pop(0)
        future.result()  # its error is raised here
        self.committed = max(self.committed, end)

    def _wait(self) -> None:
        """Until every part uploading is stored (the first error raised here)."""
        while self.uploading:
            self._wait_oldest()

    def truncate(self, size: int) -> int:
        keep = max(size - self.base, 0)  # parts already handed off stay
        if keep < self.spool.tell():
            self.spool.truncate(keep)
            self.spool.seek(keep)
            self._drop_hasher()  # it saw bytes that are not kept
        return self.base + self.spool.tell()

    def sync(self) -> None:
        while self.hold and self.spool.tell() >= self.s3.part_size:
            self._split_spool()
        size = self.base + self.spool.tell()
        if self.spool.tell() and size == self.length:
            self._hand_off()  # the last part may be small
        self._wait()
        if self.spool.tell():
            key = f"{self.location}/data.part.{self.next_part}"
            self.s3._put(key, self.spool)
            self.spool.seek(0, os.SEEK_END)
            if self.pending_key is not None and self.pending_key != key:
                self.s3._delete(self.pending_key)
            self.pending_key = key
        self.committed = size
        if self.hasher is not None:
            hashes = self.hasher.finish()
            self.hasher = None
            if hashes.size == size:
                self.s3._hashes[self.location] = hashes

    def _drop_hasher(self) -> None:
        if self.hasher is not None:
            self.hasher.finish()
            self.hasher = None

    def _split_spool(self) -> None:
        """(``hold``) The spool grew past a part: hand off its first ``part_size`` bytes."""
        whole = self.spool
        whole.seek(0)
        self.spool = self._new_spool()
        left = self.s3.part_size
        while left and (block := whole.read(min(left, BLOCK))):
            self.spool.write(block)
            left -= len(block)
        self._hand_off()
        with whole:
            shutil.copyfileobj(whole, self.spool, BLOCK)

    def close(self) -> None:
        self._drop_hasher()
        for future, _ in self.uploading:
            with contextlib.suppress(Exception):  # already answered: the offset tells
                future.result()
        self.uploading.clear()
        if self.pool is not None:
            self.pool.shutdown()
        self.spool.close()

    def __enter__(self) -> _S3Writer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _signs_payloads(client: Any) -> bool:
    """Whether botocore signs each request body's SHA-256 (SigV4 payload signing, which
    the store verifies) for a part sent without Content-MD5: yes, unless the client's
    ``Config(s3={"payload_signing_enabled": False})`` or another signature says no."""
    config = getattr(getattr(client, "meta", None), "config", None)
    if config is None:
        return False
    if getattr(config, "signature_version", None) not in (None, "s3v4", "v4"):
        return False
    return (getattr(config, "s3", None) or {}).get("payload_signing_enabled") is not False


def _translate(exc: Exception, operation: str) -> Exception:
    kind = s3_error_kind(exc)
    if kind == MISSING:
        return _ObjectMissing(str(exc))
    if kind == TEMPORARY:
        log.warning("uploadmeter: object store unavailable (%s): %s", operation, exc)
        return ObjectStoreError(f"The object store failed ({operation}): {exc}")
    return exc


@contextlib.contextmanager
def _reading(key: str) -> Iterator[None]:
    """Errors while a response body streams in are the store's temporary trouble."""
    try:
        yield
    except Exception as exc:
        if s3_error_kind(exc) == TEMPORARY:
            raise ObjectStoreError(f"The object store failed reading {key}: {exc}") from exc
        raise
