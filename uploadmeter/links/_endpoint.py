"""Download links that need no session, served under the middleware.

A download manager or a colleague holding a link carries no session cookie, so these URLs
authorise themselves -- without ever containing the file's path.  :class:`DownloadLinks`
ties signed links (:mod:`uploadmeter.links`) and shares (:mod:`uploadmeter.links`)
to a ``resolver(target) -> source`` callback, and serves them as a WSGI app that the
middleware mounts::

    links = DownloadLinks(lambda ref: files_dir / ref, app.secret_key, middleware.store)
    middleware.mount("/d", links)                  # {prefix}/d/l/... and {prefix}/d/s/...
    url = links.signed_url("report.pdf", expires_in=300, environ=request.environ)
    share = links.share("report.pdf", code=True)   # links.share_url(share.id), share.code

``GET {prefix}/d/l/<token>`` downloads (Range works); ``GET {prefix}/d/s/<id>`` shows the
share page, ``POST`` it with ``code`` to get the file (a redirect to a fresh signed link).

With ``presign_objects=<seconds>``, a link whose target resolves to an
:class:`~uploadmeter.downloads.S3Object` (alone or in an ``Item``) answers ``302`` to a
presigned URL of the object store instead of streaming it through the app: the bytes go
from the store to the client directly (no progress record then).  The presigned URL
works for those seconds, as often as it is used: keep them short (the default 60 s
covers a redirect being followed), the signed link stays the one that is handed out.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from werkzeug.exceptions import HTTPException, MethodNotAllowed, RequestEntityTooLarge
from werkzeug.http import http_date
from werkzeug.routing import Map, Rule
from werkzeug.sansio.utils import get_current_url, get_host
from werkzeug.utils import redirect
from werkzeug.wrappers import Response
from werkzeug.wsgi import get_current_url as get_current_url_of

from uploadmeter.core._limits import SMALL_BODY
from uploadmeter.downloads import Downloader, Item, S3Object
from uploadmeter.exceptions import LinkError, ShareError, SourceError, StoreError
from uploadmeter.links._shares import Share, ShareManager
from uploadmeter.links._signing import LinkSigner, SecretKey
from uploadmeter.stores._base import ProgressStore
from uploadmeter.ui import template_environment
from uploadmeter.wsgi._endpoints import SmallBodyRequest
from uploadmeter.wsgi._responses import (
    HTML,
    JSON,
    NO_STORE,
    error_response,
    json_response,
    negotiate,
)

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment


__all__ = ["DownloadLinks"]

Resolver = Callable[[str], Any]
_PRIVATE = {"Referrer-Policy": "no-referrer", "X-Robots-Tag": "noindex"}  # tokens stay here


class DownloadLinks:
    """Signed links and shares for an app, served under the middleware.

    :param resolver: ``resolver(target) -> source`` for :func:`uploadmeter.downloads.download`
        (e.g. a ``Path``, or an ``Item`` with a name); returning ``None`` or raising
        ``LookupError`` answers 404.
    :param secret_key: signs links and keys code signatures (a list for rotation).
    :param store: shared by all workers; usually the middleware's.
    :param base_path: where the app is mounted, from the site root (``{prefix}/d``);
        ``UploadMeterMiddleware.mount()`` sets it.
    :param downloader: how files are sent (e.g. ``Downloader(root=..., remote=...)``).
    :param share_link_ttl: seconds the link handed out after a share's code is valid;
        single-use when the share has ``max_downloads``.
    :param presign_objects: when set, links to an :class:`~uploadmeter.downloads.S3Object`
        redirect to a presigned URL of the store, valid this many seconds.
    """

    # Mounted on either shell: :meth:`respond` decides, the shell writes (WSGI: as a
    # WSGI app; ASGI: uploadmeter.asgi reads the request and pumps the body off the loop).
    shell_neutral = True

    def __init__(
        self,
        resolver: Resolver,
        secret_key: SecretKey,
        store: ProgressStore,
        *,
        base_path: str = "/uploadmeter/d",
        downloader: Downloader | None = None,
        share_link_ttl: float = 3600.0,
        max_attempts: int = 5,
        attempt_window: float = 900.0,
        presign_objects: int | None = None,
    ) -> None:
        self.resolver = resolver
        self.signer = LinkSigner(secret_key, store)
        self.shares = ShareManager(
            secret_key, store, max_attempts=max_attempts, attempt_window=attempt_window
        )
        self.base_path = "/" + base_path.strip("/")
        self.downloader = downloader or Downloader()
        self.share_link_ttl = share_link_ttl
        self.presign_objects = presign_objects
        self.url_map = Map(
            [
                Rule("/l/<token>", endpoint="link", methods=["GET", "HEAD"]),
                Rule("/s/<share_id>", endpoint="share", methods=["GET", "HEAD", "POST"]),
            ]
        )

    def mounted_at(self, path: str) -> None:
        """Called by ``UploadMeterMiddleware.mount()``: links are built under ``path``."""
        self.base_path = "/" + path.strip("/")

    # -- making links --------------------------------------------------------------------

    def signed_url(
        self,
        target: str,
        *,
        expires_in: float = 300,
        single_use: bool = False,
        filename: str | None = None,
        environ: WSGIEnvironment | Any = None,
        external: bool = False,
    ) -> str:
        """A URL downloading ``target`` without a session (see :meth:`LinkSigner.create`).

        ``environ`` (a WSGI environ; on ASGI the scope, or a request with ``.scope``)
        adds the app's root path; ``external`` makes the URL absolute.
        """
        link = self.signer.create(
            target, expires_in=expires_in, single_use=single_use, filename=filename
        )
        return self._url(f"/l/{link.token}", environ, external)

    def share(self, target: str, **options: Any) -> Share:
        """Create a share (see :meth:`ShareManager.create`); ``share_url`` gives its URL."""
        return self.shares.create(target, **options)

    def share_url(
        self, share_id: str, *, environ: WSGIEnvironment | Any = None, external: bool = False
    ) -> str:
        """The URL of a share's page (``{prefix}{mount}/s/<id>``); ``external``: absolute."""
        return self._url(f"/s/{share_id}", environ, external)

    def _url(self, path: str, environ: WSGIEnvironment | Any, external: bool) -> str:
        if environ is None:
            if external:
                raise ValueError("external URLs need the request's environ")
            return self.base_path + path
        scope = getattr(environ, "scope", environ)  # an ASGI app's request or scope
        if isinstance(scope, Mapping) and scope.get("type") == "http":
            root = str(scope.get("root_path", "")).rstrip("/")
            if external:
                headers = dict(scope.get("headers", ()))
                host_header = headers.get(b"host", b"").decode("latin-1") or None
                scheme = scope.get("scheme", "http")
                host = get_host(scheme, host_header, scope.get("server"))
                root = get_current_url(scheme, host, root).rstrip("/")
        elif external:
            root = get_current_url_of(environ, root_only=True).rstrip("/")
        else:
            root = str(environ.get("SCRIPT_NAME", "")).rstrip("/")
        return root + self.base_path + path

    # -- serving -------------------------------------------------------------------------

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        return self.respond(environ)(environ, start_response)

    def respond(self, environ: WSGIEnvironment) -> Response:
        """Answer one request to the mounted endpoint (links, share pages, code forms)."""
        try:
            endpoint, args = self.url_map.bind_to_environ(environ).match()
        except MethodNotAllowed as exc:
            allow = ", ".join(exc.valid_methods or ())
            return error_response(environ, 405, f"Use {allow}.", [("Allow", allow)])
        except HTTPException:
            return error_response(environ, 404, "No such download link.")
        try:
            if endpoint == "link":
                return self._serve_link(environ, args["token"])
            # A share's form is a code: its body is read within SmallBodyRequest's limits.
            return self._serve_share(SmallBodyRequest(environ), args["share_id"])
        except LinkError as exc:
            retry = getattr(exc, "retry_after", None)
            headers = [("Retry-After", str(retry))] if exc.status == 429 and retry else []
            return error_response(environ, exc.status, exc.message, headers)
        except StoreError:
            return error_response(environ, 503, "Downloads are unavailable right now.")
        except RequestEntityTooLarge:
            message = f"The form may hold at most {SMALL_BODY} bytes: a code needs a few."
            return error_response(environ, 413, message)
        except HTTPException as exc:  # e.g. a body that ended early
            return error_response(environ, exc.code or 400, exc.description or "Bad request.")

    def _serve_link(self, environ: WSGIEnvironment, token: str) -> Response:
        link = self.signer.verify(token)
        if link.share is not None:
            self.shares.get(link.share)  # a revoked or expired share takes its links along
        spend = environ.get("REQUEST_METHOD") != "HEAD"  # looking does not use a link up
        if spend:
            self.signer.use(link)
        try:
            source = self._resolve(link.target)
            if source is None:
                response = error_response(environ, 404, "The file of this link no longer exists.")
            elif self.presign_objects is not None and _object_of(source) is not None:
                response = self._presigned(environ, source, link.filename)
            else:
                response = self.downloader(source, link.filename, environ=environ)
        except BaseException:
            if spend:
                self.signer.unuse(link)
            raise
        if spend and response.status_code >= 400:
            self.signer.unuse(link)  # nothing was sent: the link is still good
        response.headers.extend(_PRIVATE)
        return response

    def _presigned(self, environ: WSGIEnvironment, source: Any, filename: str | None) -> Response:
        """A redirect to the object's presigned URL (signed locally: no request to the
        store; a signing failure, e.g. no credentials, is a store failure: ``503``)."""
        obj = _object_of(source)
        assert obj is not None and self.presign_objects is not None
        name = filename or (source.name if isinstance(source, Item) else None)
        try:
            url = obj.presigned_url(
                expires_in=self.presign_objects,
                filename=name,
                method=environ.get("REQUEST_METHOD", "GET"),
            )
        except SourceError as error:
            retry = getattr(error, "retry_after", None)
            headers = [("Retry-After", str(retry))] if retry else []
            return error_response(environ, error.status, error.message, headers)
        response = redirect(url, 302)
        response.headers.extend(NO_STORE)  # the presigned URL expires; the link does not
        return response

    def _resolve(self, target: str) -> Any:
        try:
            return self.resolver(target)
        except LookupError:
            return None

    def _serve_share(self, request: SmallBodyRequest, share_id: str) -> Response:
        # Share pages are pages: JSON only when the client prefers it over HTML.
        wants_json = negotiate(request.environ, (HTML, JSON)) == JSON
        if request.method != "POST":
            counted = request.method == "GET"  # a HEAD is no view
            share = self.shares.viewed(share_id) if counted else self.shares.get(share_id)
            if wants_json:
                return json_response(
                    {
                        "id": share.id,
                        "filename": share.filename,
                        "expires_at": share.expires_at,
                        "code_required": share.code_required,
                    }
                )
            return self._share_page(share, None)
        request.load_body()  # (a SmallBodyRequest: a few KB at most)
        code = request.form.get("code") or request.headers.get("X-Share-Code")
        try:
            share = self.shares.open(share_id, code)
        except ShareError as exc:
            if exc.status in (403, 429) and not wants_json:
                return self._share_page(self.shares.get(share_id), exc)
            raise
        link = self.signer.create(
            share.target,
            expires_in=self.share_link_ttl,
            single_use=share.max_downloads is not None,  # else the limit is one link away
            filename=share.filename,
            share=share.id,
        )
        # SCRIPT_NAME is where this app is mounted, so the link resolves back here.
        url = request.environ.get("SCRIPT_NAME", "").rstrip("/") + "/l/" + link.token
        if wants_json:
            return json_response({"url": url, "expires_in": self.share_link_ttl})
        return redirect(url, 303)

    def _share_page(self, share: Share, error: ShareError | None) -> Response:
        page = template_environment().get_template("uploadmeter/share.html")
        html = page.render(
            title=share.filename or self._display_name(share.target) or "Shared file",
            available_until=http_date(share.expires_at),
            code_required=share.code_required,
            error=error.message if error is not None else None,
        )
        response = Response(html, status=error.status if error else 200, mimetype="text/html")
        response.headers.extend({**NO_STORE, **_PRIVATE})
        if error is not None and error.status == 429 and error.retry_after:
            response.headers["Retry-After"] = str(error.retry_after)
        return response

    def _display_name(self, target: str) -> str | None:
        source = self._resolve(target)
        if isinstance(source, Item) and source.name:
            return source.name
        if isinstance(source, os.PathLike):
            return os.path.basename(os.fspath(source)) or None
        if isinstance(source, S3Object):
            return source.filename
        return None


def _object_of(source: Any) -> S3Object | None:
    """The object a resolved source is, alone or in an ``Item``."""
    if isinstance(source, Item):
        source = source.source
    return source if isinstance(source, S3Object) else None
