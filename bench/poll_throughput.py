"""Throughput of the progress endpoint with each store, against hello-world on one server.

Every target is gunicorn (sync, one worker, pinned to its own CPU; ``wrk`` runs on the
other):

* ``hello`` -- a hello-world WSGI function (the ceiling: gunicorn's own cost per request)
* ``memory`` / ``sqlite`` / ``redis`` -- :class:`UploadMeterMiddleware` around that same
  function, answering ``GET /uploadmeter/progress?id=...`` for a finished 3-field upload
  of the polling session (a real record: cookie check, store read, JSON out)

Rounds alternate the targets; the table gives the median requests/s and the median of the
per-round ratios to hello-world.

    python bench/poll_throughput.py           # 5 rounds of 4 s per target
    python bench/poll_throughput.py --quick   # 3 rounds of 2 s
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from contextlib import ExitStack

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import (
    Gunicorn,
    gunicorn,
    load_average,
    machine_info,
    multipart,
    pin_client,
    request,
    run_wrk,
    session_cookie,
    table,
    verdict,
)

from tests.support.servers import run_redis

UPLOAD_ID = "pollbench0001"


def wrk(server: Gunicorn, path: str, seconds: int, cookie: str | None) -> tuple[float, str, float]:
    """``(requests/s, p99 latency, worker CPU seconds per request)``."""
    headers = [f"Cookie: {cookie}"] if cookie else []
    run = run_wrk(server, path, seconds, connections=4, headers=headers)
    return run.rps, run.p99, run.cpu_per_request


def prepare(port: int) -> str:
    """A finished tracked upload in a fresh session; returns the session cookie."""
    cookie = session_cookie(port)
    body, content_type = multipart(
        [("title", None, b"poll bench"), ("a", "a.txt", b"x" * 5000), ("b", "b.bin", b"y" * 9000)]
    )
    status, _, _ = request(
        port,
        "POST",
        f"/?uploadmeter_id={UPLOAD_ID}",
        body,
        {"Content-Type": content_type, "Cookie": cookie},
    )
    assert status == 200, status
    status, data, _ = request(
        port, "GET", f"/uploadmeter/progress?id={UPLOAD_ID}", headers={"Cookie": cookie}
    )
    record = json.loads(data)
    assert record["state"] == "done" and len(record["fields"]) == 3, record
    return cookie


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    rounds, seconds = (3, 2) if args.quick else (5, 4)
    pin_client()
    print(machine_info())
    print(f"load average before: {load_average()}")
    store_dir = tempfile.mkdtemp(prefix="um-bench-store-")
    with ExitStack() as stack:
        redis_url, _ = stack.enter_context(run_redis())
        stores = {
            "memory": "memory://",
            "sqlite (default)": f"sqlite://{store_dir}/um.sqlite3",
            "redis": redis_url,
        }
        targets: dict[str, tuple[Gunicorn, str | None, str]] = {}
        hello = stack.enter_context(gunicorn("tests.support.bench_apps:hello_app()"))
        targets["hello-world WSGI"] = (hello, None, "/")
        for name, url in stores.items():
            server = stack.enter_context(
                gunicorn("tests.support.bench_apps:poll_app()", env={"UM_STORE": url})
            )
            targets[name] = (
                server,
                prepare(server.port),
                f"/uploadmeter/progress?id={UPLOAD_ID}",
            )
        rps: dict[str, list[float]] = {name: [] for name in targets}
        p99: dict[str, list[str]] = {name: [] for name in targets}
        cpu: dict[str, list[float]] = {name: [] for name in targets}
        for server, cookie, path in targets.values():
            wrk(server, path, 1, cookie)  # warm up
        for _ in range(rounds):
            for name, (server, cookie, path) in targets.items():
                r, p, c = wrk(server, path, seconds, cookie)
                rps[name].append(r)
                p99[name].append(p)
                cpu[name].append(c)
            print({k: v[-1] for k, v in rps.items()}, flush=True)
    hello_rps = rps["hello-world WSGI"]
    hello_cpu = statistics.median(cpu["hello-world WSGI"])
    rows = []
    for name in targets:
        ratios = [r / h for r, h in zip(rps[name], hello_rps, strict=True)]
        ratio = statistics.median(ratios)
        cpu_each = statistics.median(cpu[name])
        bar = "-"
        if name == "sqlite (default)":
            bar = f">= 50 %: {verdict(ratio >= 0.5)}"
        rows.append(
            [
                name,
                f"{statistics.median(rps[name]):,.0f}",
                f"{ratio * 100:.0f} % ({min(ratios) * 100:.0f}-{max(ratios) * 100:.0f})",
                f"{cpu_each * 1e6:.0f} us",
                f"{hello_cpu / cpu_each * 100:.0f} %",
                sorted(p99[name])[len(p99[name]) // 2],
                bar,
            ]
        )
    print()
    print(
        f"Poll throughput, gunicorn sync x1 (pinned), wrk -t1 -c4, {rounds} rounds x {seconds} s; "
        f"load after: {load_average()}"
    )
    headers = ["target", "req/s (median)", "vs hello-world", "worker CPU per request",
               "CPU: hello-world / target", "p99 latency", "bar"]  # fmt: skip
    print(table(headers, rows))


if __name__ == "__main__":
    main()
