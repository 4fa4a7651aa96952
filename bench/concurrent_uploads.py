"""100 concurrent uploads, each polled every 200 ms, on gunicorn with several workers.

The server is the benchmark Flask app behind the middleware with the default store kind
(an SQLite file shared by the workers), on gunicorn with 4 workers.  A sync worker serves
one request at a time, so 100 uploads in flight plus their polls need the threaded worker,
with enough threads per worker (``-k gthread --threads 128``) that no worker can fill its
pool with uploads and queue polls behind them: gunicorn's gthread worker accepts
connections whether or not a thread is free (measured: with 58 threads per worker, polls
waited 7 s).  The middleware is the same either way.

Two client processes.  A child process uploads: one asyncio task per upload, 4 MiB sent at
``--rate`` KiB/s (160 by default, 16 MB/s for all 100), the starts spread evenly over
``--stagger`` seconds: 10 by default, so that all 100 are in flight together for the middle
15 s of the run and end as they began, a few a second.  ``--stagger 2`` is a flash crowd:
100 uploads begin within 2 s and so also end within 2 s, and in that second every request
waits behind 25 threads per worker saving and hashing their files.  This process polls: one task
per upload, every 200 ms over a kept-alive connection as a browser's ``fetch`` does, each
task at its own phase of the cycle as browsers would be, timing each poll.  At the end
every upload must have answered 200 with the SHA-256 of what it sent, and its last poll
must say ``done`` with ``bytes_received == content_length`` and the exact field size.

The same load is then run against the bare app (no middleware), polling its ``GET /``
page instead: the latency any request gets from this server under this load, for
comparison (``--no-baseline`` skips it).

    python bench/concurrent_uploads.py              # 100 uploads of 4 MiB at 160 KiB/s
    python bench/concurrent_uploads.py --stagger 2  # the flash crowd
    python bench/concurrent_uploads.py --rate 320   # twice the rate
    python bench/concurrent_uploads.py --quick      # 100 uploads of 1 MiB
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import (
    BOUNDARY,
    MiB,
    gunicorn,
    load_average,
    machine_info,
    session_cookie,
    table,
    upload_dir,
    verdict,
)

PIECE_INTERVAL = 0.05
POLL_INTERVAL = 0.2


async def http(port: int, raw: bytes, pieces: list[bytes] | None = None) -> tuple[int, bytes]:
    """Send ``raw`` (then ``pieces``, paced); return ``(status, body)``."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(raw)
        for piece in pieces or []:
            await writer.drain()
            await asyncio.sleep(PIECE_INTERVAL)
            writer.write(piece)
        await writer.drain()
        data = await reader.read()
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


class KeepAlive:
    """One HTTP/1.1 connection reused for every poll, as a browser's ``fetch`` does."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def get(self, raw: bytes) -> tuple[int, bytes]:
        for attempt in range(2):
            if self.writer is None:
                self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
            assert self.reader is not None
            try:
                self.writer.write(raw)
                await self.writer.drain()
                head = await self.reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                body = await self.reader.readexactly(length)
                if b"connection: close" in head.lower():
                    self.close()
                return int(head.split(b" ", 2)[1]), body
            except (ConnectionError, asyncio.IncompleteReadError):
                self.close()  # the server closed an idle connection: open a new one
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


# -- uploader (child process) -------------------------------------------------------------


async def upload_one(
    port: int, upload_id: str, cookie: str, size: int, seed: int, delay: float, piece: int
) -> dict[str, Any]:
    content = seed.to_bytes(4, "big") * 16 + os.urandom(size - 64)
    head = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="f{seed}.bin"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    body = head + content + f"\r\n--{BOUNDARY}--\r\n".encode()
    request = (
        f"POST /upload?hash=1&uploadmeter_id={upload_id} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
        f"Content-Length: {len(body)}\r\nCookie: {cookie}\r\nConnection: close\r\n\r\n"
    ).encode()
    pieces = [body[i : i + piece] for i in range(0, len(body), piece)]
    await asyncio.sleep(delay)
    status, answer = await http(port, request, pieces)
    files = json.loads(answer)["files"] if status == 200 else []
    return {
        "id": upload_id,
        "status": status,
        "length": len(body),
        "ok": status == 200
        and len(files) == 1
        and files[0]["size"] == size
        and files[0]["sha256"] == hashlib.sha256(content).hexdigest(),
    }


async def uploader(
    port: int, jobs: list[tuple[str, str]], size: int, stagger: float, piece: int
) -> None:
    results = await asyncio.gather(
        *(
            upload_one(port, uid, cookie, size, i, stagger * i / len(jobs), piece)
            for i, (uid, cookie) in enumerate(jobs)
        )
    )
    json.dump(results, sys.stdout)


# -- poller (this process) ----------------------------------------------------------------


async def poll_one(
    port: int, upload_id: str, cookie: str, deadline: float, phase: float, uploads_over: Any
) -> dict[str, Any]:
    """Poll one upload until it ends; with ``uploads_over`` (baseline), ``GET /`` instead."""
    path = "/" if uploads_over is not None else f"/uploadmeter/progress?id={upload_id}"
    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: {cookie}\r\n\r\n".encode()
    connection = KeepAlive(port)
    latencies: list[float] = []
    starts: list[float] = []
    seen: list[int] = []
    record: dict[str, Any] = {}
    # Browsers do not poll in lockstep: each starts at its own point of the 200 ms cycle.
    await asyncio.sleep(phase)
    while time.monotonic() < deadline:
        start = time.perf_counter()
        status, body = await connection.get(request)
        latencies.append(time.perf_counter() - start)
        starts.append(start)
        assert status == 200, (status, body)
        if uploads_over is not None:
            if uploads_over.is_set():
                break
        else:
            record = json.loads(body)
            seen.append(record["bytes_received"])
            if record["state"] in ("done", "error", "cancelled"):
                break
        await asyncio.sleep(max(0.0, POLL_INTERVAL - (time.perf_counter() - start)))
    connection.close()
    return {"record": record, "latencies": latencies, "starts": starts, "seen": seen}


async def poller(
    port: int,
    jobs: list[tuple[str, str]],
    size: int,
    stagger: float,
    piece: int,
    timeout: float,
    baseline: bool = False,
) -> Any:
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        __file__,
        "--uploader",
        str(port),
        str(size),
        str(stagger),
        str(piece),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert child.stdin is not None
    child.stdin.write(json.dumps(jobs).encode())
    child.stdin.close()
    uploads_over = asyncio.Event() if baseline else None

    async def uploads() -> bytes:
        out, _ = await child.communicate()
        if uploads_over is not None:
            uploads_over.set()
        return out

    deadline = time.monotonic() + timeout
    waiting = asyncio.create_task(uploads())
    polls = await asyncio.gather(
        *(
            poll_one(port, uid, cookie, deadline, POLL_INTERVAL * i / len(jobs), uploads_over)
            for i, (uid, cookie) in enumerate(jobs)
        )
    )
    return polls, json.loads(await waiting)


def piece(args: argparse.Namespace) -> int:
    return int(args.rate * 1024 * PIECE_INTERVAL)


def run(args: argparse.Namespace, size: int, metered: bool) -> dict[str, Any]:
    store_dir = tempfile.mkdtemp(prefix="um-bench-store-")
    env = {
        "UM_METERED": "1" if metered else "0",
        "UM_UPLOAD_DIR": upload_dir(),
        "UM_STORE": f"sqlite://{store_dir}/uploadmeter.sqlite3",
    }
    with gunicorn(
        "tests.support.bench_apps:create_app()",
        workers=args.workers,
        worker_class="gthread",
        threads=args.threads,
        env=env,
        pin=False,
    ) as server:
        cookies = [session_cookie(server.port) if metered else "" for _ in range(args.uploads)]
        jobs = [(uuid.uuid4().hex, cookie) for cookie in cookies]
        start = time.perf_counter()
        polls, uploads = asyncio.run(
            poller(
                server.port,
                jobs,
                size,
                args.stagger,
                piece(args),
                timeout=600,
                baseline=not metered,
            )
        )
        elapsed = time.perf_counter() - start
    latencies = sorted(lat for p in polls for lat in p["latencies"])
    result: dict[str, Any] = {
        "uploads_ok": sum(u["ok"] for u in uploads),
        "polls": len(latencies),
        "p50": statistics.median(latencies) * 1000,
        "p99": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000,
        "max": latencies[-1] * 1000,
        "elapsed": elapsed,
    }
    if metered:
        result["records_ok"] = sum(
            p["record"].get("state") == "done"
            and p["record"]["bytes_received"] == u["length"] == p["record"]["content_length"]
            and p["record"]["fields"][0]["bytes_received"] == size
            for p, u in zip(polls, uploads, strict=True)
        )
        result["monotonic"] = sum(p["seen"] == sorted(p["seen"]) for p in polls)
        result["values"] = statistics.median(len({s for s in p["seen"] if s > 0}) for p in polls)
    return result


def merge(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts add up, latencies and times are medians over runs (max: the largest)."""
    merged: dict[str, Any] = {}
    for key in runs[0]:
        values = [r[key] for r in runs]
        if key in ("uploads_ok", "records_ok", "monotonic", "polls"):
            merged[key] = sum(values)
        elif key == "max":
            merged[key] = max(values)
        else:
            merged[key] = statistics.median(values)
    merged["p99s"] = ", ".join(f"{r['p99']:.0f}" for r in runs) + " ms"
    return merged


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--uploads", type=int, default=100)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--threads", type=int, default=128, help="threads per worker")
    parser.add_argument(
        "--stagger", type=float, default=10.0, help="spread the upload starts over this many s"
    )
    parser.add_argument(
        "--no-baseline", action="store_true", help="skip the bare-app run (GET / under load)"
    )
    parser.add_argument(
        "--rate", type=float, default=160, help="KiB/s each upload sends (in 20 pieces a second)"
    )
    parser.add_argument("--repeat", type=int, default=None, help="runs (3; --quick: 1)")
    parser.add_argument("--uploader", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.uploader:
        port, size, stagger, each = args.uploader
        jobs = json.loads(sys.stdin.read())
        asyncio.run(uploader(int(port), jobs, int(size), float(stagger), int(each)))
        return
    size = (1 if args.quick else 4) * MiB
    n = args.uploads
    args.repeat = args.repeat or (1 if args.quick else 3)
    total = n * args.repeat
    print(machine_info())
    print(f"load average before: {load_average()}")
    runs_m: list[dict[str, Any]] = []
    runs_b: list[dict[str, Any]] = []
    # Runs alternate (with, without, with, ...): a spike of load hits both sides alike.
    for _ in range(args.repeat):
        runs_m.append(run(args, size, metered=True))
        print(runs_m[-1], flush=True)
        if not args.no_baseline:
            runs_b.append(run(args, size, metered=False))
            print(runs_b[-1], flush=True)
    m = merge(runs_m)
    b = merge(runs_b) if runs_b else None

    def base(key: str, fmt: str) -> str:
        return "-" if b is None else fmt.format(b[key])

    rows = [
        ["uploads answered 200 with the right SHA-256", f"{m['uploads_ok']}/{total}",
         base("uploads_ok", "{}/" + str(total)), verdict(m["uploads_ok"] == total)],
        ["last poll: done, bytes_received == content_length, field bytes exact",
         f"{m['records_ok']}/{total}", "-", verdict(m["records_ok"] == total)],
        ["progress monotonic in every poll series", f"{m['monotonic']}/{total}", "-", "-"],
        ["distinct progress values seen per upload (median)", f"{m['values']:.0f}", "-", "-"],
        ["requests made", f"{m['polls']}", base("polls", "{}"), "-"],
        ["latency p50 (median of runs)", f"{m['p50']:.1f} ms", base("p50", "{:.1f} ms"), "-"],
        ["latency p99 (median of runs)", f"{m['p99']:.1f} ms", base("p99", "{:.1f} ms"),
         f"<= 50 ms: {verdict(m['p99'] <= 50)}"],
        ["latency p99 of each run", m["p99s"], base("p99s", "{}"), "-"],
        ["latency max (of all runs)", f"{m['max']:.1f} ms", base("max", "{:.1f} ms"), "-"],
        ["wall time (median)", f"{m['elapsed']:.1f} s", base("elapsed", "{:.1f} s"), "-"],
    ]  # fmt: skip
    print()
    print(
        f"{args.repeat} runs of {n} concurrent uploads of {size // MiB} MiB "
        f"at {args.rate:g} KiB/s each, "
        f"gunicorn gthread {args.workers} workers "
        f"x {args.threads} threads, SQLite store, starts spread over {args.stagger:g} s; "
        f"load after: {load_average()}"
    )
    print(
        table(["measure", "with uploadmeter: progress polls", "bare app: GET / polls", "bar"], rows)
    )


if __name__ == "__main__":
    main()
