"""Two app instances with no shared disk, behind a real nginx (round-robin upstream),
sharing Redis and a real S3 server (Swift's s3api): a chunked upload whose chunks
alternate between the instances, a tus upload whose PATCHes alternate, and a tus upload
resumed after the instance receiving it is killed mid-body, and a download of each stored
file through either instance (the downloads API on an S3Object) -- exact SHA-256 each
time."""

from __future__ import annotations

import hashlib
import http.client
import os
import signal
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any
from urllib.parse import urlencode

import pytest

from tests.integration.test_nginx import run_nginx
from tests.support.chunked_app import read_completions
from tests.support.chunked_support import CHUNKS, ChunkClient, ChunkedFile
from tests.support.s3 import DOWNLOAD, Swift
from tests.support.servers import Gunicorn, gunicorn_process, wait_until

MiB = 1024 * 1024
V = {"Tus-Resumable": "1.0.0"}
TUS = "/uploadmeter/tus/"
OCTET = {**V, "Content-Type": "application/offset+octet-stream"}

# The README's streaming proxy settings, with a two-server upstream; every answer says
# which instance gave it.
CONFIG = """
upstream app {
    server 127.0.0.1:8000;
    server 127.0.0.1:%d;
}
server {
    listen 80;
    client_max_body_size 0;
    location / {
        proxy_pass http://app;
        proxy_http_version 1.1;
        proxy_request_buffering off;
        proxy_buffering off;
        proxy_set_header Host $http_host;
        add_header X-Upstream $upstream_addr always;
    }
}
"""


class Cluster:
    def __init__(self, url: str, instances: list[Gunicorn], spools: list[str], logs: str):
        self.url, self.instances, self.spools, self.log_dir = url, instances, spools, logs

    def client(self) -> ChunkClient:
        c = ChunkClient(self.url)
        c.start()
        return c

    def kill(self, index: int) -> None:
        """SIGKILL an instance: its master and every worker."""
        server = self.instances[index]
        for pid in [*server.worker_pids(), server.proc.pid]:
            os.kill(pid, signal.SIGKILL)
        server.proc.wait(10)


@pytest.fixture
def cluster(swift: Swift, redis_url: str, tmp_path: Any) -> Iterator[Cluster]:
    bucket = swift.new_bucket()
    with ExitStack() as stack:
        instances, spools = [], []
        for n in range(2):
            spool = tmp_path / f"spool{n}"  # each instance's own local temp dir
            spool.mkdir()
            env = {
                "UPLOADMETER_TEST_STORE": redis_url,
                "S3_ENDPOINT_URL": swift.endpoint,
                "S3_BUCKET": bucket,
                "S3_SPOOL": str(spool),
                "UPLOADMETER_TEST_FILES": str(tmp_path),
                "S3_TUS_LOCK_TTL": "3",
            }
            server = stack.enter_context(
                gunicorn_process("tests.support.s3:make_s3_app()", workers=2, env=env)
            )
            instances.append(server)
            spools.append(str(spool))
        nginx = stack.enter_context(
            run_nginx(CONFIG % instances[1].port, instances[0].url, tmp_path / "nginx")
        )
        yield Cluster(nginx.url, instances, spools, str(tmp_path))


def assert_downloads_through_each_instance(cluster: Cluster, done: dict[str, Any]) -> None:
    """The stored object, downloaded from each instance directly: exact bytes."""
    key = done["path"].split("/", 3)[3]  # s3://<bucket>/<key>
    for server in cluster.instances:
        url = f"{server.url}{DOWNLOAD}?{urlencode({'key': key})}"
        with urllib.request.urlopen(url, timeout=30) as response:
            assert response.status == 200
            h = hashlib.sha256()
            while block := response.read(MiB):
                h.update(block)
        assert h.hexdigest() == done["sha256"]
        assert int(response.headers["Content-Length"]) == done["size"]


def _retrying(send: Any) -> tuple[int, dict[str, str], bytes]:
    """Send until the answer is not a temporary one (as the clients do)."""
    deadline = time.monotonic() + 30
    while True:
        status, headers, body = send()
        if status not in (502, 503) or time.monotonic() > deadline:
            return status, headers, body
        time.sleep(float(headers.get("retry-after", "0.2")) / 10)


def test_chunks_alternating_between_two_instances_make_one_exact_file(cluster: Cluster) -> None:
    f = ChunkedFile.random(14 * MiB + 777, MiB)
    c = cluster.client()
    upstreams = set()
    for n in range(1, f.total_chunks + 1):
        status, headers, body = c.request(
            "POST",
            CHUNKS + "?" + urlencode(f.params(n)),
            f.piece(n),
            {"Content-Type": "application/octet-stream"},
        )
        assert status == 200, body
        upstreams.add(headers["x-upstream"])
    assert len(upstreams) == 2  # both instances took chunks
    (done,) = read_completions(cluster.log_dir)
    assert done["sha256"] == f.sha256 and done["size"] == len(f.data)
    assert_downloads_through_each_instance(cluster, done)


def test_tus_patches_alternating_between_two_instances(cluster: Cluster) -> None:
    data = os.urandom(19 * MiB + 5)
    c = cluster.client()
    status, h, _ = c.request("POST", TUS, b"", {**V, "Upload-Length": str(len(data))})
    assert status == 201
    url = h["location"]
    offset, upstreams = 0, set()
    while offset < len(data):
        status, h, body = c.request(
            "PATCH", url, data[offset : offset + 3 * MiB], {**OCTET, "Upload-Offset": str(offset)}
        )
        assert status == 204, body
        upstreams.add(h["x-upstream"])
        offset = int(h["upload-offset"])
    assert len(upstreams) == 2
    (done,) = read_completions(cluster.log_dir)
    assert done["sha256"] == hashlib.sha256(data).hexdigest()
    assert_downloads_through_each_instance(cluster, done)


def test_a_tus_upload_resumes_after_its_instance_is_killed_mid_body(cluster: Cluster) -> None:
    data = os.urandom(20 * MiB)
    c = cluster.client()
    status, h, _ = c.request("POST", TUS, b"", {**V, "Upload-Length": str(len(data))})
    url = h["location"]
    # A PATCH of the whole file, of which only 12 MiB are sent (to the first instance, past
    # nginx): the instance stores one 8 MiB part and holds the rest, then dies.
    receiving = 0
    conn = http.client.HTTPConnection("127.0.0.1", cluster.instances[receiving].port, timeout=30)
    conn.putrequest("PATCH", url)
    for name, value in {**OCTET, "Upload-Offset": "0", "Content-Length": str(len(data))}.items():
        conn.putheader(name, value)
    conn.endheaders()
    conn.send(data[: 12 * MiB])

    def head_offset() -> int:
        status, h, _ = _retrying(lambda: c.request("HEAD", url, None, V))
        assert status == 200
        return int(h["upload-offset"])

    wait_until(lambda: head_offset() == 8 * MiB, timeout=30)
    cluster.kill(receiving)
    conn.close()
    # The survivor answers: the offset is what S3 kept, and the upload resumes from there.
    offset = head_offset()
    assert offset == 8 * MiB
    status, h, body = _retrying(
        lambda: c.request("PATCH", url, data[offset:], {**OCTET, "Upload-Offset": str(offset)})
    )
    assert status == 204, body
    assert h["upload-offset"] == str(len(data))
    (done,) = read_completions(cluster.log_dir)
    assert done["sha256"] == hashlib.sha256(data).hexdigest()


def test_a_chunked_upload_resumes_after_one_instance_is_killed(cluster: Cluster) -> None:
    f = ChunkedFile.random(12 * MiB + 3, MiB)
    c = cluster.client()

    def send(n: int) -> tuple[int, dict[str, str], bytes]:
        return c.request(
            "POST",
            CHUNKS + "?" + urlencode(f.params(n)),
            f.piece(n),
            {"Content-Type": "application/octet-stream"},
        )

    for n in range(1, 7):  # alternating, half the file
        status, _, body = send(n)
        assert status == 200, body
    cluster.kill(1)
    # As a reloaded page does: ask what is stored, send the rest (through the survivor).
    status, test = c.test(f.params())
    assert status == 200 and test is not None and test["uploaded"] == [1, 2, 3, 4, 5, 6]
    for n in range(7, f.total_chunks + 1):
        status, _, body = _retrying(lambda n=n: send(n))  # type: ignore[misc]
        assert status == 200, body
    (done,) = read_completions(cluster.log_dir)
    assert done["sha256"] == f.sha256
