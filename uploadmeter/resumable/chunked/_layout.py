"""Where one chunked upload lives: its folder of chunks and ``meta.json`` on disk, and its
keys in the store.  Paths and names only, plus reading what is on disk."""

from __future__ import annotations

import dataclasses
import os
import re
import time
from dataclasses import dataclass
from typing import Any

from uploadmeter.core._ids import valid_upload_id
from uploadmeter.resumable._storage import FileStore, digest_name
from uploadmeter.resumable.chunked._params import ChunkParams

_CHUNK_FILE = re.compile(r"(\d{1,9})\.chunk")
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


@dataclass(frozen=True)
class Upload:
    """Where one upload of one session lives: its folder and its keys in the store."""

    session: str
    identifier: str
    upload_id: str
    directory: str
    key: str

    @classmethod
    def of(cls, files: FileStore, session: str, identifier: str) -> Upload:
        """The upload ``identifier`` of ``session`` in ``files``."""
        key = digest_name("chunks", session, identifier)
        return cls(
            session=session,
            identifier=identifier,
            upload_id=identifier if valid_upload_id(identifier) else "chunks-" + key[:32],
            directory=files.upload_dir("partial", session, key),
            key=key,
        )

    def chunk_path(self, number: int) -> str:
        return os.path.join(self.directory, f"{number}.chunk")

    @property
    def meta_path(self) -> str:
        return os.path.join(self.directory, "meta.json")

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

    def read_meta(self, files: FileStore, newer_than: float | None = None) -> ChunkParams | None:
        """The upload's declared file (``meta.json``), or ``None`` before its first chunk
        (or when it was created before ``newer_than``)."""
        data = files.read_json(self.meta_path)
        if data is None:
            return None
        if newer_than is not None and float(data.get("created", 0.0)) <= newer_than:
            return None
        fields: dict[str, Any] = {name: data.get(name) for name in _META_FIELDS}
        return ChunkParams(**fields, chunk_number=None, current_chunk_size=None)

    def write_meta(self, files: FileStore, params: ChunkParams) -> ChunkParams:
        """Create the folder and its ``meta.json`` from the first chunk's ``params``;
        return the declared file."""
        os.makedirs(self.directory, exist_ok=True)
        data = {name: getattr(params, name) for name in _META_FIELDS}
        files.write_json(self.meta_path, dict(data, created=time.time()))
        return dataclasses.replace(params, chunk_number=None, current_chunk_size=None)
