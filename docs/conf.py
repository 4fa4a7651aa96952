"""Sphinx configuration of uploadmeter's documentation.

Built by the test suite (tests/test_docs.py) with ``-W --keep-going -n``: a warning, a
broken reference or a failing doctest fails the build.  Locally::

    python -m sphinx -W --keep-going -n -b html docs docs/_build/html
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from typing import Any

from sphinx.util.logging import WarningStreamHandler
from sphinx.util.nodes import make_refnode

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, ROOT)  # document (and doctest) this checkout, not an installed copy

import uploadmeter  # noqa: E402

project = "uploadmeter"
author = "the uploadmeter authors"
copyright = "the uploadmeter authors"
release = uploadmeter.__version__
version = release

# No viewcode: it would double the build time (the suite builds the docs on every run).
extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.doctest",
]

# The doctest builder (``-b doctest``, run by tests/test_docs.py) runs the ``.. doctest::``
# blocks of the pages and the ``>>>`` examples of the docstrings, with the public names
# imported as a reader of the API page has them.
doctest_global_setup = """
from uploadmeter import *
from uploadmeter.core import *
from uploadmeter.downloads import *
from uploadmeter.stores import *
"""

html_theme = "furo"
html_title = f"uploadmeter {release}"
html_static_path = ["_static"]
exclude_patterns = ["_build"]

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_format = "short"
autodoc_default_options = {"members": True, "show-inheritance": True}

nitpicky = True
# Without intersphinx inventories (no network while building), names from outside the
# package cannot resolve: typeshed's WSGI aliases, the standard library, werkzeug, Flask,
# jinja2, redis, urllib3, zipstream.
# And the type aliases and helper classes of private modules that appear in signatures
# (``OnComplete``, ``HasContext``, ...) are described where they are used, not as pages.
_OUTSIDE_MODULES = (
    "_typeshed|typing|collections|werkzeug|flask|jinja2|markupsafe|redis|urllib3|zipstream|"
    "datetime|pathlib|os|io|enum|concurrent|threading|logging|sqlite3|ipaddress|types|re|json|"
    "hashlib|email|http|socket|tempfile|dataclasses|contextlib|builtins|abc|starlette|django|"
    "asyncio|boto3|botocore"
)
_OUTSIDE_NAMES = (
    "WSGIApplication|WSGIEnvironment|StartResponse|StrPath|Markup|Response|Request|Path|"
    "PathLike|Flask|Iterable|Iterator|Mapping|Callable|Sequence|Any|Self|IO|BinaryIO|"
    "ReadableBuffer|TracebackType|StrEnum|Executor|Future|Lock|Event|Thread|Enum|Pattern|"
    "Literal|ClassVar|NoReturn|TypeAlias|TypeVar|Protocol|ConnectionPool|HTTPResponse|"
    "datetime|timedelta|IPv4Network|IPv6Network|int|str|bytes|float|bool|None|object|list|"
    "dict|tuple|set|frozenset|type|Exception|BaseException|ValueError|LookupError|KeyError|"
    "PermissionError|ImportError|ConnectionResetError|OSError|RuntimeError|TimeoutError|"
    "ClientDisconnected|RequestEntityTooLarge|HTTPException|SessionHook|T|_T|P"
)
_PRIVATE_HELPERS = (
    "HasContext|Fetched|SecretKey|CleanupStats|ResumableEndpoint|_WerkzeugError|OnComplete|"
    "InstantUpload|Resolver|UploadMeterState|Exchange|ExchangeFeature|HandleBase|MeterBase|"
    "MeterOptions|BodyMeter|OffLoop|UploadStart|WerkzeugApp|Digests|DataWriter|Receive|Send|"
    "Scope|Message|ASGIApp|_T"
)
nitpick_ignore_regex = [
    (r"py:.*", rf"({_OUTSIDE_MODULES})(\..*)?"),
    (r"py:.*", rf"({_OUTSIDE_NAMES})"),
    (r"py:.*", rf"(uploadmeter\.[\w.]*\.)?({_PRIVATE_HELPERS})"),
]

# -- API pages: each object documented once ------------------------------------------------
# The public modules re-export names (``uploadmeter.SQLiteStore`` is
# ``uploadmeter.stores.SQLiteStore``, defined in ``uploadmeter.stores._sqlite``).  Each
# object is documented once, on the page of the public module nearest to where it is
# defined; the other pages skip it, and a reference to any of its other names
# (``uploadmeter.SQLiteStore``, ``uploadmeter.stores._sqlite.SQLiteStore``) is resolved to
# that one description.

API_MODULES = sorted(
    os.path.splitext(name)[0] for name in os.listdir(os.path.join(ROOT, "docs", "api"))
)


def _home(obj: object) -> str | None:
    """The API page's module that documents ``obj``."""
    parts = (getattr(obj, "__module__", None) or "").split(".")
    for end in range(len(parts), 0, -1):
        if ".".join(parts[:end]) in API_MODULES:
            return ".".join(parts[:end])
    return None


def _skip_elsewhere(app: Any, what: str, name: str, obj: Any, skip: bool, options: Any) -> Any:
    page = app.env.docname.removeprefix("api/")  # api/<module>.rst documents <module>
    if what == "module" and page in API_MODULES and _home(obj) not in (None, page):
        return True
    return None


def _lookup(dotted: str) -> Any:
    """The object a dotted name stands for, or None."""
    parts = dotted.split(".")
    for end in range(len(parts), 0, -1):
        try:
            obj: Any = importlib.import_module(".".join(parts[:end]))
        except ImportError:
            continue
        for attr in parts[end:]:
            obj = getattr(obj, attr, None)
        return obj
    return None


def _resolve_other_names(app: Any, env: Any, node: Any, contnode: Any) -> Any:
    if node.get("refdomain") != "py":
        return None
    target = node["reftarget"]
    module, cls = node.get("py:module"), node.get("py:class")
    candidates = [target]
    if module:
        candidates += [f"{module}.{target}"] + ([f"{module}.{cls}.{target}"] if cls else [])
    objects = env.get_domain("py").objects
    for candidate in candidates:
        if not candidate.startswith("uploadmeter"):
            continue
        obj = _lookup(candidate)
        home = _home(obj) if obj is not None else None
        qualname = getattr(obj, "__qualname__", None)
        if home and qualname and f"{home}.{qualname}" in objects:
            entry = objects[f"{home}.{qualname}"]
            return make_refnode(app.builder, node["refdoc"], entry.docname, entry.node_id, contnode)
    # A short name in a docstring (``StoreError``): the one object of that name, if unique.
    found = [n for n, e in objects.items() if n.endswith("." + target) and not e.aliased]
    if len(found) == 1:
        entry = objects[found[0]]
        return make_refnode(app.builder, node["refdoc"], entry.docname, entry.node_id, contnode)
    return None


class _NoEmptyGlobWarning(logging.Filter):
    """Sphinx 9 warns about a toctree glob that matches nothing, without a warning type
    ``suppress_warnings`` could name; the index's globs for pages still to come may."""

    def filter(self, record: logging.LogRecord) -> bool:
        return getattr(record, "subtype", None) != "empty_glob"


def setup(app: Any) -> None:
    app.connect("autodoc-skip-member", _skip_elsewhere)
    app.connect("missing-reference", _resolve_other_names)
    for handler in logging.getLogger("sphinx").handlers:
        if isinstance(handler, WarningStreamHandler):
            handler.filters.insert(0, _NoEmptyGlobWarning())  # before the warning count
