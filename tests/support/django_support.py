"""The small Django project of tests/support/django_project: set up in this process, or
served by uvicorn with several workers (gunicorn: :func:`tests.support.servers.run_gunicorn`)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator

from tests.support.servers import ROOT, Client, free_port, stop_server, wait_for_port

SETTINGS = "tests.support.django_project.settings"
WSGI_APP = "tests.support.django_project.wsgi:application"
ASGI_APP = "tests.support.django_project.asgi:application"


def setup_django() -> None:
    """Configure Django for this process with the test project's settings (once)."""
    import django

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", SETTINGS)
    django.setup()


def csrf_headers(client: Client) -> dict[str, str]:
    """Fetch the upload page (the CSRF and session cookies); the header Django's CSRF
    check accepts for a request without the form's token."""
    status, _, _ = client.request("GET", "/")
    assert status == 200
    return {"X-CSRFToken": client.cookies["csrftoken"]}


@contextlib.contextmanager
def run_uvicorn(
    app_spec: str, *, workers: int = 3, env: dict[str, str] | None = None
) -> Iterator[str]:
    """``uvicorn --workers N app_spec`` on a free loopback port; yields the base URL."""
    port = free_port()
    paths = [ROOT, os.environ.get("PYTHONPATH", "")]
    full_env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in paths if p), **(env or {}))
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "--workers", str(workers), "--host", "127.0.0.1",
         "--port", str(port), "--log-level", "warning", app_spec],
        cwd=ROOT,
        env=full_env,
    )  # fmt: skip
    try:
        wait_for_port(port, proc=proc, timeout=30)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_server(proc)
