"""The merge of a chunked upload: its chunks joined in numeric order in one streaming pass
that computes MD5 and SHA-256, verified against the declared size, a declared ``sha256``
and an identifier that is a hash, then adopted into the file store."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Literal

from uploadmeter.exceptions import ChunkRefused
from uploadmeter.resumable._storage import Digests
from uploadmeter.resumable.chunked._params import SHA256, ChunkParams

if TYPE_CHECKING:
    from uploadmeter.core._locks import StoreLock
    from uploadmeter.processing import ProcessingTask
    from uploadmeter.resumable._completion import ResumableEndpoint
    from uploadmeter.resumable.chunked._layout import Upload

_MD5 = re.compile(r"[0-9a-fA-F]{32}")


def hash_kind(identifier: str, *, hash_identifiers: bool) -> Literal["md5", "sha256"] | None:
    """``"md5"``/``"sha256"`` when the merge verifies ``identifier`` as that hash."""
    if not hash_identifiers:
        return None
    if _MD5.fullmatch(identifier):
        return "md5"
    if SHA256.fullmatch(identifier):
        return "sha256"
    return None


def verify(meta: ChunkParams, digests: Digests, *, hash_identifiers: bool) -> str | None:
    """Why the merged file is not the declared one, or ``None`` when it is."""
    if digests.size != meta.total_size:
        return f"The merged file has {digests.size} bytes, not {meta.total_size}."
    if meta.sha256 and meta.sha256 != digests.sha256:
        return "The merged file does not match its declared SHA-256; upload it again."
    kind = hash_kind(meta.identifier, hash_identifiers=hash_identifiers)
    ident = meta.identifier.lower()
    if kind == "md5" and ident != digests.md5:
        return "The merged file does not match its MD5 identifier; upload it again."
    if kind == "sha256" and ident != digests.sha256:
        return "The merged file does not match its SHA-256 identifier; upload it again."
    return None


def join_chunks(
    endpoint: ResumableEndpoint,
    up: Upload,
    meta: ChunkParams,
    task: ProcessingTask,
    lock: StoreLock,
    *,
    hash_identifiers: bool,
) -> tuple[str, bool, Digests]:
    """Join the chunks of ``up`` into the storage: ``(location, created, digests)``.

    ``task`` shows the bytes read, ``lock`` is kept meanwhile.  A mismatch fails the task
    (415) and raises :class:`ChunkRefused`; on any error no joined file is left.
    """
    files = endpoint.files
    joined, digests = files.join_chunks(
        up.directory,
        meta.numbers,
        chunk_size=meta.chunk_size,
        progress=endpoint.progress(task, lock),
    )
    try:
        problem = verify(meta, digests, hash_identifiers=hash_identifiers)
        if problem is not None:
            task.fail(problem, 415)
            raise ChunkRefused("checksum_mismatch", problem)
        path, created = files.adopt(joined, digests.sha256)
    except BaseException:
        files.discard(joined)
        raise
    return path, created, digests
