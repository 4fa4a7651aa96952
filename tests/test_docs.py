"""The documentation builds, its examples run, and what it states matches the code.

* the Sphinx site builds with warnings as errors (``-W --keep-going -n``: nitpicky, so a
  reference to a name that does not exist fails), and its doctests pass (``-b doctest``:
  the ``.. doctest::`` blocks of the pages and the ``>>>`` examples of the docstrings);
* the configuration table lists every middleware option and ``UPLOADMETER_*`` key with the
  code's default, and the component page every argument of the macro;
* the README fits on two screens, shows the set-up commands .ci/run and the demo use, and
  its Python quick starts run;
* every screen of the demo is described on the demo page, and the design's lineage is
  explained once (docs/lineage.rst), nowhere else.
"""

from __future__ import annotations

import inspect
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from tests.support.servers import ROOT, multipart_body, new_upload_id

pytest.importorskip("sphinx")
pytest.importorskip("furo")

DOCS = Path(ROOT) / "docs"
README = Path(ROOT) / "README.md"


def sphinx(builder: str, out: Path, doctrees: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-n", "-q", "-b", builder,
         "-d", str(doctrees), str(DOCS), str(out)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )  # fmt: skip


@pytest.fixture(scope="module")
def doctrees(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One parsed environment for both builders (the second one reuses it)."""
    return tmp_path_factory.mktemp("doctrees")


def test_html_builds_without_a_warning(doctrees: Path, tmp_path: Path) -> None:
    result = sphinx("html", tmp_path / "html", doctrees)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    index = (tmp_path / "html" / "index.html").read_text(encoding="utf-8")
    assert "widget-uploading.png" in index
    # The API pages are the module docstrings, with their members.
    flask_api = (tmp_path / "html" / "api" / "uploadmeter.flask.html").read_text(encoding="utf-8")
    assert 'id="uploadmeter.flask.UploadMeter"' in flask_api
    assert "CONFIG_DEFAULTS" in flask_api
    # The examples are included from examples/, not copied.
    quick = (tmp_path / "html" / "quickstart-flask.html").read_text(encoding="utf-8")
    assert "UPLOAD_FOLDER" in quick


def test_doctests_pass(doctrees: Path, tmp_path: Path) -> None:
    result = sphinx("doctest", tmp_path / "doctest", doctrees)
    report = (tmp_path / "doctest" / "output.txt").read_text(encoding="utf-8")
    assert result.returncode == 0, report + result.stderr
    summary = report.split("Doctest summary", 1)[1]
    tests = re.search(r"(\d+) tests", summary)
    assert tests and int(tests.group(1)) >= 10, report  # the pages' and the docstrings'
    assert "0 failures in tests" in report


# -- the configuration table ----------------------------------------------------------------


def list_table_rows(text: str) -> list[list[str]]:
    """The rows of the first ``list-table`` in ``text``: each cell's text, joined."""
    table = text.split(".. list-table::", 1)[1]
    rows: list[list[str]] = []
    for line in table.splitlines()[1:]:
        if line and not line.startswith(" "):
            break  # the end of the directive
        if line.startswith("   * - "):
            rows.append([line[7:]])
        elif line.startswith("     - "):
            rows[-1].append(line[7:])
        elif line.startswith("       ") and rows:
            rows[-1][-1] += " " + line.strip()
    return rows


def literal(cell: str) -> str | None:
    """``name`` at the start of a cell, or None."""
    match = re.match(r"``([^`]+)``", cell)
    return match.group(1) if match else None


def test_configuration_table_matches_the_code() -> None:
    from uploadmeter import UploadMeterMiddleware
    from uploadmeter.asgi import UploadMeterMiddleware as ASGIMiddleware
    from uploadmeter.core._config import OPTION_DEFAULTS
    from uploadmeter.core._shell import MeterOptions
    from uploadmeter.flask import CONFIG_DEFAULTS
    from uploadmeter.ui import render_file_upload

    rows = list_table_rows((DOCS / "configuration.rst").read_text(encoding="utf-8"))[1:]
    # The shells' own parameters, then the options both take (**options: MeterOptions),
    # whose defaults are core._config's.
    options = dict(inspect.signature(UploadMeterMiddleware).parameters)
    options.update(inspect.signature(ASGIMiddleware).parameters)
    for name in ("app", "options"):
        del options[name]
    assert set(MeterOptions.__annotations__) <= set(OPTION_DEFAULTS)
    kind = inspect.Parameter.KEYWORD_ONLY
    options.update(
        {
            name: inspect.Parameter(name, kind, default=OPTION_DEFAULTS[name])
            for name in MeterOptions.__annotations__
        }
    )
    component = inspect.signature(render_file_upload).parameters
    options.update({name: component[name] for name in ("poll_interval", "first_poll")})
    documented_options, documented_keys = set(), set()
    for setting_cell, default_cell, _ in rows:
        names = re.findall(r"``(\w+)``", setting_cell)
        option = next((n for n in names if not n.startswith("UPLOADMETER_")), None)
        key = next((n for n in names if n.startswith("UPLOADMETER_")), None)
        default = "required" if default_cell.startswith("required") else literal(default_cell)
        assert default is not None, default_cell
        if option is not None:
            documented_options.add(option)
            parameter = options[option]
            expected = (
                "required"
                if parameter.default is inspect.Parameter.empty
                else repr(parameter.default)
            )
            assert default == expected, (option, default, expected)
        if key is not None:
            documented_keys.add(key)
            # The Flask defaults are the middleware's, except where None defers to the app's
            # own setting (SECRET_KEY, MAX_CONTENT_LENGTH): the table says so in words.
            if default != "required":
                assert repr(CONFIG_DEFAULTS[key]) == default, (key, CONFIG_DEFAULTS[key])
            else:
                assert CONFIG_DEFAULTS[key] is None
        if option is not None and key is not None:
            assert key == "UPLOADMETER_" + option.upper()
    assert documented_options == set(options)
    assert documented_keys == set(CONFIG_DEFAULTS)


def test_installation_page_lists_every_extra() -> None:
    import configparser

    setup = configparser.ConfigParser()
    setup.read(Path(ROOT) / "setup.cfg")
    extras = set(setup["options.extras_require"])
    rows = list_table_rows((DOCS / "installation.rst").read_text(encoding="utf-8"))[1:]
    assert {literal(row[0]) for row in rows} == extras


def test_component_pages_list_every_macro_argument() -> None:
    template = (Path(ROOT) / "uploadmeter/ui/templates/uploadmeter/macros.html").read_text()
    signature = re.search(r"\{% macro file_upload\((.*?)\) -%\}", template, re.S)
    assert signature is not None
    arguments = {a.split("=")[0].strip() for a in signature.group(1).split(",")}
    rows = list_table_rows((DOCS / "component.rst").read_text(encoding="utf-8"))[1:]
    documented = {name for row in rows for name in re.findall(r"``(\w+)``", row[0])}
    assert documented == arguments
    # The chunked uploader's arguments, in the prose of the resumable page.
    template = (Path(ROOT) / "uploadmeter/ui/templates/uploadmeter/chunked.html").read_text()
    signature = re.search(r"\{% macro chunked_upload\((.*?)\) -%\}", template, re.S)
    assert signature is not None
    page = (DOCS / "resumable.rst").read_text(encoding="utf-8")
    for argument in (a.split("=")[0].strip() for a in signature.group(1).split(",")):
        assert f"``{argument}``" in page, argument


def test_progress_example_has_the_fields_of_a_real_answer() -> None:
    from werkzeug.test import Client

    from uploadmeter import UploadMeterMiddleware

    def app(environ: Any, start_response: Any) -> list[bytes]:
        environ["wsgi.input"].read()
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    client = Client(UploadMeterMiddleware(app, secret_key="docs", store="memory://"))
    client.get("/uploadmeter/session")
    upload_id = new_upload_id()
    body, content_type = multipart_body([("title", None, b"Quarterly"), ("doc", "r.pdf", b"%")])
    client.post(f"/upload?uploadmeter_id={upload_id}", data=body, content_type=content_type)
    real = client.get(f"/uploadmeter/progress?id={upload_id}").get_json()
    text = (DOCS / "http.rst").read_text(encoding="utf-8")
    block = text.split(".. code-block:: json", 1)[1].split("\n\n", 2)[1]
    documented = json.loads(block)
    assert set(documented) == set(real)
    assert set(documented["fields"][0]) == set(real["fields"][0])


# -- the README -----------------------------------------------------------------------------


def test_readme_fits_two_screens_and_keeps_the_set_up_commands() -> None:
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 150
    # The two set-up commands: the demo's, and what CI runs on a fresh machine.
    assert "pip install -e '.[demo]' && flask --app demo_app run" in text
    assert "\nbash .ci/run\n" in text
    ci = (Path(ROOT) / ".ci" / "run").read_text(encoding="utf-8")
    assert ci.rstrip().endswith("python3 -m pytest")
    assert "`python3 -m pytest`" in text
    image = re.search(r"!\[[^\]]+\]\(([^)]+\.png)\)", text)
    assert image and (Path(ROOT) / image.group(1)).is_file()
    # Every docs page the README links to exists.
    for link in re.findall(r"\]\((docs/[^)#]+|examples/[^)#]+)\)", text):
        assert (Path(ROOT) / link).exists(), link


def readme_python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)


def test_readme_flask_quick_start_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (flask_block,) = [b for b in readme_python_blocks() if "uploadmeter.flask" in b]
    monkeypatch.chdir(tmp_path)  # it saves doc.bin in the working directory
    namespace: dict[str, Any] = {"__name__": "readme_quick_start"}  # Flask(__name__)
    exec(compile(flask_block, "README.md", "exec"), namespace)
    client = namespace["app"].test_client()
    client.get("/uploadmeter/session")
    upload_id = new_upload_id()
    body, content_type = multipart_body([("document", "a.pdf", b"%PDF quick start")])
    answer = client.post(
        f"/upload?uploadmeter_id={upload_id}", data=body, content_type=content_type
    )
    assert answer.status_code == 200
    record = client.get(f"/uploadmeter/progress?id={upload_id}").get_json()
    assert record["state"] == "done" and record["result"] == {"saved": "doc.bin"}
    assert (tmp_path / "doc.bin").read_bytes() == b"%PDF quick start"


def test_readme_wsgi_quick_start_runs() -> None:
    from werkzeug.test import Client

    from uploadmeter import UploadMeterMiddleware

    (wsgi_block,) = [b for b in readme_python_blocks() if "def app(environ" in b]
    namespace: dict[str, Any] = {}
    exec(compile(wsgi_block, "README.md", "exec"), namespace)
    assert isinstance(namespace["app"], UploadMeterMiddleware)
    answer = Client(namespace["app"]).get("/uploadmeter/progress?id=" + new_upload_id())
    assert answer.status_code == 200 and answer.get_json()["state"] == "unknown"


def test_readme_asgi_quick_start_runs() -> None:
    pytest.importorskip("fastapi")
    pytest.importorskip("uploadmeter.asgi")  # the ASGI shell (issue 13) may not be merged yet
    (asgi_block,) = [b for b in readme_python_blocks() if "uploadmeter.asgi" in b]
    namespace: dict[str, Any] = {"__name__": "readme_quick_start"}
    exec(compile(asgi_block, "README.md", "exec"), namespace)
    from fastapi.testclient import TestClient

    answer = TestClient(namespace["app"]).get("/uploadmeter/progress?id=" + new_upload_id())
    assert answer.status_code == 200 and answer.json()["state"] == "unknown"


# -- the demo and the lineage ---------------------------------------------------------------


def test_every_screen_of_the_demo_is_described(tmp_path: Path) -> None:
    from demo_app import create_app

    app = create_app({"SECRET_KEY": "docs"}, instance_path=str(tmp_path))
    page = (DOCS / "demo.rst").read_text(encoding="utf-8")
    screens = [
        rule.rule
        for rule in app.url_map.iter_rules()
        if "GET" in (rule.methods or ()) and not rule.arguments  # not one file's download
    ]
    assert len(screens) >= 4
    for screen in screens:
        assert f"(``{screen}``)" in page, f"docs/demo.rst does not describe {screen}"


def test_the_lineage_is_explained_once() -> None:
    """Users cannot look up "the seed design": docs, README and the package name the
    design's tradition only in docs/lineage.rst."""
    found = []
    for folder in ("docs", "uploadmeter"):
        for path in sorted((Path(ROOT) / folder).rglob("*")):
            if path.suffix not in {".py", ".rst", ".html", ".js", ".css", ".md"}:
                continue
            if "_build" in path.parts or path.name == "lineage.rst":
                continue
            text = path.read_text(encoding="utf-8")
            found += [f"{path}: {m}" for m in re.findall(r".*\b(?:seed|JSF)\b.*", text)]
    readme = README.read_text(encoding="utf-8")
    found += re.findall(r".*\b(?:seed|JSF)\b.*", readme)
    assert found == []
    assert "JSF" in (DOCS / "lineage.rst").read_text(encoding="utf-8")


def test_docs_build_is_documented_as_the_suite_runs_it() -> None:
    command = "python -m sphinx -W --keep-going -n -b html docs docs/_build/html"
    assert command in README.read_text(encoding="utf-8")
    assert command in (DOCS / "installation.rst").read_text(encoding="utf-8")
    assert os.path.isfile(DOCS / "conf.py")


# -- the Django quick start -------------------------------------------------------------------

DJANGO_SETTINGS = """
SECRET_KEY = "docs"
DEBUG = False
ALLOWED_HOSTS = ["localhost"]
INSTALLED_APPS = ["uploadmeter.django", "mysite"]
MIDDLEWARE = ["django.middleware.csrf.CsrfViewMiddleware"]
ROOT_URLCONF = "mysite.urls"
TEMPLATES = [{"BACKEND": "django.template.backends.django.DjangoTemplates", "APP_DIRS": True}]
"""

DJANGO_CHECK = """
import io, os, re
from mysite.wsgi import application   # the page's wsgi.py
from werkzeug.test import Client

client = Client(application)
page = client.get("/")
assert page.status_code == 200 and b'id="document_component"' in page.data, page.data[:300]
token = re.search(rb'name="csrfmiddlewaretoken" value="([^"]+)"', page.data).group(1).decode()
data = os.urandom(100_000)
answer = client.post(
    "/upload?uploadmeter_id=abcdefgh12345678",
    data={"csrfmiddlewaretoken": token, "document": (io.BytesIO(data), "a.pdf")},
    headers={"Accept": "application/json"},
)
assert answer.status_code == 200, answer.data[:300]
saved = answer.json["saved"]
with open(os.path.join("uploads", saved), "rb") as f:
    assert f.read() == data
record = client.get("/uploadmeter/progress?id=abcdefgh12345678").json
assert record["state"] == "done" and record["result"] == {"saved": saved}, record
print("quick start ok")
"""


def test_django_quick_start_runs(tmp_path: Path) -> None:
    """The page's wsgi.py, views, URLs and template, as a project: the page renders the
    widget, a tracked upload with Django's CSRF token is saved and its record is done."""
    pytest.importorskip("django")
    page = (DOCS / "django.rst").read_text(encoding="utf-8")

    def block(start: str, end: str) -> str:
        text = page[page.index(start) : page.index(end, page.index(start))]
        return textwrap.dedent(text)

    project = tmp_path / "mysite"
    (project / "templates").mkdir(parents=True)
    (project / "__init__.py").write_text("")
    (project / "settings.py").write_text(DJANGO_SETTINGS)
    (project / "wsgi.py").write_text(block("    import os\n", "``asgi.py`` is the same"))
    code = block("    # mysite/views.py", "The template, ``mysite/templates/index.html``")
    views, urls = code.split("# mysite/urls.py")
    (project / "views.py").write_text(views)
    (project / "urls.py").write_text(urls)
    template = block("    {% load uploadmeter %}\n    <!doctype", "Run it with ``python manage.py")
    (project / "templates" / "index.html").write_text(template)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([ROOT, str(tmp_path)]),
        "TMPDIR": str(tmp_path),
    }
    env.pop("DJANGO_SETTINGS_MODULE", None)  # the page's wsgi.py sets it
    result = subprocess.run(
        [sys.executable, "-c", DJANGO_CHECK], cwd=tmp_path, env=env,
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "quick start ok" in result.stdout
