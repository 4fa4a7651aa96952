"""Shared helpers of the benchmarks: servers, bodies, timing, tables, machine info.

Benchmarks run by hand (see ``bench/README.md``); they are not tests.  Every server is a
real gunicorn on loopback in its own process; the client is the benchmark process.
"""

from __future__ import annotations

import contextlib
import http.client
import importlib.metadata
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BOUNDARY = "----uploadmeterBench7MA4YWxkTrZu0gW"

# The tests' loopback helpers (the package tests.support of the repository), shared rather
# than written twice; a script run as `python bench/x.py` has only bench/ on its path.
sys.path.insert(0, ROOT)
from tests.support.bench_apps import SIDE_HEADER  # noqa: E402, F401  (the A/B side header, for the scripts)
from tests.support.servers import Gunicorn, gunicorn_process, multipart_body  # noqa: E402

MiB = 1024 * 1024


# -- machine ------------------------------------------------------------------------------


def machine_info() -> str:
    cpu = "?"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    versions = ", ".join(
        f"{name} {_version(name)}"
        for name in ("werkzeug", "flask", "gunicorn", "stringzilla", "streaming-form-data", "redis")
    )
    return (
        f"nproc {os.cpu_count()}, CPU {cpu}, Linux {platform.release()}, "
        f"Python {platform.python_version()}, {versions}"
    )


def _version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "(not installed)"


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


# -- servers ------------------------------------------------------------------------------


@contextlib.contextmanager
def gunicorn(
    spec: str,
    *,
    workers: int = 1,
    worker_class: str = "sync",
    threads: int = 1,
    env: dict[str, str] | None = None,
    args: Sequence[str] = (),
    pin: bool = True,
) -> Iterator[Gunicorn]:
    """Run gunicorn; with ``pin``, its processes run on the server CPU (see :func:`pin_client`)."""
    cpus = server_cpus() if pin else None
    full_env = dict(os.environ, PYTHONPATH=ROOT)
    if os.environ.get("UM_BENCH_MALLOC") != "dynamic":
        # glibc's dynamic mmap/trim thresholds give each server process a "mode" that
        # lasts its lifetime: measured, the same request took 1.0 s in one process and
        # 1.5 s in an identical one (page faults on gunicorn's 1 MiB read-ahead buffers).
        # Fixed thresholds make the servers alike, and 2.5x faster: the bars get harder.
        full_env.setdefault("MALLOC_MMAP_THRESHOLD_", str(16 * MiB))
        full_env.setdefault("MALLOC_TRIM_THRESHOLD_", str(512 * MiB))
    full_env.update(env or {})
    with gunicorn_process(
        spec,
        workers=workers,
        env=full_env,
        args=(
            "-k", worker_class, "--threads", str(threads), "--timeout", "600",
            "--log-level", "warning", "--backlog", "2048", *args,
        ),
        preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,
    ) as server:  # fmt: skip
        yield server


_ALL_CPUS = sorted(os.sched_getaffinity(0))


def server_cpus() -> set[int] | None:
    cpus = _ALL_CPUS
    return set(cpus[len(cpus) // 2 :]) if len(cpus) >= 2 else None


def pin_client() -> None:
    """Keep the client (and wrk, which inherits it) off the server's CPUs.

    On a 2-core machine the scheduler otherwise puts one server's worker on the client's
    core and the other's on the free core: measured, that alone made two identical bare
    servers differ by 25 %.  Pinning gives A and B the same placement.
    """
    cpus = _ALL_CPUS
    if len(cpus) >= 2:
        os.sched_setaffinity(0, set(cpus[: len(cpus) // 2]))


def upload_dir() -> str:
    return tempfile.mkdtemp(prefix="um-bench-files-")


# -- requests -----------------------------------------------------------------------------


def request(
    port: int,
    method: str,
    path: str,
    body: bytes | memoryview | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 600,
) -> tuple[int, bytes, http.client.HTTPResponse]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        data = response.read()
        return response.status, data, response
    finally:
        conn.close()


def timed(port: int, method: str, path: str, body: Any = None, headers: Any = None) -> float:
    start = time.perf_counter()
    status, data, _ = request(port, method, path, body, headers)
    elapsed = time.perf_counter() - start
    if status != 200:
        raise RuntimeError(f"{method} {path} -> {status}: {data[:300]!r}")
    return elapsed


@dataclass(frozen=True)
class WrkRun:
    """What one ``wrk`` run measured, with the server worker's CPU time per request."""

    rps: float
    p99: str  # as wrk prints it ("1.83ms")
    cpu_per_request: float  # seconds


def run_wrk(
    server: Gunicorn,
    path: str,
    seconds: float,
    *,
    connections: int,
    headers: Sequence[str] = (),
    script: str | None = None,
) -> WrkRun:
    """Run ``wrk -t1`` against ``path`` on the server's (single) worker."""
    (pid,) = server.worker_pids()
    before = cpu_ns(pid)
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--latency"]
    for header in headers:
        cmd += ["-H", header]
    if script:
        cmd += ["-s", script]
    out = subprocess.run(
        [*cmd, f"http://127.0.0.1:{server.port}{path}"], capture_output=True, text=True, check=True
    ).stdout
    if "Non-2xx" in out or "Socket errors" in out:
        raise RuntimeError(out)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    p99 = re.search(r"99%\s+(\S+)", out)
    total = re.search(r"(\d+) requests in", out)
    assert rps and p99 and total, out
    cpu = (cpu_ns(pid) - before) / 1e9 / int(total.group(1))
    return WrkRun(float(rps.group(1)), p99.group(1), cpu)


def cpu_ns(pid: int) -> int:
    """Time ``pid`` has run on a CPU, in ns (``/proc/<pid>/schedstat``)."""
    with open(f"/proc/{pid}/schedstat") as f:
        return int(f.read().split()[0])


def multipart(
    parts: Sequence[tuple[str, str | None, bytes]], boundary: str = BOUNDARY
) -> tuple[bytes, str]:
    """``(name, filename or None, data)`` parts -> ``(body, content type)``."""
    return multipart_body(list(parts), boundary)


def near_miss_content(size: int, boundary: str = BOUNDARY) -> bytes:
    """``CRLF--`` plus all but the last 2 bytes of the boundary, over and over."""
    unit = b"\r\n--" + boundary.encode()[:-2] + b"x"
    return (unit * (size // len(unit) + 1))[:size]


def session_cookie(port: int, headers: dict[str, str] | None = None) -> str:
    """A fresh uploadmeter session cookie (``name=value``) from the progress endpoint."""
    _, _, response = request(port, "GET", "/uploadmeter/progress?id=warmupwarmup", None, headers)
    value = response.headers.get("Set-Cookie", "")
    return value.split(";", 1)[0]


def json_get(port: int, path: str, headers: dict[str, str] | None = None) -> Any:
    status, data, _ = request(port, "GET", path, headers=headers)
    if status != 200:
        raise RuntimeError(f"GET {path} -> {status}: {data[:300]!r}")
    return json.loads(data)


# -- numbers ------------------------------------------------------------------------------


def summary(ratios: Sequence[float]) -> tuple[float, float, float]:
    return statistics.median(ratios), min(ratios), max(ratios)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table (readable in a terminal too)."""
    cells = [[str(c) for c in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = [
        "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |"
        for row in cells
    ]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"
