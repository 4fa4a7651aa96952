"""Downloads and links on the ASGI shell under ``uvicorn --workers 3``.

The app (tests/support/asgi_download_apps.py) is the WSGI download app's, in Starlette:
``uploadmeter.asgi.download()`` in views and ``DownloadLinks`` mounted on
``uploadmeter.asgi.UploadMeterMiddleware``; on the default store and on Redis.  The
checks of every source and option run on both shells in tests/downloads and tests/links.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.asgi_servers import run_uvicorn
from tests.support.download_support import StreamingGet, open_zip, post_json, sparse_file, together
from tests.support.servers import Client, new_upload_id, wait_until

pytestmark = pytest.mark.gunicorn  # several server processes

CONTENT = bytes(range(256)) * 400  # 100 KiB
RANDOM = os.urandom(300_000)


@pytest.fixture(scope="module", params=["default", "redis"])
def app(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("asgi-downloads")
    files = tmp / "files"
    (files / "zip").mkdir(parents=True)
    (files / "report.bin").write_bytes(CONTENT)
    sparse_file(files / "huge.bin", 2 << 30)  # for the slow reader
    (files / "zip" / "notes.txt").write_text("notes\n")
    (files / "zip" / "random.bin").write_bytes(RANDOM)
    env = {"TMPDIR": str(tmp), "UM_FILES": str(files), "UM_UPDATE_INTERVAL": "0.02"}
    if request.param == "redis":
        env["UM_STORE"] = request.getfixturevalue("redis_server")[0]
    env["UM_S3_ENDPOINT"] = request.getfixturevalue("swift").endpoint
    with run_uvicorn("tests.support.asgi_download_apps:make_app", workers=3, env=env) as server:
        yield server.url


def get(
    base: str, path: str, method: str = "GET", **headers: str
) -> tuple[int, dict[str, str], bytes]:
    return Client(base).request(method, path, headers=headers)


def test_single_file_range_etag_304_416_head(app: str) -> None:
    status, headers, body = get(app, "/file/report.bin")
    assert (status, body) == (200, CONTENT)
    assert headers["content-length"] == str(len(CONTENT))
    assert headers["accept-ranges"] == "bytes"
    assert headers["content-disposition"] == 'attachment; filename="report.bin"'
    etag, modified = headers["etag"], headers["last-modified"]

    status, headers, body = get(app, "/file/report.bin", Range="bytes=1000-1999")
    assert (status, body) == (206, CONTENT[1000:2000])
    assert headers["content-range"] == f"bytes 1000-1999/{len(CONTENT)}"
    assert get(app, "/file/report.bin", Range="bytes=-7")[2] == CONTENT[-7:]

    status, headers, body = get(
        app, "/file/report.bin", Range=f"bytes={len(CONTENT)}-", Accept="application/json"
    )
    assert status == 416
    assert headers["content-range"] == f"bytes */{len(CONTENT)}"
    assert json.loads(body)["error"]["status"] == 416

    assert get(app, "/file/report.bin", **{"If-None-Match": etag})[:3:2] == (304, b"")
    assert get(app, "/file/report.bin", **{"If-Modified-Since": modified})[0] == 304
    status, _, body = get(app, "/file/report.bin", Range="bytes=0-9", **{"If-Range": '"old"'})
    assert (status, body) == (200, CONTENT)
    status, _, body = get(app, "/file/report.bin", Range="bytes=0-9", **{"If-Range": etag})
    assert (status, body) == (206, CONTENT[:10])

    status, headers, body = get(app, "/file/report.bin", "HEAD")
    assert (status, body) == (200, b"")
    assert headers["content-length"] == str(len(CONTENT))
    assert get(app, "/file/missing.bin")[0] == 404


def test_a_fastapi_view_returns_the_download(app: str) -> None:
    status, headers, body = get(app, "/api/report", Range="bytes=5-9")
    assert (status, body) == (206, CONTENT[5:10])
    assert headers["content-range"] == f"bytes 5-9/{len(CONTENT)}"
    assert get(app, "/api/report")[2] == CONTENT


def test_zip_is_valid_and_its_progress_recorded(app: str) -> None:
    client = Client(app)
    client.progress(new_upload_id())  # the session cookie: polls land on any worker
    uid = new_upload_id()
    status, headers, body = client.request("GET", f"/zip?uploadmeter_id={uid}")
    assert status == 200 and headers["content-length"] == str(len(body))
    archive = open_zip(body)
    assert archive.namelist() == ["notes.txt", "random.bin"]
    assert archive.read("random.bin") == RANDOM
    record = wait_until(lambda: _record(client, uid, lambda r: r["state"] == "done"))
    assert record["bytes_received"] == len(body)
    assert record["processing"] == {"phase": "zipping", "done": 2, "total": 2, "percentage": 100}
    assert record["result"] == {"filename": "all.zip", "bytes": len(body)}


def test_signed_single_use_links_and_shares(app: str) -> None:
    url = post_json(app, "/make/link?target=notes")["url"]
    assert url.startswith("/uploadmeter/d/l/")
    for _ in range(2):
        status, headers, body = get(app, url)
        assert (status, body) == (200, b"meeting notes\n")
        assert headers["referrer-policy"] == "no-referrer"
    assert get(app, url, Range="bytes=8-12")[:3:2] == (206, b"notes")

    absolute = post_json(app, "/make/link?target=notes&external=1")["url"]
    assert absolute.startswith(app + "/uploadmeter/d/l/")  # the request's scheme and host
    assert get(app, absolute[len(app) :])[2] == b"meeting notes\n"

    once = post_json(app, "/make/link?target=notes&single_use=1")["url"]
    results = together(app, 3, "GET", once)  # 3 at once, on any of the 3 workers
    assert sorted(status for status, _, _ in results) == [200, 410, 410]
    assert get(app, once)[0] == 410
    assert get(app, url[:-3] + "xyz", Accept="application/json")[0] == 403

    share = post_json(app, "/make/share?target=notes&code=SECRET7")["url"]
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    status, headers, _ = Client(app).request("POST", share, b"code=WRONG99", form)
    assert status == 403
    status, headers, _ = Client(app).request("POST", share, b"code=SECRET7", form)
    assert status == 303
    status, _, body = get(app, headers["location"])
    assert (status, body) == (200, b"meeting notes\n")


def test_s3_object_source(app: str, swift: Any) -> None:
    client = swift.client()
    bucket = "asgi-" + new_upload_id().lower()[:20]
    client.create_bucket(Bucket=bucket)
    client.put_object(Bucket=bucket, Key="docs/q1.bin", Body=RANDOM)
    try:
        path = f"/s3?bucket={bucket}&key=docs/q1.bin"
        status, headers, body = get(app, path)
        assert (status, body) == (200, RANDOM)
        assert headers["content-disposition"] == 'attachment; filename="q1.bin"'
        status, headers, body = get(app, path, Range="bytes=100-299")
        assert (status, body) == (206, RANDOM[100:300])
        assert get(app, path, **{"If-None-Match": headers["etag"]})[0] == 304
        assert get(app, f"/s3?bucket={bucket}&key=nothing")[0] == 404
    finally:
        client.delete_object(Bucket=bucket, Key="docs/q1.bin")
        client.delete_bucket(Bucket=bucket)


def test_a_slow_reader_keeps_the_worker_rss_bounded(app: str) -> None:
    """2 GiB to a client that reads 64 KiB per 0.1 s for 3 s: the worker waits on ``send``
    (the socket's buffer is full) instead of reading ahead.  Without backpressure it reads
    the file into the transport's buffer as fast as the disk goes (hundreds of MiB here)."""
    stream = StreamingGet(app, "/file/huge.bin")
    pid = int(stream.headers["x-worker-pid"])
    received = len(stream.read(4 << 20))
    start = _rss_kib(pid)
    samples = [start]
    for _ in range(30):  # a slow reader, on purpose: 640 KiB/s
        time.sleep(0.1)
        received += len(stream.read(65536))
        samples.append(_rss_kib(pid))
    stream.close()
    growth = (max(samples) - start) / 1024
    print(
        f"\nslow reader: {received / 2**20:.1f} MiB of 2048 read in 3 s, worker RSS "
        f"{start / 1024:.0f} MiB -> max {max(samples) / 1024:.0f} MiB (growth {growth:.1f} MiB)"
    )
    assert growth < 32  # bounded: far below what a server reading ahead would hold


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fp:
        for line in fp:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _record(client: Client, uid: str, predicate: Any) -> Any:
    record = client.progress(uid)
    return record if predicate(record) else None


def test_zip64_past_4_gib_through_the_asgi_response(tmp_path: Path) -> None:
    """The WSGI test's 4.2 GiB member and one after it (tests/downloads), through
    ``uploadmeter.asgi.download()``'s own pump, called in this process."""
    from tests.support.download_support import Zeros
    from uploadmeter.asgi import download
    from uploadmeter.downloads import Item

    size = (4 << 30) + (200 << 20)
    (tmp_path / "after.txt").write_text("after the big one")
    out = tmp_path / "out.zip"
    start: dict[str, Any] = {}
    received = 0

    async def run() -> None:
        async def receive() -> dict[str, Any]:
            await asyncio.Event().wait()  # the client never leaves
            return {}

        async def send(message: dict[str, Any]) -> None:
            nonlocal received
            if message["type"] == "http.response.start":
                start.update(message)
                return
            chunk = message["body"]
            if chunk.count(0) != len(chunk):  # keep the copy sparse
                fp.seek(received)
                fp.write(chunk)
            received += len(chunk)

        scope = {"type": "http", "method": "GET", "path": "/", "headers": [], "query_string": b""}
        response = download([Item(Zeros(size), "big.bin"), tmp_path / "after.txt"])
        await response(scope, receive, send)

    with open(out, "wb") as fp:
        asyncio.run(run())
        fp.truncate(received)
    assert start["status"] == 200
    assert int(dict(start["headers"])[b"content-length"]) == received
    archive = zipfile.ZipFile(out)
    first, second = archive.infolist()
    assert first.file_size == size
    assert second.header_offset > 0xFFFFFFFF  # only expressible with ZIP64 records
    assert archive.read("after.txt") == b"after the big one"


def test_the_session_hook_is_called_with_the_scope_for_a_tracked_download(
    tmp_path: Path,
) -> None:
    """On ASGI the ``session_id`` hook gets the scope, for downloads as for uploads."""
    from tests.support.asgi_servers import serve_asgi_in_thread
    from uploadmeter.asgi import UploadMeterMiddleware, download

    (tmp_path / "a.txt").write_text("a")
    seen: list[str] = []

    def session_id(scope: Any) -> str:
        seen.append(scope["type"])  # a WSGI environ has no "type": a KeyError, a 500
        return "user-7"

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await download(tmp_path / "a.txt", meter=meter)(scope, receive, send)

    meter = UploadMeterMiddleware(app, secret_key="k", store="memory://", session_id=session_id)
    with serve_asgi_in_thread(meter) as base:
        client = Client(base)
        uid = new_upload_id()
        status, _, body = client.request("GET", f"/a?uploadmeter_id={uid}")
        assert (status, body) == (200, b"a")
        assert seen and set(seen) == {"http"}
        record = wait_until(lambda: _record(client, uid, lambda r: r["state"] == "done"))
        assert record["bytes_received"] == 1
