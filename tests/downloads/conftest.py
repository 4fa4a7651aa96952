"""The real S3-compatible object store of the download tests: the session's Swift
(``swift`` in tests/conftest.py), and a fresh bucket per test."""

from __future__ import annotations

import os
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


@pytest.fixture(scope="session")
def object_store(swift: Any) -> ObjectStore:
    """The session's Swift (tests/conftest.py ``swift``), as these tests sign for it."""
    pytest.importorskip("boto3")
    return ObjectStore(swift.endpoint, "test:tester", "testing", "us-east-1")


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
