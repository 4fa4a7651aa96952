"""What a feature needs of the meter: :class:`MeterContext`.

Features (chunked and tus uploads, processing, downloads, links, the component) are given
this narrow object instead of the middleware or the Flask extension, so they depend on the
core, not on a server shell.  A shell builds one (``UploadMeterMiddleware.context``) and
the Flask extension hands out its app's (``UploadMeter.context``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from uploadmeter.core._records import Records
from uploadmeter.core._sessions import Sessions
from uploadmeter.core._settings import TrackerSettings
from uploadmeter.stores._base import ProgressStore


@dataclass(frozen=True)
class MeterContext:
    """What a feature needs of the meter.

    :param store: where records, flags and locks live.
    :param settings: the records' timing (ttl, stale_after, update_interval).
    :param sessions: the session cookie and its issuing policy.
    :param prefix: where the meter's endpoints live (``/uploadmeter``).
    :param mount: ``mount(path, app)`` serves ``app`` under ``{prefix}{path}``.
    :param max_content_length: the meter's size limit for form uploads (``None``: none).
    """

    store: ProgressStore
    settings: TrackerSettings
    sessions: Sessions
    prefix: str
    mount: Callable[[str, Any], None]
    max_content_length: int | None = None

    @functools.cached_property
    def records(self) -> Records:
        """The only writer of records, on this context's store and settings."""
        return Records(self.store, self.settings)


class HasContext(Protocol):
    """A meter: the WSGI middleware, the Flask extension (a later ASGI shell)."""

    @property
    def context(self) -> MeterContext: ...


def context_of(meter: MeterContext | HasContext) -> MeterContext:
    """The :class:`MeterContext` of ``meter`` (a meter, or a context already)."""
    if isinstance(meter, MeterContext):
        return meter
    context = getattr(meter, "context", None)
    if not isinstance(context, MeterContext):
        raise TypeError(
            f"expected an uploadmeter meter or MeterContext, got {type(meter).__name__}"
        )
    return context
