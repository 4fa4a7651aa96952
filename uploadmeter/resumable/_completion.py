"""Handing a finished resumable upload to the application (chunked and tus alike).

The application's ``on_complete(FileInfo)`` hook may return data for the client, refuse
the file (:class:`UploadRejected`), or return a started
:class:`~uploadmeter.processing.ProcessingTask` when slow work follows -- the record then
stays ``processing`` until that task ends.  :class:`ResumableEndpoint` holds what the
chunk and tus endpoints share on the way there: hashing the whole file as processing
progress, moving it into the :class:`~uploadmeter.resumable.FileStore`, delivering it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from typing import Any

from uploadmeter.core._context import HasContext, MeterContext, context_of
from uploadmeter.core._locks import StoreLock
from uploadmeter.core._record import shown_text
from uploadmeter.core._records import Records
from uploadmeter.exceptions import CompletionFailed, UploadRejected
from uploadmeter.processing import ProcessingTask
from uploadmeter.resumable._storage import FileInfo, FileStore, Storage
from uploadmeter.stores._base import ProgressStore
from uploadmeter.wsgi._requests import session_for as issue_session
from uploadmeter.wsgi._requests import session_of as request_session

log = logging.getLogger("uploadmeter")

__all__ = ["OnComplete", "ResumableEndpoint", "deliver", "issue_session", "request_session"]

OnComplete = Callable[[FileInfo], "Mapping[str, Any] | ProcessingTask | None"]


def deliver(
    info: FileInfo,
    task: ProcessingTask,
    on_complete: OnComplete | None,
    before_finish: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Call ``on_complete`` and end ``task`` (the record) accordingly; return the result.

    The default result (name, size, hashes) is written into the record *before* the hook
    runs, so a processing task the hook starts carries it to the end.
    ``before_finish(result)`` runs once the hook accepted the file, before the record says
    ``done``.  Raises :class:`UploadRejected` or :class:`CompletionFailed` after recording
    the error.
    """
    result: dict[str, Any] = {
        "filename": shown_text(info.filename),  # as the record's field shows it
        "size": info.size,
        "sha256": info.sha256,
        "md5": info.md5,
        "instant": info.instant,
    }
    task.set_result(**result)
    task.touch(force=True)
    follow: ProcessingTask | None = None
    if on_complete is not None:
        try:
            returned = on_complete(info)
        except UploadRejected as exc:
            task.fail(exc.message, exc.status)
            raise
        except Exception as exc:
            log.exception("uploadmeter: on_complete failed for upload %s", info.upload_id)
            task.fail("The server could not take the file.", 500)
            raise CompletionFailed(str(exc)) from exc
        if isinstance(returned, ProcessingTask):
            follow = returned
        elif returned is not None:
            result.update(returned)
    if before_finish is not None:
        before_finish(result)
    if follow is not None:
        task.abandon()  # the application's task owns the record from here
        follow.start()
    else:
        task.finish(**result)
    return result


class ResumableEndpoint:
    """The base of :class:`~uploadmeter.resumable.ChunkUploads` and
    :class:`~uploadmeter.resumable.TusUploads`: their store, files and hand-over."""

    def __init__(
        self,
        meter: MeterContext | HasContext,
        files: Storage | str | os.PathLike[str],
        on_complete: OnComplete | None,
        session_quota: int,
        lock_ttl: float,
    ) -> None:
        self.context = context_of(meter)
        self.files = files if isinstance(files, Storage) else FileStore(files)
        self.files.bind(self.context.store)
        self.on_complete = on_complete
        self.session_quota = session_quota
        self.lock_ttl = lock_ttl

    @property
    def store(self) -> ProgressStore:
        return self.context.store

    @property
    def records(self) -> Records:
        return self.context.records

    def start_task(self, session: str, upload_id: str, phase: str, total: int) -> ProcessingTask:
        return ProcessingTask(
            self.store, session, upload_id, phase, total=total, settings=self.context.settings
        ).start()

    @staticmethod
    def progress(task: ProcessingTask, lock: StoreLock) -> Callable[[int], None]:
        """Reports the bytes read of a join as ``task``'s progress, keeping ``lock``."""

        def progress(done: int) -> None:
            task.update(done)
            lock.refresh(every=lock.ttl / 3)

        return progress

    def hand_over(
        self,
        info: FileInfo,
        task: ProcessingTask,
        before_finish: Callable[[dict[str, Any]], None] | None = None,
        *,
        new_file: bool,
    ) -> dict[str, Any]:
        """:func:`deliver` the file.  When the application refuses a file this upload put
        into the store (``new_file``), it leaves the store again."""
        self.files.retain(info)
        try:
            return deliver(info, task, self.on_complete, before_finish)
        except (UploadRejected, CompletionFailed):
            self.files.release(info, new_file=new_file)
            raise
