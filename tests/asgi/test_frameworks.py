"""Each ASGI framework through its own upload API, with and without the middleware, under
uvicorn: the app parses the same bytes either way (same fields, same file names, sizes
and SHA-256), and the metered run reports truthful progress, per field.

Starlette ``request.form()``, FastAPI ``UploadFile``/``Form``, Quart ``await
request.files``, Litestar ``request.form()`` and Django's ``request.FILES`` on its
``ASGIHandler``.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.integration.test_e2e import BODY, CTYPE, PARTS, check_progress, throttled_upload
from tests.support.asgi_frameworks import FRAMEWORKS
from tests.support.asgi_servers import run_uvicorn
from tests.support.servers import Client, new_upload_id

APP = "tests.support.asgi_frameworks:make_app"


def expected() -> dict[str, Any]:
    import hashlib

    files = [
        {
            "field": name,
            "filename": filename,
            "size": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
        }
        for name, filename, data in PARTS
        if filename is not None
    ]
    return {"form": {"title": "Straße & <co>"}, "files": files}


@pytest.mark.parametrize("framework", sorted(FRAMEWORKS))
def test_framework_parses_the_same_bytes_with_the_meter(framework: str, tmp_path: Any) -> None:
    env = {"UM_FRAMEWORK": framework, "UM_STORE": f"sqlite://{tmp_path}/um.sqlite3"}
    with run_uvicorn(APP, env={**env, "UM_METERED": "0"}) as plain:
        status, _, data = Client(plain.url).request(
            "POST", f"/upload?uploadmeter_id={new_upload_id()}", BODY, {"Content-Type": CTYPE}
        )
        assert status == 200, data
        without = json.loads(data)
    with run_uvicorn(APP, env={**env, "UM_METERED": "1"}) as metered:
        client = Client(metered.url)
        upload_id = new_upload_id()
        seen, (status, _, data) = throttled_upload(client, upload_id)
        assert status == 200, data
        with_meter = json.loads(data)
        record = client.progress(upload_id)
    assert with_meter == {**without, "tracked": True}  # the same answer, in the same order
    key = lambda f: (f["field"], f["filename"])  # noqa: E731 - Litestar groups by field
    assert sorted(without.pop("files"), key=key) == sorted(expected().pop("files"), key=key)
    assert without == {"form": expected()["form"], "tracked": False}
    check_progress(seen)
    assert record["result"] == {"count": 3}
