"""A WSGI app (gunicorn) and an ASGI app (uvicorn) on one redis-server, one client session:
the cookie either one issues is the other's session, and each polls, streams and cancels
the other's uploads -- the same cookie and record format in both shells."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.integration.test_e2e import BODY, CTYPE, PIECE, check_progress, throttled_upload
from tests.support.asgi_servers import run_uvicorn
from tests.support.servers import Client, RawUpload, new_upload_id, run_gunicorn, wait_until

pytestmark = [pytest.mark.redis, pytest.mark.gunicorn]


class Elsewhere(Client):
    """Uploads to one server, polls another; one cookie jar (one browser session)."""

    def __init__(self, upload_url: str, poll: Client) -> None:
        super().__init__(upload_url)
        self.poller = poll
        self.cookies = poll.cookies  # shared: cookies do not depend on the port

    def progress(self, upload_id: str, prefix: str = "/uploadmeter") -> dict[str, Any]:
        return self.poller.progress(upload_id, prefix)


@pytest.fixture
def both(redis_url: str, tmp_path: Any) -> Iterator[tuple[str, str]]:
    upload_dir = tmp_path / "uploads"
    upload_dir.mkdir()
    env = {"UM_STORE": redis_url, "UM_UPLOAD_DIR": str(upload_dir), "UM_UPDATE_INTERVAL": "0"}
    with (
        run_gunicorn("tests.support.e2e_apps:make_plain_app()", workers=2, env=env) as wsgi,
        run_uvicorn("tests.support.asgi_apps:make_starlette_app", workers=2, env=env) as asgi,
    ):
        yield wsgi, asgi.url


def test_each_shell_polls_the_others_upload(both: tuple[str, str]) -> None:
    wsgi, asgi = both
    # The session starts on the WSGI side; an upload to the ASGI app, polled on the WSGI app.
    on_wsgi = Client(wsgi)
    seen, (status, _, _) = throttled_upload(Elsewhere(asgi, on_wsgi), new_upload_id())
    assert status == 200
    check_progress(seen)
    # The same session the other way round: an upload to the WSGI app, polled on the ASGI app.
    on_asgi = Client(asgi)
    on_asgi.cookies = on_wsgi.cookies
    seen, (status, _, _) = throttled_upload(Elsewhere(wsgi, on_asgi), new_upload_id())
    assert status == 200
    check_progress(seen)
    assert list(on_wsgi.cookies) == ["uploadmeter_session"]  # one session all along


def test_a_cookie_issued_by_asgi_is_the_wsgi_session_and_cancels_there(
    both: tuple[str, str],
) -> None:
    wsgi, asgi = both
    on_asgi = Client(asgi)
    upload_id = new_upload_id()
    on_asgi.progress(upload_id)  # the ASGI shell issues the cookie
    on_wsgi = Client(wsgi)
    on_wsgi.cookies = on_asgi.cookies
    upload = RawUpload(on_wsgi, f"/upload?uploadmeter_id={upload_id}", BODY, CTYPE)
    upload.send(PIECE * 6)
    wait_until(lambda: on_asgi.progress(upload_id)["bytes_received"] > PIECE)
    # The ASGI side streams the WSGI upload's record and cancels it.
    status, _, data = on_asgi.request("POST", f"/uploadmeter/cancel?id={upload_id}")
    assert status == 200 and json.loads(data)["state"] == "cancelled"
    status, _, data = on_asgi.request("GET", f"/uploadmeter/events?id={upload_id}")
    assert status == 200 and b'"state":"cancelled"' in data
    try:
        upload.send_rest()
        assert upload.finish()[0] == 400
    except (BrokenPipeError, ConnectionResetError):
        pass
    record = wait_until(lambda: (r := on_wsgi.progress(upload_id))["state"] == "cancelled" and r)
    assert record["bytes_received"] < len(BODY)
    # A stranger sees nothing on either side.
    assert Client(asgi).progress(upload_id)["state"] == "unknown"
    assert Client(wsgi).progress(upload_id)["state"] == "unknown"
