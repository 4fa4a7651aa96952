"""Share links: a file shared for a while, optionally behind an extraction code.

A :class:`ShareManager` keeps each share in the store under a short random id: the target,
the expiry, an optional download limit and the code as an itsdangerous signature (keyed with
the app's secret, so the store alone does not reveal it; compared in constant time, with
every key of a rotation).  Code guesses are rate-limited per share with ``store.incr``;
views and downloads are counted; a share can be revoked.  Failures raise :class:`ShareError`
with the HTTP status a client should see.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from dataclasses import dataclass
from typing import Any

from itsdangerous import Signer

from uploadmeter.exceptions import ShareError
from uploadmeter.links._signing import SecretKey, secret_keys
from uploadmeter.stores._base import ProgressStore

__all__ = ["Share", "ShareManager"]

# Codes avoid look-alikes (0/O, 1/I/L) so they can be read out and typed.
CODE_ALPHABET = "ABCDEFGHJKMNPQRSTUVWXYZ23456789"
# Expired shares are kept this long so their page says "expired" rather than "not found".
_SHARE_GRACE = 86400.0


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

    :param secret_key: keys the code signatures (a list for rotation, newest last).
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
        self._codes = Signer(
            secret_keys(secret_key), salt="uploadmeter.share-code", digest_method=hashlib.sha256
        )
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
            code = "".join(secrets.choice(CODE_ALPHABET) for _ in range(self.code_length))
        elif code is False or code == "":
            code = None
        if code is not None and len(code.strip()) < 4:
            raise ValueError("An extraction code needs at least 4 characters")
        share_id = secrets.token_urlsafe(12)
        expires_at = time.time() + expires_in
        info = {
            "t": target,
            "n": filename,
            "e": expires_at,
            "m": max_downloads,
            "code": None if code is None else self._code_signature(share_id, code).decode(),
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
        self.store.incr(_count_key("views", share_id), _ttl(info))
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
                raise ShareError(
                    "Too many attempts for this share. Try again later.",
                    status=429,
                    retry_after=retry,
                )
            right = code and self._codes.verify_signature(
                _normalized(share_id, code), info["code"].encode()
            )
            if not right:
                left = self.max_attempts - attempts
                message = "The extraction code is not right." if code else "Enter the code."
                raise ShareError(f"{message} {left} attempt(s) left.", status=403)
        count = self.store.incr(_count_key("downloads", share_id), _ttl(info))
        if info["m"] is not None and count > info["m"]:
            raise ShareError("This share reached its download limit.", status=410)
        return self.get(share_id)

    def revoke(self, share_id: str) -> bool:
        """Revoke a share; its page then says so.  Tells whether it existed."""
        raw = self.store.get(_share_key(share_id))
        if raw is None:
            return False
        info = json.loads(raw)
        info["r"] = True
        self.store.set(_share_key(share_id), json.dumps(info), _ttl(info))
        return True

    def _load(self, share_id: str) -> dict[str, Any]:
        raw = self.store.get(_share_key(share_id))
        if raw is None:
            raise ShareError("There is no such share.", status=404)
        info: dict[str, Any] = json.loads(raw)
        if info["r"]:
            raise ShareError("This share was revoked.", status=410)
        if time.time() > info["e"]:
            raise ShareError("This share has expired.", status=410)
        return info

    def _code_signature(self, share_id: str, code: str) -> bytes:
        return self._codes.get_signature(_normalized(share_id, code))


def _normalized(share_id: str, code: str) -> bytes:
    # Case-insensitive, and bound to the share: one code signs differently on two shares.
    return f"{share_id}:{code.strip().upper()}".encode()


def _ttl(info: dict[str, Any]) -> float:
    return max(1.0, float(info["e"]) - time.time() + _SHARE_GRACE)


def _share_key(share_id: str) -> str:
    return f"share:{share_id}"


def _count_key(kind: str, share_id: str) -> str:
    return f"share-{kind}:{share_id}"
