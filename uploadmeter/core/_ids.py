"""Upload ids: what a tracking id may be.

A client names its upload with an id of 8-128 characters of ``[A-Za-z0-9_-]``: long enough
to be unguessable when random, short and plain enough to be a store key and a URL
parameter as it is.
"""

from __future__ import annotations

import re

UPLOAD_ID = re.compile(r"[A-Za-z0-9_-]{8,128}")
INVALID_ID_MESSAGE = "The upload id must be 8 to 128 characters of A-Z, a-z, 0-9, '_' and '-'."


def valid_upload_id(value: str) -> bool:
    """Whether ``value`` may name an upload."""
    return UPLOAD_ID.fullmatch(value) is not None
