"""Download links that need no session: signed links and shares (see :class:`DownloadLinks`).

``meter.mount("/d", DownloadLinks(...))`` works on both middlewares, WSGI and ASGI
(:mod:`uploadmeter.asgi`): the same URLs, statuses and records.
"""

from uploadmeter.exceptions import (
    LinkError,
    LinkExpired,
    LinkInvalid,
    LinkRevoked,
    LinkUsed,
    ShareError,
)
from uploadmeter.links._endpoint import DownloadLinks
from uploadmeter.links._shares import Share, ShareManager
from uploadmeter.links._signing import Link, LinkSigner

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
