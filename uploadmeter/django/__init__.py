"""uploadmeter for Django: settings, the WSGI/ASGI wrapper, template tags and a view helper.

Quick start (``settings.py``, ``wsgi.py``, a view and a template)::

    # settings.py
    INSTALLED_APPS = [..., "uploadmeter.django"]
    UPLOADMETER = {                        # optional: the middleware's options, upper-cased
        "STORE": "redis://127.0.0.1:6379/0",   # default: a private SQLite file
        "MAX_CONTENT_LENGTH": 512 * 1024 * 1024,
    }                                      # SECRET_KEY (and SECRET_KEY_FALLBACKS) sign the cookie

    # wsgi.py
    from django.core.wsgi import get_wsgi_application
    import uploadmeter.django

    application = uploadmeter.django.wrap(get_wsgi_application())

    # asgi.py: the same wrap() puts the ASGI shell (uploadmeter.asgi) around Django's handler
    application = uploadmeter.django.wrap(get_asgi_application())

    # views.py
    from uploadmeter.django import current_upload

    def upload(request):
        saved = save(request.FILES["document"])      # request.FILES: byte for byte as sent
        if (handle := current_upload(request)) is not None:
            handle.set_result(saved=saved)           # stage 3 can show it
            # or: handle.fail("Only PDF files, please.", status=415)
            return JsonResponse({"saved": saved})    # goes to the widget's hidden iframe
        return redirect("files")                     # the no-JavaScript path

.. code-block:: html+django

    {% load uploadmeter %}
    <form action="{% url 'upload' %}" method="post" enctype="multipart/form-data">
      {% csrf_token %}
      {% uploadmeter_file_upload "document" multiple=True accept=".pdf" %}
        <p>Saved as <strong data-uploadmeter-result="saved"></strong>.</p>
        <button type="button" data-uploadmeter-reset>Upload another</button>
      {% enduploadmeter_file_upload %}
    </form>

The tags render the same Jinja macros as the Flask extension and
:func:`uploadmeter.ui.render_file_upload`, so the markup is the same byte for byte; the
tag's body (rendered by Django, with the page's context) is stage 3.  Tags:

- ``{% uploadmeter_file_upload id ...%}…{% enduploadmeter_file_upload %}``: the progress
  component, with the macro's keyword arguments (``multiple``, ``accept``,
  ``upload_icon``, ``style_class``, ``progress_bar_style_class``, ``cell_style_class``,
  ``active_style_class``, ``button_label``, ``cancel_label``, ``retry_label``,
  ``action``, ``include_assets``).  An empty body leaves stage 3 without content.
- ``{% uploadmeter_assets %}``: the stylesheet and scripts, once per page, for widgets
  rendered with ``include_assets=False``.
- ``{% uploadmeter_chunked_upload id uploader_js ... %}`` and
  ``{% uploadmeter_chunked_assets uploader_js %}``: the resumable uploader
  (``uploadmeter/chunked.html``), whose chunks go to ``{PREFIX}/chunks`` (mount
  :class:`~uploadmeter.resumable.ChunkUploads` there: ``application.mount("/chunks",
  ChunkUploads(application, FileStore(folder)))`` in ``wsgi.py``).

Settings: ``settings.UPLOADMETER`` is a dict of the middleware's options, upper-cased
(:data:`SETTINGS_DEFAULTS`): ``SECRET_KEY`` (default: Django's ``SECRET_KEY``, with
``SECRET_KEY_FALLBACKS`` accepted for rotation), ``STORE``, ``PREFIX``,
``MAX_CONTENT_LENGTH``, ``TTL``, ``UPDATE_INTERVAL``, ``STALE_AFTER``,
``MAX_TRACKED_FIELDS``, ``SESSION_ID`` (a hook or its dotted path),
``COOKIE_NAME``, ``COOKIE_PATH``, ``COOKIE_DOMAIN``, ``COOKIE_SAMESITE``,
``COOKIE_SECURE``, ``SET_COOKIE_ON_PAGES``, and the component's ``POLL_INTERVAL`` and
``FIRST_POLL``.  An unknown key is a :class:`~uploadmeter.exceptions.ConfigurationError`.

What Django keeps doing: the body reaches Django's ``MultiPartParser`` byte for byte (the
meter counts what Django reads from ``wsgi.input``), so ``request.FILES``, upload handlers,
``FILE_UPLOAD_MAX_MEMORY_SIZE`` (small files in memory, others in temporary files) and
``DATA_UPLOAD_MAX_MEMORY_SIZE`` / ``DATA_UPLOAD_MAX_NUMBER_FIELDS`` /
``DATA_UPLOAD_MAX_NUMBER_FILES`` work as before; a request Django refuses (400 for too
much form data, 403 for a missing CSRF token) ends the record in ``error`` with that
status.  CSRF: put ``{% csrf_token %}`` in the form as usual; the widget submits the form
itself (into its hidden iframe), token included.  The middleware's own endpoints
(progress, cancel, static files) are answered before Django and need no token; cross-site
cancels are stopped by the ``SameSite=Lax`` session cookie.

Sessions: progress is private to uploadmeter's signed session cookie.  To key it by
Django's session instead, set ``"SESSION_ID": "uploadmeter.django.django_session_id"``
(:func:`django_session_id`; requests without a Django session fall back to the cookie).

Processing progress (work after the upload, shown on the same bar)::

    handle = current_upload(request)
    handle.start_processing("compressing", total=size)
    job = uploadmeter.django.task(request, handle.id, "compressing", total=size)
    pool.submit(compress, path, job)          # job.advance(n) ...; see uploadmeter.processing

This is the only module of uploadmeter that imports Django.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, cast

from uploadmeter.exceptions import ConfigurationError, MissingDependency

try:
    from asgiref.sync import iscoroutinefunction
    from django.conf import settings as django_settings
    from django.core.exceptions import ImproperlyConfigured
    from django.http.cookie import parse_cookie
    from django.utils.module_loading import import_string
except ImportError as exc:
    raise MissingDependency("uploadmeter.django", "Django", "django") from exc

from uploadmeter.core._config import MIDDLEWARE_SETTINGS, middleware_options
from uploadmeter.processing import request_task
from uploadmeter.ui._render import DEFAULT_FIRST_POLL, DEFAULT_POLL_INTERVAL
from uploadmeter.wsgi._middleware import UploadHandle, UploadMeterMiddleware
from uploadmeter.wsgi._middleware import current_upload as _current_upload

if TYPE_CHECKING:
    from uploadmeter.core._context import HasContext
    from uploadmeter.processing import ProcessingTask

__all__ = [
    "SETTINGS_DEFAULTS",
    "current_upload",
    "django_session_id",
    "meter",
    "task",
    "wrap",
]

#: The keys of ``settings.UPLOADMETER`` and their defaults: the middleware's options
#: (upper-cased) and the component's poll timing, as Flask's ``UPLOADMETER_*`` keys.
SETTINGS_DEFAULTS: dict[str, Any] = {
    **MIDDLEWARE_SETTINGS,
    "POLL_INTERVAL": DEFAULT_POLL_INTERVAL,
    "FIRST_POLL": DEFAULT_FIRST_POLL,
}

# The meter wrap() made in this process: views reach it through meter().
_wrapped: list[HasContext] = []


def _configured() -> dict[str, Any]:
    """``settings.UPLOADMETER`` over :data:`SETTINGS_DEFAULTS`."""
    given = getattr(django_settings, "UPLOADMETER", None) or {}
    if not isinstance(given, Mapping):
        raise ConfigurationError("settings.UPLOADMETER must be a dict of uploadmeter's options.")
    unknown = sorted(set(given) - set(SETTINGS_DEFAULTS))
    if unknown:
        raise ConfigurationError(
            f"settings.UPLOADMETER has unknown keys {', '.join(unknown)}; "
            f"the keys are {', '.join(SETTINGS_DEFAULTS)}."
        )
    config = {**SETTINGS_DEFAULTS, **given}
    if isinstance(config["SESSION_ID"], str):
        config["SESSION_ID"] = import_string(config["SESSION_ID"])
    return config


def wrap(application: Any) -> Any:
    """Put the upload meter around Django's WSGI or ASGI application::

        application = uploadmeter.django.wrap(get_wsgi_application())   # wsgi.py
        application = uploadmeter.django.wrap(get_asgi_application())   # asgi.py

    A coroutine application (Django's ``ASGIHandler``, or any ``async (scope, receive,
    send)`` callable) gets :class:`uploadmeter.asgi.UploadMeterMiddleware`, anything else
    :class:`uploadmeter.UploadMeterMiddleware`; both with the options of
    ``settings.UPLOADMETER``.  Returns the middleware (``.mount(path, app)`` adds an
    endpoint under the prefix).
    """
    try:
        app_key = django_settings.SECRET_KEY
    except ImproperlyConfigured:  # Django refuses to hand out an empty SECRET_KEY
        app_key = None
    options = middleware_options(
        _configured(),
        # Old keys first: itsdangerous signs with the last key and accepts them all.
        secret_keys=[*getattr(django_settings, "SECRET_KEY_FALLBACKS", []), app_key]
        if app_key
        else None,
        missing_secret="uploadmeter signs its session cookie: set SECRET_KEY "
        "(or UPLOADMETER['SECRET_KEY']) in the Django settings.",
    )
    wrapped: HasContext
    if _is_asgi(application):
        from uploadmeter import asgi  # only ASGI sites load the ASGI shell

        wrapped = asgi.UploadMeterMiddleware(application, **options)
    else:
        wrapped = UploadMeterMiddleware(application, **options)
    _wrapped[:] = [wrapped]
    return wrapped


def meter() -> HasContext:
    """The middleware :func:`wrap` made in this process (for ``ChunkUploads(meter(),
    ...)``, :func:`uploadmeter.processing.task`, downloads)."""
    if not _wrapped:
        raise ConfigurationError(
            "uploadmeter is not around this Django application: in wsgi.py (or asgi.py) write "
            "application = uploadmeter.django.wrap(get_wsgi_application())."
        )
    return _wrapped[0]


def current_upload(request: Any) -> UploadHandle | None:
    """The tracked upload of this ``HttpRequest``, or ``None`` (untracked, or no
    JavaScript): the same handle as :func:`uploadmeter.current_upload` (``set_result``,
    ``fail``, ``start_processing``)."""
    scope = getattr(request, "scope", None)
    if isinstance(scope, dict):  # an ASGIRequest: the ASGI shell keeps the handle in the scope
        from uploadmeter import asgi

        return cast("UploadHandle | None", asgi.current_upload(scope))
    # A WSGIRequest's META is the WSGI environ itself.
    return _current_upload(request.META)


def task(request: Any, upload_id: str, phase: str, *, total: int | None = None) -> ProcessingTask:
    """A processing task for ``upload_id`` of the session making ``request`` (see
    :mod:`uploadmeter.processing`); it carries the session, so a thread or a pool may run
    it.  Raises ``LookupError`` when the request has no uploadmeter session."""
    # META carries the request's Cookie header under WSGI and ASGI alike.
    return request_task(meter(), request.META, upload_id, phase, total=total)


def django_session_id(environ: Mapping[str, Any]) -> str | None:
    """A ``SESSION_ID`` hook: the key of the request's Django session, when it exists.

    ``UPLOADMETER = {"SESSION_ID": "uploadmeter.django.django_session_id"}``.  The key is
    checked with the session engine (one session read per upload and poll: a cache-backed
    engine keeps that cheap); a request without a valid Django session gets uploadmeter's
    own cookie.  Django changes the key at login (``cycle_key``), so an upload started
    before a login is not visible after it.  The hook runs synchronously: under ASGI use
    an engine that does not need the database (cache, signed cookies), or no hook.
    """
    if "HTTP_COOKIE" in environ:
        header = str(environ["HTTP_COOKIE"])
    else:  # an ASGI scope
        header = "; ".join(
            value.decode("latin-1")
            for name, value in environ.get("headers", ())
            if name == b"cookie"
        )
    key = parse_cookie(header).get(django_settings.SESSION_COOKIE_NAME)
    if not key:
        return None
    session = importlib.import_module(django_settings.SESSION_ENGINE).SessionStore(key)
    session.load()  # an unknown or expired key is dropped; a bad signed cookie marks modified
    if session.session_key != key or session.modified:
        return None
    return str(key)


def _component_arguments(script_prefix: str) -> dict[str, Any]:
    """The settings :func:`uploadmeter.ui.render_file_upload` takes, from the Django settings
    (``script_prefix``: where Django is mounted, ``get_script_prefix()``)."""
    config = _configured()
    return {
        "prefix": config["PREFIX"],
        "script_name": script_prefix,
        "poll_interval": float(config["POLL_INTERVAL"]),
        "first_poll": float(config["FIRST_POLL"]),
        "max_content_length": config["MAX_CONTENT_LENGTH"],
    }


def _is_asgi(application: Any) -> bool:
    """Whether ``application`` is an ASGI app: a coroutine function, or an object whose
    ``__call__`` is one (Django's ``ASGIHandler``)."""
    if iscoroutinefunction(application):
        return True
    call = getattr(type(application), "__call__", None)  # noqa: B004 -- the class's method
    return call is not None and inspect.iscoroutinefunction(call)
