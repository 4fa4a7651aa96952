"""The progress component: Jinja macros, their script and stylesheet, and a renderer.

Flask apps get the macros through :class:`uploadmeter.flask.UploadMeter`; other apps call
:func:`render_file_upload` and :func:`render_assets`.
"""

from uploadmeter.ui._render import (
    component_settings,
    render_assets,
    render_chunked_assets,
    render_chunked_upload,
    render_file_upload,
    template_environment,
)

__all__ = [
    "component_settings",
    "render_assets",
    "render_chunked_assets",
    "render_chunked_upload",
    "render_file_upload",
    "template_environment",
]
