"""What the store remembers of completed chunked uploads: the "done" mark of an upload
(which later requests belong to it) and the "have" marks of verified hashes (instant
upload: a file the server already has is not sent again)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Literal

from uploadmeter.resumable.chunked._merge import hash_kind

if TYPE_CHECKING:
    from uploadmeter.core._context import MeterContext
    from uploadmeter.resumable._storage import FileInfo, Storage
    from uploadmeter.resumable.chunked._layout import Upload
    from uploadmeter.resumable.chunked._params import ChunkParams

InstantUpload = Literal["session", "global"] | None


class Completions:
    """The done and have marks of one chunk endpoint."""

    def __init__(
        self,
        context: MeterContext,
        files: Storage,
        *,
        instant_upload: InstantUpload,
        hash_identifiers: bool,
    ) -> None:
        self.context = context
        self.files = files
        self.instant_upload = instant_upload
        self.hash_identifiers = hash_identifiers

    def hash_kind(self, identifier: str) -> Literal["md5", "sha256"] | None:
        return hash_kind(identifier, hash_identifiers=self.hash_identifiers)

    # -- done: one upload ---------------------------------------------------------------

    def mark(self, up: Upload) -> dict[str, Any] | None:
        """The completion mark of ``up``: ``{"upload_id", "result", "at"}``."""
        text = self.context.store.get(up.done_key)
        return None if text is None else dict(json.loads(text))

    def covers(self, up: Upload, mark: dict[str, Any], arrived: float | None) -> bool:
        """Whether a request that ``arrived`` then belongs to the completed upload.

        A verified hash is that file whenever it comes back.  Another identifier names one
        upload: a request that arrived after it completed is a new upload (an edited file
        of the same name and size), one that arrived before is a late duplicate.
        """
        if arrived is None or self.hash_kind(up.identifier) is not None:
            return True
        return arrived <= float(mark.get("at", 0.0))

    def done(self, up: Upload, arrived: float | None = None) -> dict[str, Any] | None:
        """The completion mark, if the request that ``arrived`` then belongs to it."""
        mark = self.mark(up)
        return mark if mark is not None and self.covers(up, mark, arrived) else None

    def set_done(self, up: Upload, done: dict[str, Any]) -> None:
        """Mark ``up`` complete, as long as its finished record lives."""
        value = json.dumps(done, ensure_ascii=False)
        self.context.store.set(up.done_key, value, self.context.records.finished_ttl)

    def clear_done(self, up: Upload) -> None:
        self.context.store.delete(up.done_key)

    # -- have: instant upload -----------------------------------------------------------

    @staticmethod
    def _have_key(scope: str, algorithm: str, digest: str) -> str:
        return f"chunks-have:{scope}:{algorithm}:{digest}"

    def remember(self, session: str, info: FileInfo) -> None:
        """Remember that ``session`` (and with ``"global"`` everyone) has ``info``."""
        if self.instant_upload is None:
            return
        value = json.dumps({"sha256": info.sha256, "md5": info.md5, "size": info.size})
        keep = self.files.keep_completed
        ttl = keep if keep is not None else 30 * 24 * 3600.0
        scope = self.files.session_key(session)
        store = self.context.store
        store.set(self._have_key(scope, "md5", info.md5), value, ttl)
        store.set(self._have_key(scope, "sha256", info.sha256), value, ttl)
        if self.instant_upload == "global":
            store.set(self._have_key("global", "sha256", info.sha256), value, ttl)

    def find(self, up: Upload, params: ChunkParams) -> tuple[dict[str, Any], str] | None:
        """The stored file ``params`` declare, when instant upload may give it to the
        session of ``up``: ``(its {"sha256", "md5", "size"}, its path)``."""
        kind = self.hash_kind(params.identifier)
        if self.instant_upload is None or kind is None:
            return None
        ident = params.identifier.lower()
        scope = self.files.session_key(up.session)
        keys = [self._have_key(scope, kind, ident)]
        if kind == "sha256" and self.instant_upload == "global":
            keys.append(self._have_key("global", "sha256", ident))
        texts = (self.context.store.get(key) for key in keys)
        found = next((json.loads(text) for text in texts if text is not None), None)
        if found is None or found["size"] != params.total_size:
            return None
        if params.sha256 and params.sha256 != found["sha256"]:
            return None
        path = self.files.existing(found["sha256"], found["size"])
        return None if path is None else (found, path)
