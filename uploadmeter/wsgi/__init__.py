"""The WSGI shell: the middleware that meters uploads for any WSGI app.

::

    from uploadmeter.wsgi import UploadMeterMiddleware
    app = UploadMeterMiddleware(app, secret_key="change me")

Requests that are not ``multipart/form-data`` pass straight through; multipart requests
that carry a tracking id get a counting stream around ``wsgi.input``
(:class:`MeteredInput`), and their progress goes to a store every worker shares.  The
middleware answers its own endpoints under its prefix (progress, cancel, static assets,
and what is mounted there) without reaching the app.
"""

from uploadmeter.wsgi._middleware import UploadHandle, UploadMeterMiddleware, current_upload
from uploadmeter.wsgi._stream import MeteredInput

__all__ = ["MeteredInput", "UploadHandle", "UploadMeterMiddleware", "current_upload"]
