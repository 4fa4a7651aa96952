"""The tus protocol module without a server: header parsing, validation and the statuses
it refuses requests with (over HTTP: tests/resumable/test_tus_headers.py and test_tus.py)."""

from __future__ import annotations

import ast
import base64
import hashlib
import pathlib

import pytest
from werkzeug.datastructures import Headers
from werkzeug.http import parse_date

from uploadmeter.exceptions import TusError
from uploadmeter.resumable.tus import _protocol as tus

V = {"Tus-Resumable": "1.0.0"}
OFFSET = {"Content-Type": "application/offset+octet-stream"}


def b64(data: bytes | str) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


# -- version, method, OPTIONS ----------------------------------------------------------------


def test_version_is_required_and_lookups_ignore_case() -> None:
    tus.check_version({"tus-resumable": "1.0.0"})
    tus.check_version(Headers({"TUS-RESUMABLE": "1.0.0"}))
    for headers in ({}, {"Tus-Resumable": "0.2.2"}, {"Tus-Resumable": "1.0.0 "}):
        with pytest.raises(TusError) as exc:
            tus.check_version(headers)
        assert exc.value.status == 412
        assert exc.value.headers == {"Tus-Version": "1.0.0"}


def test_method_override() -> None:
    assert tus.request_method("post", {}) == "POST"
    assert tus.request_method("POST", {"x-http-method-override": "patch"}) == "PATCH"
    assert tus.request_method("POST", {"X-HTTP-Method-Override": ""}) == "POST"


def test_options_answer() -> None:
    headers = tus.options_headers(12345)
    assert headers["Tus-Version"] == "1.0.0"
    assert headers["Tus-Max-Size"] == "12345"
    assert set(headers["Tus-Extension"].split(",")) == {
        "creation",
        "creation-with-upload",
        "termination",
        "checksum",
        "expiration",
        "creation-defer-length",
        "concatenation",
    }
    assert headers["Tus-Checksum-Algorithm"].split(",") == ["sha1", "sha256", "sha512", "md5"]
    # Every advertised algorithm can be used.
    for name in headers["Tus-Checksum-Algorithm"].split(","):
        digest = hashlib.new(name, b"x").digest()
        assert tus.parse_checksum({"Upload-Checksum": f"{name} {b64(digest)}"}) == tus.Checksum(
            name, digest
        )


def test_expires_and_head_headers() -> None:
    assert tus.upload_expires(0) == "Thu, 01 Jan 1970 00:00:00 GMT"
    headers = tus.head_headers(5, 10, 1_700_000_000.5, "name YQ==")
    assert headers["Upload-Offset"] == "5"
    assert headers["Upload-Length"] == "10"
    assert headers["Upload-Metadata"] == "name YQ=="
    expires = parse_date(headers["Upload-Expires"])
    assert expires is not None and int(expires.timestamp()) == 1_700_000_000
    assert "Upload-Metadata" not in tus.head_headers(0, 0, 0, None)
    assert "Upload-Metadata" not in tus.head_headers(0, 0, 0, "")
    assert "Upload-Concat" not in tus.head_headers(0, 0, 0, None)
    deferred = tus.head_headers(3, None, 0, None, "partial")
    assert deferred["Upload-Defer-Length"] == "1" and "Upload-Length" not in deferred
    assert deferred["Upload-Concat"] == "partial" and deferred["Upload-Offset"] == "3"
    unfinished_final = tus.head_headers(None, 11, 0, None, "final;/a /b")
    assert "Upload-Offset" not in unfinished_final and "Upload-Defer-Length" not in unfinished_final
    assert unfinished_final["Upload-Concat"] == "final;/a /b"


# -- Upload-Metadata -------------------------------------------------------------------------


def test_metadata_pairs_are_decoded_and_reencoded() -> None:
    meta = tus.parse_metadata(f"filename {b64('é.txt')}, is_confidential,type {b64('a/b')}", 8192)
    assert meta.values == {"filename": "é.txt", "is_confidential": "", "type": "a/b"}
    assert meta.raw == f"filename {b64('é.txt')},is_confidential,type {b64('a/b')}"
    assert meta.filename == "é.txt"
    # Undecodable UTF-8 is replaced, never refused; the raw form keeps the bytes.
    odd = tus.parse_metadata("name " + b64(bytes([0xFF])), 100)
    assert odd.values == {"name": "\ufffd"} and odd.raw == "name /w=="
    assert odd.filename == "\ufffd"  # "name" stands in for "filename" (Uppy)


def test_keys_without_values_and_spaces_around_pairs() -> None:
    assert tus.parse_metadata("na,me YQ==", 100).values == {"na": "", "me": "a"}
    assert tus.parse_metadata(" a  YQ== ,  b ", 100).values == {"a": "a", "b": ""}


@pytest.mark.parametrize("header", [None, "", "   "])
def test_no_metadata(header: str | None) -> None:
    meta = tus.parse_metadata(header, 10)
    assert meta.raw is None and meta.values == {} and meta.filename is None


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ("name a", "not Base64"),  # bad padding
        ("name YQ", "not Base64"),
        ("name Y!==", "not Base64"),
        ("name YQ== YQ==", "not Base64"),  # a third part
        (",", "unique"),  # two empty keys
        (",name YQ==", "unique"),  # empty key
        ("name YQ==,", "unique"),
        ("name YQ==,name Yg==", "unique"),  # duplicate
        ("n\u00e4me YQ==", "unique"),  # not ASCII
        ("na\tme YQ==", "unique"),  # control character
    ],
)
def test_bad_metadata_gets_400(header: str, message: str) -> None:
    with pytest.raises(TusError) as exc:
        tus.parse_metadata(header, 100)
    assert exc.value.status == 400
    assert message in exc.value.message


def test_metadata_length_bound() -> None:
    header = f"k {b64('x' * 30)}"
    assert tus.parse_metadata(header, len(header)).values == {"k": "x" * 30}
    with pytest.raises(TusError) as exc:
        tus.parse_metadata(header, len(header) - 1)
    assert exc.value.status == 400 and "too long" in exc.value.message


# -- Upload-Checksum -------------------------------------------------------------------------


def test_checksum_forms() -> None:
    digest = hashlib.sha1(b"hello").digest()
    assert tus.parse_checksum({}) is None
    for header in (f"sha1 {b64(digest)}", f"  sha1 {b64(digest)}  ", f"sha1  {b64(digest)}"):
        checksum = tus.parse_checksum({"upload-checksum": header})
        assert checksum == tus.Checksum("sha1", digest)
    checksum = tus.parse_checksum({"Upload-Checksum": f"sha1 {b64(digest)}"})
    assert checksum is not None
    hasher = checksum.hasher()
    hasher.update(b"hel")
    hasher.update(b"lo")
    checksum.verify(hasher.digest())  # matches: no error
    with pytest.raises(TusError) as exc:
        checksum.verify(hashlib.sha1(b"hellO").digest())
    assert exc.value.status == 460 and exc.value.message == "Checksum Mismatch"


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ("crc32 AAAAAA==", "Unsupported checksum algorithm; use sha1,sha256,sha512,md5."),
        ("SHA1 AAAAAA==", "Unsupported checksum algorithm"),  # names are lower case
        ("sha1 AAA", "not Base64"),
        ("sha1 AA AA", "not Base64"),
        ("", "Unsupported checksum algorithm"),
    ],
)
def test_bad_checksum_header_gets_400(header: str, message: str) -> None:
    with pytest.raises(TusError) as exc:
        tus.parse_checksum({"Upload-Checksum": header})
    assert exc.value.status == 400 and message in exc.value.message


def test_empty_digest_parses_and_mismatches() -> None:
    # "sha1" and "sha1 " decode to b"": accepted as a header, refused by the body's digest.
    checksum = tus.parse_checksum({"Upload-Checksum": "sha1 "})
    assert checksum == tus.Checksum("sha1", b"") == tus.parse_checksum({"Upload-Checksum": "sha1"})
    with pytest.raises(TusError) as exc:
        checksum.verify(hashlib.sha1(b"").digest())
    assert exc.value.status == 460


# -- creation --------------------------------------------------------------------------------


def creation(**headers: str) -> tus.Creation:
    return tus.parse_creation({**V, **headers}, max_size=100, max_metadata_length=50)


def test_creation_lengths() -> None:
    assert creation(**{"Upload-Length": "0"}).length == 0
    assert creation(**{"upload-length": "100"}).length == 100  # max_size itself fits
    assert creation(**{"Upload-Length": "007"}).length == 7
    with pytest.raises(TusError) as exc:
        creation(**{"Upload-Length": "101"})
    assert exc.value.status == 413 and "at most 100 bytes" in exc.value.message
    for bad in ("", "-1", "+1", "1.0", "1e3", " 1", "x", "9" * 19):
        with pytest.raises(TusError) as exc:
            creation(**{"Upload-Length": bad})
        assert exc.value.status == 400, bad
    with pytest.raises(TusError) as exc:
        tus.parse_creation(V, max_size=100, max_metadata_length=50)
    assert exc.value.status == 400 and "Upload-Length" in exc.value.message


def test_creation_defer_length() -> None:
    assert creation(**{"Upload-Defer-Length": "1"}) == tus.Creation(None, tus.Metadata())
    for headers, words in (
        ({"Upload-Defer-Length": "2"}, "must be 1"),
        ({"Upload-Defer-Length": ""}, "must be 1"),
        ({"upload-defer-length": "1", "Upload-Length": "5"}, "not both"),
    ):
        with pytest.raises(TusError) as exc:
            creation(**headers)
        assert exc.value.status == 400 and words in exc.value.message, headers


def test_creation_concat() -> None:
    partial = creation(**{"Upload-Concat": "partial", "Upload-Length": "5"})
    assert partial == tus.Creation(5, tus.Metadata(), tus.Concat(final=False))
    final = creation(**{"Upload-Concat": "final;/tus/a http://h/tus/b/ /tus/a"})
    assert final.length is None and final.concat is not None and final.concat.final
    assert final.concat.urls == ("/tus/a", "http://h/tus/b/", "/tus/a")
    assert final.concat.upload_names == ["a", "b", "a"]
    assert final.concat.raw == "final;/tus/a http://h/tus/b/ /tus/a"
    too_many = "final;" + " ".join(["/tus/a"] * (tus.MAX_PARTIALS + 1))
    for headers, words in (
        ({"Upload-Concat": "final;"}, "must be 'partial'"),
        ({"Upload-Concat": "final /tus/a"}, "must be 'partial'"),
        ({"Upload-Concat": "whole"}, "must be 'partial'"),
        ({"Upload-Concat": too_many}, "at most"),
        ({"Upload-Concat": "final;/tus/a", "Upload-Length": "5"}, "no Upload-Length"),
        ({"Upload-Concat": "final;/tus/a", "Upload-Defer-Length": "1"}, "no Upload-Length"),
        ({"Upload-Concat": "final;/tus/a", "Content-Length": "3"}, "no data"),
    ):
        with pytest.raises(TusError) as exc:
            creation(**headers)
        assert exc.value.status == 400 and words in exc.value.message, headers
    assert tus.check_final_length([3, 4], ("/a", "/b"), 7) == 7
    with pytest.raises(TusError) as exc:
        tus.check_final_length([3, 5], ("/a", "/b"), 7)
    assert exc.value.status == 413
    with pytest.raises(TusError) as exc:
        tus.check_final_length([3, None], ("/a", "/b"), 7)
    assert exc.value.status == 400 and "unfinished partial upload: /b" in exc.value.message
    assert tus.modify_final().status == 403


def test_creation_metadata() -> None:
    made = creation(**{"Upload-Length": "3", "Upload-Metadata": f"filename {b64('a.txt')}"})
    assert made == tus.Creation(3, tus.Metadata(f"filename {b64('a.txt')}", {"filename": "a.txt"}))
    with pytest.raises(TusError) as exc:  # longer than max_metadata_length
        creation(**{"Upload-Length": "3", "Upload-Metadata": f"filename {b64('a' * 40)}"})
    assert exc.value.status == 400


def test_body_and_content_type() -> None:
    assert not tus.has_body({})
    assert not tus.has_body({"Content-Length": "0"})
    assert not tus.has_body({"Content-Length": "junk"})
    assert tus.has_body({"content-length": "1"})
    assert tus.has_body({"Transfer-Encoding": "Chunked"})
    tus.require_offset_type(OFFSET, "Data")
    tus.require_offset_type({"content-type": "Application/Offset+Octet-Stream; x=1"}, "Data")
    for headers in ({}, {"Content-Type": "application/octet-stream"}):
        with pytest.raises(TusError) as exc:
            tus.require_offset_type(headers, "A creation request with data")
        assert exc.value.status == 415
        assert exc.value.message == (
            "A creation request with data must be application/offset+octet-stream."
        )


# -- PATCH -----------------------------------------------------------------------------------


def test_patch_declares_a_deferred_length() -> None:
    patch = tus.parse_patch({**OFFSET, "Upload-Offset": "4", "Content-Length": "6"})
    assert patch.upload_length is None and patch.declared_length(None, 100) is None
    declaring = tus.parse_patch(
        {**OFFSET, "Upload-Offset": "4", "Content-Length": "6", "Upload-Length": "10"}
    )
    assert declaring.upload_length == 10
    assert declaring.declared_length(None, 100) == 10
    assert declaring.declared_length(10, 100) == 10  # the same again: fine
    for length, max_size, status in ((11, 100, 400), (None, 9, 413)):
        with pytest.raises(TusError) as exc:
            declaring.declared_length(length, max_size)
        assert exc.value.status == status
    short = tus.parse_patch(
        {**OFFSET, "Upload-Offset": "4", "Content-Length": "6", "Upload-Length": "9"}
    )
    with pytest.raises(TusError) as exc:
        short.declared_length(None, 100)
    assert exc.value.status == 413
    with pytest.raises(TusError) as exc:
        tus.parse_patch({**OFFSET, "Upload-Offset": "0", "Upload-Length": "-1"})
    assert exc.value.status == 400 and "Upload-Length" in exc.value.message


def test_patch_offsets_and_bounds() -> None:
    patch = tus.parse_patch({**OFFSET, "Upload-Offset": "4", "Content-Length": "6"})
    assert patch == tus.Patch(4, 6, None)
    patch.check_fits(10, 100)  # ends exactly at Upload-Length
    with pytest.raises(TusError) as exc:
        patch.check_fits(9, 100)
    assert exc.value.status == 413
    patch.check_fits(None, 10)  # a deferred length: bounded by the maximum size
    with pytest.raises(TusError) as exc:
        patch.check_fits(None, 9)
    assert exc.value.status == 413
    # Chunked: the length is not known before the body is read.
    chunked = tus.parse_patch({**OFFSET, "Upload-Offset": "0", "Transfer-Encoding": "chunked"})
    assert chunked.content_length is None
    chunked.check_fits(0, 0)
    for bad in ("", "-1", "1.5", "0x10", "9" * 19):
        with pytest.raises(TusError) as exc:
            tus.parse_patch({**OFFSET, "Upload-Offset": bad})
        assert exc.value.status == 400 and "Upload-Offset" in exc.value.message
    with pytest.raises(TusError) as exc:
        tus.parse_patch({"Upload-Offset": "0", "Content-Type": "text/plain"})
    assert exc.value.status == 415
    digest = hashlib.md5(b"").digest()
    with_sum = tus.parse_patch(
        {**OFFSET, "Upload-Offset": "0", "Upload-Checksum": f"md5 {b64(digest)}"}
    )
    assert with_sum.checksum == tus.Checksum("md5", digest)


def test_offset_must_match() -> None:
    tus.check_offset(7, 7)
    with pytest.raises(TusError) as exc:
        tus.check_offset(6, 7)
    assert exc.value.status == 409 and exc.value.headers == {"Upload-Offset": "7"}


def test_refusals() -> None:
    answers = {
        tus.not_found(): 404,
        tus.gone("The upload has expired."): 410,
        tus.cancelled(): 410,
        tus.locked(): 423,
        tus.past_length(): 413,
        tus.body_ended_early(): 400,
    }
    for error, status in answers.items():
        assert isinstance(error, TusError) and error.status == status and error.message
    assert tus.cancelled().headers == {"Connection": "close"}
    assert tus.gone("x").headers == {}


def test_protocol_imports_no_server_interface() -> None:
    """The ASGI shell will reuse the module: it imports no server interface, only
    werkzeug's sans-IO parts and the exceptions.  (Its own imports are read: importing
    it runs ``uploadmeter/__init__``, which loads the WSGI shell anyway.)"""
    source = pathlib.Path(tus.__file__).read_text()
    imported: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module)
    allowed_werkzeug = {"werkzeug.datastructures", "werkzeug.http", "werkzeug.sansio.utils"}
    werkzeug = {name for name in imported if name.startswith("werkzeug")}
    assert werkzeug <= allowed_werkzeug
    uploadmeter = {name for name in imported if name.startswith("uploadmeter")}
    assert uploadmeter == {"uploadmeter.exceptions"}
