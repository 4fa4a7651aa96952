"""Where the demo keeps uploaded files: one folder, safe unique names, SHA-256 on save.

A file's name comes from werkzeug's ``secure_filename`` (never the client's path), made
unique with ``-2``, ``-3``...  The bytes go to a hidden ``.part-*`` file first and are
linked to their final name only when complete, so a failed or cancelled upload leaves
nothing behind and two uploads with one name cannot overwrite each other.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
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


class UploadFolder:
    """The demo's uploads folder, with a small JSON sidecar per file in ``.meta/``."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.meta = os.path.join(root, ".meta")

    def save(self, stream: IO[bytes], original: str) -> StoredFile:
        os.makedirs(self.meta, exist_ok=True)
        digest = hashlib.sha256()
        size = 0
        fd, part = tempfile.mkstemp(prefix=".part-", dir=self.root)
        try:
            with os.fdopen(fd, "wb") as out:
                while chunk := stream.read(COPY_CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
                    size += len(chunk)
            name = self._link_unique(part, secure_filename(original) or "upload")
        finally:
            os.unlink(part)
        stored = StoredFile(
            name=name,
            original=original,
            size=size,
            sha256=digest.hexdigest(),
            saved_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
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
