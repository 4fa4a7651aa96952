"""The public API is what ``__all__`` says, on purpose (as httpx's tests/test_exported_members.py).

Adding, removing or renaming a public name means editing the list here too: the diff shows
the API change. Every name is importable, and modules inside a subpackage are private
(``_name.py``): users import from the package, whose ``__init__`` re-exports.
"""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import uploadmeter

PUBLIC_API: dict[str, list[str]] = {
    "uploadmeter": [
        "ChunkUploads",
        "FieldProgress",
        "FileInfo",
        "InvalidUploadId",
        "MemoryStore",
        "ProcessingTask",
        "ProgressStore",
        "RedisStore",
        "S3Storage",
        "SQLiteStore",
        "State",
        "StoreError",
        "TusUploads",
        "UnsafeStorePath",
        "UploadCancelled",
        "UploadHandle",
        "UploadMeterError",
        "UploadMeterMiddleware",
        "UploadRecord",
        "UploadRejected",
        "UploadTooLarge",
        "current_upload",
        "open_store",
        "render_file_upload",
    ],
    "uploadmeter.asgi": [
        "DownloadResponse",
        "MeteredReceive",
        "UploadHandle",
        "UploadMeterMiddleware",
        "current_upload",
        "download",
        "route_path",
    ],
    "uploadmeter.core": [
        "CANCELLED",
        "CookieSettings",
        "DONE",
        "ERROR",
        "FINISHED",
        "FieldProgress",
        "Framing",
        "INVALID_ID_MESSAGE",
        "IN_FLIGHT",
        "LockLost",
        "LockTimeout",
        "MeterContext",
        "MultipartObserver",
        "PROCESSING",
        "Records",
        "STARTING",
        "Sessions",
        "State",
        "StoreLock",
        "TrackerSettings",
        "UNKNOWN",
        "UPLOADING",
        "UploadRecord",
        "UploadTracker",
        "check_framing",
        "context_of",
        "valid_upload_id",
    ],
    "uploadmeter.downloads": [
        "AddressNotAllowed",
        "DownloadCancelled",
        "Downloader",
        "HostNotAllowed",
        "Item",
        "ObjectStoreError",
        "RemoteCache",
        "RemoteError",
        "RemoteFetcher",
        "RemoteTooLarge",
        "S3Object",
        "SourceError",
        "SourceNotFound",
        "UniqueNames",
        "Url",
        "ascii_fallback",
        "content_disposition",
        "download",
        "name_field",
        "safe_arcname",
        "safe_filename",
        "source_field",
    ],
    "uploadmeter.django": [
        "SETTINGS_DEFAULTS",
        "current_upload",
        "django_session_id",
        "meter",
        "task",
        "wrap",
    ],
    # Django finds an app's AppConfig and its template tag libraries by these module names.
    "uploadmeter.django.apps": ["UploadMeterConfig"],
    "uploadmeter.django.templatetags": [],
    "uploadmeter.django.templatetags.uploadmeter": ["register"],
    "uploadmeter.flask": [
        "CONFIG_DEFAULTS",
        "ConfigurationError",
        "UploadMeter",
        "current_upload",
    ],
    "uploadmeter.links": [
        "DownloadLinks",
        "Link",
        "LinkError",
        "LinkExpired",
        "LinkInvalid",
        "LinkRevoked",
        "LinkSigner",
        "LinkUsed",
        "Share",
        "ShareError",
        "ShareManager",
    ],
    "uploadmeter.processing": [
        "ProcessingCancelled",
        "ProcessingFailed",
        "ProcessingTask",
        "request_task",
        "task",
    ],
    "uploadmeter.resumable": [
        "ChunkUploads",
        "FileInfo",
        "FileStore",
        "S3Storage",
        "Storage",
        "TusUploads",
        "UploadRejected",
    ],
    "uploadmeter.resumable.chunked": [
        "ChunkUploads",
    ],
    "uploadmeter.resumable.tus": [
        "TusUploads",
    ],
    "uploadmeter.stores": [
        "MemoryStore",
        "ProgressStore",
        "RedisStore",
        "SQLiteStore",
        "default_sqlite_path",
        "open_store",
    ],
    "uploadmeter.ui": [
        "component_settings",
        "render_assets",
        "render_chunked_assets",
        "render_chunked_upload",
        "render_file_upload",
        "template_environment",
    ],
    "uploadmeter.wsgi": [
        "MeteredInput",
        "UploadHandle",
        "UploadMeterMiddleware",
        "current_upload",
    ],
}


@pytest.mark.parametrize("module_name", sorted(PUBLIC_API))
def test_all_is_the_stated_api(module_name: str) -> None:
    module = importlib.import_module(module_name)
    exported = list(module.__all__)
    assert len(exported) == len(set(exported)), "a name is listed twice in __all__"
    assert sorted(exported) == PUBLIC_API[module_name]


@pytest.mark.parametrize("module_name", sorted(PUBLIC_API))
def test_every_exported_name_is_importable(module_name: str) -> None:
    module = importlib.import_module(module_name)
    missing = [name for name in module.__all__ if not hasattr(module, name)]
    assert missing == []
    for name in module.__all__:
        assert not name.startswith("_"), name
        namespace: dict[str, object] = {}
        exec(f"from {module_name} import {name}", namespace)  # the way a user imports it
        assert namespace[name] is getattr(module, name)


def test_every_package_states_its_api() -> None:
    """A new subpackage gets a curated ``__all__`` and a line here."""
    packages = {uploadmeter.__name__} | {
        info.name
        for info in pkgutil.walk_packages(uploadmeter.__path__, uploadmeter.__name__ + ".")
        if info.ispkg
    }
    assert packages <= set(PUBLIC_API)


# Modules Django imports by name: an app's ``apps`` and its ``templatetags.<library>``.
DJANGO_NAMED = {"uploadmeter.django.apps", "uploadmeter.django.templatetags.uploadmeter"}


def test_modules_inside_subpackages_are_private() -> None:
    """``uploadmeter.<package>.<module>`` is ``_module``: only the package is public."""
    public = []
    for info in pkgutil.walk_packages(uploadmeter.__path__, uploadmeter.__name__ + "."):
        parent, _, leaf = info.name.rpartition(".")
        if parent != uploadmeter.__name__ and not info.ispkg and not leaf.startswith("_"):
            public.append(info.name)
    assert sorted(public) == sorted(DJANGO_NAMED)


def test_importing_uploadmeter_does_not_import_boto3() -> None:
    """``S3Storage`` is exported, boto3 stays an extra (``uploadmeter[s3]``)."""
    import subprocess
    import sys

    code = "import sys, uploadmeter; print(sorted(m for m in sys.modules if 'boto' in m))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
