"""Where resumable uploads live on disk, under names the client never chooses.

Chunked (:mod:`uploadmeter.resumable.chunked`) and tus (:mod:`uploadmeter.resumable.tus`)
uploads share one :class:`FileStore`::

    root/
      tmp/                         bodies being received, merges being written
      partial/<session>/<upload>/  meta.json and 1.chunk, 2.chunk, ... of a chunked upload
      tus/<session>/<upload>/      info.json and data of a tus upload
      files/<ab>/<sha256>          finished files, content-addressed (shared by uploads)

``<session>`` and ``<upload>`` are SHA-256 digests, never the client's identifier or file
name, so no request can name a path.  Every file appears by ``os.replace`` from ``tmp/``
(same file system), so a reader never sees half a chunk.  A finished file is flushed to
disk before it enters ``files/``: its name promises its content to every later upload of
the same bytes.  (Chunks are not flushed one by one: the merge checks the total size and,
when it can, the hash, so a chunk torn by a power cut is caught there.)
:meth:`FileStore.cleanup` deletes what was abandoned.

:class:`FileInfo` is what the application receives when an upload is complete.
"""

from __future__ import annotations

import abc
import contextlib
import errno
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO, Any, Literal, Protocol

from uploadmeter.core._locks import StoreLock
from uploadmeter.exceptions import DiskFull, InvalidName, QuotaExceeded, StoreError
from uploadmeter.stores._base import ProgressStore

log = logging.getLogger("uploadmeter")

__all__ = [
    "DISK_FULL_MESSAGE",
    "DISK_FULL_RETRY_AFTER",
    "CleanupStats",
    "DataWriter",
    "Digests",
    "FileInfo",
    "FileStore",
    "Storage",
    "clean_filename",
    "clean_relative_path",
    "copy_and_hash",
    "is_disk_full",
]

BLOCK = 1024 * 1024


# -- what the application receives ---------------------------------------------------------


@dataclass(frozen=True)
class FileInfo:
    """A complete, verified upload, handed to the application's ``on_complete``.

    ``path`` is the content-addressed copy in the :class:`FileStore`; it may be shared with
    other uploads of the same bytes and is kept ``keep_completed`` seconds for instant
    uploads.  Keep the file with :meth:`link_to` (or copy it); do not move or modify it.
    A hard link shares those bytes too: treat it as read-only, or copy it to change it.
    On an :class:`~uploadmeter.S3Storage` the file is the object ``key`` in ``bucket``
    (``path`` is then ``s3://<bucket>/<key>``, not a local file): :meth:`open` streams it,
    :meth:`link_to` downloads it, and the upload holds a reference on it until
    :meth:`S3Storage.release <uploadmeter.S3Storage.release>`.
    ``filename`` and ``relative_path`` are the client's names, checked but only for
    display: never join them to a directory.
    """

    path: str
    filename: str
    size: int
    sha256: str
    md5: str
    session: str
    upload_id: str
    protocol: str  # "chunks" or "tus"
    relative_path: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)
    instant: bool = False  # no bytes were sent: the server already had this file
    bucket: str | None = None  # object storage: where the file is
    key: str | None = None
    storage: Storage | None = field(default=None, repr=False, compare=False)

    def link_to(self, destination: str | os.PathLike[str]) -> str:
        """Hard-link (or, where links are impossible, copy) the file to ``destination``.

        Raises :class:`FileExistsError` when ``destination`` exists.
        """
        dest = os.fspath(destination)
        if self.key is not None:  # an object: download it
            with self.open() as src, open(dest, "xb") as out:
                shutil.copyfileobj(src, out, BLOCK)
            return dest
        try:
            os.link(self.path, dest)
        except OSError as exc:
            if exc.errno not in _NO_HARD_LINK:
                raise
            with open(self.path, "rb") as src, open(dest, "xb") as out:
                shutil.copyfileobj(src, out, BLOCK)
        return dest

    def open(self) -> IO[bytes]:
        """The verified file, opened for reading (a local file, or the object's streamed
        body; close it, do not write to ``path``)."""
        if self.storage is not None:
            return self.storage.open_file(self.path)
        return open(self.path, "rb")


# os.link fails with these where the file system cannot link (or not across devices).
_NO_HARD_LINK = frozenset({errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP})


@dataclass(frozen=True)
class Digests:
    size: int
    md5: str
    sha256: str


def copy_and_hash(
    paths: Iterable[str],
    out: IO[bytes] | None = None,
    progress: Callable[[int], None] | None = None,
) -> Digests:
    """Read ``paths`` in the given order in one pass: MD5, SHA-256, size; copy into ``out``.

    Hand-written because ``hashlib.file_digest`` computes one digest of one file and
    reports no progress; a multi-GB merge needs both digests, the copy and the progress
    from a single read.  ``progress(bytes_so_far)`` runs after every block.
    """
    md5, sha = hashlib.md5(usedforsecurity=False), hashlib.sha256()
    size = 0
    buf = bytearray(BLOCK)
    view = memoryview(buf)
    for path in paths:
        with open(path, "rb") as f:
            while n := f.readinto(buf):
                piece = view[:n]
                md5.update(piece)
                sha.update(piece)
                if out is not None:
                    out.write(piece)
                size += n
                if progress is not None:
                    progress(size)
    return Digests(size, md5.hexdigest(), sha.hexdigest())


@dataclass
class CleanupStats:
    partial: int = 0  # abandoned chunked uploads removed
    tus: int = 0  # expired tus uploads removed
    files: int = 0  # completed files past keep_completed removed
    temp: int = 0  # stray temp files removed


# -- names ---------------------------------------------------------------------------------


# Disk full is temporary: both protocols answer 507 with this Retry-After (seconds) and
# keep what they stored whole, so the client finishes once space returns.
DISK_FULL_RETRY_AFTER = 10
DISK_FULL_MESSAGE = "The server's disk is full; try again later."
_DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` says the disk (or the user's quota on it) has no room left."""
    if isinstance(exc, DiskFull):
        return True
    return isinstance(exc, OSError) and exc.errno in _DISK_FULL_ERRNOS


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_DRIVE = re.compile(r"^[A-Za-z]:")


def clean_filename(name: str, *, max_bytes: int = 255) -> str:
    """Check a client's file name; return it NFC-normalised.

    Refuses path separators, ``.``/``..``, control characters (NUL included) and names
    longer than ``max_bytes`` in UTF-8.  The name is still only ever *shown*.  (Not
    ``werkzeug.utils.secure_filename``: that rewrites names into ASCII path components,
    while this keeps the user's name as typed and refuses the hostile ones.)
    """
    name = unicodedata.normalize("NFC", name)
    if not name or name in (".", ".."):
        raise InvalidName("The file name is empty.")
    if _CONTROL.search(name):
        raise InvalidName("The file name contains control characters.")
    if "/" in name or "\\" in name:
        raise InvalidName("The file name must not contain a path.")
    if len(name.encode("utf-8", "surrogatepass")) > max_bytes:
        raise InvalidName(f"The file name is longer than {max_bytes} bytes.")
    return name


def clean_relative_path(path: str, *, max_bytes: int = 4096) -> str:
    """Check a client's relative path (folder uploads): no absolute path, no ``..``."""
    path = unicodedata.normalize("NFC", path)
    if _CONTROL.search(path):
        raise InvalidName("The relative path contains control characters.")
    if path.startswith(("/", "\\")) or _DRIVE.match(path):
        raise InvalidName("The relative path must not be absolute.")
    if any(part == ".." for part in re.split(r"[/\\]", path)):
        raise InvalidName("The relative path must not contain '..'.")
    if len(path.encode("utf-8", "surrogatepass")) > max_bytes:
        raise InvalidName(f"The relative path is longer than {max_bytes} bytes.")
    return path


def digest_name(*parts: str) -> str:
    """A storage name derived from client values: hex SHA-256, 40 characters."""
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode("utf-8", "surrogatepass"))
        h.update(b"\0")
    return h.hexdigest()[:40]


# -- the storage interface -----------------------------------------------------------------


class DataWriter(Protocol):
    """Appends a tus PATCH body to an upload's data (:meth:`Storage.open_data`)."""

    committed: int  # the data's size as :meth:`Storage.data_size` shows it now

    def write(self, data: bytes) -> None: ...

    def truncate(self, size: int) -> int:
        """Keep only the first ``size`` bytes; returns the size kept (an object store
        cannot take back parts it already stored)."""
        ...

    def sync(self) -> None:
        """Make what was written durable (an answered offset is a promise)."""
        ...

    def close(self) -> None: ...

    def __enter__(self) -> DataWriter: ...

    def __exit__(self, *exc: object) -> None: ...


class Storage(abc.ABC):
    """Where resumable uploads keep their bytes: one interface, two implementations.

    :class:`FileStore` (a local directory, the default) and
    :class:`~uploadmeter.S3Storage` (an S3-compatible object store, for several machines).
    The chunk and tus endpoints only ever call these methods.  ``location`` arguments are
    the storage's own names (paths or object keys built by :meth:`upload_dir`), never
    the client's.  Small state documents (``meta.json``, ``info.json``) go through
    ``read_json()`` / ``write_json()``; partial bytes through :meth:`put_chunk` (chunks)
    and :meth:`open_data` (tus); :meth:`join_chunks` / :meth:`join_data` make the whole
    file and hash it in one streaming read, :meth:`adopt` files it under its SHA-256
    (stored once), :meth:`release` lets go of it.  (A future ``concat`` -- tus
    concatenation, S3 ``UploadPartCopy`` -- is one more method here.)
    """

    partial_root: str
    tus_root: str
    expire_after: float
    keep_completed: float | None
    cleanup_interval: float

    def __init__(self) -> None:
        self._next_cleanup = 0.0
        self._store: ProgressStore | None = None

    def bind(self, store: ProgressStore) -> None:
        """The progress store, for locks across machines (the endpoints call this)."""
        self._store = store

    # -- names -------------------------------------------------------------------------

    @staticmethod
    def session_key(session: str) -> str:
        return digest_name("session", session)[:32]

    def upload_dir(self, kind: Literal["partial", "tus"], session: str, name: str) -> str:
        """``partial/<session>/<name>`` or ``tus/<session>/<name>``; ``name`` must be ours."""
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", name):
            raise ValueError(f"not a storage name: {name!r}")
        base = {"partial": self.partial_root, "tus": self.tus_root}[kind]
        return os.path.join(base, self.session_key(session), name)

    # -- local temp files (bodies being received) ------------------------------------------

    @abc.abstractmethod
    def temp_file(self, suffix: str = ".part") -> tuple[str, IO[bytes]]:
        """A new local file, open for writing: ``(path, file)``."""

    @abc.abstractmethod
    def discard(self, path: str) -> None:
        """Delete a temp file (or a joined file :meth:`adopt` did not take)."""

    # -- state documents ---------------------------------------------------------------

    @abc.abstractmethod
    def read_json(self, path: str) -> dict[str, Any] | None: ...

    @abc.abstractmethod
    def write_json(self, path: str, data: Mapping[str, Any]) -> None: ...

    @abc.abstractmethod
    def begin(self, location: str, *, data: bool = False) -> None:
        """Make room for a new upload at ``location`` (``data``: a tus upload's data)."""

    @abc.abstractmethod
    def exists(self, location: str) -> bool: ...

    @abc.abstractmethod
    def remove_tree(self, location: str) -> None:
        """Delete an upload's state and partial bytes (parts, multipart uploads)."""

    # -- chunks ------------------------------------------------------------------------

    @abc.abstractmethod
    def put_chunk(
        self, location: str, number: int, received: str, *, chunk_size: int, total_chunks: int
    ) -> bool:
        """Store the received temp file as chunk ``number``; ``False`` when the upload at
        ``location`` is gone (merged, cancelled, expired)."""

    @abc.abstractmethod
    def chunk_numbers(self, location: str, *, chunk_size: int, total_chunks: int) -> list[int]:
        """The chunk numbers stored, ascending."""

    @abc.abstractmethod
    def join_chunks(
        self,
        location: str,
        numbers: list[int],
        *,
        chunk_size: int,
        progress: Callable[[int], None] | None = None,
    ) -> tuple[str, Digests]:
        """Join the chunks in order into one file, hashing it: ``(joined, digests)``.
        ``joined`` goes to :meth:`adopt` or :meth:`discard`."""

    # -- tus data ----------------------------------------------------------------------

    @abc.abstractmethod
    def data_size(self, location: str) -> int:
        """Bytes of a tus upload's data stored; :class:`FileNotFoundError` when gone."""

    @abc.abstractmethod
    def open_data(self, location: str, start: int, *, length: int | None, hold: bool) -> DataWriter:
        """A writer appending at ``start`` (the current size).  ``hold``: keep every byte
        takeable back (``DataWriter.truncate()``) until ``DataWriter.sync()``."""

    @abc.abstractmethod
    def join_data(
        self, location: str, progress: Callable[[int], None] | None = None
    ) -> tuple[str, Digests]:
        """The whole data of a tus upload, hashed: ``(joined, digests)``."""

    def concatenate(
        self, locations: Sequence[str], progress: Callable[[int], None] | None = None
    ) -> tuple[str, Digests]:
        """The data of the finished tus uploads at ``locations`` joined in order, hashed on
        the way: ``(joined, digests)`` for :meth:`adopt` or :meth:`discard` (tus
        concatenation).  On any failure nothing is left behind."""
        raise NotImplementedError

    # -- finished files ----------------------------------------------------------------

    @abc.abstractmethod
    def adopt(self, path: str, sha256: str) -> tuple[str, bool]:
        """File a verified joined file under its hash: ``(its location, whether new)``;
        an identical file already there wins (``path`` is deleted)."""

    @abc.abstractmethod
    def existing(self, sha256: str, size: int) -> str | None:
        """The stored file with this hash and size, or ``None``."""

    @abc.abstractmethod
    def file_fields(self, location: str) -> dict[str, Any]:
        """:class:`FileInfo` fields naming the stored file at ``location``."""

    @abc.abstractmethod
    def open_file(self, location: str) -> IO[bytes]: ...

    def retain(self, info: FileInfo) -> None:  # noqa: B027 (most storages count nothing)
        """The upload ``info`` references its file (before ``on_complete`` sees it)."""

    @abc.abstractmethod
    def release(self, info: FileInfo, *, new_file: bool = False) -> None:
        """The upload ``info`` no longer references its file (refused by the
        application; ``new_file``: this upload stored it)."""

    # -- quota ---------------------------------------------------------------------------

    def session_lock(self, store: ProgressStore, session: str) -> StoreLock:
        """The lock under which a session's uploads are created or deleted (in ``store``,
        so across processes): parallel first requests cannot both pass the quota check."""
        return StoreLock(store, "files-session:" + self.session_key(session), wait=10)

    def check_room(self, session: str, size: int, quota: int) -> None:
        """Raise :class:`QuotaExceeded` or :class:`DiskFull` unless a new upload of
        ``size`` bytes fits (call it under :meth:`session_lock`)."""
        reserved = self.reserved_bytes(session)
        if reserved + size > quota:
            raise QuotaExceeded(reserved, quota)
        if self.free_space() < size:
            raise DiskFull("The server has no room for this file now.")

    @abc.abstractmethod
    def free_space(self) -> int: ...

    @abc.abstractmethod
    def upload_states(self, session_key: str) -> Iterable[dict[str, Any]]:
        """The state documents of one session's uploads (``meta.json``, ``info.json``)."""

    def reserved_bytes(self, session: str) -> int:
        """Declared sizes of this session's unfinished uploads (chunked and tus)."""
        total = 0
        for meta in self.upload_states(self.session_key(session)):
            if not meta.get("complete"):
                total += int(meta.get("total_size") or meta.get("length") or 0)
        return total

    # -- cleanup -------------------------------------------------------------------------

    @property
    def cleanup_name(self) -> str:
        """Names this storage among all processes (one cleanup at a time)."""
        return self.partial_root

    def maybe_cleanup(self, store: ProgressStore | None = None) -> CleanupStats | None:
        """Run ``cleanup()`` if this process, and (given a store) every process, has not
        for ``cleanup_interval`` seconds.  Never raises: requests call this on the way."""
        now = time.time()
        if now < self._next_cleanup:
            return None
        self._next_cleanup = now + self.cleanup_interval
        try:
            if store is not None and not store.add(
                "filestore-cleanup:" + digest_name(self.cleanup_name), "1", self.cleanup_interval
            ):
                return None
            return self.cleanup(now)
        except (OSError, StoreError) as exc:
            log.warning("uploadmeter: cleanup of %s failed: %s", self.cleanup_name, exc)
            return None

    @abc.abstractmethod
    def cleanup(self, now: float | None = None) -> CleanupStats: ...


# -- the local store -----------------------------------------------------------------------

_CHUNK_FILE = re.compile(r"(\d{1,9})\.chunk")


class FileStore(Storage):
    """The directory tree of resumable uploads.

    :param directory: root of the tree; created if missing.  Keep it on one file system.
    :param expire_after: seconds an unfinished upload may stay idle before it is deleted
        (also tus's ``Upload-Expires``).
    :param keep_completed: seconds a finished file stays for instant uploads, counted from
        its last use; ``None`` keeps files until the application removes them.
    :param cleanup_interval: :meth:`maybe_cleanup` runs at most this often (all processes).
    :param temp_ttl: seconds after which a file left in ``tmp/`` (a crashed request's
        body or merge) is deleted.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        expire_after: float = 24 * 3600.0,
        keep_completed: float | None = 24 * 3600.0,
        cleanup_interval: float = 300.0,
        temp_ttl: float = 6 * 3600.0,
    ) -> None:
        super().__init__()
        self.root = os.path.abspath(os.fspath(directory))
        self.expire_after = expire_after
        self.keep_completed = keep_completed
        self.cleanup_interval = cleanup_interval
        self.temp_ttl = temp_ttl
        self.tmp_dir = os.path.join(self.root, "tmp")
        self.partial_root = os.path.join(self.root, "partial")
        self.tus_root = os.path.join(self.root, "tus")
        self.files_root = os.path.join(self.root, "files")
        for path in (self.tmp_dir, self.partial_root, self.tus_root, self.files_root):
            os.makedirs(path, exist_ok=True)

    @property
    def cleanup_name(self) -> str:
        return self.root

    def complete_path(self, sha256: str) -> str:
        if not re.fullmatch(r"[0-9a-f]{64}", sha256):
            raise ValueError(f"not a SHA-256: {sha256!r}")
        return os.path.join(self.files_root, sha256[:2], sha256)

    # -- writing -------------------------------------------------------------------------

    def temp_file(self, suffix: str = ".part") -> tuple[str, IO[bytes]]:
        """A new file in ``tmp/``, open for writing: ``(path, file)``."""
        fd, path = tempfile.mkstemp(suffix=suffix, dir=self.tmp_dir)
        return path, os.fdopen(fd, "w+b")

    def discard(self, path: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)

    def write_json(self, path: str, data: Mapping[str, Any]) -> None:
        """Write JSON atomically (temp file, then rename)."""
        tmp, f = self.temp_file(".json")
        try:
            with f:
                f.write(json.dumps(data, ensure_ascii=False).encode("utf-8"))
            os.replace(tmp, path)
        finally:
            self.discard(tmp)

    def read_json(self, path: str) -> dict[str, Any] | None:
        try:
            with open(path, "rb") as f:
                data = json.loads(f.read())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            log.warning("uploadmeter: unreadable %s", path)
            return None
        return data if isinstance(data, dict) else None

    def begin(self, location: str, *, data: bool = False) -> None:
        os.makedirs(location, exist_ok=not data)
        if data:
            open(os.path.join(location, "data"), "wb").close()

    def exists(self, location: str) -> bool:
        return os.path.isdir(location)

    def remove_tree(self, location: str) -> None:
        shutil.rmtree(location, ignore_errors=True)

    # -- chunks --------------------------------------------------------------------------

    def put_chunk(
        self, location: str, number: int, received: str, *, chunk_size: int, total_chunks: int
    ) -> bool:
        try:
            os.replace(received, os.path.join(location, f"{number}.chunk"))
        except FileNotFoundError:
            return False
        return True

    def chunk_numbers(self, location: str, *, chunk_size: int, total_chunks: int) -> list[int]:
        """Chunk numbers on disk, ascending (numerically: 2 before 10)."""
        try:
            names = os.listdir(location)
        except FileNotFoundError:
            return []
        numbers = (int(m.group(1)) for m in map(_CHUNK_FILE.fullmatch, names) if m)
        return sorted(n for n in numbers if 1 <= n <= total_chunks)

    def join_chunks(
        self,
        location: str,
        numbers: list[int],
        *,
        chunk_size: int,
        progress: Callable[[int], None] | None = None,
    ) -> tuple[str, Digests]:
        """One pass: the chunks copied into a temp file and hashed (each byte read once
        and written once)."""
        temp, out = self.temp_file()
        try:
            with out:
                chunks = (os.path.join(location, f"{n}.chunk") for n in numbers)
                digests = copy_and_hash(chunks, out, progress)
        except BaseException:
            self.discard(temp)
            raise
        return temp, digests

    # -- tus data ------------------------------------------------------------------------

    def data_size(self, location: str) -> int:
        return os.path.getsize(os.path.join(location, "data"))

    def open_data(self, location: str, start: int, *, length: int | None, hold: bool) -> DataWriter:
        return _LocalWriter(os.path.join(location, "data"), start)

    def join_data(
        self, location: str, progress: Callable[[int], None] | None = None
    ) -> tuple[str, Digests]:
        path = os.path.join(location, "data")
        return path, copy_and_hash([path], None, progress)

    # -- finished files ------------------------------------------------------------------

    def adopt(self, path: str, sha256: str) -> tuple[str, bool]:
        """Move a verified file into ``files/``: ``(its new path, whether it is new)``.

        An identical file already there wins (``path`` is deleted).  The bytes are
        flushed to disk first: a file under this name is trusted by instant uploads.
        """
        dest = self.complete_path(sha256)
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        if os.path.exists(dest):
            self.discard(path)
            self.touch(dest)
            return dest, False
        with open(path, "rb") as f:
            os.fsync(f.fileno())
        os.replace(path, dest)
        return dest, True

    def concatenate(
        self, locations: Sequence[str], progress: Callable[[int], None] | None = None
    ) -> tuple[str, Digests]:
        """Join the uploads' data in order into a new file in ``tmp/`` (one read of each
        part, one write); ``progress`` as for ``copy_and_hash()``."""
        tmp, out = self.temp_file()
        try:
            with out:
                paths = [os.path.join(location, "data") for location in locations]
                digests = copy_and_hash(paths, out, progress)
        except BaseException:
            self.discard(tmp)
            raise
        return tmp, digests

    def existing(self, sha256: str, size: int) -> str | None:
        """The stored file with this hash and size, freshly touched, or ``None``."""
        path = self.complete_path(sha256)
        try:
            if os.path.getsize(path) != size:
                return None
        except OSError:
            return None
        self.touch(path)
        return path

    def file_fields(self, location: str) -> dict[str, Any]:
        return {"path": location}

    def open_file(self, location: str) -> IO[bytes]:
        return open(location, "rb")

    def release(self, info: FileInfo, *, new_file: bool = False) -> None:
        """Files are kept ``keep_completed`` seconds from their last use; one this upload
        stored and the application refused goes at once."""
        if new_file:
            self.discard(info.path)

    @staticmethod
    def touch(path: str) -> None:
        with contextlib.suppress(OSError):
            os.utime(path)

    def free_space(self) -> int:
        return shutil.disk_usage(self.root).free

    def upload_states(self, session_key: str) -> Iterable[dict[str, Any]]:
        for base, meta_name in ((self.partial_root, "meta.json"), (self.tus_root, "info.json")):
            for entry in _scan(os.path.join(base, session_key)):
                meta = self.read_json(os.path.join(entry.path, meta_name))
                if meta:
                    yield meta

    # -- cleanup -------------------------------------------------------------------------

    def cleanup(self, now: float | None = None) -> CleanupStats:
        """Delete abandoned chunks, expired tus uploads, old finished files, stray temps."""
        now = time.time() if now is None else now
        stats = CleanupStats()
        for entry in _scan(self.tmp_dir):
            if _mtime(entry.path) < now - self.temp_ttl:
                self.discard(entry.path)
                stats.temp += 1
        for session_dir in _scan(self.partial_root):
            for upload in _scan(session_dir.path):
                # Storing a chunk renames it into the folder, which updates its mtime.
                if _mtime(upload.path) < now - self.expire_after:
                    self.remove_tree(upload.path)
                    stats.partial += 1
            _rmdir_if_empty(session_dir.path)
        for session_dir in _scan(self.tus_root):
            for upload in _scan(session_dir.path):
                info = self.read_json(os.path.join(upload.path, "info.json"))
                expires = float(info["expires_at"]) if info else _mtime(upload.path) + 3600
                if expires < now:
                    self.remove_tree(upload.path)
                    stats.tus += 1
            _rmdir_if_empty(session_dir.path)
        if self.keep_completed is not None:
            for bucket in _scan(self.files_root):
                for entry in _scan(bucket.path):
                    if _mtime(entry.path) < now - self.keep_completed:
                        self.discard(entry.path)
                        stats.files += 1
                _rmdir_if_empty(bucket.path)
        return stats


class _LocalWriter:
    """Appends to a tus upload's data file, unbuffered: every byte counted as written is
    in the file, and a HEAD meanwhile sees the offset grow."""

    def __init__(self, path: str, start: int) -> None:
        self._f = open(path, "r+b", buffering=0)  # noqa: SIM115 (closed by close())
        self._f.seek(start)
        self.committed = start

    def write(self, data: bytes) -> None:
        """All of ``data``, or (disk full) none of it."""
        view = memoryview(data)  # unbuffered writes may be short
        try:
            while view:
                view = view[self._f.write(view) or 0 :]
        except OSError:
            self._f.truncate(self.committed)  # drop the part that fitted
            self._f.seek(self.committed)
            raise
        self.committed += len(data)

    def truncate(self, size: int) -> int:
        self._f.truncate(size)
        self._f.seek(size)
        self.committed = size
        return size

    def sync(self) -> None:
        os.fsync(self._f.fileno())

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> _LocalWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _scan(path: str) -> list[os.DirEntry[str]]:
    try:
        return list(os.scandir(path))
    except FileNotFoundError:
        return []


def _mtime(path: str) -> float:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return 0.0


def _rmdir_if_empty(path: str) -> None:
    with contextlib.suppress(OSError):
        os.rmdir(path)
