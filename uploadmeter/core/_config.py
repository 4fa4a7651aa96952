"""The middleware's options as framework settings, in one table.

Flask's ``UPLOADMETER_*`` config keys and Django's ``UPLOADMETER`` dict name the same
options: the middleware's keyword arguments, upper-cased (``store`` is ``STORE``,
``cookie_name`` is ``COOKIE_NAME``).  :func:`middleware_options` turns such settings into
those keyword arguments, with the same defaults, conversions and secret-key fallback for
every integration.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from uploadmeter.exceptions import ConfigurationError

#: Setting name -> (middleware keyword, default, conversion or None).
_OPTIONS: dict[str, tuple[str, Any, Callable[[Any], Any] | None]] = {
    "SECRET_KEY": ("secret_key", None, None),  # None: the framework's own secret key
    "STORE": ("store", None, None),  # URL or ProgressStore; None: SQLite file in the temp dir
    "PREFIX": ("prefix", "/uploadmeter", None),
    "MAX_CONTENT_LENGTH": ("max_content_length", None, None),
    "TTL": ("ttl", 300.0, float),
    "UPDATE_INTERVAL": ("update_interval", 0.2, float),
    "STALE_AFTER": ("stale_after", 120.0, float),
    "MAX_TRACKED_FIELDS": ("max_tracked_fields", 256, int),
    "SESSION_ID": ("session_id", None, None),  # hook(environ) -> str | None, not the cookie
    "COOKIE_NAME": ("cookie_name", "uploadmeter_session", None),
    "COOKIE_PATH": ("cookie_path", "/", None),
    "COOKIE_DOMAIN": ("cookie_domain", None, None),
    "COOKIE_SAMESITE": ("cookie_samesite", "Lax", None),
    "COOKIE_SECURE": ("cookie_secure", None, None),  # None: Secure when the request is https
    "SET_COOKIE_ON_PAGES": ("set_cookie_on_pages", True, bool),
}

#: The middleware's options and their defaults, by keyword (``secret_key`` is required):
#: the one place a default is written; both shells' ``MeterBase`` reads it.
OPTION_DEFAULTS: dict[str, Any] = {
    keyword: default for keyword, default, _ in _OPTIONS.values() if keyword != "secret_key"
}

#: The middleware's settings and their defaults (``SECRET_KEY`` and ``MAX_CONTENT_LENGTH``
#: fall back to the framework's own, see :func:`middleware_options`).
MIDDLEWARE_SETTINGS: dict[str, Any] = {name: spec[1] for name, spec in _OPTIONS.items()}


def middleware_options(
    settings: Mapping[str, Any],
    *,
    secret_keys: list[Any] | None = None,
    max_content_length: int | None = None,
    missing_secret: str = "uploadmeter signs its session cookie: set a SECRET_KEY.",
) -> dict[str, Any]:
    """Keyword arguments for ``UploadMeterMiddleware(app, **options)`` from ``settings``
    (names of :data:`MIDDLEWARE_SETTINGS`; a missing one takes its default; other names
    are ignored).

    :param secret_keys: the framework's keys, oldest first, signing with the last
        (itsdangerous accepts them all), used when ``SECRET_KEY`` is not set.
    :param max_content_length: the framework's limit, used when ``MAX_CONTENT_LENGTH``
        is not set.
    :param missing_secret: the :class:`ConfigurationError` message when neither gives a key.
    """
    options: dict[str, Any] = {}
    for name, (keyword, default, convert) in _OPTIONS.items():
        value = settings.get(name, default)
        options[keyword] = convert(value) if convert is not None and value is not None else value
    if not options["secret_key"]:
        options["secret_key"] = [key for key in secret_keys or [] if key]
    if not options["secret_key"]:
        raise ConfigurationError(missing_secret)
    if options["max_content_length"] is None:
        options["max_content_length"] = max_content_length
    return options
