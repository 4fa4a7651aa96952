"""Resumable uploads of very large files: the chunk protocol and tus, on one file store.

::

    from uploadmeter.resumable import ChunkUploads, FileStore, TusUploads

    files = FileStore("/var/lib/myapp/uploads")
    meter.mount("/chunks", ChunkUploads(meter, files, on_complete=keep))
    meter.mount("/tus", TusUploads(meter, files, on_complete=keep))

Both protocols keep partial uploads in a :class:`Storage`: a :class:`FileStore` (one
machine's disk, the default) or an :class:`S3Storage` (an S3 bucket shared by several
machines), verify the finished file, and hand it to ``on_complete`` as a :class:`FileInfo`.

WSGI and ASGI
-------------

``meter`` is either shell's middleware, and the mount is the same line: on
:class:`uploadmeter.UploadMeterMiddleware` (WSGI) or on
:class:`uploadmeter.asgi.UploadMeterMiddleware` (ASGI: FastAPI, Starlette, ...) both
endpoints answer at the same URLs with the same statuses and write the same records::

    from uploadmeter.asgi import UploadMeterMiddleware
    app = UploadMeterMiddleware(asgi_app, secret_key="change me")
    app.mount("/tus", TusUploads(app, "/var/lib/myapp/uploads"))

Each protocol is written once, as an *exchange* (``uploadmeter.core._exchange``): a
generator that yields how many body bytes it wants next and returns the response;
parameter checks, state transitions, locks, the merge, the verification, the records and
the hand-over are that one implementation.  The WSGI shell drives it with the request's
input stream; the ASGI shell receives the body on its event loop, in pieces no larger than
the protocol asked for, and runs each step between two pieces (a write, a hash update, a
store call) on a worker thread (``uploadmeter.asgi._exchange``): a slow client costs a
suspended generator, not a thread.  ``on_complete`` runs on such a thread too (it may
block).
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
