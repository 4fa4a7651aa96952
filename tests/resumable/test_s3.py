"""Chunked and tus uploads into a real S3 server (Swift's s3api) through the public
endpoints: the merged object is exact, nothing is left behind, identical files are stored
once with reference counts, and a stopped object store means temporary errors, then
completion."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.chunked_app import read_completions
from tests.support.chunked_support import ChunkClient, ChunkedFile, serve_fast
from tests.support.s3 import Swift, make_s3_app
from uploadmeter import FileInfo, S3Storage
from uploadmeter.stores import open_store

TUS = "/uploadmeter/tus/"
V = {"Tus-Resumable": "1.0.0"}
MiB = 1024 * 1024


class S3App:
    def __init__(self, swift: Swift, url: str, bucket: str, log_dir: str, redis: str) -> None:
        self.swift, self.url, self.bucket, self.log_dir = swift, url, bucket, log_dir
        self.redis = redis
        self.s3 = swift.client()

    def client(self) -> ChunkClient:
        c = ChunkClient(self.url)
        c.start()
        return c

    def object_keys(self, prefix: str = "um/") -> list[str]:
        pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return [o["Key"] for page in pages for o in page.get("Contents", [])]

    def multipart_uploads(self) -> list[Any]:
        return list(self.s3.list_multipart_uploads(Bucket=self.bucket).get("Uploads", []))

    def object_sha256(self, key: str) -> str:
        body = self.s3.get_object(Bucket=self.bucket, Key=key)["Body"]
        h = hashlib.sha256()
        while block := body.read(MiB):
            h.update(block)
        return h.hexdigest()

    def storage(self) -> S3Storage:
        return S3Storage(self.s3, bucket=self.bucket, prefix="um/", store=open_store(self.redis))


def s3_env(swift: Swift, redis: str, bucket: str, log_dir: str, spool: str) -> dict[str, str]:
    return {
        "UPLOADMETER_TEST_STORE": redis,
        "S3_ENDPOINT_URL": swift.endpoint,
        "S3_BUCKET": bucket,
        "S3_SPOOL": spool,
        "UPLOADMETER_TEST_FILES": log_dir,
    }


@pytest.fixture
def app(swift: Swift, redis_url: str, tmp_path: Any) -> Iterator[S3App]:
    bucket = swift.new_bucket()
    (tmp_path / "spool").mkdir()
    env = s3_env(swift, redis_url, bucket, str(tmp_path), str(tmp_path / "spool"))
    with serve_fast(make_s3_app(env)) as url:
        yield S3App(swift, url, bucket, str(tmp_path), redis_url)


def tus_upload(c: ChunkClient, data: bytes, piece: int) -> str:
    status, h, body = c.request("POST", TUS, b"", {**V, "Upload-Length": str(len(data))})
    assert status == 201, body
    url = h["location"]
    offset = 0
    while offset < len(data):
        status, h, body = c.request(
            "PATCH",
            url,
            data[offset : offset + piece],
            {**V, "Content-Type": "application/offset+octet-stream", "Upload-Offset": str(offset)},
        )
        assert status == 204, (status, body)
        offset = int(h["upload-offset"])
        status, h, _ = c.request("HEAD", url, None, V)  # the offset as any server sees it
        assert int(h["upload-offset"]) == offset
    return url


# -- chunks ------------------------------------------------------------------------------------


def test_1_mib_chunks_in_any_order_with_duplicates_become_one_exact_object(app: S3App) -> None:
    f = ChunkedFile.random(13 * MiB + 12345, MiB)  # 13 chunks: parts of 8 + 5 chunks
    c = app.client()
    order = list(range(1, f.total_chunks + 1))
    random.Random(7).shuffle(order)
    order[3:3] = [order[0], order[1]]  # two chunks sent twice
    body = c.upload(f, order[:-1])
    assert body["complete"] is False
    status, test = c.test(f.params())
    assert sorted(test["uploaded"]) == sorted(set(order[:-1]))  # type: ignore[index]
    status, body = c.post_chunk(f, order[-1])
    assert status == 200 and body["complete"] is True, body
    (done,) = read_completions(app.log_dir)
    assert done["sha256"] == f.sha256 and done["size"] == len(f.data)
    key = done["path"].removeprefix(f"s3://{app.bucket}/")
    assert app.object_sha256(key) == f.sha256
    etag = app.s3.head_object(Bucket=app.bucket, Key=key)["ETag"]
    assert etag.endswith('-2"')  # a multipart object of two parts (13 chunks: 8 + 5)
    assert app.multipart_uploads() == []
    assert [k for k in app.object_keys() if "/partial/" in k or k.startswith("um/partial")] == []


def test_a_declared_sha256_mismatch_is_refused_and_leaves_nothing(app: S3App) -> None:
    f = ChunkedFile.random(6 * MiB, MiB, identifier="not-a-hash")
    c = app.client()
    for n in range(1, f.total_chunks):
        assert c.post_chunk(f, n, sha256="0" * 64)[0] == 200
    status, body = c.post_chunk(f, f.total_chunks, sha256="0" * 64)
    assert status == 415 and body["error"]["reason"] == "checksum_mismatch", body
    assert app.multipart_uploads() == []
    assert app.object_keys() == []


def test_a_cancelled_chunked_upload_leaves_no_part_and_no_multipart_upload(app: S3App) -> None:
    f = ChunkedFile.random(12 * MiB, MiB)
    c = app.client()
    c.upload(f, list(range(1, 10)))  # one whole part (8 chunks) and a waiting chunk
    assert len(app.multipart_uploads()) == 1
    assert any("/chunks/" in k for k in app.object_keys())
    status, _, _ = c.request("DELETE", "/uploadmeter/chunks?identifier=" + f.identifier)
    assert status == 200
    assert app.multipart_uploads() == []
    assert app.object_keys() == []


# -- tus ---------------------------------------------------------------------------------------


def test_a_tus_upload_in_3_mib_patches_becomes_one_exact_object(app: S3App) -> None:
    data = os.urandom(17 * MiB + 3)
    c = app.client()
    tus_upload(c, data, 3 * MiB)
    (done,) = read_completions(app.log_dir)
    assert done["sha256"] == hashlib.sha256(data).hexdigest()
    key = done["path"].removeprefix(f"s3://{app.bucket}/")
    assert app.object_sha256(key) == done["sha256"]
    assert app.multipart_uploads() == []
    assert not [k for k in app.object_keys() if "data.part" in k]


def test_a_terminated_tus_upload_leaves_nothing(app: S3App) -> None:
    c = app.client()
    data = os.urandom(10 * MiB)
    status, h, _ = c.request("POST", TUS, b"", {**V, "Upload-Length": str(len(data))})
    url = h["location"]
    headers = {**V, "Content-Type": "application/offset+octet-stream", "Upload-Offset": "0"}
    status, h, _ = c.request("PATCH", url, data[: 9 * MiB], headers)
    assert status == 204 and h["upload-offset"] == str(9 * MiB)
    assert len(app.multipart_uploads()) == 1 and any("data.part" in k for k in app.object_keys())
    assert c.request("DELETE", url, None, V)[0] == 204
    assert app.multipart_uploads() == []
    assert app.object_keys() == []


def test_expired_uploads_are_cleaned_up(app: S3App) -> None:
    c = app.client()
    f = ChunkedFile.random(6 * MiB, MiB)
    c.upload(f, [1, 2])
    status, _, _ = c.request("POST", TUS, b"", {**V, "Upload-Length": "100"})
    assert status == 201
    assert len(app.multipart_uploads()) == 2
    stats = app.storage().cleanup(now=2e10)
    assert (stats.partial, stats.tus) == (1, 1)
    assert app.multipart_uploads() == []
    assert app.object_keys() == []


# -- dedupe ------------------------------------------------------------------------------------


def test_identical_files_are_stored_once_and_deleted_with_the_last_reference(
    app: S3App,
) -> None:
    data = os.urandom(7 * MiB)
    c = app.client()
    for name in ("a", "b"):  # not hash identifiers: two uploads of the same bytes
        c.upload(ChunkedFile(data, MiB, identifier=f"upload-{name}"))
    tus_upload(c, data, 4 * MiB)
    done = read_completions(app.log_dir)
    assert len(done) == 3 and {d["path"] for d in done} == {done[0]["path"]}
    blobs = [k for k in app.object_keys() if k.startswith("um/blobs/")]
    assert len(blobs) == 1
    storage = app.storage()
    sha = hashlib.sha256(data).hexdigest()
    assert storage.references(sha) == 3
    infos = [
        FileInfo(
            **storage.file_fields(blobs[0]),
            filename="x",
            size=len(data),
            sha256=sha,
            md5=d["md5"],
            session=d["session"],
            upload_id=d["upload_id"],
            protocol=d["protocol"],
        )
        for d in done
    ]
    with infos[0].open() as body:
        assert hashlib.sha256(body.read()).hexdigest() == sha
    storage.release(infos[0])
    storage.release(infos[1])
    assert storage.references(sha) == 1
    assert [k for k in app.object_keys() if k.startswith("um/blobs/")] == blobs
    storage.release(infos[2])
    assert storage.references(sha) == 0
    # Only the tus upload's state is left (its HEAD answers until it expires).
    assert [k for k in app.object_keys() if not k.startswith("um/tus/")] == []


# -- faults ------------------------------------------------------------------------------------


def test_a_stopped_object_store_means_retry_later_then_the_uploads_complete(app: S3App) -> None:
    f = ChunkedFile.random(11 * MiB, MiB)
    c = app.client()
    c.upload(f, list(range(1, 6)))
    data = os.urandom(9 * MiB)
    status, h, _ = c.request("POST", TUS, b"", {**V, "Upload-Length": str(len(data))})
    url = h["location"]
    octet = {**V, "Content-Type": "application/offset+octet-stream"}
    status, h, _ = c.request("PATCH", url, data[: 2 * MiB], {**octet, "Upload-Offset": "0"})
    assert status == 204
    app.swift.stop_proxy()
    try:
        status, body = c.post_chunk(f, 6)
        assert status == 503 and body["error"]["reason"] == "busy", body
        status, h, raw = c.request(
            "PATCH", url, data[2 * MiB :], {**octet, "Upload-Offset": str(2 * MiB)}
        )
        assert status == 503 and int(h["retry-after"]) > 0, raw
        status, h, raw = c.request("HEAD", url, None, V)
        assert status == 503 and int(h["retry-after"]) > 0
        status, test = c.test(f.params(6))
        assert status == 503 and test is not None and test["error"]["reason"] == "busy"
    finally:
        app.swift.start_proxy()
    # Back: the client resumes from what the store kept, and everything completes.
    status, h, _ = c.request("HEAD", url, None, V)
    assert status == 200 and h["upload-offset"] == str(2 * MiB)
    status, h, _ = c.request(
        "PATCH", url, data[2 * MiB :], {**octet, "Upload-Offset": str(2 * MiB)}
    )
    assert status == 204 and h["upload-offset"] == str(len(data))
    status, test = c.test(f.params())
    assert test is not None and test["uploaded"] == [1, 2, 3, 4, 5]
    body = c.upload(f, list(range(6, f.total_chunks + 1)))
    assert body["complete"] is True
    done = {d["sha256"]: d for d in read_completions(app.log_dir)}
    assert set(done) == {f.sha256, hashlib.sha256(data).hexdigest()}
    for d in done.values():
        assert app.object_sha256(d["path"].removeprefix(f"s3://{app.bucket}/")) == d["sha256"]
        assert c.progress(d["upload_id"])["state"] == "done"
    assert app.multipart_uploads() == []


def test_an_empty_file_completes_through_both_protocols(app: S3App) -> None:
    c = app.client()
    status, h, body = c.request("POST", TUS, b"", {**V, "Upload-Length": "0"})
    assert status == 201 and h["upload-offset"] == "0", body
    (done,) = read_completions(app.log_dir)
    assert done["sha256"] == hashlib.sha256(b"").hexdigest() and done["size"] == 0
    assert app.object_sha256(done["path"].removeprefix(f"s3://{app.bucket}/")) == done["sha256"]
    assert app.multipart_uploads() == []


def test_cleanup_keeps_referenced_files_and_deletes_unreferenced_ones(app: S3App) -> None:
    data = os.urandom(6 * MiB)
    c = app.client()
    c.upload(ChunkedFile(data, MiB, identifier="kept"))
    (done,) = read_completions(app.log_dir)
    kept = done["path"].removeprefix(f"s3://{app.bucket}/")
    # What a crash leaves: a blob nothing names, and a filed blob without references.
    app.s3.put_object(Bucket=app.bucket, Key="um/blobs/orphan", Body=b"x")
    sha = "ab" * 32
    app.s3.put_object(Bucket=app.bucket, Key="um/blobs/unreferenced", Body=b"y")
    body = json.dumps({"key": "um/blobs/unreferenced", "sha256": sha}).encode()
    app.s3.put_object(Bucket=app.bucket, Key=f"um/files/{sha}.json", Body=body)
    storage = app.storage()
    assert storage.cleanup().files == 0  # all young: nothing goes
    assert storage.cleanup(now=2e10).files == 1
    keys = app.object_keys()
    assert kept in keys and f"um/files/{done['sha256']}.json" in keys
    assert "um/blobs/orphan" not in keys and "um/blobs/unreferenced" not in keys
    assert f"um/files/{sha}.json" not in keys
    assert app.object_sha256(kept) == hashlib.sha256(data).hexdigest()


def test_tus_js_client_in_node_on_default_options_uploads_into_s3(
    app: S3App, tmp_path: Any
) -> None:
    from tests.integration.test_tus_clients import node_upload

    data = os.urandom(21 * MiB + 11)  # one PATCH: three parts (8 + 8 + 5 MiB)
    path = tmp_path / "node.bin"
    path.write_bytes(data)
    events = node_upload(app.url, str(path))
    assert events[-1]["success"] is True, events
    (done,) = read_completions(app.log_dir)
    assert done["sha256"] == hashlib.sha256(data).hexdigest()
    assert app.object_sha256(done["path"].removeprefix(f"s3://{app.bucket}/")) == done["sha256"]
    assert app.multipart_uploads() == []


def test_a_tus_checksum_mismatch_keeps_nothing_of_the_patch(app: S3App) -> None:
    import base64

    data = os.urandom(19 * MiB)
    c = app.client()
    status, h, _ = c.request("POST", TUS, b"", {**V, "Upload-Length": str(len(data))})
    url = h["location"]
    octet = {**V, "Content-Type": "application/offset+octet-stream"}

    def sha1(b: bytes) -> str:
        return "sha1 " + base64.b64encode(hashlib.sha1(b).digest()).decode()

    first = data[: 3 * MiB]
    status, h, _ = c.request("PATCH", url, first, {**octet, "Upload-Offset": "0"})
    assert status == 204
    rest = data[3 * MiB : 18 * MiB]  # more than a part: held until the checksum is known
    bad = {**octet, "Upload-Offset": str(3 * MiB), "Upload-Checksum": sha1(b"other")}
    status, _, _ = c.request("PATCH", url, rest, bad)
    assert status == 460
    status, h, _ = c.request("HEAD", url, None, V)
    assert h["upload-offset"] == str(3 * MiB)  # nothing of the refused body counts
    good = {**octet, "Upload-Offset": str(3 * MiB), "Upload-Checksum": sha1(rest)}
    status, h, _ = c.request("PATCH", url, rest, good)
    assert status == 204 and h["upload-offset"] == str(18 * MiB)
    status, h, _ = c.request(
        "PATCH", url, data[18 * MiB :], {**octet, "Upload-Offset": str(18 * MiB)}
    )
    assert status == 204
    (done,) = read_completions(app.log_dir)
    assert done["sha256"] == hashlib.sha256(data).hexdigest()
    assert app.object_sha256(done["path"].removeprefix(f"s3://{app.bucket}/")) == done["sha256"]


# -- concatenation and deferred length ---------------------------------------------------------


def test_tus_js_client_with_4_parallel_uploads_into_s3_leaves_one_exact_object(
    app: S3App, tmp_path: Any
) -> None:
    from tests.integration.test_tus_clients import node_upload

    # Four partial uploads of 6 MiB + 3: each >= 5 MiB, so each is copied inside the store.
    for size in (24 * MiB + 12, 9 * MiB + 5):  # and four of ~2.25 MiB: read and joined
        data = os.urandom(size)
        path = tmp_path / "node.bin"
        path.write_bytes(data)
        events = node_upload(app.url, str(path), parallel=4)
        assert events[-1]["success"] is True, events
        done = read_completions(app.log_dir)[-1]
        assert done["sha256"] == hashlib.sha256(data).hexdigest() and done["size"] == size
        key = done["path"].removeprefix(f"s3://{app.bucket}/")
        assert app.object_sha256(key) == done["sha256"]
        assert app.multipart_uploads() == []
        # The partial uploads are gone, their objects too: one blob per file.
        keys = app.object_keys()
        assert not [k for k in keys if "data.part" in k or k.endswith(".multipart.json")]
    blobs = [k for k in app.object_keys() if k.startswith("um/blobs/")]
    assert len(blobs) == 2


def defer_length_upload(c: ChunkClient, pieces: list[bytes], *, empty_last: bool) -> str:
    """A tus upload with ``Upload-Defer-Length``: the length comes with the last PATCH
    (``empty_last``: a PATCH of its own, with no bytes)."""
    status, h, body = c.request("POST", TUS, b"", {**V, "Upload-Defer-Length": "1"})
    assert status == 201, body
    url = h["location"]
    total = sum(map(len, pieces))
    octet = {**V, "Content-Type": "application/offset+octet-stream"}
    offset = 0
    for n, piece in enumerate(pieces):
        headers = {**octet, "Upload-Offset": str(offset)}
        if n == len(pieces) - 1 and not empty_last:
            headers["Upload-Length"] = str(total)
        status, h, body = c.request("PATCH", url, piece, headers)
        assert status == 204, (status, body)
        offset = int(h["upload-offset"])
    if empty_last:
        headers = {**octet, "Upload-Offset": str(offset), "Upload-Length": str(total)}
        status, h, body = c.request("PATCH", url, b"", headers)
        assert status == 204 and h["upload-offset"] == str(total), (status, body)
    return url


@pytest.mark.parametrize("empty_last", [False, True])
def test_a_deferred_length_tus_upload_becomes_one_exact_object(
    app: S3App, empty_last: bool
) -> None:
    data = os.urandom(19 * MiB + 7)  # parts of 8 + 8, then 3 MiB + 7 waiting as an object
    pieces = [data[: 5 * MiB], data[5 * MiB : 13 * MiB], data[13 * MiB :]]
    c = app.client()
    defer_length_upload(c, pieces, empty_last=empty_last)
    (done,) = read_completions(app.log_dir)
    assert done["sha256"] == hashlib.sha256(data).hexdigest() and done["size"] == len(data)
    assert app.object_sha256(done["path"].removeprefix(f"s3://{app.bucket}/")) == done["sha256"]
    assert app.multipart_uploads() == []
    assert not [k for k in app.object_keys() if "data.part" in k]


class StopsOnCopy:
    """A boto3 client that stops the real object store when the join copies its second
    part (the store is down from then on, for every call, until the test restarts it)."""

    def __init__(self, client: Any, swift: Swift) -> None:
        self.client, self.swift, self.copies = client, swift, 0
        self.lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)

    def upload_part_copy(self, **kwargs: Any) -> Any:
        with self.lock:
            self.copies += 1
            stop = self.copies == 2
        if stop:
            self.swift.stop_proxy()
        return self.client.upload_part_copy(**kwargs)


def test_a_store_stopped_mid_join_means_retry_later_then_the_final_upload_completes(
    swift: Swift, redis_url: str, tmp_path: Any
) -> None:
    from tests.support.s3 import s3_client

    bucket = swift.new_bucket()
    env = s3_env(swift, redis_url, bucket, str(tmp_path), str(tmp_path))
    client = StopsOnCopy(s3_client(swift.endpoint), swift)
    with serve_fast(make_s3_app(env, client=client)) as url:
        a = S3App(swift, url, bucket, str(tmp_path), redis_url)
        c = a.client()
        pieces = [os.urandom(6 * MiB + n) for n in range(3)]
        urls = []
        for piece in pieces:
            headers = {**V, "Upload-Length": str(len(piece)), "Upload-Concat": "partial"}
            status, h, _ = c.request("POST", TUS, b"", headers)
            urls.append(h["location"])
            octet = {**V, "Content-Type": "application/offset+octet-stream", "Upload-Offset": "0"}
            status, h, _ = c.request("PATCH", urls[-1], piece, octet)
            assert status == 204 and h["upload-offset"] == str(len(piece))
        final = {**V, "Upload-Concat": "final;" + " ".join(urls)}
        try:
            status, h, body = c.request("POST", TUS, b"", final)
            assert status == 503 and int(h["retry-after"]) > 0, (status, body)
            assert client.copies >= 2  # it was stopped mid-join
        finally:
            swift.start_proxy()
        assert read_completions(str(tmp_path)) == []
        status, h, body = c.request("POST", TUS, b"", final)
        assert status == 201, (status, body)
        (done,) = read_completions(str(tmp_path))
        data = b"".join(pieces)
        assert done["sha256"] == hashlib.sha256(data).hexdigest() and done["size"] == len(data)
        key = done["path"].removeprefix(f"s3://{bucket}/")
        assert a.object_sha256(key) == done["sha256"]
        assert a.multipart_uploads() == []
        keys = a.object_keys()
        assert [k for k in keys if k.startswith("um/blobs/")] == [key]
        assert not [k for k in keys if "data.part" in k or k.endswith(".multipart.json")]


def test_a_file_found_for_an_instant_upload_outlives_the_last_release_before_retain(
    app: S3App,
) -> None:
    # The race: upload B finds the stored file (existing) just as upload A, its last
    # reference, releases it; B's reference comes after.  B's file must still be there.
    data = os.urandom(6 * MiB)
    c = app.client()
    c.upload(ChunkedFile(data, MiB, identifier="first"))
    (done,) = read_completions(app.log_dir)
    sha = done["sha256"]
    finder, releaser = app.storage(), app.storage()  # two processes, one bucket

    def info(d: dict[str, Any], storage: S3Storage, key: str) -> FileInfo:
        return FileInfo(
            **storage.file_fields(key),
            filename="x",
            size=len(data),
            sha256=sha,
            md5=d["md5"],
            session=d["session"],
            upload_id=d["upload_id"],
            protocol="chunks",
        )

    key = finder.existing(sha, len(data))
    assert key is not None
    releaser.release(info(done, releaser, key))
    second = info({**done, "upload_id": "second-upload"}, finder, key)
    finder.retain(second)
    assert finder.references(sha) == 1
    with second.open() as body:
        assert hashlib.sha256(body.read()).hexdigest() == sha
    finder.release(second)  # the last reference, no claim left: the file goes
    assert [k for k in app.object_keys() if k.startswith(("um/blobs/", "um/files/"))] == []


class CountsCalls:
    """A boto3 client counting the calls of each operation."""

    def __init__(self, client: Any) -> None:
        self.client, self.calls = client, Counter[str]()
        self.keys: list[tuple[str, str]] = []  # (operation, key) of every call with a key

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.client, name)

        def call(**kwargs: Any) -> Any:
            self.calls[name] += 1
            if "Key" in kwargs:
                self.keys.append((name, kwargs["Key"]))
            return method(**kwargs)

        return call


@contextlib.contextmanager
def counted_app(
    swift: Swift, redis_url: str, tmp_path: Any
) -> Iterator[tuple[CountsCalls, ChunkClient, str]]:
    """The S3 app on a client that counts its calls: ``(calls, a chunk client, bucket)``;
    completions are logged in ``tmp_path``."""
    from tests.support.s3 import s3_client

    bucket = swift.new_bucket()
    env = s3_env(swift, redis_url, bucket, str(tmp_path), str(tmp_path))
    client = CountsCalls(s3_client(swift.endpoint))
    with serve_fast(make_s3_app(env, client=client)) as url:
        c = ChunkClient(url)
        c.start()
        yield client, c, bucket


def test_chunks_cost_no_list_parts_each_the_parts_are_noted_in_the_progress_store(
    swift: Swift, redis_url: str, tmp_path: Any
) -> None:
    with counted_app(swift, redis_url, tmp_path) as (client, c, _):
        f = ChunkedFile.random(8 * 8 * MiB + 5, 8 * MiB)  # 9 chunks, one part each
        order = list(range(1, f.total_chunks + 1))
        random.Random(3).shuffle(order)
        for n in order[:-1]:
            status, body = c.post_chunk(f, n)
            assert status == 200 and body["complete"] is False, body
        status, test = c.test(f.params())
        assert sorted(test["uploaded"]) == sorted(order[:-1])  # type: ignore[index]
        assert client.calls["list_parts"] == 0
        status, body = c.post_chunk(f, order[-1])
        assert status == 200 and body["complete"] is True, body
        assert client.calls["list_parts"] <= 2  # the merge asks S3, the truth
        (done,) = read_completions(str(tmp_path))
        assert done["sha256"] == f.sha256


def test_small_chunks_cost_no_listing_each_and_the_merge_reads_nothing_back(
    swift: Swift, redis_url: str, tmp_path: Any
) -> None:
    """1 MiB chunks (the npm clients' default) into 8 MiB parts: which chunks wait as
    objects is noted in the progress store (no list per chunk), each chunk object is read
    once to make its part, and each part is hashed as it is made, in order, so the merge
    reads nothing of the file back."""
    with counted_app(swift, redis_url, tmp_path) as (client, c, bucket):
        f = ChunkedFile.random(20 * MiB + 5, MiB)  # 20 chunks: parts of 8 + 8 + 4
        for n in range(1, f.total_chunks):
            status, body = c.post_chunk(f, n)
            assert status == 200 and body["complete"] is False, body
            if n == 1:  # the upload's start lists (quota, the first cleanup); then none
                first = Counter(client.calls)
        status, test = c.test(f.params())
        assert sorted(test["uploaded"]) == list(range(1, f.total_chunks))  # type: ignore[index]
        listed = client.calls["list_objects_v2"] - first["list_objects_v2"]
        assert (client.calls["list_parts"], listed) == (0, 0)
        status, body = c.post_chunk(f, f.total_chunks)
        assert status == 200 and body["complete"] is True, body
    (done,) = read_completions(str(tmp_path))
    assert done["sha256"] == f.sha256
    key = done["path"].removeprefix(f"s3://{bucket}/")
    assert ("get_object", key) not in client.keys  # verified without reading it back
    chunk_reads = [k for op, k in client.keys if op == "get_object" and "/chunks/" in k]
    numbers = sorted(int(k.rsplit("/", 1)[1]) for k in chunk_reads)
    assert numbers == list(range(1, f.total_chunks + 1))  # each chunk object read once
    assert client.calls["upload_part"] == 3
    assert [k for k in list_keys(client.client, bucket) if "/chunks/" in k] == []


def test_small_chunks_complete_exactly_when_the_stores_notes_are_lost(app: S3App) -> None:
    """The notes are a shortcut, S3 the truth: a store that lost them midway (flushed,
    evicted) makes the chunk objects listed again, and the file is still exact."""
    import redis

    f = ChunkedFile.random(19 * MiB + 7, MiB)  # 20 chunks: parts of 8 + 8 + 4
    c = app.client()
    order = list(range(1, f.total_chunks + 1))
    random.Random(11).shuffle(order)
    c.upload(f, order[:11])
    server = redis.Redis.from_url(app.redis)
    lost = list(server.scan_iter("*s3-parts:*"))
    assert lost  # the notes were there
    server.delete(*lost)
    assert c.test(f.params())[0] == 200  # answered from a listing now
    body = c.upload(f, order[11:])
    assert body["complete"] is True, body
    (done,) = read_completions(app.log_dir)
    assert done["sha256"] == f.sha256
    key = done["path"].removeprefix(f"s3://{app.bucket}/")
    assert app.object_sha256(key) == f.sha256
    assert app.multipart_uploads() == []
    assert [k for k in app.object_keys() if "/partial/" in k] == []


def test_a_chunk_object_lost_under_its_note_is_asked_for_again(app: S3App) -> None:
    """The note says a chunk object is stored, S3 says it is not (deleted behind the
    upload's back, or by a request that made the part meanwhile): the part is not made
    of a hole, the chunk's note goes, the client is asked for it again, and the file is
    exact."""
    f = ChunkedFile.random(10 * MiB + 3, MiB)  # 10 chunks: parts of 8 + 2
    c = app.client()
    c.upload(f, list(range(1, 8)))
    (lost,) = [k for k in app.object_keys() if k.endswith("/chunks/3")]
    app.s3.delete_object(Bucket=app.bucket, Key=lost)
    status, body = c.post_chunk(f, 8)  # completes the group, as the notes say
    assert status == 200 and body["complete"] is False, body
    status, test = c.test(f.params())
    assert sorted(test["uploaded"]) == [1, 2, 4, 5, 6, 7, 8]  # type: ignore[index]
    body = c.upload(f, [9, 10, 3])
    assert body["complete"] is True, body
    (done,) = read_completions(app.log_dir)
    key = done["path"].removeprefix(f"s3://{app.bucket}/")
    assert done["sha256"] == f.sha256 == app.object_sha256(key)
    assert app.multipart_uploads() == []
    assert [k for k in app.object_keys() if "/partial/" in k] == []


def test_a_storage_used_before_a_fork_still_runs_its_s3_calls_in_the_child(app: S3App) -> None:
    """A server that forks its workers after the storage did S3 work (gunicorn
    ``--preload`` with start-up work): a thread pool made before the fork has no threads
    in the child, and a part waiting on it would hang with its lock held.  (The pool is
    private; a fork at the right moment is not reachable through the endpoints.)"""
    import multiprocessing

    storage = app.storage()
    storage._run_all([(time.sleep, 0)])  # in the parent: the pool exists, a thread idles

    def child() -> None:
        storage._run_all([(time.sleep, 0)])

    process = multiprocessing.get_context("fork").Process(target=child)
    process.start()
    process.join(20)
    if process.exitcode is None:
        process.kill()
    assert process.exitcode == 0


def list_keys(client: Any, bucket: str) -> list[str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


@pytest.mark.parametrize("payload_signing", [None, False])
def test_every_part_carries_one_checksum_the_store_checks(
    swift: Swift, redis_url: str, tmp_path: Any, payload_signing: bool | None
) -> None:
    """Each part's bytes are checked by the store once: by the SHA-256 botocore signs
    (SigV4 over HTTP), or -- where the client turns payload signing off -- by the
    Content-MD5 uploadmeter adds.  Never both (each costs a hash of every byte)."""
    from tests.support.s3 import s3_client

    options = {} if payload_signing is None else {"payload_signing_enabled": payload_signing}
    client = s3_client(swift.endpoint, **options)
    sent: list[tuple[bool, str]] = []

    def note(request: Any, **_: Any) -> None:
        headers = request.headers
        sent.append(("Content-MD5" in headers, headers.get("X-Amz-Content-SHA256", b"")))

    client.meta.events.register("before-send.s3.UploadPart", note)
    bucket = swift.new_bucket()
    env = s3_env(swift, redis_url, bucket, str(tmp_path), str(tmp_path))
    with serve_fast(make_s3_app(env, client=client)) as url:
        c = ChunkClient(url)
        c.start()
        data = os.urandom(20 * MiB)
        tus_upload(c, data, len(data))  # one PATCH: parts 8 + 8 + 4 MiB
        f = ChunkedFile.random(16 * MiB + 7, 8 * MiB)  # two chunks, each a part
        assert c.upload(f, [1, 2])["complete"] is True
    shas = [h.decode() if isinstance(h, bytes) else h for _, h in sent]
    assert len(sent) == 5
    if payload_signing is None:  # signed: no Content-MD5 on top
        assert [md5 for md5, _ in sent] == [False] * 5
        assert all(len(h) == 64 and int(h, 16) >= 0 for h in shas), shas
    else:
        assert [md5 for md5, _ in sent] == [True] * 5
        assert set(shas) == {"UNSIGNED-PAYLOAD"}
    completed = read_completions(str(tmp_path))
    assert [d["sha256"] for d in completed] == [hashlib.sha256(data).hexdigest(), f.sha256]


def test_chunks_hashed_as_they_come_are_not_read_back_at_the_merge(
    swift: Swift, redis_url: str, tmp_path: Any
) -> None:
    """Chunks that arrive in order are hashed as they come (the hash state in the
    progress store, whichever process gets the next chunk): the merge reads nothing back.
    A chunk ahead of its turn waits briefly, then leaves its bytes to the merge, which
    reads back only from the first chunk not hashed (a range GET)."""
    from tests.support.s3 import s3_client

    bucket = swift.new_bucket()
    env = s3_env(swift, redis_url, bucket, str(tmp_path), str(tmp_path))
    client = CountsCalls(s3_client(swift.endpoint))
    gets: list[str | None] = []
    get_object = client.client.get_object

    def counting_get(**kwargs: Any) -> Any:
        if "/blobs/" in kwargs["Key"]:
            gets.append(kwargs.get("Range"))
        return get_object(**kwargs)

    client.client.get_object = counting_get
    with serve_fast(make_s3_app(env, client=client)) as url:
        c = ChunkClient(url)
        c.start()
        in_order = ChunkedFile.random(3 * 8 * MiB + 5, 8 * MiB)
        assert c.upload(in_order, [1, 2, 3])["complete"] is True
        assert gets == []  # verified without a read
        shuffled = ChunkedFile.random(3 * 8 * MiB + 7, 8 * MiB)
        assert c.upload(shuffled, [2, 1, 3])["complete"] is True  # 2 and 3 wait in vain
        assert gets == [f"bytes={8 * MiB}-"]  # chunk 1 was hashed as it came
    completed = read_completions(str(tmp_path))
    assert [(d["sha256"], d["md5"]) for d in completed] == [
        (f.sha256, hashlib.md5(f.data).hexdigest()) for f in (in_order, shuffled)
    ]
