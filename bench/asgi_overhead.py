"""End-to-end cost of the ASGI middleware under uvicorn (1 worker, httptools, uvloop).

The method of ``bench/overhead.py``: one uvicorn process serves a Starlette app that parses
uploads with ``request.form()`` bare and behind :class:`uploadmeter.asgi.UploadMeterMiddleware`
(default SQLite store) side by side, chosen per request by a header
(``tests.support.asgi_bench_apps.side_by_side_app``).  Requests alternate A B, B A, ...;
each pair gives a ratio ``time with / time without``; the table shows the median and the
range.  ``--control`` runs the same with both sides bare (A/A): the method's own noise,
to read beside the A/B numbers.  Uploads are tracked (``?uploadmeter_id=``, a session
cookie): the full metered path.

    python bench/asgi_overhead.py             # 256 MiB + 3 fields, 200 x 64 KiB
    python bench/asgi_overhead.py --quick     # bodies / 4, fewer pairs
    python bench/asgi_overhead.py --control   # A/A
    python bench/asgi_overhead.py --inprocess # the app called in process: no HTTP
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from functools import partial

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import (
    MiB,
    cpu_ns,
    load_average,
    machine_info,
    multipart,
    session_cookie,
    summary,
    table,
    timed,
    upload_dir,
    verdict,
)
from overhead import Side, pair, upload_path

from tests.support.asgi_servers import run_uvicorn

BAR = 1.02


def cases(quick: bool) -> list[tuple[str, bytes, str]]:
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
    label = " /4 (quick)" if quick else ""
    return [
        (f"one 256 MiB file + 3 text fields{label}", big, ct),
        (f"200 files of 64 KiB{label}", many, ct2),
    ]


def timed_upload(side: Side, body: bytes, headers: dict[str, str]) -> tuple[float, float]:
    pid = side.server.proc.pid  # one uvicorn worker: the process itself
    before = cpu_ns(pid)
    wall = timed(side.port, "POST", upload_path(), body, side.headers(headers))
    return wall, (cpu_ns(pid) - before) / 1e9


def run_inprocess(pairs: int, quick: bool) -> list[list[str]]:
    """The same A/B with no server and no socket: the ASGI app called in this process on
    64 KiB body messages (copied as a server's reader makes them), so the middleware's own
    cost stands alone, without loopback and scheduling noise."""
    import asyncio
    import time

    from tests.support import asgi_bench_apps

    os.environ.setdefault("TMPDIR", tempfile.mkdtemp(prefix="um-bench-"))
    tempfile.tempdir = None
    app = asgi_bench_apps.side_by_side_app()

    async def call(side: str, body: bytes, content_type: str) -> float:
        view = memoryview(body)
        position = 0

        async def receive() -> dict[str, object]:
            nonlocal position
            chunk = bytes(view[position : position + 65536])
            position += len(chunk)
            return {"type": "http.request", "body": chunk, "more_body": position < len(body)}

        statuses: list[int] = []

        async def send(message: dict[str, object]) -> None:
            if message["type"] == "http.response.start":
                statuses.append(int(message["status"]))  # type: ignore[call-overload]

        scope = {
            "type": "http", "method": "POST", "path": "/upload", "root_path": "",
            "scheme": "http", "query_string": upload_path().split("?", 1)[1].encode(),
            "headers": [
                (b"content-type", content_type.encode()),
                (b"content-length", str(len(body)).encode()),
                (b"x-bench-side", side.encode()),
            ],
        }  # fmt: skip
        start = time.perf_counter()
        await app(scope, receive, send)  # type: ignore[arg-type]
        elapsed = time.perf_counter() - start
        assert statuses == [200], statuses
        return elapsed

    rows = []
    for name, body, content_type in cases(quick):

        def measure(side: str, body: bytes = body, content_type: str = content_type) -> float:
            return asyncio.run(call(side, body, content_type))

        measure("bare")
        measure("metered")
        samples = [pair(i, measure, "bare", "metered") for i in range(pairs)]
        med, lo, hi = summary([b / a for a, b in samples])
        rows.append(
            [
                name + " (in process, no HTTP)",
                f"{len(body) / MiB:.1f} MiB",
                f"{statistics.median(a for a, _ in samples) * 1000:.0f} ms",
                f"{statistics.median(b for _, b in samples) * 1000:.0f} ms",
                f"{med:.3f}",
                f"{lo:.3f}-{hi:.3f}",
                "= wall",
                f"<= {BAR}",
                verdict(med <= BAR),
            ]
        )
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--control", action="store_true", help="A/A: both sides bare")
    parser.add_argument("--pairs", type=int, default=None)
    parser.add_argument("--inprocess", action="store_true", help="no server, no socket")
    args = parser.parse_args()
    pairs = args.pairs or (6 if args.quick else 12)
    env = {
        "UM_UPLOAD_DIR": upload_dir(),
        "TMPDIR": tempfile.mkdtemp(prefix="um-bench-"),
        "UM_BENCH_CONTROL": "1" if args.control else "0",
    }
    print(machine_info())
    print(f"load average before: {load_average()}")
    if args.inprocess:
        rows = run_inprocess(pairs, args.quick)
        print(table(["case", "body", "bare", "metered", "ratio (median)", "range", "CPU ratio",
                     "bar", "verdict"], rows))  # fmt: skip
        return
    rows = []
    with run_uvicorn(
        "tests.support.asgi_bench_apps:side_by_side_app", env=env, args=("--no-access-log",)
    ) as server:
        bare, metered = Side(server, "bare"), Side(server, "metered")  # type: ignore[arg-type]
        cookie = session_cookie(server.port, metered.headers())
        for name, body, content_type in cases(args.quick):
            headers = {"Content-Type": content_type, "Cookie": cookie}
            timed_upload(bare, body, headers)  # warm up both sides
            timed_upload(metered, body, headers)
            samples = [
                pair(i, partial(timed_upload, body=body, headers=headers), bare, metered)
                for i in range(pairs)
            ]
            ratios = [b[0] / a[0] for a, b in samples]
            med, lo, hi = summary(ratios)
            rows.append(
                [
                    name,
                    f"{len(body) / MiB:.1f} MiB",
                    f"{statistics.median(a[0] for a, _ in samples) * 1000:.0f} ms",
                    f"{statistics.median(b[0] for _, b in samples) * 1000:.0f} ms",
                    f"{med:.3f}",
                    f"{lo:.3f}-{hi:.3f}",
                    f"{statistics.median(b[1] / a[1] for a, b in samples):.3f}",
                    f"<= {BAR}",
                    "A/A control" if args.control else verdict(med <= BAR),
                ]
            )
            print(name, [f"{r:.3f}" for r in ratios], flush=True)
    print(f"load average after: {load_average()}")
    print(
        table(
            [
                "case",
                "body",
                "bare",
                "metered",
                "ratio (median)",
                "range",
                "CPU ratio",
                "bar",
                "verdict",
            ],
            rows,
        )
    )


if __name__ == "__main__":
    main()
