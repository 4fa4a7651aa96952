"""Download links that need no session: signed expiring links and share codes (seed part 5).

A download manager or a colleague holding a link carries no session cookie, so these URLs
authorise themselves -- without ever containing the file's path:

* :class:`LinkSigner` makes a **signed link**: an opaque id (the target it stands for is
  kept in the store) plus its expiry, signed with itsdangerous (salted, a list of keys for
  rotation: the last signs, all verify).  Optionally single-use (marked with ``store.add``);
  revocable.  Tampered → 403, expired, used or revoked → 410.
* :class:`ShareManager` makes a **share**: a short id with an expiry, an optional extraction
  code (kept as an HMAC; guesses rate-limited per share with ``store.incr``), view and
  download counters, an optional download limit, and revocation.
* :class:`DownloadLinks` ties both to a ``resolver(target) -> source`` callback and serves
  them as a WSGI app that the middleware mounts::

      links = DownloadLinks.attach(middleware, resolver=lambda ref: files_dir / ref,
                                   secret_key=app.secret_key)
      url = links.signed_url("report.pdf", expires_in=300, environ=request.environ)
      share = links.share("report.pdf", code=True)   # share.url, share.code

  ``GET {prefix}/d/l/<token>`` downloads (Range works); ``GET {prefix}/d/s/<id>`` shows the
  share page, ``POST`` it with ``code`` to get the file (a redirect to a fresh signed link).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import html
import json
import os
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from itsdangerous import BadSignature, URLSafeSerializer
from werkzeug.datastructures import MIMEAccept
from werkzeug.exceptions import HTTPException, MethodNotAllowed
from werkzeug.http import http_date, parse_accept_header
from werkzeug.routing import Map, Rule
from werkzeug.utils import redirect
from werkzeug.wrappers import Request, Response
from werkzeug.wsgi import get_current_url

from uploadmeter.download import Downloader
from uploadmeter.errors import StoreError, UploadMeterError
from uploadmeter.responses import NO_STORE, error_response, json_response
from uploadmeter.sources import Item
from uploadmeter.stores import ProgressStore

if TYPE_CHECKING:
    from uploadmeter.middleware import UploadMeterMiddleware

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

SecretKey = str | bytes | list[str | bytes]
Resolver = Callable[[str], Any]
# Codes avoid look-alikes (0/O, 1/I/L) so they can be read out and typed.
_CODE_ALPHABET = "ABCDEFGHJKMNPQRSTUVWXYZ23456789"
# Expired shares are kept this long so their page says "expired" rather than "not found".
_SHARE_GRACE = 86400.0


# -- errors ------------------------------------------------------------------------------


class LinkError(UploadMeterError):
    """A link or share cannot be used; ``status`` and ``message`` are what the client sees."""

    status = 410

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class LinkInvalid(LinkError):
    """Not a link we signed (tampered, truncated, or signed with an unknown key)."""

    status = 403


class LinkExpired(LinkError):
    """The link's time is up."""


class LinkUsed(LinkError):
    """A single-use link was already used."""


class LinkRevoked(LinkError):
    """The link was revoked (or the store no longer knows it)."""


class ShareError(LinkError):
    """A share cannot be used (not found 404, expired/revoked 410, code 403, too many 429)."""

    def __init__(self, message: str, status: int, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


# -- signed links ------------------------------------------------------------------------


@dataclass(frozen=True)
class Link:
    """A signed link: ``token`` goes into the URL; ``target`` never does."""

    id: str
    token: str
    target: str
    expires_at: float
    single_use: bool = False
    filename: str | None = None


class LinkSigner:
    """Creates, verifies and revokes signed links.

    :param secret_key: one key, or a list for rotation (oldest first: the last one signs,
        every one verifies).
    :param store: where targets, single-use marks and revocations live; every worker must
        share it (the middleware's store).
    :param salt: separates these signatures from any other use of the same key.
    """

    def __init__(
        self,
        secret_key: SecretKey,
        store: ProgressStore,
        *,
        salt: str = "uploadmeter.link",
    ) -> None:
        if not secret_key:
            raise ValueError("LinkSigner needs a secret_key")
        self.store = store
        keys = secret_key if isinstance(secret_key, list) else [secret_key]
        self._serializer = URLSafeSerializer(
            [k.encode("utf-8") if isinstance(k, str) else k for k in keys], salt=salt
        )

    def create(
        self,
        target: str,
        *,
        expires_in: float = 300,
        single_use: bool = False,
        filename: str | None = None,
    ) -> Link:
        """A new link to ``target`` (an app reference the resolver understands)."""
        if expires_in <= 0:
            raise ValueError("expires_in must be positive")
        link_id = secrets.token_urlsafe(16)
        expires_at = round(time.time() + expires_in, 3)
        info = {"t": target, "n": filename, "s": single_use}
        self.store.set(_link_key(link_id), json.dumps(info), expires_in + 1)
        token = self._serializer.dumps([link_id, expires_at])
        return Link(link_id, token, target, expires_at, single_use, filename)

    def verify(self, token: str) -> Link:
        """The link a token stands for, without using it up.

        :raises LinkInvalid: tampered or foreign token (403).
        :raises LinkExpired, LinkRevoked, LinkUsed: no longer valid (410).
        """
        try:
            link_id, expires_at = self._serializer.loads(token)
            link_id, expires_at = str(link_id), float(expires_at)
        except (BadSignature, TypeError, ValueError) as exc:
            raise LinkInvalid("This link is not valid.") from exc
        if time.time() > expires_at:
            raise LinkExpired("This link has expired.")
        raw = self.store.get(_link_key(link_id))
        if raw is None:
            if self.store.get(_revoked_key(link_id)) is not None:
                raise LinkRevoked("This link was revoked.")
            raise LinkRevoked("This link is no longer valid.")
        info = json.loads(raw)
        if info["s"] and self.store.get(_used_key(link_id)) is not None:
            raise LinkUsed("This link was already used.")
        return Link(link_id, token, info["t"], expires_at, bool(info["s"]), info["n"])

    def use(self, link: Link) -> None:
        """Spend a single-use link (atomic: of two simultaneous requests one wins)."""
        if link.single_use:
            ttl = max(1.0, link.expires_at - time.time() + 1)
            if not self.store.add(_used_key(link.id), "1", ttl):
                raise LinkUsed("This link was already used.")

    def unuse(self, link: Link) -> None:
        """Give a single-use link back when nothing could be sent (the file was gone)."""
        if link.single_use:
            self.store.delete(_used_key(link.id))

    def revoke(self, token_or_id: str) -> bool:
        """Revoke a link by its token (or its id).  Tells whether it was still valid."""
        link_id = token_or_id
        with contextlib.suppress(BadSignature, TypeError, ValueError, IndexError):
            link_id = str(self._serializer.loads(token_or_id)[0])
        self.store.set(_revoked_key(link_id), "1", 86400.0)
        return self.store.delete(_link_key(link_id))


def _link_key(link_id: str) -> str:
    return f"link:{link_id}"


def _used_key(link_id: str) -> str:
    return f"link-used:{link_id}"


def _revoked_key(link_id: str) -> str:
    return f"link-revoked:{link_id}"


# -- shares ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Share:
    """A share.  ``code`` is the extraction code in clear text, only right after creation."""

    id: str
    target: str
    expires_at: float
    filename: str | None = None
    code: str | None = None
    code_required: bool = False
    max_downloads: int | None = None
    views: int = 0
    downloads: int = 0
    revoked: bool = False


class ShareManager:
    """Creates shares, checks their codes (rate-limited), counts and revokes them.

    :param max_attempts: code guesses allowed per share per ``attempt_window`` seconds
        (every attempt counts, right or wrong: counting first is what makes it atomic).
    """

    def __init__(
        self,
        secret_key: SecretKey,
        store: ProgressStore,
        *,
        max_attempts: int = 5,
        attempt_window: float = 900.0,
        code_length: int = 6,
    ) -> None:
        keys = secret_key if isinstance(secret_key, list) else [secret_key]
        self._keys = [k.encode("utf-8") if isinstance(k, str) else k for k in keys]
        if not self._keys or not all(self._keys):
            raise ValueError("ShareManager needs a secret_key")
        self.store = store
        self.max_attempts = max_attempts
        self.attempt_window = attempt_window
        self.code_length = code_length

    def create(
        self,
        target: str,
        *,
        expires_in: float = 7 * 86400,
        code: str | bool | None = None,
        filename: str | None = None,
        max_downloads: int | None = None,
    ) -> Share:
        """A new share of ``target``.  ``code=True`` generates a code; a string sets one."""
        if expires_in <= 0:
            raise ValueError("expires_in must be positive")
        if code is True:
            code = "".join(secrets.choice(_CODE_ALPHABET) for _ in range(self.code_length))
        elif code is False or code == "":
            code = None
        if code is not None and len(code.strip()) < 4:
            raise ValueError("An extraction code needs at least 4 characters")
        share_id = secrets.token_urlsafe(12)
        expires_at = time.time() + expires_in
        salt = secrets.token_hex(8)
        info = {
            "t": target,
            "n": filename,
            "e": expires_at,
            "m": max_downloads,
            "salt": salt,
            "code": None if code is None else self._code_hash(self._keys[-1], salt, code),
            "r": False,
        }
        self.store.set(_share_key(share_id), json.dumps(info), expires_in + _SHARE_GRACE)
        return Share(share_id, target, expires_at, filename, code, code is not None, max_downloads)

    def get(self, share_id: str) -> Share:
        """The share as it is now (without its code).

        :raises ShareError: unknown (404), expired or revoked (410).
        """
        info = self._load(share_id)
        views = self.store.get(_count_key("views", share_id))
        downloads = self.store.get(_count_key("downloads", share_id))
        return Share(
            share_id,
            info["t"],
            info["e"],
            info["n"],
            None,
            info["code"] is not None,
            info["m"],
            int(views or 0),
            int(downloads or 0),
            info["r"],
        )

    def viewed(self, share_id: str) -> Share:
        """Count a view of the share page; returns the share."""
        info = self._load(share_id)
        self.store.incr(_count_key("views", share_id), self._ttl(info))
        return self.get(share_id)

    def open(self, share_id: str, code: str | None) -> Share:
        """Check the code and count a download.

        :raises ShareError: 403 wrong or missing code, 429 too many attempts (with
            ``retry_after``), 410 download limit reached, and those of :meth:`get`.
        """
        info = self._load(share_id)
        if info["code"] is not None:
            window = int(time.time() // self.attempt_window)
            attempts = self.store.incr(f"share-attempts:{share_id}:{window}", self.attempt_window)
            if attempts > self.max_attempts:
                retry = int((window + 1) * self.attempt_window - time.time()) + 1
                raise ShareError("Too many attempts for this share. Try again later.", 429, retry)
            if not code or not self._code_matches(info, code):
                left = self.max_attempts - attempts
                message = "The extraction code is not right." if code else "Enter the code."
                raise ShareError(f"{message} {left} attempt(s) left.", 403)
        count = self.store.incr(_count_key("downloads", share_id), self._ttl(info))
        if info["m"] is not None and count > info["m"]:
            raise ShareError("This share reached its download limit.", 410)
        return self.get(share_id)

    def revoke(self, share_id: str) -> bool:
        """Revoke a share; its page then says so.  Tells whether it existed."""
        raw = self.store.get(_share_key(share_id))
        if raw is None:
            return False
        info = json.loads(raw)
        info["r"] = True
        self.store.set(_share_key(share_id), json.dumps(info), self._ttl(info))
        return True

    # -- internals -----------------------------------------------------------------------

    def _load(self, share_id: str) -> dict[str, Any]:
        raw = self.store.get(_share_key(share_id))
        if raw is None:
            raise ShareError("There is no such share.", 404)
        info: dict[str, Any] = json.loads(raw)
        if info["r"]:
            raise ShareError("This share was revoked.", 410)
        if time.time() > info["e"]:
            raise ShareError("This share has expired.", 410)
        return info

    def _ttl(self, info: dict[str, Any]) -> float:
        return max(1.0, float(info["e"]) - time.time() + _SHARE_GRACE)

    @staticmethod
    def _code_hash(key: bytes, salt: str, code: str) -> str:
        normalized = code.strip().upper().encode("utf-8")
        return hmac.new(key, salt.encode("ascii") + b":" + normalized, hashlib.sha256).hexdigest()

    def _code_matches(self, info: dict[str, Any], code: str) -> bool:
        # Any key may have made the hash (rotation); compare in constant time.
        return any(
            hmac.compare_digest(self._code_hash(key, info["salt"], code), info["code"])
            for key in self._keys
        )


def _share_key(share_id: str) -> str:
    return f"share:{share_id}"


def _count_key(kind: str, share_id: str) -> str:
    return f"share-{kind}:{share_id}"


# -- the WSGI app ------------------------------------------------------------------------


class DownloadLinks:
    """Signed links and shares for an app, served under the middleware.

    :param resolver: ``resolver(target) -> source`` for :func:`uploadmeter.download.download`
        (e.g. a ``Path``, or an ``Item`` with a name); returning ``None`` or raising
        ``LookupError`` answers 404.
    :param secret_key: signs links and keys code hashes (a list for rotation).
    :param store: shared by all workers; usually the middleware's.
    :param base_path: where the app is mounted, from the site root (``{prefix}/d``).
    :param downloader: how files are sent (e.g. ``Downloader(root=..., remote=...)``).
    :param share_link_ttl: seconds the link handed out after a share's code is valid.
    """

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
    ) -> None:
        self.resolver = resolver
        self.signer = LinkSigner(secret_key, store)
        self.shares = ShareManager(
            secret_key, store, max_attempts=max_attempts, attempt_window=attempt_window
        )
        self.base_path = "/" + base_path.strip("/")
        self.downloader = downloader or Downloader()
        self.share_link_ttl = share_link_ttl
        self.url_map = Map(
            [
                Rule("/l/<token>", endpoint="link", methods=["GET", "HEAD"]),
                Rule("/s/<share_id>", endpoint="share", methods=["GET", "HEAD", "POST"]),
            ]
        )

    @classmethod
    def attach(
        cls,
        meter: UploadMeterMiddleware,
        resolver: Resolver,
        secret_key: SecretKey,
        *,
        path: str = "/d",
        **options: Any,
    ) -> DownloadLinks:
        """Create the links app on the middleware's store and mount it at ``{prefix}{path}``."""
        path = "/" + path.strip("/")
        links = cls(resolver, secret_key, meter.store, base_path=meter.prefix + path, **options)
        meter.mount(path, links)
        return links

    # -- making links --------------------------------------------------------------------

    def signed_url(
        self,
        target: str,
        *,
        expires_in: float = 300,
        single_use: bool = False,
        filename: str | None = None,
        environ: dict[str, Any] | None = None,
        external: bool = False,
    ) -> str:
        """A URL downloading ``target`` without a session (see :meth:`LinkSigner.create`).

        ``environ`` adds the app's script root; ``external`` makes the URL absolute.
        """
        link = self.signer.create(
            target, expires_in=expires_in, single_use=single_use, filename=filename
        )
        return self._url(f"/l/{link.token}", environ, external)

    def share(self, target: str, **options: Any) -> Share:
        """Create a share (see :meth:`ShareManager.create`); ``share_url`` gives its URL."""
        return self.shares.create(target, **options)

    def share_url(
        self, share_id: str, *, environ: dict[str, Any] | None = None, external: bool = False
    ) -> str:
        return self._url(f"/s/{share_id}", environ, external)

    def _url(self, path: str, environ: dict[str, Any] | None, external: bool) -> str:
        if environ is None:
            if external:
                raise ValueError("external URLs need the request's environ")
            return self.base_path + path
        if external:
            root = get_current_url(environ, root_only=True).rstrip("/")
        else:
            root = environ.get("SCRIPT_NAME", "").rstrip("/")
        return root + self.base_path + path

    # -- serving -------------------------------------------------------------------------

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        return self.respond(environ)(environ, start_response)

    def respond(self, environ: dict[str, Any]) -> Response:
        adapter = self.url_map.bind_to_environ(environ)
        try:
            endpoint, args = adapter.match()
        except MethodNotAllowed as exc:
            allow = ", ".join(exc.valid_methods or ())
            return error_response(environ, 405, f"Use {allow}.", [("Allow", allow)])
        except HTTPException:
            return error_response(environ, 404, "No such download link.")
        try:
            if endpoint == "link":
                return self._serve_link(environ, args["token"])
            return self._serve_share(environ, args["share_id"])
        except LinkError as exc:
            return _link_error(environ, exc)
        except StoreError:
            return error_response(environ, 503, "Downloads are unavailable right now.")

    def _serve_link(self, environ: dict[str, Any], token: str) -> Response:
        link = self.signer.verify(token)
        head = environ.get("REQUEST_METHOD") == "HEAD"
        if not head:
            self.signer.use(link)
        source = self._resolve(link.target)
        if source is None:
            if not head:
                self.signer.unuse(link)
            return error_response(environ, 404, "The file of this link no longer exists.")
        response = self.downloader(source, link.filename, environ=environ)
        if response.status_code == 404 and not head:
            self.signer.unuse(link)
        response.headers["Referrer-Policy"] = "no-referrer"  # the token must not leak onward
        response.headers["X-Robots-Tag"] = "noindex"
        return response

    def _resolve(self, target: str) -> Any:
        try:
            return self.resolver(target)
        except LookupError:
            return None

    def _display_name(self, target: str) -> str | None:
        source = self._resolve(target)
        if isinstance(source, Item) and source.name:
            return source.name
        if isinstance(source, os.PathLike):
            return os.path.basename(os.fspath(source)) or None
        return None

    def _serve_share(self, environ: dict[str, Any], share_id: str) -> Response:
        request = Request(environ)
        if request.method == "POST":
            code = request.form.get("code") or request.headers.get("X-Share-Code")
            try:
                share = self.shares.open(share_id, code)
            except ShareError as exc:
                if exc.status in (403, 429) and not _asks_for_json(environ):
                    share = self.shares.get(share_id)
                    return self._share_page(share, exc)
                raise
            link = self.signer.create(
                share.target, expires_in=self.share_link_ttl, filename=share.filename
            )
            # SCRIPT_NAME is where this app is mounted, so the link resolves back here.
            url = environ.get("SCRIPT_NAME", "").rstrip("/") + "/l/" + link.token
            if _asks_for_json(environ):
                return json_response({"url": url, "expires_in": self.share_link_ttl})
            return redirect(url, 303)
        share = (
            self.shares.viewed(share_id) if request.method == "GET" else self.shares.get(share_id)
        )
        if _asks_for_json(environ):
            return json_response(
                {
                    "id": share.id,
                    "filename": share.filename,
                    "expires_at": share.expires_at,
                    "code_required": share.code_required,
                }
            )
        return self._share_page(share, None)

    def _share_page(self, share: Share, error: ShareError | None) -> Response:
        title = share.filename or self._display_name(share.target) or "Shared file"
        parts = [
            "<!doctype html>\n<html lang=en><meta charset=utf-8>",
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            '<meta name="robots" content="noindex">',
            f"<title>{html.escape(title)}</title>",
            f"<style>{_PAGE_CSS}</style>",
            f"<main><h1>{html.escape(title)}</h1>",
            f"<p class=meta>Available until {html.escape(http_date(share.expires_at))}</p>",
        ]
        if error is not None:
            parts.append(f'<p class=error role="alert">{html.escape(error.message)}</p>')
        parts.append("<form method=post>")  # posts back to this very URL, wherever mounted
        if share.code_required:
            parts.append(
                "<label>Extraction code <input name=code required autocomplete=off "
                "autocapitalize=characters spellcheck=false autofocus></label>"
            )
        parts.append("<button type=submit>Download</button></form></main>\n")
        status = 200 if error is None else error.status
        response = Response("".join(parts), status=status, mimetype="text/html", headers=NO_STORE)
        if error is not None and error.status == 429 and error.retry_after:
            response.headers["Retry-After"] = str(error.retry_after)
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["X-Robots-Tag"] = "noindex"
        return response


def _asks_for_json(environ: dict[str, Any]) -> bool:
    """Share pages are pages: JSON only when the client prefers it over HTML."""
    accept = parse_accept_header(environ.get("HTTP_ACCEPT", "*/*"), MIMEAccept)
    return accept.best_match(["text/html", "application/json"]) == "application/json"


def _link_error(environ: dict[str, Any], exc: LinkError) -> Response:
    headers = []
    if isinstance(exc, ShareError) and exc.status == 429 and exc.retry_after:
        headers.append(("Retry-After", str(exc.retry_after)))
    return error_response(environ, exc.status, exc.message, headers)


_PAGE_CSS = (
    "body{font:16px/1.5 system-ui,sans-serif;margin:0;background:#f6f7f9;color:#1d232b}"
    "main{max-width:28rem;margin:10vh auto;background:#fff;padding:2rem;border-radius:8px;"
    "box-shadow:0 1px 4px #0002}h1{font-size:1.3rem;margin:0 0 .5rem;word-break:break-word}"
    ".meta{color:#5b6472;margin:0 0 1.5rem}.error{color:#a11;background:#fdecec;"
    "padding:.5rem .75rem;border-radius:4px}label{display:block;margin-bottom:1rem}"
    "input{display:block;width:100%;box-sizing:border-box;font:inherit;padding:.5rem;"
    "margin-top:.25rem;letter-spacing:.2em;text-transform:uppercase}"
    "button{font:inherit;padding:.6rem 1.4rem;border:0;border-radius:4px;background:#2563eb;"
    "color:#fff;cursor:pointer}"
)
