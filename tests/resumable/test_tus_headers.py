"""The tus protocol's headers as units: ``Tus-Resumable``, ``Upload-Length``,
``Upload-Metadata``, ``Upload-Checksum`` and ``Upload-Offset``, each good and bad value,
through TusUploads mounted as a user mounts it (werkzeug's test client: no socket, so every
header case runs in milliseconds; tests/resumable/test_tus.py covers the same endpoint over
real HTTP and under gunicorn)."""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

import pytest
from werkzeug.test import Client, TestResponse

from tests.support.chunked_app import make_app, read_completions
from uploadmeter.stores import MemoryStore

TUS = "/uploadmeter/tus/"
V = {"Tus-Resumable": "1.0.0"}
OFFSET_TYPE = "application/offset+octet-stream"


def b64(data: bytes | str) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


@pytest.fixture
def files(tmp_path: Any) -> str:
    return str(tmp_path)


@pytest.fixture
def client(files: str) -> Client:
    return Client(make_app(MemoryStore(), files, tus_options={"max_size": 1000}))


def create(client: Client, length: int, **headers: str) -> str:
    response = client.post(TUS, headers={**V, "Upload-Length": str(length), **headers})
    assert response.status_code == 201, response.get_data(as_text=True)
    return str(response.headers["Location"])


def patch(client: Client, url: str, offset: int | str, data: bytes, **headers: str) -> TestResponse:
    all_headers = {**V, "Content-Type": OFFSET_TYPE, "Upload-Offset": str(offset), **headers}
    return client.patch(url, data=data, headers=all_headers)


def refused(response: TestResponse, status: int, words: str) -> None:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.headers["Tus-Resumable"] == "1.0.0"  # every answer carries it
    assert words in json.loads(response.get_data())["error"]["message"]


# -- Tus-Resumable -----------------------------------------------------------------------


@pytest.mark.parametrize("version", [None, "", "0.2.2", "1.0", "1.0.0 ", "2.0.0"])
def test_a_request_without_version_1_0_0_is_412(client: Client, version: str | None) -> None:
    headers = {"Upload-Length": "5"} if version is None else {"Tus-Resumable": version}
    response = client.post(TUS, headers={"Upload-Length": "5", **headers})
    refused(response, 412, "Unsupported tus version")
    assert response.headers["Tus-Version"] == "1.0.0"


def test_options_needs_no_version(client: Client) -> None:
    response = client.options(TUS)
    assert response.status_code == 204
    assert response.headers["Tus-Version"] == "1.0.0"
    assert response.headers["Tus-Max-Size"] == "1000"


# -- Upload-Length -----------------------------------------------------------------------


@pytest.mark.parametrize("length", [None, "", "-1", "abc", "1.5", "1e3", " 5", "0x10"])
def test_upload_length_must_be_a_non_negative_integer(client: Client, length: str | None) -> None:
    headers = dict(V) if length is None else {**V, "Upload-Length": length}
    refused(client.post(TUS, headers=headers), 400, "Upload-Length must be")


def test_upload_length_above_max_size_is_413(client: Client) -> None:
    refused(client.post(TUS, headers={**V, "Upload-Length": "1001"}), 413, "at most 1000 bytes")
    assert create(client, 1000)


def test_a_deferred_length_must_be_1_and_alone(client: Client) -> None:
    response = client.post(TUS, headers={**V, "Upload-Defer-Length": "2"})
    refused(response, 400, "Upload-Defer-Length must be 1")
    response = client.post(TUS, headers={**V, "Upload-Defer-Length": "1", "Upload-Length": "3"})
    refused(response, 400, "not both")


def test_head_reports_length_and_offset(client: Client) -> None:
    url = create(client, 10)
    head = client.head(url, headers=V)
    assert head.status_code == 200
    assert (head.headers["Upload-Length"], head.headers["Upload-Offset"]) == ("10", "0")
    assert head.headers["Cache-Control"] == "no-store"


# -- Upload-Metadata ---------------------------------------------------------------------


def test_metadata_is_decoded_for_the_app_and_echoed_as_base64(client: Client, files: str) -> None:
    header = f"filename {b64('résumé.txt')},empty,type  {b64('text/plain')} "
    url = create(client, 0, **{"Upload-Metadata": header})  # 0 bytes: complete at once
    echoed = client.head(url, headers=V).headers["Upload-Metadata"]
    assert echoed == f"filename {b64('résumé.txt')},empty,type {b64('text/plain')}"
    [done] = read_completions(files)
    assert done["filename"] == "résumé.txt"
    assert done["metadata"] == {"filename": "résumé.txt", "empty": "", "type": "text/plain"}


@pytest.mark.parametrize(
    ("header", "words"),
    [
        ("filename not*base64", "is not Base64"),
        (f"filename {b64('a')}=", "is not Base64"),
        (f"name {b64('a')},name {b64('b')}", "keys must be unique"),
        (f"nämé {b64('a')}", "keys must be unique"),
        (f"name {b64('a')},,", "keys must be unique"),
        (f"filename {b64('../x')}", "must not contain a path"),
        (f"filename {b64('a' * 300)}", "longer than 255 bytes"),
    ],
)
def test_bad_metadata_is_400(client: Client, header: str, words: str) -> None:
    response = client.post(TUS, headers={**V, "Upload-Length": "5", "Upload-Metadata": header})
    refused(response, 400, words)


def test_metadata_longer_than_the_limit_is_400(files: str) -> None:
    client = Client(make_app(MemoryStore(), files, tus_options={"max_metadata_length": 64}))
    ok = f"name {b64('x' * 30)}"
    assert len(ok) <= 64 and create(client, 5, **{"Upload-Metadata": ok})
    too_long = f"name {b64('x' * 60)}"
    response = client.post(TUS, headers={**V, "Upload-Length": "5", "Upload-Metadata": too_long})
    refused(response, 400, "Upload-Metadata is too long")


# -- Upload-Offset -----------------------------------------------------------------------


@pytest.mark.parametrize("offset", ["", "-1", "abc", "1.0", " 0"])
def test_upload_offset_must_be_a_non_negative_integer(client: Client, offset: str) -> None:
    url = create(client, 10)
    refused(patch(client, url, offset, b"abc"), 400, "Upload-Offset must be")


def test_a_patch_at_the_wrong_offset_is_409_with_the_right_one(client: Client) -> None:
    url = create(client, 10)
    assert patch(client, url, 0, b"abcd").headers["Upload-Offset"] == "4"
    response = patch(client, url, 2, b"cdef")
    refused(response, 409, "Upload-Offset is 4")
    assert response.headers["Upload-Offset"] == "4"
    assert client.head(url, headers=V).headers["Upload-Offset"] == "4"


def test_data_past_upload_length_is_413_and_not_kept(client: Client) -> None:
    url = create(client, 5)
    refused(patch(client, url, 0, b"abcdef"), 413, "past Upload-Length")
    assert client.head(url, headers=V).headers["Upload-Offset"] == "0"


def test_a_patch_must_be_offset_octet_stream(client: Client) -> None:
    url = create(client, 5)
    response = patch(client, url, 0, b"abc", **{"Content-Type": "application/octet-stream"})
    refused(response, 415, OFFSET_TYPE)


# -- Upload-Checksum ---------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["sha1", "md5", "sha256"])
def test_a_right_checksum_is_accepted(client: Client, algorithm: str) -> None:
    url = create(client, 6)
    digest = b64(hashlib.new(algorithm, b"abc").digest())
    response = patch(client, url, 0, b"abc", **{"Upload-Checksum": f"{algorithm} {digest}"})
    assert response.status_code == 204, response.get_data(as_text=True)
    assert response.headers["Upload-Offset"] == "3"


def test_a_wrong_checksum_is_460_and_keeps_nothing(client: Client) -> None:
    url = create(client, 6)
    wrong = b64(hashlib.sha1(b"abd").digest())
    refused(patch(client, url, 0, b"abc", **{"Upload-Checksum": f"sha1 {wrong}"}), 460, "Mismatch")
    assert client.head(url, headers=V).headers["Upload-Offset"] == "0"


@pytest.mark.parametrize(
    ("header", "status", "words"),
    [
        ("crc32 AAAA", 400, "Unsupported checksum algorithm"),
        ("SHA1 " + b64(hashlib.sha1(b"abc").digest()), 400, "Unsupported checksum algorithm"),
        ("sha1 not*base64", 400, "not Base64"),
    ],
)
def test_a_bad_checksum_header_is_refused(
    client: Client, header: str, status: int, words: str
) -> None:
    url = create(client, 6)
    refused(patch(client, url, 0, b"abc", **{"Upload-Checksum": header}), status, words)
    assert client.head(url, headers=V).headers["Upload-Offset"] == "0"


def test_creation_with_upload_checks_the_checksum_too(client: Client, files: str) -> None:
    digest = b64(hashlib.sha1(b"abc").digest())
    headers = {
        **V,
        "Upload-Length": "3",
        "Content-Type": OFFSET_TYPE,
        "Upload-Checksum": f"sha1 {digest}",
    }
    response = client.post(TUS, data=b"abc", headers=headers)
    assert response.status_code == 201 and response.headers["Upload-Offset"] == "3"
    assert [done["size"] for done in read_completions(files)] == [3]
    headers["Upload-Checksum"] = "sha1 " + b64(hashlib.sha1(b"abd").digest())
    refused(client.post(TUS, data=b"abc", headers=headers), 460, "Mismatch")
    assert len(read_completions(files)) == 1
