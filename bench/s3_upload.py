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
SHA-256 checked against the file's).  The table shows seconds, MiB/s and the ratio to
boto3 (throughput through uploadmeter / throughput direct).  Peak RSS is the highest
``VmHWM`` of any gunicorn worker; the bound is ``part_size x concurrency + 16 MiB`` over
the worker's size after a warm-up upload.

    python bench/s3_upload.py            # 256 MiB, 3 rounds
    python bench/s3_upload.py --quick    # 64 MiB, 1 round
"""

from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import io
import json
import os
import statistics
import sys
import tempfile
import time
from typing import Any
from urllib.parse import urlencode

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import MiB, load_average, machine_info, table  # noqa: E402

from tests.support.chunked_support import CHUNKS, ChunkClient, ChunkedFile  # noqa: E402
from tests.support.s3 import running_swift, s3_client  # noqa: E402
from tests.support.servers import gunicorn_process, run_redis  # noqa: E402

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--mib", type=int, default=None, help="file size (256; --quick: 64)")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--chunk-mib", type=int, default=8, help="chunk size (also try 1)")
    args = parser.parse_args()
    size = (args.mib or (64 if args.quick else 256)) * MiB
    rounds = args.rounds or (1 if args.quick else 3)
    print(machine_info())
    print("load before:", load_average())
    data = os.urandom(size)
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
        workers = args.concurrency
        with gunicorn_process(
            "tests.support.s3:make_s3_app()",
            workers=workers,
            env=env,
            args=("--timeout", "600"),
        ) as server:
            warm = os.urandom(PART + 1)
            tus(server.url, warm)
            base = max(vm_rss_mib(pid) for pid in server.worker_pids())
            times: dict[str, list[float]] = {"boto3": [], "chunks": [], "tus": []}
            for r in range(rounds):
                # A fresh file each round: no deduplication, no instant upload.
                data = os.urandom(size)
                times["boto3"].append(direct(client, bucket, data, args.concurrency))
                times["chunks"].append(
                    chunked(server.url, data, args.chunk_mib * MiB, args.concurrency, f"r{r}")
                )
                data = os.urandom(size)
                times["tus"].append(tus(server.url, data))
            peak = max(vm_hwm_mib(pid) for pid in server.worker_pids())
    base_t = statistics.median(times["boto3"])
    rows = []
    for name, label in (
        ("boto3", f"boto3 multipart ({PART // MiB} MiB parts x {args.concurrency})"),
        ("chunks", f"uploadmeter chunks ({args.chunk_mib} MiB x {args.concurrency})"),
        ("tus", "uploadmeter tus (one PATCH)"),
    ):
        t = statistics.median(times[name])
        rows.append(
            [label, f"{t:.2f}", f"{size / MiB / t:.0f}", f"{base_t / t:.2f}",
             " ".join(f"{x:.2f}" for x in times[name])]
        )  # fmt: skip
    print(table(["upload", "s (median)", "MiB/s", "vs boto3", "runs"], rows))
    bound = PART * args.concurrency / MiB + 16
    print(
        f"peak worker RSS {peak:.0f} MiB; after warm-up {base:.0f} MiB; growth "
        f"{peak - base:.0f} MiB; bound part_size x concurrency + 16 MiB = {bound:.0f} MiB"
    )
    print("load after:", load_average())


if __name__ == "__main__":
    main()
