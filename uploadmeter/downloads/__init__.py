"""Downloads: anything as one file or a streamed zip, with progress and ``Range``.

::

    from uploadmeter.downloads import download

    return download(Path("reports/2024.pdf"), environ=request.environ)

Sources are paths, text, bytes, file objects, :class:`Item` (a source under another
name) and :class:`Url` (fetched by a :class:`RemoteFetcher` that refuses private
addresses).
"""

from uploadmeter.downloads._api import Downloader, download
from uploadmeter.downloads._disposition import (
    UniqueNames,
    ascii_fallback,
    content_disposition,
    safe_arcname,
    safe_filename,
)
from uploadmeter.downloads._remote import RemoteCache, RemoteFetcher
from uploadmeter.downloads._sources import Item, Url, name_field, source_field
from uploadmeter.exceptions import (
    AddressNotAllowed,
    DownloadCancelled,
    HostNotAllowed,
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
    "RemoteCache",
    "RemoteError",
    "RemoteFetcher",
    "RemoteTooLarge",
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
