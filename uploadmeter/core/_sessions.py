"""Which browser session an upload belongs to: a signed, HttpOnly cookie.

Progress is private.  Records are keyed by a random session token that only the browser
holding the cookie can present, and the cookie is signed (itsdangerous) so a client cannot
forge or guess another session's token.  Apps with their own session may hand uploadmeter
an id through a hook instead; the cookie is then never needed.
"""

from __future__ import annotations

import functools
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from itsdangerous import BadSignature, Signer
from werkzeug.http import dump_cookie, parse_cookie

SessionHook = Callable[[dict[str, Any]], "str | None"]


@dataclass
class CookieSettings:
    name: str = "uploadmeter_session"
    path: str = "/"
    domain: str | None = None
    samesite: str = "Lax"
    secure: bool | None = None  # None: Secure when the request came over https


class SessionCookie:
    """Signs, reads and issues the session cookie."""

    def __init__(
        self,
        secret_key: str | bytes | list[str] | list[bytes],
        settings: CookieSettings | None = None,
        hook: SessionHook | None = None,
    ) -> None:
        # A list of keys allows rotation: sign with the last, accept any of them.
        self._signer = Signer(secret_key, salt="uploadmeter.core")
        self.settings = settings or CookieSettings()
        self.hook = hook
        # A browser polls with the same cookie every 200 ms: check its signature once.
        self._verified = functools.lru_cache(maxsize=4096)(self._unsign)
        self._name_eq = self.settings.name + "="

    def has_valid_cookie(self, environ: dict[str, Any]) -> bool:
        """Does the request carry a cookie of ours with a good signature?  About 1 us when
        it does (the signature check is cached); the hook is not asked."""
        header: str = environ.get("HTTP_COOKIE", "")
        start = header.find(self._name_eq)
        if start < 0:
            return False
        # The value as dump_cookie wrote it (nothing to unquote), found without parsing
        # the whole header (parse_cookie costs ~9 us); anything odd is parsed in full.
        if start == 0 or header[start - 1] in "; ":
            start += len(self._name_eq)
            end = header.find(";", start)
            if self._verified(header[start : end if end >= 0 else len(header)].strip()):
                return True
        return self._cookie_session(environ) is not None

    def session_of(self, environ: dict[str, Any]) -> str | None:
        """The session token of this request, or ``None`` when it has none (or a bad one)."""
        if self.hook is not None:
            app_session = self.hook(environ)
            if app_session:
                return "app." + app_session
        return self._cookie_session(environ)

    def _cookie_session(self, environ: dict[str, Any]) -> str | None:
        try:
            value = parse_cookie(environ).get(self.settings.name)
        except UnicodeDecodeError:  # a Cookie header that is not UTF-8: no session of ours
            return None
        if not value:
            return None
        return self._verified(value)

    def _unsign(self, value: str) -> str | None:
        try:
            return "c." + self._signer.unsign(value).decode("ascii")
        except (BadSignature, UnicodeDecodeError):
            return None

    def _cookie_header(self, token: str, *, https: bool = False) -> str:
        s = self.settings
        return dump_cookie(
            s.name,
            self._signer.sign(token).decode("ascii"),
            path=s.path,
            domain=s.domain,
            secure=https if s.secure is None else s.secure,
            httponly=True,
            samesite=s.samesite,
        )

    def issue(self, environ: dict[str, Any]) -> tuple[str, str]:
        """A fresh session for this request: ``(token, Set-Cookie value)``."""
        token = secrets.token_urlsafe(24)
        https = environ.get("wsgi.url_scheme") == "https"
        return "c." + token, self._cookie_header(token, https=https)
