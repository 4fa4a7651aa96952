"""uploadmeter.django in process: settings, wrap(), the template tags' markup, and Django's
own request parsing (CSRF, request.FILES, upload handlers, size limits, sessions) behind
the middleware, over real HTTP (werkzeug's threaded server)."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from typing import Any

import pytest
from django.core.wsgi import get_wsgi_application
from django.template import Context, Template
from django.test import override_settings
from flask import Flask, render_template_string
from werkzeug.middleware.dispatcher import DispatcherMiddleware

import uploadmeter.django
from tests.integration.test_e2e import (
    BODY,
    CTYPE,
    FILE_A,
    FILE_B,
    check_progress,
    check_saved,
    throttled_upload,
)
from tests.support.django_project import views
from tests.support.django_support import csrf_headers
from tests.support.servers import (
    Client,
    RawUpload,
    multipart_body,
    new_upload_id,
    serve_in_thread,
    wait_until,
)
from uploadmeter import UploadMeterMiddleware
from uploadmeter.core import Sessions
from uploadmeter.exceptions import ConfigurationError
from uploadmeter.flask import UploadMeter


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def store(tmp_path: Any) -> str:
    return f"sqlite://{tmp_path}/um.sqlite3"


@pytest.fixture
def site(store: str) -> Iterator[str]:
    """The test project, wrapped as its wsgi.py does, on a loopback port."""
    with (
        override_settings(UPLOADMETER={"STORE": store, "UPDATE_INTERVAL": 0}),
        serve_in_thread(uploadmeter.django.wrap(get_wsgi_application())) as url,
    ):
        yield url


def post(client: Client, path: str, body: bytes, ctype: str, **headers: str) -> Any:
    status, _, data = client.request(
        "POST", path, body=body, headers={"Content-Type": ctype, **headers}
    )
    return status, data


# -- Django parses the metered body ---------------------------------------------------------


def test_throttled_upload_is_measured_and_request_files_are_byte_identical(site: str) -> None:
    client = Client(site)
    seen, response = throttled_upload(client, new_upload_id(), headers=csrf_headers(client))
    check_progress(seen)
    check_saved(response)  # request.POST and request.FILES: names and SHA-256 as sent
    answer = json.loads(response[2])
    # Django's handlers chose as always: a request over FILE_UPLOAD_MAX_MEMORY_SIZE
    # (2.5 MB) has its files in temporary files.
    assert [(f["field"], f["size"], f["kind"]) for f in answer["files"]] == [
        ("doc", len(FILE_A), "TemporaryUploadedFile"),
        ("doc", len(FILE_B), "TemporaryUploadedFile"),
        ("empty", 0, "TemporaryUploadedFile"),
    ]
    assert answer["tracked"] is True
    # What the view told current_upload(request) is the record's result.
    assert seen[-1]["result"] == {"sha256": sha(FILE_A), "filename": "α report.bin"}


def test_file_upload_max_memory_size_still_decides_the_handler(site: str) -> None:
    client = Client(site)
    headers = csrf_headers(client)
    with override_settings(FILE_UPLOAD_MAX_MEMORY_SIZE=len(BODY)):  # the request's size
        status, data = post(
            client, f"/upload?uploadmeter_id={new_upload_id()}", BODY, CTYPE, **headers
        )
    assert status == 200, data
    kinds = [(f["size"], f["kind"], f["sha256"]) for f in json.loads(data)["files"]]
    assert kinds == [
        (len(FILE_A), "InMemoryUploadedFile", sha(FILE_A)),
        (len(FILE_B), "InMemoryUploadedFile", sha(FILE_B)),
        (0, "InMemoryUploadedFile", sha(b"")),
    ]


@pytest.mark.parametrize(
    "limit",
    [
        {"DATA_UPLOAD_MAX_MEMORY_SIZE": 10},  # the 15-byte title is more form data
        {"DATA_UPLOAD_MAX_NUMBER_FILES": 2},  # BODY carries three files
    ],
)
def test_djangos_upload_limits_answer_400_and_the_record_says_so(
    site: str, limit: dict[str, int]
) -> None:
    client = Client(site)
    headers = csrf_headers(client)
    upload_id = new_upload_id()
    with override_settings(**limit):
        status, _ = post(client, f"/upload?uploadmeter_id={upload_id}", BODY, CTYPE, **headers)
    assert status == 400
    record = client.progress(upload_id)
    assert record["state"] == "error"
    assert record["error"] == {
        "status": 400,
        "message": "The application rejected the upload (400 Bad Request).",
    }


def test_csrf_protection_refuses_an_upload_without_the_token(site: str) -> None:
    client = Client(site)
    client.request("GET", "/")  # the CSRF cookie, but no token in the request
    upload_id = new_upload_id()
    status, _ = post(client, f"/upload?uploadmeter_id={upload_id}", BODY, CTYPE)
    assert status == 403
    record = client.progress(upload_id)
    assert (record["state"], record["error"]) == (
        "error",
        {"status": 403, "message": "The application rejected the upload (403 Forbidden)."},
    )


def test_untracked_upload_reaches_django_untouched(site: str) -> None:
    client = Client(site)
    status, data = post(client, "/upload", BODY, CTYPE, **csrf_headers(client))
    assert status == 200
    answer = json.loads(data)
    assert answer["tracked"] is False  # current_upload(request) is None
    assert [f["sha256"] for f in answer["files"]] == [sha(FILE_A), sha(FILE_B), sha(b"")]


# -- processing progress from a Django view -------------------------------------------------


def test_processing_progress_from_a_django_view(site: str) -> None:
    client = Client(site)
    headers = csrf_headers(client)
    data = os.urandom(400_000)
    body, ctype = multipart_body([("document", "data.bin", data)])
    upload_id = new_upload_id()
    status, answer = post(client, f"/process?uploadmeter_id={upload_id}", body, ctype, **headers)
    assert (status, json.loads(answer)) == (200, {"processing": upload_id})

    block = len(data) // views.PROCESSING_BLOCKS
    record = client.progress(upload_id)
    assert record["state"] == "processing"
    assert (record["processing"]["phase"], record["processing"]["done"]) == ("hashing", 0)
    assert record["processing"]["total"] == len(data)
    for step in range(1, views.PROCESSING_BLOCKS):
        views.PROCESSING_STEPS.release()
        record = wait_until(
            lambda step=step: (
                (r := client.progress(upload_id))["processing"]["done"] == step * block and r
            )
        )
        assert record["state"] == "processing"
    views.PROCESSING_STEPS.release()
    final = wait_until(lambda: (r := client.progress(upload_id))["state"] == "done" and r)
    assert final["result"] == {"sha256": sha(data)}
    assert final["processing"]["done"] == len(data)


# -- sessions -------------------------------------------------------------------------------


def test_the_session_id_hook_keys_progress_by_djangos_session(store: str) -> None:
    hook = {
        "STORE": store,
        "UPDATE_INTERVAL": 0,
        "SESSION_ID": "uploadmeter.django.django_session_id",
    }
    with (
        override_settings(UPLOADMETER=hook),
        serve_in_thread(uploadmeter.django.wrap(get_wsgi_application())) as url,
    ):
        owner = Client(url)
        headers = csrf_headers(owner)
        owner.request("GET", "/login")
        owner.cookies.pop("uploadmeter_session")  # the Django session alone carries it
        upload_id = new_upload_id()
        upload = RawUpload(
            owner, f"/upload?uploadmeter_id={upload_id}", BODY, CTYPE, headers=headers
        )
        upload.send(len(BODY) // 2)

        twin = Client(url)  # another connection with only the same Django session
        twin.cookies = {"sessionid": owner.cookies["sessionid"]}
        assert wait_until(lambda: twin.progress(upload_id)["bytes_received"] > 0)
        stranger = Client(url)
        stranger.cookies = {"sessionid": "k" * 32}  # no such Django session
        assert stranger.progress(upload_id)["state"] == "unknown"

        upload.send_rest()
        assert upload.finish()[0] == 200
        record = wait_until(lambda: (r := twin.progress(upload_id))["state"] == "done" and r)
        assert record["bytes_received"] == len(BODY)
        assert "uploadmeter_session" not in owner.cookies  # the upload issued no cookie


def test_django_session_id_reads_a_wsgi_environ_or_an_asgi_scope() -> None:
    from django.contrib.sessions.backends.cache import SessionStore

    session = SessionStore()
    session["user"] = "ada"
    session.save()
    key = session.session_key
    assert key
    cookie = f"other=1; sessionid={key}"
    assert uploadmeter.django.django_session_id({"HTTP_COOKIE": cookie}) == key
    scope = {"type": "http", "headers": [(b"host", b"x"), (b"cookie", cookie.encode())]}
    assert uploadmeter.django.django_session_id(scope) == key
    assert uploadmeter.django.django_session_id({"HTTP_COOKIE": "sessionid=" + "k" * 32}) is None
    assert uploadmeter.django.django_session_id({"HTTP_COOKIE": ""}) is None
    session.delete()
    assert uploadmeter.django.django_session_id({"HTTP_COOKIE": cookie}) is None


# -- settings and wrap() --------------------------------------------------------------------


def cookie_of(sessions: Sessions) -> str:
    return sessions.issue(False)[1].split(";")[0]


def test_settings_dict_configures_the_middleware_and_the_tags() -> None:
    settings = {
        "STORE": "memory://",
        "PREFIX": "/um/",
        "TTL": "60",
        "MAX_CONTENT_LENGTH": 1000,
        "COOKIE_NAME": "meter",
        "POLL_INTERVAL": 1,
        "FIRST_POLL": 0.1,
    }
    with override_settings(UPLOADMETER=settings, SECRET_KEY_FALLBACKS=["old-key"]):
        meter = uploadmeter.django.wrap(get_wsgi_application())
        html = Template(
            "{% load uploadmeter %}"
            '{% uploadmeter_file_upload "doc" %}{% enduploadmeter_file_upload %}'
        ).render(Context())
    assert isinstance(meter, UploadMeterMiddleware)
    assert uploadmeter.django.meter() is meter
    assert (meter.prefix, meter.settings.ttl, meter.max_content_length) == ("/um", 60.0, 1000)
    assert meter.sessions.settings.name == "meter"
    # Signed with Django's SECRET_KEY; SECRET_KEY_FALLBACKS still accepted.
    new = cookie_of(meter.sessions)
    assert Sessions("django-test-secret", meter.sessions.settings).has_valid_cookie(new)
    assert meter.sessions.has_valid_cookie(cookie_of(Sessions("old-key", meter.sessions.settings)))
    assert not meter.sessions.has_valid_cookie(
        cookie_of(Sessions("other", meter.sessions.settings))
    )
    for attribute in (
        'data-endpoint="/um"',
        'data-first-poll="100"',
        'data-poll-interval="1000"',
        'data-max-content-length="1000"',
    ):
        assert attribute in html


def test_bad_settings_are_configuration_errors() -> None:
    with (
        override_settings(UPLOADMETER={"STOER": "memory://"}),
        pytest.raises(ConfigurationError, match="unknown keys STOER"),
    ):
        uploadmeter.django.wrap(get_wsgi_application())
    with (
        override_settings(SECRET_KEY="", UPLOADMETER={"STORE": "memory://"}),
        pytest.raises(ConfigurationError, match="set SECRET_KEY"),
    ):
        uploadmeter.django.wrap(get_wsgi_application())
    with override_settings(SECRET_KEY="", UPLOADMETER={"STORE": "memory://", "SECRET_KEY": "k"}):
        meter = uploadmeter.django.wrap(get_wsgi_application())
    assert Sessions("k").has_valid_cookie(cookie_of(meter.sessions))


def test_wrap_gives_an_asgi_application_the_asgi_shell() -> None:
    from django.core.asgi import get_asgi_application

    async def bare_asgi_app(scope: Any, receive: Any, send: Any) -> None:
        pass

    try:
        import uploadmeter.asgi as shell
    except ImportError:
        shell = None  # type: ignore[assignment]
    with override_settings(UPLOADMETER={"STORE": "memory://"}):
        for app in (get_asgi_application(), bare_asgi_app):
            if shell is None:  # before the ASGI shell exists: a clear error, not a WSGI meter
                with pytest.raises(ConfigurationError, match=r"uploadmeter\.asgi"):
                    uploadmeter.django.wrap(app)
            else:
                assert isinstance(uploadmeter.django.wrap(app), shell.UploadMeterMiddleware)
        assert isinstance(uploadmeter.django.wrap(get_wsgi_application()), UploadMeterMiddleware)


def test_widget_urls_follow_the_mount_point(store: str) -> None:
    """Django mounted under /site (SCRIPT_NAME): the widget posts, polls and loads its
    assets under it, and the meter answers there."""

    def elsewhere(environ: Any, start_response: Any) -> list[bytes]:
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not here"]

    with override_settings(UPLOADMETER={"STORE": store}):
        site = DispatcherMiddleware(
            elsewhere, {"/site": uploadmeter.django.wrap(get_wsgi_application())}
        )
        with serve_in_thread(site) as url:
            client = Client(url)
            status, _, page = client.request("GET", "/site/")
            assert status == 200
            html = page.decode()
            assert '<form action="/site/upload"' in html
            assert 'data-endpoint="/site/uploadmeter"' in html
            assert 'src="/site/uploadmeter/static/uploadmeter.js?v=' in html
            status, headers, _ = client.request("GET", "/site/uploadmeter/static/uploadmeter.js")
            assert (status, headers["content-type"].split(";")[0]) == (200, "text/javascript")
            assert client.progress("a" * 16, prefix="/site/uploadmeter")["state"] == "unknown"


# -- the template tags render the Jinja macros' markup -----------------------------------------

STAGE3 = '\n  <p>Saved as <strong data-uploadmeter-result="saved"></strong> {{ who }}</p>\n'
DJANGO_ARGS = (
    'multiple=True accept=".pdf,.zip" style_class="mine" progress_bar_style_class="bar" '
    'cell_style_class="c" active_style_class="on" button_label="Send" cancel_label="Stop" '
    'retry_label="Again" action="/elsewhere?a=1&b=2" upload_icon="/i.svg" include_assets=False'
)
JINJA_ARGS = DJANGO_ARGS.replace('" ', '", ').replace("True ", "True, ")


def flask_render(source: str, **context: Any) -> str:
    app = Flask(__name__)
    app.config.update(SECRET_KEY="x", UPLOADMETER_STORE="memory://")
    UploadMeter(app)
    with app.test_request_context("/"):
        return render_template_string(source, **context)


@pytest.mark.parametrize(
    ("django_source", "jinja_source"),
    [
        (
            '{% uploadmeter_file_upload "document" ' + DJANGO_ARGS + " %}" + STAGE3
            + "{% enduploadmeter_file_upload %}",
            '{% call uploadmeter.file_upload("document", ' + JINJA_ARGS + ") %}" + STAGE3
            + "{% endcall %}",
        ),
        (
            '{% uploadmeter_file_upload "document" %}{% enduploadmeter_file_upload %}',
            '{{ uploadmeter.file_upload("document") }}',
        ),
        ("{% uploadmeter_assets %}", "{{ uploadmeter.assets() }}"),
        (
            '{% uploadmeter_chunked_upload "videos" "/js/up.js" chunk_size=65536 accept="a/*" %}',
            '{{ chunked.chunked_upload("videos", "/js/up.js", chunk_size=65536, accept="a/*") }}',
        ),
        (
            '{% uploadmeter_chunked_assets "/js/up.js" %}',
            '{{ chunked.chunked_assets("/js/up.js") }}',
        ),
    ],
    ids=["file_upload", "file_upload-no-body", "assets", "chunked_upload", "chunked_assets"],
)  # fmt: skip
def test_template_tags_give_the_flask_macros_markup(django_source: str, jinja_source: str) -> None:
    who = "<Ada & Bob>"
    with override_settings(UPLOADMETER={"STORE": "memory://"}):
        django_html = Template("{% load uploadmeter %}" + django_source).render(
            Context({"who": who})
        )
    jinja_html = flask_render(
        '{% import "uploadmeter/macros.html" as uploadmeter %}'
        '{% import "uploadmeter/chunked.html" as chunked %}' + jinja_source,
        who=who,
    )
    assert "/uploadmeter/static/" in django_html or 'data-endpoint="/uploadmeter"' in django_html
    assert django_html == jinja_html
    if STAGE3 in django_source:
        assert "&lt;Ada &amp; Bob&gt;</p>" in django_html  # the body, escaped by Django
