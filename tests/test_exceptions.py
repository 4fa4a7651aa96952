"""Every exception class lives in ``uploadmeter.exceptions``, carries its HTTP status one way
(``status``), and a missing optional dependency raises ``MissingDependency`` naming its extra."""

from __future__ import annotations

import ast
import importlib
import inspect
import json
import os
import pkgutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

import uploadmeter
from uploadmeter import exceptions

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = Path(uploadmeter.__file__).resolve().parent


def _all_modules() -> list[Any]:
    modules = [uploadmeter]
    for info in pkgutil.walk_packages(uploadmeter.__path__, "uploadmeter."):
        modules.append(importlib.import_module(info.name))
    return modules


def _library_exceptions() -> set[type[BaseException]]:
    found: set[type[BaseException]] = set()
    for module in _all_modules():
        # type(obj), not isinstance/getmembers: a lazy proxy (django.conf.settings) would
        # otherwise be evaluated, and needs a configured Django.
        for obj in vars(module).values():
            if not issubclass(type(obj), type):
                continue
            if issubclass(obj, BaseException) and obj.__module__.startswith("uploadmeter"):
                found.add(obj)
    return found


def test_every_exception_class_is_defined_in_the_exceptions_module() -> None:
    classes = _library_exceptions()
    assert exceptions.MissingDependency in classes  # the walk does see the module
    elsewhere = sorted(
        f"{c.__module__}.{c.__qualname__}" for c in classes if c.__module__ != exceptions.__name__
    )
    assert elsewhere == []


def test_no_exception_class_statement_outside_the_exceptions_module() -> None:
    # Also classes a module defines inside functions or does not expose: by the source.
    names = {name for name, obj in vars(exceptions).items() if inspect.isclass(obj)}
    names |= {"Exception", "BaseException", "ValueError", "RuntimeError", "OSError"}
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "exceptions.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef):
                bases = {ast.unparse(base).rsplit(".", 1)[-1] for base in node.bases}
                if bases & names or any(b.endswith(("Error", "Exception")) for b in bases):
                    offenders.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name}")
    assert offenders == []


def _subclasses(cls: type) -> set[type]:
    found = set()
    for sub in cls.__subclasses__():
        found |= {sub} | _subclasses(sub)
    return found


def test_every_error_has_an_int_status() -> None:
    errors = _subclasses(exceptions.UploadMeterError) | {exceptions.UploadMeterError}
    errors = {e for e in errors if e.__module__.startswith("uploadmeter")}
    assert len(errors) >= 30
    bad = sorted(e.__name__ for e in errors if not isinstance(getattr(e, "status", None), int))
    assert bad == []
    assert all(isinstance(e, type) and 400 <= e.status <= 599 for e in errors)


def test_hierarchy_is_drawn_in_the_module_docstring() -> None:
    doc = exceptions.__doc__ or ""
    missing = [name for name in exceptions.__all__ if name not in doc]
    assert missing == []
    public = {name for name, obj in vars(exceptions).items() if inspect.isclass(obj)}
    public = {n for n in public if not n.startswith("_")}
    public -= {"ClientDisconnected", "HTTPException", "RequestEntityTooLarge", "Mapping", "Any"}
    assert public == set(exceptions.__all__)


def test_status_is_a_class_attribute_overridden_per_instance() -> None:
    assert exceptions.LinkError("gone").status == 410
    assert exceptions.LinkInvalid("bad").status == 403
    share = exceptions.ShareError("slow down", status=429, retry_after=7)
    assert (share.status, share.message, share.retry_after) == (429, "slow down", 7)
    assert exceptions.ShareError("gone").status == 410
    refused = exceptions.ChunkRefused("busy", "try again", status=503, headers={"Retry-After": "2"})
    assert (refused.status, refused.reason, refused.headers) == (503, "busy", {"Retry-After": "2"})
    assert exceptions.ChunkRefused("bad_parameter", "no").status == 415
    tus = exceptions.TusError("Upload not found.", status=404)
    assert (tus.status, tus.message, tus.headers) == (404, "Upload not found.", {})
    assert exceptions.UploadRejected("no").status == 415
    assert exceptions.UploadRejected("no", status=422).status == 422
    assert exceptions.ProcessingFailed("no").status == 422


@pytest.mark.parametrize(
    ("cls", "status", "description"),
    [
        (exceptions.UploadCancelled, 400, "The upload was cancelled."),
        (exceptions.UploadTooLarge, 413, "The upload is larger than this server accepts."),
    ],
)
def test_werkzeug_errors_keep_code_and_status_together(
    cls: Any, status: int, description: str
) -> None:
    exc = cls()
    assert exc.status == exc.code == status
    assert exc.description == exc.message == description
    assert exc.get_response().status_code == status
    other = cls(status=499)
    assert other.status == other.code == 499
    assert cls.status == cls.code == status  # the instance did not change the class


def test_names_users_catch_are_still_exported_where_they_were() -> None:
    expected = {
        "uploadmeter": [
            "InvalidUploadId",
            "StoreError",
            "UnsafeStorePath",
            "UploadCancelled",
            "UploadMeterError",
            "UploadRejected",
            "UploadTooLarge",
        ],
        "uploadmeter.links": [
            "LinkError",
            "LinkExpired",
            "LinkInvalid",
            "LinkRevoked",
            "LinkUsed",
            "ShareError",
        ],
        "uploadmeter.downloads": [
            "AddressNotAllowed",
            "DownloadCancelled",
            "HostNotAllowed",
            "ObjectStoreError",
            "RemoteError",
            "RemoteTooLarge",
            "SourceError",
            "SourceNotFound",
        ],
        "uploadmeter.resumable": ["UploadRejected"],
        "uploadmeter.processing": ["ProcessingCancelled", "ProcessingFailed"],
        "uploadmeter.core": ["LockLost", "LockTimeout"],
        "uploadmeter.flask": ["ConfigurationError"],
    }
    for module_name, names in expected.items():
        module = importlib.import_module(module_name)
        for name in names:
            assert name in module.__all__, (module_name, name)
            assert getattr(module, name) is getattr(exceptions, name), (module_name, name)


# -- optional dependencies ------------------------------------------------------------------

_PROBE = """
import json, sys
for name in {missing!r}:
    sys.modules[name] = None  # what Python does for a module that is not installed
try:
{body}
except Exception as exc:
    names = [c.__name__ for c in type(exc).__mro__]
    print(json.dumps({{"raised": names, "message": str(exc)}}))
else:
    print(json.dumps({{"raised": None}}))
"""


def _without(missing: list[str], body: str) -> dict[str, Any]:
    """Run ``body`` in a fresh interpreter where the modules ``missing`` cannot be imported."""
    code = _PROBE.format(missing=missing, body=textwrap.indent(textwrap.dedent(body), "    "))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.parametrize(
    ("missing", "body", "package", "extra"),
    [
        (
            "redis",
            "from uploadmeter import RedisStore\nRedisStore('redis://127.0.0.1:1/0')",
            "redis",
            "redis",
        ),
        (
            "redis",
            "from uploadmeter import open_store\nopen_store('redis://127.0.0.1:1/0')",
            "redis",
            "redis",
        ),
        ("zipstream", "from uploadmeter.downloads import download", "zipstream-ng", "downloads"),
        ("urllib3", "from uploadmeter.downloads import RemoteFetcher", "urllib3", "downloads"),
        ("flask", "from uploadmeter.flask import UploadMeter", "Flask", "flask"),
    ],
    ids=["RedisStore", "open_store-redis", "zipstream", "urllib3", "flask"],
)
def test_missing_optional_dependency_names_the_extra(
    missing: str, body: str, package: str, extra: str
) -> None:
    result = _without([missing], body)
    assert result["raised"] is not None, f"nothing raised without {missing}"
    assert result["raised"][0] == "MissingDependency"
    assert {"UploadMeterError", "ImportError"} <= set(result["raised"])
    assert package in result["message"]
    assert f"pip install 'uploadmeter[{extra}]'" in result["message"]


def test_the_core_imports_without_any_optional_dependency() -> None:
    body = """
    import uploadmeter
    from uploadmeter import MemoryStore, UploadMeterMiddleware
    UploadMeterMiddleware(lambda e, s: [], store=MemoryStore(), secret_key="k")
    """
    assert _without(["redis", "zipstream", "urllib3", "flask"], body) == {"raised": None}


def test_the_object_store_has_one_error_that_both_sides_catch() -> None:
    # Resumable uploads handle StoreError, downloads SourceError: one class is both.
    assert exceptions.ObjectStoreUnavailable is exceptions.ObjectStoreError
    exc = exceptions.ObjectStoreError("down")
    assert isinstance(exc, exceptions.StoreError) and isinstance(exc, exceptions.SourceError)
    assert exc.status == 503 and exc.retry_after > 0
    store_errors = _subclasses(exceptions.StoreError)
    source_errors = _subclasses(exceptions.SourceError)
    assert {c for c in store_errors if "ObjectStore" in c.__name__} == {exceptions.ObjectStoreError}
    assert {c for c in source_errors if "ObjectStore" in c.__name__} == {
        exceptions.ObjectStoreError
    }
