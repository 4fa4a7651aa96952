"""What every shell's middleware is made of: its options, its context, its mounts.

:class:`MeterBase` turns the middleware options (the same for WSGI and ASGI) into one
:class:`~uploadmeter.core.MeterContext` and exposes its parts as attributes; the shells
add how they speak to their server.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, TypedDict

from uploadmeter.core._config import OPTION_DEFAULTS
from uploadmeter.core._context import MeterContext
from uploadmeter.core._records import Records
from uploadmeter.core._sessions import CookieSettings, SessionHook, Sessions
from uploadmeter.core._settings import TrackerSettings
from uploadmeter.stores import ProgressStore, open_store

if TYPE_CHECKING:
    from typing_extensions import Unpack  # typing.Unpack for **kwargs is Python 3.12


class MeterOptions(TypedDict, total=False):
    """The options every shell's middleware takes (see
    :class:`uploadmeter.wsgi.UploadMeterMiddleware` for what each means)."""

    prefix: str
    max_content_length: int | None
    ttl: float
    update_interval: float
    stale_after: float
    max_tracked_fields: int
    session_id: SessionHook | None
    cookie_name: str
    cookie_path: str
    cookie_domain: str | None
    cookie_samesite: str
    cookie_secure: bool | None
    set_cookie_on_pages: bool


class MeterBase:
    """The options and context of a middleware (their defaults: ``core._config``)."""

    def __init__(
        self,
        secret_key: str | bytes | list[str] | list[bytes],
        store: str | ProgressStore | None = None,
        **options: Unpack[MeterOptions],
    ) -> None:
        if not secret_key:
            raise ValueError("UploadMeterMiddleware needs a secret_key to sign its cookie")
        settings: dict[str, Any] = {**OPTION_DEFAULTS, **options}
        self.max_tracked_fields = settings["max_tracked_fields"]
        self.set_cookie_on_pages = settings["set_cookie_on_pages"]
        self._context = MeterContext(
            store=open_store(store),
            settings=TrackerSettings(
                ttl=settings["ttl"],
                stale_after=settings["stale_after"],
                update_interval=settings["update_interval"],
            ),
            sessions=Sessions(
                secret_key,
                CookieSettings(
                    settings["cookie_name"],
                    settings["cookie_path"],
                    settings["cookie_domain"],
                    settings["cookie_samesite"],
                    settings["cookie_secure"],
                ),
                hook=settings["session_id"],
            ),
            prefix="/" + settings["prefix"].strip("/"),
            mount=self.mount,
            max_content_length=settings["max_content_length"],
        )
        self._prefix_slash = self.prefix + "/"

    @property
    def context(self) -> MeterContext:
        """What features (chunked, tus, downloads, ...) are given of this middleware."""
        return self._context

    # The context's parts, as attributes of the middleware.

    @property
    def store(self) -> ProgressStore:
        return self.context.store

    @property
    def settings(self) -> TrackerSettings:
        return self.context.settings

    @settings.setter
    def settings(self, settings: TrackerSettings) -> None:
        """New timing for this middleware and its endpoints (features keep theirs)."""
        self._context = dataclasses.replace(self._context, settings=settings)
        self._context_changed()

    @property
    def sessions(self) -> Sessions:
        return self.context.sessions

    @property
    def prefix(self) -> str:
        return self.context.prefix

    @property
    def max_content_length(self) -> int | None:
        return self.context.max_content_length

    @property
    def records(self) -> Records:
        """The only writer of this middleware's records."""
        return self.context.records

    def mount(self, path: str, app: Any) -> None:
        """Serve ``app`` under ``{prefix}{path}`` (the shell says which kind of app).

        An app with a ``mounted_at(path)`` method is told its path from the site root
        (``{prefix}{path}``), to build its own URLs.
        """
        path = "/" + path.strip("/")
        self.mounts[path] = app
        mounted_at = getattr(app, "mounted_at", None)
        if callable(mounted_at):
            mounted_at(self.prefix + path)

    @property
    def mounts(self) -> dict[str, Any]:
        """The apps served under the prefix, by path."""
        raise NotImplementedError

    def _context_changed(self) -> None:
        """The context was replaced (new settings): hand it to the endpoints."""
