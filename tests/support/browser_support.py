"""Helpers for the real-browser tests: Debian's chromium through Playwright, the demo app
on loopback, files to upload, and a record of the requests the server finished."""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from werkzeug.wsgi import ClosingIterator

from tests.support.servers import ROOT, serve_in_thread

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = os.path.join(ROOT, "test-artifacts")


def launch_chromium(playwright: Any) -> Any:
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)


@contextlib.contextmanager
def running_chromium(scripts: Iterable[str] = ()) -> Iterator[Any]:
    """Debian's chromium through Playwright, for a module-scoped ``browser`` fixture.

    ``scripts``: npm files the pages serve (paths in tests/js/node_modules), checked first.
    """
    import pytest
    from playwright.sync_api import sync_playwright

    for script in scripts:
        if not os.path.exists(script):
            pytest.fail(f"{script} is missing: run `npm ci --prefix tests/js`")
    with sync_playwright() as p:
        chromium = launch_chromium(p)
        yield chromium
        chromium.close()


class RequestLog:
    """WSGI wrapper: counts requests in flight and remembers how finished ones ended."""

    def __init__(self, app: Callable[..., Iterable[bytes]]) -> None:
        self.app = app
        self.lock = threading.Lock()
        self.in_flight = 0
        self.finished: list[tuple[str, str, int | None]] = []  # (method, path, status)

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        status: list[int] = []

        def start(s: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            status.append(int(s[:3]))
            return start_response(s, headers, exc_info)

        def done() -> None:
            with self.lock:
                self.in_flight -= 1
                self.finished.append(
                    (environ["REQUEST_METHOD"], environ["PATH_INFO"], status[0] if status else None)
                )

        with self.lock:
            self.in_flight += 1
        try:
            result = self.app(environ, start)
        except BaseException:
            done()
            raise
        return ClosingIterator(result, done)

    def uploads_finished(self) -> list[int | None]:
        with self.lock:
            return [s for m, p, s in self.finished if m == "POST" and p == "/upload"]

    def idle(self) -> bool:
        with self.lock:
            return self.in_flight == 0


@dataclass
class Demo:
    url: str
    app: Any
    log: RequestLog
    upload_folder: str
    artifacts: list[str] = field(default_factory=list)

    def saved_files(self) -> list[str]:
        """Every entry of the uploads folder except the metadata folder (so partial
        ``.part-*`` files count)."""
        if not os.path.isdir(self.upload_folder):
            return []
        return sorted(n for n in os.listdir(self.upload_folder) if n != ".meta")


@contextlib.contextmanager
def run_demo(tmp_path: Any, **config: Any) -> Iterator[Demo]:
    """The demo app on a loopback port, with its own instance folder and SQLite store."""
    from demo_app import create_app

    instance = tmp_path / "instance"
    settings = {
        "SECRET_KEY": "browser-test",
        "UPLOADMETER_STORE": f"sqlite://{tmp_path / 'progress.sqlite3'}",
        **config,
    }
    app = create_app(settings, instance_path=str(instance))
    log = RequestLog(app.wsgi_app)
    app.wsgi_app = log  # type: ignore[method-assign]
    with serve_in_thread(app) as url:
        yield Demo(url, app, log, app.config["UPLOAD_FOLDER"])


def make_file(path: Any, size: int) -> str:
    """A file of ``size`` random bytes (random, so a mixed-up byte changes the hash)."""
    with open(path, "wb") as f:
        remaining = size
        while remaining:
            n = min(remaining, 4 * 1024 * 1024)
            f.write(os.urandom(n))
            remaining -= n
    return str(path)


def sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


def screenshot(page: Any, name: str, selector: str | None = None) -> str:
    """Save a PNG under ``test-artifacts/`` (of one element when ``selector`` is given)."""
    os.makedirs(ARTIFACTS, exist_ok=True)
    path = os.path.join(ARTIFACTS, name + ".png")
    if selector is None:
        page.screenshot(path=path, full_page=True)
    else:
        page.locator(selector).screenshot(path=path)
    return path
