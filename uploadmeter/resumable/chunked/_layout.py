"""Where one chunked upload lives: its folder of chunks and ``meta.json`` on disk, and its
keys in the store.  Paths and names only, plus reading what is on disk."""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass
from typing import Any

from uploadmeter.core._ids import valid_upload_id
from uploadmeter.resumable._storage import Storage, digest_name
from uploadmeter.resumable.chunked._params import ChunkParams

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
    files: Storage

    @classmethod
    def of(cls, files: Storage, session: str, identifier: str) -> Upload:
        """The upload ``identifier`` of ``session`` in ``files``."""
        key = digest_name("chunks", session, identifier)
        return cls(
            session=session,
            identifier=identifier,
            upload_id=identifier if valid_upload_id(identifier) else "chunks-" + key[:32],
            directory=files.upload_dir("partial", session, key),
            key=key,
            files=files,
        )

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

    def stored(self, meta: ChunkParams) -> list[int]:
        """Chunk numbers stored, ascending (numerically: 2 before 10)."""
        return self.files.chunk_numbers(
            self.directory, chunk_size=meta.chunk_size, total_chunks=meta.total_chunks
        )

    def put_chunk(self, meta: ChunkParams, number: int, received: str) -> bool:
        """Store the received temp file as chunk ``number``; ``False`` when the upload is
        gone (merged, cancelled or expired meanwhile)."""
        return self.files.put_chunk(
            self.directory,
            number,
            received,
            chunk_size=meta.chunk_size,
            total_chunks=meta.total_chunks,
        )

    def read_meta(self, files: Storage, newer_than: float | None = None) -> ChunkParams | None:
        """The upload's declared file (``meta.json``), or ``None`` before its first chunk
        (or when it was created before ``newer_than``)."""
        data = files.read_json(self.meta_path)
        if data is None:
            return None
        if newer_than is not None and float(data.get("created", 0.0)) <= newer_than:
            return None
        fields: dict[str, Any] = {name: data.get(name) for name in _META_FIELDS}
        return ChunkParams(**fields, chunk_number=None, current_chunk_size=None)

    def write_meta(self, files: Storage, params: ChunkParams) -> ChunkParams:
        """Create the folder and its ``meta.json`` from the first chunk's ``params``;
        return the declared file."""
        files.begin(self.directory)
        data = {name: getattr(params, name) for name in _META_FIELDS}
        files.write_json(self.meta_path, dict(data, created=time.time()))
        return dataclasses.replace(params, chunk_number=None, current_chunk_size=None)
