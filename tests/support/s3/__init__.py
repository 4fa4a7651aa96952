"""A real S3-compatible object store for the tests and the bench: OpenStack Swift's s3api,
started by ``start_swift.sh`` (this directory), and an app serving the chunk and tus
endpoints on an :class:`~uploadmeter.S3Storage`.

``make_s3_app()`` reads its settings from the environment, so gunicorn can start it:
``UPLOADMETER_TEST_STORE`` (redis URL), ``S3_ENDPOINT_URL``, ``S3_BUCKET``, ``S3_SPOOL``
(this instance's local temp directory) and ``UPLOADMETER_TEST_FILES`` (where
``completed.jsonl`` logs every ``on_complete``), ``S3_TUS_LOCK_TTL`` (seconds).
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from tests.support.chunked_app import completion_log, page
from tests.support.servers import wait_for_port
from uploadmeter import S3Storage, UploadMeterMiddleware
from uploadmeter.resumable import ChunkUploads, TusUploads

START = os.path.join(os.path.dirname(os.path.abspath(__file__)), "start_swift.sh")
SECRET = "s3-test-secret"
DOWNLOAD = "/s3-download"  # ?key=um/blobs/...: the stored object, through the downloads API


def s3_client(endpoint: str, *, attempts: int = 1, **s3: Any) -> Any:
    """A boto3 client for the test server: path-style, SigV4 for us-east-1, checksums only
    where required (Swift 2.30 takes no flexible checksums over HTTP); ``attempts=1``
    makes a stopped server an error at once (the client retries, not boto3); ``s3``:
    more of botocore's S3 options (``payload_signing_enabled=False``)."""
    import boto3
    from botocore.config import Config

    config = Config(
        s3={"addressing_style": "path", **s3},
        signature_version="s3v4",
        retries={"max_attempts": attempts, "mode": "standard"},
        connect_timeout=2,
        read_timeout=30,
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id="test:tester",
        aws_secret_access_key="testing",
        region_name="us-east-1",
        config=config,
    )


@dataclass
class Swift:
    endpoint: str
    directory: str
    pids: list[int] = field(default_factory=list)

    def client(self) -> Any:
        return s3_client(self.endpoint, attempts=3)

    def new_bucket(self) -> str:
        name = "t" + uuid.uuid4().hex[:20]
        self.client().create_bucket(Bucket=name)
        return name

    @property
    def port(self) -> int:
        return int(self.endpoint.rsplit(":", 1)[1])

    def stop_proxy(self) -> None:
        """Stop the S3 endpoint (the proxy; the storage servers keep their data)."""
        pid = self.pids[-1]
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)

    def start_proxy(self) -> None:
        proc = subprocess.Popen(
            ["swift-proxy-server", os.path.join(self.directory, "etc", "proxy-server.conf")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.pids[-1] = proc.pid
        wait_for_port(self.port, proc=proc, timeout=30)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


@contextlib.contextmanager
def running_swift(directory: str) -> Iterator[Swift]:
    """Start Swift under ``directory``; stop it (by PID) afterwards.

    Swift takes five consecutive ports (proxy, account, container, object, memcached):
    they are picked below the kernel's ephemeral range, where no outgoing connection can
    hold one, and checked by binding them."""
    errors = []
    for _ in range(3):
        port = _free_port_run(5)
        done = subprocess.run(
            ["bash", START, str(port), directory], check=False, capture_output=True, text=True
        )
        if done.returncode == 0:
            break
        errors.append(done.stderr[-2000:])
    else:
        raise RuntimeError("start_swift.sh failed:\n" + "\n".join(errors))
    values = dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)
    swift = Swift(values["S3_ENDPOINT_URL"], directory)
    with open(os.path.join(directory, "pids")) as f:
        swift.pids = [int(p) for p in f.read().split()]
    try:
        yield swift
    finally:
        with open(os.path.join(directory, "pids"), "w") as f:
            f.write("\n".join(map(str, swift.pids)) + "\n")
        subprocess.run(["bash", START, "stop", directory], check=False, capture_output=True)


def _free_port_run(count: int) -> int:
    """The first of ``count`` consecutive loopback ports nobody uses, below the ephemeral
    range (``/proc/sys/net/ipv4/ip_local_port_range``)."""
    with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
        low = int(f.read().split()[0])
    rng = random.Random()
    for _ in range(100):
        base = rng.randrange(max(low - 12000, 1024), low - count)
        if all(_bindable(p) for p in range(base, base + count)):
            return base
    raise RuntimeError("no free port run for Swift")


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def make_s3_app(
    env: dict[str, str] | None = None, *, client: Any = None, **storage_options: Any
) -> UploadMeterMiddleware:
    """The chunk and tus endpoints on an S3Storage (settings from ``env``, by default the
    environment; ``client``: the boto3 client, by default :func:`s3_client`);
    ``instant_upload`` is off, so every upload sends its bytes."""
    env = env if env is not None else dict(os.environ)
    client = client if client is not None else s3_client(env["S3_ENDPOINT_URL"])
    meter = UploadMeterMiddleware(
        downloads_or_page(client, env["S3_BUCKET"]), SECRET, env["UPLOADMETER_TEST_STORE"]
    )
    storage = S3Storage(
        client,
        bucket=env["S3_BUCKET"],
        prefix="um/",
        spool_dir=env.get("S3_SPOOL"),
        **storage_options,
    )
    on_complete = completion_log(env["UPLOADMETER_TEST_FILES"])
    chunks = ChunkUploads(meter, storage, on_complete=on_complete, instant_upload=None)
    meter.mount("/chunks", chunks)
    tus = {"lock_ttl": float(env.get("S3_TUS_LOCK_TTL", "15")), "lock_wait": 20.0}
    meter.mount("/tus", TusUploads(meter, storage, on_complete=on_complete, **tus))
    return meter


def downloads_or_page(client: Any, bucket: str) -> Any:
    """The app behind the meter: ``GET /s3-download?key=<a blob's key>`` sends the object
    (:func:`uploadmeter.downloads.download` of an :class:`S3Object`), anything else the
    test page."""
    from werkzeug.wrappers import Request

    from uploadmeter.downloads import S3Object, download

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        request = Request(environ)
        key = request.args.get("key", "")
        if request.path == DOWNLOAD and key.startswith("um/blobs/"):
            return download(S3Object(client, bucket, key), environ=environ)(environ, start_response)
        return page(environ, start_response)

    return app
