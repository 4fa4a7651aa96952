"""parse_params as a unit: the chunk protocol's parameters under every client's names
(simple-uploader.js plain, resumable.js ``resumable…``, flow.js ``flow…``), the split rules,
the bounds, and every bad value refused as ChunkRefused 415 (permanent for the clients)."""

from __future__ import annotations

from typing import Any

import pytest
from werkzeug.datastructures import MultiDict

from uploadmeter.exceptions import ChunkRefused
from uploadmeter.resumable.chunked._params import ChunkParams, parse_params

LIMITS = {"max_file_size": 1000, "max_chunk_size": 100, "max_chunks": 20}
FIELDS = {
    "identifier": "10-photojpg",
    "filename": "photo.jpg",
    "relativePath": "album/photo.jpg",
    "totalSize": "250",
    "chunkSize": "100",
    "totalChunks": "2",
    "chunkNumber": "2",
    "currentChunkSize": "150",
}


def values(prefix: str = "", **changes: str | None) -> MultiDict[str, str]:
    """The fields as a client with ``prefix`` names them (``None`` leaves one out)."""
    fields = {**FIELDS, **changes}
    named = {}
    for name, value in fields.items():
        if value is not None:
            named[prefix + name[0].upper() + name[1:] if prefix else name] = value
    return MultiDict(named)


def parse(fields: MultiDict[str, str], *, chunk: bool = True, **limits: int) -> ChunkParams:
    return parse_params(fields, chunk=chunk, **{**LIMITS, **limits})


def refusal(fields: MultiDict[str, str], *, chunk: bool = True, **limits: int) -> ChunkRefused:
    with pytest.raises(ChunkRefused) as refused:
        parse(fields, chunk=chunk, **limits)
    assert refused.value.status == 415  # the clients stop retrying; nothing is kept
    return refused.value


@pytest.mark.parametrize("prefix", ["", "resumable", "flow"])
def test_every_client_spelling_reads_the_same(prefix: str) -> None:
    assert parse(values(prefix)) == ChunkParams(
        identifier="10-photojpg",
        filename="photo.jpg",
        relative_path="album/photo.jpg",
        total_size=250,
        chunk_size=100,
        total_chunks=2,
        chunk_number=2,
        current_chunk_size=150,
        sha256=None,
    )


def test_the_plain_name_wins_over_prefixed_ones() -> None:
    fields = values("flow")
    fields["chunkNumber"] = "1"
    fields["currentChunkSize"] = "100"
    params = parse(fields)
    assert (params.chunk_number, params.current_chunk_size) == (1, 100)


def test_optional_parameters_may_be_absent() -> None:
    params = parse(values(relativePath=None, currentChunkSize=None, chunkNumber=None), chunk=False)
    assert (params.relative_path, params.current_chunk_size, params.chunk_number) == (
        None,
        None,
        None,
    )


@pytest.mark.parametrize(
    ("total", "size", "chunks", "sizes"),
    [
        ("250", "100", "2", [100, 150]),  # floor: the last chunk takes the remainder
        ("250", "100", "3", [100, 100, 50]),  # ceil (forceChunkSize): the last is smaller
        ("200", "100", "2", [100, 100]),
        ("50", "100", "1", [50]),  # smaller than one chunk
        ("0", "100", "1", [0]),  # an empty file is one empty chunk
    ],
)
def test_a_real_split_is_accepted(total: str, size: str, chunks: str, sizes: list[int]) -> None:
    fields = values(
        totalSize=total, chunkSize=size, totalChunks=chunks, chunkNumber=None, currentChunkSize=None
    )
    params = parse(fields, chunk=False)
    assert params.numbers == list(range(1, len(sizes) + 1))
    assert [params.expected_size(n) for n in params.numbers] == sizes
    assert sum(sizes) == params.total_size


def test_same_split_compares_sizes_and_chunks() -> None:
    floor = parse(values(), chunk=False)
    assert floor.same_split(parse(values(chunkNumber="1", currentChunkSize="100")))
    assert not floor.same_split(parse(values(totalChunks="3", currentChunkSize=None)))


@pytest.mark.parametrize(
    ("changes", "limits", "reason", "words"),
    [
        ({"totalSize": "1001"}, {}, "too_large", "1000 bytes"),
        ({"chunkSize": "0"}, {}, "bad_chunk_size", "1 to 100"),
        ({"chunkSize": "101"}, {}, "bad_chunk_size", "1 to 100"),
        ({"totalChunks": "4"}, {}, "bad_total_chunks", "2 or 3"),
        ({"totalChunks": "1"}, {}, "bad_total_chunks", "2 or 3"),
        ({"totalSize": "200", "totalChunks": "3"}, {}, "bad_total_chunks", "must be 2 for"),
        ({"totalSize": "1000", "chunkSize": "10", "totalChunks": "100"}, {}, "bad_total_chunks",
         "at most 20"),
        ({"chunkNumber": "0"}, {}, "bad_chunk_number", "out of range"),
        ({"chunkNumber": "3"}, {}, "bad_chunk_number", "out of range"),
        ({"currentChunkSize": "100"}, {}, "size_mismatch", "currentChunkSize"),
        ({"totalSize": "250"}, {"max_file_size": 249}, "too_large", "249 bytes"),
    ],
)  # fmt: skip
def test_out_of_bounds_is_refused(
    changes: dict[str, str], limits: dict[str, int], reason: str, words: str
) -> None:
    for prefix in ("", "resumable", "flow"):
        error = refusal(values(prefix, **changes), **limits)
        assert (error.reason, words in error.message) == (reason, True), error.message


@pytest.mark.parametrize("bad", ["", "abc", "-1", "1.5", "1e3", " 5", "5 ", "+5", "9" * 19])
@pytest.mark.parametrize("name", ["totalSize", "chunkSize", "totalChunks", "chunkNumber"])
def test_a_number_that_is_not_digits_is_refused(name: str, bad: str) -> None:
    error = refusal(values("resumable", **{name: bad}))
    assert (error.reason, error.message) == ("bad_parameter", f"Parameter {name} is not a number.")


def test_current_chunk_size_must_be_digits_too() -> None:
    assert refusal(values(currentChunkSize="1.5e2")).reason == "bad_parameter"


@pytest.mark.parametrize("name", ["totalSize", "chunkSize", "totalChunks"])
def test_a_missing_size_is_refused(name: str) -> None:
    error = refusal(values("flow", **{name: None}))
    assert (error.reason, error.message) == ("bad_parameter", f"Missing parameter {name}.")


def test_a_chunk_needs_its_number_a_test_request_does_not() -> None:
    error = refusal(values(chunkNumber=None, currentChunkSize=None))
    assert error.message == "Missing parameter chunkNumber."
    assert parse(values(chunkNumber=None), chunk=False).chunk_number is None


@pytest.mark.parametrize("identifier", [None, "", "x" * 256, "a\x00b", "a\nb", "tab\there"])
def test_a_bad_identifier_is_refused(identifier: str | None) -> None:
    assert refusal(values(identifier=identifier)).reason == "bad_identifier"


def test_the_longest_identifier_is_accepted() -> None:
    assert parse(values(identifier="x" * 255)).identifier == "x" * 255


@pytest.mark.parametrize(
    "changes",
    [
        {"filename": None},
        {"filename": ".."},
        {"filename": "a/b.txt"},
        {"filename": "a\\b.txt"},
        {"filename": "a\x00.txt"},
        {"filename": "é" * 200},  # 400 bytes of UTF-8
        {"relativePath": "../escape.txt"},
        {"relativePath": "/etc/passwd"},
        {"relativePath": "C:\\x.txt"},
        {"relativePath": "a\x1fb"},
    ],
)
def test_a_bad_name_is_refused(changes: dict[str, str | None]) -> None:
    assert refusal(values("flow", **changes)).reason == "bad_filename"


def test_sha256_is_checked_and_lowered() -> None:
    digest = "AB" * 32
    fields = values()
    fields["sha256"] = digest
    assert parse(fields).sha256 == digest.lower()
    for bad in ("ab" * 31, "xy" * 32, "ab" * 33, ""):
        fields["sha256"] = bad
        assert refusal(fields).reason == "bad_parameter"


def test_parsing_reads_only_protocol_names() -> None:
    fields: Any = values()
    fields["ResumableChunkNumber"] = "1"  # not a spelling any client sends
    fields["chunknumber"] = "1"
    assert parse(fields).chunk_number == 2
