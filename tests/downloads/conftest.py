"""A real S3-compatible object store for the download tests: OpenStack Swift with its
``s3api`` middleware, started once per test session by tests/support/s3/start_swift.sh
(installs the Debian packages when missing; ≈ 3 s to start once installed)."""

from __future__ import annotations

import os
import random
import socket
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.support.servers import ROOT

SCRIPT = os.path.join(ROOT, "tests", "support", "s3", "start_swift.sh")


@dataclass(frozen=True)
class ObjectStore:
    """Where the running object store answers, and how to sign for it."""

    endpoint_url: str
    access_key: str
    secret_key: str
    region: str

    def client(self, **config: Any) -> Any:
        """A boto3 S3 client for this store (path-style, as Swift needs)."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
            config=Config(s3={"addressing_style": "path"}, **config),
        )


def _free_ports(count: int) -> int:
    """A port ``p`` with ``p .. p+count-1`` all free on 127.0.0.1, below the ephemeral
    range (an outgoing connection could take one of those between check and bind)."""
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(20000, 32000 - count)
        held = []
        try:
            for port in range(base, base + count):
                s = socket.socket()
                held.append(s)
                s.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            for s in held:
                s.close()
        return base
    raise RuntimeError("no run of free ports")


@pytest.fixture(scope="session")
def object_store(tmp_path_factory: Any) -> Iterator[ObjectStore]:
    pytest.importorskip("boto3")
    directory = str(tmp_path_factory.mktemp("swift"))
    port = _free_ports(5)
    started = subprocess.run(
        ["bash", SCRIPT, str(port), directory],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert started.returncode == 0, started.stderr[-3000:]
    env = dict(line.split("=", 1) for line in started.stdout.splitlines() if "=" in line)
    try:
        yield ObjectStore(
            env["S3_ENDPOINT_URL"],
            env["AWS_ACCESS_KEY_ID"],
            env["AWS_SECRET_ACCESS_KEY"],
            env["AWS_DEFAULT_REGION"],
        )
    finally:
        subprocess.run(["bash", SCRIPT, "stop", directory], capture_output=True, check=False)


@pytest.fixture
def bucket(object_store: ObjectStore) -> Iterator[tuple[Any, str]]:
    """``(boto3 client, a new empty bucket)``; the bucket is emptied and removed after."""
    client = object_store.client()
    name = "dl-" + uuid.uuid4().hex[:20]
    client.create_bucket(Bucket=name)
    try:
        yield client, name
    finally:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=name):
            for item in page.get("Contents", []):
                client.delete_object(Bucket=name, Key=item["Key"])
        client.delete_bucket(Bucket=name)
