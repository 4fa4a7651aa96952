"""The progress component for apps without Flask: the same Jinja macro, rendered here.

::

    from uploadmeter.ui import render_file_upload

    html = render_file_upload(
        "document", middleware=meter, content_html="<p>File uploaded.</p>"
    )

The markup is byte for byte what ``{% call uploadmeter.file_upload("document") %}`` gives
in a Flask template, because both render ``uploadmeter/macros.html``; this module only
supplies the settings (endpoint URL, poll timing, size limit) that the Flask extension
reads from the app's config.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable
from importlib import resources
from typing import Any

from jinja2 import ChoiceLoader, Environment, FileSystemLoader, PackageLoader, select_autoescape
from markupsafe import Markup

from uploadmeter.core._context import HasContext, MeterContext, context_of

__all__ = [
    "component_settings",
    "render_assets",
    "render_chunked_assets",
    "render_chunked_upload",
    "render_file_upload",
    "template_environment",
]

TEMPLATE = "uploadmeter/macros.html"
CHUNKED_TEMPLATE = "uploadmeter/chunked.html"
DEFAULT_PREFIX = "/uploadmeter"
DEFAULT_POLL_INTERVAL = 0.4  # seconds between polls while uploading
DEFAULT_FIRST_POLL = 0.5  # seconds from submit to the first poll


@functools.cache
def asset_version() -> str:
    """A short hash of the scripts and stylesheets, so a new release is never served stale."""
    digest = hashlib.sha256()
    static = resources.files("uploadmeter.ui").joinpath("static")
    for name in (
        "uploadmeter-format.js",
        "uploadmeter.js",
        "uploadmeter.css",
        "uploadmeter-chunked.js",
        "uploadmeter-chunked.css",
    ):
        digest.update(static.joinpath(name).read_bytes())
    return digest.hexdigest()[:12]


def component_settings(
    *,
    prefix: str = DEFAULT_PREFIX,
    script_name: str = "",
    poll_interval: float = DEFAULT_POLL_INTERVAL,
    first_poll: float = DEFAULT_FIRST_POLL,
    max_content_length: int | None = None,
) -> dict[str, Any]:
    """What the macro needs to know about the server, as ``uploadmeter_settings()`` returns.

    :param prefix: the middleware's prefix.
    :param script_name: where the app is mounted (``SCRIPT_NAME``); the endpoints live
        under ``{script_name}{prefix}``.
    :param poll_interval: seconds between polls.
    :param first_poll: seconds from submitting to the first poll.
    :param max_content_length: the size limit, shown to the user when an upload exceeds it.
    """
    endpoint = script_name.rstrip("/") + "/" + prefix.strip("/")
    return {
        "endpoint": endpoint,
        "static_url": endpoint + "/static/",
        "poll_interval_ms": max(50, round(poll_interval * 1000)),
        "first_poll_ms": max(0, round(first_poll * 1000)),
        "max_content_length": max_content_length,
        "asset_version": asset_version(),
    }


@functools.cache
def template_environment(
    *directories: str,
    middleware: MeterContext | HasContext | None = None,
    script_name: str = "",
) -> Environment:
    """The one Jinja environment of uploadmeter's templates (widgets, share page), for code
    that renders them without Flask.  Flask apps render them through ``app.jinja_env``.

    Given the app's own template ``directories`` (searched first) and its ``middleware``,
    it is a whole environment for the app's pages: the one line a Starlette or FastAPI
    app needs for ``{% import "uploadmeter/macros.html" as uploadmeter %}``::

        templates = Jinja2Templates(env=template_environment("templates", middleware=meter))
    """
    # Flask's own environment escapes templates named *.html; this one does the same, so
    # both render the macro identically.
    package = PackageLoader("uploadmeter.ui", "templates")
    env = Environment(
        loader=ChoiceLoader([FileSystemLoader(list(directories)), package])
        if directories
        else package,
        autoescape=select_autoescape(["html"]),
    )
    if middleware is not None or directories:
        settings = _settings_for(
            middleware, None, script_name, DEFAULT_POLL_INTERVAL, DEFAULT_FIRST_POLL, None
        )
        env.globals["uploadmeter_settings"] = lambda: settings
    return env


def _module(settings: dict[str, Any], name: str = TEMPLATE) -> Any:
    template = template_environment().get_template(name)
    return template.make_module({"uploadmeter_settings": lambda: settings})


def _settings_for(
    middleware: MeterContext | HasContext | None,
    prefix: str | None,
    script_name: str,
    poll_interval: float,
    first_poll: float,
    max_content_length: int | None,
) -> dict[str, Any]:
    if middleware is not None:
        context = context_of(middleware)
        prefix = context.prefix if prefix is None else prefix
        if max_content_length is None:
            max_content_length = context.max_content_length
    return component_settings(
        prefix=DEFAULT_PREFIX if prefix is None else prefix,
        script_name=script_name,
        poll_interval=poll_interval,
        first_poll=first_poll,
        max_content_length=max_content_length,
    )


def render_file_upload(
    id: str,
    content_html: str = "",
    *,
    middleware: MeterContext | HasContext | None = None,
    prefix: str | None = None,
    script_name: str = "",
    poll_interval: float = DEFAULT_POLL_INTERVAL,
    first_poll: float = DEFAULT_FIRST_POLL,
    max_content_length: int | None = None,
    **options: Any,
) -> Markup:
    """The upload widget's HTML, to put inside the app's own ``<form>``.

    :param id: the client id: the file input's ``name`` and ``id``, and the prefix of
        every element id (``{id}_stage1``, ``{id}_progressBar``, ...).
    :param content_html: stage 3's content (the ``caller()`` of the Jinja macro).  It is
        inserted as HTML, like template markup: escape any user data in it yourself.
    :param middleware: take ``prefix`` and ``max_content_length`` from this middleware.
    :param prefix: the middleware's prefix (default ``/uploadmeter``).
    :param script_name: the app's mount point (``environ["SCRIPT_NAME"]``).
    :param poll_interval: seconds between polls while uploading.
    :param first_poll: seconds from submit to the first poll.
    :param max_content_length: the size limit to quote when an upload is too large.
    :param options: the macro's keyword arguments: ``multiple``, ``accept``,
        ``upload_icon``, ``style_class``, ``progress_bar_style_class``,
        ``cell_style_class``, ``active_style_class``, ``button_label``, ``cancel_label``,
        ``retry_label``, ``action``, ``include_assets``.
    """
    settings = _settings_for(
        middleware, prefix, script_name, poll_interval, first_poll, max_content_length
    )
    macro: Callable[..., str] = _module(settings).file_upload
    if content_html:
        content = Markup(content_html)
        return Markup(macro(id, caller=lambda: content, **options))
    return Markup(macro(id, **options))


def render_assets(
    *,
    middleware: MeterContext | HasContext | None = None,
    prefix: str | None = None,
    script_name: str = "",
) -> Markup:
    """The ``<link>`` and ``<script>`` tags, for pages that load them once in ``<head>``
    and render their widgets with ``include_assets=False``."""
    settings = _settings_for(
        middleware, prefix, script_name, DEFAULT_POLL_INTERVAL, DEFAULT_FIRST_POLL, None
    )
    return Markup(_module(settings).assets())


def render_chunked_upload(
    id: str,
    uploader_js: str,
    *,
    middleware: MeterContext | HasContext | None = None,
    prefix: str | None = None,
    script_name: str = "",
    poll_interval: float = DEFAULT_POLL_INTERVAL,
    **options: Any,
) -> Markup:
    """The resumable uploader's HTML (``uploadmeter/chunked.html``'s ``chunked_upload``).

    :param uploader_js: the URL of simple-uploader.js, which the page serves.
    :param options: the macro's other keyword arguments (``target``, ``chunk_size``,
        ``simultaneous_uploads``, ``multiple``, ``accept``, ``hash_limit``, the style
        classes, the labels, ``include_assets``); the rest as for :func:`render_file_upload`.
    """
    settings = _settings_for(
        middleware, prefix, script_name, poll_interval, DEFAULT_FIRST_POLL, None
    )
    return Markup(_module(settings, CHUNKED_TEMPLATE).chunked_upload(id, uploader_js, **options))


def render_chunked_assets(
    uploader_js: str,
    *,
    middleware: MeterContext | HasContext | None = None,
    prefix: str | None = None,
    script_name: str = "",
) -> Markup:
    """The resumable uploader's ``<link>`` and ``<script>`` tags, for pages that load them
    once and render their uploaders with ``include_assets=False``."""
    settings = _settings_for(
        middleware, prefix, script_name, DEFAULT_POLL_INTERVAL, DEFAULT_FIRST_POLL, None
    )
    return Markup(_module(settings, CHUNKED_TEMPLATE).chunked_assets(uploader_js))
