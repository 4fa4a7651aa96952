"""The tus 1.0.0 server: every header and status of the core protocol and the creation,
creation-with-upload, termination, checksum and expiration extensions over real HTTP, the
cross-process lock that serializes PATCH requests, and the real ``tuspy`` client under
gunicorn with several workers (SQLite and Redis stores)."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import time
from collections.abc import Iterator
from typing import Any

import pytest
from tusclient import client as tus_client
from tusclient.exceptions import TusCommunicationError
from tusclient.storage.filestorage import FileStorage

from tests.support.chunked_app import make_app, read_completions
from tests.support.chunked_support import ChunkClient, run_workers, serve_asgi, serve_fast, served
from tests.support.servers import RawUpload, wait_until
from uploadmeter.resumable import UploadRejected
from uploadmeter.stores import open_store

TUS = "/uploadmeter/tus/"
V = {"Tus-Resumable": "1.0.0"}
KB = 1024


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def create(c: ChunkClient, length: int, **headers: str) -> str:
    status, h, body = c.request("POST", TUS, b"", {**V, "Upload-Length": str(length), **headers})
    assert status == 201, (status, body)
    assert h["tus-resumable"] == "1.0.0"
    return h["location"]


def patch(
    c: ChunkClient, url: str, offset: int, data: bytes, **headers: str
) -> tuple[int, dict[str, str], bytes]:
    all_headers = {
        **V,
        "Content-Type": "application/offset+octet-stream",
        "Upload-Offset": str(offset),
        **headers,
    }
    return c.request("PATCH", url, data, all_headers)


@pytest.fixture(params=["wsgi", "asgi"])
def server(tmp_path: Any, request: Any) -> Any:
    """The endpoints on each shell: the WSGI middleware (werkzeug's server) and the ASGI
    middleware (uvicorn), mounted the same way; the same answers are expected."""
    with served(str(tmp_path), shell=request.param) as s:
        yield s


# -- core ------------------------------------------------------------------------------------


def test_options_announces_version_extensions_and_limits(server: Any) -> None:
    c = ChunkClient(server.url)
    status, h, _ = c.request("OPTIONS", TUS)  # no Tus-Resumable needed
    assert status == 204
    assert h["tus-version"] == "1.0.0"
    assert h["tus-resumable"] == "1.0.0"
    assert set(h["tus-extension"].split(",")) == {
        "creation",
        "creation-with-upload",
        "termination",
        "checksum",
        "expiration",
        "creation-defer-length",
        "concatenation",
    }
    assert "sha1" in h["tus-checksum-algorithm"].split(",")
    assert int(h["tus-max-size"]) == 4 * 1024**3


@pytest.mark.parametrize("version", [None, "0.2.2", "2.0.0"])
def test_unsupported_version_is_412_and_not_processed(server: Any, version: str | None) -> None:
    c = server.client()
    headers = {"Upload-Length": "10"}
    if version:
        headers["Tus-Resumable"] = version
    status, h, _ = c.request("POST", TUS, b"", headers)
    assert status == 412 and h["tus-version"] == "1.0.0"
    assert os.listdir(os.path.join(server.directory, "tus")) == []


def test_create_head_patch_to_completion(server: Any) -> None:
    c = server.client()
    data = os.urandom(10 * KB)
    meta = f"filename {b64('report.pdf')},is_confidential"
    url = create(c, len(data), **{"Upload-Metadata": meta})
    assert url.startswith(TUS) and len(url) > len(TUS) + 20

    status, h, _ = c.request("HEAD", url, headers=V)
    assert status == 200
    assert (h["upload-offset"], h["upload-length"]) == ("0", str(len(data)))
    assert h["cache-control"] == "no-store"
    assert h["upload-metadata"] == meta
    assert "upload-expires" in h

    status, h, _ = patch(c, url, 0, data[:4000])
    assert status == 204 and h["upload-offset"] == "4000" and "upload-expires" in h
    upload_id = url.rsplit("/", 1)[1]
    record = c.progress(upload_id)
    assert record["state"] == "uploading" and record["bytes_received"] == 4000
    assert record["fields"][0]["filename"] == "report.pdf"

    status, h, _ = patch(c, url, 4000, data[4000:])
    assert status == 204 and h["upload-offset"] == str(len(data))
    record = c.progress(upload_id)
    assert record["state"] == "done"
    assert record["result"]["sha256"] == hashlib.sha256(data).hexdigest()
    (done,) = read_completions(server.directory)
    assert done["metadata"] == {"filename": "report.pdf", "is_confidential": ""}
    assert done["protocol"] == "tus" and done["filename"] == "report.pdf"
    with open(done["path"], "rb") as f:
        assert f.read() == data

    status, h, _ = c.request("HEAD", url, headers=V)  # a finished upload still answers
    assert status == 200 and h["upload-offset"] == h["upload-length"] == str(len(data))
    status, h, _ = patch(c, url, len(data), b"")  # an empty PATCH at the end: a no-op
    assert status == 204 and h["upload-offset"] == str(len(data))
    assert patch(c, url, len(data), b"x")[0] == 413
    assert len(read_completions(server.directory)) == 1


def test_patch_refusals(server: Any) -> None:
    c = server.client()
    url = create(c, 100)
    status, h, _ = patch(c, url, 0, b"x" * 10, **{"Content-Type": "application/octet-stream"})
    assert status == 415 and h["tus-resumable"] == "1.0.0"
    status, h, _ = patch(c, url, 5, b"x" * 10)
    assert status == 409 and h["upload-offset"] == "0"
    status, _, _ = patch(c, url, 0, b"x" * 10, **{"Upload-Offset": "-1"})
    assert status == 400
    status, _, _ = patch(c, url, 0, b"x" * 101)
    assert status == 413
    status, h, _ = c.request("HEAD", url, headers=V)
    assert h["upload-offset"] == "0"  # nothing was modified
    status, _, _ = patch(c, TUS + "A" * 24, 0, b"x")
    assert status == 404
    status, _, _ = patch(c, TUS + "../../etc", 0, b"x")
    assert status == 404


def test_creation_refusals(server: Any) -> None:
    c = server.client()
    status, _, _ = c.request("POST", TUS, b"", V)
    assert status == 400  # no Upload-Length
    status, _, _ = c.request("POST", TUS, b"", {**V, "Upload-Length": "-5"})
    assert status == 400
    status, _, _ = c.request("POST", TUS, b"", {**V, "Upload-Defer-Length": "0"})
    assert status == 400  # creation-defer-length takes 1 only
    status, _, _ = c.request("POST", TUS, b"", {**V, "Upload-Length": str(5 * 1024**3)})
    assert status == 413
    for bad in ("a b!c", "k djE=,k djI=", "k\xe9y djE=", "k not base64!", "k,,j", "k djE"):
        status, _, _ = c.request(
            "POST", TUS, b"", {**V, "Upload-Length": "5", "Upload-Metadata": bad}
        )
        assert status == 400, bad
    status, _, _ = c.request(
        "POST",
        TUS,
        b"",
        {**V, "Upload-Length": "5", "Upload-Metadata": "filename " + b64("../x")},
    )
    assert status == 400
    assert os.listdir(os.path.join(server.directory, "tus")) == []


def test_a_creation_without_a_session_is_issued_one(server: Any) -> None:
    anonymous = ChunkClient(server.url)
    status, h, _ = anonymous.request("POST", TUS, b"", {**V, "Upload-Length": "5"})
    assert status == 201 and "uploadmeter_session=" in h["set-cookie"]
    upload_id = h["location"].rsplit("/", 1)[1]
    assert anonymous.progress(upload_id)["state"] == "uploading"  # the cookie reads it
    # The URL alone (no cookie, as tus-js-client in Node) resumes and completes it.
    bare = ChunkClient(server.url)
    assert patch(bare, h["location"], 0, b"12345")[0] == 204 and not bare.cookies
    assert anonymous.progress(upload_id)["state"] == "done"


def test_the_url_is_the_capability_and_records_stay_private(server: Any) -> None:
    owner, other = server.client(), server.client()
    url = create(owner, 10)
    upload_id = url.rsplit("/", 1)[1]
    # Another session that holds the URL may continue the upload (a browser whose cookie
    # changed between two parallel first creations does) ...
    assert other.request("HEAD", url, headers=V)[0] == 200
    assert patch(other, url, 0, b"x" * 4)[0] == 204
    # ... but the progress record stays the owner's alone.
    assert other.progress(upload_id)["state"] == "unknown"
    assert owner.progress(upload_id)["bytes_received"] == 4
    # A URL with any other random part, or another owner folder, names nothing.
    forged = url[:-1] + ("A" if url[-1] != "A" else "B")
    assert owner.request("HEAD", forged, headers=V)[0] == 404
    other_owner = TUS + "0" * 32 + upload_id[32:]
    assert owner.request("HEAD", other_owner, headers=V)[0] == 404


def test_creation_with_upload(server: Any) -> None:
    c = server.client()
    data = os.urandom(3000)
    headers = {
        **V,
        "Upload-Length": str(len(data)),
        "Content-Type": "application/offset+octet-stream",
    }
    status, h, _ = c.request("POST", TUS, data[:1000], headers)
    assert status == 201 and h["upload-offset"] == "1000"
    assert patch(c, h["location"], 1000, data[1000:])[0] == 204
    assert read_completions(server.directory)[0]["sha256"] == hashlib.sha256(data).hexdigest()
    # A body of another type is refused before anything is created.
    status, _, _ = c.request("POST", TUS, b"abc", {**V, "Upload-Length": "3"})
    assert status == 415
    # Zero-length uploads complete at creation.
    url = create(c, 0)
    assert c.request("HEAD", url, headers=V)[1]["upload-offset"] == "0"
    assert read_completions(server.directory)[-1]["size"] == 0


def test_checksum_extension(server: Any) -> None:
    c = server.client()
    url = create(c, 20)
    good = "sha1 " + base64.b64encode(hashlib.sha1(b"0123456789").digest()).decode()
    status, h, _ = patch(c, url, 0, b"0123456789", **{"Upload-Checksum": good})
    assert status == 204 and h["upload-offset"] == "10"
    bad = "sha1 " + base64.b64encode(hashlib.sha1(b"nope").digest()).decode()
    status, _, _ = patch(c, url, 10, b"abcdefghij", **{"Upload-Checksum": bad})
    assert status == 460
    assert c.request("HEAD", url, headers=V)[1]["upload-offset"] == "10"  # discarded
    status, _, _ = patch(c, url, 10, b"abcdefghij", **{"Upload-Checksum": "crc99 AAAA"})
    assert status == 400
    status, _, _ = patch(c, url, 10, b"abcdefghij", **{"Upload-Checksum": "sha1 !!!"})
    assert status == 400
    sha256 = "sha256 " + base64.b64encode(hashlib.sha256(b"abcdefghij").digest()).decode()
    assert patch(c, url, 10, b"abcdefghij", **{"Upload-Checksum": sha256})[0] == 204


def test_termination_then_gone(server: Any) -> None:
    c = server.client()
    url = create(c, 100)
    patch(c, url, 0, b"x" * 10)
    status, h, _ = c.request("DELETE", url, headers=V)
    assert status == 204 and h["tus-resumable"] == "1.0.0"
    assert c.request("HEAD", url, headers=V)[0] == 410
    assert patch(c, url, 10, b"x")[0] == 410
    assert c.progress(url.rsplit("/", 1)[1])["state"] == "cancelled"
    assert [names for _, _, names in os.walk(os.path.join(server.directory, "tus")) if names] == []


def test_expiration_header_and_expired_uploads(server: Any) -> None:
    c = server.client()
    url = create(c, 100)
    _, h, _ = patch(c, url, 0, b"x" * 10)
    expires = time.mktime(time.strptime(h["upload-expires"], "%a, %d %b %Y %H:%M:%S GMT"))
    assert abs(expires - time.timezone - (time.time() + 24 * 3600)) < 120
    # Age the upload past its expiry (white box: the info file holds the date).
    files = server.endpoint("/tus").files
    (info_path,) = [
        os.path.join(root, "info.json")
        for root, _, names in os.walk(files.tus_root)
        if "info.json" in names
    ]
    with open(info_path) as f:
        info = json.load(f)
    info["expires_at"] = time.time() - 1
    with open(info_path, "w") as f:
        json.dump(info, f)
    assert c.request("HEAD", url, headers=V)[0] == 410
    assert not os.path.exists(info_path)
    # Cleanup removes expired uploads nobody asks about.
    url2 = create(c, 100)
    stats = files.cleanup(now=time.time() + files.expire_after + 10)
    assert stats.tus == 1
    assert c.request("HEAD", url2, headers=V)[0] == 404


def test_head_finishes_an_upload_whose_worker_stopped_after_the_last_byte(server: Any) -> None:
    c = server.client()
    url = create(c, 10)
    patch(c, url, 0, b"01234")
    files = server.endpoint("/tus").files
    (data_path,) = [
        os.path.join(root, "data") for root, _, names in os.walk(files.tus_root) if "data" in names
    ]
    with open(data_path, "ab") as f:  # the last bytes landed, then the worker died
        f.write(b"56789")
    status, h, _ = c.request("HEAD", url, headers=V)
    assert status == 200 and h["upload-offset"] == "10"
    (done,) = read_completions(server.directory)
    assert done["sha256"] == hashlib.sha256(b"0123456789").hexdigest()
    assert c.request("HEAD", url, headers=V)[0] == 200
    assert len(read_completions(server.directory)) == 1


def test_x_http_method_override(server: Any) -> None:
    c = server.client()
    url = create(c, 10)
    headers = {
        **V,
        "X-HTTP-Method-Override": "PATCH",
        "Content-Type": "application/offset+octet-stream",
        "Upload-Offset": "0",
    }
    status, h, _ = c.request("POST", url, b"x" * 4, headers)
    assert status == 204 and h["upload-offset"] == "4"
    status, h, _ = c.request("POST", url, b"", {**V, "X-HTTP-Method-Override": "HEAD"})
    assert status == 200 and h["upload-offset"] == "4"
    status, _, _ = c.request("POST", url, b"", {**V, "X-HTTP-Method-Override": "DELETE"})
    assert status == 204
    assert c.request("HEAD", url, headers=V)[0] == 410


def test_cancel_endpoint_stops_a_patch_in_progress(server: Any) -> None:
    c = server.client()
    data = os.urandom(2 * 1024 * KB)
    url = create(c, len(data))
    upload_id = url.rsplit("/", 1)[1]
    up = RawUpload(
        c,
        url,
        data,
        "application/offset+octet-stream",
        headers={**V, "X-HTTP-Method-Override": "PATCH", "Upload-Offset": "0"},
    )
    up.send(512 * KB)
    wait_until(lambda: c.progress(upload_id)["bytes_received"] > 0)
    status, _, _ = c.request("POST", f"/uploadmeter/cancel?id={upload_id}")
    assert status == 200
    with contextlib.suppress(OSError):  # the server may close once it sees the cancel
        up.send(1024 * KB)
    status, _, _ = up.finish()
    assert status == 410
    assert c.request("HEAD", url, headers=V)[0] == 410
    assert c.progress(upload_id)["state"] == "cancelled"


# -- the real client, several workers ---------------------------------------------------------


def _tuspy_resume(url: str, directory: str, cookie: str, path: str) -> str:
    """Upload part, stop, resume from a new client through the stored URL."""
    headers = {"Cookie": cookie}
    storage = FileStorage(os.path.join(directory, "urls.json"))
    first = tus_client.TusClient(url + TUS, headers=headers).uploader(
        path,
        chunk_size=256 * KB,
        metadata={"filename": "movie.mp4"},
        store_url=True,
        url_storage=storage,
        upload_checksum=True,
    )
    first.upload(stop_at=700 * KB)
    assert first.offset == 700 * KB
    upload_url = first.url
    assert upload_url is not None
    # A new client (as after a crash) finds the URL by the file's fingerprint.
    second = tus_client.TusClient(url + TUS, headers=headers).uploader(
        path, chunk_size=300 * KB, store_url=True, url_storage=storage, upload_checksum=True
    )
    assert second.url == upload_url and second.offset == 700 * KB
    second.upload()
    storage.close()
    return str(upload_url)


@pytest.mark.gunicorn
@pytest.mark.parametrize("shell", ["wsgi", "asgi"])
@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_tuspy_upload_stop_and_resume_under_three_workers(
    backend: str, shell: str, tmp_path: Any, sqlite_path: str, request: Any
) -> None:
    """gunicorn -w 3 (WSGI) or uvicorn --workers 3 (ASGI)."""
    store = (
        "sqlite://" + sqlite_path if backend == "sqlite" else request.getfixturevalue("redis_url")
    )
    directory = str(tmp_path / "files")
    env = {"UPLOADMETER_TEST_STORE": store, "UPLOADMETER_TEST_FILES": directory}
    data = os.urandom(2 * 1024 * KB + 333)
    source = tmp_path / "movie.mp4"
    source.write_bytes(data)
    with run_workers(shell, env) as url:
        c = ChunkClient(url)
        c.start()
        upload_url = _tuspy_resume(url, str(tmp_path), c.cookie_header(), str(source))
        upload_id = upload_url.rsplit("/", 1)[1]
        record = c.progress(upload_id)
        assert record["state"] == "done"
        assert record["result"]["sha256"] == hashlib.sha256(data).hexdigest()
        (done,) = read_completions(directory)
        assert done["sha256"] == hashlib.sha256(data).hexdigest()
        assert done["metadata"] == {"filename": "movie.mp4"}
        with open(done["path"], "rb") as f:
            assert hashlib.sha256(f.read()).hexdigest() == done["sha256"]
        # A guessed URL names nothing.
        stranger = tus_client.TusClient(url + TUS, headers={})
        with pytest.raises(TusCommunicationError):
            stranger.uploader(str(source), url=upload_url[:-4] + "AAAA")


@pytest.mark.gunicorn
@pytest.mark.parametrize("shell", ["wsgi", "asgi"])
def test_concurrent_patches_are_serialized_across_workers(
    shell: str, tmp_path: Any, sqlite_path: str
) -> None:
    env = {
        "UPLOADMETER_TEST_STORE": "sqlite://" + sqlite_path,
        "UPLOADMETER_TEST_FILES": str(tmp_path / "files"),
        "UPLOADMETER_TEST_TUS_LOCK_WAIT": "1",
    }
    data = os.urandom(256 * KB)
    with run_workers(shell, env) as url:
        c = ChunkClient(url)
        c.start()
        upload = create(c, len(data))
        upload_id = upload.rsplit("/", 1)[1]
        store = open_store("sqlite://" + sqlite_path)
        headers = {**V, "X-HTTP-Method-Override": "PATCH", "Upload-Offset": "0"}
        # A: headers sent, no body yet -- its worker holds the upload's lock, offset 0.
        first = RawUpload(c, upload, data, "application/offset+octet-stream", headers=headers)
        wait_until(lambda: store.get("lock:tus:" + upload_id) is not None)
        # B, same offset, on another worker: without the lock it would write at 0 too.
        status, _, body = patch(c, upload, 0, data[: 64 * KB])
        assert status == 423, body
        first.send_rest()
        status, h, _ = first.finish()
        assert status == 204 and h["upload-offset"] == str(len(data))
        status, h, _ = patch(c, upload, 0, data[: 64 * KB])
        assert status == 409 and h["upload-offset"] == str(len(data))
        (done,) = read_completions(str(tmp_path / "files"))
        assert done["sha256"] == hashlib.sha256(data).hexdigest()


# -- leftovers and the lock --------------------------------------------------------------------


def tus_files(directory: str) -> list[str]:
    return [name for _, _, names in os.walk(os.path.join(directory, "tus")) for name in names]


def test_a_creation_whose_data_fails_leaves_no_upload(server: Any) -> None:
    c = server.client()
    headers = {**V, "Upload-Length": "100", "Content-Type": "application/offset+octet-stream"}
    bad = "sha1 " + base64.b64encode(hashlib.sha1(b"other").digest()).decode()
    status, h, _ = c.request("POST", TUS, b"x" * 40, {**headers, "Upload-Checksum": bad})
    assert status == 460 and "location" not in h
    assert tus_files(server.directory) == []
    # A client that vanishes mid-body never learns the URL: nothing may hold its quota.
    up = RawUpload(c, TUS, b"y" * 100, "application/offset+octet-stream", headers=headers)
    up.send(50)
    up.abort()
    wait_until(lambda: tus_files(server.directory) == [])


def test_a_patch_that_lost_its_lock_leaves_the_file_alone(tmp_path: Any) -> None:
    meter = make_app("memory://", str(tmp_path), tus_options={"lock_ttl": 0.5})
    answered: list[str] = []

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        body = list(meter(environ, start_response))
        answered.append(environ.get("HTTP_X_HTTP_METHOD_OVERRIDE", ""))
        return body

    with serve_fast(app) as base:
        c = ChunkClient(base)
        c.start()
        data = os.urandom(300 * KB)
        url = create(c, len(data))
        upload_id = url.rsplit("/", 1)[1]
        checksum = "sha1 " + base64.b64encode(hashlib.sha1(data).digest()).decode()
        headers = {
            **V,
            "X-HTTP-Method-Override": "PATCH",
            "Upload-Offset": "0",
            "Upload-Checksum": checksum,
        }
        # A stalls after its first block, for longer than its lock lives ...
        stalled = RawUpload(c, url, data, "application/offset+octet-stream", headers=headers)
        stalled.send(256 * KB)
        wait_until(lambda: c.request("HEAD", url, headers=V)[1]["upload-offset"] == str(256 * KB))
        wait_until(lambda: meter.store.get("lock:tus:" + upload_id) is None)
        # ... so the client resumes with another PATCH, which takes the upload over.
        status, h, _ = patch(c, url, 256 * KB, data[256 * KB :])
        assert status == 204 and h["upload-offset"] == str(len(data))
        stalled.abort()  # A's body never completes: it must not undo B's work
        wait_until(lambda: "PATCH" in answered)  # A's request is over
        assert c.request("HEAD", url, headers=V)[1]["upload-offset"] == str(len(data))
        (done,) = read_completions(str(tmp_path))
        assert done["sha256"] == hashlib.sha256(data).hexdigest()
        with open(done["path"], "rb") as f:  # the stored file is whole, too
            assert f.read() == data


def test_a_refused_file_does_not_stay_in_the_store(server: Any) -> None:
    def reject(info: Any) -> None:
        raise UploadRejected("No archives, please.")

    server.endpoint("/tus").on_complete = reject
    c = server.client()
    url = create(c, 10)
    status, _, body = patch(c, url, 0, b"0123456789")
    assert status == 415 and b"No archives, please." in body
    assert [n for _, _, n in os.walk(os.path.join(server.directory, "files")) if n] == []


@contextlib.contextmanager
def _short_lock_server(server: str, directory: str, sqlite_path: str) -> Iterator[str]:
    """A server whose tus locks live 2 s (PATCHes wait 0.2 s for one): werkzeug's in this
    process, or gunicorn (uvicorn: ASGI) with three workers sharing an SQLite store."""
    if server in ("werkzeug", "uvicorn-thread"):
        options = {"lock_ttl": 2.0, "lock_wait": 0.2}
        shell = "asgi" if server == "uvicorn-thread" else "wsgi"
        app = make_app("memory://", directory, tus_options=options, shell=shell)
        with (serve_asgi if shell == "asgi" else serve_fast)(app) as url:
            yield url
        return
    env = {
        "UPLOADMETER_TEST_STORE": "sqlite://" + sqlite_path,
        "UPLOADMETER_TEST_FILES": directory,
        "UPLOADMETER_TEST_TUS_LOCK_TTL": "2",
        "UPLOADMETER_TEST_TUS_LOCK_WAIT": "0.2",
    }
    with run_workers("asgi" if server == "uvicorn" else "wsgi", env) as url:
        yield url


@pytest.mark.parametrize(
    "server",
    [
        "werkzeug",
        "uvicorn-thread",
        pytest.param("gunicorn", marks=pytest.mark.gunicorn),
        pytest.param("uvicorn", marks=pytest.mark.gunicorn),
    ],
)
def test_a_slow_client_keeps_the_lock_and_every_byte_that_arrived(
    server: str, tmp_path: Any, sqlite_path: str
) -> None:
    # The lock lives 2 s; the client sends 1000 bytes/s (100 bytes every 0.1 s) for 8 s.
    with _short_lock_server(server, str(tmp_path), sqlite_path) as base:
        c = ChunkClient(base)
        c.start()
        data = os.urandom(8000)
        url = create(c, len(data) + 100)
        headers = {**V, "X-HTTP-Method-Override": "PATCH", "Upload-Offset": "0"}
        slow = RawUpload(c, url, data, "application/offset+octet-stream", headers=headers)
        offsets = []
        for second in range(8):
            for _ in range(10):
                slow.send(100)
                time.sleep(0.1)  # the throttle: 1000 bytes/s
            offsets.append(int(c.request("HEAD", url, headers=V)[1]["upload-offset"]))
            if second == 4:
                # Far past the lock's ttl the slow PATCH still holds it: another PATCH
                # cannot take the upload over and write at the offset the file has now.
                status, _, _ = patch(c, url, offsets[-1], b"y" * 10)
                assert status == 423
        status, h, body = slow.finish()
        assert status == 204 and h["upload-offset"] == "8000", body
        # What arrived was written as it came (in pieces of at most ~1 s of data).
        assert all(o >= 1000 * (n + 1) - 2048 for n, o in enumerate(offsets)), offsets
        assert patch(c, url, 8000, b"z" * 100)[0] == 204
        (done,) = read_completions(str(tmp_path))
        assert done["sha256"] == hashlib.sha256(data + b"z" * 100).hexdigest()
