"""The tus ``concatenation`` and ``creation-defer-length`` extensions over real HTTP
(werkzeug's server): parallel partial uploads joined into one final upload that is
delivered once, lengths declared late, and the hostile final uploads they allow.
(tus-js-client with ``parallelUploads`` under gunicorn: tests/integration/test_tus_clients.py.)
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

import pytest

from tests.resumable.test_tus import TUS, V, b64, create, patch
from tests.support.chunked_app import read_completions
from tests.support.chunked_support import ChunkClient, served
from uploadmeter.core._locks import StoreLock

MAX_SIZE = 100_000


@pytest.fixture
def server(tmp_path: Any) -> Any:
    with served(str(tmp_path), tus_options={"max_size": MAX_SIZE}) as s:
        yield s


def partial(c: ChunkClient, data: bytes) -> str:
    """A finished partial upload of ``data``: its URL."""
    url = create(c, len(data), **{"Upload-Concat": "partial"})
    if data:
        status, h, body = patch(c, url, 0, data)
        assert status == 204 and h["upload-offset"] == str(len(data)), body
    return url


def final(c: ChunkClient, *urls: str, **headers: str) -> tuple[int, dict[str, str], bytes]:
    concat = {**V, "Upload-Concat": "final;" + " ".join(urls), **headers}
    return c.request("POST", TUS, b"", concat)


def tus_uploads(directory: str) -> set[str]:
    """Ids of the tus uploads on disk."""
    root = os.path.join(directory, "tus")
    return {u for s in os.listdir(root) for u in os.listdir(os.path.join(root, s))}


# -- concatenation -------------------------------------------------------------------------


def test_partial_uploads_are_joined_in_order_and_delivered_once(server: Any) -> None:
    c = server.client()
    parts = [os.urandom(n) for n in (3000, 1, 0, 4096)]
    urls = [partial(c, p) for p in parts]
    # A partial upload says so, and is never delivered on its own.
    status, h, _ = c.request("HEAD", urls[0], headers=V)
    assert status == 200 and h["upload-concat"] == "partial"
    assert h["upload-offset"] == h["upload-length"] == "3000"
    assert read_completions(server.directory) == []

    # Relative and absolute URLs, in this order, one of them twice (the spec allows it).
    order = [urls[3], server.url + urls[0], urls[1], urls[2], urls[0]]
    whole = parts[3] + parts[0] + parts[1] + parts[2] + parts[0]
    status, h, body = final(c, *order, **{"Upload-Metadata": f"filename {b64('whole.bin')}"})
    assert status == 201, body
    url = h["location"]
    final_id = url.rsplit("/", 1)[1]

    (done,) = read_completions(server.directory)
    assert done["upload_id"] == final_id and done["filename"] == "whole.bin"
    assert done["sha256"] == hashlib.sha256(whole).hexdigest()
    assert done["md5"] == hashlib.md5(whole).hexdigest() and done["size"] == len(whole)
    with open(done["path"], "rb") as f:
        assert f.read() == whole
    record = c.progress(final_id)
    assert record["state"] == "done" and record["result"]["sha256"] == done["sha256"]

    status, h, _ = c.request("HEAD", url, headers=V)
    assert status == 200
    assert h["upload-offset"] == h["upload-length"] == str(len(whole))
    assert h["upload-concat"] == "final;" + " ".join(order)
    assert h["upload-metadata"] == f"filename {b64('whole.bin')}"
    # A final upload is never PATCHed, not even at its end.
    status, _, body = patch(c, url, len(whole), b"")
    assert status == 403 and b"final upload" in body
    # The partial uploads went once joined: no second copy waits for its expiry.
    assert tus_uploads(server.directory) == {final_id}
    status, _, body = c.request("HEAD", urls[0], headers=V)
    assert status == 410
    # Reusing one is refused clearly, and nothing more is delivered.
    status, _, body = final(c, urls[1])
    assert status == 410 and urls[1].encode() in body
    assert len(read_completions(server.directory)) == 1
    # Partial uploads hold no records of their own: the session sees one upload.
    for u in urls:
        assert c.progress(u.rsplit("/", 1)[1])["state"] == "unknown"


def test_final_uploads_that_name_what_they_may_not_are_refused(server: Any) -> None:
    c, other = server.client(), server.client()
    finished = partial(c, b"abc")
    unfinished = create(c, 10, **{"Upload-Concat": "partial"})
    assert patch(c, unfinished, 0, b"12345")[0] == 204
    deferred = create_deferred(c, **{"Upload-Concat": "partial"})
    whole = create(c, 3)
    assert patch(c, whole, 0, b"xyz")[0] == 204  # a finished upload, but not partial
    theirs = partial(other, b"secret")  # another session's partial upload
    big = [partial(c, os.urandom(MAX_SIZE // 2 + 1)) for _ in range(2)]
    known = tus_uploads(server.directory)
    missing = TUS + finished.rsplit("/", 1)[1][:-3] + "AAA"

    for urls, status, words in (
        ([finished, missing], 404, "unknown upload: " + missing),
        ([finished, TUS + "../../etc/passwd"], 404, "unknown upload"),
        ([finished, "http://127.0.0.1:1/"], 404, "unknown upload"),
        ([theirs, finished], 404, "unknown upload: " + theirs),
        ([finished, unfinished], 400, "unfinished partial upload: " + unfinished),
        ([deferred], 400, "unfinished partial upload: " + deferred),
        ([finished, whole], 400, "not partial: " + whole),
        (big, 413, f"at most {MAX_SIZE} bytes"),
    ):
        status_got, _, body = final(c, *urls)
        assert (status_got, words.encode() in body) == (status, True), (urls, body)
    for headers, words in (
        ({"Upload-Length": "3"}, "no Upload-Length"),
        ({"Upload-Concat": "final;"}, "must be 'partial'"),
    ):
        status_got, _, body = final(c, finished, **headers)
        assert status_got == 400 and words.encode() in body, body
    status_got, _, body = c.request("POST", TUS, b"abc", {**V, "Upload-Concat": "final;" + finished,
        "Content-Type": "application/offset+octet-stream"})  # fmt: skip
    assert status_got == 400 and b"no data" in body

    # Nothing was created, delivered or deleted: the good partial upload still joins.
    assert tus_uploads(server.directory) == known
    (whole_done,) = read_completions(server.directory)
    assert whole_done["upload_id"] == whole.rsplit("/", 1)[1]  # the one upload that was not partial
    status, _, body = final(c, finished)
    assert status == 201, body
    (_, done) = read_completions(server.directory)
    assert done["sha256"] == hashlib.sha256(b"abc").hexdigest()


def test_partial_uploads_created_without_a_session_join_any_final_upload(server: Any) -> None:
    """tus-js-client in Node keeps no cookie, and a browser's parallel first requests
    each get a new session: partial uploads created without one are protected by their
    URL alone, as every tus upload is.  One created in a session stays in it."""
    anonymous = [ChunkClient(server.url) for _ in range(2)]  # each is issued a session
    urls = [partial(a, data) for a, data in zip(anonymous, (b"one ", b"two"), strict=True)]
    assert anonymous[0].cookies != anonymous[1].cookies
    c = server.client()
    mine = partial(c, b"!")
    status, _, body = final(ChunkClient(server.url), *urls, mine)  # no session: not mine
    assert status == 404 and mine.encode() in body
    status, _, body = final(c, *urls, mine)
    assert status == 201, body
    (done,) = read_completions(server.directory)
    assert done["sha256"] == hashlib.sha256(b"one two!").hexdigest()


def test_a_final_upload_with_a_partial_being_written_waits_or_is_423(tmp_path: Any) -> None:
    """The partial uploads are locked while they are joined: a final upload whose part a
    PATCH holds gets ``423`` after ``lock_wait``, and joins once the PATCH is over."""
    with served(str(tmp_path), tus_options={"lock_wait": 0.2}) as server:
        c = server.client()
        url = partial(c, b"part")
        lock = StoreLock(server.meter.store, "tus:" + url.rsplit("/", 1)[1], ttl=30, wait=0)
        assert lock.try_acquire()
        status, _, body = final(c, url)
        assert status == 423, body
        lock.release()
        assert final(c, url)[0] == 201


# -- creation-defer-length -----------------------------------------------------------------


def test_a_deferred_length_is_declared_by_a_later_patch(server: Any) -> None:
    c = server.client()
    data = os.urandom(5000)
    url = create_deferred(c)
    upload_id = url.rsplit("/", 1)[1]
    status, h, _ = c.request("HEAD", url, headers=V)
    assert status == 200 and h["upload-defer-length"] == "1"
    assert "upload-length" not in h and h["upload-offset"] == "0"

    status, h, _ = patch(c, url, 0, data[:2000])
    assert status == 204 and h["upload-offset"] == "2000"
    assert c.progress(upload_id)["bytes_received"] == 2000
    assert read_completions(server.directory) == []
    status, h, _ = c.request("HEAD", url, headers=V)
    assert (h["upload-offset"], h["upload-defer-length"]) == ("2000", "1")

    # Declared with the last data; HEAD then has the length and no longer defers.
    status, h, body = patch(c, url, 2000, data[2000:], **{"Upload-Length": str(len(data))})
    assert status == 204 and h["upload-offset"] == str(len(data)), body
    (done,) = read_completions(server.directory)
    assert done["sha256"] == hashlib.sha256(data).hexdigest() and done["size"] == len(data)
    record = c.progress(upload_id)
    assert record["state"] == "done" and record["content_length"] == len(data)
    status, h, _ = c.request("HEAD", url, headers=V)
    assert h["upload-length"] == h["upload-offset"] == str(len(data))
    assert "upload-defer-length" not in h
    # Once set, the length never changes.
    status, _, body = patch(c, url, len(data), b"", **{"Upload-Length": str(len(data) + 1)})
    assert status == 400 and b"cannot change" in body


def create_deferred(c: ChunkClient, **headers: str) -> str:
    status, h, body = c.request("POST", TUS, b"", {**V, "Upload-Defer-Length": "1", **headers})
    assert status == 201, body
    return h["location"]


def test_a_deferred_length_declared_by_an_empty_patch_finishes_the_upload(server: Any) -> None:
    c = server.client()
    url = create_deferred(c)
    assert patch(c, url, 0, b"hello")[0] == 204
    status, h, body = patch(c, url, 5, b"", **{"Upload-Length": "5"})
    assert status == 204 and h["upload-offset"] == "5", body
    (done,) = read_completions(server.directory)
    assert done["sha256"] == hashlib.sha256(b"hello").hexdigest()


def test_deferred_length_refusals(server: Any) -> None:
    c = server.client()
    url = create_deferred(c)
    assert patch(c, url, 0, b"12345")[0] == 204
    for length, data, status, words in (
        (str(MAX_SIZE + 1), b"", 413, f"at most {MAX_SIZE} bytes"),
        ("4", b"", 400, "less than Upload-Offset"),
        ("6", b"78", 413, "past Upload-Length"),
        ("x", b"", 400, "Upload-Length must be"),
    ):
        got, _, body = patch(c, url, 5, data, **{"Upload-Length": length})
        assert got == status and words.encode() in body, (length, body)
    # Until declared, data is bounded by the maximum size: refused before it is read.
    got, _, body = patch(c, url, 5, os.urandom(MAX_SIZE - 4))
    assert got == 413, body
    status, h, _ = c.request("HEAD", url, headers=V)
    assert h["upload-offset"] == "5" and h["upload-defer-length"] == "1"
    assert read_completions(server.directory) == []
    # A partial upload may defer its length too, and joins once it is declared.
    part = create_deferred(c, **{"Upload-Concat": "partial"})
    assert patch(c, part, 0, b"ab", **{"Upload-Length": "2"})[0] == 204
    status, _, body = final(c, part)
    assert status == 201, body
    (done,) = read_completions(server.directory)
    assert done["sha256"] == hashlib.sha256(b"ab").hexdigest()


def test_a_declared_length_counts_against_the_session_quota(tmp_path: Any) -> None:
    with served(str(tmp_path), tus_options={"session_quota": 1000}) as server:
        c = server.client()
        create(c, 600)  # unfinished: 600 of the session's 1000 bytes reserved
        url = create_deferred(c)
        assert patch(c, url, 0, b"x" * 10)[0] == 204
        status, _, body = patch(c, url, 10, b"", **{"Upload-Length": "401"})
        assert status == 413 and b"the limit is 1000" in body, body
        status, h, _ = c.request("HEAD", url, headers=V)
        assert h["upload-defer-length"] == "1"  # still deferred: nothing was set
        status, h, body = patch(c, url, 10, b"y" * 390, **{"Upload-Length": "400"})
        assert status == 204 and h["upload-offset"] == "400", body
        (done,) = read_completions(server.directory)
        assert done["sha256"] == hashlib.sha256(b"x" * 10 + b"y" * 390).hexdigest()
