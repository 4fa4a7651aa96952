"""uploadmeter's own endpoints against hostile input, through HTTP on a real server.

* Names XML cannot carry (U+FFFE, U+FFFF) in chunk and tus uploads: the polls stay valid.
* Every endpoint bounds what it reads: a merge request or a share's code form is a few KB;
  a bigger one is answered 413 before its body is read, whatever its framing.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import xml.etree.ElementTree as ET
from typing import Any

import pytest
from chunked_app import read_completions
from chunked_support import ChunkClient, ChunkedFile, served

TUS = "/uploadmeter/tus/"
V = {"Tus-Resumable": "1.0.0"}
# Legal in a file name and in JSON, not in XML 1.0.
NOT_XML_NAME = "report\ufffe v2\uffff.pdf"
SHOWN = "report\ufffd v2\ufffd.pdf"


@pytest.fixture
def server(tmp_path: Any) -> Any:
    with served(str(tmp_path)) as s:
        yield s


def polls(c: ChunkClient, upload_id: str) -> tuple[dict[str, Any], ET.Element]:
    """The JSON and the XML poll of ``upload_id``, both parsed (strict UTF-8)."""
    status, _, body = c.request("GET", f"/uploadmeter/progress?id={upload_id}")
    assert status == 200
    record = json.loads(body.decode("utf-8"))
    status, headers, body = c.request("GET", f"/uploadmeter/progress?id={upload_id}&format=xml")
    assert status == 200 and headers["content-type"].startswith("text/xml")
    return record, ET.fromstring(body)  # raises on a malformed document


def field_names(xml: ET.Element) -> list[str | None]:
    fields = xml.find("fields")
    assert fields is not None
    return [f.get("filename") for f in fields]


# -- names XML cannot carry (issue 10, item 12) ---------------------------------------------


def test_chunk_names_xml_cannot_carry_keep_both_polls_valid(server: Any) -> None:
    c = server.client()
    f = ChunkedFile.random(3 * 1024, 1024, filename=NOT_XML_NAME)
    status, body = c.post_chunk(f, 1)
    assert status == 200, body
    record, xml = polls(c, f.identifier)
    assert record["state"] == "uploading"
    assert [x["filename"] for x in record["fields"]] == [SHOWN]
    assert field_names(xml) == [SHOWN]

    c.post_chunk(f, 2)
    status, body = c.post_chunk(f, 3)
    assert status == 200, body
    record, xml = polls(c, f.identifier)
    assert record["state"] == "done" and xml.findtext("state") == "done"
    assert record["result"]["filename"] == SHOWN
    assert field_names(xml) == [SHOWN]
    (done,) = read_completions(server.directory)
    assert done["filename"] == NOT_XML_NAME  # the application gets the name as sent
    assert done["sha256"] == f.sha256


def test_tus_names_xml_cannot_carry_keep_both_polls_valid(server: Any) -> None:
    c = server.client()
    data = os.urandom(4096)
    meta = "filename " + base64.b64encode(NOT_XML_NAME.encode()).decode()
    status, headers, body = c.request(
        "POST", TUS, b"", {**V, "Upload-Length": str(len(data)), "Upload-Metadata": meta}
    )
    assert status == 201, body
    url = headers["location"]
    upload_id = url.rsplit("/", 1)[1]
    patch = {**V, "Content-Type": "application/offset+octet-stream"}
    assert c.request("PATCH", url, data[:1000], {**patch, "Upload-Offset": "0"})[0] == 204
    record, xml = polls(c, upload_id)
    assert record["state"] == "uploading"
    assert [x["filename"] for x in record["fields"]] == [SHOWN]
    assert field_names(xml) == [SHOWN]

    assert c.request("PATCH", url, data[1000:], {**patch, "Upload-Offset": "1000"})[0] == 204
    record, xml = polls(c, upload_id)
    assert record["state"] == "done" and xml.findtext("state") == "done"
    assert record["result"]["filename"] == SHOWN
    assert field_names(xml) == [SHOWN]
    (done,) = read_completions(server.directory)
    assert done["filename"] == NOT_XML_NAME
    assert done["sha256"] == hashlib.sha256(data).hexdigest()
