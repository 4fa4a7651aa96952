"""The progress component's markup, rendered without Flask by uploadmeter.ui, and
a plain WSGI app (no Flask) that serves it through the middleware."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from html.parser import HTMLParser
from importlib import resources
from typing import Any

import pytest
from markupsafe import Markup
from werkzeug.formparser import parse_form_data
from werkzeug.wrappers import Request, Response

from tests.support.servers import Client, RawUpload, multipart_body, new_upload_id, serve_in_thread
from uploadmeter import MemoryStore, UploadMeterMiddleware, current_upload
from uploadmeter.core import UploadRecord
from uploadmeter.ui import render_assets, render_file_upload
from uploadmeter.ui._render import asset_version

VOID = {"input", "img", "link", "meta", "br", "hr", "source", "path"}


@dataclass
class Element:
    tag: str
    attrs: dict[str, str | None]
    parent: Element | None = None
    children: list[Element] = field(default_factory=list)
    text: str = ""

    def classes(self) -> list[str]:
        return (self.attrs.get("class") or "").split()

    def walk(self) -> Any:
        yield self
        for child in self.children:
            yield from child.walk()

    def all_text(self) -> str:
        return self.text + "".join(c.all_text() for c in self.children)


class Tree(HTMLParser):
    """Parses the widget strictly enough to catch unclosed or misnested tags."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Element("#root", {})
        self.stack = [self.root]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        el = Element(tag, dict(attrs), self.stack[-1])
        self.stack[-1].children.append(el)
        if tag not in VOID:
            self.stack.append(el)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.stack[-1].children.append(Element(tag, dict(attrs), self.stack[-1]))

    def handle_endtag(self, tag: str) -> None:
        if tag in VOID:
            return
        assert self.stack[-1].tag == tag, f"</{tag}> closes <{self.stack[-1].tag}>"
        self.stack.pop()

    def handle_data(self, data: str) -> None:
        self.stack[-1].text += data


def parse(html: str) -> Element:
    tree = Tree()
    tree.feed(html)
    tree.close()
    assert tree.stack == [tree.root], "unclosed: " + ", ".join(e.tag for e in tree.stack[1:])
    return tree.root


def by_id(root: Element, id: str) -> Element:
    found = [e for e in root.walk() if e.attrs.get("id") == id]
    assert len(found) == 1, (id, len(found))
    return found[0]


# -- markup ----------------------------------------------------------------------------------


def test_stage_ids_mirror_the_jsf_component() -> None:
    root = parse(render_file_upload("doc", "<p>Done.</p>"))
    widget = by_id(root, "doc_component")
    assert widget.attrs["data-uploadmeter"] == "doc"
    assert "uploadmeter" in widget.classes()
    for suffix in ("_stage1", "_stage2", "_stage3", "_error", "_progressBar", "_progressBarlabel"):
        by_id(root, "doc" + suffix)
    # Only stage 1 shows without the script.
    assert "hidden" not in by_id(root, "doc_stage1").attrs
    for hidden in ("doc_stage2", "doc_stage3", "doc_error", "doc_frame"):
        assert "hidden" in by_id(root, hidden).attrs, hidden
    assert by_id(root, "doc_progressBarlabel").all_text() == "0%"
    assert by_id(root, "doc_error").attrs["role"] == "alert"


def test_bar_has_exactly_100_segments_and_aria() -> None:
    root = parse(render_file_upload("doc"))
    bar = by_id(root, "doc_progressBar")
    assert [c.tag for c in bar.children] == ["span"] * 100
    assert all(c.classes() == ["uploadmeter-cell", "passive"] for c in bar.children)
    assert bar.attrs["role"] == "progressbar"
    assert bar.attrs["aria-valuemin"] == "0"
    assert bar.attrs["aria-valuemax"] == "100"
    assert bar.attrs["aria-valuenow"] == "0"
    assert bar.attrs["aria-label"]


def test_file_input_button_and_iframe() -> None:
    root = parse(render_file_upload("photos", multiple=True, accept="image/*"))
    field_ = by_id(root, "photos")
    assert field_.tag == "input"
    assert field_.attrs["type"] == "file"
    assert field_.attrs["name"] == "photos"
    assert "multiple" in field_.attrs
    assert field_.attrs["accept"] == "image/*"
    button = by_id(root, "photos_upload")
    # Without the script the button still posts the file: these override the form's own.
    assert button.attrs["type"] == "submit"
    assert button.attrs["formmethod"] == "post"
    assert button.attrs["formenctype"] == "multipart/form-data"
    assert "formaction" not in button.attrs
    assert button.all_text() == "Upload"
    assert [c.tag for c in button.children] == ["svg", "span"]
    frame = by_id(root, "photos_frame")
    assert frame.tag == "iframe"
    assert frame.attrs["name"] == "photos_frame"
    assert by_id(root, "photos_cancel").attrs["type"] == "button"

    single = parse(render_file_upload("one"))
    assert "multiple" not in by_id(single, "one").attrs
    assert "accept" not in by_id(single, "one").attrs


def test_icon_action_and_labels() -> None:
    root = parse(
        render_file_upload(
            "doc",
            upload_icon="/static/up.png",
            action="/elsewhere?x=1",
            button_label="Send",
            cancel_label="Stop",
            retry_label="Again",
        )
    )
    button = by_id(root, "doc_upload")
    assert button.attrs["formaction"] == "/elsewhere?x=1"
    img = button.children[0]
    assert (img.tag, img.attrs["src"], img.attrs["alt"]) == ("img", "/static/up.png", "")
    assert button.all_text() == "Send"
    assert by_id(root, "doc_cancel").all_text() == "Stop"
    retry = [e for e in by_id(root, "doc_error").walk() if "data-uploadmeter-reset" in e.attrs]
    assert [e.all_text() for e in retry] == ["Again"]


def test_style_class_hooks() -> None:
    root = parse(
        render_file_upload(
            "doc",
            style_class="progressBarDiv",
            progress_bar_style_class="progressBar",
            cell_style_class="progressBarCell",
            active_style_class="progressBarActiveCell",
        )
    )
    widget = by_id(root, "doc_component")
    assert widget.classes() == ["uploadmeter", "progressBarDiv"]
    assert widget.attrs["data-active-class"] == "progressBarActiveCell"
    bar = by_id(root, "doc_progressBar")
    assert bar.classes() == ["uploadmeter-bar", "progressBar"]
    assert all(
        c.classes() == ["uploadmeter-cell", "passive", "progressBarCell"] for c in bar.children
    )


def test_everything_from_arguments_is_escaped() -> None:
    hostile = '"><script>alert(1)</script>'
    html = render_file_upload(
        "x" + hostile,
        accept=hostile,
        button_label="<b>Go</b>",
        style_class=hostile,
        upload_icon=hostile,
    )
    assert "<script>alert" not in html
    assert "<b>Go</b>" not in html
    root = parse(html)
    field_ = by_id(root, "x" + hostile)
    assert field_.attrs["name"] == "x" + hostile
    assert field_.attrs["accept"] == hostile
    assert by_id(root, "x" + hostile + "_upload").all_text() == "<b>Go</b>"
    assert [e for e in root.walk() if e.tag == "script" and "src" not in e.attrs] == []


def test_content_html_is_stage_three() -> None:
    root = parse(
        render_file_upload(
            "doc", '<p class="ok">Saved <span data-uploadmeter-result="name"></span></p>'
        )
    )
    stage3 = by_id(root, "doc_stage3")
    content = [e for e in stage3.walk() if "uploadmeter-content" in e.classes()]
    assert len(content) == 1
    assert [c.tag for c in content[0].children] == ["p"]
    assert content[0].children[0].attrs["class"] == "ok"
    # no content, no wrapper
    bare = by_id(parse(render_file_upload("doc")), "doc_stage3")
    assert not [e for e in bare.walk() if "uploadmeter-content" in e.classes()]


def test_settings_come_from_the_middleware() -> None:
    meter = UploadMeterMiddleware(
        lambda e, s: [], "k", MemoryStore(), prefix="/um/", max_content_length=5_000_000
    )
    root = parse(
        render_file_upload(
            "doc", middleware=meter, script_name="/app", poll_interval=0.25, first_poll=1
        )
    )
    widget = by_id(root, "doc_component")
    assert widget.attrs["data-endpoint"] == "/app/um"
    assert widget.attrs["data-poll-interval"] == "250"
    assert widget.attrs["data-first-poll"] == "1000"
    assert widget.attrs["data-max-content-length"] == "5000000"
    links = [e.attrs["href"] for e in root.walk() if e.tag == "link"]
    scripts = [e.attrs["src"] for e in root.walk() if e.tag == "script"]
    version = asset_version()
    assert links == [f"/app/um/static/uploadmeter.css?v={version}"]
    assert scripts == [
        f"/app/um/static/uploadmeter-format.js?v={version}",
        f"/app/um/static/uploadmeter.js?v={version}",
    ]
    assert re.fullmatch(r"[0-9a-f]{12}", version)


def test_defaults_and_assets_once_per_page() -> None:
    root = parse(render_file_upload("doc", include_assets=False))
    widget = by_id(root, "doc_component")
    assert widget.attrs["data-endpoint"] == "/uploadmeter"
    assert widget.attrs["data-poll-interval"] == "400"
    assert widget.attrs["data-first-poll"] == "500"
    assert "data-max-content-length" not in widget.attrs
    assert not [e for e in root.walk() if e.tag in ("link", "script")]
    head = parse(render_assets(prefix="/um"))
    assert [e.tag for e in head.children] == ["link", "script", "script"]
    assert all("defer" in e.attrs for e in head.children[1:])  # in order: the formatter first


def test_renderer_returns_markup() -> None:
    html = render_file_upload("doc")
    assert isinstance(html, Markup)
    assert render_file_upload("doc") == html  # deterministic


# -- a plain WSGI app ------------------------------------------------------------------------


def plain_wsgi_app(saved: list[tuple[str, bytes]]) -> UploadMeterMiddleware:
    """A werkzeug-only app: the page renders the widget, the view saves and reports."""

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        request = Request(environ)
        if request.method == "POST" and request.path == "/upload":
            _, _, files = parse_form_data(environ)
            upload = files.get("doc")
            handle = current_upload(environ)
            if upload is None or not upload.filename:
                if handle is not None:
                    handle.fail("Choose a file first.", status=400)
                return Response("no file", 400)(environ, start_response)
            saved.append((upload.filename, upload.read()))
            if handle is not None:
                handle.set_result(saved=upload.filename)
            return Response("saved")(environ, start_response)
        widget = render_file_upload(
            "doc", "<p>Saved.</p>", middleware=meter, script_name=request.script_root
        )
        page = f'<!doctype html><form action="/upload" method="post">{widget}</form>'
        return Response(page, mimetype="text/html")(environ, start_response)

    meter = UploadMeterMiddleware(app, "plain secret", MemoryStore())
    return meter


def test_plain_wsgi_app_serves_widget_script_and_progress() -> None:
    saved: list[tuple[str, bytes]] = []
    with serve_in_thread(plain_wsgi_app(saved)) as url:
        client = Client(url)
        status, headers, page = client.request("GET", "/")
        assert status == 200
        assert "uploadmeter_session" in client.cookies  # the page gives the session
        root = parse(page.decode())
        widget = by_id(root, "doc_component")
        script = next(e.attrs["src"] for e in root.walk() if e.tag == "script")
        css = next(e.attrs["href"] for e in root.walk() if e.tag == "link")
        assert widget.attrs["data-endpoint"] == "/uploadmeter"

        status, headers, body = client.request("GET", script or "")
        assert status == 200
        assert "javascript" in headers["content-type"]
        assert b"window.UploadMeter" in body
        status, headers, body = client.request("GET", css or "")
        assert status == 200
        assert headers["content-type"].startswith("text/css")

        uid = new_upload_id()
        body, ctype = multipart_body([("doc", "a.txt", b"x" * 200_000)])
        upload = RawUpload(client, f"/upload?uploadmeter_id={uid}", body, ctype)
        upload.send_rest()
        assert upload.finish()[0] == 200
        record = client.progress(uid)
        assert record["state"] == "done"
        assert record["result"] == {"saved": "a.txt"}
        assert saved == [("a.txt", b"x" * 200_000)]

        uid = new_upload_id()
        body, ctype = multipart_body([("doc", "", b"")])
        upload = RawUpload(client, f"/upload?uploadmeter_id={uid}", body, ctype)
        upload.send_rest()
        assert upload.finish()[0] == 400
        record = client.progress(uid)
        assert record["state"] == "error"
        assert record["error"] == {"status": 400, "message": "Choose a file first."}


@pytest.mark.parametrize("name", ["uploadmeter-format.js", "uploadmeter.js", "uploadmeter.css"])
def test_static_files_have_no_external_references(name: str) -> None:
    text = resources.files("uploadmeter.ui").joinpath("static", name).read_text()
    assert not re.search(r"https?://", text), "no external dependencies"
    if name.endswith(".js"):
        assert ".innerHTML" not in text and "insertAdjacentHTML" not in text
        assert "document.write" not in text and "eval(" not in text


def test_progress_json_is_what_the_script_reads() -> None:
    """The fields uploadmeter.js reads exist in the endpoint's JSON."""
    data = UploadRecord(id="abcdefgh", content_length=10).to_json_dict()
    script = resources.files("uploadmeter.ui").joinpath("static", "uploadmeter.js").read_text()
    for key in re.findall(r"data\.([a-z_]+)", script):
        assert key in data, key
    json.dumps(data)
