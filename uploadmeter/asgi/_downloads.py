"""``download()`` for ASGI views: :func:`uploadmeter.downloads.download`, answered on ASGI.

The response is decided by the downloads feature, the same code as under WSGI (ranges,
conditional requests, zips, progress); this module hands it the request and writes it
with backpressure (:mod:`uploadmeter.asgi._responses`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from uploadmeter.asgi._responses import WerkzeugApp
from uploadmeter.asgi._types import Receive, Scope, Send

if TYPE_CHECKING:
    from werkzeug.wrappers import Response

    _ResponseBase = object
else:
    try:  # Starlette and FastAPI return their Response subclasses from views
        from starlette.responses import Response as _ResponseBase
    except ImportError:  # pragma: no cover - a plain ASGI app then
        _ResponseBase = object

__all__ = ["DownloadResponse", "download"]


class DownloadResponse(_ResponseBase):
    """A download as an ASGI app: ``await response(scope, receive, send)``.

    Nothing is read or decided before it is called: the request's ``Range``, conditional
    headers and tracking id come from the scope it is called with.  Where Starlette is
    installed it is also a ``starlette.responses.Response`` (what FastAPI returns as it
    is; ``background`` tasks run after the body, as Starlette's own responses do).
    """

    def __init__(self, source: Any, filename: str | None = None, **options: Any) -> None:
        if "environ" in options:
            raise TypeError("download() on ASGI reads the request from the scope it answers")
        self.source = source
        self.filename = filename
        self.options = options
        self.background: Any = None

    def _respond(self, environ: dict[str, Any]) -> Response:
        from uploadmeter.downloads import download as decide

        return decide(self.source, self.filename, environ=environ, **self.options)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await WerkzeugApp(self._respond)(scope, receive, send)
        if self.background is not None:
            await self.background()


def download(source: Any, filename: str | None = None, **options: Any) -> DownloadResponse:
    """:func:`uploadmeter.downloads.download` for an ASGI view: returns the response as an
    ASGI app (see :mod:`uploadmeter.asgi`); the options are the same, less ``environ``.

    ::

        @api.get("/report")
        async def report():
            return download(Path("reports/2024.pdf"), meter=meter)
    """
    return DownloadResponse(source, filename, **options)
