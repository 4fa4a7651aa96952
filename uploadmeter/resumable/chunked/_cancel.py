"""Cancelling a chunked upload, and telling the requests sent before the client learnt of
the cancel (refused: chunks in flight do not bring the upload back) from those of a new
attempt with the same identifier (let through, starting afresh)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from uploadmeter.core._record import CANCELLED, UploadRecord
from uploadmeter.exceptions import ChunkRefused

if TYPE_CHECKING:
    from uploadmeter.core._context import MeterContext
    from uploadmeter.resumable._storage import Storage
    from uploadmeter.resumable.chunked._instant import Completions
    from uploadmeter.resumable.chunked._layout import Upload


def cancelled() -> ChunkRefused:
    """The refusal of a request of a cancelled upload."""
    return ChunkRefused("cancelled", "The upload was cancelled.")


class Cancels:
    """The cancel rules of one chunk endpoint."""

    def __init__(self, context: MeterContext, files: Storage, completions: Completions) -> None:
        self.context = context
        self.files = files
        self.completions = completions

    def record(self, up: Upload) -> UploadRecord | None:
        return self.context.records.load(up.session, up.upload_id, stale=False)

    def check(self, up: Upload, arrived: float, *, write: bool = True) -> None:
        """Refuse a request of a cancelled upload; let a later attempt start afresh.

        A request the client sent before it learnt of the cancel (it *arrived* before
        that moment) is refused, so chunks in flight do not bring the upload back.  The
        client learns at ``DELETE``; after ``{prefix}/cancel`` it learns from the first
        request refused here.  Requests that arrive later belong to a new attempt.
        ``write=False`` (a test GET): refuse or let pass the same way, writing nothing.
        """
        records = self.context.records
        flagged = records.cancel_requested(up.session, up.upload_id)
        record = self.record(up)
        if not flagged and (record is None or record.state != CANCELLED):
            return
        told = self.context.store.get(up.told_key)
        if told is None:
            if write:
                self.tell(up, record)
                self.forget(up)
        elif arrived > float(told):
            if write:
                records.forget(up.session, up.upload_id)
                self.context.store.delete(up.told_key)
                self.completions.clear_done(up)
            return
        raise cancelled()

    def tell(self, up: Upload, record: UploadRecord | None) -> None:
        """Mark ``up`` cancelled now: the record, the cancel flag (stops a merge or a
        processing task at its next write) and the moment the client was told."""
        records = self.context.records
        # As long as the flag: it tells the requests sent before it from later ones.
        self.context.store.set(up.told_key, repr(time.time()), records.in_flight_ttl)
        records.cancel(up.session, up.upload_id, record)

    def forget(self, up: Upload) -> None:
        """Drop the chunks and the completion mark of ``up``."""
        self.files.remove_tree(up.directory)
        self.completions.clear_done(up)
