"""How long records live and how often they are written: :class:`TrackerSettings`.

One frozen value shared by every upload of a meter; the record writer
(:mod:`uploadmeter.core._records`) derives every lifetime from it, the tracker its write
throttle.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TrackerSettings:
    """How often and how long records are kept; shared by every upload of a middleware."""

    ttl: float = 300.0  # how long a finished record stays readable
    stale_after: float = 120.0  # an in-flight record not updated for this long is dead
    update_interval: float = 0.2  # at most one progress write per this many seconds
    heartbeat: float = 2.0  # ... and at least one per this long while bytes arrive
    # (growing with the upload's age, elapsed / 25, up to stale_after / 3, so a slow upload
    # costs about a hundred writes, not one every 2 s: 135, not 412, for 1 GiB at 10 Mbit/s)
    min_step: float = 0.01  # ... otherwise only when progress moved by 1 % of the length
    store_retry: float = 1.0  # after a store failure, wait this long before trying again
