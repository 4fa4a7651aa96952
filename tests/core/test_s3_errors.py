"""One rule for what an S3 client's error means (``core._s3_errors``), read with botocore's
real exception classes: uploads into S3 and downloads from it answer the same trouble the
same way (both paths are exercised against a stopped Swift in tests/resumable/test_s3.py and
tests/downloads/test_object_downloads.py)."""

from __future__ import annotations

import pytest

from uploadmeter.core._s3_errors import MISSING, REFUSED, TEMPORARY, s3_error_kind

botocore = pytest.importorskip("botocore.exceptions")


def client_error(code: str, status: int) -> Exception:
    response = {"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}
    return botocore.ClientError(response, "GetObject")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (client_error("NoSuchKey", 404), MISSING),
        (client_error("NoSuchUpload", 404), MISSING),
        (client_error("404", 404), MISSING),  # a HEAD's error has no body: its status
        (client_error("NoSuchBucket", 404), MISSING),
        (client_error("SlowDown", 503), TEMPORARY),
        (client_error("InternalError", 500), TEMPORARY),
        (client_error("RequestTimeout", 400), TEMPORARY),
        (client_error("TooManyRequests", 429), TEMPORARY),
        (client_error("AccessDenied", 403), REFUSED),
        (client_error("InvalidArgument", 400), REFUSED),
        (botocore.EndpointConnectionError(endpoint_url="http://127.0.0.1:1"), TEMPORARY),
        (botocore.ReadTimeoutError(endpoint_url="http://127.0.0.1:1"), TEMPORARY),
        (botocore.ConnectTimeoutError(endpoint_url="http://127.0.0.1:1"), TEMPORARY),
        (ConnectionResetError(), TEMPORARY),
        (botocore.NoCredentialsError(), REFUSED),
        (botocore.ParamValidationError(report="bad"), REFUSED),
        (ValueError("a bug"), None),
    ],
)
def test_each_error_has_one_meaning(exc: Exception, kind: str | None) -> None:
    assert s3_error_kind(exc) == kind
