"""The npm tus clients on their default options against ``UploadMeter(app)`` with default
settings and ``TusUploads`` at ``/tus``, under gunicorn with three workers: Uppy
(``@uppy/core`` + ``@uppy/tus``) and tus-js-client in Debian's chromium, each upload on a
first visit (a new browser context, no cookie yet), and tus-js-client in Node (which keeps
no cookies), with a stop and a resume from a new process.

Nothing may be lost: every upload the client calls a success has exactly one
``on_complete`` with the same SHA-256, and every ``on_complete`` belongs to a success.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import threading
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.support.asgi_servers import run_uvicorn
from tests.support.browser_support import make_file, running_chromium, sha256_of
from tests.support.servers import ROOT, Client, free_port, run_gunicorn, wait_until

playwright_api = pytest.importorskip("playwright.sync_api")

MIB = 1024 * 1024
SIZE = 6 * MIB + MIB // 2
UPLOADS = 20
TUS = "/uploadmeter/tus/"
JS = os.path.join(ROOT, "tests", "js")
NODE_MODULES = os.path.join(JS, "node_modules")
NODE_SCRIPT = os.path.join(JS, "tus_upload.mjs")
TIMEOUT_MS = 60_000


@pytest.fixture(scope="module")
def site(tmp_path_factory: Any) -> Iterator[tuple[str, str, str]]:
    """``(base url, FileStore directory, completion log)`` of the app under gunicorn -w 3."""
    with serve_site(tmp_path_factory, "wsgi") as found:
        yield found


@pytest.fixture(scope="module")
def uploads() -> int:
    """Uploads per client and test."""
    return UPLOADS


@contextlib.contextmanager
def serve_site(
    tmp_path_factory: Any, shell: str, store: str | None = None
) -> Iterator[tuple[str, str, str]]:
    """The clients' page and ``TusUploads`` on three workers: the Flask app under
    gunicorn (``"wsgi"``), or its ASGI twin under uvicorn (``"asgi"``)."""
    tmp = tmp_path_factory.mktemp("tus-clients")
    # @uppy/core is ESM: bundle it as an IIFE with the pinned esbuild, at test time.
    entry = tmp / "uppy-entry.js"
    entry.write_text(
        "import Uppy from '@uppy/core'; import Tus from '@uppy/tus';"
        " window.Uppy = Uppy; window.UppyTus = Tus;\n"
    )
    bundle = tmp / "uppy.js"
    subprocess.run(
        [os.path.join(NODE_MODULES, ".bin", "esbuild"), str(entry), "--bundle",
         "--format=iife", f"--outfile={bundle}", "--log-level=warning"],
        env=dict(os.environ, NODE_PATH=NODE_MODULES),
        check=True,
    )  # fmt: skip
    directory, log = str(tmp / "files"), str(tmp / "completed.txt")
    env = {
        "UPLOADMETER_TEST_FILES": directory,
        "TUS_CLIENTS_LOG": log,
        "TUS_CLIENTS_UPPY": str(bundle),
        "TMPDIR": str(tmp),  # the default store lives in the temp dir: this test's own
        **({"UM_STORE": store} if store else {}),
    }
    if shell == "asgi":
        with run_uvicorn("tests.support.asgi_resumable_apps:tus_site", workers=3, env=env) as srv:
            yield srv.url, directory, log
        return
    with run_gunicorn("tests.support.tus_clients_app:create_app()", workers=3, env=env) as url:
        yield url, directory, log


def completions(log: str) -> dict[str, list[str]]:
    """upload id -> the SHA-256 of each ``on_complete`` call for it."""
    found: dict[str, list[str]] = {}
    with contextlib.suppress(FileNotFoundError), open(log, encoding="utf-8") as f:
        for line in f:
            upload_id, sha256, _ = line.split()
            found.setdefault(upload_id, []).append(sha256)
    return found


def assert_nothing_lost(log: str, successes: dict[str, str], before: set[str]) -> None:
    """Each success (upload id -> SHA-256 of the file) has exactly one ``on_complete`` with
    that hash, and no other upload completed since ``before``."""
    done = completions(log)
    assert {i: done.get(i) for i in successes} == {i: [h] for i, h in successes.items()}
    assert set(done) - before == set(successes)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with running_chromium() as chromium:
        yield chromium


@pytest.mark.browser
@pytest.mark.gunicorn
@pytest.mark.parametrize("kind", ["uppy", "tus-js-client", "tus-js-client-parallel"])
def test_browser_clients_on_a_first_visit_lose_nothing(
    browser: Any, site: tuple[str, str, str], uploads: int, tmp_path: Any, kind: str
) -> None:
    url, _, log = site
    before = set(completions(log))
    successes: dict[str, str] = {}
    failures: list[Any] = []
    errors: list[str] = []
    for n in range(uploads):
        path = make_file(tmp_path / f"{kind}-{n}.bin", SIZE)
        context = browser.new_context()  # a first visit: no cookie
        page = context.new_page()
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(url + "/")
        # Default settings: the page gives the session.  Every other upload drops it, as
        # a page served from elsewhere has none: then the creation itself issues one.
        assert [c["name"] for c in context.cookies()] == ["uploadmeter_session"]
        if n % 2:
            context.clear_cookies()
        page.set_input_files("#file", path)
        page.evaluate("(kind) => window.start(kind)", kind)
        page.wait_for_function("() => window.results.length > 0", timeout=TIMEOUT_MS)
        result = page.evaluate("() => window.results[0]")
        if result["ok"]:
            upload_id = result["url"].rstrip("/").rsplit("/", 1)[1]
            successes[upload_id] = sha256_of(path)
            # The creation gave the browser a session: it reads the upload's record.
            record = page.evaluate(
                "(id) => fetch('/uploadmeter/progress?id=' + id).then((r) => r.json())",
                upload_id,
            )
            assert record["state"] == "done", record
            assert record["result"]["sha256"] == successes[upload_id]
        else:
            failures.append(result)
        assert errors == []
        context.close()
        os.unlink(path)
    assert failures == []
    assert len(successes) == uploads
    assert_nothing_lost(log, successes, before)


def node_upload(
    base: str, path: str, upload_url: str | None = None, parallel: int | None = None
) -> list[dict[str, Any]]:
    args = ["node", NODE_SCRIPT, base + TUS, path, *([upload_url] if upload_url else [])]
    env = dict(os.environ, **({"TUS_PARALLEL_UPLOADS": str(parallel)} if parallel else {}))
    done = subprocess.run(args, capture_output=True, text=True, timeout=120, check=False, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


@pytest.mark.gunicorn
def test_tus_js_client_in_node_loses_nothing(
    site: tuple[str, str, str], uploads: int, tmp_path: Any
) -> None:
    url, _, log = site
    before = set(completions(log))
    successes: dict[str, str] = {}
    for n in range(uploads):
        path = make_file(tmp_path / f"node-{n}.bin", SIZE)
        events = node_upload(url, path)
        assert events[-1]["success"] is True, events
        successes[events[-1]["url"].rsplit("/", 1)[1]] = sha256_of(path)
        os.unlink(path)
    assert_nothing_lost(log, successes, before)


@pytest.mark.gunicorn
def test_tus_js_client_in_node_with_parallel_uploads_loses_nothing(
    site: tuple[str, str, str], uploads: int, tmp_path: Any
) -> None:
    """``parallelUploads: 4``: four partial uploads (each PATCHed by whichever worker
    takes it) and one final upload that joins them, delivered once with the file's hash."""
    url, _, log = site
    before = set(completions(log))
    successes: dict[str, str] = {}
    bare, head = Client(url), {"Tus-Resumable": "1.0.0"}
    for n in range(max(uploads // 4, 1)):
        path = make_file(tmp_path / f"parallel-{n}.bin", SIZE + n)
        events = node_upload(url, path, parallel=4)
        assert events[-1]["success"] is True, events
        final_url = events[-1]["url"]
        successes[final_url.rsplit("/", 1)[1]] = sha256_of(path)
        status, headers, _ = bare.request("HEAD", urlsplit(final_url).path, headers=head)
        assert status == 200 and headers["upload-offset"] == str(SIZE + n)
        kind, _, parts = headers["upload-concat"].partition(";")
        assert kind == "final" and len(parts.split()) == 4
        for part in parts.split():  # joined, then deleted: reusing one is refused
            assert bare.request("HEAD", urlsplit(part).path, headers=head)[0] == 410
        os.unlink(path)
    assert_nothing_lost(log, successes, before)


class CuttingProxy:
    """A loopback TCP proxy that forwards ``limit`` bytes of any one client connection, then
    ends that request's body at the server and answers the client nothing (as a network
    that fails mid-upload): the client hangs until it is stopped."""

    def __init__(self, upstream_port: int, limit: int) -> None:
        self.upstream_port, self.limit = upstream_port, limit
        self.cut = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", free_port()))
        self.port = self.listener.getsockname()[1]
        self.sockets: list[socket.socket] = [self.listener]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                client, _ = self.listener.accept()
                self.sockets.append(client)
                if self.cut.is_set():
                    continue  # after the cut, nothing gets through
                server = socket.create_connection(("127.0.0.1", self.upstream_port))
                self.sockets.append(server)
                threading.Thread(target=self._up, args=(client, server), daemon=True).start()
                threading.Thread(target=self._down, args=(server, client), daemon=True).start()

    def _up(self, client: socket.socket, server: socket.socket) -> None:
        sent = 0
        with contextlib.suppress(OSError):
            while data := client.recv(65536):
                data = data[: self.limit - sent]
                server.sendall(data)
                sent += len(data)
                if sent >= self.limit:
                    self.cut.set()
                    server.shutdown(socket.SHUT_WR)  # the server sees the body end early
                    return

    def _down(self, server: socket.socket, client: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := server.recv(65536):
                if not self.cut.is_set():
                    client.sendall(data)

    def close(self) -> None:
        for s in self.sockets:
            s.close()


@pytest.mark.gunicorn
def test_tus_js_client_in_node_stops_and_a_new_client_resumes(
    site: tuple[str, str, str], tmp_path: Any
) -> None:
    url, _, log = site
    before = set(completions(log))
    path = make_file(tmp_path / "resume.bin", SIZE)
    port = int(url.rsplit(":", 1)[1])
    proxy = CuttingProxy(port, limit=3 * MIB)
    first = subprocess.Popen(
        ["node", NODE_SCRIPT, f"http://127.0.0.1:{proxy.port}{TUS}", path],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert first.stdout is not None
        created = json.loads(first.stdout.readline())["url"]  # printed once created
        upload_url = url + urlsplit(created).path  # the server's own URL, not the proxy's
        wait_until(proxy.cut.is_set, timeout=60)
        bare = Client(url)  # no cookie: the URL is enough
        head = {"Tus-Resumable": "1.0.0"}
        kept = wait_until(
            lambda: int(bare.request("HEAD", upload_url, headers=head)[1]["upload-offset"]),
            timeout=30,
        )
        assert 0 < kept < SIZE  # the server kept what arrived before the network failed
    finally:
        first.kill()  # the stop: the first client is gone
        first.wait()
        proxy.close()
    events = node_upload(url, path, upload_url)  # a new client, from the stored URL
    assert events[-1] == {"success": True, "url": upload_url}
    upload_id = upload_url.rsplit("/", 1)[1]
    assert_nothing_lost(log, {upload_id: sha256_of(path)}, before)
