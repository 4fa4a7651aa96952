"""Objects in an S3-compatible store as download sources, streamed through boto3.

:class:`S3Object` names an object; :func:`~uploadmeter.downloads.download` sends it like
a file -- alone (``Range`` → an S3 ``Range`` GET of exactly the bytes sent, ``ETag`` and
``Last-Modified`` from the object, 304) or inside a zip -- without holding it in memory
or on disk.  The caller brings the boto3 client: uploadmeter never imports boto3 itself.

The object's size and version are read with one ``HEAD`` before the response starts, so a
missing object answers ``404`` and an object store that fails (unreachable, throttled,
5xx) answers ``503`` with ``Retry-After`` (:class:`~uploadmeter.exceptions.ObjectStoreError`)
before any byte is sent.  Every later GET carries ``If-Match`` with that ETag, so an
object overwritten meanwhile is never spliced into the download; a GET that breaks off
is resumed by another from the byte it reached, and when that one fails too, the
response ends early (the client sees a short body, as for any dropped connection).
"""

from __future__ import annotations

import io
import logging
import mimetypes
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from uploadmeter.core._s3_errors import MISSING, REFUSED, s3_error_kind
from uploadmeter.downloads._disposition import content_disposition, safe_filename
from uploadmeter.exceptions import ObjectStoreError, RemoteError, SourceError, SourceNotFound

log = logging.getLogger("uploadmeter")

__all__ = ["ObjectReader", "S3Object", "object_store_error", "open_object"]

# What S3 calls an object stored without a type: the file's name says more.
_GENERIC_TYPES = frozenset({"binary/octet-stream", "application/octet-stream", ""})


@dataclass(frozen=True)
class S3Object:
    """An object in an S3-compatible store, as a download source::

        s3 = boto3.client("s3", endpoint_url="https://s3.example.com")
        return download(S3Object(s3, "reports", "2024/q1.pdf"), environ=request.environ)
        return download([S3Object(s3, "photos", k) for k in keys], "photos.zip", ...)

    :param client: a boto3 S3 client (``boto3.client("s3", ...)``).
    :param bucket: the bucket.
    :param key: the object's key; its last segment names the file unless ``name`` does.
    :param name: the file's name in the download (``"sub/name.txt"`` inside zips).
    """

    client: Any
    bucket: str
    key: str
    name: str | None = None

    @property
    def filename(self) -> str:
        """The name the object is downloaded under."""
        return self.name or safe_filename(self.key.rsplit("/", 1)[-1], "download")

    def presigned_url(
        self,
        *,
        expires_in: int = 60,
        filename: str | None = None,
        as_attachment: bool = True,
        method: str = "GET",
    ) -> str:
        """A presigned URL fetching the object straight from the store, for ``expires_in``
        seconds, which names the file ``filename`` (``Content-Disposition``).  ``method``
        ``HEAD`` signs a HEAD request (a GET URL does not answer one).  Signing is local:
        no request goes to the store.

        :raises SourceError: boto3 could not sign (e.g. no credentials): see
            ``object_store_error()``.
        """
        params = {
            "Bucket": self.bucket,
            "Key": self.key,
            "ResponseContentDisposition": content_disposition(
                filename or self.filename, as_attachment=as_attachment
            ),
        }
        if method.upper() == "HEAD":
            del params["ResponseContentDisposition"]  # not a HeadObject parameter
            operation = "head_object"
        else:
            operation = "get_object"
        try:
            url: str = self.client.generate_presigned_url(
                operation, Params=params, ExpiresIn=expires_in
            )
        except Exception as exc:
            raise object_store_error(exc, self) from exc
        return url


@dataclass(frozen=True)
class ObjectHead:
    """What one ``HEAD`` says about an object."""

    size: int
    etag: str | None
    last_modified: datetime | None
    content_type: str | None


def head_object(obj: S3Object) -> ObjectHead:
    """The object's size, ETag, date and type; raises :class:`SourceError` (see
    ``object_store_error()``)."""
    try:
        head = obj.client.head_object(Bucket=obj.bucket, Key=obj.key)
    except Exception as exc:
        raise object_store_error(exc, obj) from exc
    ctype = str(head.get("ContentType") or "")
    return ObjectHead(
        size=int(head["ContentLength"]),
        etag=head.get("ETag") or None,
        last_modified=head.get("LastModified"),
        content_type=None if ctype.lower() in _GENERIC_TYPES else ctype,
    )


def object_store_error(exc: BaseException, obj: S3Object) -> SourceError:
    """The download error for what the store (or boto3 on its way) raised, by the one rule
    of ``uploadmeter.core._s3_errors``: a missing key or bucket is ``404``; a refusal
    (``403``, a bad request: the application's configuration) ``502``; temporary
    trouble -- unreachable, throttled, ``5xx``, timeouts -- ``503`` + ``Retry-After``.
    Anything that is no store error is re-raised."""
    kind = s3_error_kind(exc)
    if kind is None:
        raise exc
    if kind == MISSING:
        return SourceNotFound(f"{obj.filename} was not found.")
    if kind == REFUSED:
        log.warning("uploadmeter: the object store refused %s/%s: %s", obj.bucket, obj.key, exc)
        return RemoteError(f"The file store refused {obj.filename}.")
    log.warning("uploadmeter: the object store failed for %s/%s: %s", obj.bucket, obj.key, exc)
    return ObjectStoreError("The file store is unavailable right now; try again shortly.")


def guess_type(obj: S3Object, head: ObjectHead) -> str | None:
    """The object's stored type, unless generic; else ``None`` (the name decides)."""
    return head.content_type or mimetypes.guess_type(obj.filename)[0]


def open_object(obj: S3Object, head: ObjectHead) -> io.BufferedReader:
    """The object as a buffered binary file (its ``raw`` is an :class:`ObjectReader`)."""
    return io.BufferedReader(ObjectReader(obj, head), _BUFFER)


_BUFFER = 256 * 1024  # bytes per read from the store's response


class ObjectReader(io.RawIOBase):
    """An S3 object as a seekable binary file, read with ``Range`` GETs.

    Nothing is requested until the first read; a read fetches from the position to the
    end, or to :meth:`limit` -- so a ``Range`` request costs one GET of exactly its bytes.
    A seek elsewhere drops the open GET and the next read starts another one there.
    """

    def __init__(self, obj: S3Object, head: ObjectHead) -> None:
        super().__init__()
        self.obj = obj
        self.size = head.size
        self.etag = head.etag
        self._pos = 0
        self._stop = head.size
        self._body: Any = None

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.size}[whence]
        position = base + offset
        if position < 0:
            raise ValueError("negative seek position")
        if position != self._pos:
            self._drop()
        self._pos = position
        return position

    def limit(self, stop: int) -> None:
        """Read nothing at or past ``stop`` (the end of the range being sent)."""
        self._stop = min(stop, self.size)
        self._drop()

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        want = min(len(view), self._stop - self._pos)
        if want <= 0:
            return 0
        for attempt in (1, 2):  # a GET that broke off is resumed where it stopped
            try:
                if self._body is None:
                    self._body = self._get(self._pos, self._stop)
                data = self._body.read(want)
                if not data:
                    raise EOFError("the object store ended the object early")
                break
            except Exception as exc:
                self._drop()
                if attempt == 2:
                    log.warning(
                        "uploadmeter: reading %s/%s at %d failed: %s",
                        self.obj.bucket,
                        self.obj.key,
                        self._pos,
                        exc,
                    )
                    raise OSError(
                        f"reading {self.obj.filename} from the file store failed"
                    ) from exc
        view[: len(data)] = data
        self._pos += len(data)
        return len(data)

    def _get(self, start: int, stop: int) -> Any:
        params = {
            "Bucket": self.obj.bucket,
            "Key": self.obj.key,
            "Range": f"bytes={start}-{stop - 1}",
        }
        if self.etag:
            params["IfMatch"] = self.etag  # the object that was HEADed, or nothing
        return self.obj.client.get_object(**params)["Body"]

    def _drop(self) -> None:
        body, self._body = self._body, None
        if body is not None:
            try:
                body.close()
            except Exception:  # closing a broken stream: nothing more to lose
                log.debug("uploadmeter: closing an object stream failed", exc_info=True)

    def close(self) -> None:
        self._drop()
        super().close()
