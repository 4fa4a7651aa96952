"""Many slow tus clients on ONE uvicorn worker: each costs a coroutine, not a thread.

200 PATCHes at 10 KB/s each (1 KB every 0.1 s) run at once against one uvicorn worker
(the ASGI middleware with ``TusUploads`` mounted, the default SQLite store).  Every one
makes progress while the others trickle (its offset moves before the bodies end), every
one ends ``204`` with every byte kept, the worker's RSS stays bounded, and progress polls
made meanwhile are answered with a p99 under 50 ms.

Run with ``-s`` to see the numbers (RSS, poll latencies).
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import pytest

from tests.support.asgi_servers import run_uvicorn
from tests.support.servers import Client

pytestmark = pytest.mark.gunicorn  # a server process of its own

CLIENTS = int(os.environ.get("UM_TEST_SLOW_CLIENTS", "200"))
RATE = 10 * 1024  # bytes per second per client
PIECE = 1024
BODY = 60 * 1024  # 6 s at RATE
TUS = "/uploadmeter/tus/"
V = {"Tus-Resumable": "1.0.0"}
POLL_P99 = 0.050
RSS_GROWTH_LIMIT = 64 * 1024 * 1024


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


async def request(
    port: int, method: str, path: str, headers: dict[str, str], body: bytes = b""
) -> tuple[int, dict[str, str]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        writer.write(
            f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{head}"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
            + body
        )
        await writer.drain()
        return await read_response(reader)
    finally:
        writer.close()


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    status_line = await reader.readline()
    headers: dict[str, str] = {}
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers


async def slow_patch(port: int, url: str, cookie: str) -> tuple[int, dict[str, str]]:
    """One PATCH whose body trickles at RATE."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(
            f"PATCH {url} HTTP/1.1\r\nHost: 127.0.0.1\r\nTus-Resumable: 1.0.0\r\n"
            f"Cookie: {cookie}\r\nUpload-Offset: 0\r\n"
            "Content-Type: application/offset+octet-stream\r\n"
            f"Content-Length: {BODY}\r\nConnection: close\r\n\r\n".encode()
        )
        for _ in range(BODY // PIECE):
            writer.write(os.urandom(PIECE))
            await writer.drain()
            await asyncio.sleep(PIECE / RATE)
        return await asyncio.wait_for(read_response(reader), 30)
    finally:
        writer.close()


def trickle(port: int, urls: list[str], cookie: str) -> list[tuple[int, dict[str, str]]]:
    """Every slow PATCH at once (in a process of its own, so that its event loop does
    not delay the polls measured by the test)."""

    async def run() -> list[tuple[int, dict[str, str]]]:
        patches = [slow_patch(port, url, cookie) for url in urls]
        return await asyncio.wait_for(asyncio.gather(*patches), BODY / RATE + 30)

    return asyncio.run(run())


def test_200_slow_tus_patches_on_one_uvicorn_worker(tmp_path: Any) -> None:
    env = {
        "UPLOADMETER_TEST_SHELL": "asgi",
        "UPLOADMETER_TEST_FILES": str(tmp_path / "files"),
        "TMPDIR": str(tmp_path),  # the default store: this test's own
    }
    with run_uvicorn("tests.support.chunked_app:make_app", workers=1, env=env) as server:
        pid = server.proc.pid
        client = Client(server.url)
        client.request("GET", "/uploadmeter/session")
        cookie = client.cookie_header()
        urls = []
        for _ in range(CLIENTS):
            status, headers, _ = client.request(
                "POST", TUS, b"", {**V, "Upload-Length": str(BODY), "Cookie": cookie}
            )
            assert status == 201
            urls.append(headers["location"])
        progress = f"/uploadmeter/progress?id={urls[0].rsplit('/', 1)[1]}"
        before = rss(pid)
        polls: list[float] = []
        at: list[float] = []
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("fork")) as pool:
            load = pool.submit(trickle, server.port, urls, cookie)
            began = time.monotonic()
            midway: list[int] = []
            peak = before
            while not load.done():
                started = time.perf_counter()
                status, _, _ = client.request("GET", progress)
                polls.append(time.perf_counter() - started)
                at.append(time.monotonic() - began)
                assert status == 200
                peak = max(peak, rss(pid))
                if not midway and time.monotonic() - began > BODY / RATE / 2:
                    # Half way through every body: each upload has bytes on disk.
                    midway = [
                        int(client.request("HEAD", url, b"", V)[1]["upload-offset"]) for url in urls
                    ]
                time.sleep(0.02)
            results = load.result()
        # Every client made progress while all trickled, and every byte was kept.
        assert midway and min(midway) > 0, sorted(midway)[:10]
        assert [status for status, _ in results] == [204] * CLIENTS
        assert {h["upload-offset"] for _, h in results} == {str(BODY)}
        p99 = statistics.quantiles(polls, n=100)[98]
        growth = peak - before
        print(
            f"\n{CLIENTS} slow PATCHes on one worker: RSS {before / 2**20:.1f} MiB before, "
            f"peak {peak / 2**20:.1f} MiB (+{growth / 2**20:.1f} MiB); "
            f"{len(polls)} polls: median {statistics.median(polls) * 1000:.1f} ms, "
            f"p99 {p99 * 1000:.1f} ms, max {max(polls) * 1000:.1f} ms; offsets half way: "
            f"min {min(midway)}, max {max(midway)} of {BODY}"
        )
        slowest = sorted(zip(polls, at, strict=True), reverse=True)[:5]
        print("slowest polls (ms at s):", [f"{p * 1000:.0f} at {t:.2f}" for p, t in slowest])
        assert growth < RSS_GROWTH_LIMIT
        assert p99 <= POLL_P99
