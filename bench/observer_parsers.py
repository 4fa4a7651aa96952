"""Why the observer frames with ``bytes.find``: throughput of three ways to follow a body.

Each parser is fed the same body in the same 64 KiB chunks (what werkzeug's form parser
reads from ``wsgi.input``) and must report every part's name and byte count:

* **uploadmeter** -- :class:`uploadmeter.core.MultipartObserver` (``bytes.find``
  framing, werkzeug for part headers only), and the same with StringZilla's SIMD search
  (``pip install stringzilla``; the observer uses it when installed)
* **streaming-form-data** 2.1.0 -- fed every chunk, one catch-all counting target
* **werkzeug MultipartDecoder** -- fed every chunk, every event consumed

Bodies: random file content, content full of near-miss delimiters (``CRLF--`` plus all
but the last two bytes of the boundary), and many small parts (where per-part header work
dominates).  Every parser's part sizes are checked against the truth before timing.

    python bench/observer_parsers.py           # full run (about a minute)
    python bench/observer_parsers.py --quick   # smaller bodies
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import BOUNDARY, MiB, load_average, machine_info, multipart, near_miss_content, table
from streaming_form_data import StreamingFormDataParser
from streaming_form_data.targets import BaseTarget
from werkzeug.sansio.multipart import Data, Epilogue, Field, File, MultipartDecoder, NeedData

import uploadmeter.core._observer as observer_module
from uploadmeter.core import MultipartObserver

CHUNK = 64 * 1024
Sizes = list[tuple[str, int]]


def run_uploadmeter_bytes_find(chunks: list[bytes], boundary: bytes) -> Sizes:
    saved = observer_module._find
    observer_module._find = bytes.find
    try:
        return run_uploadmeter(chunks, boundary)
    finally:
        observer_module._find = saved


def run_uploadmeter(chunks: list[bytes], boundary: bytes) -> Sizes:
    observer = MultipartObserver(boundary, max_fields=100_000)
    for chunk in chunks:
        observer.feed(chunk)
    observer.close()
    assert observer.stopped is None, observer.stopped
    return [(f.name or "", f.bytes_received) for f in observer.fields]


class _Counter(BaseTarget):
    def __init__(self, sizes: Sizes) -> None:
        super().__init__()
        self.sizes = sizes

    def on_start(self) -> None:
        self.sizes.append((self.multipart_filename or "", 0))

    def on_data_received(self, chunk: bytes) -> None:
        name, n = self.sizes[-1]
        self.sizes[-1] = (name, n + len(chunk))


def run_streaming_form_data(chunks: list[bytes], boundary: bytes) -> Sizes:
    sizes: Sizes = []
    parser = StreamingFormDataParser(
        {"Content-Type": f"multipart/form-data; boundary={boundary.decode()}"}
    )
    # Unregistered names are dropped: one target that matches every name.
    parser.register("*", _Counter(sizes), matches=lambda *_: True)
    for chunk in chunks:
        parser.data_received(chunk)
    return sizes


def run_werkzeug(chunks: list[bytes], boundary: bytes) -> Sizes:
    sizes: Sizes = []
    decoder = MultipartDecoder(boundary)
    for chunk in [*chunks, None]:
        decoder.receive_data(chunk)
        event = decoder.next_event()
        while not isinstance(event, (NeedData, Epilogue)):
            if isinstance(event, (Field, File)):
                sizes.append((event.name, 0))
            elif isinstance(event, Data):
                name, n = sizes[-1]
                sizes[-1] = (name, n + len(event.data))
            event = decoder.next_event()
    return sizes


PARSERS: list[tuple[str, Callable[[list[bytes], bytes], Sizes]]] = [
    ("uploadmeter observer", run_uploadmeter_bytes_find),
    ("streaming-form-data 2.1.0", run_streaming_form_data),
    ("werkzeug MultipartDecoder", run_werkzeug),
]
if observer_module._find is not bytes.find:
    PARSERS.insert(1, ("uploadmeter observer + stringzilla", run_uploadmeter))


def bodies(quick: bool) -> list[tuple[str, bytes, int]]:
    size = (16 if quick else 64) * MiB
    parts = 200 if quick else 2000
    rand, _ = multipart([("title", None, b"hello"), ("file", "r.bin", os.urandom(size))])
    near, _ = multipart([("file", "near.bin", near_miss_content(size))])
    small, _ = multipart([(f"file{i}", f"f{i}.bin", os.urandom(64 * 1024)) for i in range(parts)])
    tiny, _ = multipart([(f"f{i}", None, b"v" * 20) for i in range(parts * 5)])
    return [
        (f"random file, {size // MiB} MiB", rand, 2),
        (f"near-miss file, {size // MiB} MiB", near, 1),
        (f"{parts} files of 64 KiB", small, parts),
        (f"{parts * 5} fields of 20 B", tiny, parts * 5),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeat", type=int, default=None)
    args = parser.parse_args()
    repeat = args.repeat or (3 if args.quick else 5)
    boundary = BOUNDARY.encode()
    print(machine_info())
    print(f"load average before: {load_average()}")
    rows = []
    for label, body, nparts in bodies(args.quick):
        chunks = [body[i : i + CHUNK] for i in range(0, len(body), CHUNK)]
        truth = run_werkzeug(chunks, boundary)
        assert len(truth) == nparts
        results = {}
        for name, run in PARSERS:
            got = run(chunks, boundary)
            if name == "streaming-form-data 2.1.0":
                assert [n for _, n in got] == [n for _, n in truth], name
            else:
                assert got == truth, name
            times = []
            for _ in range(repeat):
                start = time.perf_counter()
                run(chunks, boundary)
                times.append(time.perf_counter() - start)
            results[name] = statistics.median(times)
        base = results["uploadmeter observer"]
        for name, _ in PARSERS:
            t = results[name]
            rows.append(
                [
                    label,
                    name,
                    f"{len(body) / MiB / t:,.0f} MiB/s",
                    f"{t * 1e6 / nparts:,.1f} us" if nparts > 2 else "-",
                    f"{t / base:.1f}x",
                ]
            )
        print(*rows[-len(PARSERS) :], sep="\n", flush=True)
    print()
    print(f"Parser throughput, 64 KiB chunks, median of {repeat}; load after: {load_average()}")
    print(table(["body", "parser", "throughput", "per part", "time vs observer"], rows))


if __name__ == "__main__":
    main()
