"""download(): every source type, streamed zips, Range, names, remote sources, progress.

Everything goes over real HTTP: the app runs behind UploadMeterMiddleware in werkzeug's
threaded server, remote sources come from a second loopback server (download_support).
"""

from __future__ import annotations

import contextlib
import http.client
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from werkzeug.http import parse_options_header
from werkzeug.wrappers import Request, Response

from tests.support.download_support import (
    PNG,
    LogRecords,
    RecordingStore,
    RemoteSite,
    StreamingGet,
    Unseekable,
    Zeros,
    local_header_zip64,
    open_zip,
    run_download_app,
    sparse_file,
)
from tests.support.servers import Client, free_port, new_upload_id, serve_in_thread, wait_until
from uploadmeter import MemoryStore, UploadMeterMiddleware
from uploadmeter.downloads import (
    AddressNotAllowed,
    Downloader,
    HostNotAllowed,
    Item,
    RemoteCache,
    RemoteError,
    RemoteFetcher,
    UniqueNames,
    Url,
    ascii_fallback,
    content_disposition,
    download,
    name_field,
    safe_arcname,
    source_field,
)

View = Callable[[dict[str, Any]], Response]


class Views:
    """The app under test: each test registers the views it needs."""

    def __init__(self) -> None:
        self.routes: dict[str, View] = {}

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        view = self.routes.get(environ.get("PATH_INFO", ""))
        if view is None:
            return Response("no view", status=404)(environ, start_response)
        return view(environ)(environ, start_response)


class AsgiViews(Views):
    """The same views on the ASGI shell: each view decides its werkzeug response from
    the environ the ASGI shell builds, and the shell writes it (as ``uploadmeter.asgi``'s
    ``download()`` does)."""

    async def asgi(self, scope: Any, receive: Any, send: Any) -> None:
        from uploadmeter.asgi._responses import WerkzeugApp

        view = self.routes.get(scope["path"])
        if view is None:
            await WerkzeugApp(lambda env: Response("no view", status=404))(scope, receive, send)
            return
        await WerkzeugApp(view)(scope, receive, send)


@dataclass
class Harness:
    base: str
    remote: str
    site: RemoteSite
    views: Views
    meter: Any  # the WSGI or the ASGI middleware
    store: RecordingStore
    shell: str = "wsgi"

    def route(self, path: str, view: View) -> None:
        self.views.routes[path] = view

    def fetcher(self, **options: Any) -> RemoteFetcher:
        options.setdefault("allowed_hosts", ["127.0.0.1"])
        options.setdefault("allow_networks", ["127.0.0.1/32"])
        options.setdefault("read_timeout", 5.0)
        return RemoteFetcher(**options)


@pytest.fixture(scope="module")
def harness() -> Iterator[Harness]:
    site = RemoteSite()
    views = Views()
    store = RecordingStore()
    meter = UploadMeterMiddleware(
        views, secret_key="test secret", store=store, update_interval=0.02
    )
    with serve_in_thread(site) as remote, serve_in_thread(meter) as base:
        try:
            yield Harness(base, remote, site, views, meter, store)
        finally:
            site.close()  # frees /slow before the servers stop


@pytest.fixture(scope="module")
def asgi_harness() -> Iterator[Harness]:
    from tests.support.asgi_servers import serve_asgi_in_thread
    from uploadmeter.asgi import UploadMeterMiddleware as AsgiMeter

    site = RemoteSite()
    views = AsgiViews()
    store = RecordingStore()
    meter = AsgiMeter(views.asgi, secret_key="test secret", store=store, update_interval=0.02)
    with serve_in_thread(site) as remote, serve_asgi_in_thread(meter) as base:
        try:
            yield Harness(base, remote, site, views, meter, store, "asgi")
        finally:
            site.close()


@pytest.fixture(params=["wsgi", "asgi"])
def hx(request: pytest.FixtureRequest) -> Iterator[Harness]:
    """The harness on each shell: the same views, the same checks."""
    harness = request.getfixturevalue("harness" if request.param == "wsgi" else "asgi_harness")
    yield _fresh(harness)


@pytest.fixture
def h(harness: Harness) -> Iterator[Harness]:
    yield _fresh(harness)


def _fresh(harness: Harness) -> Harness:
    harness.views.routes.clear()
    harness.site.gate.clear()
    harness.site.release.clear()
    return harness


def get(h: Harness, path: str, **headers: str) -> tuple[int, dict[str, str], bytes]:
    return Client(h.base).request("GET", path, headers=headers)


# -- single files: Range and conditional requests ----------------------------------------


def test_single_file_range_etag_and_conditional_requests(hx: Harness, tmp_path: Path) -> None:
    h = hx
    data = bytes(range(256)) * 40
    path = tmp_path / "report.bin"
    path.write_bytes(data)
    h.route("/one", lambda env: download(path, environ=env))

    status, headers, body = get(h, "/one")
    assert (status, body) == (200, data)
    assert headers["accept-ranges"] == "bytes"
    assert headers["content-length"] == str(len(data))
    assert headers["content-disposition"] == 'attachment; filename="report.bin"'
    assert headers["x-content-type-options"] == "nosniff"
    etag, modified = headers["etag"], headers["last-modified"]

    status, headers, body = get(h, "/one", Range="bytes=100-199")
    assert status == 206
    assert body == data[100:200]
    assert headers["content-range"] == f"bytes 100-199/{len(data)}"

    status, headers, body = get(h, "/one", Range="bytes=-10")
    assert (status, body) == (206, data[-10:])

    status, headers, body = get(h, "/one", Range=f"bytes={len(data)}-", Accept="application/json")
    assert status == 416
    assert headers["content-range"] == f"bytes */{len(data)}"
    assert json.loads(body)["error"]["message"] == "The requested range is not satisfiable."

    assert get(h, "/one", **{"If-None-Match": etag})[0] == 304
    assert get(h, "/one", **{"If-Modified-Since": modified})[0] == 304
    # If-Range with a stale validator: the whole file, not a piece of a changed one.
    status, _, body = get(h, "/one", Range="bytes=0-9", **{"If-Range": '"stale"'})
    assert (status, body) == (200, data)
    status, _, body = get(h, "/one", Range="bytes=0-9", **{"If-Range": etag})
    assert (status, body) == (206, data[:10])


def test_text_with_charset_and_bytes(hx: Harness) -> None:
    h = hx
    text = "naïve café — 二维码"
    h.route("/latin", lambda env: download("héllo", "hello.txt", environ=env, charset="latin-1"))
    h.route("/text", lambda env: download(text, "notes.txt", environ=env))
    h.route("/bytes", lambda env: download(b"\x00\x01\x02binary", "blob.bin", environ=env))

    status, headers, body = get(h, "/latin")
    assert body == "héllo".encode("latin-1")
    assert headers["content-type"] == "text/plain; charset=latin-1"

    status, headers, body = get(h, "/text", Range="bytes=0-5")
    assert status == 206
    assert body == text.encode("utf-8")[:6]
    assert headers["content-type"] == "text/plain; charset=utf-8"
    assert get(h, "/text", **{"If-None-Match": get(h, "/text")[1]["etag"]})[0] == 304

    status, headers, body = get(h, "/bytes")
    assert body == b"\x00\x01\x02binary"
    assert headers["content-type"] == "application/octet-stream"

    h.route("/csv", lambda env: download("a;b\n", "table.csv", environ=env, charset="cp1252"))
    assert get(h, "/csv")[1]["content-type"] == "text/csv; charset=cp1252"
    # Shown inline, an HTML file must not run as a page of this site.
    page = "<script>alert(1)</script>"
    h.route("/page", lambda env: download(page, "page.html", environ=env, as_attachment=False))
    status, headers, body = get(h, "/page")
    assert headers["content-type"] == "text/html; charset=utf-8"
    assert headers["content-disposition"] == 'inline; filename="page.html"'
    assert headers["content-security-policy"] == "sandbox"


def test_file_like_sources_seekable_and_not(hx: Harness) -> None:
    h = hx
    data = os.urandom(50_000)
    h.route("/seekable", lambda env: download(io.BytesIO(data), "data.bin", environ=env))
    streams: list[Unseekable] = []

    def unseekable(env: dict[str, Any]) -> Response:
        streams.append(Unseekable(data))
        return download(streams[-1], "pipe.bin", environ=env)

    h.route("/pipe", unseekable)

    status, headers, body = get(h, "/seekable", Range="bytes=10-19")
    assert (status, body) == (206, data[10:20])
    assert get(h, "/seekable")[2] == data

    status, headers, body = get(h, "/pipe", Range="bytes=10-19")
    assert (status, body) == (200, data)  # no length, no ranges: the whole stream
    assert "content-length" not in headers
    wait_until(lambda: streams[-1].closed_by_download)  # closed once the server is done


def test_missing_file_and_root_confinement(hx: Harness, tmp_path: Path) -> None:
    h = hx
    root = tmp_path / "files"
    root.mkdir()
    (root / "ok.txt").write_text("ok")
    (tmp_path / "secret.txt").write_text("secret")
    (root / "escape.txt").symlink_to(tmp_path / "secret.txt")
    h.route("/missing", lambda env: download(root / "nope.txt", environ=env))
    h.route("/outside", lambda env: download(root / ".." / "secret.txt", environ=env, root=root))
    h.route("/link", lambda env: download(root / "escape.txt", environ=env, root=root))
    h.route("/inside", lambda env: download(root / "ok.txt", environ=env, root=root))

    status, _, body = get(h, "/missing", Accept="application/json")
    assert status == 404
    assert json.loads(body) == {"error": {"status": 404, "message": "nope.txt was not found."}}
    status, _, body = get(h, "/missing", Accept="text/html")
    assert status == 404 and b"<h1>404 Not Found</h1>" in body and b"Traceback" not in body
    assert get(h, "/outside")[0] == 404
    assert get(h, "/link")[0] == 404
    assert get(h, "/inside")[2] == b"ok"


def test_nul_in_a_requested_path_is_404_not_a_traceback(h: Harness, tmp_path: Path) -> None:
    """The view of docs/downloads.rst, `download([FILES / n for n in names], root=FILES)`, given
    `?name=a.txt%00`: os.path.realpath raised ValueError ("embedded null byte") -> 500."""
    root = tmp_path / "files"
    root.mkdir()
    (root / "a.txt").write_text("a")

    def names(env: dict[str, Any]) -> list[str]:
        return Request(env).args.getlist("name")

    h.route(
        "/selection",
        lambda env: download(
            [root / n for n in names(env)], "selection.zip", environ=env, meter=h.meter, root=root
        ),
    )
    h.route("/one", lambda env: download(root / names(env)[0], environ=env))
    h.route("/item", lambda env: download(Item(root / names(env)[0], "x.txt"), environ=env))
    client = Client(h.base)
    uid = new_upload_id()
    for path in (
        f"/selection?name=a.txt%00&uploadmeter_id={uid}",
        "/selection?name=a.txt&name=b%00/../a.txt",
        "/one?name=a.txt%00",
        "/item?name=%00",
    ):
        status, headers, body = client.request("GET", path, headers={"Accept": "application/json"})
        assert status == 404, (path, body)
        assert headers["content-type"] == "application/json"
        assert "was not found" in json.loads(body)["error"]["message"]
        status, _, body = client.request("GET", path, headers={"Accept": "text/html"})
        assert status == 404 and b"<h1>404 Not Found</h1>" in body and b"Traceback" not in body
    record = client.progress(uid)
    assert record["state"] == "error" and record["error"]["status"] == 404
    assert client.request("GET", "/one?name=a.txt")[2] == b"a"  # the same view still serves


# -- names -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "fallback"),
    [
        ("二维码.zip", "download.zip"),
        ("naïve café.txt", "naive cafe.txt"),
        ('say "hi"; now.txt', "say _hi_; now.txt"),
        ("50% off; ok.pdf", "50_ off; ok.pdf"),
        ("plain.txt", "plain.txt"),
    ],
)
def test_content_disposition_utf8_and_ascii_fallback(h: Harness, name: str, fallback: str) -> None:
    h.route("/named", lambda env: download(b"x", name, environ=env))
    header = get(h, "/named")[1]["content-disposition"]
    kind, params = parse_options_header(header)
    assert kind == "attachment"
    assert params["filename"] == name  # werkzeug decodes filename* (RFC 2231/8187)
    assert f'filename="{fallback}"' in header
    assert header.isascii()
    assert ("filename*=UTF-8''" in header) == (name != fallback)


def test_name_helpers() -> None:
    assert ascii_fallback("Ünïcödé") == "Unicode"
    assert ascii_fallback("résumé.tar.gz") == "resume.tar.gz"
    assert ascii_fallback("报告.二维") == "download"
    assert content_disposition("a.txt", as_attachment=False) == 'inline; filename="a.txt"'
    assert content_disposition("../../etc/passwd") == 'attachment; filename="passwd"'
    assert safe_arcname("../../a.txt") == "a.txt"
    assert safe_arcname("/abs/b.txt") == "abs/b.txt"
    assert safe_arcname("C:\\win\\x?.txt") == "C__win_x_.txt"  # "\\" is a character on Linux
    assert safe_arcname("a\x00b.txt") == "ab.txt"
    assert safe_arcname("..") == ""
    assert safe_arcname("a. ./b ./") == "a/b/"  # Windows drops trailing dots and spaces
    assert ascii_fallback("二维码.tar.gz") == "download.tar.gz"


def test_unique_names_never_clash_files_and_folders() -> None:
    names = UniqueNames()
    claimed = [
        names.claim(n) for n in ["a.txt", "A.TXT", "x", "x/y.txt", "x/z.txt", "d/e.txt", "d"]
    ]
    assert claimed == ["a.txt", "A (1).TXT", "x", "x (1)/y.txt", "x (1)/z.txt", "d/e.txt", "d (1)"]
    # A directory source keeps its tree together under one numbered folder.
    assert names.claim("photos/a.jpg", group=0) == "photos/a.jpg"
    assert names.claim("photos/a.jpg", group=1) == "photos (1)/a.jpg"
    assert names.claim("photos/sub/", group=1) == "photos (1)/sub/"
    assert names.claim("logs.tar.gz") + names.claim("logs.tar.gz") == "logs.tar.gzlogs (1).tar.gz"


def test_zip_extracts_everywhere(hx: Harness, tmp_path: Path) -> None:
    h = hx
    sources = {"a": b"file a", "a/b.txt": b"inside a", "../../evil.txt": b"x", "C:\\x.txt": b"c"}
    h.route("/clash", lambda env: download(sources, environ=env))
    archive = open_zip(get(h, "/clash")[2])
    assert archive.namelist() == ["a", "a (1)/b.txt", "evil.txt", "C__x.txt"]
    archive.extractall(tmp_path / "out")  # a file and a folder "a" could not both exist
    assert (tmp_path / "out" / "a (1)" / "b.txt").read_bytes() == b"inside a"


def _tree_of(root: Path) -> dict[str, bytes | None]:
    """Every path under ``root`` (relative, ``/``-separated): a file's bytes, or None."""
    return {
        p.relative_to(root).as_posix(): p.read_bytes() if p.is_file() else None
        for p in root.rglob("*")
    }


def test_names_of_only_dots_and_spaces_extract_with_zipfile_and_unzip(
    h: Harness, tmp_path: Path
) -> None:
    """Files named "...", " .. ", ". ." (legal on Linux) keep their own member names."""
    folder = tmp_path / "folder"
    (folder / "....").mkdir(parents=True)
    files = {"...": b"three", " .. ": b"spaced", ". .": b"dot space dot", "   ": b"spaces"}
    files |= {"___": b"underscores", "x.txt": b"x", "..../inner.txt": b"inner"}
    for name, data in files.items():
        (folder / name).write_bytes(data)
    h.route("/dir", lambda env: download(folder, environ=env))
    h.route("/mixed", lambda env: download([folder, b"top"], environ=env))

    status, _, body = get(h, "/dir")
    assert status == 200
    # Dots become underscores (spaces inside are kept); a clash gets a number, as always.
    assert sorted(open_zip(body).namelist()) == sorted(
        ["_", "__", "_ _", "___", "___ (1)", "x.txt", "____/inner.txt"]
    )
    _extracts_every_file_the_same_everywhere(h, tmp_path, files)


def _extracts_every_file_the_same_everywhere(
    h: Harness, tmp_path: Path, files: dict[str, bytes]
) -> None:
    """``/dir`` and ``/mixed`` (routed by the caller) extract to the same tree with
    Python's zipfile and Info-ZIP unzip, with every one of ``files`` in it, once."""
    unzip = shutil.which("unzip")
    assert unzip is not None, "Info-ZIP unzip is not installed (.ci/run installs it)"
    for url, prefix in (("/dir", ""), ("/mixed", "folder/")):
        body = get(h, url)[2]
        (tmp_path / "got.zip").write_bytes(body)
        by_zipfile, by_unzip = tmp_path / ("py-" + url[1:]), tmp_path / ("unzip-" + url[1:])
        open_zip(body).extractall(by_zipfile)
        done = subprocess.run(
            [unzip, "-q", str(tmp_path / "got.zip"), "-d", str(by_unzip)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        tree = _tree_of(by_zipfile)
        assert tree == _tree_of(by_unzip)
        got = sorted(v for k, v in tree.items() if v is not None and k.startswith(prefix))
        assert got == sorted(files.values())  # every file, each once


def test_names_cleaning_empties_or_lengthens_extract_with_zipfile_and_unzip(
    h: Harness, tmp_path: Path
) -> None:
    """A name of control characters is a name, not path syntax; ``\\`` is a character, not
    a folder; a numbered duplicate of a 255-byte name still fits in 255 bytes."""
    folder = tmp_path / "folder"
    (folder / "sub").mkdir(parents=True)
    (folder / "a").mkdir()
    long_ascii, long_utf8 = "x" * 254, "é" * 127  # 254 bytes each, + "." = 255
    files = {
        "sub/\x01": b"control",
        "sub/.\x01": b"dot control",
        "sub/x.txt": b"x in sub",
        "a\\b.txt": b"backslash",
        "a/b.txt": b"b in a",
        long_ascii + ".": b"ascii dot",
        long_ascii: b"ascii",
        f"sub/{long_utf8}.": b"utf8 dot",
        f"sub/{long_utf8}": b"utf8",
        f"sub/{'é' * 124}.tar.gz": b"utf8 tar",  # 255 bytes
        f"sub/{'é' * 124}.TAR.GZ": b"utf8 TAR",  # the same name on Windows and macOS
    }
    for name, data in files.items():
        (folder / name).write_bytes(data)
    h.route("/dir", lambda env: download(folder, environ=env))
    h.route("/mixed", lambda env: download([folder, b"top"], environ=env))
    names = open_zip(get(h, "/dir")[2]).namelist()
    assert {"sub/_", "sub/_ (1)", "sub/x.txt", "a_b.txt", "a/b.txt"} <= set(names), names
    assert max(len(part.encode()) for n in names for part in n.split("/")) <= 255
    _extracts_every_file_the_same_everywhere(h, tmp_path, files)


def test_symlink_swapped_after_the_response_is_built(tmp_path: Path) -> None:
    """A link checked when the zip is planned is the file sent, whatever it points to later."""
    from werkzeug.test import EnvironBuilder, run_wsgi_app

    folder = tmp_path / "shared"
    folder.mkdir()
    (folder / "inside.txt").write_text("inside")
    (tmp_path / "secret.txt").write_text("SECRET")
    (folder / "link.txt").symlink_to(folder / "inside.txt")
    response = download(folder, environ=EnvironBuilder().get_environ())
    (folder / "link.txt").unlink()
    (folder / "link.txt").symlink_to(tmp_path / "secret.txt")  # planted meanwhile
    body, status, _ = run_wsgi_app(response, EnvironBuilder().get_environ())
    data = b"".join(body)
    body.close()  # type: ignore[attr-defined]
    assert status == "200 OK"
    assert open_zip(data).read("link.txt") == b"inside"


# -- zips --------------------------------------------------------------------------------


@dataclass
class Device:
    """The seed's example: devices whose QR-code URLs become ``<name>.png``."""

    name: str = name_field()
    qr_code: str = source_field("url", suffix=".png")


@dataclass
class Report:
    title: str = name_field()
    body: str = source_field("text")


class Invoice:
    def __init__(self, number: int) -> None:
        self.number = number

    def download_item(self) -> Any:
        return Item(f"Invoice {self.number}\n", f"invoice-{self.number}.txt")


def _tree(tmp_path: Path) -> Path:
    folder = tmp_path / "photos"
    (folder / "2024" / "summer").mkdir(parents=True)
    (folder / "empty").mkdir()
    (folder / "a.jpg").write_bytes(b"jpeg a")
    (folder / "2024" / "summer" / "beach.jpg").write_bytes(b"jpeg beach")
    (tmp_path / "outside.txt").write_text("must not leak")
    (folder / "leak.txt").symlink_to(tmp_path / "outside.txt")
    (folder / "alias.jpg").symlink_to(folder / "a.jpg")
    return folder


def test_directory_becomes_a_zip_with_relative_names(hx: Harness, tmp_path: Path) -> None:
    h = hx
    folder = _tree(tmp_path)
    h.route("/dir", lambda env: download(folder, environ=env))
    status, headers, body = get(h, "/dir")
    assert status == 200
    assert headers["content-type"] == "application/zip"
    assert headers["content-disposition"] == 'attachment; filename="photos.zip"'
    assert headers["content-length"] == str(len(body))  # known before the first byte
    archive = open_zip(body)
    assert sorted(archive.namelist()) == ["2024/summer/beach.jpg", "a.jpg", "alias.jpg", "empty/"]
    assert archive.read("2024/summer/beach.jpg") == b"jpeg beach"
    assert archive.read("alias.jpg") == b"jpeg a"  # a link inside the folder is fine


def test_mixed_collection_every_source_type(hx: Harness, tmp_path: Path) -> None:
    h = hx
    folder = _tree(tmp_path)
    (tmp_path / "a.txt").write_text("file a")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "a.txt").write_text("other a")
    fetcher = h.fetcher()
    devices = [Device("Printer 1", f"{h.remote}/qr/1"), Device("Scanner", f"{h.remote}/qr/2")]
    sources: list[Any] = [
        tmp_path / "a.txt",
        tmp_path / "other" / "a.txt",  # same name: becomes "a (1).txt"
        folder,  # a directory inside a collection keeps its name as a folder
        Item(folder / "a.jpg", "photos"),  # clashes with the folder: renamed
        "plain text é",
        b"\x00bytes",
        io.BytesIO(b"buffer"),
        Unseekable(b"stream " * 1000),
        Item("x,y\n1,2\n", "sheet.csv", charset="utf-16"),
        Url(f"{h.remote}/files/remote.txt"),
        Url(f"{h.remote}/named"),  # named by the remote Content-Disposition
        {"mapped/name.bin": b"from a mapping"},
        Report("Quarterly", "Revenue up."),
        Invoice(7),
        devices,
    ]
    h.route(
        "/mix",
        lambda env: download(sources, "二维码.zip", environ=env, remote=fetcher),
    )
    status, headers, body = get(h, "/mix")
    assert status == 200, body
    assert parse_options_header(headers["content-disposition"])[1]["filename"] == "二维码.zip"
    assert "content-length" not in headers  # the unseekable stream has no known size
    archive = open_zip(body)
    names = archive.namelist()
    assert names == [
        "a.txt",
        "a (1).txt",
        "photos/a.jpg",
        "photos/alias.jpg",
        "photos/2024/summer/beach.jpg",
        "photos/empty/",
        "photos (1)",
        "text.txt",
        "data.bin",
        "file.bin",
        "file (1).bin",
        "sheet.csv",
        "remote.txt",
        "résumé.pdf",
        "mapped/name.bin",
        "Quarterly.txt",
        "invoice-7.txt",
        "Printer 1.png",
        "Scanner.png",
    ]
    assert archive.read("a (1).txt") == b"other a"
    assert archive.read("photos (1)") == b"jpeg a"
    assert archive.read("text.txt") == "plain text é".encode()
    assert archive.read("file (1).bin") == b"stream " * 1000
    assert archive.read("sheet.csv") == "x,y\n1,2\n".encode("utf-16")
    assert archive.read("remote.txt") == b"remote remote.txt"
    assert archive.read("résumé.pdf") == b"named body"
    assert archive.read("Quarterly.txt") == b"Revenue up."
    assert archive.read("Printer 1.png") == PNG + b"/qr/1"
    assert archive.getinfo("résumé.pdf").flag_bits & 0x800  # UTF-8 name flag


def test_single_object_source_and_as_zip(hx: Harness) -> None:
    h = hx
    fetcher = h.fetcher()
    device = Device("Printer 1", f"{h.remote}/qr/9")
    h.route("/device", lambda env: download(device, environ=env, remote=fetcher))
    h.route(
        "/forced",
        lambda env: download(Item(b"one", "one.bin"), "one.zip", environ=env, as_zip=True),
    )
    status, headers, body = get(h, "/device")
    assert (status, body) == (200, PNG + b"/qr/9")
    assert headers["content-type"] == "image/png"
    assert headers["content-disposition"] == 'attachment; filename="Printer 1.png"'
    status, headers, body = get(h, "/forced")
    assert open_zip(body).namelist() == ["one.bin"]
    assert headers["content-disposition"] == 'attachment; filename="one.zip"'


def test_zip64_forced_for_entries_of_unknown_size(hx: Harness) -> None:
    h = hx
    data = os.urandom(300_000)
    h.route(
        "/zip64",
        lambda env: download([Unseekable(data), b"small"], "z.zip", environ=env),
    )
    body = get(h, "/zip64")[2]
    archive = open_zip(body)
    big, small = archive.infolist()
    # Its size was unknown when the header went out, so zipstream-ng wrote ZIP64 fields.
    assert local_header_zip64(body, big)
    assert not local_header_zip64(body, small)
    assert archive.read(big) == data


def test_zip64_past_4_gib(tmp_path: Path) -> None:
    """A real 4.2 GiB member and one after it, at an offset past 4 GiB.

    Run as a WSGI call in this process (over loopback HTTP the same bytes take ~15 s on the
    CI machine), the member read from memory (a sparse file's first read costs seconds of
    page-cache work here).  The copy written back stays sparse.
    """
    from werkzeug.test import EnvironBuilder, run_wsgi_app

    big = Item(Zeros((4 << 30) + (200 << 20)), "big.bin")
    (tmp_path / "after.txt").write_text("after the big one")
    environ = EnvironBuilder(path="/").get_environ()

    def app(env: dict[str, Any], start_response: Any) -> Any:
        return download([big, tmp_path / "after.txt"], environ=env)(env, start_response)

    body, status, headers = run_wsgi_app(app, environ)
    out = tmp_path / "out.zip"
    received = 0
    with open(out, "wb") as fp:
        for chunk in body:
            if chunk.count(0) != len(chunk):  # keep the copy sparse: write only non-zeros
                fp.seek(received)
                fp.write(chunk)
            received += len(chunk)
        fp.truncate(received)
    body.close()  # type: ignore[attr-defined]
    assert status == "200 OK"
    assert int(headers["Content-Length"]) == received  # computed before the first byte
    archive = zipfile.ZipFile(out)
    first, second = archive.infolist()
    assert first.file_size == (4 << 30) + (200 << 20)
    assert second.header_offset > 0xFFFFFFFF  # only expressible with ZIP64 records
    assert archive.read("after.txt") == b"after the big one"
    crc = 0
    block = bytes(1 << 20)
    for _ in range(first.file_size >> 20):
        crc = zlib.crc32(block, crc)
    assert crc == first.CRC


def test_compressed_zip(hx: Harness, tmp_path: Path) -> None:
    h = hx
    (tmp_path / "text.txt").write_text("compress me " * 10_000)
    h.route(
        "/deflate",
        lambda env: download([tmp_path / "text.txt", "x" * 50_000], environ=env, compress=True),
    )
    status, headers, body = get(h, "/deflate")
    assert status == 200
    assert "content-length" not in headers  # deflated size is unknown in advance
    archive = open_zip(body)
    assert all(i.compress_type == zipfile.ZIP_DEFLATED for i in archive.infolist())
    assert len(body) < 10_000
    assert archive.read("text.txt") == b"compress me " * 10_000


def test_head_sends_headers_only(hx: Harness, tmp_path: Path) -> None:
    h = hx
    (tmp_path / "a.txt").write_text("a")
    h.route("/pair", lambda env: download([tmp_path / "a.txt", b"b"], environ=env, meter=h.meter))
    full = get(h, "/pair")
    uid = new_upload_id()
    client = Client(h.base)
    status, headers, body = client.request("HEAD", f"/pair?uploadmeter_id={uid}")
    assert status == 200 and body == b""
    assert headers["content-length"] == full[1]["content-length"]
    assert client.progress(uid)["state"] == "unknown"  # HEAD is not tracked


# -- remote sources ----------------------------------------------------------------------


def test_remote_fetched_concurrently(h: Harness) -> None:
    # /barrier answers only once three requests wait at once: sequential fetching fails.
    fetcher = h.fetcher(max_workers=3)
    urls = [Url(f"{h.remote}/barrier/{i}", f"{i}.txt") for i in range(3)]
    h.route("/together", lambda env: download(urls, environ=env, remote=fetcher))
    status, _, body = get(h, "/together")
    assert status == 200, body
    archive = open_zip(body)
    assert [archive.read(f"{i}.txt") for i in range(3)] == [
        f"together /barrier/{i}".encode() for i in range(3)
    ]


def test_failing_remote_source_fails_cleanly_before_headers(hx: Harness) -> None:
    h = hx
    fetcher = h.fetcher()
    sources = [Url(f"{h.remote}/files/ok.txt"), Url(f"{h.remote}/fail")]
    h.route("/fail", lambda env: download(sources, environ=env, remote=fetcher, meter=h.meter))
    uid = new_upload_id()
    client = Client(h.base)
    status, _, body = client.request(
        "GET", f"/fail?uploadmeter_id={uid}", headers={"Accept": "application/json"}
    )
    assert status == 502
    message = json.loads(body)["error"]["message"]
    assert message == f"{h.remote}/fail answered 500 INTERNAL SERVER ERROR."
    record = client.progress(uid)
    assert record["state"] == "error"
    assert record["error"] == {"status": 502, "message": message}


def test_slow_and_failing_sources_become_error_entries(h: Harness) -> None:
    fetcher = h.fetcher(read_timeout=0.5)
    sources = [
        Url(f"{h.remote}/files/ok.txt"),
        Url(f"{h.remote}/slow"),
        Url(f"{h.remote}/missing?token=secret"),
    ]
    h.route(
        "/partial",
        lambda env: download(sources, environ=env, remote=fetcher, on_error="include"),
    )
    started = time.monotonic()
    status, _, body = get(h, "/partial")
    assert status == 200
    assert time.monotonic() - started < 4  # the slow one timed out, nobody waited for it
    archive = open_zip(body)
    assert archive.namelist() == ["ok.txt", "slow.error.txt", "missing.error.txt"]
    assert archive.read("ok.txt") == b"remote ok.txt"
    assert b"timed out" in archive.read("slow.error.txt")
    missing = archive.read("missing.error.txt").decode()
    assert "answered 404" in missing
    assert "secret" not in missing  # query strings stay out of messages
    h.site.release.set()  # the stalled /slow handler may end now


def test_remote_total_timeout_holds_against_a_drip(h: Harness) -> None:
    # /drip sends a byte every 0.1 s: each read is in time, the whole is not.
    fetcher = h.fetcher(read_timeout=2.0, total_timeout=0.5)
    started = time.monotonic()
    with pytest.raises(RemoteError, match="took too long"):
        fetcher.fetch(f"{h.remote}/drip?bytes=40")
    assert time.monotonic() - started < 2


def test_remote_connection_refused_says_so(h: Harness) -> None:
    with pytest.raises(RemoteError) as excinfo:
        h.fetcher().fetch(f"http://127.0.0.1:{free_port()}/a.txt")
    assert excinfo.value.message.startswith("Cannot connect to http://127.0.0.1:")


@contextlib.contextmanager
def dropping_server(drops: int) -> Iterator[tuple[str, list[int]]]:
    """A server that reads each request and closes the first ``drops`` connections without
    an answer (an idle connection closed by the server as the request went out), then
    answers ``dropped body``.  Yields its URL and the running count of connections."""
    listener = socket.create_server(("127.0.0.1", 0))
    seen = [0]

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return  # closed: the test is over
            with conn:
                seen[0] += 1
                request = b""
                while b"\r\n\r\n" not in request:
                    request += conn.recv(4096) or b"\r\n\r\n"
                if seen[0] > drops:
                    conn.sendall(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\nConnection: close\r\n\r\n"
                        b"dropped body"
                    )

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}", seen
    finally:
        listener.shutdown(socket.SHUT_RDWR)  # wakes the accept (close alone does not)
        listener.close()
        thread.join(5)


def test_remote_dropping_the_connection_once_is_sent_again(h: Harness) -> None:
    with dropping_server(drops=1) as (url, seen):
        h.route(
            "/again", lambda env: download(Url(f"{url}/a.txt"), environ=env, remote=h.fetcher())
        )
        status, _, body = get(h, "/again")
    assert (status, body, seen[0]) == (200, b"dropped body", 2)


def test_remote_dropping_the_connection_twice_says_so(h: Harness) -> None:
    with dropping_server(drops=2) as (url, seen), pytest.raises(RemoteError) as excinfo:
        h.fetcher().fetch(f"{url}/a.txt")
    assert seen[0] == 2  # sent twice, not more
    assert excinfo.value.message == (
        f"Cannot fetch {url}/a.txt: connection dropped (RemoteDisconnected)"
    )


def test_remote_size_cap(h: Harness) -> None:
    fetcher = h.fetcher(max_size=100_000)
    sources = [
        Url(f"{h.remote}/big?size=200000", "declared.bin"),
        Url(f"{h.remote}/big?size=200000&chunked=1", "streamed.bin"),
        Url(f"{h.remote}/big?size=100000", "fits.bin"),
    ]
    h.route("/cap", lambda env: download(sources, environ=env, remote=fetcher, on_error="include"))
    archive = open_zip(get(h, "/cap")[2])
    assert archive.namelist() == ["declared.bin.error.txt", "streamed.bin.error.txt", "fits.bin"]
    assert b"larger than 100000 bytes" in archive.read("declared.bin.error.txt")
    assert b"larger than 100000 bytes" in archive.read("streamed.bin.error.txt")
    assert archive.read("fits.bin") == bytes(100_000)


def test_remote_cache(h: Harness, tmp_path: Path) -> None:
    cache = RemoteCache(tmp_path / "cache", max_age=600)
    fetcher = h.fetcher(cache=cache)
    url = f"{h.remote}/files/cached.txt"
    h.route("/cached", lambda env: download(Url(url), environ=env, remote=fetcher))
    before = h.site.hits["/files/cached.txt"]
    assert get(h, "/cached")[2] == b"remote cached.txt"
    assert get(h, "/cached")[2] == b"remote cached.txt"
    assert h.site.hits["/files/cached.txt"] == before + 1
    # Age the entry past max_age: fetched again.
    (meta,) = (tmp_path / "cache").glob("*.json")
    old = time.time() - 601
    os.utime(meta, (old, old))
    leftover = tmp_path / "cache" / "interrupted.part"  # a worker died mid-fetch
    leftover.write_bytes(b"half")
    os.utime(leftover, (old, old))
    assert cache.purge() == 1
    assert not leftover.exists()
    assert get(h, "/cached")[2] == b"remote cached.txt"
    assert h.site.hits["/files/cached.txt"] == before + 2
    assert not list((tmp_path / "cache").glob("*.part"))


# -- SSRF --------------------------------------------------------------------------------


def test_ssrf_loopback_refused_unless_allowed(h: Harness) -> None:
    url = f"{h.remote}/files/a.txt"
    strict = RemoteFetcher(allowed_hosts=["127.0.0.1"])  # host listed, network not
    other = RemoteFetcher(allowed_hosts=["cdn.example.com"])
    allowed = h.fetcher()
    h.route("/strict", lambda env: download(Url(url), environ=env, remote=strict))
    h.route("/other", lambda env: download(Url(url), environ=env, remote=other))
    h.route("/none", lambda env: download(Url(url), environ=env))
    h.route("/allowed", lambda env: download(Url(url), environ=env, remote=allowed))
    before = h.site.hits["/files/a.txt"]

    status, _, body = get(h, "/strict", Accept="application/json")
    assert status == 502
    assert json.loads(body)["error"]["message"] == (
        "The host 127.0.0.1 resolves to 127.0.0.1, which is not a public address."
    )
    status, _, body = get(h, "/other", Accept="application/json")
    assert (status, json.loads(body)["error"]["message"]) == (
        502,
        "The host 127.0.0.1 is not allowed.",
    )
    assert get(h, "/none")[0] == 502
    assert h.site.hits["/files/a.txt"] == before  # nothing reached the server
    assert get(h, "/allowed")[2] == b"remote a.txt"


def test_ssrf_redirects_are_checked_each_hop(h: Harness) -> None:
    fetcher = h.fetcher()
    port = h.remote.rsplit(":", 1)[1]
    to_localhost = Url(f"{h.remote}/redirect?to=http://localhost:{port}/files/r.txt", "a.txt")
    to_same = Url(f"{h.remote}/redirect?to=/files/r.txt", "b.txt")
    to_file = Url(f"{h.remote}/redirect?to=file:///etc/passwd", "c.txt")
    h.route(
        "/redirects",
        lambda env: download(
            [to_localhost, to_same, to_file], environ=env, remote=fetcher, on_error="include"
        ),
    )
    archive = open_zip(get(h, "/redirects")[2])
    assert archive.namelist() == ["a.txt.error.txt", "b.txt", "c.txt.error.txt"]
    assert b"The host localhost is not allowed." in archive.read("a.txt.error.txt")
    assert archive.read("b.txt") == b"remote r.txt"
    assert b"Only http and https" in archive.read("c.txt.error.txt")


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",  # cloud metadata
        "100.64.0.1",  # carrier-grade NAT
        "0.0.0.0",
        "224.0.0.1",
        "::1",
        "fe80::1",
        "fc00::1",
        "::ffff:127.0.0.1",
        "::ffff:10.0.0.1",
        "2002:7f00:1::1",  # 6to4 wrapping 127.0.0.1
        "::",
        "64:ff9b::a00:1",  # NAT64 reaching 10.0.0.1
        "64:ff9b:1::a00:1",  # local-use NAT64
        "::7f00:1",  # IPv4-compatible 127.0.0.1 (deprecated)
        "::ffff:0:7f00:1",  # SIIT-translated 127.0.0.1
        "fec0::1",  # site-local (deprecated)
    ],
)
def test_ssrf_private_addresses_refused(address: str) -> None:
    fetcher = RemoteFetcher(allowed_hosts=["*"])
    with pytest.raises(AddressNotAllowed):
        fetcher.resolve(address, 80)  # a literal resolves to itself, no DNS involved


def test_ssrf_public_addresses_and_url_checks() -> None:
    fetcher = RemoteFetcher(allowed_hosts=["*"])
    assert fetcher.resolve("8.8.8.8", 80) == "8.8.8.8"
    assert fetcher.resolve("2001:4860:4860::8888", 443) == "2001:4860:4860::8888"
    assert fetcher.resolve("64:ff9b::808:808", 80) == "64:ff9b::808:808"  # NAT64 to 8.8.8.8
    hosts = RemoteFetcher(allowed_hosts=[".example.com", "cdn.example.org"])
    assert hosts.host_allowed("example.com") and hosts.host_allowed("a.b.example.com")
    assert hosts.host_allowed("CDN.example.org.")
    assert not hosts.host_allowed("example.com.evil.net")
    assert not hosts.host_allowed("evil-example.com")
    for bad in [
        "file:///etc/passwd",
        "gopher://cdn.example.org/",
        "http://user:pw@cdn.example.org/",
        "http://cdn.example.org@evil.net/",
        "http://evil.net/?x=cdn.example.org",
        "http://[::1/",
    ]:
        with pytest.raises(HostNotAllowed):
            hosts.check_url(bad)
    # A name resolving to a public and a private address is refused outright.
    mixed = RemoteFetcher(
        allowed_hosts=["*"],
        getaddrinfo=lambda *a, **k: [
            (2, 1, 6, "", ("93.184.215.14", 80)),
            (2, 1, 6, "", ("10.0.0.5", 80)),
        ],
    )
    with pytest.raises(AddressNotAllowed):
        mixed.resolve("rebinding.example", 80)


# -- progress ----------------------------------------------------------------------------


def _big_zip(h: Harness, tmp_path: Path, files: int, size: int) -> list[Path]:
    paths = []
    for i in range(files):
        paths.append(tmp_path / f"part{i}.bin")
        sparse_file(paths[-1], size)
    h.route("/big", lambda env: download(paths, "big.zip", environ=env, meter=h.meter))
    return paths


def test_zip_progress_is_recorded_while_streaming(hx: Harness, tmp_path: Path) -> None:
    h = hx
    _big_zip(h, tmp_path, files=4, size=16 << 20)
    client = Client(h.base)
    uid = new_upload_id()
    stream = StreamingGet(h.base, f"/big?uploadmeter_id={uid}", client=client)
    total = int(stream.headers["content-length"])
    assert stream.read(256 * 1024)

    # The server is blocked on the socket, far from the end: progress shows the middle.
    record = wait_until(lambda: _progress(client, uid, lambda r: r["bytes_received"] > 0))
    assert record["state"] == "uploading"
    assert record["content_length"] == total
    assert 0 < record["bytes_received"] < total
    assert record["processing"]["phase"] == "zipping"
    assert record["processing"]["total"] == 4
    assert record["processing"]["done"] < 4
    assert record["result"] == {"filename": "big.zip"}

    assert 256 * 1024 + stream.drain() == total
    stream.close()
    record = wait_until(lambda: _progress(client, uid, lambda r: r["state"] == "done"))
    assert record["bytes_received"] == total
    assert record["percentage"] == 100
    assert record["processing"] == {"phase": "zipping", "done": 4, "total": 4, "percentage": 100}
    assert record["result"] == {"filename": "big.zip", "bytes": total}


@pytest.mark.parametrize("compress", [False, True], ids=["content-length", "chunked"])
def test_download_cancelled_through_the_cancel_endpoint(
    hx: Harness, tmp_path: Path, compress: bool
) -> None:
    h = hx
    paths = [tmp_path / f"random{i}.bin" for i in range(3)]
    for path in paths:  # incompressible: deflated, it still fills the socket buffers
        path.write_bytes(os.urandom(8 << 20))
    h.route(
        "/big",
        lambda env: download(paths, "big.zip", environ=env, meter=h.meter, compress=compress),
    )
    client = Client(h.base)
    with LogRecords("werkzeug") as log:
        uid = _cancel_mid_stream(client, "/big")
    # The server logs a user's cancel like a client that went away: quietly.
    assert log.errors() == []
    assert set(h.store.states(uid)[h.store.states(uid).index("cancelled") :]) == {"cancelled"}


def _cancel_mid_stream(client: Client, path: str) -> str:
    """Start a tracked download, cancel it once bytes flow, see it cut off; returns its id."""
    uid = new_upload_id()
    stream = StreamingGet(client.base_url, f"{path}?uploadmeter_id={uid}", client=client)
    stream.read(256 * 1024)
    wait_until(lambda: _progress(client, uid, lambda r: r["bytes_received"] > 0))
    status, _, body = client.request("POST", f"/uploadmeter/cancel?id={uid}")
    assert status == 200 and json.loads(body)["state"] == "cancelled"
    with pytest.raises(http.client.IncompleteRead):
        # The server stops at its next progress write and drops the connection: the client
        # can tell the body is incomplete (short of Content-Length, or no last chunk).
        stream.read_all()
    stream.close()
    assert client.progress(uid)["state"] == "cancelled"
    return uid


def test_cancel_while_remote_sources_load_stays_cancelled(hx: Harness) -> None:
    h = hx
    fetcher = h.fetcher()
    sources = [Url(f"{h.remote}/files/first.txt"), Url(f"{h.remote}/gate", "gated.txt")]
    h.route("/gated", lambda env: download(sources, environ=env, remote=fetcher, meter=h.meter))
    client = Client(h.base)
    client.progress(new_upload_id())  # gets the session cookie
    uid = new_upload_id()
    result: dict[str, Any] = {}
    thread = threading.Thread(
        target=lambda: result.update(
            r=client.request(
                "GET", f"/gated?uploadmeter_id={uid}", headers={"Accept": "application/json"}
            )
        )
    )
    thread.start()
    try:
        wait_until(lambda: _progress(client, uid, lambda r: (r["processing"] or {}).get("done")))
        status, _, body = client.request("POST", f"/uploadmeter/cancel?id={uid}")
        assert status == 200 and json.loads(body)["state"] == "cancelled"
    finally:
        h.site.gate.set()  # the second source arrives after the cancel
        thread.join(10)
    status, _, body = result["r"]
    assert (status, json.loads(body)["error"]["message"]) == (409, "The download was cancelled.")
    states = h.store.states(uid)
    assert states[states.index("cancelled") :] == ["cancelled"] * (
        len(states) - states.index("cancelled")
    ), states  # never back to "starting", not even briefly
    assert client.progress(uid)["state"] == "cancelled"


def test_client_disconnect_marks_the_download_failed(hx: Harness, tmp_path: Path) -> None:
    h = hx
    _big_zip(h, tmp_path, files=2, size=32 << 20)
    client = Client(h.base)
    uid = new_upload_id()
    stream = StreamingGet(h.base, f"/big?uploadmeter_id={uid}", client=client)
    stream.read(256 * 1024)
    stream.close()
    record = wait_until(lambda: _progress(client, uid, lambda r: r["state"] == "error"))
    assert record["error"]["status"] == 499
    assert record["error"]["message"].startswith("The connection closed after ")


def test_single_file_progress_and_loading_phase(hx: Harness, tmp_path: Path) -> None:
    h = hx
    fetcher = h.fetcher()
    sources = [Url(f"{h.remote}/files/first.txt"), Url(f"{h.remote}/gate", "gated.txt")]
    h.route("/gated", lambda env: download(sources, environ=env, remote=fetcher, meter=h.meter))
    client = Client(h.base)
    client.request("GET", "/uploadmeter/progress?id=" + new_upload_id())  # gets the cookie
    uid = new_upload_id()
    result: dict[str, Any] = {}
    thread = threading.Thread(
        target=lambda: result.update(r=client.request("GET", f"/gated?uploadmeter_id={uid}"))
    )
    thread.start()
    try:
        record = wait_until(
            lambda: _progress(client, uid, lambda r: (r["processing"] or {}).get("done") == 1)
        )
        assert record["state"] == "starting"
        assert record["processing"] == {"phase": "loading", "done": 1, "total": 2, "percentage": 50}
    finally:
        h.site.gate.set()
        thread.join(10)
    archive = open_zip(result["r"][2])
    assert archive.read("gated.txt") == b"after the gate"
    # The record is final once the server closes the body, just after the last byte.
    wait_until(lambda: _progress(client, uid, lambda r: r["state"] == "done"))

    # One file: bytes of the file, no entry counts.
    sparse_file(tmp_path / "one.bin", 8 << 20)
    h.route("/single", lambda env: download(tmp_path / "one.bin", environ=env, meter=h.meter))
    uid = new_upload_id()
    status, _, body = client.request("GET", f"/single?uploadmeter_id={uid}")
    assert status == 200
    assert len(body) == 8 << 20
    record = wait_until(lambda: _progress(client, uid, lambda r: r["state"] == "done"))
    assert record["bytes_received"] == record["content_length"] == 8 << 20
    assert record["processing"] is None


def test_tracking_id_validation_and_conflict(hx: Harness, tmp_path: Path) -> None:
    h = hx
    _big_zip(h, tmp_path, files=2, size=32 << 20)
    client = Client(h.base)
    status, _, body = client.request(
        "GET", "/big?uploadmeter_id=bad!", headers={"Accept": "application/json"}
    )
    assert status == 400
    uid = new_upload_id()
    stream = StreamingGet(h.base, f"/big?uploadmeter_id={uid}", client=client)
    stream.read(1024)
    status, _, body = client.request(
        "GET", f"/big?uploadmeter_id={uid}", headers={"Accept": "application/json"}
    )
    assert status == 409
    assert json.loads(body)["error"]["message"] == (
        "A download with this id is already in progress."
    )
    stream.drain()
    stream.close()


@pytest.mark.gunicorn
def test_cancel_under_gunicorn_drops_the_connection_quietly(tmp_path: Path) -> None:
    files = tmp_path / "files"
    files.mkdir()
    for i in range(2):
        sparse_file(files / f"part{i}.bin", 32 << 20)
    error_log = tmp_path / "gunicorn.log"
    with run_download_app(tmp_path, files, error_log) as base:
        client = Client(base)
        client.progress(new_upload_id())  # the session cookie
        # Polls and the cancel land on any worker: the record is in the shared SQLite file.
        _cancel_mid_stream(client, "/zip")
    log = error_log.read_text()
    assert "Booting worker" in log  # the log is the workers' log
    assert "Traceback" not in log and "Error handling request" not in log, log


def _progress(client: Client, uid: str, predicate: Callable[[dict[str, Any]], bool]) -> Any:
    record = client.progress(uid)
    return record if predicate(record) else None


# -- memory ------------------------------------------------------------------------------


def test_streaming_a_large_zip_uses_constant_memory(tmp_path: Path) -> None:
    """272 MiB of entries streamed; Python allocations stay flat (the number goes in the
    report: run with ``-s`` to see it).  Measured in a process of its own, see
    :mod:`tests.support.download_memory`."""
    result = subprocess.run(
        [sys.executable, "-m", "tests.support.download_memory", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        cwd=Path(__file__).parents[2],
    )
    measured = json.loads(result.stdout)
    assert measured["received"] > 270 * 1024 * 1024
    received, peak = measured["received"] / 2**20, measured["peak"] / 2**20
    print(f"\nstreamed {received:.0f} MiB: tracemalloc peak {peak:.2f} MiB")
    assert measured["peak"] < 4 * 2**20


# -- frameworks --------------------------------------------------------------------------


def test_flask_view_and_downloader(tmp_path: Path) -> None:
    flask = pytest.importorskip("flask")
    app = flask.Flask(__name__)
    (tmp_path / "a.txt").write_text("0123456789")
    downloads = Downloader(root=tmp_path, on_error="include")

    @app.get("/file/<name>")
    def one(name: str) -> Any:
        return downloads(tmp_path / name, environ=flask.request)

    @app.get("/zip")
    def both() -> Any:
        names = flask.request.args.getlist("name")
        return downloads(
            [tmp_path / n for n in names], "selection.zip", environ=flask.request.environ
        )

    meter = UploadMeterMiddleware(app.wsgi_app, secret_key="s", store=MemoryStore())
    with serve_in_thread(meter) as base:
        client = Client(base)
        status, _, body = client.request("GET", "/file/a.txt", headers={"Range": "bytes=2-4"})
        assert (status, body) == (206, b"234")
        assert client.request("GET", "/file/nope.txt")[0] == 404
        status, _, body = client.request("GET", "/zip?name=a.txt&name=nope.txt")
        archive = open_zip(body)
        assert archive.namelist() == ["a.txt", "nope.txt.error.txt"]
