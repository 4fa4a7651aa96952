"""uploadmeter's own endpoints against hostile input, through HTTP on a real server.

* Names XML cannot carry (U+FFFE, U+FFFF) in chunk and tus uploads: the polls stay valid.
* Every endpoint bounds what it reads: a merge request or a share's code form is a few KB;
  a bigger one is answered 413 before its body is read, whatever its framing.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import select
import socket
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Iterator
from typing import Any
from urllib.parse import urlencode, urlsplit

import pytest

from tests.support import download_apps
from tests.support.chunked_app import read_completions
from tests.support.chunked_support import CHUNKS, ChunkClient, ChunkedFile, served
from tests.support.servers import (
    Client,
    multipart_body,
    run_gunicorn,
    serve_in_thread,
    tcp_buffer_max,
)

TUS = "/uploadmeter/tus/"
V = {"Tus-Resumable": "1.0.0"}
# Legal in a file name and in JSON, not in XML 1.0.
NOT_XML_NAME = "report\ufffe v2\uffff.pdf"
SHOWN = "report\ufffd v2\ufffd.pdf"


@pytest.fixture
def server(tmp_path: Any) -> Any:
    with served(str(tmp_path)) as s:
        yield s


def polls(c: ChunkClient, upload_id: str) -> tuple[dict[str, Any], ET.Element]:
    """The JSON and the XML poll of ``upload_id``, both parsed (strict UTF-8)."""
    status, _, body = c.request("GET", f"/uploadmeter/progress?id={upload_id}")
    assert status == 200
    record = json.loads(body.decode("utf-8"))
    status, headers, body = c.request("GET", f"/uploadmeter/progress?id={upload_id}&format=xml")
    assert status == 200 and headers["content-type"].startswith("text/xml")
    return record, ET.fromstring(body)  # raises on a malformed document


def field_names(xml: ET.Element) -> list[str | None]:
    fields = xml.find("fields")
    assert fields is not None
    return [f.get("filename") for f in fields]


# -- names XML cannot carry (issue 10, item 12) ---------------------------------------------


def test_chunk_names_xml_cannot_carry_keep_both_polls_valid(server: Any) -> None:
    c = server.client()
    f = ChunkedFile.random(3 * 1024, 1024, filename=NOT_XML_NAME)
    status, body = c.post_chunk(f, 1)
    assert status == 200, body
    record, xml = polls(c, f.identifier)
    assert record["state"] == "uploading"
    assert [x["filename"] for x in record["fields"]] == [SHOWN]
    assert field_names(xml) == [SHOWN]

    c.post_chunk(f, 2)
    status, body = c.post_chunk(f, 3)
    assert status == 200, body
    record, xml = polls(c, f.identifier)
    assert record["state"] == "done" and xml.findtext("state") == "done"
    assert record["result"]["filename"] == SHOWN
    assert field_names(xml) == [SHOWN]
    (done,) = read_completions(server.directory)
    assert done["filename"] == NOT_XML_NAME  # the application gets the name as sent
    assert done["sha256"] == f.sha256


def test_tus_names_xml_cannot_carry_keep_both_polls_valid(server: Any) -> None:
    c = server.client()
    data = os.urandom(4096)
    meta = "filename " + base64.b64encode(NOT_XML_NAME.encode()).decode()
    status, headers, body = c.request(
        "POST", TUS, b"", {**V, "Upload-Length": str(len(data)), "Upload-Metadata": meta}
    )
    assert status == 201, body
    url = headers["location"]
    upload_id = url.rsplit("/", 1)[1]
    patch = {**V, "Content-Type": "application/offset+octet-stream"}
    assert c.request("PATCH", url, data[:1000], {**patch, "Upload-Offset": "0"})[0] == 204
    record, xml = polls(c, upload_id)
    assert record["state"] == "uploading"
    assert [x["filename"] for x in record["fields"]] == [SHOWN]
    assert field_names(xml) == [SHOWN]

    assert c.request("PATCH", url, data[1000:], {**patch, "Upload-Offset": "1000"})[0] == 204
    record, xml = polls(c, upload_id)
    assert record["state"] == "done" and xml.findtext("state") == "done"
    assert record["result"]["filename"] == SHOWN
    assert field_names(xml) == [SHOWN]
    (done,) = read_completions(server.directory)
    assert done["filename"] == NOT_XML_NAME
    assert done["sha256"] == hashlib.sha256(data).hexdigest()


# -- bounded bodies (issue 10, item 8) ------------------------------------------------------

MERGE = "/uploadmeter/chunks/merge"
HUGE = 200 * 1024 * 1024  # what the request says it sends: never read
ANSWER_WITHIN = 10.0  # seconds; a server still reading the body never answers


def answer_to(
    base: str, head: bytes, pieces: Iterable[bytes]
) -> tuple[int, dict[str, str], bytes, int]:
    """Send ``head``, then ``pieces`` until the server answers or stops reading.

    Returns ``(status, headers, body, body bytes sent)``.  Raises ``TimeoutError`` when
    no answer comes within ANSWER_WITHIN seconds of the last piece.
    """
    port = urlsplit(base).port
    with socket.create_connection(("127.0.0.1", port), timeout=ANSWER_WITHIN) as sock:
        sock.sendall(head)
        sent = 0
        for piece in pieces:
            if select.select([sock], [], [], 0)[0]:
                break  # the answer is there
            try:
                sock.sendall(piece)
            except OSError:
                break  # the server closed the connection: it reads no more
            sent += len(piece)
        data = b""
        with contextlib.suppress(ConnectionResetError):  # closed with our bytes unread
            while True:
                chunk = sock.recv(65536)
                data += chunk
                head_bytes, sep, body = data.partition(b"\r\n\r\n")
                if not chunk or (sep and len(body) >= _length(head_bytes)):
                    break
    head_bytes, _, body = data.partition(b"\r\n\r\n")
    lines = head_bytes.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
    return int(lines[0].split(" ", 2)[1]), headers, body, sent


def _length(head: bytes) -> int:
    for line in head.decode("latin-1").split("\r\n")[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            return int(value)
    return 1 << 62  # none: read to the end


def request_head(path: str, cookie: str, content_type: str, length: int | None) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", f"Content-Type: {content_type}"]
    lines.append(
        f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked"
    )
    if cookie:
        lines.append(f"Cookie: {cookie}")
    lines.append("Accept: application/json")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def body_pieces(chunked: bool, *, total: int = 64 * 1024 * 1024) -> Iterator[bytes]:
    """``total`` bytes of a body in 16 KiB pieces; chunked frames never terminated."""
    block = b"[" * 16 * 1024
    for _ in range(total // len(block)):
        yield b"%x\r\n%s\r\n" % (len(block), block) if chunked else block


def content_length_body() -> Iterator[bytes]:
    """A 200 MB body, sent on and on until the server answers or stops reading."""
    return body_pieces(False)


# A server that answers at the 32 KiB mark stops the client within what the loopback socket
# buffers take before its answer is seen (2.8 MB measured; the auto-tuning maxima bound it,
# 10 MiB on Linux's defaults); one that read the body first would take all 64 MiB (and then
# never answer, the body being 200 MB).
SENT_BEFORE_THE_ANSWER = tcp_buffer_max("tcp_wmem") + tcp_buffer_max("tcp_rmem")


@pytest.fixture(scope="module", params=["werkzeug", "gunicorn"])
def chunk_server(request: Any, tmp_path_factory: Any) -> Iterator[str]:
    directory = tmp_path_factory.mktemp("chunks")
    if request.param == "werkzeug":
        with served(str(directory)) as s:
            yield s.url
        return
    env = {
        "UPLOADMETER_TEST_STORE": f"sqlite://{directory}/store.sqlite3",
        "UPLOADMETER_TEST_FILES": str(directory / "files"),
    }
    with run_gunicorn("tests.support.chunked_app:make_app()", workers=2, env=env) as url:
        yield url


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
@pytest.mark.parametrize(
    "content_type", ["application/json", "multipart/form-data; boundary=x", "text/plain"]
)
def test_a_big_merge_request_is_refused_before_its_body_is_read(
    chunk_server: str, content_type: str, chunked: bool
) -> None:
    """200 MB to {prefix}/chunks/merge: 413 while the client has sent a small part."""
    c = ChunkClient(chunk_server)
    c.start()
    head = request_head(MERGE, c.cookie_header(), content_type, None if chunked else HUGE)
    pieces = body_pieces(True) if chunked else content_length_body()
    status, headers, body, sent = answer_to(chunk_server, head, pieces)
    assert status == 413, body
    assert headers["content-type"] == "application/json"
    error = json.loads(body)["error"]
    assert error["reason"] == "too_large" and "32768 bytes" in error["message"]
    assert sent <= SENT_BEFORE_THE_ANSWER, sent  # answered at the 32 KiB mark
    # And without a session, nothing is read either.
    head = request_head(MERGE, "", content_type, HUGE)
    status, _, body, _ = answer_to(chunk_server, head, content_length_body())
    assert status == 415 and json.loads(body)["error"]["reason"] == "no_session"


# A gunicorn config whose workers log every file they open under $TMPDIR and the chunk
# store's tmp/ (Python's audit hook sees tempfile.TemporaryFile's nameless O_TMPFILE open
# too, as an open of the dir).
_OPEN_LOGGER = """
import os, sys

def post_fork(server, worker):
    watched = os.environ["UM_TEST_WATCH"].split(os.pathsep)
    log = os.environ["UM_TEST_OPEN_LOG"]

    def hook(event, args):
        if event == "open" and isinstance(args[0], (str, bytes)):
            path = os.fsdecode(args[0])
            if any(path == d or path.startswith(d + "/") for d in watched):
                with open(log, "a") as f:  # not in a watched dir: not logged itself
                    f.write(path + "\\n")

    sys.addaudithook(hook)
"""


@pytest.fixture(scope="module")
def spool_watch(tmp_path_factory: Any) -> Iterator[tuple[str, Any]]:
    """``gunicorn -w 2`` with a temp dir of its own whose workers log each file they open
    in it or in the chunk store's tmp/: ``(url, the log)``."""
    directory = tmp_path_factory.mktemp("spool")
    temp = directory / "tmp"
    temp.mkdir()
    log = directory / "opened-in-tmp.log"
    log.write_text("")
    (directory / "gunicorn_conf.py").write_text(_OPEN_LOGGER)
    env = {
        "TMPDIR": str(temp),
        "UM_TEST_OPEN_LOG": str(log),
        "UM_TEST_WATCH": os.pathsep.join([str(temp), str(directory / "files" / "tmp")]),
        "UPLOADMETER_TEST_STORE": f"sqlite://{directory}/store.sqlite3",
        "UPLOADMETER_TEST_FILES": str(directory / "files"),
    }
    args = ("-c", str(directory / "gunicorn_conf.py"))
    with run_gunicorn("tests.support.chunked_app:make_app()", workers=2, env=env, args=args) as url:
        yield url, log


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_multipart_merge_near_the_cap_spools_nothing(
    spool_watch: tuple[str, Any], chunked: bool
) -> None:
    """A 31 KiB file part in a merge form is parsed in memory: the worker opens no file in
    its temp dir."""
    url, log = spool_watch
    c = ChunkClient(url)
    c.start()
    body, ctype = multipart_body([("identifier", None, b"abc"), ("f", "f.bin", b"x" * 31 * 1024)])
    head = request_head(MERGE, c.cookie_header(), ctype, None if chunked else len(body))
    framed = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body) if chunked else body
    before = log.read_text()
    status, headers, answer, _ = answer_to(url, head, [framed])
    assert 400 <= status < 500 and headers["content-type"] == "application/json", answer
    assert b"too_large" not in answer  # near the cap, not over it: the body was parsed
    assert log.read_text() == before  # nothing spooled


# -- a chunk's body is bounded by its declared size (issue 10, item 8) ---------------------

CHUNK_FRAMINGS = ["octet", "multipart+query", "multipart"]
CLAIMED = 100 * 1024 * 1024  # the Content-Length of a chunk declared as 1 KiB


def chunk_request(
    c: ChunkClient, f: ChunkedFile, number: int, how: str, *, chunked: bool, length: int
) -> tuple[bytes, bytes]:
    """``(head, what precedes the chunk's bytes)`` of a chunk POST framed ``how``:
    ``octet`` (parameters in the query, as the clients send with ``method: "octet"``),
    ``multipart+query`` (in the query and the form, as resumable.js does) or ``multipart``
    (in the form only, as simple-uploader.js and flow.js do).  ``length`` is the chunk's
    byte count the head announces (with the multipart framing around it)."""
    params = f.params(number)
    path = CHUNKS if how == "multipart" else CHUNKS + "?" + urlencode(params)
    if how == "octet":
        prefix, tail, ctype = b"", b"", "application/octet-stream"
    else:
        fields = [(k, None, str(v).encode()) for k, v in params.items()]
        form, ctype = multipart_body([*fields, ("file", "blob", b"")])
        tail = b"\r\n--uMbOuNdArY7x2--\r\n"
        prefix = form[: -len(tail)]
    head = request_head(
        path, c.cookie_header(), ctype, None if chunked else len(prefix) + length + len(tail)
    )
    return head, prefix


def framed(pieces: Iterable[bytes], chunked: bool, *, end: bool) -> Iterator[bytes]:
    for piece in pieces:
        yield b"%x\r\n%s\r\n" % (len(piece), piece) if chunked and piece else piece
    if chunked and end:
        yield b"0\r\n\r\n"


@pytest.fixture(scope="module", params=["werkzeug", "gunicorn"])
def chunk_site(request: Any, tmp_path_factory: Any) -> Iterator[tuple[str, Any]]:
    """The chunk endpoint on werkzeug's server, and on ``gunicorn -w 2`` whose workers log
    every file they open in $TMPDIR and the chunk store's tmp/: ``(url, the log or None)``."""
    if request.param == "gunicorn":
        yield request.getfixturevalue("spool_watch")
        return
    with served(str(tmp_path_factory.mktemp("chunk-site"))) as s:
        yield s.url, None


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
@pytest.mark.parametrize("how", CHUNK_FRAMINGS)
def test_a_chunk_bigger_than_declared_is_refused_before_its_body_is_read(
    chunk_site: tuple[str, Any], how: str, chunked: bool
) -> None:
    """100 MiB against a chunk declared as 1 KiB: 413 while the client has sent a few MiB,
    and no file is opened for it (with Content-Length: before a byte of the chunk is read;
    chunked: at the 1 KiB mark)."""
    url, log = chunk_site
    c = ChunkClient(url)
    c.start()
    f = ChunkedFile.random(3 * 1024, 1024)
    head, prefix = chunk_request(c, f, 1, how, chunked=chunked, length=CLAIMED)
    data = (b"x" * 16 * 1024 for _ in range(CLAIMED // (16 * 1024)))
    before = log.read_text() if log else ""
    status, headers, body, sent = answer_to(url, head, framed([prefix, *data], chunked, end=False))
    assert (status, sent <= SENT_BEFORE_THE_ANSWER) == (413, True), (status, sent, body)
    assert headers["content-type"] == "application/json"
    assert json.loads(body)["error"]["reason"] == "too_large"
    if log:
        opened = log.read_text()[len(before) :].split()
        if chunked:  # read up to the limit into a temp file, which is gone
            assert len(opened) <= 1 and not any(map(os.path.exists, opened)), opened
        else:
            assert opened == []  # no temp file was opened for it
    # The same chunk, whole and as declared, is stored.
    head, prefix = chunk_request(c, f, 1, how, chunked=chunked, length=1024)
    tail = b"" if how == "octet" else b"\r\n--uMbOuNdArY7x2--\r\n"
    status, _, body, _ = answer_to(url, head, framed([prefix, f.piece(1), tail], chunked, end=True))
    assert status == 200 and json.loads(body)["uploaded"] == [1], body
    if log:
        assert "/files/tmp/" in log.read_text()[len(before) :]  # the log sees a chunk's file


@pytest.mark.parametrize("how", CHUNK_FRAMINGS)
def test_a_chunk_of_a_finished_or_cancelled_upload_is_answered_before_its_body(
    chunk_server: str, how: str
) -> None:
    """A 1 MiB chunk POST is answered when the client has sent its head and fields and
    64 KiB of the chunk (the multipart parser reads 64 KiB blocks); the rest never comes."""
    c = ChunkClient(chunk_server)
    c.start()
    mib = 1024 * 1024
    f = ChunkedFile.random(3 * mib, mib)
    assert c.upload(f)["complete"]
    head, prefix = chunk_request(c, f, 2, how, chunked=False, length=mib)
    status, _, body, _ = answer_to(chunk_server, head, [prefix, f.piece(2)[: 64 * 1024]])
    assert status == 200, body
    assert json.loads(body)["complete"] is True  # a late duplicate: told it is complete

    g = ChunkedFile.random(3 * mib, mib)
    assert c.post_chunk(g, 1)[0] == 200
    status, _, data = c.request("POST", f"/uploadmeter/cancel?id={g.identifier}")
    assert status == 200, data
    head, prefix = chunk_request(c, g, 2, how, chunked=False, length=mib)
    status, _, body, _ = answer_to(chunk_server, head, [prefix, g.piece(2)[: 64 * 1024]])
    assert status == 415 and json.loads(body)["error"]["reason"] == "cancelled", body

    anonymous = ChunkClient(chunk_server)
    head, prefix = chunk_request(anonymous, g, 2, how, chunked=False, length=CLAIMED)
    status, _, body, _ = answer_to(chunk_server, head, [prefix])
    assert status == 415 and json.loads(body)["error"]["reason"] == "no_session", body


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_chunks_as_declared_are_stored_in_every_framing(chunk_server: str, chunked: bool) -> None:
    """A 1 MiB + 1 KiB file in three framings (the last chunk takes the remainder)."""
    c = ChunkClient(chunk_server)
    c.start()
    f = ChunkedFile.random(3 * 1024 * 1024 // 3 + 1024, 1024 * 1024 // 3)
    assert f.total_chunks == 3
    body: dict[str, Any] = {}
    for number, how in enumerate(CHUNK_FRAMINGS, 1):
        piece = f.piece(number)
        head, prefix = chunk_request(c, f, number, how, chunked=chunked, length=len(piece))
        tail = b"" if how == "octet" else b"\r\n--uMbOuNdArY7x2--\r\n"
        status, _, data, _ = answer_to(
            chunk_server, head, framed([prefix, piece, tail], chunked, end=True)
        )
        assert status == 200, data
        body = json.loads(data)
    assert body["complete"] is True and body["result"]["url"] == "/files/" + f.sha256


def test_merge_bodies_that_are_not_parameters_get_a_clear_400(server: Any) -> None:
    c = server.client()
    json_type = {"Content-Type": "application/json"}
    for data, message in (
        (b"[" * 20_000, "The JSON body is nested too deeply."),  # within the size cap
        (b'{"identifier": ', "The request body is not valid JSON."),
        (b"\xff\xfe{}", "The request body is not valid JSON."),
        (b"[1, 2]", "The JSON body must be an object."),
    ):
        status, headers, body = c.request("POST", MERGE, data, json_type)
        assert status == 400, (data[:20], body)
        assert headers["content-type"] == "application/json"
        error = json.loads(body)["error"]
        assert (error["reason"], error["message"]) == ("bad_json", message)
        assert b"Traceback" not in body
    status, _, body = c.request("POST", MERGE, b"[" * 100_000, json_type)
    assert status == 413 and json.loads(body)["error"]["reason"] == "too_large"


def test_a_small_merge_request_still_merges(tmp_path: Any) -> None:
    """Query, form and JSON parameters all still work under the cap."""
    with served(str(tmp_path), chunk_options={"auto_merge": False}) as s:
        for how in ("query", "form", "json"):
            c = s.client()
            f = ChunkedFile.random(4096, 1024)
            c.upload(f)
            params = f.params(relativePath="deep/" * 800 + f.filename)  # 4 KB, allowed
            if how == "query":
                status, _, data = c.request("POST", MERGE + "?" + urlencode(params))
            elif how == "form":
                form, ctype = multipart_body(
                    [(k, None, str(v).encode()) for k, v in params.items()]
                )
                status, _, data = c.request("POST", MERGE, form, {"Content-Type": ctype})
            else:
                body = json.dumps(params).encode()
                status, _, data = c.request(
                    "POST", MERGE, body, {"Content-Type": "application/json"}
                )
            assert status == 200, data
            assert json.loads(data)["complete"] is True
        assert len(read_completions(s.directory)) == 3


@pytest.fixture(scope="module", params=["werkzeug", "gunicorn"])
def links_server(request: Any, tmp_path_factory: Any) -> Iterator[str]:
    """``download_apps`` (links at {prefix}/d, ``POST /make/share``) on a real server."""
    directory = tmp_path_factory.mktemp("links")
    if request.param == "werkzeug":
        with pytest.MonkeyPatch.context() as env:
            env.setenv("UM_STORE", "memory://")
            app = download_apps.make_app()
        with serve_in_thread(app) as base:
            yield base
        return
    env = {"UM_STORE": f"sqlite://{directory}/store.sqlite3", "UM_FILES": str(directory)}
    with run_gunicorn("tests.support.download_apps:make_app()", workers=2, env=env) as base:
        yield base


@pytest.fixture
def share_site(links_server: str) -> tuple[str, str]:
    """A new share of "notes" behind the code ABCD: ``(base URL, share path)``."""
    status, _, body = Client(links_server).request("POST", "/make/share?target=notes&code=ABCD")
    assert status == 200, body
    return links_server, json.loads(body)["url"]


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
@pytest.mark.parametrize(
    "content_type", ["multipart/form-data; boundary=x", "application/x-www-form-urlencoded"]
)
def test_a_big_share_code_form_is_refused_before_its_body_is_read(
    share_site: tuple[str, str], content_type: str, chunked: bool
) -> None:
    base, share = share_site
    head = request_head(share, "", content_type, None if chunked else HUGE)
    pieces = body_pieces(True) if chunked else content_length_body()
    status, headers, body, sent = answer_to(base, head, pieces)
    assert status == 413, body
    assert headers["content-type"] == "application/json"
    assert "at most 32768 bytes" in json.loads(body)["error"]["message"]
    assert sent <= SENT_BEFORE_THE_ANSWER, sent
    # The code form itself still works, as a form or as a header.
    status, headers, _ = Client(base).request(
        "POST", share, b"code=abcd", {"Content-Type": "application/x-www-form-urlencoded"}
    )
    assert status == 303 and "/l/" in headers["location"]
