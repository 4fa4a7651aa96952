"""Handing a finished resumable upload to the application (chunked and tus alike).

The application's ``on_complete(FileInfo)`` hook may return data for the client, refuse
the file (:class:`UploadRejected`), or return a started
:class:`~uploadmeter.processing.ProcessingTask` when slow work follows -- the record then
stays ``processing`` until that task ends.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from uploadmeter.errors import UploadMeterError
from uploadmeter.filestore import FileInfo
from uploadmeter.processing import ProcessingTask

log = logging.getLogger("uploadmeter")

__all__ = ["CompletionFailed", "OnComplete", "UploadRejected", "deliver"]

OnComplete = Callable[[FileInfo], "Mapping[str, Any] | ProcessingTask | None"]


class UploadRejected(UploadMeterError):
    """Raise from ``on_complete`` to refuse a file; ``message`` is shown to the user."""

    def __init__(self, message: str, status: int = 415) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


class CompletionFailed(UploadMeterError):
    """``on_complete`` raised something else; the record says ``error`` (500)."""


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
        "filename": info.filename,
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
