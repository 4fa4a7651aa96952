"""Where an upload's extra time goes: the middleware's own cost, without HTTP.

Three measurements, each printed as rows of one table:

* **one 64 KiB read inside a file part**: ``MeteredInput.read`` over a stream that hands
  back the same chunk, against that stream alone and against the delimiter search alone
  (best of several ``timeit`` runs);
* **the observer per part**: 200 parts of 64 KiB fed in 64 KiB chunks;
* **the benchmark app in process**: the bare and the metered app of ``tests/bench_apps``
  called directly, their body read through gunicorn's own ``Body`` reader (1 MiB pieces,
  as its socket reader gets them), interleaved A/B pairs.  The difference of the medians
  is what the middleware adds to one request, socket and server aside.

    python bench/hot_path.py            # about a minute
    python bench/hot_path.py --quick
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import timeit
import uuid
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import BOUNDARY, MiB, load_average, machine_info, table
from overhead import upload_cases

CHUNK = 64 * 1024


def best_of(fn: Callable[[], object], number: int, repeat: int = 7) -> float:
    return min(timeit.repeat(fn, number=number, repeat=repeat)) / number


def read_rows(number: int) -> list[list[str]]:
    from uploadmeter.core import MultipartObserver, TrackerSettings, UploadRecord, UploadTracker
    from uploadmeter.core._observer import _find
    from uploadmeter.stores import MemoryStore
    from uploadmeter.wsgi import MeteredInput

    chunk = os.urandom(CHUNK)
    boundary = BOUNDARY.encode()

    class Same:
        def read(self, size: int = -1) -> bytes:
            return chunk

    endless = 2**62
    observer = MultipartObserver(boundary)
    observer.feed(b"--" + boundary + b'\r\nContent-Disposition: form-data; name="f"\r\n\r\n')
    tracker = UploadTracker(
        MemoryStore(),
        "s",
        UploadRecord(id="x", content_length=endless),
        TrackerSettings(),
        observer,
    )
    metered = MeteredInput(Same(), tracker, content_length=endless)
    raw = Same()
    delimiter = b"\r\n--" + boundary
    search = best_of(lambda: _find(chunk, delimiter, 0), number)
    alone = best_of(lambda: raw.read(CHUNK), number)
    through = best_of(lambda: metered.read(CHUNK), number)
    rest = through - alone - search
    return [
        ["one 64 KiB read inside a part: the delimiter search", f"{search * 1e6:.2f} us", "-"],
        ["one 64 KiB read inside a part: everything else", f"{rest * 1e6:.2f} us", "-"],
    ]


def observer_rows(parts: int, number: int) -> list[list[str]]:
    from tests.support.servers import multipart_body
    from uploadmeter.core import MultipartObserver

    body, _ = multipart_body(
        [(f"file{i}", f"f{i}.bin", os.urandom(CHUNK)) for i in range(parts)], BOUNDARY
    )
    chunks = [body[i : i + CHUNK] for i in range(0, len(body), CHUNK)]

    def run() -> None:
        observer = MultipartObserver(BOUNDARY.encode())
        for c in chunks:
            observer.feed(c)
        assert observer.complete and len(observer.fields) == parts

    per_part = best_of(run, number) / parts
    return [[f"the observer, {parts} parts of 64 KiB", f"{per_part * 1e6:.2f} us a part", "-"]]


def app_rows(pairs: int, quick: bool) -> list[list[str]]:
    from gunicorn.http.body import Body, LengthReader
    from gunicorn.http.unreader import IterUnreader
    from werkzeug.test import create_environ

    from tests.support import bench_apps

    os.environ.setdefault("UM_UPLOAD_DIR", tempfile.mkdtemp(prefix="um-bench-files-"))
    os.environ.setdefault("UM_STORE", f"sqlite://{tempfile.mkdtemp()}/uploadmeter.sqlite3")
    bare, metered = bench_apps.create_app(metered=False), bench_apps.create_app(metered=True)
    headers: list[tuple[str, str]] = []
    environ = create_environ("/uploadmeter/progress?id=warmupwarmup")
    b"".join(metered(environ, lambda s, h, e=None: headers.extend(h)))
    cookie = next(v.split(";")[0] for k, v in headers if k == "Set-Cookie")

    def call(app: Any, body: bytes, content_type: str) -> float:
        environ = create_environ(f"/upload?uploadmeter_id={uuid.uuid4().hex}", method="POST")
        environ.update(CONTENT_TYPE=content_type, CONTENT_LENGTH=str(len(body)), HTTP_COOKIE=cookie)
        environ["wsgi.input_terminated"] = True  # as gunicorn says: werkzeug reads it as is
        view = memoryview(body)
        pieces = (bytes(view[i : i + MiB]) for i in range(0, len(body), MiB))
        environ["wsgi.input"] = Body(LengthReader(IterUnreader(pieces), len(body)))
        status: list[str] = []
        start = time.perf_counter()
        result = app(environ, lambda s, h, e=None: status.append(s))
        b"".join(result)
        getattr(result, "close", lambda: None)()
        elapsed = time.perf_counter() - start
        assert status[0].startswith("200"), status
        return elapsed

    rows = []
    for name, _bar, body, content_type in upload_cases(quick):
        call(bare, body, content_type)
        call(metered, body, content_type)
        n = max(3, pairs // 4) if len(body) > 100 * MiB else pairs
        a_times, b_times = [], []
        for i in range(n):
            order = [(bare, a_times), (metered, b_times)]
            for app, times in order if i % 2 == 0 else order[::-1]:
                times.append(call(app, body, content_type))
        a, b = statistics.median(a_times), statistics.median(b_times)
        rows.append(
            [
                f"{name}, in process via gunicorn's Body ({n} pairs)",
                f"+{(b - a) * 1e3:.2f} ms on {a * 1e3:.0f} ms",
                f"{b / a:.3f}",
            ]
        )
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    print(machine_info())
    print(f"load average before: {load_average()}")
    rows = read_rows(2000 if args.quick else 20000)
    rows += observer_rows(50 if args.quick else 200, 5 if args.quick else 30)
    rows += app_rows(8 if args.quick else 30, args.quick)
    print()
    print(f"The middleware's own cost, no HTTP; load after: {load_average()}")
    print(table(["what", "cost", "ratio of medians"], rows))


if __name__ == "__main__":
    main()
