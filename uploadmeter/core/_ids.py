"""Upload ids: what a tracking id may be.

A client names its upload with an id of 8-128 characters of ``[A-Za-z0-9_-]``: long enough
to be unguessable when random, short and plain enough to be a store key and a URL
parameter as it is.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qs

UPLOAD_ID = re.compile(r"[A-Za-z0-9_-]{8,128}")
INVALID_ID_MESSAGE = "The upload id must be 8 to 128 characters of A-Z, a-z, 0-9, '_' and '-'."


def valid_upload_id(value: str) -> bool:
    """Whether ``value`` may name an upload."""
    return UPLOAD_ID.fullmatch(value) is not None


def upload_id_from(
    query: str, upload_id_header: str | None, progress_id_header: str | None
) -> str | None:
    """The tracking id a request carries: query ``uploadmeter_id``, else the ``X-Upload-ID``
    or ``X-Progress-ID`` header; ``""`` when the parameter is present but empty (invalid,
    not untracked), ``None`` when there is none."""
    if "uploadmeter_id=" in query:  # cheap pre-check; the parse decides
        values = parse_qs(query, keep_blank_values=True).get("uploadmeter_id")
        if values is not None:
            return values[0]
    if upload_id_header is not None:
        return str(upload_id_header)
    if progress_id_header is not None:
        return str(progress_id_header)
    return None
