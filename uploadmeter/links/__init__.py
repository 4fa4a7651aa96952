"""Download links that need no session: signed links and shares (see :class:`DownloadLinks`)."""

from uploadmeter.links._endpoint import DownloadLinks
from uploadmeter.links._shares import Share, ShareError, ShareManager
from uploadmeter.links._signing import (
    Link,
    LinkError,
    LinkExpired,
    LinkInvalid,
    LinkRevoked,
    LinkSigner,
    LinkUsed,
)

__all__ = [
    "DownloadLinks",
    "Link",
    "LinkError",
    "LinkExpired",
    "LinkInvalid",
    "LinkRevoked",
    "LinkSigner",
    "LinkUsed",
    "Share",
    "ShareError",
    "ShareManager",
]
