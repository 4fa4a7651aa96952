"""Uploads into S3 through uploadmeter vs. a direct boto3 multipart upload, side by side.

A real S3 server (Swift's s3api, ``tests/support/s3/start_swift.sh``), a redis-server and
one gunicorn (sync workers) serving ``ChunkUploads`` and ``TusUploads`` on an
``S3Storage`` (``tests.support.s3:make_s3_app``).  The same random file is uploaded

* directly with boto3 (``upload_fileobj``: multipart, ``part_size`` parts, ``concurrency``
  threads) -- the baseline;
* as chunks of ``--chunk-mib`` through the chunk endpoint, ``concurrency`` at a time (as
  simple-uploader.js sends them);
* through tus, one PATCH of the whole file (tus-js-client's default ``chunkSize``).

Each upload counts until the server answered that the file is complete and verified (its
SHA-256 checked against the file's).  Uploads run in pairs side by side, boto3 and
uploadmeter alternating (A B, then B A), a fresh file per pair (no deduplication); the
table shows median seconds, MiB/s and the median per-pair ratio to boto3 (throughput
through uploadmeter / throughput direct) with its range.  The A/A row pairs boto3 with
boto3 the same way: the noise to read the other rows against.  Peak RSS is the highest
``VmHWM`` of any gunicorn worker; the bound is ``part_size x concurrency + 16 MiB`` over
the worker's size after a warm-up upload.

    python bench/s3_upload.py            # 256 MiB, 5 pairs
    python bench/s3_upload.py --quick    # 64 MiB, 3 pairs
"""

from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import inspect
import io
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import MiB, load_average, machine_info, summary, table  # noqa: E402

from tests.support.chunked_support import CHUNKS, ChunkClient, ChunkedFile  # noqa: E402
from tests.support.s3 import running_swift, s3_client  # noqa: E402
from tests.support.servers import gunicorn_process, run_redis  # noqa: E402
from uploadmeter import S3Storage  # noqa: E402

PART = 8 * MiB


def vm_hwm_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM")


def vm_rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def direct(client: Any, bucket: str, data: bytes, concurrency: int) -> float:
    from boto3.s3.transfer import TransferConfig

    config = TransferConfig(
        multipart_threshold=PART, multipart_chunksize=PART, max_concurrency=concurrency
    )
    began = time.perf_counter()
    client.upload_fileobj(io.BytesIO(data), bucket, "direct/file", Config=config)
    took = time.perf_counter() - began
    client.delete_object(Bucket=bucket, Key="direct/file")
    return took


def chunked(url: str, data: bytes, chunk: int, concurrency: int, name: str) -> float:
    f = ChunkedFile(data, chunk, identifier=hashlib.sha256(data).hexdigest(), filename=name)
    c = ChunkClient(url)
    c.start()

    def send(n: int) -> dict[str, Any]:
        while True:
            status, _, body = c.request(
                "POST",
                CHUNKS + "?" + urlencode(f.params(n)),
                f.piece(n),
                {"Content-Type": "application/octet-stream"},
            )
            if status == 200:
                return dict(json.loads(body))
            if status != 503:
                raise RuntimeError(f"chunk {n}: {status} {body[:200]!r}")

    began = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        answers = list(pool.map(send, range(1, f.total_chunks + 1)))
    took = time.perf_counter() - began
    complete = [a for a in answers if a.get("complete")]
    assert complete and complete[0]["result"]["sha256"] == f.sha256, answers[-1]
    return took


def tus(url: str, data: bytes) -> float:
    c = ChunkClient(url)
    c.start()
    v = {"Tus-Resumable": "1.0.0"}
    began = time.perf_counter()
    status, h, _ = c.request(
        "POST", "/uploadmeter/tus/", b"", {**v, "Upload-Length": str(len(data))}
    )
    assert status == 201
    status, h, body = c.request(
        "PATCH",
        h["location"],
        data,
        {**v, "Content-Type": "application/offset+octet-stream", "Upload-Offset": "0"},
    )
    took = time.perf_counter() - began
    assert status == 204 and int(h["upload-offset"]) == len(data), (status, body)
    return took


def pairs_of(
    first: Callable[[bytes], float], second: Callable[[bytes], float], size: int, pairs: int
) -> list[tuple[float, float]]:
    """``pairs`` of (first, second) times, the order alternating, a new file per pair."""
    samples = []
    for i in range(pairs):
        data = os.urandom(size)  # a fresh file: no deduplication, no instant upload
        if i % 2 == 0:
            a = first(data)
            samples.append((a, second(data)))
        else:
            b = second(data)
            samples.append((first(data), b))
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--mib", type=int, default=None, help="file size (256; --quick: 64)")
    parser.add_argument("--pairs", type=int, default=None, help="pairs per row (5; --quick: 3)")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--chunk-mib", type=int, default=8, help="chunk size (also try 1)")
    args = parser.parse_args()
    size = (args.mib or (64 if args.quick else 256)) * MiB
    pairs = args.pairs or (3 if args.quick else 5)
    print(machine_info())
    print("load before:", load_average())
    with (
        tempfile.TemporaryDirectory() as tmp,
        running_swift(os.path.join(tmp, "swift")) as swift,
        run_redis() as (redis_url, _),
    ):
        client = s3_client(swift.endpoint, attempts=3)
        bucket = "bench"
        client.create_bucket(Bucket=bucket)
        spool = os.path.join(tmp, "spool")
        os.mkdir(spool)
        env = {
            "UPLOADMETER_TEST_STORE": redis_url,
            "S3_ENDPOINT_URL": swift.endpoint,
            "S3_BUCKET": bucket,
            "S3_SPOOL": spool,
            "UPLOADMETER_TEST_FILES": tmp,
        }
        with gunicorn_process(
            "tests.support.s3:make_s3_app()",
            workers=args.concurrency,
            env=env,
            args=("--timeout", "600"),
        ) as server:
            warm = os.urandom(PART + 1)
            tus(server.url, warm)
            base = max(vm_rss_mib(pid) for pid in server.worker_pids())
            names = iter(range(10**6))

            def boto3(data: bytes) -> float:
                return direct(client, bucket, data, args.concurrency)

            def chunks(data: bytes) -> float:
                chunk = args.chunk_mib * MiB
                return chunked(server.url, data, chunk, args.concurrency, f"f{next(names)}")

            def tus_patch(data: bytes) -> float:
                return tus(server.url, data)

            boto3(warm)  # warm up each side
            chunks(os.urandom(2 * PART + 1))
            rows_in = [
                (f"uploadmeter chunks ({args.chunk_mib} MiB x {args.concurrency})", chunks),
                ("uploadmeter tus (one PATCH)", tus_patch),
                ("A/A control: boto3 vs boto3", boto3),
            ]
            samples = {label: pairs_of(boto3, other, size, pairs) for label, other in rows_in}
            peak = max(vm_hwm_mib(pid) for pid in server.worker_pids())
    rows = []
    for label, _ in rows_in:
        pair = samples[label]
        ratios = [a / b for a, b in pair]  # boto3's time / this one's: throughput ratio
        median, low, high = summary(ratios)
        t = statistics.median(b for _, b in pair)
        direct_t = statistics.median(a for a, _ in pair)
        rows.append(
            [label, f"{direct_t:.2f}", f"{t:.2f}", f"{size / MiB / t:.0f}",
             f"{median:.2f}", f"{low:.2f}-{high:.2f}"]
        )  # fmt: skip
    print(
        f"{size // MiB} MiB, {pairs} pairs per row; boto3 multipart: {PART // MiB} MiB parts "
        f"x {args.concurrency} threads"
    )
    print(
        table(
            ["upload", "boto3 s", "this s", "this MiB/s", "vs boto3 (median)", "range"],
            rows,
        )
    )
    # A tus PATCH holds S3Storage.upload_concurrency (3) parts uploading and one filling.
    held = inspect.signature(S3Storage).parameters["upload_concurrency"].default + 1
    bound = PART * held / MiB + 16
    print(
        f"peak worker RSS {peak:.0f} MiB; after warm-up {base:.0f} MiB; growth "
        f"{peak - base:.0f} MiB; bound part_size x {held} (parts uploading + filling) "
        f"+ 16 MiB = {bound:.0f} MiB"
    )
    print("load after:", load_average())


if __name__ == "__main__":
    main()
