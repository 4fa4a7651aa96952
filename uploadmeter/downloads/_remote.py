"""Fetching remote sources without becoming an SSRF proxy.

:class:`RemoteFetcher` fetches ``http(s)`` URLs for downloads, and only:

* from hosts the application lists (``allowed_hosts``; ``.example.com`` also allows its
  subdomains; ``*`` any host);
* to addresses that are public: the host name is resolved once, every address it resolves to
  is checked (loopback, private, link-local, multicast, reserved, unspecified, and IPv4
  carried in IPv6 -- mapped, compatible, translated, 6to4, Teredo, NAT64 -- are refused
  unless a network is listed in ``allow_networks``), and the connection goes to the checked
  address, so a second DNS answer cannot swap in an internal one (DNS rebinding);
* following redirects itself, checking each hop the same way;
* within a connect timeout, a per-read timeout, a total deadline and a size cap.

Bodies are spooled (memory up to 1 MiB, then an anonymous temp file) or kept in an optional
:class:`RemoteCache` directory.  :meth:`RemoteFetcher.fetch_all` fetches with a bounded pool.

urllib3 does the HTTP: it is well kept, already installed with ``requests``, and unlike
``requests`` it lets us connect to a checked IP while sending the original ``Host`` and TLS
server name, and ignores proxy environment variables (a proxy would bypass the IP checks).
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import json
import os
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from typing import IO, Any
from urllib.parse import urljoin, urlsplit

from uploadmeter.exceptions import (
    AddressNotAllowed,
    HostNotAllowed,
    MissingDependency,
    RemoteError,
    RemoteTooLarge,
)

try:
    import urllib3
    from urllib3.exceptions import HTTPError as Urllib3Error
    from urllib3.exceptions import NewConnectionError, ProtocolError
    from urllib3.exceptions import TimeoutError as Urllib3Timeout
except ImportError as exc:
    raise MissingDependency("uploadmeter's remote sources", "urllib3", "downloads") from exc
from werkzeug.http import parse_options_header

from uploadmeter.downloads._disposition import safe_filename

__all__ = ["Fetched", "RemoteCache", "RemoteFetcher"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_CHUNK = 64 * 1024
_SPOOL_MEMORY = 1024 * 1024
# NAT64 (RFC 6052) reaches the IPv4 address in the last 32 bits: judged by that address.
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
# Not public, although Python's is_global may say so: the deprecated IPv4-compatible and
# site-local ranges, SIIT-translated IPv4, and local-use NAT64 (RFC 8215).
_NOT_GLOBAL = tuple(
    ipaddress.IPv6Network(net)
    for net in ("::/96", "fec0::/10", "::ffff:0:0:0/96", "64:ff9b:1::/48")
)


@dataclass
class Fetched:
    """A fetched body, rewound: ``file`` is read by the download and closed after."""

    url: str
    file: IO[bytes]
    size: int
    content_type: str | None = None
    filename: str | None = None  # from the remote Content-Disposition, made safe
    from_cache: bool = False

    def close(self) -> None:
        self.file.close()


class RemoteCache:
    """Fetched bodies kept in a directory, keyed by the URL's SHA-256, for ``max_age`` seconds.

    Files are written under a temporary name and renamed into place, so workers sharing the
    directory never read half a body.
    """

    def __init__(self, directory: str | os.PathLike[str], max_age: float = 3600.0) -> None:
        self.directory = os.fspath(directory)
        self.max_age = max_age
        os.makedirs(self.directory, exist_ok=True)

    def _paths(self, url: str) -> tuple[str, str]:
        key = hashlib.sha256(url.encode("utf-8")).hexdigest()
        base = os.path.join(self.directory, key)
        return base + ".body", base + ".json"

    def get(self, url: str) -> Fetched | None:
        body, meta = self._paths(url)
        try:
            if time.time() - os.stat(meta).st_mtime > self.max_age:
                return None
            with open(meta, encoding="utf-8") as fp:
                info = json.load(fp)
            file = open(body, "rb")  # noqa: SIM115 - handed to the caller
        except (OSError, ValueError):
            return None
        size = os.fstat(file.fileno()).st_size
        if size != info.get("size"):
            file.close()  # the body was replaced under us; fetch again
            return None
        return Fetched(url, file, size, info.get("content_type"), info.get("filename"), True)

    def new_file(self) -> IO[bytes]:
        return tempfile.NamedTemporaryFile(dir=self.directory, suffix=".part", delete=False)

    def store(self, fetched: Fetched, part: IO[bytes]) -> None:
        """Move a completely fetched ``part`` file into place."""
        body, meta = self._paths(fetched.url)
        os.replace(part.name, body)
        info = {
            "url": fetched.url,
            "size": fetched.size,
            "content_type": fetched.content_type,
            "filename": fetched.filename,
        }
        tmp = meta + f".{os.getpid()}.{threading.get_ident()}"
        with open(tmp, "w", encoding="utf-8") as fp:
            json.dump(info, fp)
        os.replace(tmp, meta)

    def purge(self) -> int:
        """Delete expired entries, and what interrupted writes left behind; returns how many
        bodies went."""
        removed = 0
        now = time.time()
        for entry in os.scandir(self.directory):
            stem, ext = os.path.splitext(entry.path)
            try:
                if now - entry.stat().st_mtime <= self.max_age:
                    continue
                if ext == ".body" and os.path.exists(stem + ".json"):
                    continue  # goes with its meta file
                os.unlink(entry.path)  # expired meta, or a leftover .part, temp or body
                if ext == ".json":
                    os.unlink(stem + ".body")
                    removed += 1
            except OSError:
                continue
        return removed


class RemoteFetcher:
    """Fetches allowed URLs for downloads.

    ::

        fetcher = RemoteFetcher(allowed_hosts=["cdn.example.com", ".images.example.org"],
                                cache=RemoteCache("/var/cache/app-downloads", max_age=600))

    :param allowed_hosts: host names (lowercase) that may be fetched; ``.example.com``
        matches the domain and its subdomains; ``*`` matches any host (addresses are still
        checked).  Empty: nothing may be fetched.
    :param allow_networks: networks (``"127.0.0.1/32"``, ``"10.0.0.0/8"``) that may be
        reached although they are not public.  Tests list loopback here.
    :param connect_timeout: seconds per connection attempt.
    :param read_timeout: seconds per read.
    :param total_timeout: seconds for a whole fetch, redirects included (a server dripping
        one byte per ``read_timeout`` cannot hold a worker forever).
    :param max_size: bytes; larger bodies fail.
    :param max_workers: concurrent fetches per download.
    :param max_redirects: redirects followed, each checked like the first URL.
    :param cache: keep bodies in a :class:`RemoteCache`.
    """

    def __init__(
        self,
        allowed_hosts: Iterable[str],
        *,
        allow_networks: Iterable[str] = (),
        connect_timeout: float = 5.0,
        read_timeout: float = 15.0,
        total_timeout: float = 120.0,
        max_size: int = 100 * 1024 * 1024,
        max_workers: int = 4,
        max_redirects: int = 3,
        cache: RemoteCache | None = None,
        user_agent: str = "uploadmeter",
        getaddrinfo: Callable[..., Sequence[Any]] = socket.getaddrinfo,
    ) -> None:
        self.allowed_hosts = frozenset(h.strip().lower().rstrip(".") for h in allowed_hosts)
        self.allow_networks = tuple(ipaddress.ip_network(n, strict=False) for n in allow_networks)
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.total_timeout = total_timeout
        self.max_size = max_size
        self.max_workers = max(1, max_workers)
        self.max_redirects = max_redirects
        self.cache = cache
        self.user_agent = user_agent
        self._getaddrinfo = getaddrinfo

    # -- checks --------------------------------------------------------------------------

    def check_url(self, url: str) -> tuple[str, str, int]:
        """``(scheme, host, port)`` of an allowed URL.

        :raises HostNotAllowed: not http(s), credentials in the URL, or a host not listed.
        """
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as exc:
            raise HostNotAllowed(f"Not a valid URL: {_public(url)}") from exc
        scheme = parts.scheme.lower()
        host = (parts.hostname or "").rstrip(".")
        if scheme not in ("http", "https") or not host:
            raise HostNotAllowed(f"Only http and https URLs can be fetched: {_public(url)}")
        if parts.username is not None or parts.password is not None:
            raise HostNotAllowed(f"URLs with credentials are not fetched: {_public(url)}")
        if not self.host_allowed(host):
            raise HostNotAllowed(f"The host {host} is not allowed.")
        return scheme, host, port or (443 if scheme == "https" else 80)

    def host_allowed(self, host: str) -> bool:
        """Whether ``host`` is allowed (``.example.com``: the domain and its subdomains)."""
        host = host.lower().rstrip(".")
        if "*" in self.allowed_hosts or host in self.allowed_hosts:
            return True
        return any(
            pattern.startswith(".") and (host == pattern[1:] or host.endswith(pattern))
            for pattern in self.allowed_hosts
        )

    def address_allowed(self, address: IPAddress) -> bool:
        """Whether ``address`` is public or in ``allow_networks`` (IPv4 in IPv6 checked too)."""
        if any(address in net for net in self.allow_networks):
            return True
        if isinstance(address, ipaddress.IPv6Address):
            # IPv4 carried inside IPv6 must pass the IPv4 checks (::ffff:127.0.0.1 is loopback).
            embedded = address.ipv4_mapped or address.sixtofour
            if embedded is None and address.teredo is not None:
                embedded = address.teredo[1]
            if embedded is None and address in _NAT64:
                embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
            if embedded is not None:
                return self.address_allowed(embedded)
            if any(address in net for net in _NOT_GLOBAL):
                return False
        return address.is_global and not address.is_multicast

    def resolve(self, host: str, port: int) -> str:
        """The checked address to connect to.

        :raises AddressNotAllowed: if *any* address of the host is not allowed; a name that
            resolves to a public and a private address is refused outright.
        """
        try:
            infos = self._getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError) as exc:
            raise RemoteError(f"Cannot resolve {host}: {exc}") from exc
        addresses = []
        for info in infos:
            text = str(info[4][0]).split("%", 1)[0]  # drop an IPv6 zone id
            addresses.append(ipaddress.ip_address(text))
        if not addresses:
            raise RemoteError(f"Cannot resolve {host}.")
        for address in addresses:
            if not self.address_allowed(address):
                raise AddressNotAllowed(
                    f"The host {host} resolves to {address}, which is not a public address."
                )
        return str(addresses[0])

    # -- fetching ------------------------------------------------------------------------

    def fetch(self, url: str) -> Fetched:
        """Fetch one URL (or take it from the cache).

        :raises RemoteError: refused, unreachable, timed out, not 200, or too large.
        """
        self.check_url(url)
        cached = self.cache.get(url) if self.cache is not None else None
        if cached is not None:
            return cached
        deadline = time.monotonic() + self.total_timeout
        current = url
        for _ in range(self.max_redirects + 1):
            with self._get(current, deadline) as response:
                location = response.headers.get("Location")
                if response.status in _REDIRECTS and location:
                    current = urljoin(current, location)
                    continue
                if response.status != 200:
                    reason = f"{response.status} {response.reason or ''}".rstrip()
                    raise RemoteError(f"{_public(current)} answered {reason}.")
                return self._read_body(url, response, deadline)
        raise RemoteError(f"Too many redirects fetching {_public(url)}")

    def fetch_all(
        self,
        urls: Sequence[str],
        on_done: Callable[[int, Fetched | RemoteError], bool | None] | None = None,
    ) -> list[Fetched | RemoteError]:
        """Fetch ``urls`` concurrently, at most ``max_workers`` at once, results in order.

        ``on_done(index, result)`` is called in the calling thread as each one finishes;
        when it returns true, fetches that have not started are skipped (they come back as
        :class:`RemoteError`).  Failures come back as :class:`RemoteError` values, never
        raised.
        """
        skipped = RemoteError("Not fetched: the download stopped first.")
        results: list[Fetched | RemoteError] = [skipped] * len(urls)
        if not urls:
            return results
        workers = min(self.max_workers, len(urls))
        with ThreadPoolExecutor(workers, thread_name_prefix="uploadmeter-fetch") as pool:
            futures = {pool.submit(self._fetch_quietly, u): i for i, u in enumerate(urls)}
            for future in as_completed(futures):
                if future.cancelled():
                    continue
                index = futures[future]
                results[index] = future.result()
                if on_done is not None and on_done(index, results[index]):
                    pool.shutdown(wait=False, cancel_futures=True)
        return results

    def _fetch_quietly(self, url: str) -> Fetched | RemoteError:
        try:
            return self.fetch(url)
        except RemoteError as exc:
            return exc
        except Exception as exc:  # a worker thread must report, never die silently
            return RemoteError(f"Fetching {_public(url)} failed: {type(exc).__name__}")

    @contextlib.contextmanager
    def _get(self, url: str, deadline: float) -> Iterator[urllib3.BaseHTTPResponse]:
        """GET ``url`` from the checked address of its host, without following redirects."""
        scheme, host, port = self.check_url(url)
        address = self.resolve(host, port)
        parts = urlsplit(url)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        host_header = host if ":" not in host else f"[{host}]"
        if port != (443 if scheme == "https" else 80):
            host_header += f":{port}"
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise RemoteError(f"Fetching {_public(url)} took too long.")
        timeout = urllib3.Timeout(
            connect=min(self.connect_timeout, remaining), read=self.read_timeout
        )
        pool: urllib3.HTTPConnectionPool
        if scheme == "https":
            # The TLS name and certificate check stay with the host name, not the address.
            pool = urllib3.HTTPSConnectionPool(
                address,
                port,
                timeout=timeout,
                retries=False,
                maxsize=1,
                server_hostname=host,
                assert_hostname=host,
                cert_reqs="CERT_REQUIRED",
            )
        else:
            pool = urllib3.HTTPConnectionPool(address, port, timeout=timeout, retries=False)
        headers = {
            "Host": host_header,
            "User-Agent": self.user_agent,
            "Accept": "*/*",
            "Accept-Encoding": "identity",
        }
        with pool:
            try:
                response = self._open(pool, target, headers)
            except NewConnectionError as exc:  # a subclass of the connect timeout, but not one
                raise RemoteError(f"Cannot connect to {_public(url)}.") from exc
            except Urllib3Timeout as exc:
                raise RemoteError(f"{_public(url)} timed out.") from exc
            except (Urllib3Error, OSError) as exc:
                raise RemoteError(f"Cannot fetch {_public(url)}: {_reason(exc)}") from exc
            try:
                yield response
            finally:
                response.close()

    @staticmethod
    def _open(
        pool: urllib3.HTTPConnectionPool, target: str, headers: dict[str, str]
    ) -> urllib3.BaseHTTPResponse:
        """Send the GET; once more if the connection dropped before any answer came.

        A server may close an idle or overloaded connection just as the request goes out
        (browsers resend a GET then too).  urllib3's own ``Retry`` is not used: it would
        also repeat read timeouts, doubling how long a dripping server holds a worker.
        """

        def send() -> urllib3.BaseHTTPResponse:
            return pool.urlopen(
                "GET",
                target,
                headers=headers,
                redirect=False,
                retries=False,
                preload_content=False,
                assert_same_host=False,
            )

        try:
            return send()
        except ProtocolError as exc:  # ("Connection aborted.", the socket's error)
            cause = exc.args[-1] if exc.args else None
            if not isinstance(cause, OSError) or isinstance(cause, TimeoutError):
                raise
        return send()

    def _read_body(self, url: str, response: urllib3.BaseHTTPResponse, deadline: float) -> Fetched:
        declared = response.headers.get("Content-Length")
        if declared and declared.isdigit() and int(declared) > self.max_size:
            raise RemoteTooLarge(f"{_public(url)} is larger than {self.max_size} bytes.")
        part: IO[bytes]
        if self.cache is not None:
            part = self.cache.new_file()
        else:
            part = tempfile.SpooledTemporaryFile(_SPOOL_MEMORY)  # noqa: SIM115 - returned
        try:
            size = self._copy(url, response, part, deadline)
        except BaseException:
            part.close()
            if self.cache is not None:
                with contextlib.suppress(OSError):
                    os.unlink(part.name)
            raise
        filename = None
        disposition = response.headers.get("Content-Disposition")
        if disposition:
            raw = parse_options_header(disposition)[1].get("filename")  # filename* decoded
            filename = safe_filename(raw, "") or None if raw else None
        fetched = Fetched(url, part, size, response.headers.get("Content-Type"), filename)
        if self.cache is not None:
            part.flush()
            self.cache.store(fetched, part)
        part.seek(0)
        return fetched

    def _copy(
        self, url: str, response: urllib3.BaseHTTPResponse, part: IO[bytes], deadline: float
    ) -> int:
        size = 0
        try:
            # read1: one socket read at a time, so the deadline is checked between reads;
            # read(n) would wait for n bytes however slowly they drip in.
            while chunk := response.read1(_CHUNK):
                size += len(chunk)
                if size > self.max_size:
                    raise RemoteTooLarge(f"{_public(url)} is larger than {self.max_size} bytes.")
                if time.monotonic() > deadline:
                    raise RemoteError(f"Fetching {_public(url)} took too long.")
                part.write(chunk)
        except Urllib3Timeout as exc:
            raise RemoteError(f"{_public(url)} timed out after {size} bytes.") from exc
        except (Urllib3Error, OSError) as exc:
            raise RemoteError(f"Cannot fetch {_public(url)}: {_reason(exc)}") from exc
        return size


def _public(url: str) -> str:
    """A URL as shown in messages: no query string (it may carry credentials)."""
    try:
        parts = urlsplit(url)
        return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path}"
    except ValueError:
        return "the URL"


def _reason(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None)
    if reason is None and isinstance(exc, ProtocolError) and exc.args:
        # ("Connection aborted.", RemoteDisconnected(...)): say which drop it was.
        return f"connection dropped ({type(exc.args[-1]).__name__})"
    return str(reason or exc.__class__.__name__)
