"""Which browser session an upload belongs to, and which request may start one.

Progress is private.  Records are keyed by a random session token that only the browser
holding the cookie can present, and the cookie is signed (itsdangerous) so a client cannot
forge or guess another session's token.  Apps with their own session may hand uploadmeter
an id through a hook instead; the cookie is then never needed.

The policy -- who may issue a session -- lives here, once:

* **Requests that start one thing** issue a session when they have none
  (:meth:`Sessions.find_or_issue`): a tracked form upload, a tus creation request, a
  tracked download, a progress poll or cancel, and ``GET {prefix}/session``.  Each is a
  single request, so the session it issues is the one its client keeps.
* **HTML pages** of the app issue one when the request has no valid cookie
  (:meth:`Sessions.has_valid_cookie`, :meth:`Sessions.issue`), so a browser holds its
  session before its first upload request.
* **Requests that are one part of a whole never issue** (:meth:`Sessions.find`): chunk
  requests and processing tasks.  Stock chunk clients (resumable.js, flow.js, ...) send
  their first chunks in parallel; if each issued a session, each chunk would land in a
  different session and no request would ever see the whole file -- the race behind the
  stock-client data loss.  Such a request without a session is refused, and the client
  loads a page or ``GET {prefix}/session`` first.

This module knows no server interface: it takes the raw ``Cookie`` header (as the WSGI
environ carries it: latin-1 text), whether the request came over https, and the result of
the app's session hook.  The cookie name, signing salt and format are shared by every
shell, so a WSGI and an ASGI app of one site read each other's cookies and records.
"""

from __future__ import annotations

import functools
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from itsdangerous import BadSignature, Signer
from werkzeug.http import dump_cookie, parse_cookie

# The app's own session id for a request; the shell calls it with its request (WSGI: the
# environ) and hands the result to Sessions.find / find_or_issue.
SessionHook = Callable[[Any], "str | None"]


@dataclass
class CookieSettings:
    name: str = "uploadmeter_session"
    path: str = "/"
    domain: str | None = None
    samesite: str = "Lax"
    secure: bool | None = None  # None: Secure when the request came over https


class Sessions:
    """Reads, signs and issues the session cookie (see the module for who may issue)."""

    def __init__(
        self,
        secret_key: str | bytes | list[str] | list[bytes],
        settings: CookieSettings | None = None,
        hook: SessionHook | None = None,
    ) -> None:
        # A list of keys allows rotation: sign with the last, accept any of them.
        self._signer = Signer(secret_key, salt="uploadmeter.session")
        self.settings = settings or CookieSettings()
        self.hook = hook  # called by the shell, never here (it takes the shell's request)
        # A browser polls with the same cookie every 200 ms: check its signature once.
        self._verified = functools.lru_cache(maxsize=4096)(self._unsign)
        self._name_eq = self.settings.name + "="

    def has_valid_cookie(self, cookie_header: str) -> bool:
        """Does the request carry a cookie of ours with a good signature?  About 1 us when
        it does (the signature check is cached); the hook is not asked."""
        start = cookie_header.find(self._name_eq)
        if start < 0:
            return False
        # The value as dump_cookie wrote it (nothing to unquote), found without parsing
        # the whole header (parse_cookie costs ~9 us); anything odd is parsed in full.
        if start == 0 or cookie_header[start - 1] in "; ":
            start += len(self._name_eq)
            end = cookie_header.find(";", start)
            value = cookie_header[start : end if end >= 0 else len(cookie_header)]
            if self._verified(value.strip()):
                return True
        return self._cookie_session(cookie_header) is not None

    def find(self, cookie_header: str, app_session: str | None = None) -> str | None:
        """The request's session, or ``None`` when it has none (or a bad cookie).  Never
        issues one: for requests that are one part of a whole (chunks, tasks)."""
        if app_session:
            return "app." + app_session
        return self._cookie_session(cookie_header)

    def find_or_issue(
        self, cookie_header: str, https: bool, app_session: str | None = None
    ) -> tuple[str, str | None]:
        """``(session, Set-Cookie value or None)``: the request's session, or a new one
        when it has none.  For requests that start one thing (an upload, a poll)."""
        session = self.find(cookie_header, app_session)
        if session is not None:
            return session, None
        return self.issue(https)

    def issue(self, https: bool) -> tuple[str, str]:
        """A fresh session: ``(session, Set-Cookie value)``."""
        token = secrets.token_urlsafe(24)
        return "c." + token, self._set_cookie(token, https=https)

    def _cookie_session(self, cookie_header: str) -> str | None:
        try:
            value = parse_cookie(cookie_header).get(self.settings.name)
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

    def _set_cookie(self, token: str, *, https: bool) -> str:
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
