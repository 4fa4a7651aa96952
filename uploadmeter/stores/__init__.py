"""Progress stores: where upload records live between the uploading worker and the poller.

A store is a tiny expiring key-value map with five operations, chosen because each maps
onto one Redis command and one SQLite statement.  Everything uploadmeter keeps (progress
records, cancel flags, in-flight locks, single-use link marks, rate-limit counters) is
built from them, so a new backend needs only these five methods.  Two conditional ones,
``delete_if`` and ``expire_if``, let a lock holder release or extend only its own lock;
they have a (non-atomic) default, which the bundled backends replace with an atomic one.

Stores::

    MemoryStore()                  # one process; the fast path for tests and dev servers
    SQLiteStore("/srv/app/um.sqlite3")  # the default: many processes on one machine, no server
    RedisStore("redis://localhost:6379/0")  # many machines

or by URL through :func:`open_store`: ``memory://``, ``sqlite:///path``, ``redis://host:port/db``.
"""

from __future__ import annotations

import os
import sys
import tempfile

from uploadmeter.stores._base import ProgressStore
from uploadmeter.stores._memory import MemoryStore
from uploadmeter.stores._redis import RedisStore
from uploadmeter.stores._sqlite import SQLiteStore

__all__ = [
    "MemoryStore",
    "ProgressStore",
    "RedisStore",
    "SQLiteStore",
    "default_sqlite_path",
    "open_store",
]


def default_sqlite_path() -> str:
    """The embedded default: one SQLite file per user, in a directory only that user can use.

    ``<temp dir>/uploadmeter-<uid>/uploadmeter.sqlite3``.  Every process of one user computes
    the same path, so gunicorn's workers, a cron job and a shell share the file;
    :class:`SQLiteStore` creates the directory 0700 and the file 0600 and refuses them if
    another account owns them or could write them, or if the directory is a symbolic link.
    """
    # Not $XDG_RUNTIME_DIR: services and cron jobs lack it and pam_systemd removes it at
    # the last logout, so two processes of one account would open different files.
    if sys.platform == "win32":  # no uids; the temp dir is the user's own there
        return os.path.join(tempfile.gettempdir(), "uploadmeter", "uploadmeter.sqlite3")
    uid = os.geteuid()
    return os.path.join(tempfile.gettempdir(), f"uploadmeter-{uid}", "uploadmeter.sqlite3")


def open_store(spec: str | ProgressStore | None) -> ProgressStore:
    """Return a store from a store object, a URL, or ``None`` for the embedded default.

    ``sqlite:///srv/app/um.db`` names ``/srv/app/um.db``: everything after ``sqlite://`` is the
    path, so ``sqlite://um.db`` is relative to the working directory.
    """
    if isinstance(spec, ProgressStore):
        return spec
    if spec is None or spec == "sqlite://":
        return SQLiteStore(default_sqlite_path())
    if spec.startswith("memory://"):
        return MemoryStore()
    if spec.startswith("sqlite://"):
        return SQLiteStore(spec[len("sqlite://") :])
    if spec.startswith(("redis://", "rediss://", "unix://")):
        return RedisStore(spec)
    raise ValueError(
        f"Unknown store {spec!r}: use memory://, sqlite:///path or redis://host:port/db"
    )
