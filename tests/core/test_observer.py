"""The multipart observer on hand-built bodies: exact per-part counts, however split."""

from __future__ import annotations

import itertools

import pytest

from uploadmeter.core import MultipartObserver

B = "bNdRy-42"


def body(parts: list[tuple[str, str | None, str | None, bytes]], *, boundary: str = B) -> bytes:
    """``(name, filename, content type, data)`` parts, CRLF framed as browsers send."""
    out = b""
    for name, filename, ctype, data in parts:
        disposition = f'form-data; name="{name}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        head = f"--{boundary}\r\nContent-Disposition: {disposition}\r\n"
        if ctype:
            head += f"Content-Type: {ctype}\r\n"
        out += head.encode("utf-8") + b"\r\n" + data + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


def observe(data: bytes, cuts: list[int] | None = None, boundary: str = B) -> MultipartObserver:
    obs = MultipartObserver(boundary.encode())
    points = [0, *(cuts or []), len(data)]
    for start, end in itertools.pairwise(points):
        obs.feed(data[start:end])
    obs.close()
    return obs


def summary(obs: MultipartObserver) -> list[tuple[str | None, str | None, int, str]]:
    return [(f.name, f.filename, f.bytes_received, f.state) for f in obs.fields]


PARTS = [
    ("title", None, None, b"Holiday"),
    ("doc", "report.pdf", "application/pdf", b"%PDF" + bytes(range(256)) * 3),
    ("doc", "second.bin", "application/octet-stream", b"\r\n--" + B.encode()[:-1] + b"\r\n"),
    ("empty", "empty.txt", "text/plain", b""),
    ("note", None, None, b""),
]


def test_many_fields_several_files_in_one_field_and_an_empty_file() -> None:
    obs = observe(body(PARTS))
    assert summary(obs) == [
        (name, filename, len(data), "done") for name, filename, _, data in PARTS
    ]
    assert [f.content_type for f in obs.fields] == [
        None,
        "application/pdf",
        "application/octet-stream",
        "text/plain",
        None,
    ]
    assert obs.complete and obs.stopped is None and obs.field_count == 5


def test_every_single_split_position_gives_the_same_counts() -> None:
    data = body(PARTS)
    expected = summary(observe(data))
    for cut in range(1, len(data)):
        assert summary(observe(data, [cut])) == expected, cut


def test_splits_around_each_delimiter_in_three_pieces() -> None:
    data = body(PARTS)
    expected = summary(observe(data))
    delimiter = b"\r\n--" + B.encode()
    starts = [i for i in range(len(data)) if data.startswith(delimiter, i)]
    for start in starts:
        window = range(max(1, start - 3), min(len(data) - 1, start + len(delimiter) + 4))
        for a in window:
            for b in window:
                if a < b:
                    assert summary(observe(data, [a, b])) == expected, (a, b)


def test_byte_at_a_time() -> None:
    data = body(PARTS)
    assert summary(observe(data, list(range(1, len(data))))) == summary(observe(data))


def test_non_ascii_field_and_file_names_are_decoded_as_werkzeug_does() -> None:
    data = body([("größe", "二维码 café.png", "image/png", b"\x89PNG")])
    obs = observe(data)
    assert summary(obs) == [("größe", "二维码 café.png", 4, "done")]


def test_near_miss_delimiters_in_data_are_counted_as_data() -> None:
    boundary = B.encode()
    payload = (b"\r\n--" + boundary + b"X") * 50 + (b"\r\n--" + boundary[:-2]) * 50
    obs = observe(body([("f", "a.bin", None, payload)]), [7, 100, 101, 333])
    assert summary(obs) == [("f", "a.bin", len(payload), "done")]


def test_progress_is_visible_while_a_part_is_still_arriving() -> None:
    data = body([("big", "big.bin", "application/octet-stream", b"z" * 100_000)])
    obs = MultipartObserver(B.encode())
    obs.feed(data[:50_000])
    [field] = obs.fields
    assert field.state == "uploading"
    # Everything except the header block has been counted (nothing can be a delimiter).
    header_len = data.index(b"\r\n\r\n") + 4
    assert field.bytes_received == 50_000 - header_len


def test_tracked_fields_are_capped_but_every_part_is_counted() -> None:
    parts = [(f"f{i}", None, None, b"x") for i in range(20)]
    obs = MultipartObserver(B.encode(), max_fields=5)
    obs.feed(body(parts))
    assert len(obs.fields) == 5 and obs.field_count == 20


def test_overlong_names_are_truncated() -> None:
    obs = observe(body([("n" * 5000, "f" * 5000 + ".txt", None, b"1")]))
    [field] = obs.fields
    assert field.name is not None and len(field.name) == 256
    assert field.filename is not None and len(field.filename) == 256


def test_headers_past_the_cap_stop_observing_without_raising() -> None:
    data = f'--{B}\r\nContent-Disposition: form-data; name="x"\r\nX-Pad: {"p" * 20000}'.encode()
    obs = observe(data, [1000, 5000, 15000])
    assert obs.stopped is not None and "16 KiB" in obs.stopped
    assert obs.fields == []


def test_garbage_does_not_raise() -> None:
    obs = observe(f"--{B}\r\nNot-A-Header\r\n\r\nabc\r\n--{B}--".encode())
    assert obs.stopped is not None  # werkzeug refuses a part without a name: we stop quietly


def test_bad_boundaries_are_refused_up_front() -> None:
    for bad in (b"", b"a\r\nb", b"x" * 201):
        with pytest.raises(ValueError):
            MultipartObserver(bad)


# -- the quirks of streaming-form-data 2.1.0 that the issue lists, and how we fare ------


def test_fields_need_no_registration() -> None:
    """streaming-form-data drops parts whose name was not registered; we see every name."""
    obs = observe(body([(f"anything-{i}", None, None, b"v") for i in range(3)]))
    assert [f.name for f in obs.fields] == ["anything-0", "anything-1", "anything-2"]


def test_content_type_is_known_when_the_part_starts() -> None:
    """streaming-form-data sets the content type only after on_start; we have it at once."""
    data = body([("f", "a.csv", "text/csv", b"a,b\r\n" * 1000)])
    obs = MultipartObserver(B.encode())
    obs.feed(data[: data.index(b"\r\n\r\n") + 4])
    assert obs.fields[0].content_type == "text/csv"


def test_a_truncated_body_is_noticed() -> None:
    """streaming-form-data has no close(): a cut-off body raises nothing.  close() marks it."""
    data = body([("f", "a.bin", None, b"q" * 1000)])
    obs = MultipartObserver(B.encode())
    obs.feed(data[:600])
    obs.close()
    assert not obs.complete
    assert summary(obs) == [("f", "a.bin", 600 - data.index(b"\r\n\r\n") - 4, "error")]


def test_a_preamble_is_skipped() -> None:
    """streaming-form-data rejects a preamble; RFC 2046 allows one and so does werkzeug."""
    data = b"This is a preamble.\r\n" + body(PARTS)
    assert summary(observe(data, [5, 30])) == summary(observe(body(PARTS)))


def test_bare_lf_bodies_yield_no_parts_but_nothing_breaks() -> None:
    """Bare LF line endings: not CRLF-framed, so no parts are learnt (werkzeug still parses
    it for the app; whole-request progress still works -- see test_middleware)."""
    data = body(PARTS).replace(b"\r\n", b"\n")
    obs = observe(data)
    assert obs.fields == [] and obs.stopped is None


def test_an_epilogue_after_the_closing_delimiter_does_not_keep_the_last_part_open() -> None:
    """streaming-form-data never finishes the last part when 3+ bytes follow the closing
    delimiter in one chunk; we finish it at the closing delimiter."""
    data = body(PARTS) + b"epilogue text, ignored by everyone"
    obs = MultipartObserver(B.encode())
    obs.feed(data)  # one chunk
    assert obs.complete
    assert all(f.state == "done" for f in obs.fields)
    assert summary(obs) == summary(observe(body(PARTS)))
