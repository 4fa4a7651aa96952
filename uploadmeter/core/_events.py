"""A record as Server-Sent Events, without I/O: what to send, and when the stream ends.

``GET {prefix}/events?id=ID`` streams one upload's record (the same JSON as
``{prefix}/progress``) as ``text/event-stream``: one event per change of the stored record,
a comment line as heartbeat while nothing changes, and the stream ends after the event
that carries the outcome (``done``, ``error``, ``cancelled``).  A record that never
appears ends the stream as ``unknown`` after ``give_up_after`` seconds.  A client closes
its ``EventSource`` on the outcome (else the browser reconnects and gets it again).

The shell owns the loop: it loads the record (off its event loop), hands it to
:meth:`RecordEvents.update`, sends what comes back, and sleeps.
"""

from __future__ import annotations

import json

from uploadmeter.core._record import FINISHED, UploadRecord, unknown_record

EVENT_STREAM_HEADERS = [
    ("Content-Type", "text/event-stream; charset=utf-8"),
    ("Cache-Control", "no-store"),
    ("X-Accel-Buffering", "no"),  # nginx: pass each event on at once
]
HEARTBEAT = b": heartbeat\n\n"


class RecordEvents:
    """The events of one record's stream."""

    def __init__(
        self, upload_id: str, *, heartbeat: float = 15.0, give_up_after: float = 120.0
    ) -> None:
        self.upload_id = upload_id
        self.heartbeat = heartbeat
        self.give_up_after = give_up_after
        self.done = False  # the outcome was sent: end the stream
        self._last: str | None = None
        self._sent_at: float | None = None
        self._started_at: float | None = None
        self._count = 0

    def update(self, record: UploadRecord | None, now: float) -> bytes:
        """What to send now that the store holds ``record`` (``None``: none yet):
        an event, a heartbeat, or ``b""``."""
        if self._started_at is None:
            self._started_at = now
        if record is None and now - self._started_at >= self.give_up_after:
            record = unknown_record(self.upload_id)
            self.done = True
        elif record is not None and record.state in FINISHED:
            self.done = True
        shown = record or unknown_record(self.upload_id)
        state = shown.dumps() if record is not None else "unknown"
        if state != self._last or self.done:
            self._last = state
            self._sent_at = now
            self._count += 1
            data = json.dumps(shown.to_json_dict(), ensure_ascii=False, separators=(",", ":"))
            return f"id: {self._count}\ndata: {data}\n\n".encode()
        return self._heartbeat(now)

    def update_unavailable(self, now: float) -> bytes:
        """The store did not answer: nothing changes, the heartbeat keeps the stream."""
        return self._heartbeat(now)

    def _heartbeat(self, now: float) -> bytes:
        if self._sent_at is None:
            self._sent_at = now
        if now - self._sent_at >= self.heartbeat:
            self._sent_at = now
            return HEARTBEAT
        return b""
