"""tus and chunk throughput of one 256 MiB file: the ASGI shell vs the WSGI shell.

The same test app (``tests.support.chunked_app:make_app``: ``TusUploads`` and
``ChunkUploads`` on one FileStore, SQLite store, instant upload off) served two ways, one
worker each: uvicorn (httptools, uvloop) with the ASGI middleware
(``UPLOADMETER_TEST_SHELL=asgi``), and gunicorn (one sync worker) with the WSGI
middleware.  Each measured upload is whole: tus is one creation and one PATCH of the whole
file (tus-js-client's default ``chunkSize``), chunks are 1 MiB multipart POSTs one after the
other (resumable.js's default size; its three in parallel would measure the client), and
both end with the verification (SHA-256 + MD5), the move into the store and
``on_complete``.  Uploads alternate A B, B A, ...; each pair gives ``ASGI time / WSGI
time``; the table shows the median and the range.  ``--control`` runs the same with two
gunicorns (A/A): the method's own noise, to read beside the A/B ratios.

    python bench/asgi_resumable.py            # 256 MiB, 4 pairs per protocol
    python bench/asgi_resumable.py --quick    # 64 MiB, 2 pairs
    python bench/asgi_resumable.py --control  # A/A: WSGI vs WSGI
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from _common import MiB, gunicorn, load_average, machine_info, summary, table

from tests.support.asgi_servers import run_uvicorn
from tests.support.chunked_support import ChunkClient, ChunkedFile

TUS = "/uploadmeter/tus/"
V = {"Tus-Resumable": "1.0.0"}


@contextlib.contextmanager
def server(kind: str) -> Iterator[str]:
    """One worker of ``kind`` (``asgi``: uvicorn; ``wsgi``: gunicorn), its own store and
    files; the base URL."""
    tmp = tempfile.mkdtemp(prefix="um-bench-resumable-")
    env = {
        "UPLOADMETER_TEST_STORE": f"sqlite://{tmp}/store.sqlite3",
        "UPLOADMETER_TEST_FILES": os.path.join(tmp, "files"),
        "UPLOADMETER_TEST_INSTANT": "off",
        "TMPDIR": tmp,
    }
    if kind == "asgi":
        env["UPLOADMETER_TEST_SHELL"] = "asgi"
        with run_uvicorn(
            "tests.support.chunked_app:make_app", env=env, args=("--no-access-log",)
        ) as srv:
            yield srv.url
        return
    with gunicorn("tests.support.chunked_app:make_app()", env=env, pin=False) as srv:
        yield f"http://127.0.0.1:{srv.port}"


def tus_upload(url: str, data: bytes) -> float:
    client = ChunkClient(url)
    began = time.perf_counter()
    status, headers, body = client.request("POST", TUS, b"", {**V, "Upload-Length": str(len(data))})
    assert status == 201, (status, body)
    status, headers, body = client.request(
        "PATCH",
        headers["location"],
        data,
        {**V, "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream"},
    )
    assert status == 204 and headers["upload-offset"] == str(len(data)), (status, body)
    return time.perf_counter() - began


def chunk_upload(url: str, data: bytes) -> float:
    client = ChunkClient(url)
    client.start()  # a new session: a verified identifier is not "already uploaded"
    # The clients' default identifier (not a hash): every run is a new upload.
    f = ChunkedFile(data, MiB, identifier=f"{len(data)}-bench-{time.monotonic_ns()}")
    began = time.perf_counter()
    body = client.upload(f)
    elapsed = time.perf_counter() - began
    assert body["complete"], body
    return elapsed


def pairs_of(
    measure: Callable[[str, bytes], float], a: str, b: str, data: bytes, pairs: int
) -> list[tuple[float, float]]:
    measure(a, data)  # warm up both
    measure(b, data)
    samples = []
    for i in range(pairs):
        if i % 2 == 0:
            ta = measure(a, data)
            samples.append((ta, measure(b, data)))
        else:
            tb = measure(b, data)
            samples.append((measure(a, data), tb))
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--control", action="store_true", help="A/A: two WSGI servers")
    parser.add_argument("--pairs", type=int, default=None)
    args = parser.parse_args()
    size = (64 if args.quick else 256) * MiB
    pairs = args.pairs or (2 if args.quick else 4)
    data = os.urandom(size)
    print(machine_info())
    print(f"load average before: {load_average()}")
    names = ("wsgi", "wsgi") if args.control else ("wsgi", "asgi")
    rows: list[list[Any]] = []
    with server(names[0]) as url_a, server(names[1]) as url_b:
        for label, measure in (("tus (1 PATCH)", tus_upload), ("chunks (1 MiB)", chunk_upload)):
            samples = pairs_of(measure, url_a, url_b, data, pairs)
            med, lo, hi = summary([b / a for a, b in samples])
            wsgi = statistics.median(a for a, _ in samples)
            other = statistics.median(b for _, b in samples)
            rows.append(
                [
                    f"{label}, {size // MiB} MiB",
                    f"{wsgi:.2f} s ({size / MiB / wsgi:.0f} MiB/s)",
                    f"{other:.2f} s ({size / MiB / other:.0f} MiB/s)",
                    f"{med:.3f}",
                    f"{lo:.3f}-{hi:.3f}",
                    "A/A control" if args.control else "",
                ]
            )
            print(label, [f"{b / a:.3f}" for a, b in samples], flush=True)
    print(f"load average after: {load_average()}")
    second = "WSGI (2nd gunicorn)" if args.control else "ASGI (uvicorn)"
    print(
        table(
            ["upload", "WSGI (gunicorn sync)", second, "ratio (median)", "range", ""],
            rows,
        )
    )


if __name__ == "__main__":
    main()
