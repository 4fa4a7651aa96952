"""uploadmeter: upload progress measured on the server, for any WSGI app.

::

    from uploadmeter import UploadMeterMiddleware
    app = UploadMeterMiddleware(app, secret_key="change me")

The middleware counts the bytes of multipart uploads as the application reads them,
records per-field progress in a store shared by every worker, and answers
``GET /uploadmeter/progress?id=...`` itself.  Flask users start from
:class:`uploadmeter.flask.UploadMeter` instead.
"""

from uploadmeter.core._record import FieldProgress, State, UploadRecord
from uploadmeter.exceptions import (
    InvalidUploadId,
    StoreError,
    UnsafeStorePath,
    UploadCancelled,
    UploadMeterError,
    UploadRejected,
    UploadTooLarge,
)
from uploadmeter.processing import ProcessingTask
from uploadmeter.resumable._s3 import S3Storage
from uploadmeter.resumable._storage import FileInfo
from uploadmeter.resumable.chunked._app import ChunkUploads
from uploadmeter.resumable.tus._app import TusUploads
from uploadmeter.stores import MemoryStore, ProgressStore, RedisStore, SQLiteStore, open_store
from uploadmeter.ui._render import render_file_upload
from uploadmeter.wsgi._middleware import UploadHandle, UploadMeterMiddleware, current_upload

__version__ = "0.1.0"

__all__ = [
    "ChunkUploads",
    "FieldProgress",
    "FileInfo",
    "InvalidUploadId",
    "MemoryStore",
    "ProcessingTask",
    "ProgressStore",
    "RedisStore",
    "S3Storage",
    "SQLiteStore",
    "State",
    "StoreError",
    "TusUploads",
    "UnsafeStorePath",
    "UploadCancelled",
    "UploadHandle",
    "UploadMeterError",
    "UploadMeterMiddleware",
    "UploadRecord",
    "UploadRejected",
    "UploadTooLarge",
    "current_upload",
    "open_store",
    "render_file_upload",
]
