"""The Flask extension: the middleware, the component's templates and a view helper.

::

    from uploadmeter.flask import UploadMeter, current_upload

    meter = UploadMeter(app)            # or: meter = UploadMeter(); meter.init_app(app)

    @app.post("/upload")
    def upload():
        saved = save(request.files["document"])
        if (handle := current_upload()) is not None:
            handle.set_result(filename=saved)   # shown by the widget's stage 3
        ...

Templates import the component with
``{% import "uploadmeter/macros.html" as uploadmeter %}``; its script and stylesheet are
served by the middleware under ``{UPLOADMETER_PREFIX}/static/``.  Settings come from
``app.config["UPLOADMETER_*"]`` (see :data:`CONFIG_DEFAULTS`).

This is the only module of uploadmeter that imports Flask.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from uploadmeter.core._config import MIDDLEWARE_SETTINGS, middleware_options
from uploadmeter.core._context import MeterContext
from uploadmeter.exceptions import ConfigurationError, MissingDependency

try:
    from flask import (
        Blueprint,
        Flask,
        current_app,
        has_app_context,
        has_request_context,
        request,
    )
except ImportError as exc:
    raise MissingDependency("uploadmeter.flask", "Flask", "flask") from exc

from uploadmeter.stores._base import ProgressStore
from uploadmeter.ui._render import DEFAULT_FIRST_POLL, DEFAULT_POLL_INTERVAL, component_settings
from uploadmeter.wsgi._middleware import UploadHandle, UploadMeterMiddleware
from uploadmeter.wsgi._middleware import current_upload as _current_upload

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication
    from werkzeug.wrappers import Response

    from uploadmeter.links._endpoint import DownloadLinks
    from uploadmeter.processing import ProcessingTask

__all__ = ["CONFIG_DEFAULTS", "ConfigurationError", "UploadMeter", "current_upload"]

EXTENSION_KEY = "uploadmeter"

#: ``UPLOADMETER_*`` keys and their defaults.  ``SECRET_KEY`` falls back to the app's
#: ``SECRET_KEY`` (with ``SECRET_KEY_FALLBACKS`` accepted for rotation);
#: ``MAX_CONTENT_LENGTH`` to the app's ``MAX_CONTENT_LENGTH``.
CONFIG_DEFAULTS: dict[str, Any] = {
    **{f"UPLOADMETER_{name}": value for name, value in MIDDLEWARE_SETTINGS.items()},
    "UPLOADMETER_POLL_INTERVAL": DEFAULT_POLL_INTERVAL,
    "UPLOADMETER_FIRST_POLL": DEFAULT_FIRST_POLL,
    # resolver(target) -> what to download, for signed links (uploadmeter.links); None: off
    "UPLOADMETER_DOWNLOAD_RESOLVER": None,
}


@dataclass
class UploadMeterState:
    """What one app's :class:`UploadMeter` keeps, in ``app.extensions["uploadmeter"]``."""

    meter: UploadMeter
    middleware: UploadMeterMiddleware
    poll_interval: float
    first_poll: float
    links: DownloadLinks | None = None  # with UPLOADMETER_DOWNLOAD_RESOLVER


class UploadMeter:
    """Upload progress for a Flask app.

    Wraps ``app.wsgi_app`` in :class:`~uploadmeter.UploadMeterMiddleware`.  Middleware
    installed on ``app.wsgi_app`` *after* ``init_app`` sees requests before the meter (put
    ``ProxyFix`` there); middleware installed *before* runs inside it, and its reads of the
    body are the ones measured.

    Per-app state lives in ``app.extensions["uploadmeter"]`` (:class:`UploadMeterState`),
    so one instance can serve several apps (``init_app`` with each).
    """

    def __init__(self, app: Flask | None = None) -> None:
        self.app = app
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Set up ``app``: read ``UPLOADMETER_*``, wrap ``app.wsgi_app``, add the templates."""
        if EXTENSION_KEY in app.extensions:
            raise ConfigurationError("UploadMeter is already initialised on this app.")
        for key, value in CONFIG_DEFAULTS.items():
            app.config.setdefault(key, value)
        config = app.config

        app_key = config.get("SECRET_KEY")
        options = middleware_options(
            {
                key[len("UPLOADMETER_") :]: value
                for key, value in config.items()
                if key.startswith("UPLOADMETER_")
            },
            # Old keys first: itsdangerous signs with the last key and accepts them all.
            secret_keys=[*(config.get("SECRET_KEY_FALLBACKS") or []), app_key] if app_key else None,
            max_content_length=config.get("MAX_CONTENT_LENGTH"),
            missing_secret="uploadmeter signs its session cookie: set app.config['SECRET_KEY'] "
            "(or UPLOADMETER_SECRET_KEY) before UploadMeter.init_app(app).",
        )
        middleware = UploadMeterMiddleware(app.wsgi_app, **options)
        secret_key = options["secret_key"]
        app.wsgi_app = middleware  # type: ignore[method-assign]
        state = UploadMeterState(
            meter=self,
            middleware=middleware,
            poll_interval=float(config["UPLOADMETER_POLL_INTERVAL"]),
            first_poll=float(config["UPLOADMETER_FIRST_POLL"]),
        )
        resolver = config["UPLOADMETER_DOWNLOAD_RESOLVER"]
        if resolver is not None:
            from uploadmeter.links._endpoint import DownloadLinks  # needs the downloads extra

            state.links = DownloadLinks(resolver, secret_key, middleware.store)
            middleware.mount("/d", state.links)
        app.extensions[EXTENSION_KEY] = state

        # Templates ship in the package; a blueprint with a template folder puts them on
        # the app's loader (after the app's own templates, which may override them).
        app.register_blueprint(
            Blueprint("uploadmeter", "uploadmeter.ui", template_folder="templates")
        )
        app.jinja_env.globals["uploadmeter_settings"] = _template_settings(state)

    # -- access --------------------------------------------------------------------------

    def state(self, app: Flask | None = None) -> UploadMeterState:
        """This extension's state for ``app`` (default: the current app, else the one given
        to the constructor)."""
        if app is None and has_app_context():
            app = current_app._get_current_object()  # type: ignore[attr-defined]
        if app is None:
            app = self.app
        if app is None:
            raise RuntimeError("No Flask app: pass one, or work inside an app context.")
        state = app.extensions.get(EXTENSION_KEY)
        if not isinstance(state, UploadMeterState):
            raise RuntimeError("UploadMeter.init_app(app) was not called for this app.")
        return state

    @property
    def middleware(self) -> UploadMeterMiddleware:
        """The app's :class:`~uploadmeter.UploadMeterMiddleware`."""
        return self.state().middleware

    @property
    def context(self) -> MeterContext:
        """The app's :class:`~uploadmeter.core.MeterContext`: what features are given, so
        ``ChunkUploads(meter, files)`` takes this extension as it takes the middleware."""
        return self.middleware.context

    @property
    def store(self) -> ProgressStore:
        """The middleware's store (``UploadMeterMiddleware.store``)."""
        return self.middleware.store

    def mount(self, path: str, wsgi_app: WSGIApplication, app: Flask | None = None) -> None:
        """Serve ``wsgi_app`` under ``{UPLOADMETER_PREFIX}{path}``, as
        ``UploadMeterMiddleware.mount()`` does (``app``: as for :meth:`state`)::

            with app.app_context():
                meter.mount("/chunks", ChunkUploads(meter.middleware, FileStore(folder)))
        """
        self.state(app).middleware.mount(path, wsgi_app)

    # -- processing ----------------------------------------------------------------------

    def task(self, upload_id: str, phase: str, total: int | None = None) -> ProcessingTask:
        """Report work done on an upload of this request's session, after the upload::

            current_upload().start_processing("compressing", total=size)
            job = meter.task(upload_id, "compressing", total=size)
            pool.submit(compress, path, job)   # job.advance(n) as bytes are done

        The task carries the session, so it may be handed to a thread or another process.
        """
        from uploadmeter.processing import request_task

        return request_task(self.middleware, request.environ, upload_id, phase, total=total)

    # -- downloads -----------------------------------------------------------------------

    def download(self, source: Any, filename: str | None = None, **options: Any) -> Response:
        """Send ``source`` from a view: a file with Range/ETag support, or several sources
        as one streamed zip, with progress under the request's tracking id.

        See :func:`uploadmeter.downloads.download` for sources and options.
        """
        from uploadmeter.downloads._api import download  # needs the downloads extra

        return download(source, filename, environ=request.environ, meter=self.middleware, **options)

    def signed_url(
        self, target: str, expires_in: float = 300, single_use: bool = False, **options: Any
    ) -> str:
        """A session-less, expiring URL for ``target`` (resolved by
        ``UPLOADMETER_DOWNLOAD_RESOLVER``); the URL never contains the real path."""
        links = self.state().links
        if links is None:
            raise ConfigurationError(
                "Signed links need app.config['UPLOADMETER_DOWNLOAD_RESOLVER']: a function "
                "turning a link's target into what to download."
            )
        return links.signed_url(
            target,
            expires_in=expires_in,
            single_use=single_use,
            environ=request.environ,
            **options,
        )


def current_upload() -> UploadHandle | None:
    """The tracked upload of the current Flask request, or ``None`` (untracked, or no
    JavaScript): :func:`uploadmeter.current_upload` on ``request.environ``.

    Tell the widget the outcome before returning the response::

        handle = current_upload()
        if handle is not None:
            handle.set_result(filename=saved_name)      # stage 3 can show it
            # or: handle.fail("Only PDF files are accepted.", status=415)
    """
    return _current_upload(request.environ)


def _template_settings(state: UploadMeterState) -> Callable[[], dict[str, Any]]:
    def uploadmeter_settings() -> dict[str, Any]:
        return component_settings(
            prefix=state.middleware.prefix,
            script_name=request.script_root if has_request_context() else "",
            poll_interval=state.poll_interval,
            first_poll=state.first_poll,
            max_content_length=state.middleware.max_content_length,
        )

    return uploadmeter_settings
