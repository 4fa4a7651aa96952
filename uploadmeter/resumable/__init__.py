"""Resumable uploads of very large files: the chunk protocol and tus, on one file store.

::

    from uploadmeter.resumable import ChunkUploads, FileStore, TusUploads

    files = FileStore("/var/lib/myapp/uploads")
    meter.mount("/chunks", ChunkUploads(meter, files, on_complete=keep))
    meter.mount("/tus", TusUploads(meter, files, on_complete=keep))

Both protocols keep partial uploads in a :class:`FileStore`, verify the finished file, and
hand it to ``on_complete`` as a :class:`FileInfo`.
"""

from uploadmeter.exceptions import UploadRejected
from uploadmeter.resumable._storage import FileInfo, FileStore
from uploadmeter.resumable.chunked import ChunkUploads
from uploadmeter.resumable.tus import TusUploads

__all__ = ["ChunkUploads", "FileInfo", "FileStore", "TusUploads", "UploadRejected"]
