"""End-to-end cost of the middleware: the same Flask app with and without it.

One gunicorn server (sync worker, one worker) serves the bare app and the same app wrapped
in :class:`UploadMeterMiddleware` (default SQLite store) side by side, chosen per request
by a header (``bench_apps.side_by_side_app``).  Requests alternate between the two (A B,
B A, ...), and each pair gives a ratio ``time with / time without``.  The table shows the
median ratio and the range, over several rounds of fresh servers.

Why one process for both sides: two identical bare servers in two processes differ by up
to 4 % for their whole life (heap layout, buffers, caches), more than the bars allow; in
one process the same A/A comparison stays within 1 %.  ``--control`` runs that A/A
comparison (both sides bare) to show the method's own noise.

Uploads are tracked (``?uploadmeter_id=``, a session cookie): the full metered path.
Non-multipart requests (JSON POST, GET) are measured with ``wrk`` as throughput over
fixed-length runs, also alternated; their ratio is ``requests/s without / with``.

    python bench/overhead.py             # the full run (a few minutes)
    python bench/overhead.py --quick     # smaller bodies, fewer pairs (about a minute)
    python bench/overhead.py --control   # A/A: both sides bare
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import (
    SIDE_HEADER,
    Gunicorn,
    MiB,
    cpu_ns,
    gunicorn,
    load_average,
    machine_info,
    multipart,
    near_miss_content,
    pin_client,
    request,
    run_wrk,
    session_cookie,
    summary,
    table,
    timed,
    upload_dir,
    verdict,
)

T = TypeVar("T")


def upload_cases(quick: bool) -> list[tuple[str, float, bytes, str]]:
    scale = 4 if quick else 1
    fields: list[tuple[str, str | None, bytes]] = [
        ("title", None, b"A title"),
        ("tags", None, b"x,y,z"),
        ("note", None, ("é" * 40).encode()),
    ]
    big, ct = multipart([*fields, ("file", "big.bin", os.urandom(256 * MiB // scale))])
    many, ct2 = multipart(
        [(f"file{i}", f"f{i}.bin", os.urandom(64 * 1024)) for i in range(200 // scale)]
    )
    near, ct3 = multipart([("file", "near.bin", near_miss_content(64 * MiB // scale))])
    label = "/4 (quick)" if quick else ""
    return [
        (f"one 256 MiB file + 3 text fields{label}", 1.03, big, ct),
        (f"200 files of 64 KiB{label}", 1.05, many, ct2),
        (f"64 MiB near-miss delimiters{label}", 1.10, near, ct3),
    ]


Samples = dict[str, list[tuple[tuple[float, float], tuple[float, float]]]]


@dataclass(frozen=True)
class Side:
    """One side of the A/B: the server, and the header that picks the app in it."""

    server: Gunicorn
    name: str  # "bare" or "metered"

    @property
    def port(self) -> int:
        return self.server.port

    def headers(self, headers: dict[str, str] | None = None) -> dict[str, str]:
        return {**(headers or {}), SIDE_HEADER: self.name}


def run_uploads(
    bare: Side, metered: Side, cookie: str, pairs: int, quick: bool, samples: Samples
) -> None:
    """Add ``pairs`` A/B pairs per case to ``samples[case]``."""
    for name, _bar, body, content_type in upload_cases(quick):
        headers = {"Content-Type": content_type, "Cookie": cookie}
        # Warm up both (imports, first connection, SQLite file).
        check(bare.port, body, bare.headers(headers))
        check(metered.port, body, metered.headers(headers))
        for i in range(pairs):
            # A B, then B A: the order within a pair alternates so that neither side
            # always runs first (a warm page cache, a CPU clock ramping up).
            a, b = pair(i, partial(timed_upload, body=body, headers=headers), bare, metered)
            samples.setdefault(name, []).append((a, b))
        print(name, [f"{b[0] / a[0]:.3f}" for a, b in samples[name]], flush=True)


def upload_rows(samples: Samples, quick: bool) -> list[list[str]]:
    rows = []
    for name, bar, body, _ in upload_cases(quick):
        ratios = [b[0] / a[0] for a, b in samples[name]]
        cpu_ratios = [b[1] / a[1] for a, b in samples[name]]
        med, lo, hi = summary(ratios)
        rows.append(
            [
                name,
                f"{len(body) / MiB:.1f} MiB",
                f"{statistics.median(a[0] for a, _ in samples[name]) * 1000:.0f} ms",
                f"{statistics.median(b[0] for _, b in samples[name]) * 1000:.0f} ms",
                f"{med:.3f}",
                f"{lo:.3f}-{hi:.3f}",
                f"{statistics.median(cpu_ratios):.3f}",
                f"<= {bar}",
                verdict(med <= bar),
            ]
        )
    return rows


def timed_upload(side: Side, body: bytes, headers: dict[str, str]) -> tuple[float, float]:
    """``(wall seconds, worker CPU seconds)`` of one upload."""
    (pid,) = side.server.worker_pids()
    before = cpu_ns(pid)
    wall = timed(side.port, "POST", upload_path(), body, side.headers(headers))
    return wall, (cpu_ns(pid) - before) / 1e9


def upload_path() -> str:
    return f"/upload?uploadmeter_id={uuid.uuid4().hex}"


def pair(i: int, measure: Callable[[Any], T], bare: Any, metered: Any) -> tuple[T, T]:
    """One A/B pair; odd pairs run B first."""
    if i % 2 == 0:
        a = measure(bare)
        return a, measure(metered)
    b = measure(metered)
    return measure(bare), b


def check(port: int, body: bytes, headers: dict[str, str]) -> None:
    status, data, _ = request(port, "POST", upload_path(), body, headers)
    if status != 200:
        raise RuntimeError(f"upload failed: {status} {data[:200]!r}")
    json.loads(data)


def run_inprocess(pairs: int, quick: bool) -> list[list[str]]:
    """The same A/B with no server and no socket: the app called in this process.

    Over loopback the server's own read-ahead (gunicorn 27 buffers up to 1 MiB per
    ``recv`` and copies the rest on each 64 KiB read) dominates the variance and can even
    make the metered side faster; in process the middleware's own cost stands alone.
    """
    from werkzeug.test import create_environ

    from tests.support import bench_apps

    store_dir = tempfile.mkdtemp(prefix="um-bench-store-")
    os.environ.update(UM_UPLOAD_DIR=upload_dir(), UM_STORE=f"sqlite://{store_dir}/um.sqlite3")
    os.environ["UM_METERED"] = "0"
    bare = bench_apps.create_app()
    os.environ["UM_METERED"] = "1"
    metered = bench_apps.create_app()
    cookie = ""

    def call(app: Any, body: bytes, content_type: str) -> float:
        nonlocal cookie
        environ = create_environ(upload_path(), method="POST")
        environ.update(
            CONTENT_TYPE=content_type,
            CONTENT_LENGTH=str(len(body)),
            HTTP_COOKIE=cookie,
        )
        environ["wsgi.input"] = io.BytesIO(body)
        environ["wsgi.input_terminated"] = True
        status = []
        start = time.perf_counter()
        result = app(environ, lambda s, h, e=None: status.append((s, h)))
        try:
            answer = b"".join(result)
        finally:
            getattr(result, "close", lambda: None)()
        elapsed = time.perf_counter() - start
        assert status[0][0].startswith("200"), status
        assert json.loads(answer)["files"], answer  # the body was parsed
        for name, value in status[0][1]:
            if name == "Set-Cookie" and not cookie:
                cookie = value.split(";", 1)[0]
        return elapsed

    def call_app(which: int, body: bytes, content_type: str) -> float:
        return call(bare if which == 1 else metered, body, content_type)

    rows = []
    for name, _bar, body, content_type in upload_cases(quick):
        call(bare, body, content_type)
        call(metered, body, content_type)
        ratios, a_times, b_times = [], [], []
        for i in range(pairs):
            a, b = pair(i, partial(call_app, body=body, content_type=content_type), 1, 2)
            a_times.append(a)
            b_times.append(b)
            ratios.append(b / a)
        med, lo, hi = summary(ratios)
        rows.append(
            [
                name + " (in process, no HTTP)",
                f"{len(body) / MiB:.1f} MiB",
                f"{statistics.median(a_times) * 1000:.0f} ms",
                f"{statistics.median(b_times) * 1000:.0f} ms",
                f"{med:.3f}",
                f"{lo:.3f}-{hi:.3f}",
                "= wall",
                "(bars are for HTTP)",
                "info",
            ]
        )
        print(rows[-1], flush=True)
    return rows


WRK_POST = """
wrk.method = "POST"
wrk.body = '{"items": [1, 2, 3, 4, 5, 6, 7, 8, 9, 10], "name": "bench"}'
wrk.headers["Content-Type"] = "application/json"
"""


def wrk_rps(
    side: Side, path: str, seconds: int, script: str | None, cookie: str | None
) -> tuple[float, float]:
    """``(requests/s, worker CPU seconds per request)`` over one wrk run."""
    headers = [f"{SIDE_HEADER}: {side.name}", *([f"Cookie: {cookie}"] if cookie else [])]
    run = run_wrk(side.server, path, seconds, connections=2, headers=headers, script=script)
    return run.rps, run.cpu_per_request


# (name, path, wrk script, send the session cookie, bar or None: reported apart)
PLAIN_CASES = [
    ("JSON POST", "/json", "post", True, 1.02),
    ("GET page, returning visitor (has cookie)", "/", None, True, 1.02),
    # The page issues the session cookie (set_cookie_on_pages): once per browser.
    ("GET page without the cookie (first visit)", "/", None, False, None),
]


def run_plain(
    bare: Side, metered: Side, cookie: str, pairs: int, seconds: int, samples: Samples
) -> None:
    """Add ``pairs`` wrk A/B pairs per non-multipart case to ``samples[case]``."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(WRK_POST)
        post_script = f.name
    try:
        for name, path, script, with_cookie, _bar in PLAIN_CASES:
            lua = post_script if script else None
            ck = cookie if with_cookie else None
            wrk_rps(bare, path, 1, lua, ck)  # warm up
            wrk_rps(metered, path, 1, lua, ck)
            for i in range(pairs):
                measure = partial(wrk_rps, path=path, seconds=seconds, script=lua, cookie=ck)
                samples.setdefault(name, []).append(pair(i, measure, bare, metered))
            print(name, [f"{a[0] / b[0]:.3f}" for a, b in samples[name]], flush=True)
    finally:
        os.unlink(post_script)


def plain_rows(samples: Samples) -> list[list[str]]:
    rows = []
    for name, *_, bar in PLAIN_CASES:
        ratios = [a[0] / b[0] for a, b in samples[name]]  # requests/s: without / with
        cpu_ratios = [b[1] / a[1] for a, b in samples[name]]
        med, lo, hi = summary(ratios)
        rows.append(
            [
                name,
                "-",
                f"{statistics.median(a[0] for a, _ in samples[name]):.0f} req/s",
                f"{statistics.median(b[0] for _, b in samples[name]):.0f} req/s",
                f"{med:.3f}",
                f"{lo:.3f}-{hi:.3f}",
                f"{statistics.median(cpu_ratios):.3f}",
                "(once per browser)" if bar is None else f"<= {bar}",
                "info" if bar is None else verdict(med <= bar),
            ]
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller bodies, fewer pairs")
    parser.add_argument("--pairs", type=int, default=None, help="A/B pairs per case and round")
    parser.add_argument(
        "--rounds", type=int, default=None, help="server restarts (uploads are measured in each)"
    )
    parser.add_argument("--only", choices=["uploads", "plain", "inprocess"], default=None)
    parser.add_argument(
        "--control", action="store_true", help="A/A: both sides are the bare app (the noise)"
    )
    parser.add_argument(
        "--search",
        choices=["auto", "bytes.find"],
        default="auto",
        help="the observer's delimiter search: StringZilla when installed (auto), or bytes.find",
    )
    args = parser.parse_args()
    pairs = args.pairs or (5 if args.quick else 7)
    args.rounds = args.rounds or (1 if args.quick else 5)
    pin_client()
    print(machine_info())
    print(f"load average before: {load_average()}")
    store_dir = tempfile.mkdtemp(prefix="um-bench-store-")
    common = {
        "UM_UPLOAD_DIR": upload_dir(),
        "UM_STORE": f"sqlite://{store_dir}/um.sqlite3",
        "UM_BENCH_SEARCH": args.search,
        "UM_BENCH_CONTROL": "1" if args.control else "0",
    }
    os.environ["UM_BENCH_SEARCH"] = args.search  # for the in-process run
    rows: list[list[str]] = []
    samples: Samples = {}
    plain: Samples = {}
    # A fresh server each round: what is left of a process's own speed shows as spread
    # between rounds, not as a bias of one side.
    for _round in range(args.rounds):
        with gunicorn("tests.support.bench_apps:side_by_side_app()", env=common) as server:
            bare, metered = Side(server, "bare"), Side(server, "metered")
            # (In a --control run the metered side is bare: a cookie is then just a cookie.)
            cookie = session_cookie(server.port, metered.headers()) or "uploadmeter_session=x"
            if args.only in (None, "uploads"):
                run_uploads(bare, metered, cookie, pairs, args.quick, samples)
            if args.only in (None, "plain"):
                run_plain(bare, metered, cookie, pairs, 1, plain)
    if samples:
        rows += upload_rows(samples, args.quick)
    if plain:
        rows += plain_rows(plain)
    if args.only in (None, "inprocess") and not args.control:
        rows += run_inprocess(pairs, args.quick)
    print()
    import uploadmeter.core

    search = "bytes.find" if uploadmeter.core._observer._find is bytes.find else "stringzilla"
    if args.search == "bytes.find":
        search = "bytes.find"
    malloc = "glibc default" if os.environ.get("UM_BENCH_MALLOC") == "dynamic" else "fixed"
    what = "CONTROL (A/A: both sides the bare app)" if args.control else "Overhead"
    print(
        f"{what}, gunicorn sync x1 serving both sides, SQLite store, {args.rounds} rounds "
        f"(fresh server) x {pairs} interleaved A/B pairs (wrk: 1 s runs); "
        f"delimiter search: {search}, malloc thresholds: {malloc}"
    )
    print(f"load average after: {load_average()}")
    print(
        table(
            ["case", "body", "without (median)", "with (median)", "ratio median", "min-max",
             "worker CPU ratio", "bar", "verdict"],
            rows,
        )
    )  # fmt: skip


if __name__ == "__main__":
    main()
