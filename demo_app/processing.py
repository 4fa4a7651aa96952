"""The demo's work after an upload: gzip the saved file in a small thread pool, with real
progress -- bytes of the upload read and compressed -- reported on the widget's bar.

::

    upload.start_processing("compressing", total=stored.size)     # in the view
    task = meter.task(upload.id, "compressing", total=stored.size)
    compressor.submit(CompressionJob(folder, stored, describe=...), task)

The ``.gz`` is written to a hidden part file and linked into the uploads folder only when
complete.  A compression that does not end in ``done`` (cancelled by the user, or
failed) keeps nothing: neither the part file nor the upload itself, as the widget's
cancelled message says.

``bytes_per_second`` is a demo setting (``DEMO_COMPRESS_KBPS``): on a fast machine a file
compresses in a blink, so the demo can read it slowly on purpose, through the same
:class:`~demo_app.throttle.ThrottledInput` that slows uploads.
"""

from __future__ import annotations

import gzip
import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import IO, Any

from demo_app.storage import StoredFile, UploadFolder
from demo_app.throttle import ThrottledInput
from uploadmeter.processing import ProcessingCancelled, ProcessingFailed, ProcessingTask

log = logging.getLogger("demo_app")

BLOCK = 1024 * 1024  # read and compress this much at a time (64 KiB when throttled)
WORKERS = 2
HEARTBEAT = 10.0  # seconds between touches of waiting tasks (well under stale_after)
COMPRESS_LEVEL = 6  # gzip's usual speed/size balance (GzipFile defaults to the slow 9)


def _no_result(source: StoredFile, compressed: StoredFile) -> dict[str, Any]:
    return {}


@dataclass(frozen=True)
class CompressionJob:
    folder: UploadFolder
    source: StoredFile  # the saved upload, in ``folder``
    bytes_per_second: float = 0.0  # demo setting; 0: as fast as the machine goes
    # The task's result for the client, from the source and the .gz (links, sizes...).
    describe: Callable[[StoredFile, StoredFile], dict[str, Any]] = field(default=_no_result)


class Compressor:
    """A pool of ``workers`` compressing threads.

    Jobs beyond ``workers`` wait their turn; their records say ``processing`` at 0 % and
    are touched every ``heartbeat`` seconds meanwhile, so a long queue never makes them
    look stopped to the progress endpoint.
    """

    def __init__(self, workers: int = WORKERS, heartbeat: float = HEARTBEAT) -> None:
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="demo-compress")
        self._heartbeat = heartbeat
        self._waiting: set[ProcessingTask] = set()
        self._lock = threading.Lock()
        self._beating = False
        self._stop = threading.Event()

    def submit(self, job: CompressionJob, task: ProcessingTask | None) -> Future[StoredFile | None]:
        """Compress in the background; ``task`` (if any) ends ``done``, ``error`` or
        ``cancelled``.  The future's result is the ``.gz`` (``None`` when nothing was kept)."""
        if task is not None:
            with self._lock:
                self._waiting.add(task)
                if not self._beating:
                    self._beating = True
                    threading.Thread(
                        target=self._beat, name="demo-compress-heartbeat", daemon=True
                    ).start()
        return self._pool.submit(self._run, job, task)

    def _run(self, job: CompressionJob, task: ProcessingTask | None) -> StoredFile | None:
        if task is not None:
            with self._lock:
                self._waiting.discard(task)
        return run(job, task)

    def shutdown(self) -> None:
        """Finish the jobs in hand and stop the threads."""
        self._stop.set()
        self._pool.shutdown(wait=True)

    def _beat(self) -> None:
        while not self._stop.wait(self._heartbeat):
            with self._lock:
                waiting = list(self._waiting)
            for task in waiting:
                try:
                    task.touch(force=True)
                except ProcessingCancelled:
                    # Cancelled while waiting: run() sees it and keeps nothing.
                    with self._lock:
                        self._waiting.discard(task)


compressor = Compressor()


def run(job: CompressionJob, task: ProcessingTask | None) -> StoredFile | None:
    """Compress ``job.source`` into a ``.gz`` beside it, reporting into ``task``.

    Returns the ``.gz``, or ``None`` when the work was cancelled or failed (then neither
    the ``.gz`` nor the source is kept).  Never raises: it runs in a pool nobody waits on.
    """
    name = job.source.name
    try:
        if task is None:
            return compress(job, None)
        if task.cancelled:  # while it waited for a worker
            raise ProcessingCancelled(name)
        with task:
            compressed = compress(job, task)
            task.set_result(**job.describe(job.source, compressed))
        if task.cancelled:
            # The cancel crossed the end: the record says cancelled, so keep nothing.
            job.folder.remove(compressed.name)
            raise ProcessingCancelled(name)
        return compressed
    except ProcessingCancelled:
        log.info("demo: compressing %s was cancelled", name)
    except Exception:
        # ``with task`` has recorded the error for the widget already.
        log.exception("demo: compressing %s failed", name)
    job.folder.remove(name)
    return None


def compress(job: CompressionJob, task: ProcessingTask | None) -> StoredFile:
    """gzip ``job.source``; ``task.advance(n)`` after each block of ``n`` bytes read."""
    name = job.source.name
    try:
        with open(job.folder.path(name), "rb") as raw:
            source: IO[bytes] | ThrottledInput = raw
            if job.bytes_per_second > 0:
                source = ThrottledInput(raw, job.bytes_per_second)
            with job.folder.create(name + ".gz", compressed_from=name) as out:
                # GzipFile: the standard library's gzip writer (header, CRC, trailer).
                with gzip.GzipFile(
                    filename=name, mode="wb", fileobj=out, compresslevel=COMPRESS_LEVEL
                ) as gz:
                    while block := source.read(BLOCK):
                        gz.write(block)
                        if task is not None:
                            task.advance(len(block))
                if task is not None:
                    # A cancel during the last block: raise before the file is linked.
                    task.touch(force=True)
    except OSError as exc:
        raise ProcessingFailed(
            f"Could not compress the file ({exc.strerror or 'I/O error'}); nothing was kept.",
            status=500,
        ) from exc
    assert out.stored is not None
    return out.stored
