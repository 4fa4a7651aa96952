"""The progress record of a chunked upload while its chunks arrive: the bytes of the
chunks stored, written under the upload's lock."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from uploadmeter.core._locks import StoreLock
from uploadmeter.core._record import DONE, FINISHED, UPLOADING, FieldProgress, UploadRecord
from uploadmeter.exceptions import LockTimeout

if TYPE_CHECKING:
    from uploadmeter.resumable.chunked._cancel import Cancels
    from uploadmeter.resumable.chunked._layout import Upload
    from uploadmeter.resumable.chunked._params import ChunkParams

# How long a chunk's progress write waits for the upload's lock: far longer than another
# chunk's write holds it, far shorter than a merge does.
PROGRESS_LOCK_WAIT = 1.0


def write_progress(
    cancels: Cancels, up: Upload, meta: ChunkParams, arrived: float, *, lock_ttl: float
) -> None:
    """Record the bytes stored so far.

    Under the upload's lock, waited for briefly.  Another chunk's request holds it for
    the moment its own write takes; that write may have counted the chunks before
    this one was stored, so this one must still write after it (skipping it left the
    bar behind what the server had until the next chunk came).  A merge holds it for
    long: then this write is dropped, the merge's record being the one that counts.
    """
    context = cancels.context
    lock = StoreLock(context.store, up.lock_name, ttl=lock_ttl, wait=PROGRESS_LOCK_WAIT)
    try:
        lock.acquire()
    except LockTimeout:
        return
    with lock:
        if cancels.completions.done(up, arrived) is not None:
            return
        if context.records.cancel_requested(up.session, up.upload_id):
            return
        stored = up.stored(meta)
        record = cancels.record(up)
        if record is None or record.state in FINISHED:
            # The clock starts when the first chunk request arrived, not when its body
            # was stored: otherwise a few parallel chunks look instantaneous.
            record = UploadRecord(id=up.upload_id, started_at=arrived)
        received = sum(meta.expected_size(n) for n in stored)
        record.state = UPLOADING
        record.content_length = meta.total_size
        record.bytes_received = received
        record.updated_at = time.time()
        state = DONE if len(stored) == meta.total_chunks else UPLOADING
        record.fields = [FieldProgress("file", meta.filename, None, received, state)]
        record.field_count = 1
        context.records.save(up.session, record)
