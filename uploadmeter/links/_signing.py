"""Signed, expiring download links that need no session.

A :class:`LinkSigner` makes a link's token: an opaque random id and the expiry, signed with
itsdangerous (its own salt; a list of keys for rotation: the last signs, all verify).  What
the link stands for -- the app's *target* -- is kept in the store under the id, so a URL
never contains a path.  A link can be single-use (spent atomically with ``store.add``) and
revoked.  Tampered or foreign tokens raise :class:`LinkInvalid` (403); expired, used or
revoked ones :class:`LinkExpired`, :class:`LinkUsed`, :class:`LinkRevoked` (410).
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass

from itsdangerous import BadSignature, URLSafeSerializer

from uploadmeter.exceptions import LinkExpired, LinkInvalid, LinkRevoked, LinkUsed
from uploadmeter.stores._base import ProgressStore

__all__ = ["Link", "LinkSigner", "SecretKey", "secret_keys"]

# One key, or several for rotation (oldest first).
SecretKey = str | bytes | Iterable[str | bytes]


@dataclass(frozen=True)
class Link:
    """A signed link: ``token`` goes into the URL; ``target`` never does.

    ``share`` is the id of the share that handed the link out: the link is good only while
    that share is.
    """

    id: str
    token: str
    target: str
    expires_at: float
    single_use: bool = False
    filename: str | None = None
    share: str | None = None


class LinkSigner:
    """Creates, verifies and revokes signed links.

    :param secret_key: one key, or a list for rotation (oldest first: the last one signs,
        every one verifies).
    :param store: where targets, single-use marks and revocations live; every worker must
        share it (the middleware's store).
    :param salt: separates these signatures from any other use of the same key.
    """

    def __init__(
        self, secret_key: SecretKey, store: ProgressStore, *, salt: str = "uploadmeter.link"
    ) -> None:
        self.store = store
        self._serializer = URLSafeSerializer(secret_keys(secret_key), salt=salt)

    def create(
        self,
        target: str,
        *,
        expires_in: float = 300,
        single_use: bool = False,
        filename: str | None = None,
        share: str | None = None,
    ) -> Link:
        """A new link to ``target`` (an app reference the resolver understands)."""
        if expires_in <= 0:
            raise ValueError("expires_in must be positive")
        link_id = secrets.token_urlsafe(16)
        expires_at = round(time.time() + expires_in, 3)
        info = {"t": target, "n": filename, "s": single_use, "sh": share, "e": expires_at}
        self.store.set(_link_key(link_id), json.dumps(info), _ttl(expires_at))
        token = self._serializer.dumps([link_id, expires_at])
        return Link(link_id, token, target, expires_at, single_use, filename, share)

    def verify(self, token: str) -> Link:
        """The link a token stands for, without using it up.

        :raises LinkInvalid: tampered or foreign token (403).
        :raises LinkExpired, LinkRevoked, LinkUsed: no longer valid (410).
        """
        link_id, expires_at = self._decode(token)
        if time.time() > expires_at:
            raise LinkExpired("This link has expired.")
        raw = self.store.get(_link_key(link_id))
        if raw is None:
            raise LinkRevoked("This link is no longer valid.")
        info = json.loads(raw)
        if info.get("r"):
            raise LinkRevoked("This link was revoked.")
        if info["s"] and self.store.get(_used_key(link_id)) is not None:
            raise LinkUsed("This link was already used.")
        return Link(link_id, token, info["t"], expires_at, info["s"], info["n"], info["sh"])

    def use(self, link: Link) -> None:
        """Spend a single-use link (atomic: of two simultaneous requests one wins)."""
        if link.single_use and not self.store.add(_used_key(link.id), "1", _ttl(link.expires_at)):
            raise LinkUsed("This link was already used.")

    def unuse(self, link: Link) -> None:
        """Give a single-use link back when nothing could be sent (the file was gone)."""
        if link.single_use:
            self.store.delete(_used_key(link.id))

    def revoke(self, token_or_id: str) -> bool:
        """Revoke a link by its token (or its id).  Tells whether it was still valid."""
        try:
            link_id = self._decode(token_or_id)[0]
        except LinkInvalid:
            link_id = token_or_id
        raw = self.store.get(_link_key(link_id))
        info = json.loads(raw) if raw is not None else None
        if info is None or info.get("r") or time.time() > info["e"]:
            return False
        info["r"] = True  # kept (not deleted) so the link's page can say it was revoked
        self.store.set(_link_key(link_id), json.dumps(info), _ttl(info["e"]))
        return True

    def _decode(self, token: str) -> tuple[str, float]:
        try:
            link_id, expires_at = self._serializer.loads(token)
            return str(link_id), float(expires_at)
        except (BadSignature, TypeError, ValueError) as exc:
            raise LinkInvalid("This link is not valid.") from exc


def secret_keys(secret_key: SecretKey) -> list[bytes]:
    """The keys as itsdangerous takes them, oldest first.

    :raises ValueError: no key, or an empty one.
    """
    keys = [secret_key] if isinstance(secret_key, (str, bytes)) else list(secret_key)
    if not keys or not all(keys):
        raise ValueError("Signing links needs a secret_key")
    return [k.encode("utf-8") if isinstance(k, str) else k for k in keys]


def _ttl(expires_at: float) -> float:
    """Keep a link's records while its token can be presented, and no longer."""
    return max(1.0, expires_at - time.time() + 1)


def _link_key(link_id: str) -> str:
    return f"link:{link_id}"


def _used_key(link_id: str) -> str:
    return f"link-used:{link_id}"
