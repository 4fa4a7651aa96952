"""Resumable uploads of very large files: the chunk protocol and tus, on one file store.

::

    from uploadmeter.resumable import ChunkUploads, FileStore, TusUploads

    files = FileStore("/var/lib/myapp/uploads")
    meter.mount("/chunks", ChunkUploads(meter, files, on_complete=keep))
    meter.mount("/tus", TusUploads(meter, files, on_complete=keep))

Both protocols keep partial uploads in a :class:`Storage`: a :class:`FileStore` (one
machine's disk, the default) or an :class:`S3Storage` (an S3 bucket shared by several
machines), verify the finished file, and hand it to ``on_complete`` as a :class:`FileInfo`.
"""

from uploadmeter.exceptions import UploadRejected
from uploadmeter.resumable._s3 import S3Storage
from uploadmeter.resumable._storage import FileInfo, FileStore, Storage
from uploadmeter.resumable.chunked import ChunkUploads
from uploadmeter.resumable.tus import TusUploads

__all__ = [
    "ChunkUploads",
    "FileInfo",
    "FileStore",
    "S3Storage",
    "Storage",
    "TusUploads",
    "UploadRejected",
]
