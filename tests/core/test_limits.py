"""The limits policy of the core (uploadmeter/core/_limits.py): pure, no server."""

from __future__ import annotations

import pytest

from uploadmeter.core._limits import (
    CHUNK_FORM_OVERHEAD,
    CONFLICTING_FRAMING,
    SMALL_BODY,
    TOO_LARGE,
    Framing,
    check_framing,
    chunk_body_cap,
    chunk_request_cap,
    parse_content_length,
)
from uploadmeter.wsgi._endpoints import SmallBodyRequest


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, None), ("", None), ("0", 0), ("123", 123), ("-1", None), ("12a", None)],
)
def test_parse_content_length(value: str | None, expected: int | None) -> None:
    assert parse_content_length(value) == expected


def test_both_framings_are_refused_whatever_the_limit() -> None:
    for limit in (None, 10, 10**9):
        assert check_framing("5", "chunked", limit) == Framing(None, 400, CONFLICTING_FRAMING)
    # An empty header value is still a Transfer-Encoding header.
    assert check_framing("5", "", None).status == 400


def test_declared_length_over_the_limit_is_too_large() -> None:
    assert check_framing("11", None, 10) == Framing(11, 413, TOO_LARGE)
    assert check_framing("10", None, 10) == Framing(10)


def test_no_length_is_read_up_to_the_limit() -> None:
    assert check_framing(None, "chunked", 10) == Framing(None, cap=10)
    assert check_framing("oops", None, 10) == Framing(None, cap=10)


def test_no_limit_reads_anything() -> None:
    assert check_framing("999999999999", None, None) == Framing(999999999999)
    assert check_framing(None, "chunked", None) == Framing(None)


def test_chunk_caps() -> None:
    assert chunk_request_cap(1000) == 2000 + CHUNK_FORM_OVERHEAD
    assert chunk_body_cap(1000, multipart=True) == 1000 + CHUNK_FORM_OVERHEAD
    assert chunk_body_cap(1000, multipart=False) == 1000


def test_small_body_request_takes_its_cap_from_the_core() -> None:
    assert SmallBodyRequest.max_content_length == SMALL_BODY
    assert SmallBodyRequest.max_form_memory_size == SMALL_BODY
