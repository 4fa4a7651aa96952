"""Peak worker memory and store writes for a 1 GiB upload, with and without the middleware.

Each run starts a fresh gunicorn (sync, one worker, default SQLite-kind store in a temp
dir), warms it up with a small upload, then sends one 1 GiB file through the Flask app
that saves it via ``request.files``.  Peak RSS is the worker's ``VmHWM`` from
``/proc/<pid>/status``; store writes are counted by a wrapper around the store
(``tests/bench_apps.CountingStore``: every ``set`` of the upload's record).

    python bench/rss_writes.py           # 3 runs each side, 1 GiB
    python bench/rss_writes.py --quick   # 1 run each side, 256 MiB
"""

from __future__ import annotations

import argparse
import http.client
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import (
    BOUNDARY,
    MiB,
    gunicorn,
    json_get,
    load_average,
    machine_info,
    multipart,
    pin_client,
    request,
    session_cookie,
    table,
    upload_dir,
    verdict,
)


def vm_hwm_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise RuntimeError("no VmHWM")


def body_pieces(size: int) -> tuple[Iterator[bytes], int]:
    block = os.urandom(MiB)
    head = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="big.bin"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    tail = f"\r\n--{BOUNDARY}--\r\n".encode()

    def pieces() -> Iterator[bytes]:
        yield head
        for _ in range(size // MiB):
            yield block
        yield tail

    return pieces(), len(head) + size + len(tail)


def one_run(metered: bool, size: int) -> dict[str, float]:
    store_dir = tempfile.mkdtemp(prefix="um-bench-store-")
    env = {
        "UM_METERED": "1" if metered else "0",
        "UM_UPLOAD_DIR": upload_dir(),
        "UM_STORE": f"sqlite://{store_dir}/um.sqlite3",
    }
    with gunicorn("tests.support.bench_apps:create_app()", env=env) as server:
        (pid,) = server.worker_pids()
        cookie = session_cookie(server.port)
        small, content_type = multipart([("file", "small.bin", os.urandom(2 * MiB))])
        headers = {"Content-Type": content_type, "Cookie": cookie}
        request(server.port, "POST", f"/upload?uploadmeter_id={uuid.uuid4().hex}", small, headers)
        before = vm_hwm_kib(pid)
        upload_id = uuid.uuid4().hex
        pieces, length = body_pieces(size)
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=600)
        start = time.perf_counter()
        conn.request(
            "POST",
            f"/upload?uploadmeter_id={upload_id}",
            body=pieces,
            headers={**headers, "Content-Length": str(length)},
        )
        response = conn.getresponse()
        data = response.read()
        elapsed = time.perf_counter() - start
        conn.close()
        assert response.status == 200, data
        peak = vm_hwm_kib(pid)
        writes = json_get(server.port, f"/stats?id={upload_id}")["writes"] if metered else 0
    return {"before": before / 1024, "peak": peak / 1024, "seconds": elapsed, "writes": writes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    runs, size = (1, 256 * MiB) if args.quick else (3, 1024 * MiB)
    pin_client()
    print(machine_info())
    print(f"load average before: {load_average()}")
    results: dict[bool, list[dict[str, float]]] = {False: [], True: []}
    for i in range(runs):
        for metered in (False, True) if i % 2 == 0 else (True, False):
            results[metered].append(one_run(metered, size))
            print("with" if metered else "without", results[metered][-1], flush=True)
    med = {
        m: {k: statistics.median(r[k] for r in results[m]) for k in results[m][0]} for m in results
    }
    extra = med[True]["peak"] - med[False]["peak"]
    writes = med[True]["writes"]
    per_second = writes / med[True]["seconds"]
    rows = [
        [
            "peak worker RSS (VmHWM)",
            f"{med[False]['peak']:.1f} MiB",
            f"{med[True]['peak']:.1f} MiB",
            f"+{extra:.1f} MiB",
            f"<= +10 MiB: {verdict(extra <= 10)}",
        ],
        [
            "RSS after warm-up upload",
            f"{med[False]['before']:.1f} MiB",
            f"{med[True]['before']:.1f} MiB",
            f"+{med[True]['before'] - med[False]['before']:.1f} MiB",
            "-",
        ],
        [
            "upload time",
            f"{med[False]['seconds']:.2f} s",
            f"{med[True]['seconds']:.2f} s",
            f"x{med[True]['seconds'] / med[False]['seconds']:.3f}",
            "-",
        ],
        [
            "store writes of the record",
            "-",
            f"{writes:.0f} ({per_second:.1f}/s)",
            "-",
            f"<= 150 and <= 10/s: {verdict(writes <= 150 and per_second <= 10)}",
        ],
    ]
    print()
    print(
        f"{size // MiB} MiB upload, gunicorn sync x1, median of {runs}; "
        f"load after: {load_average()}"
    )
    print(table(["measure", "without", "with", "difference", "bar"], rows))


if __name__ == "__main__":
    main()
