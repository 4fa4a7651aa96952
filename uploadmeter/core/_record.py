"""The progress record: what uploadmeter knows about one upload, and how it is shown.

A record is written by the worker that receives the upload and read by whichever worker
answers the poll, so it travels through the store as JSON.  Derived numbers (percentage,
ETA, average speed) are computed when the record is shown, never stored.
"""

from __future__ import annotations

import json
import math
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Any

if sys.version_info >= (3, 11):
    from enum import StrEnum
else:  # Python 3.10: what enum.StrEnum is
    from enum import Enum

    class StrEnum(str, Enum):
        def __str__(self) -> str:
            return str(self.value)


class State(StrEnum):
    """An upload's state.  Each is its string (``State.DONE == "done"``, and JSON writes
    it as ``"done"``), so records stored as plain strings compare equal to these.
    ``unknown`` is never stored: it is what a poll answers for an id this session has no
    record of (yet)."""

    UNKNOWN = "unknown"
    STARTING = "starting"
    UPLOADING = "uploading"
    PROCESSING = "processing"
    DONE = "done"
    ERROR = "error"
    CANCELLED = "cancelled"


UNKNOWN = State.UNKNOWN
STARTING = State.STARTING
UPLOADING = State.UPLOADING
PROCESSING = State.PROCESSING
DONE = State.DONE
ERROR = State.ERROR
CANCELLED = State.CANCELLED

IN_FLIGHT = frozenset({STARTING, UPLOADING, PROCESSING})
FINISHED = frozenset({DONE, ERROR, CANCELLED})


# What XML 1.0 cannot carry: C0 controls but tab, LF and CR; surrogates (no UTF-8 either);
# U+FFFE and U+FFFF.  Names and messages are only shown, so these become U+FFFD.
_NOT_XML = dict.fromkeys(
    [*range(0x09), 0x0B, 0x0C, *range(0x0E, 0x20), *range(0xD800, 0xE000), 0xFFFE, 0xFFFF],
    "\ufffd",
)


def shown_text(value: str) -> str:
    """``value`` as a record shows it: what XML 1.0 cannot carry replaced by U+FFFD.

    The one place that cleans names: every field a record lists passes here
    (:class:`FieldProgress`), and so does every text :meth:`UploadRecord.to_xml` writes.
    """
    # isprintable() is False for every character _NOT_XML maps, and far cheaper.
    return value if value.isprintable() else value.translate(_NOT_XML)


def _shown_or_none(value: str | None) -> str | None:
    return None if value is None else shown_text(value)


@dataclass(slots=True)
class FieldProgress:
    """One part of a multipart body, as far as it has arrived.

    Its names are cleaned on the way in (``shown_text``), whoever writes them: the
    form observer, the chunk and tus endpoints, a record read back from the store.
    """

    name: str | None
    filename: str | None = None
    content_type: str | None = None
    bytes_received: int = 0
    state: str = UPLOADING

    def __post_init__(self) -> None:
        # One test for the three names (records of hundreds of fields are read per poll).
        if not f"{self.name}{self.filename}{self.content_type}".isprintable():
            self.name = _shown_or_none(self.name)
            self.filename = _shown_or_none(self.filename)
            self.content_type = _shown_or_none(self.content_type)

    def to_dict(self) -> dict[str, Any]:
        """The field as the progress poll shows it (one item of ``fields``)."""
        return {
            "name": self.name,
            "filename": self.filename,
            "content_type": self.content_type,
            "bytes_received": self.bytes_received,
            "state": self.state,
        }


@dataclass
class UploadRecord:
    """Everything a poll can learn about one upload."""

    id: str
    state: str = STARTING
    bytes_received: int = 0
    content_length: int | None = None
    started_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)
    finished_at: float | None = None
    speed: float | None = None  # recent speed in bytes/s, smoothed by the tracker
    fields: list[FieldProgress] = field(default_factory=list)
    field_count: int = 0  # every part seen, also those past the tracked-field cap
    error: dict[str, Any] | None = None  # {"status": int, "message": str}
    # After the upload: {"phase", "done", "total", "started_at"}
    processing: dict[str, Any] | None = None
    result: dict[str, Any] | None = None  # what the app chose to tell the client
    # The JSON of the leading fields that are done, kept from one write to the next: a
    # finished field does not change again, and a record listing hundreds of them is
    # written more than once (at the last byte, then with the app's answer).
    _done_json: tuple[tuple[FieldProgress, ...], str] = field(
        default=((), ""), init=False, repr=False, compare=False
    )

    # -- derived -------------------------------------------------------------------------

    @property
    def percentage(self) -> int | None:
        """Whole-request progress, 0-100, or ``None`` when the length is unknown."""
        if self.state in (DONE, PROCESSING):
            return 100
        if not self.content_length:
            return None
        return min(100, self.bytes_received * 100 // self.content_length)

    @property
    def average_speed(self) -> float | None:
        """Bytes per second over the whole upload so far (``None`` before any byte)."""
        end = self.finished_at or self.updated_at
        elapsed = end - self.started_at
        if elapsed <= 0 or not self.bytes_received:
            return None
        return self.bytes_received / elapsed

    @property
    def eta(self) -> float | None:
        """Seconds left at the recent speed, when both length and speed are known."""
        if self.state != UPLOADING or not self.content_length:
            return None
        speed = self.speed or self.average_speed
        if not speed:
            return None
        return max(0.0, (self.content_length - self.bytes_received) / speed)

    def with_staleness(self, stale_after: float, now: float | None = None) -> UploadRecord:
        """Turn a record whose worker stopped reporting into an ``error``.

        A worker killed mid-upload never writes its final state; without this the record
        would read ``uploading`` until it expired.  A body that arrived whole is exempt:
        its outcome is the application's answer, which may take time (storing the file) or
        reach the store late (retried while the store is away), and must not read as a
        false ``error`` meanwhile.
        """
        now = time.time() if now is None else now
        if (
            self.state in IN_FLIGHT
            and now - self.updated_at > stale_after
            and not self._arrived_whole()
        ):
            self.state = ERROR
            self.finished_at = self.updated_at
            self.error = {
                "status": 500,
                "message": "The upload stopped reporting progress; its server process "
                "may have stopped.",
            }
        return self

    def _arrived_whole(self) -> bool:
        length = self.content_length
        return self.state == UPLOADING and length is not None and self.bytes_received >= length

    # -- storage -------------------------------------------------------------------------

    def dumps(self) -> str:
        """Compact JSON for the store (raw values only)."""
        head = json.dumps(self._raw(with_fields=False), separators=(",", ":"), ensure_ascii=False)
        # A record may list hundreds of fields and is written while the upload is read:
        # their JSON is built directly, and kept for the fields that are done.
        return f'{head[:-1]},"fields":[{self._fields_json()}]}}'

    def _fields_json(self) -> str:
        fields = self.fields
        done, text = self._done_json
        if done and (
            len(fields) < len(done)
            or any(a is not b for a, b in zip(done, fields[: len(done)], strict=True))
        ):
            done, text = (), ""  # the list was replaced: start over
        end = len(done)
        while end < len(fields) and fields[end].state == DONE:
            end += 1
        if end > len(done):
            more = ",".join([_field_json(f) for f in fields[len(done) : end]])
            text = f"{text},{more}" if text else more
            done = (*done, *fields[len(done) : end])
            self._done_json = (done, text)
        if end == len(fields):
            return text
        rest = ",".join([_field_json(f) for f in fields[end:]])
        return f"{text},{rest}" if text else rest

    @classmethod
    def loads(cls, text: str) -> UploadRecord:
        """The record from the JSON the store holds (:meth:`dumps` wrote it)."""
        data = json.loads(text)
        # Stored fields are [name, filename, content_type, bytes_received, state] lists
        # (objects, as earlier versions wrote them, are read too).
        fields = [
            FieldProgress(*f) if isinstance(f, list) else FieldProgress(**f)
            for f in data.pop("fields", [])
        ]
        return cls(fields=fields, **data)

    def _raw(self, *, with_fields: bool = True) -> dict[str, Any]:
        data = {
            "id": self.id,
            "state": self.state,
            "bytes_received": self.bytes_received,
            "content_length": self.content_length,
            "started_at": self.started_at,
            "updated_at": self.updated_at,
            "finished_at": self.finished_at,
            "speed": self.speed,
        }
        if with_fields:  # (the store encodes them itself: see dumps)
            data["fields"] = [f.to_dict() for f in self.fields]
        data["field_count"] = self.field_count
        data["error"] = self.error
        data["processing"] = self.processing
        data["result"] = self.result
        return data

    # -- presentation --------------------------------------------------------------------

    def to_json_dict(self) -> dict[str, Any]:
        """The public JSON shape of the progress endpoint."""
        data = self._raw()
        data["percentage"] = self.percentage
        data["average_speed"] = _round(self.average_speed)
        data["speed"] = _round(self.speed)
        data["eta"] = _round(self.eta)
        if self.processing is not None:
            total = self.processing.get("total")
            done = self.processing.get("done", 0)
            data["processing"] = dict(
                self.processing,
                percentage=min(100, done * 100 // total) if total else None,
            )
        return data

    def to_xml(self) -> bytes:
        """The component's ``<progress>`` XML document (docs/lineage.rst), with more data.

        Every text goes through ``shown_text``: no writer can make the XML malformed.
        """
        root = ET.Element("progress")
        pct = self.percentage
        ET.SubElement(root, "percentage").text = _xml_text(pct)
        if self.state != UNKNOWN:
            # Its client reads a missing clientId as "upload not seen yet".
            ET.SubElement(root, "clientId").text = _xml_text(self.id)
        data = self.to_json_dict()
        for key in (
            "state",
            "bytes_received",
            "content_length",
            "speed",
            "average_speed",
            "eta",
            "started_at",
            "updated_at",
            "finished_at",
            "field_count",
        ):
            ET.SubElement(root, _camel(key)).text = _xml_text(data[key])
        fields = ET.SubElement(root, "fields")
        for f in self.fields:
            ET.SubElement(
                fields, "field", {_camel(k): _xml_text(v) for k, v in f.to_dict().items()}
            )
        if self.error is not None:
            err = ET.SubElement(root, "error", {"status": _xml_text(self.error.get("status", ""))})
            err.text = _xml_text(self.error.get("message", ""))
        if data["processing"] is not None:
            proc = data["processing"]
            ET.SubElement(root, "processing", {_camel(k): _xml_text(v) for k, v in proc.items()})
        return bytes(ET.tostring(root, encoding="utf-8", xml_declaration=True))


_json_string = json.encoder.encode_basestring  # what json.dumps(ensure_ascii=False) uses


def _xml_text(value: Any) -> str:
    return "" if value is None else shown_text(str(value))


def _json_text(value: str | None) -> str:
    return "null" if value is None else _json_string(value)


def _field_json(f: FieldProgress) -> str:
    """A field as the store keeps it: a JSON list, in the order of ``FieldProgress``'s
    arguments (a record of 256 fields stays a few KB, and encodes at a third of the cost
    of ``json.dumps`` on the dicts)."""
    return (
        f"[{_json_text(f.name)},{_json_text(f.filename)},{_json_text(f.content_type)},"
        f"{int(f.bytes_received)},{_json_string(f.state)}]"
    )


def unknown_record(upload_id: str) -> UploadRecord:
    """What a poll answers before (or without) a record for ``upload_id``."""
    return UploadRecord(id=upload_id, state=UNKNOWN, started_at=0.0, updated_at=0.0)


def _round(value: float | None) -> float | None:
    if value is None or math.isnan(value):
        return None
    return round(value, 1)


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)
