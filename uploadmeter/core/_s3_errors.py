"""What an error from an S3 client means, for every feature that talks to object storage.

Resumable uploads into :class:`~uploadmeter.S3Storage` and downloads of
:class:`~uploadmeter.downloads.S3Object` answer the same store trouble the same way, so the
rule is written once, here.  It reads botocore's shapes without importing boto3 (an
optional extra): a ``ClientError`` carries ``response["Error"]["Code"]`` and
``response["ResponseMetadata"]["HTTPStatusCode"]``; connection trouble is named by class.

* ``MISSING``: ``404`` (``NoSuchKey``, ``NoSuchUpload``, ``NoSuchBucket``), or the codes
  ``NoSuchKey`` / ``NoSuchUpload`` / ``NotFound`` -- the object or multipart upload is not
  there;
* ``TEMPORARY``: ``5xx``, ``408``, ``429``, a throttling code, or the connection failing
  (refused, reset, timed out, a body cut mid-stream) -- answered ``503`` + ``Retry-After``;
* ``REFUSED``: another ``4xx`` from the store, or a botocore error of the client's own
  (credentials, parameters) -- the application's configuration;
* ``None``: not an error of the S3 client at all.
"""

from __future__ import annotations

from typing import Literal

MISSING: Literal["missing"] = "missing"
TEMPORARY: Literal["temporary"] = "temporary"
REFUSED: Literal["refused"] = "refused"

_MISSING_CODES = frozenset({"NoSuchKey", "NoSuchUpload", "404", "NotFound"})
_TEMPORARY_CODES = frozenset(
    {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "ServiceUnavailable",
     "InternalError", "RequestTimeTooSkewed"}
)  # fmt: skip
# botocore's connection errors and urllib3's mid-body ones, by class name (no import).
_CONNECTION_ERRORS = frozenset(
    {"HTTPClientError", "ConnectionError", "ProtocolError", "ReadTimeoutError",
     "IncompleteRead", "ResponseStreamingError"}
)  # fmt: skip


def s3_error_kind(exc: BaseException) -> Literal["missing", "temporary", "refused"] | None:
    """The kind of ``exc`` as the module documentation defines them."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):  # botocore's ClientError
        code = str(response.get("Error", {}).get("Code", ""))
        status = int(response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        if code in _MISSING_CODES or status == 404:
            return MISSING
        if code in _TEMPORARY_CODES or status >= 500 or status in (408, 429):
            return TEMPORARY
        return REFUSED
    names = {cls.__name__ for cls in type(exc).__mro__}
    if names & _CONNECTION_ERRORS or isinstance(exc, (ConnectionError, TimeoutError)):
        return TEMPORARY
    if "BotoCoreError" in names:
        return REFUSED
    return None
