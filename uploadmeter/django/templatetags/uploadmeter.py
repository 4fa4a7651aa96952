"""``{% load uploadmeter %}``: the progress component and the resumable uploader as Django
template tags (see :mod:`uploadmeter.django`).

Each tag renders the package's Jinja macro through :mod:`uploadmeter.ui` (one Jinja
environment), so its markup is the Flask macro's, byte for byte; a block tag's body is
rendered by Django and becomes stage 3.
"""

from __future__ import annotations

from typing import Any

from django import template
from django.urls import get_script_prefix
from markupsafe import Markup

from uploadmeter.django import _component_arguments
from uploadmeter.ui._render import (
    render_assets,
    render_chunked_assets,
    render_chunked_upload,
    render_file_upload,
)

__all__ = ["register"]

register = template.Library()


def _plain(value: Any) -> Any:
    """An argument as the macro gets it in Jinja: Django marks a tag's string literals safe
    (``SafeString``), and the macro would then put ``&`` into an attribute unescaped.
    Every argument is an attribute value or a label, never markup: escape each, as Jinja."""
    return str.__str__(value) if isinstance(value, str) else value


def _plain_options(options: dict[str, Any]) -> dict[str, Any]:
    return {key: _plain(value) for key, value in options.items()}


@register.simple_block_tag
def uploadmeter_file_upload(content: str, id: str, **options: Any) -> Markup:
    """``{% uploadmeter_file_upload "document" multiple=True %}`` stage 3
    ``{% enduploadmeter_file_upload %}``: the progress component."""
    # Django escaped what the body printed; the body's own markup is the page's, as
    # a Jinja caller() is.
    return render_file_upload(
        _plain(id), content, **_component_arguments(get_script_prefix()), **_plain_options(options)
    )


@register.simple_tag
def uploadmeter_assets() -> Markup:
    """``{% uploadmeter_assets %}``: the component's stylesheet and scripts."""
    arguments = _component_arguments(get_script_prefix())
    return render_assets(prefix=arguments["prefix"], script_name=arguments["script_name"])


@register.simple_tag
def uploadmeter_chunked_upload(id: str, uploader_js: str, **options: Any) -> Markup:
    """``{% uploadmeter_chunked_upload "videos" uploader_js %}``: the resumable uploader."""
    arguments = _component_arguments(get_script_prefix())
    return render_chunked_upload(
        _plain(id),
        _plain(uploader_js),
        prefix=arguments["prefix"],
        script_name=arguments["script_name"],
        poll_interval=arguments["poll_interval"],
        **_plain_options(options),
    )


@register.simple_tag
def uploadmeter_chunked_assets(uploader_js: str) -> Markup:
    """``{% uploadmeter_chunked_assets uploader_js %}``: the resumable uploader's assets."""
    arguments = _component_arguments(get_script_prefix())
    return render_chunked_assets(
        _plain(uploader_js), prefix=arguments["prefix"], script_name=arguments["script_name"]
    )
