"""Property: the metered ``wsgi.input`` is invisible to the application.

Hypothesis builds multipart bodies (random boundaries, fields and files, non-ASCII
names, empty parts, preambles, epilogues, data full of near-miss delimiters) and reads
them through :class:`MeteredInput` -- with a real tracker and :class:`MemoryStore` --
by random mixes of ``read(n)``, ``read()``, ``readline``, ``readlines``, iteration and
``readinto`` over a source that may return short reads, like a socket.  For each:

* the application gets exactly the original bytes;
* for well-formed bodies the observer's fields (names, file names, byte counts) are the
  true parts, and werkzeug's form parser gives the same result on the metered stream as
  on the raw bytes;
* for any bytes at all, nothing raises from the observer or the metering.

Sources: ``BytesIO`` (whole reads), a socket-like reader returning at most ``step`` bytes
per read, and the same without ``readinto`` (as gunicorn's body), so ``MeteredInput``'s
``readinto`` fallback is covered too.

Runs derandomized (same examples every run), so CI is deterministic.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import re
import string
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st
from werkzeug.formparser import parse_form_data
from werkzeug.sansio.multipart import Data, Epilogue, Field, File, MultipartDecoder, NeedData

import uploadmeter.core._observer as observer_module
from uploadmeter.core import DONE, MultipartObserver, TrackerSettings, UploadRecord, UploadTracker
from uploadmeter.core._records import Records
from uploadmeter.stores import MemoryStore
from uploadmeter.wsgi import MeteredInput

# The observer's delimiter search: bytes.find, or StringZilla's when installed.  Both run.
SEARCHES = pytest.mark.parametrize(
    "search",
    [
        "bytes.find",
        pytest.param(
            "stringzilla",
            marks=pytest.mark.skipif(
                importlib.util.find_spec("stringzilla") is None,
                reason="stringzilla is not installed (the optional speedup)",
            ),
        ),
    ],
)


@contextlib.contextmanager
def searching_with(search: str) -> Iterator[None]:
    saved = observer_module._find
    observer_module._find = (
        bytes.find if search == "bytes.find" else importlib.import_module("stringzilla").find
    )
    try:
        yield
    finally:
        observer_module._find = saved


SETTINGS = settings(
    max_examples=600,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# RFC 2046 bchars, without the space (legal inside, but browsers never use it).
BCHARS = string.ascii_letters + string.digits + "'()+_,-./:=?"

# Names as browsers send them: UTF-8, with '"', CR and LF percent-encoded (so absent).
NAME = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters='"\\'),
    max_size=20,
)


class Part:
    def __init__(self, name: str, filename: str | None, ctype: str | None, data: bytes) -> None:
        self.name, self.filename, self.content_type, self.data = name, filename, ctype, data

    def head(self) -> bytes:
        disposition = f'form-data; name="{self.name}"'
        if self.filename is not None:
            disposition += f'; filename="{self.filename}"'
        lines = [f"Content-Disposition: {disposition}"]
        if self.content_type is not None:
            lines.append(f"Content-Type: {self.content_type}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode()


@st.composite
def data_bytes(draw: Any, boundary: bytes) -> bytes:
    """Part data: random bytes mixed with pieces that look like a delimiter, but are not."""
    near = [
        b"\r\n--" + boundary[: draw(st.integers(0, len(boundary) - 1))],
        b"\r\n--" + boundary + b"x",  # a whole boundary, but not followed by CRLF or --
        b"\r\n-" + boundary,
        b"\r\n\r\n",
        b"\r",
        b"--",
    ]
    pieces = draw(st.lists(st.one_of(st.binary(max_size=300), st.sampled_from(near)), max_size=8))
    # Well-formed: no real delimiter inside.  werkzeug (the app's parser) also takes a
    # bare CR or LF before "--boundary", and spaces after it, so break those too.
    fake = re.compile(b"--" + re.escape(boundary) + rb"(?=[\r\n\t -]|$)")
    return fake.sub(b"-_" + boundary, b"".join(pieces))


@st.composite
def multipart_bodies(draw: Any) -> tuple[bytes, bytes, list[Part]]:
    boundary = draw(st.text(alphabet=BCHARS, min_size=1, max_size=70)).encode()
    parts = []
    for _ in range(draw(st.integers(0, 6))):
        is_file = draw(st.booleans())
        parts.append(
            Part(
                draw(NAME),
                draw(NAME) if is_file else None,
                draw(st.sampled_from([None, "text/plain", "application/octet-stream"])),
                draw(data_bytes(boundary)),
            )
        )
    preamble = draw(st.binary(max_size=40)).replace(b"--" + boundary, b"")
    if b"--" + boundary in preamble or b"\r" in preamble or b"\n" in preamble:
        preamble = b""
    epilogue = draw(st.binary(max_size=40))
    out = [preamble + b"\r\n" if preamble else b""]
    for part in parts:
        out.append(b"--" + boundary + b"\r\n" + part.head() + part.data + b"\r\n")
    out.append(b"--" + boundary + b"--")
    if epilogue or draw(st.booleans()):
        out.append(b"\r\n" + epilogue)
    return b"".join(out), boundary, parts


def werkzeug_parts(body: bytes, boundary: bytes) -> list[tuple[Any, ...]] | None:
    """The parts as the application's parser sees them, or ``None`` if it rejects the body."""
    decoder = MultipartDecoder(boundary)
    parts: list[list[Any]] = []
    try:
        decoder.receive_data(body)
        decoder.receive_data(None)
        event = decoder.next_event()
        while not isinstance(event, Epilogue):
            if isinstance(event, NeedData):
                return None
            if isinstance(event, (Field, File)):
                filename = event.filename if isinstance(event, File) else None
                ctype = event.headers.get("Content-Type")
                parts.append([event.name, filename, ctype, 0])
            elif isinstance(event, Data):
                parts[-1][3] += len(event.data)
            event = decoder.next_event()
    except ValueError:
        return None
    return [tuple(p) for p in parts]


class ShortReads(io.RawIOBase):
    """A socket-like source: each read returns at most ``step`` bytes."""

    def __init__(self, data: bytes, step: int) -> None:
        self._data = io.BytesIO(data)
        self._step = step

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer)
        chunk = self._data.read(min(len(view), self._step))
        view[: len(chunk)] = chunk
        return len(chunk)

    def readline(self, size: int | None = -1) -> bytes:
        limit = self._step if size is None or size < 0 else min(size, self._step)
        return self._data.readline(limit)


READ_OPS = st.lists(
    st.one_of(
        st.tuples(st.just("read"), st.integers(1, 70_000)),
        st.tuples(st.just("read"), st.sampled_from([-1, None])),
        st.tuples(st.just("readline"), st.one_of(st.integers(1, 500), st.just(-1))),
        st.tuples(st.just("readinto"), st.integers(1, 70_000)),
        st.tuples(st.just("readlines"), st.integers(-1, 300)),
        st.tuples(st.just("iter"), st.integers(1, 5)),
    ),
    min_size=1,
    max_size=12,
)


def read_with(stream: MeteredInput, ops: list[tuple[str, Any]]) -> bytes:
    """Apply ``ops`` in a loop until the stream ends; return everything read."""
    out = bytearray()
    while True:
        progressed = False
        for op, arg in ops:
            if op == "read":
                data = stream.read(arg)
            elif op == "readline":
                data = stream.readline(arg)
            elif op == "readinto":
                buf = bytearray(arg)
                n = stream.readinto(buf)
                data = bytes(buf[:n])
            elif op == "readlines":
                data = b"".join(stream.readlines(arg))
            else:
                # range first: zip must not pull a line it then drops.
                lines = zip(range(arg), iter(stream), strict=False)
                data = b"".join(line for _, line in lines)
            out += data
            progressed = progressed or bool(data)
        if not progressed:
            return bytes(out)


def metered(body: bytes, boundary: bytes, source: Any) -> tuple[MeteredInput, UploadTracker]:
    store = MemoryStore()
    tracker = UploadTracker(
        store,
        "session",
        UploadRecord(id="prop-test-1", content_length=len(body)),
        TrackerSettings(update_interval=0.0),
        MultipartObserver(boundary),
    )
    assert tracker.claim()
    tracker.write_now()
    stream = MeteredInput(source, tracker, content_length=len(body), update_interval=0.0)
    return stream, tracker


class ReadOnly:
    """Like gunicorn's request body: ``read`` and ``readline``, no ``readinto``."""

    def __init__(self, source: Any) -> None:
        self._source = source

    def read(self, size: int | None = -1) -> bytes:
        return self._source.read(size)  # type: ignore[no-any-return]

    def readline(self, size: int | None = -1) -> bytes:
        return self._source.readline(size)  # type: ignore[no-any-return]


def source_for(body: bytes, step: int | None) -> Any:
    """Whole reads (``BytesIO``), short reads (``step``), and odd steps without readinto."""
    if step is None:
        return io.BytesIO(body)
    source = io.BufferedReader(ShortReads(body, step))
    return ReadOnly(source) if step % 2 else source


@SEARCHES
@SETTINGS
@given(
    multipart_bodies(),
    READ_OPS,
    st.one_of(st.none(), st.integers(1, 9000)),
)
def test_the_app_sees_the_original_bytes_and_the_fields_are_exact(
    search: str,
    case: tuple[bytes, bytes, list[Part]],
    ops: list[tuple[str, Any]],
    step: int | None,
) -> None:
    with searching_with(search):
        check_original_bytes_and_exact_fields(case, ops, step)


def check_original_bytes_and_exact_fields(
    case: tuple[bytes, bytes, list[Part]], ops: list[tuple[str, Any]], step: int | None
) -> None:
    body, boundary, parts = case
    want = [(p.name, p.filename, p.content_type, len(p.data), "done") for p in parts]
    # The generator aims at well-formed bodies; the app's parser has the last word.
    assume(werkzeug_parts(body, boundary) == [w[:4] for w in want])
    stream, tracker = metered(body, boundary, source_for(body, step))

    assert read_with(stream, ops) == body
    tracker.finish(DONE)

    observer = tracker.observer
    assert observer is not None
    assert observer.stopped is None
    assert observer.complete
    got = [(f.name, f.filename, f.content_type, f.bytes_received, f.state) for f in observer.fields]
    assert got == want
    record = Records(tracker.store, tracker.settings).load("session", "prop-test-1")
    assert record is not None
    assert record.state == DONE and record.bytes_received == len(body)
    assert [(f.name, f.bytes_received) for f in record.fields] == [
        (p.name, len(p.data)) for p in parts
    ]


def werkzeug_parse(stream: Any, body: bytes, boundary: bytes) -> Any:
    environ = {
        "REQUEST_METHOD": "POST",
        "CONTENT_TYPE": f'multipart/form-data; boundary="{boundary.decode()}"',
        "CONTENT_LENGTH": str(len(body)),
        "wsgi.input": stream,
        "wsgi.input_terminated": True,
    }
    _, form, files = parse_form_data(environ, silent=False, max_form_parts=None)
    return (
        sorted(form.items(multi=True)),
        sorted((k, f.filename, f.read()) for k, f in files.items(multi=True)),
    )


@SEARCHES
@SETTINGS
@given(multipart_bodies(), st.one_of(st.none(), st.integers(1, 9000)))
def test_werkzeug_parses_the_metered_stream_as_it_parses_the_raw_bytes(
    search: str, case: tuple[bytes, bytes, list[Part]], step: int | None
) -> None:
    with searching_with(search):
        check_same_parse(case, step)


def check_same_parse(case: tuple[bytes, bytes, list[Part]], step: int | None) -> None:
    body, boundary, parts = case
    assume(werkzeug_parts(body, boundary) is not None)
    stream, tracker = metered(body, boundary, source_for(body, step))
    through_meter = werkzeug_parse(stream, body, boundary)
    assert through_meter == werkzeug_parse(io.BytesIO(body), body, boundary)
    # ... and the fields werkzeug found are the ones the observer counted.
    files = {(k, name): data for k, name, data in through_meter[1]}
    observer = tracker.observer
    assert observer is not None
    for f in observer.fields:
        if f.filename is not None and f.filename != "":
            assert len(files[(f.name, f.filename)]) == f.bytes_received
    assert observer.field_count == len(parts)


@SEARCHES
@SETTINGS
@given(
    st.binary(max_size=3000),
    multipart_bodies(),
    st.integers(0, 3000),
    READ_OPS,
    st.one_of(st.none(), st.integers(1, 500)),
)
def test_any_bytes_at_all_never_raise_from_the_observer(
    search: str,
    noise: bytes,
    case: tuple[bytes, bytes, list[Part]],
    cut: int,
    ops: list[tuple[str, Any]],
    step: int | None,
) -> None:
    valid, boundary, _ = case
    # Noise, a well-formed body cut short, and the two spliced together.
    with searching_with(search):
        check_never_raises(noise, valid, boundary, cut, ops, step)


def check_never_raises(
    noise: bytes,
    valid: bytes,
    boundary: bytes,
    cut: int,
    ops: list[tuple[str, Any]],
    step: int | None,
) -> None:
    for body in (noise, valid[:cut], valid[:cut] + noise, noise + valid):
        stream, tracker = metered(body, boundary, source_for(body, step))
        assert read_with(stream, ops) == body
        tracker.finish(DONE)
        observer = tracker.observer
        assert observer is not None
        assert observer.stopped is None or isinstance(observer.stopped, str)
        assert sum(f.bytes_received for f in observer.fields) <= len(body)


# Header values as a hostile or unusual client may write them: quotes, escapes, "%22",
# RFC 2231 continuations and charsets, odd spacing and case.
DISPOSITION_PIECES = st.lists(
    st.one_of(
        st.sampled_from(
            [
                "form-data",
                "Form-Data",
                "; ",
                ";",
                " ",
                "name=",
                "Name=",
                "filename=",
                "filename*=",
                "name*0=",
                "name*1=",
                "UTF-8''",
                "iso-8859-1''",
                '"',
                '\\"',
                "\\\\",
                "%22",
                "%C3%A9",
                "=",
                "*",
                "'",
            ]
        ),
        st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), max_size=6),
    ),
    max_size=14,
)


# What can sit between the quotes of a browser-style header, "%22" and friends included.
QUOTABLE = st.lists(
    st.one_of(NAME, st.sampled_from(["%22", "%", "%2", ";", "=", "'", "*", "; filename="])),
    max_size=5,
).map("".join)


@SETTINGS
@given(
    st.one_of(
        DISPOSITION_PIECES.map("".join),
        st.tuples(QUOTABLE, st.one_of(st.none(), QUOTABLE)).map(
            lambda nf: (
                f'form-data; name="{nf[0]}"'
                + (f'; filename="{nf[1]}"' if nf[1] is not None else "")
            )
        ),
    ),
    st.one_of(
        st.none(),
        st.sampled_from(["text/plain", "image/png", " text/plain ", "text/plain; charset=utf-8"]),
        st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n")),
    ),
    st.sampled_from(["Content-Disposition", "content-disposition", "CONTENT-DISPOSITION"]),
)
def test_part_names_are_decoded_as_werkzeug_decodes_them(
    disposition: str, content_type: str | None, header_name: str
) -> None:
    boundary = b"hDrBoUnDaRy"
    head = header_name.encode() + b": " + disposition.encode()
    if content_type is not None:
        head += b"\r\nContent-Type: " + content_type.encode()
    body = b"--" + boundary + b"\r\n" + head + b"\r\n\r\ndata\r\n--" + boundary + b"--\r\n"
    truth = werkzeug_parts(body, boundary)
    observer = MultipartObserver(boundary)
    observer.feed(body)
    if truth is None:
        event("werkzeug rejects the part")
        return  # the app's parser rejects it: nothing to agree with
    if observer_module._BROWSER_HEADERS.fullmatch(head):
        event("browser-shaped header block")
    elif observer_module._SIMPLE_DISPOSITION.fullmatch(disposition):
        event("browser-shaped Content-Disposition")
    else:
        event("anything else")
    assert observer.stopped is None
    got = [(f.name, f.filename, f.content_type) for f in observer.fields]
    # The record shows names XML-safe (control characters replaced) and capped.
    want = [(_shown(name), _shown(filename), _shown(ctype)) for name, filename, ctype, _ in truth]
    assert got == want


def _shown(value: str | None) -> str | None:
    if value is None:
        return None
    value = value[:256]
    return "".join(
        "\ufffd" if (ord(c) < 32 and c not in "\t\n\r") or c in "\ufffe\uffff" else c for c in value
    )
