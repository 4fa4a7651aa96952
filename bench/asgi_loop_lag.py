"""The ASGI middleware under load: event-loop lag and poll latency with 100 concurrent
metered uploads, each polled by its own client, under uvicorn (1 worker, httptools,
uvloop).

The server app (``tests.support.asgi_bench_apps.lag_app``) is the middleware around an
app that drains uploads, with a probe task that sleeps 5 ms on the loop again and again
and records how late it wakes (``GET /lag``): that lag is what every request on the
worker feels.  The client (this process, asyncio + uvloop) runs 100 uploads at once, each
sending 8 KiB every 50 ms (a throttled stream: 160 KB/s per upload, 16 MB/s in all), and
beside each one a poller asking ``{prefix}/progress`` every 400 ms (the component's
interval) on a kept-alive connection, timing each answer.  The uploads start over the
first second.  ``--control`` runs the same load on the app without the middleware (it
answers the polls itself from memory): on a shared machine, read the bars beside it.

    python bench/asgi_loop_lag.py                  # default store (SQLite)
    python bench/asgi_loop_lag.py --store redis    # a throwaway redis-server
    python bench/asgi_loop_lag.py --control        # the same load, no middleware
    python bench/asgi_loop_lag.py --switch-interval 0.0005   # see below
    python bench/asgi_loop_lag.py --uploads 20 --seconds 5

Bars: loop lag p99 <= 5 ms, poll p99 <= 20 ms.  Store writes run on threads, and a
thread holding the GIL keeps the loop waiting up to the switch interval (5 ms by
default): ``--switch-interval 0.0005`` shows what a server that lowers it gets.  Poll
times are measured by the client on the same machine (2 cores), so they include the
client's own scheduling.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import cpu_ns, load_average, machine_info, multipart, session_cookie, table, verdict

from tests.support.asgi_servers import run_uvicorn
from tests.support.servers import run_redis

LAG_BAR_MS = 5.0
POLL_BAR_MS = 20.0
PIECE = 8 * 1024
PIECE_EVERY = 0.05
POLL_EVERY = 0.4


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return status, await reader.readexactly(length)


async def upload(
    port: int, cookie: str, body: bytes, ctype: str, upload_id: str, delay: float
) -> None:
    await asyncio.sleep(delay)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        f"POST /upload?uploadmeter_id={upload_id} HTTP/1.1\r\nHost: x\r\n"
        f"Content-Type: {ctype}\r\nContent-Length: {len(body)}\r\nCookie: {cookie}\r\n\r\n".encode()
    )
    for i in range(0, len(body), PIECE):
        writer.write(body[i : i + PIECE])
        await writer.drain()
        await asyncio.sleep(PIECE_EVERY)
    status, _ = await read_response(reader)
    writer.close()
    if status != 200:
        raise RuntimeError(f"upload answered {status}")


async def poll(port: int, cookie: str, upload_id: str, times: list[float], delay: float) -> None:
    await asyncio.sleep(delay)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    request = (
        f"GET /uploadmeter/progress?id={upload_id} HTTP/1.1\r\nHost: x\r\nCookie: {cookie}\r\n\r\n"
    ).encode()
    state = "unknown"
    while state not in ("done", "error", "cancelled"):
        start = time.perf_counter()
        writer.write(request)
        _, data = await read_response(reader)
        times.append(time.perf_counter() - start)
        state = json.loads(data)["state"]
        await asyncio.sleep(POLL_EVERY)
    writer.close()


async def lag(port: int) -> dict[str, float]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /lag HTTP/1.1\r\nHost: x\r\n\r\n")
    _, data = await read_response(reader)
    writer.close()
    return json.loads(data)  # type: ignore[no-any-return]


async def scenario(port: int, cookie: str, uploads: int, seconds: float) -> dict[str, object]:
    size = int(seconds / PIECE_EVERY) * PIECE
    body, ctype = multipart([("title", None, b"bench"), ("file", "f.bin", os.urandom(size))])
    await lag(port)  # starts the probe
    await asyncio.sleep(2)
    idle = await lag(port)
    times: list[float] = []
    ids = [uuid.uuid4().hex for _ in range(uploads)]
    start = time.perf_counter()
    await asyncio.gather(
        # The uploads start over the first second (users do not click at once), each
        # polled from a moment after its start.
        *(upload(port, cookie, body, ctype, i, n / uploads) for n, i in enumerate(ids)),
        *(poll(port, cookie, i, times, n / uploads + 0.1) for n, i in enumerate(ids)),
    )
    elapsed = time.perf_counter() - start
    loaded = await lag(port)
    times.sort()
    return {
        "idle": idle,
        "loaded": loaded,
        "polls": len(times),
        "poll_p50_ms": statistics.median(times) * 1000,
        "poll_p99_ms": times[int(len(times) * 0.99) - 1] * 1000,
        "poll_max_ms": times[-1] * 1000,
        "seconds": elapsed,
        "body": len(body),
    }


@contextlib.contextmanager
def store(kind: str) -> Iterator[dict[str, str]]:
    if kind == "redis":
        with run_redis() as (url, _):
            yield {"UM_STORE": url}
    elif kind == "memory":  # no store I/O at all: what the rest costs
        yield {"UM_STORE": "memory://"}
    else:
        yield {"TMPDIR": tempfile.mkdtemp(prefix="um-bench-")}  # the default SQLite file


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--store", choices=["sqlite", "redis", "memory"], default="sqlite")
    parser.add_argument("--uploads", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument(
        "--switch-interval",
        type=float,
        default=None,
        help="sys.setswitchinterval in the server (default: Python's 0.005 s)",
    )
    parser.add_argument(
        "--control", action="store_true", help="the same load on the app without the middleware"
    )
    args = parser.parse_args()
    print(machine_info())
    print(f"load average before: {load_average()}")
    with (
        store(args.store) as env,
        # (an A/B of two runs: the control's numbers are the machine's and uvicorn's)
        run_uvicorn(
            "tests.support.asgi_bench_apps:lag_app",
            env={
                **env,
                "UM_BENCH_CONTROL": "1" if args.control else "0",
                "UM_SWITCH_INTERVAL": str(args.switch_interval or ""),
            },
            args=("--no-access-log",),
        ) as server,
    ):
        cookie = session_cookie(server.port)
        try:
            import uvloop

            uvloop.install()
        except ImportError:
            pass
        cpu_before = cpu_ns(server.proc.pid)
        result = asyncio.run(scenario(server.port, cookie, args.uploads, args.seconds))
        cpu = (cpu_ns(server.proc.pid) - cpu_before) / 1e9
    print(f"load average after: {load_average()}")
    loaded, idle = result["loaded"], result["idle"]
    assert isinstance(loaded, dict) and isinstance(idle, dict)
    print(
        f"{args.uploads} uploads of {result['body']} bytes, {result['polls']} polls, "
        f"{result['seconds']:.1f} s, server CPU {cpu:.2f} s, store {args.store}, "
        f"switch interval {args.switch_interval or 0.005} s"
        + (" -- CONTROL: no middleware" if args.control else "")
    )
    print(
        table(
            ["measure", "p50", "p99", "max", "bar", "verdict"],
            [
                [
                    "loop lag, idle (5 ms probe)",
                    f"{idle['p50_ms']:.2f} ms",
                    f"{idle['p99_ms']:.2f} ms",
                    f"{idle['max_ms']:.2f} ms",
                    "-",
                    "info",
                ],
                [
                    "loop lag, under load",
                    f"{loaded['p50_ms']:.2f} ms",
                    f"{loaded['p99_ms']:.2f} ms",
                    f"{loaded['max_ms']:.2f} ms",
                    f"p99 <= {LAG_BAR_MS} ms",
                    verdict(loaded["p99_ms"] <= LAG_BAR_MS),
                ],
                [
                    "poll latency, under load",
                    f"{result['poll_p50_ms']:.2f} ms",
                    f"{result['poll_p99_ms']:.2f} ms",
                    f"{result['poll_max_ms']:.2f} ms",
                    f"p99 <= {POLL_BAR_MS} ms",
                    verdict(float(result["poll_p99_ms"]) <= POLL_BAR_MS),
                ],  # type: ignore[arg-type]
            ],
        )
    )


if __name__ == "__main__":
    main()
