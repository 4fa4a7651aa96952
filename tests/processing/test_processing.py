"""Processing progress: real numbers from a thread or another process into the upload's
own record, read back through the progress endpoint over HTTP.  Each step is gated by
the test (events), so what a poll sees is decided, not timed."""

from __future__ import annotations

import multiprocessing
import sys
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from werkzeug.formparser import parse_form_data

from tests.support.chunked_support import HookedStore, serve_fast
from tests.support.servers import Client, multipart_body, new_upload_id, wait_until
from uploadmeter import InvalidUploadId, MemoryStore, UploadMeterMiddleware, current_upload
from uploadmeter.core import UPLOADING, TrackerSettings, UploadRecord
from uploadmeter.core._records import record_key
from uploadmeter.processing import (
    ProcessingCancelled,
    ProcessingFailed,
    ProcessingTask,
    request_task,
    task,
)
from uploadmeter.stores import open_store

SECRET = "processing-test"
Steps = list[threading.Event]


def page(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "text/html")])
    return [b"<p>page"]


def make_meter(store: Any = None, inner: Any = page, **kw: Any) -> UploadMeterMiddleware:
    kw.setdefault("update_interval", 0.0)  # every advance is written: polls see each step
    return UploadMeterMiddleware(inner, SECRET, store or MemoryStore(), **kw)


def session_of(meter: UploadMeterMiddleware, client: Client) -> str:
    session = meter.sessions.find(client.cookie_header())
    assert session is not None
    return session


@pytest.fixture
def site() -> Any:
    meter = make_meter()
    with serve_fast(meter) as url:
        client = Client(url)
        client.request("GET", "/uploadmeter/progress?id=session-check")
        yield meter, client


def run_gated(steps: Steps, body: Callable[[int], None]) -> threading.Thread:
    """Run ``body(i)`` for each step once the test sets ``steps[i]``."""

    def work() -> None:
        for i, step in enumerate(steps):
            assert step.wait(10)
            body(i)

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    return thread


def test_task_reports_real_progress_from_a_thread(site: Any) -> None:
    meter, client = site
    upload_id = new_upload_id()
    t = task(meter, session_of(meter, client), upload_id, "compressing", total=1000)
    steps = [threading.Event() for _ in range(4)]

    def body(i: int) -> None:
        if i == 0:
            t.start()
        elif i == 1:
            t.advance(250)
        elif i == 2:
            t.set_phase("thumbnails", total=4)
            t.advance(1)
        else:
            t.advance(3)
            t.finish(url="/files/1.zip")

    thread = run_gated(steps, body)
    assert client.progress(upload_id)["state"] == "unknown"
    seen = [0.0]
    for step in steps:
        step.set()
        wait_until(lambda: client.progress(upload_id)["updated_at"] not in seen)
        record = client.progress(upload_id)
        seen.append(record["updated_at"])
        if record["state"] != "done":
            assert record["state"] == "processing" and record["percentage"] == 100
    thread.join(5)
    record = client.progress(upload_id)
    assert record["state"] == "done"
    assert plain(record["processing"]) == {
        "phase": "thumbnails",
        "done": 4,
        "total": 4,
        "percentage": 100,
    }
    assert record["result"] == {"url": "/files/1.zip"}


def test_each_poll_sees_the_step_it_waited_for(site: Any) -> None:
    meter, client = site
    upload_id = new_upload_id()
    t = task(meter, session_of(meter, client), upload_id, "scanning", total=400).start()
    for done in (100, 200, 300):
        t.update(done)
        assert plain(client.progress(upload_id)["processing"]) == {
            "phase": "scanning",
            "done": done,
            "total": 400,
            "percentage": done * 100 // 400,
        }
    t.advance(0, total=None)  # total may stay unknown
    t.set_phase("indexing")
    assert client.progress(upload_id)["processing"]["percentage"] is None


def test_exceptions_end_in_error_without_leaking_details(site: Any) -> None:
    meter, client = site
    session = session_of(meter, client)
    failing, crashing = new_upload_id(), new_upload_id()
    with pytest.raises(ProcessingFailed), task(meter, session, failing, "checking"):
        raise ProcessingFailed("The archive is encrypted.", status=422)
    record = client.progress(failing)
    assert record["state"] == "error"
    assert record["error"] == {"status": 422, "message": "The archive is encrypted."}
    with pytest.raises(RuntimeError), task(meter, session, crashing, "checking"):
        raise RuntimeError("/srv/secret/path exploded")
    record = client.progress(crashing)
    assert record["state"] == "error"
    assert record["error"] == {"status": 500, "message": "Processing failed."}


def test_cancel_stops_the_task_at_its_next_advance(site: Any) -> None:
    meter, client = site
    upload_id = new_upload_id()
    t = task(meter, session_of(meter, client), upload_id, "transcoding", total=10).start()
    t.advance(1)
    status, _, _ = client.request("POST", f"/uploadmeter/cancel?id={upload_id}")
    assert status == 200
    assert t.cancelled
    with pytest.raises(ProcessingCancelled), t:
        t.advance(1)
    record = client.progress(upload_id)
    assert record["state"] == "cancelled"
    # A cancelled upload cannot be processed again.
    with pytest.raises(ProcessingCancelled):
        task(meter, session_of(meter, client), upload_id, "again").start()


def _work_in_child(store_url: str, session: str, upload_id: str, steps: Any) -> None:
    settings = TrackerSettings(update_interval=0.0)  # write every step: the test polls each
    t = task(open_store(store_url), session, upload_id, "hashing", total=3, settings=settings)
    with t:
        for step in steps:
            assert step.wait(20)
            t.advance(1)


def test_task_in_another_process_with_the_sqlite_store(sqlite_path: str) -> None:
    url = "sqlite://" + sqlite_path
    meter = make_meter(open_store(url))
    with serve_fast(meter) as base:
        client = Client(base)
        client.request("GET", "/uploadmeter/progress?id=session-check")
        upload_id = new_upload_id()
        ctx = multiprocessing.get_context("fork")
        steps = [ctx.Event() for _ in range(3)]
        child = ctx.Process(
            target=_work_in_child, args=(url, session_of(meter, client), upload_id, steps)
        )
        child.start()
        wait_until(lambda: client.progress(upload_id)["state"] == "processing")
        for done, step in enumerate(steps[:2], start=1):
            step.set()
            wait_until(lambda d=done: client.progress(upload_id)["processing"]["done"] == d)
        steps[2].set()
        child.join(20)
        assert child.exitcode == 0
        record = client.progress(upload_id)
        assert record["state"] == "done" and record["processing"]["done"] == 3


# -- with the middleware's own uploads ----------------------------------------------------------


class ProcessingApp:
    """A WSGI app that receives an upload and processes it after answering."""

    def __init__(self, announce: bool) -> None:
        self.announce = announce
        self.meter: UploadMeterMiddleware | None = None
        self.steps = [threading.Event() for _ in range(2)]
        self.threads: list[threading.Thread] = []
        self.inline = False

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        if environ["REQUEST_METHOD"] == "GET":
            return page(environ, start_response)
        _, _, files = parse_form_data(environ)
        size = len(files["doc"].read())
        upload = current_upload(environ)
        assert upload is not None and upload.session is not None and self.meter is not None
        if self.announce:
            upload.start_processing("compressing", total=size)
        t = task(self.meter, upload.session, upload.id, "compressing", total=size)
        if self.inline:  # processing finishes before the view answers
            with t:
                t.advance(size)
                t.set_result(archive="inline.zip")
        else:
            self.threads.append(run_gated(self.steps, lambda i: self._step(t, i, size)))
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"queued"]

    @staticmethod
    def _step(t: ProcessingTask, i: int, size: int) -> None:
        if i == 0:
            t.start()
            t.advance(size // 2)
        else:
            t.advance(size - size // 2)
            t.finish(archive="doc.zip")


def post_upload(client: Client, upload_id: str) -> int:
    body, ctype = multipart_body([("doc", "doc.txt", b"z" * 50_000)])
    status, _, _ = client.request(
        "POST", f"/upload?uploadmeter_id={upload_id}", body, {"Content-Type": ctype}
    )
    return status


@pytest.mark.parametrize("inline", [False, True], ids=["background", "inline"])
def test_start_processing_goes_from_uploading_to_processing_never_done(inline: bool) -> None:
    app = ProcessingApp(announce=True)
    app.inline = inline
    meter = app.meter = make_meter(inner=app)
    with serve_fast(meter) as url:
        client = Client(url)
        client.request("GET", "/uploadmeter/progress?id=session-check")
        upload_id = new_upload_id()
        assert post_upload(client, upload_id) == 200
        record = client.progress(upload_id)
        if inline:
            assert record["state"] == "done"  # the middleware did not overwrite the task
            assert record["result"] == {"archive": "inline.zip"}
            return
        assert record["state"] == "processing"
        assert plain(record["processing"]) == {
            "phase": "compressing",
            "done": 0,
            "total": 50_000,
            "percentage": 0,
        }
        app.steps[0].set()
        wait_until(lambda: client.progress(upload_id)["processing"]["done"] == 25_000)
        app.steps[1].set()
        app.threads[0].join(5)
        record = client.progress(upload_id)
        assert record["state"] == "done" and record["result"] == {"archive": "doc.zip"}
        assert record["bytes_received"] == record["content_length"]


def test_a_task_after_the_middleware_said_done_reopens_the_record() -> None:
    app = ProcessingApp(announce=False)
    meter = app.meter = make_meter(inner=app)
    with serve_fast(meter) as url:
        client = Client(url)
        client.request("GET", "/uploadmeter/progress?id=session-check")
        upload_id = new_upload_id()
        assert post_upload(client, upload_id) == 200
        assert client.progress(upload_id)["state"] == "done"
        app.steps[0].set()
        wait_until(lambda: client.progress(upload_id)["state"] == "processing")
        app.steps[1].set()
        app.threads[0].join(5)
        assert client.progress(upload_id)["state"] == "done"


def test_start_processing_after_a_cancel_raises() -> None:
    seen: list[str] = []

    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        if environ["REQUEST_METHOD"] == "GET":
            return page(environ, start_response)
        upload = current_upload(environ)
        assert upload is not None
        environ["wsgi.input"].read(int(environ["CONTENT_LENGTH"]))
        meter.store.set(f"cancel:{upload.session}:{upload.id}", "1", 60)  # cancelled now
        try:
            upload.start_processing("compressing")
        except Exception as exc:  # UploadCancelled, a werkzeug ClientDisconnected
            seen.append(type(exc).__name__)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    meter = make_meter(inner=app)
    with serve_fast(meter) as url:
        client = Client(url)
        client.request("GET", "/uploadmeter/progress?id=session-check")
        post_upload(client, new_upload_id())
    assert seen == ["UploadCancelled"]


# -- API details ------------------------------------------------------------------------------


class CountingStore(MemoryStore):
    def __init__(self) -> None:
        super().__init__()
        self.sets = 0

    def set(self, key: str, value: str, ttl: float) -> None:
        self.sets += 1
        super().set(key, value, ttl)


def test_writes_are_throttled() -> None:
    store = CountingStore()
    meter = make_meter(store, update_interval=3600)
    with task(meter, "c.session", new_upload_id(), "counting", total=100_000) as t:
        for _ in range(100_000):
            t.advance(1)
    assert store.sets <= 3  # start, reaching the total, the end


def test_request_task_needs_a_session_and_ids_are_checked() -> None:
    meter = make_meter()
    with pytest.raises(LookupError):
        request_task(meter, {}, new_upload_id(), "x")
    with pytest.raises(InvalidUploadId):
        task(meter, "c.s", "../bad", "x")
    cookie = meter.sessions.issue(https=False)[1].split(";")[0]
    t = request_task(meter, {"HTTP_COOKIE": cookie}, "abcdefgh", "x")
    assert isinstance(t, ProcessingTask)


# -- throttle, ordering and races ---------------------------------------------------------------


def test_threads_sharing_a_task_lose_no_advance() -> None:
    meter = make_meter(update_interval=3600)
    t = task(meter, "c.session", new_upload_id(), "hashing").start()
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible: races show up
    try:
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda _: [t.advance(1) for _ in range(2000)], range(8)))
    finally:
        sys.setswitchinterval(interval)
    assert t.done == 16_000


def test_percentage_never_goes_backwards() -> None:
    store = MemoryStore()
    meter = make_meter(store)
    session, upload_id = "c.session", new_upload_id()
    t = task(meter, session, upload_id, "scanning", total=100).start()

    def shown() -> Any:
        record = meter.records.load(session, upload_id)
        assert record is not None
        return record.to_json_dict()["processing"]

    t.update(60)
    t.update(40)  # e.g. a pool thread reporting late: ignored
    assert (t.done, shown()["percentage"]) == (60, 60)
    t.advance(10, total=100)  # the same total again is fine
    with pytest.raises(ValueError, match="set_phase"):
        t.advance(10, total=1000)  # would drop the bar from 70 % to 8 %
    assert shown()["percentage"] == 70
    t.set_phase("indexing")  # a new count starts at 0 on purpose
    t.advance(5, total=10)  # a total learnt late
    assert plain(shown()) == {"phase": "indexing", "done": 5, "total": 10, "percentage": 50}


def test_reaching_the_total_writes_once_then_the_throttle_holds() -> None:
    store = CountingStore()
    meter = make_meter(store, update_interval=3600)
    t = task(meter, "c.session", new_upload_id(), "counting", total=10).start()
    before = store.sets
    t.update(10)
    for _ in range(100):
        t.update(10)
        t.advance(0)
    assert store.sets == before + 1


@pytest.mark.parametrize("end", ["finish", "fail"])
def test_the_end_writes_the_numbers_a_throttled_advance_left_unwritten(end: str) -> None:
    store = MemoryStore()
    meter = make_meter(store, update_interval=3600)
    session, upload_id = "c.session", new_upload_id()
    t = task(meter, session, upload_id, "compressing", total=100).start()
    t.advance(30)  # throttled: not written yet
    record = meter.records.load(session, upload_id)
    assert record is not None and plain(record.processing) == {
        "phase": "compressing",
        "done": 0,
        "total": 100,
    }
    t.finish() if end == "finish" else t.fail("Broken archive.")
    record = meter.records.load(session, upload_id)
    assert record is not None and record.state == ("done" if end == "finish" else "error")
    assert plain(record.processing) == {"phase": "compressing", "done": 30, "total": 100}


def test_a_result_set_before_start_is_shown_from_the_first_write() -> None:
    store = MemoryStore()
    meter = make_meter(store)
    session, upload_id = "c.session", new_upload_id()
    t = task(meter, session, upload_id, "compressing")
    t.set_result(original="report.pdf")
    t.start()
    record = meter.records.load(session, upload_id)
    assert record is not None and record.result == {"original": "report.pdf"}


def test_a_cancel_made_while_the_task_starts_is_not_lost() -> None:
    store = HookedStore()
    meter = make_meter(store)
    session, upload_id = "c.session", new_upload_id()
    store.set(record_key(session, upload_id), UploadRecord(upload_id, UPLOADING).dumps(), 60)
    # The user cancels between the task's read of the record and its first write.
    store.after_get(
        record_key(session, upload_id),
        lambda: meter.records.request_cancel(session, upload_id),
    )
    with pytest.raises(ProcessingCancelled):
        task(meter, session, upload_id, "compressing").start()
    record = meter.records.load(session, upload_id)
    assert record is not None and record.state == "cancelled"


def test_processing_records_when_it_began_so_the_upload_time_excludes_it() -> None:
    from uploadmeter import MemoryStore
    from uploadmeter.core import UploadRecord
    from uploadmeter.core._records import record_key
    from uploadmeter.processing import task

    store = MemoryStore()
    t = task(store, "c.session", "upload-123456", "compressing", total=10)
    with t:
        t.advance(4)
        t.set_phase("thumbnails", total=2)
        t.advance(2)
    record = UploadRecord.loads(store.get(record_key("c.session", "upload-123456")) or "")
    assert record.state == "done" and record.processing is not None
    began = record.processing["started_at"]
    assert record.started_at <= began <= (record.finished_at or 0)
    assert t.started_at == began  # kept across the phase change


def plain(processing: dict[str, Any] | None) -> dict[str, Any]:
    """The processing numbers without the clock (checked on its own above)."""
    return {k: v for k, v in (processing or {}).items() if k != "started_at"}
