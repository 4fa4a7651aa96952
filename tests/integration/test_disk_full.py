"""A full disk is a temporary fault: on a small tmpfs, a chunk, a merge and a tus PATCH
that run out of space are answered ``507`` + ``Retry-After`` (never a permanent 415, never
a 500), nothing half-written counts as stored or stays behind, a failed merge ends the
record in ``error``, and both protocols finish once space returns.

Mounting a tmpfs needs root (CI runs as root)."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
from tusclient import client as tus_client
from tusclient.exceptions import TusCommunicationError

from tests.support.chunked_app import read_completions
from tests.support.chunked_support import ChunkedFile, Served, leftovers, served
from tests.support.servers import RawUpload, multipart_body

MIB = 1024 * 1024
TUS = "/uploadmeter/tus/"
V = {"Tus-Resumable": "1.0.0"}


@pytest.fixture
def disk(tmp_path: Any) -> Iterator[str]:
    """An 8 MiB tmpfs, unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)], check=True)
    try:
        yield str(mount)
    finally:
        subprocess.run(["umount", str(mount)], check=True)


class Filler:
    """Takes the disk's free space, but ``leave`` bytes; :meth:`free` gives it back."""

    def __init__(self, disk: str) -> None:
        self.path = os.path.join(disk, "filler")

    def fill(self, leave: int) -> None:
        free = shutil.disk_usage(os.path.dirname(self.path)).free
        with open(self.path, "ab") as f:
            f.write(b"\0" * max(free - leave, 0))  # tmpfs takes the pages as they are written

    def free(self) -> None:
        os.unlink(self.path)


@pytest.fixture
def site(disk: str) -> Iterator[tuple[Served, Filler]]:
    """The chunk and tus endpoints with their FileStore on the small disk."""
    with served(os.path.join(disk, "store")) as s:
        yield s, Filler(disk)


def assert_temporary(status: int, headers: dict[str, str], body: bytes) -> None:
    assert status == 507, body
    assert int(headers["retry-after"]) > 0
    assert b"disk is full" in body and b"Traceback" not in body


def test_a_chunk_that_does_not_fit_is_507_and_sent_again_later(site: tuple[Served, Filler]) -> None:
    s, filler = site
    store = s.directory
    f = ChunkedFile.random(3 * MIB, MIB, filename="big.bin")
    c = s.client()
    assert c.post_chunk(f, 1)[0] == 200
    filler.fill(leave=100 * 1024)
    status, h, raw = c.request(*_multipart_chunk(f, 2))
    assert_temporary(status, h, raw)
    # Nothing of it kept: no temp file, not stored, so the client sends it again.
    assert leftovers(store)["tmp"] == []
    assert c.test(f.params(2))[0] == 204
    filler.free()
    assert c.post_chunk(f, 2)[0] == 200
    status, body = c.post_chunk(f, 3)
    assert status == 200 and body["complete"] is True, body
    (done,) = read_completions(store)
    assert done["sha256"] == f.sha256


def test_a_merge_that_does_not_fit_is_507_ends_in_error_and_merges_later(
    site: tuple[Served, Filler],
) -> None:
    s, filler = site
    store = s.directory
    f = ChunkedFile.random(3 * MIB, MIB, filename="big.bin")
    c = s.client()
    assert c.post_chunk(f, 1)[0] == c.post_chunk(f, 2)[0] == 200
    # Room for the last chunk, not for the merged file: the merge answers 507, the
    # record says error, the partial merge is gone and the chunks stay.
    filler.fill(leave=MIB + MIB // 2)
    status, h, raw = c.request(*_multipart_chunk(f, 3))
    assert_temporary(status, h, raw)
    record = c.progress(f.identifier)
    assert record["state"] == "error" and record["error"]["status"] == 507, record
    assert "disk is full" in record["error"]["message"]
    assert leftovers(store)["tmp"] == []
    assert len(leftovers(store)["partial"]) == 4  # meta.json and the three chunks
    assert read_completions(store) == []

    # Space returns: the client's retry of the last chunk merges.
    filler.free()
    status, body = c.post_chunk(f, 3)
    assert status == 200 and body["complete"] is True, body
    assert c.progress(f.identifier)["state"] == "done"
    (done,) = read_completions(store)
    assert done["sha256"] == f.sha256
    assert leftovers(store) == {"tmp": [], "partial": []}


def _multipart_chunk(f: ChunkedFile, number: int) -> tuple[str, str, bytes, dict[str, str]]:
    """A chunk POST as ``Client.request`` arguments (to read its raw answer)."""
    parts = [(k, None, str(v).encode()) for k, v in f.params(number).items()]
    body, ctype = multipart_body([*parts, ("file", "blob", f.piece(number))])
    return "POST", "/uploadmeter/chunks", body, {"Content-Type": ctype}


def test_a_tus_patch_answers_507_keeps_what_is_whole_and_finishes_later(
    site: tuple[Served, Filler],
) -> None:
    s, filler = site
    store = s.directory
    data = os.urandom(3 * MIB)
    c = s.client()
    status, h, _ = c.request("POST", TUS, b"", {**V, "Upload-Length": str(len(data))})
    assert status == 201
    url = h["location"]
    filler.fill(leave=MIB)
    headers = {**V, "Content-Type": "application/offset+octet-stream", "Upload-Offset": "0"}
    status, h, raw = c.request("PATCH", url, data, headers)
    assert_temporary(status, h, raw)
    offset = int(c.request("HEAD", url, headers=V)[1]["upload-offset"])
    assert 0 < offset < len(data)
    # The offset is the truth: the file holds exactly those bytes, no torn piece.
    (upload_dir,) = [d for d, _, names in os.walk(os.path.join(store, "tus")) if names]
    with open(os.path.join(upload_dir, "data"), "rb") as stored:
        assert stored.read() == data[:offset]

    # A creation while the disk is full is 507 as well.
    status, h, raw = c.request("POST", TUS, b"", {**V, "Upload-Length": str(2 * MIB)})
    assert_temporary(status, h, raw)

    filler.free()
    rest = RawUpload(
        c,
        url,
        data[offset:],
        "application/offset+octet-stream",
        headers={**V, "X-HTTP-Method-Override": "PATCH", "Upload-Offset": str(offset)},
    )
    rest.send_rest()
    status, h, _ = rest.finish()
    assert status == 204 and h["upload-offset"] == str(len(data))
    (done,) = read_completions(store)
    assert done["sha256"] == hashlib.sha256(data).hexdigest()
    assert leftovers(store)["tmp"] == []


def test_tuspy_resumes_after_a_full_disk(site: tuple[Served, Filler], tmp_path: Any) -> None:
    s, filler = site
    store = s.directory
    source = tmp_path / "movie.mp4"
    source.write_bytes(os.urandom(3 * MIB))
    c = s.client()
    tus = tus_client.TusClient(s.url + TUS, headers={"Cookie": c.cookie_header()})
    first = tus.uploader(str(source))  # default options: the whole file in one PATCH
    first.set_url(first.create_url())  # created while there is room ...
    filler.fill(leave=MIB)  # ... then the disk fills up
    with pytest.raises(TusCommunicationError) as failed:
        first.upload()
    assert failed.value.status_code == 507
    filler.free()
    second = tus.uploader(str(source), url=first.url)  # the stored URL, a new client
    assert 0 < second.offset < 3 * MIB
    second.upload()
    (done,) = read_completions(store)
    assert done["sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()


def test_a_tus_concatenation_that_does_not_fit_is_507_and_joins_later(
    site: tuple[Served, Filler],
) -> None:
    """Room for the partial uploads, not for the final file: the final upload's creation
    answers 507 and leaves nothing; the partial uploads stay, and join once space returns."""
    s, filler = site
    store = s.directory
    parts = [os.urandom(MIB), os.urandom(MIB // 2)]
    c = s.client()
    urls = []
    for data in parts:
        headers = {**V, "Upload-Length": str(len(data)), "Upload-Concat": "partial"}
        status, h, _ = c.request("POST", TUS, b"", headers)
        assert status == 201
        urls.append(h["location"])
        patch = {**V, "Content-Type": "application/offset+octet-stream", "Upload-Offset": "0"}
        assert c.request("PATCH", h["location"], data, patch)[0] == 204
    before = sorted(d for d, _, names in os.walk(os.path.join(store, "tus")) if names)
    filler.fill(leave=MIB)
    final = {**V, "Upload-Concat": "final;" + " ".join(urls)}
    assert_temporary(*c.request("POST", TUS, b"", final))
    assert sorted(d for d, _, names in os.walk(os.path.join(store, "tus")) if names) == before
    assert leftovers(store)["tmp"] == [] and read_completions(store) == []

    filler.free()
    status, _, body = c.request("POST", TUS, b"", final)
    assert status == 201, body
    (done,) = read_completions(store)
    assert done["sha256"] == hashlib.sha256(parts[0] + parts[1]).hexdigest()
    assert leftovers(store)["tmp"] == []
