"""Real ASGI servers for end-to-end tests, on loopback only (the pattern of
:func:`tests.support.servers.gunicorn_process`).

* :func:`run_uvicorn` -- uvicorn (httptools, uvloop) with one or several worker processes
* :func:`run_hypercorn` -- hypercorn (asyncio worker)

Both take an app spec naming a factory in ``tests.support`` (``module:factory``) and the
app's settings as environment variables (``UM_STORE``, ``UM_UPLOAD_DIR``, ...).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

from tests.support.servers import ROOT, Gunicorn, free_port, wait_for_port


def _env(env: dict[str, str] | None) -> dict[str, str]:
    paths = [ROOT, os.environ.get("PYTHONPATH", "")]
    full_env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in paths if p))
    full_env.update(env or {})
    return full_env


@contextlib.contextmanager
def _server(command: list[str], port: int, env: dict[str, str] | None) -> Iterator[Gunicorn]:
    proc: subprocess.Popen[Any] = subprocess.Popen(command, cwd=ROOT, env=_env(env))
    try:
        wait_for_port(port, proc=proc, timeout=30)
        yield Gunicorn(proc, port)  # url, port, proc: the same handle as gunicorn's
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def run_uvicorn(
    factory: str, *, workers: int = 1, env: dict[str, str] | None = None, args: tuple[str, ...] = ()
) -> Iterator[Gunicorn]:
    """``uvicorn --factory factory --workers N`` (httptools, uvloop) on a free port."""
    port = free_port()
    command = [
        sys.executable, "-m", "uvicorn", "--factory", factory, "--host", "127.0.0.1",
        "--port", str(port), "--workers", str(workers), "--http", "httptools",
        "--loop", "uvloop", "--log-level", "warning", "--timeout-graceful-shutdown", "2",
        *args,
    ]  # fmt: skip
    with _server(command, port, env) as server:
        yield server


@contextlib.contextmanager
def run_hypercorn(
    factory: str, *, workers: int = 1, env: dict[str, str] | None = None, args: tuple[str, ...] = ()
) -> Iterator[Gunicorn]:
    """``hypercorn 'factory()' --workers N`` (asyncio) on a free port."""
    port = free_port()
    command = [
        sys.executable, "-m", "hypercorn", f"{factory}()", "--bind", f"127.0.0.1:{port}",
        "--workers", str(workers), "--worker-class", "asyncio", "--graceful-timeout", "2",
        *args,
    ]  # fmt: skip
    with _server(command, port, env) as server:
        yield server


@contextlib.contextmanager
def serve_asgi_in_thread(app: Any) -> Iterator[str]:
    """Serve the ASGI ``app`` with uvicorn (httptools) on a thread of this process, so a
    test can share objects with it (the ASGI counterpart of ``serve_in_thread``)."""
    import threading

    import uvicorn

    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, http="httptools", loop="asyncio",
        lifespan="off", log_level="warning", timeout_graceful_shutdown=2,
    )  # fmt: skip
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_for_port(port, timeout=30)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
