"""Downloads: anything as one file or a streamed zip, with progress and ``Range``.

::

    from uploadmeter.downloads import download

    return download(Path("reports/2024.pdf"), environ=request.environ)

Sources are paths, text, bytes, file objects, :class:`Item` (a source under another
name), :class:`Url` (fetched by a :class:`RemoteFetcher` that refuses private
addresses) and :class:`S3Object` (an object in an S3-compatible store, streamed
through the application's boto3 client)::

    s3 = boto3.client("s3", endpoint_url="https://s3.example.com")
    return download(S3Object(s3, "reports", "2024/q1.pdf"), environ=request.environ)

An object is sent like a file: ``Range`` becomes one S3 ``Range`` GET of exactly the
bytes sent, its ``ETag`` and ``Last-Modified`` answer conditional requests, and inside a
zip it streams as it is read.  A missing object is ``404``; a store that fails
(unreachable, throttled, ``5xx``) is ``503`` with ``Retry-After``
(:class:`ObjectStoreError`) -- decided by a ``HEAD`` before anything is sent.  Signed
links can hand out a presigned URL instead (``DownloadLinks(presign_objects=60)``).
``import uploadmeter`` never imports boto3.  More: ``docs/object-storage-downloads.rst``.

On ASGI (Starlette, FastAPI, ...), ``uploadmeter.asgi.download()`` takes the same
sources and options (less ``environ``) and returns an ASGI response: the same decisions,
its body pumped with backpressure off the event loop (``docs/asgi.rst``).
"""

from uploadmeter.downloads._api import Downloader, download
from uploadmeter.downloads._disposition import (
    UniqueNames,
    ascii_fallback,
    content_disposition,
    safe_arcname,
    safe_filename,
)
from uploadmeter.downloads._objects import S3Object
from uploadmeter.downloads._remote import RemoteCache, RemoteFetcher
from uploadmeter.downloads._sources import Item, Url, name_field, source_field
from uploadmeter.exceptions import (
    AddressNotAllowed,
    DownloadCancelled,
    HostNotAllowed,
    ObjectStoreError,
    RemoteError,
    RemoteTooLarge,
    SourceError,
    SourceNotFound,
)

__all__ = [
    "AddressNotAllowed",
    "DownloadCancelled",
    "Downloader",
    "HostNotAllowed",
    "Item",
    "ObjectStoreError",
    "RemoteCache",
    "RemoteError",
    "RemoteFetcher",
    "RemoteTooLarge",
    "S3Object",
    "SourceError",
    "SourceNotFound",
    "UniqueNames",
    "Url",
    "ascii_fallback",
    "content_disposition",
    "download",
    "name_field",
    "safe_arcname",
    "safe_filename",
    "source_field",
]
