"""The test project's views: an upload page, an upload view answering what Django parsed,
a view that processes its upload in a thread, and a login that starts a Django session."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from typing import Any

from django.conf import settings
from django.core.files.uploadhandler import FileUploadHandler
from django.http import FileResponse, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render

import uploadmeter.django
from uploadmeter.django import current_upload

# simple-uploader.js from npm (tests/js/node_modules), for the resumable uploader's page.
UPLOADER_JS = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
    "js/node_modules/simple-uploader.js/dist/uploader.js",
)

# The processing view's thread advances one block per permit: tests release them.
PROCESSING_STEPS = threading.Semaphore(0)
PROCESSING_BLOCKS = 4


class ThrottleHandler(FileUploadHandler):
    """Slows Django's reads of file parts to ``THROTTLE_KBPS`` (a demo-style throttle, so a
    browser can watch stage 2); passes every chunk on unchanged."""

    def receive_data_chunk(self, raw_data: bytes, start: int) -> bytes:
        if settings.THROTTLE_KBPS:
            time.sleep(len(raw_data) / (settings.THROTTLE_KBPS * 1024))
        return raw_data

    def file_complete(self, file_size: int) -> None:
        return None


def page(request: HttpRequest) -> HttpResponse:
    return render(request, "upload.html", {"note": "Thanks & <welcome>"})


def upload(request: HttpRequest) -> HttpResponse:
    """What Django parsed: the form, and each file's name, SHA-256, size and kind."""
    files = [
        {
            "field": field,
            "filename": f.name,
            "sha256": hashlib.sha256(b"".join(f.chunks())).hexdigest(),
            "size": f.size,
            "kind": type(f).__name__,  # InMemoryUploadedFile / TemporaryUploadedFile
        }
        for field in request.FILES
        for f in request.FILES.getlist(field)
    ]
    form = {key: request.POST[key] for key in request.POST if key != "csrfmiddlewaretoken"}
    handle = current_upload(request)
    if handle is not None and files:
        handle.set_result(sha256=files[0]["sha256"], filename=files[0]["filename"])
    return JsonResponse({"form": form, "files": files, "tracked": handle is not None})


def process(request: HttpRequest) -> HttpResponse:
    """Hashes the upload in a thread, block by block, each block when a step is released."""
    data = request.FILES["document"].read()
    handle = current_upload(request)
    if handle is None:
        return JsonResponse({"sha256": hashlib.sha256(data).hexdigest()})
    handle.start_processing("hashing", total=len(data))
    job = uploadmeter.django.task(request, handle.id, "hashing", total=len(data))
    threading.Thread(target=_hash, args=(data, job), daemon=True).start()
    return JsonResponse({"processing": handle.id})


def _hash(data: bytes, job: Any) -> None:
    digest = hashlib.sha256()
    block = -(-len(data) // PROCESSING_BLOCKS)
    with job:
        for offset in range(0, len(data), block):
            if not PROCESSING_STEPS.acquire(timeout=30):
                raise TimeoutError("the test released no step")
            digest.update(data[offset : offset + block])
            job.advance(len(data[offset : offset + block]))
        job.set_result(sha256=digest.hexdigest())


def login(request: HttpRequest) -> HttpResponse:
    request.session["user"] = "ada"
    request.session.save()
    return JsonResponse({"session": request.session.session_key})


def large(request: HttpRequest) -> HttpResponse:
    return render(request, "large.html")


def uploader_js(request: HttpRequest) -> FileResponse:
    return FileResponse(open(UPLOADER_JS, "rb"), content_type="text/javascript")
