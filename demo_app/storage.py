"""Where the demo keeps uploaded files: one folder, safe unique names, SHA-256 on save.

A file's name comes from werkzeug's ``secure_filename`` (never the client's path), made
unique with ``-2``, ``-3``...  The bytes go to a hidden ``.part-*`` file first and are
linked to their final name only when complete, so a failed or cancelled upload leaves
nothing behind and two uploads with one name cannot overwrite each other.  The same
holds for files the demo makes itself (:meth:`UploadFolder.create`, the compressor) and
for finished chunked uploads linked in (:meth:`UploadFolder.add`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import IO

from werkzeug.utils import secure_filename

COPY_CHUNK = 1024 * 1024
MAX_SUFFIX = 10_000


@dataclass(frozen=True)
class StoredFile:
    name: str  # the file's name in the folder
    original: str  # the name the browser sent (display only, always escaped)
    size: int
    sha256: str
    saved_at: str  # ISO 8601, UTC
    compressed_from: str | None = None  # a .gz the demo made: the name of its source


class NewFile:
    """A file being written into the folder (see :meth:`UploadFolder.create`): a writable
    binary stream that hashes and counts what passes through it."""

    def __init__(self, out: IO[bytes]) -> None:
        self._out = out
        self.digest = hashlib.sha256()
        self.size = 0
        self.stored: StoredFile | None = None  # set once the file is in place

    def write(self, data: bytes) -> int:
        self._out.write(data)
        self.digest.update(data)
        self.size += len(data)
        return len(data)

    def flush(self) -> None:
        self._out.flush()


class UploadFolder:
    """The demo's uploads folder, with a small JSON sidecar per file in ``.meta/``."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.meta = os.path.join(root, ".meta")

    def save(self, stream: IO[bytes], original: str) -> StoredFile:
        with self.create(original) as new:
            while chunk := stream.read(COPY_CHUNK):
                new.write(chunk)
        assert new.stored is not None
        return new.stored

    @contextlib.contextmanager
    def create(self, original: str, *, compressed_from: str | None = None) -> Iterator[NewFile]:
        """Write a new file: ``with folder.create("a.txt") as f: f.write(...)``.

        The bytes go to a hidden part file; when the block ends without an exception the
        file gets its unique name and ``f.stored`` describes it, else nothing is kept.
        """
        os.makedirs(self.meta, exist_ok=True)
        fd, part = tempfile.mkstemp(prefix=".part-", dir=self.root)
        try:
            with os.fdopen(fd, "wb") as out:
                new = NewFile(out)
                yield new
            name = self._link_unique(part, secure_filename(original) or "upload")
        finally:
            os.unlink(part)
        new.stored = self._describe_new(
            name, original, new.size, new.digest.hexdigest(), compressed_from
        )

    def add(self, source: str, original: str, sha256: str) -> StoredFile:
        """Keep a finished file from elsewhere (a verified chunked upload) under a unique
        name: a hard link, or a copy across file systems.  ``source`` is left as it is."""
        os.makedirs(self.meta, exist_ok=True)
        try:
            name = self._link_unique(source, secure_filename(original) or "upload")
        except FileExistsError:
            raise
        except OSError:  # another file system, or links not allowed: copy
            with open(source, "rb") as f:
                return self.save(f, original)
        return self._describe_new(name, original, os.stat(source).st_size, sha256, None)

    def remove(self, name: str) -> None:
        """Delete a stored file and its sidecar (gone already is fine)."""
        for path in (os.path.join(self.root, name), os.path.join(self.meta, name + ".json")):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    def path(self, name: str) -> str:
        return os.path.join(self.root, name)

    def _describe_new(
        self, name: str, original: str, size: int, sha256: str, compressed_from: str | None
    ) -> StoredFile:
        stored = StoredFile(
            name=name,
            original=original,
            size=size,
            sha256=sha256,
            saved_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            compressed_from=compressed_from,
        )
        meta_part = os.path.join(self.meta, f".{name}.json.part")
        with open(meta_part, "w", encoding="utf-8") as f:
            json.dump(asdict(stored), f, ensure_ascii=False)
        os.replace(meta_part, os.path.join(self.meta, name + ".json"))
        return stored

    def _link_unique(self, source: str, name: str) -> str:
        stem, ext = os.path.splitext(name)
        for n in range(1, MAX_SUFFIX):
            candidate = name if n == 1 else f"{stem}-{n}{ext}"
            try:
                # A hard link never replaces an existing file: the name is ours or taken.
                os.link(source, os.path.join(self.root, candidate))
            except FileExistsError:
                continue
            return candidate
        raise FileExistsError(f"no free name for {name!r}")

    def files(self) -> list[StoredFile]:
        """Every stored file, newest first."""
        if not os.path.isdir(self.root):
            return []
        found = []
        for entry in os.scandir(self.root):
            if entry.name.startswith(".") or not entry.is_file():
                continue
            found.append(self.describe(entry.name))
        return sorted(found, key=lambda f: (f.saved_at, f.name), reverse=True)

    def describe(self, name: str) -> StoredFile:
        meta = os.path.join(self.meta, name + ".json")
        with contextlib.suppress(OSError, ValueError, TypeError), open(meta, encoding="utf-8") as f:
            return StoredFile(**json.load(f))
        # A file put there by hand: describe it from the disk.
        path = os.path.join(self.root, name)
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(COPY_CHUNK):
                digest.update(chunk)
        stat = os.stat(path)
        saved = datetime.fromtimestamp(stat.st_mtime, timezone.utc).isoformat(timespec="seconds")
        return StoredFile(name, name, stat.st_size, digest.hexdigest(), saved)
