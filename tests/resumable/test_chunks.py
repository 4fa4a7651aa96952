"""The chunk protocol (simple-uploader.js / resumable.js / flow.js) over real HTTP.

Every status code and refusal the protocol promises, hostile input included, against the
real endpoint served by werkzeug (and by gunicorn for the multi-worker merge race).
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
import random
import threading
import time
from typing import Any
from urllib.parse import urlencode

import pytest

from tests.support.chunked_app import read_completions
from tests.support.chunked_support import (
    CHUNKS,
    ChunkClient,
    ChunkedFile,
    HookedStore,
    Pause,
    leftovers,
    run_workers,
    served,
)
from tests.support.servers import RawUpload, multipart_body, wait_until
from uploadmeter.core._records import record_key
from uploadmeter.processing import task
from uploadmeter.resumable import FileInfo, UploadRejected

KB = 1024


@pytest.fixture(params=["wsgi", "asgi"])
def server(tmp_path: Any, request: Any) -> Any:
    """The endpoints on each shell: the WSGI middleware (werkzeug's server) and the ASGI
    middleware (uvicorn), mounted the same way; the same answers are expected."""
    with served(str(tmp_path), shell=request.param) as s:
        yield s


# -- the happy path ------------------------------------------------------------------------


def test_parallel_out_of_order_chunks_merge_in_numeric_order(server: Any) -> None:
    # 23 chunks: a lexicographic sort would put 10 before 2 and corrupt the file.
    f = ChunkedFile.random(23 * 4 * KB + 1234, 4 * KB)
    assert f.total_chunks == 23
    order = list(range(1, 24))
    random.Random(7).shuffle(order)
    c = server.client()
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        answers = list(pool.map(lambda n: c.post_chunk(f, n), order))
    assert all(status == 200 for status, _ in answers), answers
    completions = read_completions(server.directory)
    assert len(completions) == 1
    done = completions[0]
    assert (done["sha256"], done["md5"], done["size"]) == (
        f.sha256,
        f.identifier,
        len(f.data),
    )
    with open(done["path"], "rb") as merged:
        assert merged.read() == f.data
    final = [body for _, body in answers if body["complete"]]
    assert len(final) == 1 and final[0]["result"]["sha256"] == f.sha256
    assert final[0]["result"]["url"] == "/files/" + f.sha256
    record = c.progress(f.identifier)
    assert record["state"] == "done"
    assert record["result"]["sha256"] == f.sha256
    assert record["processing"]["phase"] == "merging"
    assert record["processing"]["percentage"] == 100
    assert leftovers(server.directory) == {"tmp": [], "partial": []}


def test_progress_record_counts_stored_chunks(server: Any) -> None:
    f = ChunkedFile.random(8 * KB, 2 * KB, filename="report 2024.pdf")
    c = server.client()
    c.post_chunk(f, 1)
    c.post_chunk(f, 3)
    record = c.progress(f.identifier)
    assert record["state"] == "uploading"
    assert (record["bytes_received"], record["content_length"]) == (4 * KB, 8 * KB)
    assert record["percentage"] == 50
    assert record["fields"][0]["filename"] == "report 2024.pdf"
    assert record["fields"][0]["bytes_received"] == 4 * KB


def test_last_chunk_takes_the_remainder_and_force_chunk_size_too(server: Any) -> None:
    c = server.client()
    floor = ChunkedFile.random(10 * KB - 1, 3 * KB)  # 3 chunks, the last 4 KB - 1
    assert floor.total_chunks == 3 and len(floor.piece(3)) == 4 * KB - 1
    assert c.upload(floor)["complete"]
    forced = ChunkedFile.random(10 * KB - 1, 3 * KB, force=True)  # 4 chunks, last 1 KB - 1
    assert forced.total_chunks == 4 and len(forced.piece(4)) == KB - 1
    assert c.upload(forced)["complete"]
    small = ChunkedFile.random(100, 3 * KB)  # one chunk smaller than chunkSize
    assert c.upload(small)["complete"]
    empty = ChunkedFile.random(0, 3 * KB)
    assert c.upload(empty)["complete"]
    assert {d["size"] for d in read_completions(server.directory)} == {10 * KB - 1, 100, 0}


def test_megabyte_chunks_as_multipart_and_as_raw_bodies(server: Any) -> None:
    c = server.client()
    f = ChunkedFile.random(3 * 1024 * KB + 5, 1024 * KB)
    assert c.post_chunk(f, 2)[0] == 200
    assert c.post(f.params(1), f.piece(1), octet=True)[0] == 200
    status, body = c.post_chunk(f, 3)
    assert status == 200 and body["result"]["sha256"] == f.sha256


def test_test_requests_answer_200_for_stored_chunks_and_204_for_missing(server: Any) -> None:
    f = ChunkedFile.random(6 * KB, 2 * KB)
    c = server.client()
    assert c.test(f.params(2)) == (204, None)
    c.post_chunk(f, 2)
    status, body = c.test(f.params(2))
    assert status == 200 and body is not None
    assert body["uploaded"] == [2] and body["skipUpload"] is False
    assert c.test(f.params(1)) == (204, None)
    # Without chunkNumber: the file-level test of custom clients.
    status, body = c.test(f.params())
    assert status == 200 and body is not None and body["uploaded"] == [2]


def test_duplicate_chunk_is_harmless(server: Any) -> None:
    f = ChunkedFile.random(6 * KB, 2 * KB)
    c = server.client()
    assert c.post_chunk(f, 1)[0] == 200
    status, body = c.post_chunk(f, 1)
    assert status == 200 and body["uploaded"] == [1] and body["bytes_stored"] == 2 * KB
    assert c.progress(f.identifier)["bytes_received"] == 2 * KB
    c.upload(f, [2, 3, 3])
    assert len(read_completions(server.directory)) == 1
    # A late duplicate after the merge: still 200, still complete, no second completion.
    status, body = c.post_chunk(f, 2)
    assert status == 200 and body["complete"] and body["skipUpload"]
    assert len(read_completions(server.directory)) == 1


def test_flow_and_resumable_prefixed_names_and_octet_bodies(server: Any) -> None:
    c = server.client()
    f = ChunkedFile.random(4 * KB, 2 * KB)
    for number in (1, 2):
        params = {"flow" + k[0].upper() + k[1:]: v for k, v in f.params(number).items()}
        assert c.post(params, f.piece(number))[0] == 200
    g = ChunkedFile.random(4 * KB, 2 * KB)
    for number in (2, 1):
        params = {"resumable" + k[0].upper() + k[1:]: v for k, v in g.params(number).items()}
        assert c.post(params, g.piece(number), octet=True)[0] == 200
    assert {d["md5"] for d in read_completions(server.directory)} == {f.identifier, g.identifier}


def test_non_hash_identifier_gets_a_derived_progress_id(server: Any) -> None:
    c = server.client()
    f = ChunkedFile.random(4 * KB, 2 * KB, identifier="4096-my file (1).bin")
    status, body = c.post_chunk(f, 1)
    assert status == 200
    upload_id = body["upload_id"]
    assert upload_id.startswith("chunks-") and c.progress(upload_id)["state"] == "uploading"


# -- refusals --------------------------------------------------------------------------------

HOSTILE = [
    ({"filename": "../../etc/passwd"}, "bad_filename"),
    ({"filename": "/etc/passwd"}, "bad_filename"),
    ({"filename": "a\\b.txt"}, "bad_filename"),
    ({"filename": "a\x00b.txt"}, "bad_filename"),
    ({"filename": ".."}, "bad_filename"),
    ({"filename": "x" * 300}, "bad_filename"),
    ({"relativePath": "../up.txt"}, "bad_filename"),
    ({"relativePath": "dir/../../up.txt"}, "bad_filename"),
    ({"relativePath": "/abs/up.txt"}, "bad_filename"),
    ({"relativePath": "C:\\win\\up.txt"}, "bad_filename"),
    ({"identifier": "a\x00b"}, "bad_identifier"),
    ({"identifier": "i" * 256}, "bad_identifier"),
    ({"identifier": None}, "bad_identifier"),
    ({"totalChunks": 100000}, "bad_total_chunks"),
    ({"totalChunks": 2}, "bad_total_chunks"),
    ({"totalChunks": 0}, "bad_total_chunks"),
    ({"totalSize": 10**15}, "too_large"),
    ({"chunkSize": 0}, "bad_chunk_size"),
    ({"chunkSize": 10**12}, "bad_chunk_size"),
    ({"chunkNumber": 0}, "bad_chunk_number"),
    ({"chunkNumber": 4}, "bad_chunk_number"),
    ({"chunkNumber": "1e3"}, "bad_parameter"),
    ({"chunkNumber": "-1"}, "bad_parameter"),
    ({"chunkNumber": " 1"}, "bad_parameter"),
    ({"chunkNumber": "1_0"}, "bad_parameter"),
    ({"totalSize": None}, "bad_parameter"),
    ({"currentChunkSize": 5}, "size_mismatch"),
    ({"sha256": "xyz"}, "bad_parameter"),
]


@pytest.mark.parametrize(("override", "reason"), HOSTILE, ids=[r for _, r in HOSTILE])
def test_hostile_parameters_are_refused_with_a_permanent_status(
    server: Any, override: dict[str, Any], reason: str
) -> None:
    f = ChunkedFile.random(6 * KB, 2 * KB)
    c = server.client()
    status, body = c.post(f.params(1, **override), f.piece(1))
    assert status == 415, body
    assert body["error"]["reason"] == reason
    assert body["error"]["message"]
    status, tested = c.test(f.params(1, **override))
    assert status == 415 and tested is not None and tested["error"]["reason"] == reason
    assert leftovers(server.directory) == {"tmp": [], "partial": []}
    # Nothing was written outside the store's own names either.
    assert sorted(os.listdir(server.directory)) == ["files", "partial", "tmp", "tus"]


def test_chunk_body_of_the_wrong_size_is_refused(server: Any) -> None:
    f = ChunkedFile.random(6 * KB, 2 * KB)
    c = server.client()
    status, body = c.post(f.params(1), f.piece(1)[:-1])
    assert status == 415 and body["error"]["reason"] == "size_mismatch"
    # More than declared: refused at the limit (413), nothing of it kept.
    status, body = c.post(f.params(3), f.piece(3) + b"x")
    assert status == 413 and body["error"]["reason"] == "too_large"
    status, body = c.post(f.params(3), f.piece(3) + b"x", octet=True)
    assert status == 413 and body["error"]["reason"] == "too_large"
    status, body = c.post(f.params(1), f.piece(1), field="upload")
    assert status == 415 and body["error"]["reason"] == "no_file"
    assert leftovers(server.directory) == {"tmp": [], "partial": []}


def test_oversized_and_broken_bodies_are_refused_without_leaks(tmp_path: Any) -> None:
    with served(str(tmp_path), chunk_options={"max_chunk_size": 4 * KB}) as s:
        c = s.client()
        f = ChunkedFile.random(8 * KB, 4 * KB)
        huge = os.urandom(80 * KB)  # over two chunks plus 64 KB of form overhead
        body, ctype = multipart_body([("identifier", None, b"x" * 8), ("file", "b", huge)])
        status, _, data = c.request("POST", CHUNKS, body, {"Content-Type": ctype})
        assert status == 413 and json.loads(data)["error"]["reason"] == "too_large"
        status, _, data = c.request(
            "POST", CHUNKS, b"--nope\r\n\r\n", {"Content-Type": "multipart/form-data; boundary=x"}
        )
        assert status == 415 and json.loads(data)["error"]["reason"] in ("bad_body", "no_file")
        # A client that vanishes mid-chunk.
        parts = [(k, None, str(v).encode()) for k, v in f.params(1).items()]
        body, ctype = multipart_body([*parts, ("file", "b", f.piece(1))])
        up = RawUpload(c, CHUNKS, body, ctype)
        up.send(len(body) // 2)
        up.abort()
        wait_until(lambda: leftovers(s.directory) == {"tmp": [], "partial": []})


def test_post_without_a_session_is_refused(server: Any) -> None:
    f = ChunkedFile.random(4 * KB, 2 * KB)
    anonymous = ChunkClient(server.url)
    status, body = anonymous.post(f.params(1), f.piece(1))
    assert status == 415 and body["error"]["reason"] == "no_session"
    assert leftovers(server.directory) == {"tmp": [], "partial": []}


def test_no_chunk_request_issues_a_session(server: Any) -> None:
    """Parallel first requests without a cookie would each get their own session and
    spread one file over several: every chunk request is refused (415, which every
    stock client treats as permanent) and says how to get a session."""
    f = ChunkedFile.random(4 * KB, 2 * KB)
    anonymous = ChunkClient(server.url)
    requests = [
        ("GET", CHUNKS + "?" + urlencode(f.params(1)), None, {}),
        ("POST", CHUNKS + "/merge?" + urlencode(f.params()), None, {}),
        ("DELETE", CHUNKS + "?identifier=" + f.identifier, None, {}),
        ("POST", CHUNKS + "?" + urlencode(f.params(1)), f.piece(1), {"Content-Type": "x/y"}),
    ]
    for method, path, body, headers in requests:
        status, got, data = anonymous.request(method, path, body, headers)
        assert status == 415 and "set-cookie" not in got, (method, path)
        error = json.loads(data)["error"]
        assert error["reason"] == "no_session"
        assert "GET /uploadmeter/session" in error["message"]
    assert anonymous.cookies == {}
    assert leftovers(server.directory) == {"tmp": [], "partial": []}
    # The documented way for clients without a page of the site.
    status, got, _ = anonymous.request("GET", "/uploadmeter/session")
    assert status == 204 and "uploadmeter_session" in anonymous.cookies
    assert anonymous.upload(f)["complete"]


def test_an_edited_file_with_the_same_name_and_size_is_stored_again(server: Any) -> None:
    """The npm clients' default identifier is ``<size>-<name>``: not a hash, so a finished
    upload under it says nothing about the next file that has it."""
    c = server.client()
    first = ChunkedFile.random(6 * KB, 2 * KB, identifier="6144-report.pdf")
    edited = ChunkedFile.random(6 * KB, 2 * KB, identifier="6144-report.pdf")
    assert c.upload(first)["complete"]
    for number in (1, 2, 3):  # as the clients do: test, then send what is missing
        assert c.test(edited.params(number)) == (204, None)
        status, body = c.post_chunk(edited, number)
        assert status == 200 and body["complete"] == (number == 3), body
    assert body["result"]["sha256"] == edited.sha256
    assert [d["sha256"] for d in read_completions(server.directory)] == [
        first.sha256,
        edited.sha256,
    ]
    with open(read_completions(server.directory)[1]["path"], "rb") as stored:
        assert stored.read() == edited.data
    record = c.progress(body["upload_id"])
    assert record["state"] == "done" and record["result"]["sha256"] == edited.sha256
    assert leftovers(server.directory) == {"tmp": [], "partial": []}


def test_a_get_never_completes_or_changes_an_upload(server: Any) -> None:
    """A test GET (also reachable by a cross-site navigation, SameSite=Lax) whose
    identifier is the SHA-256 of a file the session uploaded before, under any name."""
    c = server.client()
    data = os.urandom(6 * KB)
    f = ChunkedFile(data, 2 * KB, identifier=hashlib.sha256(data).hexdigest())
    c.upload(f)
    c.request("DELETE", CHUNKS + "?identifier=" + f.identifier)
    before = read_completions(server.directory)
    assert len(before) == 1
    record = c.progress(f.identifier)
    other_name = ChunkedFile(data, 2 * KB, identifier=f.identifier, filename="evil.exe")
    for number in (None, 1, 2, 3):
        status, body = c.test(other_name.params(number))
        if number is None:
            assert status == 200 and body is not None and not body["complete"]
        else:
            assert (status, body) == (204, None)
    assert read_completions(server.directory) == before  # no on_complete
    assert c.progress(f.identifier) == record  # no record written
    assert leftovers(server.directory) == {"tmp": [], "partial": []}


def test_changed_sizes_under_one_identifier_conflict(server: Any) -> None:
    c = server.client()
    f = ChunkedFile.random(6 * KB, 2 * KB, identifier="same-identifier")
    c.post_chunk(f, 1)
    g = ChunkedFile.random(8 * KB, 2 * KB, identifier="same-identifier")
    status, body = c.post_chunk(g, 1)
    assert status == 415 and body["error"]["reason"] == "conflict"


def test_md5_mismatch_rejects_the_merge_and_drops_the_chunks(server: Any) -> None:
    c = server.client()
    f = ChunkedFile.random(6 * KB, 2 * KB, identifier=hashlib.md5(b"other").hexdigest())
    c.post_chunk(f, 1)
    c.post_chunk(f, 2)
    status, body = c.post_chunk(f, 3)
    assert status == 415 and body["error"]["reason"] == "checksum_mismatch"
    assert "MD5" in body["error"]["message"]
    record = c.progress(f.identifier)
    assert record["state"] == "error" and record["error"]["status"] == 415
    assert read_completions(server.directory) == []
    assert leftovers(server.directory) == {"tmp": [], "partial": []}
    assert os.listdir(os.path.join(server.directory, "files")) == []
    # The upload can be made again from scratch.
    assert c.test(f.params(1)) == (204, None)


def test_declared_sha256_is_checked(server: Any) -> None:
    c = server.client()
    f = ChunkedFile.random(4 * KB, 2 * KB, identifier="sha-declared")
    status, body = c.post_chunk(f, 1, sha256="0" * 64)
    assert status == 200
    status, body = c.post_chunk(f, 2, sha256="0" * 64)
    assert status == 415 and "SHA-256" in body["error"]["message"]
    g = ChunkedFile.random(4 * KB, 2 * KB, identifier="sha-declared-2")
    c.post_chunk(g, 1, sha256=g.sha256)
    status, body = c.post_chunk(g, 2, sha256=g.sha256)
    assert status == 200 and body["result"]["sha256"] == g.sha256


def test_sha256_identifier_is_verified(server: Any) -> None:
    c = server.client()
    data = os.urandom(4 * KB)
    f = ChunkedFile(data, 2 * KB, identifier=hashlib.sha256(b"not it").hexdigest())
    c.post_chunk(f, 1)
    status, body = c.post_chunk(f, 2)
    assert status == 415 and body["error"]["reason"] == "checksum_mismatch"


def test_max_file_size_and_session_quota(tmp_path: Any) -> None:
    options = {"max_file_size": 8 * KB, "session_quota": 12 * KB}
    with served(str(tmp_path), chunk_options=options) as s:
        c = s.client()
        big = ChunkedFile.random(9 * KB, 3 * KB)
        status, body = c.post_chunk(big, 1)
        assert status == 415 and body["error"]["reason"] == "too_large"
        first = ChunkedFile.random(8 * KB, 2 * KB)
        second = ChunkedFile.random(6 * KB, 2 * KB)
        assert c.post_chunk(first, 1)[0] == 200
        status, body = c.post_chunk(second, 1)
        assert status == 415 and body["error"]["reason"] == "quota"
        # Another session has its own quota.
        assert s.client().post_chunk(second, 1)[0] == 200
        c.upload(first, [2, 3, 4])  # finished uploads no longer count
        assert c.post_chunk(second, 1)[0] == 200


# -- merge, cancel, cleanup -------------------------------------------------------------------


def test_explicit_merge_when_auto_merge_is_off(tmp_path: Any) -> None:
    with served(str(tmp_path), chunk_options={"auto_merge": False}) as s:
        c = s.client()
        f = ChunkedFile.random(6 * KB, 2 * KB)
        merge = CHUNKS + "/merge"
        status, _, data = c.request("POST", merge + "?" + urlencode(f.params()))
        assert status == 404 and json.loads(data)["error"]["reason"] == "not_found"
        c.post_chunk(f, 1)
        status, body = c.post_chunk(f, 3)
        assert status == 200 and not body["complete"]
        status, _, data = c.request("POST", merge + "?" + urlencode(f.params()))
        assert status == 409 and json.loads(data)["missing"] == [2]
        status, body = c.post_chunk(f, 2)
        assert status == 200 and not body["complete"]
        assert read_completions(s.directory) == []
        form, ctype = multipart_body([(k, None, str(v).encode()) for k, v in f.params().items()])
        status, _, data = c.request("POST", merge, form, {"Content-Type": ctype})
        assert status == 200 and json.loads(data)["result"]["md5"] == f.identifier
        # Again: idempotent.
        status, _, data = c.request(
            "POST", merge, json.dumps(f.params()).encode(), {"Content-Type": "application/json"}
        )
        assert status == 200 and json.loads(data)["complete"]
        assert len(read_completions(s.directory)) == 1


def test_an_upload_whose_merge_never_ran_merges_on_the_resent_last_chunk(tmp_path: Any) -> None:
    with served(str(tmp_path), chunk_options={"auto_merge": False}) as s:
        c = s.client()
        f = ChunkedFile.random(6 * KB, 2 * KB)
        c.upload(f)
    with served(str(tmp_path), store=s.meter.store) as s2:
        c2 = ChunkClient(s2.url)
        c2.cookies = c.cookies
        # The tests merge nothing, and do not let the client call the file complete:
        # the last chunk reads as missing, so the client sends it again.
        answers = [c2.test(f.params(n)) for n in (1, 2, 3)]
        assert [status for status, _ in answers] == [200, 200, 204]
        assert answers[0][1] is not None and answers[0][1]["uploaded"] == [1, 2]
        assert read_completions(s2.directory) == []
        status, body = c2.post_chunk(f, 3)
        assert status == 200 and body["complete"]
        assert len(read_completions(s2.directory)) == 1


def test_cancel_endpoint_stops_the_upload_and_drops_its_chunks(server: Any) -> None:
    c = server.client()
    f = ChunkedFile.random(6 * KB, 2 * KB)
    c.post_chunk(f, 1)
    status, _, data = c.request("POST", f"/uploadmeter/cancel?id={f.identifier}")
    assert status == 200 and json.loads(data)["state"] == "cancelled"
    status, body = c.post_chunk(f, 2)
    assert status == 415 and body["error"]["reason"] == "cancelled"
    assert leftovers(server.directory)["partial"] == []
    assert c.progress(f.identifier)["state"] == "cancelled"
    # A new attempt starts afresh.
    assert c.upload(f)["complete"]


def test_delete_removes_chunks_and_marks_the_record_cancelled(server: Any) -> None:
    c = server.client()
    f = ChunkedFile.random(6 * KB, 2 * KB)
    c.post_chunk(f, 1)
    status, _, data = c.request("DELETE", CHUNKS + "?identifier=" + f.identifier)
    assert status == 200 and json.loads(data) == {"upload_id": f.identifier, "deleted": True}
    assert leftovers(server.directory)["partial"] == []
    assert c.progress(f.identifier)["state"] == "cancelled"
    assert c.test(f.params(1)) == (204, None)
    status, _, _ = c.request("DELETE", CHUNKS)
    assert status == 415


def test_cleanup_deletes_abandoned_chunks_and_old_files(server: Any) -> None:
    files = server.endpoint("/chunks").files
    c = server.client()
    abandoned = ChunkedFile.random(6 * KB, 2 * KB)
    c.post_chunk(abandoned, 1)
    finished = ChunkedFile.random(4 * KB, 2 * KB)
    c.upload(finished)
    _, handle = files.temp_file()
    handle.close()
    later = time.time() + files.expire_after + 60
    stats = files.cleanup(now=later)
    assert (stats.partial, stats.temp, stats.files) == (1, 1, 1)
    assert leftovers(server.directory) == {"tmp": [], "partial": []}
    assert os.listdir(os.path.join(server.directory, "files")) == []
    assert c.test(abandoned.params(1)) == (204, None)


def test_cleanup_runs_on_the_way_of_requests(tmp_path: Any) -> None:
    options = {"expire_after": 3600.0, "cleanup_interval": 0.0}
    with served(str(tmp_path), files_options=options) as s:
        c = s.client()
        f = ChunkedFile.random(6 * KB, 2 * KB)
        c.post_chunk(f, 1)
        (folder,) = [
            os.path.join(root, d)
            for root, dirs, _ in os.walk(os.path.join(s.directory, "partial"))
            for d in dirs
            if os.path.exists(os.path.join(root, d, "meta.json"))
        ]
        old = time.time() - 7200
        os.utime(folder, (old, old))
        g = ChunkedFile.random(2 * KB, 2 * KB)
        c.upload(g)  # any request may clean up
        assert not os.path.exists(folder)


# -- instant upload --------------------------------------------------------------------------


def test_instant_upload_within_a_session(server: Any) -> None:
    c = server.client()
    f = ChunkedFile.random(6 * KB, 2 * KB)
    c.upload(f)
    # Same upload again while its record lives: every test says skip, nothing is merged.
    status, body = c.test(f.params(1))
    assert status == 200 and body is not None and body["skipUpload"] and body["complete"]
    assert body["url"] == "/files/" + f.sha256
    # Forget the upload itself; the stored file still makes the next one instant -- but
    # only a POST completes it: the tests report the chunks missing and complete nothing.
    c.request("DELETE", CHUNKS + "?identifier=" + f.identifier)
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        assert list(pool.map(lambda n: c.test(f.params(n)), [1, 2, 3])) == [(204, None)] * 3
        # The clients then send the first chunks at once: one completes the upload.
        answers = list(pool.map(lambda n: c.post_chunk(f, n), [1, 2, 3]))
    assert all(status == 200 and body["skipUpload"] for status, body in answers), answers
    completions = read_completions(server.directory)
    assert [d["instant"] for d in completions] == [False, True]
    assert completions[1]["path"] == completions[0]["path"]
    assert c.progress(f.identifier)["result"]["instant"] is True
    assert leftovers(server.directory) == {"tmp": [], "partial": []}  # no chunk stored
    # Another session does not learn that this file exists.
    other = server.client()
    assert other.test(f.params(1)) == (204, None)


def test_merge_request_completes_an_instant_upload_without_a_chunk(server: Any) -> None:
    """What the chunked component asks before it sends a file by its SHA-256."""
    c = server.client()
    f = ChunkedFile.random(6 * KB, 2 * KB)
    f.identifier = f.sha256
    status, _, data = c.request("POST", CHUNKS + "/merge?" + urlencode(f.params()))
    assert status == 404 and json.loads(data)["error"]["reason"] == "not_found"
    c.upload(f)
    c.request("DELETE", CHUNKS + "?identifier=" + f.identifier)
    status, _, data = c.request("POST", CHUNKS + "/merge?" + urlencode(f.params()))
    body = json.loads(data)
    assert status == 200 and body["complete"] and body["skipUpload"]
    assert [d["instant"] for d in read_completions(server.directory)] == [False, True]


def test_global_instant_upload_trusts_only_sha256(tmp_path: Any) -> None:
    with served(str(tmp_path), chunk_options={"instant_upload": "global"}) as s:
        data = os.urandom(6 * KB)
        by_sha = ChunkedFile(data, 2 * KB, identifier=hashlib.sha256(data).hexdigest())
        s.client().upload(by_sha)
        other = s.client()
        assert other.test(by_sha.params(1)) == (204, None)  # a GET completes nothing
        status, body = other.post_chunk(by_sha, 1)
        assert status == 200 and body["skipUpload"] and body["complete"]
        assert read_completions(s.directory)[-1]["instant"] is True
        by_md5 = ChunkedFile(data, 2 * KB, identifier=hashlib.md5(data).hexdigest())
        status, body = s.client().post_chunk(by_md5, 1)
        assert status == 200 and not body["complete"] and body["uploaded"] == [1]
        assert len(read_completions(s.directory)) == 2


# -- completion hooks ------------------------------------------------------------------------


def test_on_complete_can_reject_the_file(tmp_path: Any) -> None:
    def reject(info: FileInfo) -> None:
        raise UploadRejected("Only PDF files are accepted.")

    with served(str(tmp_path)) as s:
        chunks = s.endpoint("/chunks")
        chunks.on_complete = reject
        c = s.client()
        f = ChunkedFile.random(2 * KB, 2 * KB)
        status, body = c.post_chunk(f, 1)
        assert status == 415 and body["error"]["reason"] == "rejected"
        assert body["error"]["message"] == "Only PDF files are accepted."
        record = c.progress(f.identifier)
        assert record["state"] == "error" and record["error"]["message"] == body["error"]["message"]
        assert stored_files(s.directory) == []  # the refused file did not stay


def stored_files(directory: str) -> list[str]:
    return [name for _, _, names in os.walk(os.path.join(directory, "files")) for name in names]


def test_on_complete_failure_is_a_500_without_details(tmp_path: Any) -> None:
    def crash(info: FileInfo) -> None:
        raise RuntimeError("secret path /srv/x")

    with served(str(tmp_path)) as s:
        s.endpoint("/chunks").on_complete = crash
        c = s.client()
        f = ChunkedFile.random(2 * KB, 2 * KB)
        status, body = c.post_chunk(f, 1)
        assert status == 500 and "secret" not in json.dumps(body)
        assert c.progress(f.identifier)["state"] == "error"


def test_on_complete_hands_over_to_a_processing_task(tmp_path: Any) -> None:
    started: list[Any] = []

    with served(str(tmp_path)) as s:

        def on_complete(info: FileInfo) -> Any:
            t = task(s.meter, info.session, info.upload_id, "compressing", total=info.size)
            started.append(t)
            return t.start()

        s.endpoint("/chunks").on_complete = on_complete
        c = s.client()
        f = ChunkedFile.random(4 * KB, 2 * KB)
        c.upload(f)
        record = c.progress(f.identifier)
        assert record["state"] == "processing"
        assert record["processing"]["started_at"] >= record["started_at"]
        assert {k: v for k, v in record["processing"].items() if k != "started_at"} == {
            "phase": "compressing",
            "done": 0,
            "total": 4 * KB,
            "percentage": 0,
        }
        with started[0] as t:
            t.advance(4 * KB)
            t.set_result(archive="/files/x.gz")
        record = c.progress(f.identifier)
        assert record["state"] == "done"
        assert record["result"]["archive"] == "/files/x.gz"
        assert record["result"]["sha256"] == f.sha256  # the merge's result was kept


# -- several workers ---------------------------------------------------------------------------


@pytest.mark.gunicorn
@pytest.mark.parametrize("shell", ["wsgi", "asgi"])
def test_parallel_chunks_on_several_workers_merge_exactly_once(
    shell: str, tmp_path: Any, sqlite_path: str
) -> None:
    env = {
        "UPLOADMETER_TEST_STORE": "sqlite://" + sqlite_path,
        "UPLOADMETER_TEST_FILES": str(tmp_path / "files"),
    }
    f = ChunkedFile.random(40 * 8 * KB + 77, 8 * KB)
    with run_workers(shell, env) as url:
        c = ChunkClient(url)
        c.start()
        # Every chunk twice, six at a time: duplicates and last chunks race in parallel.
        numbers = list(range(1, f.total_chunks + 1)) * 2
        random.Random(3).shuffle(numbers)
        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(lambda n: c.post_chunk(f, n), numbers))
        assert all(status == 200 for status, _ in answers)
        wait_until(lambda: c.progress(f.identifier)["state"] == "done")
        completions = read_completions(str(tmp_path / "files"))
        assert len(completions) == 1 and completions[0]["sha256"] == f.sha256
        assert leftovers(str(tmp_path / "files")) == {"tmp": [], "partial": []}


# -- races and leftovers ----------------------------------------------------------------------


def _temp_files(directory: str) -> list[str]:
    return os.listdir(os.path.join(directory, "tmp"))


def _in_flight(c: ChunkClient, f: ChunkedFile, number: int, directory: str) -> RawUpload:
    """A chunk whose request reached the server but whose body is not all sent yet."""
    before = len(_temp_files(directory))
    query = urlencode(f.params(number))
    up = RawUpload(c, CHUNKS + "?" + query, f.piece(number), "application/octet-stream")
    up.send(len(f.piece(number)) // 2)
    wait_until(lambda: len(_temp_files(directory)) > before)  # the server is reading it
    return up


def test_a_chunk_in_flight_at_a_delete_is_refused_and_leaves_nothing(server: Any) -> None:
    c = server.client()
    f = ChunkedFile.random(6 * KB, 2 * KB)
    c.post_chunk(f, 1)
    straggler = _in_flight(c, f, 2, server.directory)
    status, _, _ = c.request("DELETE", CHUNKS + "?identifier=" + f.identifier)
    assert status == 200
    straggler.send_rest()
    status, _, data = straggler.finish()
    assert status == 415 and json.loads(data)["error"]["reason"] == "cancelled"
    assert leftovers(server.directory) == {"tmp": [], "partial": []}
    assert c.progress(f.identifier)["state"] == "cancelled"
    assert c.upload(f)["complete"]  # a new attempt, sent after the cancel


def test_chunks_in_flight_at_a_cancel_are_all_refused(server: Any) -> None:
    c = server.client()
    f = ChunkedFile.random(8 * KB, 2 * KB)
    c.post_chunk(f, 1)
    stragglers = [_in_flight(c, f, n, server.directory) for n in (2, 3)]
    status, _, _ = c.request("POST", f"/uploadmeter/cancel?id={f.identifier}")
    assert status == 200
    for up in stragglers:  # the first refusal tells the client; the second was in flight
        up.send_rest()
        status, _, data = up.finish()
        assert status == 415 and json.loads(data)["error"]["reason"] == "cancelled"
    assert leftovers(server.directory) == {"tmp": [], "partial": []}
    assert c.progress(f.identifier)["state"] == "cancelled"
    # After a cancel and a DELETE a new attempt is not refused again.
    c.request("DELETE", CHUNKS + "?identifier=" + f.identifier)
    assert c.upload(f)["complete"]


def test_instant_upload_after_a_cancelled_attempt(server: Any) -> None:
    c = server.client()
    data = os.urandom(6 * KB)
    f = ChunkedFile(data, 2 * KB, identifier=hashlib.md5(data).hexdigest())
    c.post_chunk(f, 1)  # an attempt ...
    c.request("POST", f"/uploadmeter/cancel?id={f.identifier}")  # ... cancelled
    c.upload(ChunkedFile(data, 2 * KB, identifier=hashlib.sha256(data).hexdigest()))
    # Chosen again: the tests, however many, are refused and change nothing ...
    for _ in range(2):
        status, body = c.test(f.params(1))
        assert status == 415 and body is not None and body["error"]["reason"] == "cancelled"
    # ... the chunk the client had in flight is refused and tells it of the cancel ...
    status, body = c.post_chunk(f, 2)
    assert status == 415 and body["error"]["reason"] == "cancelled"
    # ... and the next attempt completes at once: the server has the file.
    status, body = c.post_chunk(f, 1)
    assert status == 200 and body["skipUpload"] and body["complete"]
    assert c.progress(f.identifier)["result"]["instant"] is True
    assert [d["instant"] for d in read_completions(server.directory)] == [False, True]


def test_a_test_request_with_other_sizes_conflicts(server: Any) -> None:
    c = server.client()
    f = ChunkedFile.random(6 * KB, 2 * KB, identifier="same-identifier")
    c.post_chunk(f, 1)
    g = ChunkedFile.random(8 * KB, 2 * KB, identifier="same-identifier")
    status, body = c.test(g.params(1))
    assert status == 415 and body is not None and body["error"]["reason"] == "conflict"


def test_a_post_without_a_session_is_refused_before_its_body_is_read(server: Any) -> None:
    f = ChunkedFile.random(1024 * KB, 1024 * KB)
    anonymous = ChunkClient(server.url)
    query = urlencode(f.params(1))
    up = RawUpload(anonymous, CHUNKS + "?" + query, f.piece(1), "application/octet-stream")
    status, _, data = up.finish()  # not one byte of the body sent
    assert status == 415 and json.loads(data)["error"]["reason"] == "no_session"
    assert leftovers(server.directory) == {"tmp": [], "partial": []}


def test_a_progress_write_cannot_overwrite_the_merges_final_record(tmp_path: Any) -> None:
    store = HookedStore()
    with served(str(tmp_path), store=store) as s:
        c = s.client()
        f = ChunkedFile.random(6 * KB, 2 * KB)
        session = s.meter.sessions.find(c.cookie_header())
        assert session is not None
        c.post_chunk(f, 1)  # the record says "uploading"
        # Chunk 2's progress write stalls between reading the record and writing it ...
        stall = Pause()
        store.after_get(record_key(session, f.identifier), stall)
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            second = pool.submit(c.post_chunk, f, 2)
            assert stall.reached.wait(10)
            # ... while the last chunk arrives on another worker and wants to merge.
            status, _ = c.post_chunk(f, 3)
            stall.resume()
            assert status == 200 and second.result()[0] == 200
        record = c.progress(f.identifier)
        assert record["state"] == "done" and record["result"]["sha256"] == f.sha256


def test_link_to_keeps_an_existing_destination(tmp_path: Any) -> None:
    source = tmp_path / "stored"
    source.write_bytes(b"upload")
    info = FileInfo(str(source), "a.txt", 6, "0" * 64, "0" * 32, "c.s", "abcdefgh", "chunks")
    assert info.link_to(tmp_path / "kept") == str(tmp_path / "kept")
    assert (tmp_path / "kept").read_bytes() == b"upload"
    existing = tmp_path / "existing"
    existing.write_bytes(b"mine")
    with pytest.raises(FileExistsError):
        info.link_to(existing)
    assert existing.read_bytes() == b"mine"


def test_a_delete_during_the_merge_cancels_it_cleanly(tmp_path: Any) -> None:
    store = HookedStore()
    with served(str(tmp_path), store=store) as s:
        c = s.client()
        f = ChunkedFile.random(6 * KB, 2 * KB)
        c.upload(f, [1, 2])
        merging = Pause()
        store.after_set('"phase":"merging"', merging)  # the merge's first write
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            last = pool.submit(c.post_chunk, f, 3)
            assert merging.reached.wait(10)
            status, _, _ = c.request("DELETE", CHUNKS + "?identifier=" + f.identifier)
            assert status == 200
            merging.resume()
            status, body = last.result()
        assert status == 415 and body["error"]["reason"] == "cancelled"
        assert c.progress(f.identifier)["state"] == "cancelled"
        assert read_completions(s.directory) == [] and stored_files(s.directory) == []
        assert leftovers(s.directory) == {"tmp": [], "partial": []}


def test_the_upload_clock_starts_when_the_first_chunk_request_arrives(server: Any) -> None:
    # A first chunk whose body takes a while: the record's clock must include that time,
    # or a few parallel chunks would show an absurd speed.
    c = server.client()
    f = ChunkedFile.random(8 * KB, 4 * KB)
    before = time.time()
    slow = _in_flight(c, f, 1, server.directory)  # half the body sent, server reading
    time.sleep(0.3)  # the throttle itself: the rest of the body comes 0.3 s later
    slow.send_rest()
    assert slow.finish()[0] == 200
    record = c.progress(f.identifier)
    assert record["started_at"] < before + 0.2, record
    assert record["average_speed"] < 4 * KB / 0.3


class _LockWatch(HookedStore):
    """Sets ``refused`` when a request finds an upload's lock taken."""

    def __init__(self) -> None:
        super().__init__()
        self.refused = threading.Event()

    def add(self, key: str, value: str, ttl: float) -> bool:
        added = super().add(key, value, ttl)
        if not added and key.startswith("lock:chunks:"):
            self.refused.set()
        return added


def test_a_chunk_stored_while_another_writes_progress_is_counted(tmp_path: Any) -> None:
    # Chunk 1's request writes the record (1 chunk) and still holds the upload's lock when
    # chunk 2's request, its chunk stored, comes to write: it must not give up, or the
    # record says 1 chunk until another one comes (the bar behind what the server has).
    store = _LockWatch()
    with served(str(tmp_path), store=store) as s:
        c = s.client()
        f = ChunkedFile.random(6 * KB, 2 * KB)
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            second: list[Any] = []

            def while_holding_the_lock() -> None:
                second.append(pool.submit(c.post_chunk, f, 2))
                assert store.refused.wait(10)  # chunk 2's request found the lock taken

            store.after_set('"bytes_received":2048,', while_holding_the_lock)
            assert c.post_chunk(f, 1)[0] == 200
            assert second and second[0].result(10)[0] == 200
        record = c.progress(f.identifier)
    assert record["state"] == "uploading"
    assert record["bytes_received"] == 4 * KB, record
