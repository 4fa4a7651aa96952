"""S3 objects as download sources, against a real S3-compatible store (Swift's s3api,
tests/downloads/conftest.py), over real HTTP (werkzeug's threaded server): streamed
whole, ``Range`` mapped to one S3 Range GET of exactly the bytes sent, inside zips, the
store's failures as ``503`` + ``Retry-After``, and signed links redirecting to a
presigned URL."""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
from werkzeug.http import parse_options_header
from werkzeug.wrappers import Request, Response

from tests.downloads.conftest import ObjectStore
from tests.support.download_support import open_zip
from tests.support.servers import Client, free_port, serve_in_thread
from uploadmeter import MemoryStore, UploadMeterMiddleware
from uploadmeter.downloads import Item, S3Object, download
from uploadmeter.links import DownloadLinks

pytest.importorskip("boto3")

MIB = 1024 * 1024


class Site:
    """An app downloading ``?key=`` objects of one bucket (``/zip``: all of them) through
    ``client``; every GetObject the client makes is recorded with its parameters."""

    def __init__(self, client: Any, bucket: str, base: str) -> None:
        self.client, self.bucket, self.base = client, bucket, base
        self.gets: list[dict[str, Any]] = []

    def get(self, path: str, **headers: str) -> tuple[int, dict[str, str], bytes]:
        return Client(self.base).request("GET", path, headers=headers)


def object_app(site_of: Any) -> Any:
    def app(environ: dict[str, Any], start_response: Any) -> Any:
        return respond(environ)(environ, start_response)

    def respond(environ: dict[str, Any]) -> Response:
        site: Site = site_of()
        request = Request(environ)
        objects = [S3Object(site.client, site.bucket, k) for k in request.args.getlist("key")]
        on_error = request.args.get("on_error", "fail")
        if request.path == "/zip":
            extra = Item(b"made here\n", "local.txt")
            response = download([*objects, extra], "objects.zip", environ=environ,
                                on_error=on_error)  # fmt: skip
        elif request.path == "/one":
            response = download(objects[0], environ=environ)
        else:
            response = Response("no", status=404)
        return response

    app.respond = respond  # type: ignore[attr-defined]
    return app


@contextlib.contextmanager
def serving(client: Any, bucket: str, shell: str = "wsgi") -> Iterator[Site]:
    holder: list[Site] = []
    app = object_app(lambda: holder[0])
    if shell == "asgi":  # the same views, written by the ASGI shell (uvicorn)
        from tests.support.asgi_servers import serve_asgi_in_thread
        from uploadmeter.asgi._responses import WerkzeugApp

        server = serve_asgi_in_thread(WerkzeugApp(app.respond))
    else:
        server = serve_in_thread(app)
    with server as base:
        site = Site(client, bucket, base)
        client.meta.events.register(
            "provide-client-params.s3.GetObject", lambda params, **_: site.gets.append(dict(params))
        )
        holder.append(site)
        yield site


@pytest.fixture(params=["wsgi", "asgi"])
def site(request: pytest.FixtureRequest, bucket: tuple[Any, str]) -> Iterator[Site]:
    client, name = bucket
    with serving(client, name, request.param) as s:
        yield s


def put_multipart(client: Any, bucket: str, key: str, data: bytes) -> None:
    """Store ``data`` as a multipart object (5 MiB parts): its ETag is not an MD5."""
    upload = client.create_multipart_upload(Bucket=bucket, Key=key)
    parts = []
    for number, start in enumerate(range(0, len(data), 5 * MIB), 1):
        piece = data[start : start + 5 * MIB]
        part = client.upload_part(Bucket=bucket, Key=key, UploadId=upload["UploadId"],
                                  PartNumber=number, Body=piece)  # fmt: skip
        parts.append({"PartNumber": number, "ETag": part["ETag"]})
    client.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload["UploadId"],
                                     MultipartUpload={"Parts": parts})  # fmt: skip


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- one object ------------------------------------------------------------------------------


def test_an_object_is_streamed_with_its_etag_date_and_type(site: Site) -> None:
    data = os.urandom(11 * MIB + 123)
    put_multipart(site.client, site.bucket, "reports/2024 q1.pdf", data)
    head = site.client.head_object(Bucket=site.bucket, Key="reports/2024 q1.pdf")

    status, headers, body = site.get("/one?key=reports/2024%20q1.pdf")
    assert status == 200 and sha(body) == sha(data)
    assert int(headers["content-length"]) == len(data)
    assert headers["content-type"] == "application/pdf"  # stored generic: the name says
    assert parse_options_header(headers["content-disposition"])[1]["filename"] == "2024 q1.pdf"
    assert headers["etag"] == head["ETag"]  # the store's version of these bytes
    assert headers["accept-ranges"] == "bytes" and "last-modified" in headers
    # One GET for the whole object, of exactly its bytes, pinned to the HEADed version.
    assert [(g["Range"], g["IfMatch"]) for g in site.gets] == [
        (f"bytes=0-{len(data) - 1}", head["ETag"])
    ]
    status, _, body = site.get("/one?key=reports/2024%20q1.pdf", **{"If-None-Match": head["ETag"]})
    assert (status, body) == (304, b"")
    assert len(site.gets) == 1  # a 304 reads nothing from the store

    site.client.put_object(Bucket=site.bucket, Key="t.csv", Body=b"a,b\n", ContentType="text/csv")
    status, headers, body = site.get("/one?key=t.csv")
    assert (status, body) == (200, b"a,b\n")
    assert headers["content-type"].startswith("text/csv")  # the stored type wins


def test_a_range_is_one_range_get_of_exactly_its_bytes(site: Site) -> None:
    data = os.urandom(6 * MIB)
    put_multipart(site.client, site.bucket, "big.bin", data)
    for asked, start, stop in (
        ("bytes=100-199", 100, 200),
        ("bytes=5242870-5242889", 5242870, 5242890),  # across the parts' boundary
        ("bytes=-10", len(data) - 10, len(data)),
        (f"bytes={len(data) - 5}-", len(data) - 5, len(data)),
    ):
        site.gets.clear()
        status, headers, body = site.get("/one?key=big.bin", Range=asked)
        assert status == 206 and body == data[start:stop], asked
        assert headers["content-range"] == f"bytes {start}-{stop - 1}/{len(data)}"
        assert [g["Range"] for g in site.gets] == [f"bytes={start}-{stop - 1}"], asked
    site.gets.clear()
    status, headers, _ = site.get("/one?key=big.bin", Range=f"bytes={len(data)}-")
    assert status == 416 and headers["content-range"] == f"bytes */{len(data)}"
    status, headers, _ = Client(site.base).request("HEAD", "/one?key=big.bin")
    assert status == 200 and int(headers["content-length"]) == len(data)
    assert site.gets == []  # neither a 416 nor a HEAD reads the object


def test_objects_inside_a_zip(site: Site) -> None:
    files = {"a/one.bin": os.urandom(6 * MIB + 7), "two.txt": b"two\n", "empty": b""}
    for key, data in files.items():
        site.client.put_object(Bucket=site.bucket, Key=key, Body=data)
    query = "&".join(f"key={k}" for k in files)
    status, headers, body = site.get("/zip?" + query)
    assert status == 200 and headers["content-type"] == "application/zip"
    assert int(headers["content-length"]) == len(body)  # every size known: sized zip
    archive = open_zip(body)
    assert sorted(archive.namelist()) == ["empty", "local.txt", "one.bin", "two.txt"]
    for key, data in files.items():
        assert sha(archive.read(key.rsplit("/", 1)[-1])) == sha(data)
    assert archive.read("local.txt") == b"made here\n"
    assert sorted(g["Range"] for g in site.gets) == sorted(
        f"bytes=0-{len(d) - 1}" for d in files.values() if d
    )  # an empty object needs no GET


# -- failures ----------------------------------------------------------------------------


def test_a_missing_object_is_404_or_an_error_entry(site: Site) -> None:
    status, _, body = site.get("/one?key=nope.bin")
    assert status == 404 and json.loads(body)["error"]["message"] == "nope.bin was not found."
    site.client.put_object(Bucket=site.bucket, Key="here.txt", Body=b"here")
    assert site.get("/zip?key=here.txt&key=nope.bin")[0] == 404
    status, _, body = site.get("/zip?key=here.txt&key=nope.bin&on_error=include")
    archive = open_zip(body)
    assert archive.read("here.txt") == b"here"
    assert b"nope.bin was not found" in archive.read("nope.bin.error.txt")


class FaultyStore:
    """A loopback HTTP server standing in for a store that answers every request with
    ``status`` and an S3 error document (throttling, 5xx, refusal)."""

    def __init__(self, status: int, code: str) -> None:
        self.status, self.code = status, code

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        xml = f"<Error><Code>{self.code}</Code><Message>no</Message></Error>"
        return Response(xml, status=self.status, mimetype="application/xml")(
            environ, start_response
        )


def client_for(object_store: Any, endpoint: str) -> Any:
    """A client of ``endpoint`` that tries once (boto3 would retry each fault 4 times)."""
    replica = ObjectStore(endpoint, object_store.access_key, object_store.secret_key,
                          object_store.region)  # fmt: skip
    return replica.client(retries={"max_attempts": 1, "mode": "standard"})


@pytest.mark.parametrize(
    ("status", "code", "expected"),
    [(503, "SlowDown", 503), (500, "InternalError", 503), (403, "AccessDenied", 502)],
)
def test_a_failing_store_is_a_temporary_error_never_a_traceback(
    object_store: Any, status: int, code: str, expected: int
) -> None:
    with serve_in_thread(FaultyStore(status, code)) as store_url:
        client = client_for(object_store, store_url)
        with serving(client, "any") as site:
            for path in ("/one?key=a.bin", "/zip?key=a.bin"):
                got, headers, body = site.get(path)
                assert got == expected, body
                message = json.loads(body)["error"]["message"]
                assert "Traceback" not in message and "file store" in message
                assert (headers.get("retry-after") == "5") == (expected == 503)


def test_an_unreachable_store_is_503_with_retry_after(object_store: Any) -> None:
    client = client_for(object_store, f"http://127.0.0.1:{free_port()}")  # nothing listens
    with serving(client, "any") as site:
        status, headers, body = site.get("/one?key=a.bin")
    assert status == 503 and headers["retry-after"] == "5"
    assert json.loads(body)["error"]["message"].startswith("The file store is unavailable")


def test_wrong_credentials_are_502_not_a_retry(object_store: Any, bucket: tuple[Any, str]) -> None:
    import boto3

    client = boto3.client("s3", endpoint_url=object_store.endpoint_url,
                          aws_access_key_id="test:tester", aws_secret_access_key="wrong",
                          region_name=object_store.region)  # fmt: skip
    with serving(client, bucket[1]) as site:
        status, headers, _ = site.get("/one?key=a.bin")
    assert status == 502 and "retry-after" not in headers


# -- signed links ----------------------------------------------------------------------------


@pytest.mark.parametrize("presign", [None, 60])
@pytest.mark.parametrize("shell", ["wsgi", "asgi"])
def test_a_signed_link_streams_or_redirects_to_a_presigned_url(
    bucket: tuple[Any, str], presign: int | None, shell: str
) -> None:
    client, name = bucket
    data = os.urandom(MIB + 3)
    client.put_object(Bucket=name, Key="k/report.bin", Body=data)

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        return Response("the app")(environ, start_response)

    async def asgi_app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"the app"})

    server: Any
    if shell == "asgi":
        from tests.support.asgi_servers import serve_asgi_in_thread
        from uploadmeter.asgi import UploadMeterMiddleware as AsgiMeter

        meter: Any = AsgiMeter(asgi_app, secret_key="cookie key", store=MemoryStore())
        server = serve_asgi_in_thread
    else:
        meter = UploadMeterMiddleware(app, secret_key="cookie key", store=MemoryStore())
        server = serve_in_thread
    links = DownloadLinks(lambda key: Item(S3Object(client, name, key), "季度报告.bin"),
                          "link key", meter.store, presign_objects=presign)  # fmt: skip
    meter.mount("/d", links)
    with server(meter) as base:
        url = links.signed_url("k/report.bin", expires_in=60, single_use=True)
        status, headers, body = Client(base).request("GET", url)
        if presign is None:
            assert status == 200 and sha(body) == sha(data)
        else:
            assert (status == 302 and body == b"") or b"Redirecting" in body
            location = headers["location"]
            assert location.startswith(client.meta.endpoint_url + "/" + name + "/k/report.bin?")
            assert headers["referrer-policy"] == "no-referrer"
            with urllib.request.urlopen(location) as response:  # straight from the store
                assert sha(response.read()) == sha(data)
                disposition = response.headers["Content-Disposition"]
            assert parse_options_header(disposition)[1]["filename"] == "季度报告.bin"
            assert urlsplit(location).netloc != urlsplit(base).netloc
            # A HEAD gets a URL signed for a HEAD.
            looking = links.signed_url("k/report.bin", expires_in=60)
            status, headers, _ = Client(base).request("HEAD", looking)
            assert status == 302
            looked = urllib.request.Request(headers["location"], method="HEAD")
            with urllib.request.urlopen(looked) as response:
                assert int(response.headers["Content-Length"]) == len(data)
        # Single use either way: the link was spent by its first GET.
        assert Client(base).request("GET", url)[0] == 410


def test_importing_uploadmeter_does_not_import_boto3() -> None:
    code = (
        "import sys, uploadmeter, uploadmeter.downloads, uploadmeter.links;"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('boto3', 'botocore')))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, env={**os.environ, "PYTHONPATH": os.getcwd()})  # fmt: skip
    assert done.stdout.strip() == "[]"


class CuttingProxy:
    """A loopback TCP proxy to the store that drops a connection once ``limit`` bytes of
    its response went through -- the first ``cuts`` times: a GET that breaks off.  With
    ``then_down``, the store is unreachable after the last cut."""

    def __init__(self, upstream: str, limit: int, cuts: int, then_down: bool) -> None:
        self.upstream = urlsplit(upstream)
        self.limit, self.cuts, self.then_down = limit, cuts, then_down
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.lock = threading.Lock()
        self.sockets: list[socket.socket] = [self.listener]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                client, _ = self.listener.accept()
                if self.then_down and self.cuts == 0:
                    client.close()
                    continue
                server = socket.create_connection((self.upstream.hostname, self.upstream.port))
                self.sockets += [client, server]
                threading.Thread(
                    target=self._pipe, args=(client, server, False), daemon=True
                ).start()
                threading.Thread(
                    target=self._pipe, args=(server, client, True), daemon=True
                ).start()

    def _pipe(self, source: socket.socket, sink: socket.socket, response: bool) -> None:
        sent = 0
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
                sent += len(data)
                if response and sent >= self.limit:
                    with self.lock:
                        cut = self.cuts > 0
                        self.cuts -= cut
                    if cut:
                        break
        for s in (source, sink):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        for s in self.sockets:
            s.close()


@pytest.mark.parametrize(("cuts", "then_down"), [(1, False), (2, False), (1, True)])
def test_a_get_that_breaks_off_is_resumed_where_it_stopped(
    object_store: ObjectStore, bucket: tuple[Any, str], cuts: int, then_down: bool
) -> None:
    """Each time a GET breaks off, another one resumes from the byte it reached: the
    download is whole.  When that one fails too (the store went down), the response ends
    short of its Content-Length (a dropped connection), never with a byte that is not
    the object's."""
    client, name = bucket
    data = os.urandom(8 * MIB)
    client.put_object(Bucket=name, Key="cut.bin", Body=data)
    proxy = CuttingProxy(object_store.endpoint_url, 2 * MIB, cuts, then_down)
    try:
        with serving(client_for(object_store, proxy.url), name) as site:
            conn = http.client.HTTPConnection(urlsplit(site.base).netloc, timeout=30)
            conn.request("GET", "/one?key=cut.bin")
            response = conn.getresponse()
            assert response.status == 200
            assert int(response.headers["Content-Length"]) == len(data)
            if not then_down:
                body = response.read()
                assert sha(body) == sha(data)
                ranges = [g["Range"] for g in site.gets]
                assert len(ranges) == cuts + 1 and ranges[0] == f"bytes=0-{len(data) - 1}"
                starts = [int(r.split("=")[1].split("-")[0]) for r in ranges]
                assert starts == sorted(set(starts)) and starts[-1] < len(data)
                assert all(r.endswith(f"-{len(data) - 1}") for r in ranges)
            else:
                with pytest.raises(http.client.IncompleteRead) as short:
                    response.read()
                got = short.value.partial
                assert 0 < len(got) < len(data) and got == data[: len(got)]
            conn.close()
    finally:
        proxy.close()
