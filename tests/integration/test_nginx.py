"""The documented nginx config (examples/nginx.conf, in docs/deployment.rst), run in
Debian's nginx in front of ``gunicorn -w 3``.

The config is read from the file the docs include, so the documented block is
the tested one.  Through it a throttled form upload shows its progress, a tus upload whose
connection dies midway resumes from the stored offset, and chunk POSTs reach the app without
nginx spooling them.  Negative controls prove each part of the block matters: without its
``proxy_request_buffering off`` lines the form upload shows no progress until its last
byte, and without the two ``/uploadmeter/`` locations (only ``location = /upload``
streaming, as before issue 10) a tus resume restarts from byte 0 and chunks are spooled.
A tracked download read slowly never reads ``done`` ahead of the client (the app's
``X-Accel-Buffering: no``); with nginx ignoring that header it reads ``done`` at once.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from tusclient import client as tus_client
from tusclient.exceptions import TusCommunicationError, TusUploadFailed
from tusclient.storage.filestorage import FileStorage

from tests.integration.test_e2e import (
    BODY,
    CTYPE,
    PIECE,
    check_progress,
    check_saved,
    throttled_upload,
)
from tests.support.chunked_app import read_completions
from tests.support.chunked_support import ChunkClient, ChunkedFile
from tests.support.servers import (
    ROOT,
    Client,
    RawUpload,
    free_port,
    new_upload_id,
    run_gunicorn,
    tcp_buffer_max,
    wait_for_port,
    wait_until,
)

pytestmark = [pytest.mark.gunicorn, pytest.mark.nginx]

KB = 1024
TUS = "/uploadmeter/tus/"
STREAMING = "proxy_request_buffering off;"
BUFFERED = "a client request body is buffered to a temporary file"  # nginx's own warning
# A location block for one of uploadmeter's own routes, up to its closing line.
UPLOADMETER_LOCATION = re.compile(r"\n[ \t]*location\s+/uploadmeter/\S*\s*\{.*?\n[ \t]*\}", re.S)


def documented_config() -> str:
    """``examples/nginx.conf``, the block docs/deployment.rst shows (``literalinclude``)."""
    with open(os.path.join(ROOT, "examples", "nginx.conf"), encoding="utf-8") as f:
        return f.read()


def without_request_streaming(config: str) -> str:
    """nginx's defaults: every body buffered before the app sees it."""
    assert config.count(STREAMING) == 3, config
    return config.replace(STREAMING, "")


def streaming_only_the_form_route(config: str) -> str:
    """The config before issue 10: only ``location = /upload`` streams; tus and chunk
    requests fall through to ``location /``, which buffers."""
    trimmed, removed = UPLOADMETER_LOCATION.subn("", config)
    assert removed == 2, config
    assert "location = /upload" in trimmed and "/uploadmeter/" not in trimmed
    return trimmed


# The documented block, and its negative control: does it stream uploadmeter's own routes?
CONFIGS = [
    pytest.param(documented_config, True, id="documented-config"),
    pytest.param(
        lambda: streaming_only_the_form_route(documented_config()),
        False,
        id="negative-control-only-upload-streams",
    ),
]


def nginx_binary() -> str:
    binary = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
    if binary is None:
        raise RuntimeError("nginx is not installed (.ci/run installs Debian's nginx)")
    return binary


class Nginx:
    """A foreground nginx (one process: ``master_process off``) on a loopback port."""

    def __init__(self, proc: subprocess.Popen[Any], port: int, temp: str) -> None:
        self.proc = proc
        self.url = f"http://127.0.0.1:{port}"
        self.body_temp = temp

    def log(self) -> str:
        with open(os.path.join(os.path.dirname(self.body_temp), "error.log")) as f:
            return f.read()

    def buffered_body_bytes(self) -> int:
        """Bytes of request bodies nginx holds in its (unlinked) client-body temp files."""
        fd_dir = f"/proc/{self.proc.pid}/fd"
        total = 0
        for fd in os.listdir(fd_dir):
            with contextlib.suppress(OSError):
                if os.readlink(f"{fd_dir}/{fd}").startswith(self.body_temp):
                    total += os.stat(f"{fd_dir}/{fd}").st_size
        return total


@contextlib.contextmanager
def run_nginx(server_config: str, upstream: str, directory: Any) -> Iterator[Nginx]:
    """Run ``server_config`` (the documented block) with the upstream and listen port
    replaced; pid, logs and temp files stay in ``directory``, /etc/nginx is not read."""
    port = free_port()
    upstream_port = int(upstream.rsplit(":", 1)[1])
    config = server_config
    for documented, tested in [
        ("server 127.0.0.1:8000;", f"server 127.0.0.1:{upstream_port};"),
        ("listen 80;", f"listen 127.0.0.1:{port};"),
    ]:
        assert config.count(documented) == 1, (documented, config)
        config = config.replace(documented, tested)
    directory.mkdir()
    temp = directory / "client_body"
    conf = directory / "nginx.conf"
    conf.write_text(
        f"""
daemon off;
master_process off;
worker_processes 1;
pid {directory}/nginx.pid;
error_log {directory}/error.log info;
events {{ worker_connections 64; }}
http {{
    access_log {directory}/access.log;
    client_body_temp_path {temp};
    proxy_temp_path {directory}/proxy;
    fastcgi_temp_path {directory}/fastcgi;
    uwsgi_temp_path {directory}/uwsgi;
    scgi_temp_path {directory}/scgi;
{config}
}}
"""
    )
    log = directory / "error.log"
    proc = subprocess.Popen(
        [nginx_binary(), "-p", str(directory), "-c", str(conf), "-e", str(log)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    try:
        try:
            wait_for_port(port, proc=proc)
        except RuntimeError as exc:
            raise RuntimeError(log.read_text()) from exc
        yield Nginx(proc, port, str(temp))
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class CuttingRelay:
    """A loopback TCP relay between a client and nginx that forwards the first ``limit``
    bytes a client sends on a connection, then holds it (``held`` is set) until
    :meth:`cut` closes both sides: a client whose network dies in the middle of a body."""

    def __init__(self, upstream_port: int, limit: int | None) -> None:
        self.upstream_port = upstream_port
        self.limit = limit
        self.held = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.upstream_port))
            self.sockets += [client, server]
            threading.Thread(target=self._forward, args=(client, server, True), daemon=True).start()
            threading.Thread(
                target=self._forward, args=(server, client, False), daemon=True
            ).start()

    def _forward(self, source: socket.socket, sink: socket.socket, limited: bool) -> None:
        sent = 0
        with contextlib.suppress(OSError):
            while True:
                size = 64 * KB
                if limited and self.limit is not None:
                    size = min(size, self.limit - sent)
                    if size == 0:
                        self.held.set()
                        return  # read no more: the client's bytes pile up until the cut
                data = source.recv(size)
                if not data:
                    sink.shutdown(socket.SHUT_WR)
                    return
                sink.sendall(data)
                sent += len(data)

    def cut(self) -> None:
        for s in self.sockets:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()
        self.sockets = []

    def close(self) -> None:
        self.listener.close()
        self.cut()


@pytest.fixture(scope="module")
def app(tmp_path_factory: Any) -> Iterator[tuple[str, str, str]]:
    """``gunicorn -w 3`` serving /upload, {prefix}/chunks and {prefix}/tus/: (url, upload
    dir, tus files dir)."""
    base = tmp_path_factory.mktemp("nginx-app")
    uploads, files = base / "uploads", base / "files"
    uploads.mkdir()
    env = {
        "UM_UPLOAD_DIR": str(uploads),
        "UPLOADMETER_TEST_FILES": str(files),
        "UPLOADMETER_TEST_STORE": f"sqlite://{base}/um.sqlite3",
        "UM_UPDATE_INTERVAL": "0",
    }
    with run_gunicorn("tests.support.e2e_apps:make_proxied_app()", workers=3, env=env) as url:
        yield url, str(uploads), str(files)


def test_a_form_upload_through_the_readme_nginx_shows_its_progress(
    app: tuple[str, str, str], tmp_path: Any
) -> None:
    with run_nginx(documented_config(), app[0], tmp_path / "nginx") as nginx:
        client = ChunkClient(nginx.url)
        seen, response = throttled_upload(client, new_upload_id())
        assert BUFFERED not in nginx.log()
    check_progress(seen)  # >= 10 distinct intermediate percentages, polled through nginx
    check_saved(response)


def test_negative_control_a_buffering_nginx_shows_no_form_progress(
    app: tuple[str, str, str], tmp_path: Any
) -> None:
    config = without_request_streaming(documented_config())
    with run_nginx(config, app[0], tmp_path / "nginx") as nginx:
        client = ChunkClient(nginx.url)
        upload_id = new_upload_id()
        assert client.progress(upload_id)["state"] == "unknown"  # and the session cookie
        upload = RawUpload(client, f"/upload?uploadmeter_id={upload_id}", BODY, CTYPE)
        upload.send(len(BODY) - PIECE)
        # nginx holds all but its last 16 KiB buffer: the app has not seen the request.
        wait_until(lambda: nginx.buffered_body_bytes() >= upload.sent - 64 * KB)
        assert client.progress(upload_id)["state"] == "unknown"
        upload.send_rest()
        check_saved(upload.finish())
        assert client.progress(upload_id)["state"] == "done"


@pytest.mark.parametrize(("variant", "streams"), CONFIGS)
def test_a_tus_creation_post_with_data_is_streamed(
    app: tuple[str, str, str], tmp_path: Any, variant: Any, streams: bool
) -> None:
    # tus-js-client and Uppy POST the first bytes to {prefix}/tus, without a trailing slash.
    data = os.urandom(256 * KB)
    with run_nginx(variant(), app[0], tmp_path / "nginx") as nginx:
        c = ChunkClient(nginx.url)
        status, headers, _ = c.request(
            "POST",
            TUS.rstrip("/"),
            data,
            {
                "Tus-Resumable": "1.0.0",
                "Upload-Length": str(len(data)),
                "Content-Type": "application/offset+octet-stream",
            },
        )
        assert status == 201 and headers["upload-offset"] == str(len(data)), (status, headers)
        assert (BUFFERED in nginx.log()) is not streams


@pytest.mark.parametrize(("variant", "streams"), CONFIGS)
def test_a_tus_upload_cut_midway_resumes_from_the_stored_offset(
    app: tuple[str, str, str], tmp_path: Any, variant: Any, streams: bool
) -> None:
    data = os.urandom(3 * 1024 * KB + 77)
    source = tmp_path / "movie.mp4"
    source.write_bytes(data)
    limit = 1024 * KB
    with run_nginx(variant(), app[0], tmp_path / "nginx") as nginx:
        c = ChunkClient(nginx.url)
        c.start()
        headers = {"Cookie": c.cookie_header()}
        relay = CuttingRelay(int(nginx.url.rsplit(":", 1)[1]), limit)
        storage = FileStorage(str(tmp_path / "tus-urls.json"))
        try:
            # tuspy's default: the whole file in one PATCH, which dies after 1 MiB.
            first = tus_client.TusClient(relay.url + TUS, headers=headers).uploader(
                str(source), store_url=True, url_storage=storage, metadata={"filename": "m.mp4"}
            )
            failures: list[BaseException] = []

            def upload() -> None:
                try:
                    first.upload()
                except (TusUploadFailed, TusCommunicationError) as exc:
                    failures.append(exc)

            thread = threading.Thread(target=upload)
            thread.start()
            assert relay.held.wait(20), "the PATCH never reached 1 MiB"
            upload_id = str(first.url).rsplit("/", 1)[1]
            stored_before_cut = 0
            if streams:
                # Streamed: the app stores bytes while the client still sends.
                stored_before_cut = wait_until(
                    lambda: (n := c.progress(upload_id)["bytes_received"]) >= 512 * KB and n
                )
            else:
                # Buffered: nginx holds the bytes the app never sees.
                wait_until(lambda: nginx.buffered_body_bytes() >= limit - 64 * KB)
            relay.cut()
            thread.join(20)
            assert not thread.is_alive() and len(failures) == 1, failures
            # A new client, as after a crash: finds the upload by the file's fingerprint.
            relay.limit = None
            second = tus_client.TusClient(relay.url + TUS, headers=headers).uploader(
                str(source), store_url=True, url_storage=storage
            )
            assert second.url == first.url
            resumed_from = second.offset
            second.upload()
        finally:
            relay.close()
            storage.close()
        record = c.progress(upload_id)
        assert (BUFFERED in nginx.log()) is not streams
    if streams:  # every byte the app had before the cut is kept (the PATCH's head aside)
        assert stored_before_cut <= resumed_from <= limit, (stored_before_cut, resumed_from)
    else:
        assert resumed_from == 0
    assert record["state"] == "done", record
    (done,) = [d for d in read_completions(app[2]) if d["upload_id"] == upload_id]
    assert done["sha256"] == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize(("variant", "streams"), CONFIGS)
def test_chunk_posts_reach_the_app_as_they_arrive(
    app: tuple[str, str, str], tmp_path: Any, variant: Any, streams: bool
) -> None:
    f = ChunkedFile.random(3 * 1024 * KB + 5, 1024 * KB)
    with run_nginx(variant(), app[0], tmp_path / "nginx") as nginx:
        c = ChunkClient(nginx.url)
        c.start()
        upload_id = c.upload(f)["upload_id"]
        log = nginx.log()
    # Each 1 MiB chunk is more than nginx's 16 KiB body buffer: buffered, it is spooled.
    assert (BUFFERED in log) is not streams
    done = wait_until(lambda: [d for d in read_completions(app[2]) if d["upload_id"] == upload_id])
    assert [d["sha256"] for d in done] == [f.sha256]


DOWNLOAD = 48 * 1024 * KB
# What may lie between the app and a client that stopped reading when nginx streams the
# response: the app's send and nginx's receive buffer (auto-tuned up to these maxima),
# nginx's send buffer, and nginx's proxy_buffer_size.  About 14 MiB on Linux's defaults,
# far below DOWNLOAD: a buffering nginx takes all of it.
IN_FLIGHT = 2 * tcp_buffer_max("tcp_wmem") + tcp_buffer_max("tcp_rmem") + 64 * KB


def buffering_downloads(config: str) -> str:
    """The app's ``X-Accel-Buffering: no`` ignored: nginx's default ``proxy_buffering on``
    for the tracked download too."""
    assert "proxy_buffering" not in config and config.count("location / {") == 1, config
    return config.replace(
        "location / {", "location / {\n        proxy_ignore_headers X-Accel-Buffering;"
    )


@pytest.fixture(scope="module")
def download_app(tmp_path_factory: Any) -> Iterator[str]:
    """``gunicorn -w 2`` serving ``/zip?uploadmeter_id=...``: a tracked zip of one 48 MiB
    file (stored, so it has a Content-Length)."""
    base = tmp_path_factory.mktemp("nginx-downloads")
    files = base / "files"
    files.mkdir()
    (files / "big.bin").write_bytes(os.urandom(DOWNLOAD))
    env = {"UM_STORE": f"sqlite://{base}/um.sqlite3", "UM_FILES": str(files)}
    with run_gunicorn("tests.support.download_apps:make_app()", workers=2, env=env) as url:
        yield url


def _stalled(client: Client, upload_id: str) -> dict[str, Any]:
    """The record once the app has stopped sending (the client reads nothing), or once it
    reads ``done``."""
    last: list[int] = []

    def settled() -> dict[str, Any] | None:
        record = client.progress(upload_id)
        if record["state"] == "done":
            return record
        last.append(record["bytes_received"])
        # Unchanged over 0.5 s of polls: the app is blocked on a full socket.
        return record if len(last) > 25 and last[-1] == last[-26] > 0 else None

    return wait_until(settled, timeout=30, interval=0.02)  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("variant", "streams"),
    [
        pytest.param(documented_config, True, id="documented-config"),
        pytest.param(
            lambda: buffering_downloads(documented_config()), False, id="negative-control-buffering"
        ),
    ],
)
def test_a_download_through_the_readme_nginx_is_done_only_when_the_client_has_it(
    download_app: str, tmp_path: Any, variant: Any, streams: bool
) -> None:
    with run_nginx(variant(), download_app, tmp_path / "nginx") as nginx:
        client = Client(nginx.url)
        upload_id = new_upload_id()
        assert client.progress(upload_id)["state"] == "unknown"  # and the session cookie
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * KB)  # a slow reader
        sock.connect(("127.0.0.1", int(nginx.url.rsplit(":", 1)[1])))
        with sock:
            sock.sendall(
                f"GET /zip?uploadmeter_id={upload_id} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                f"Cookie: {client.cookie_header()}\r\nConnection: close\r\n\r\n".encode()
            )
            data = b""
            while b"\r\n\r\n" not in data:
                data += sock.recv(4 * KB)
            head, _, body = data.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200"), head
            got = len(body)
            record = _stalled(client, upload_id)
            if not streams:  # nginx took it all: the record is done, the client has 4 KiB
                assert record["state"] == "done" and got < 64 * KB, (record, got)
                return
            total = record["content_length"]
            assert total > DOWNLOAD and record["state"] == "uploading", record
            assert record["bytes_received"] <= got + IN_FLIGHT, (record, got)
            # Read the rest, looking at the record after every MiB (a slow client).
            checked = 0
            while got < total:
                piece = sock.recv(64 * KB)
                assert piece, (got, total)
                got += len(piece)
                if got - checked >= 1024 * KB:
                    checked = got
                    record = client.progress(upload_id)
                    assert record["bytes_received"] <= got + IN_FLIGHT, (record, got)
                    assert record["state"] == "uploading" or got >= total - IN_FLIGHT, record
        assert wait_until(lambda: client.progress(upload_id)["state"] == "done")
