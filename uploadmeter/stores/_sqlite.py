"""The embedded default store: one SQLite file shared by every worker on a machine.

No server to install, and it works across processes: under gunicorn ``-w 4`` the upload
lands on one worker and the poll on another, and both open the same file.  WAL mode lets
readers poll while a writer records progress; ``synchronous=OFF`` because progress is
ephemeral and losing the last update to a power cut costs nothing.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
import sys
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from uploadmeter.exceptions import StoreError, UnsafeStorePath
from uploadmeter.stores._base import ProgressStore

log = logging.getLogger("uploadmeter")
T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS uploadmeter_kv (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    expires_at REAL NOT NULL
) WITHOUT ROWID
"""


class SQLiteStore(ProgressStore):
    """Keeps values in an SQLite file::

        store = SQLiteStore("/srv/app/uploadmeter.sqlite3")
        store.set("k", "v", ttl=60)
        store.get("k")  # 'v'

    Each thread (and each forked process) gets its own connection.  A locked database is
    retried for up to ``busy_timeout`` seconds before :class:`StoreError` is raised.

    The file holds session-bound secrets (file names, share ids, link marks): it is created
    0600 (its directory, when missing, 0700), and :class:`UnsafeStorePath` is raised at
    once when the file, its ``-wal``/``-shm`` files or its directory belong to another
    account or are writable by group or others, when the directory is a symbolic link, or
    when a directory above it could be renamed by another account.  ``path`` is resolved
    once (``path`` is the real path) and every connection opens that file, so a name
    repointed later cannot lead a new connection elsewhere.
    """

    def __init__(self, path: str, *, busy_timeout: float = 5.0) -> None:
        self.busy_timeout = busy_timeout
        self._local = threading.local()
        self._next_purge = 0.0
        self.path = _make_private(path)
        self._run(lambda db: db.execute(_SCHEMA))

    # -- connection handling -------------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        pid = os.getpid()
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        # A connection must not cross a fork: gunicorn imports the app, then forks.
        if db is None or self._local.pid != pid:
            db = sqlite3.connect(
                self.path,
                timeout=self.busy_timeout,
                isolation_level=None,  # autocommit: every statement is its own transaction
                check_same_thread=False,
            )
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=OFF")
            self._local.db = db
            self._local.pid = pid
        return db

    def _run(self, op: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``op``, retrying while the database is busy or locked."""
        deadline = time.monotonic() + self.busy_timeout
        delay = 0.005
        while True:
            try:
                return op(self._connection())
            except sqlite3.OperationalError as exc:
                message = str(exc).lower()
                if ("locked" in message or "busy" in message) and time.monotonic() < deadline:
                    time.sleep(delay)
                    delay = min(delay * 2, 0.1)
                    continue
                raise StoreError(f"SQLite store {self.path}: {exc}") from exc
            except sqlite3.Error as exc:
                raise StoreError(f"SQLite store {self.path}: {exc}") from exc

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None

    # -- operations ----------------------------------------------------------------------

    def get(self, key: str) -> str | None:
        row = self._run(
            lambda db: db.execute(
                "SELECT value FROM uploadmeter_kv WHERE key = ? AND expires_at > ?",
                (key, time.time()),
            ).fetchone()
        )
        return None if row is None else str(row[0])

    def set(self, key: str, value: str, ttl: float) -> None:
        now = time.time()
        self._run(
            lambda db: db.execute(
                "INSERT OR REPLACE INTO uploadmeter_kv (key, value, expires_at) VALUES (?, ?, ?)",
                (key, value, now + ttl),
            )
        )
        self._purge(now)

    def add(self, key: str, value: str, ttl: float) -> bool:
        now = time.time()
        cursor = self._run(
            lambda db: db.execute(
                "INSERT INTO uploadmeter_kv (key, value, expires_at) VALUES (?, ?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value, "
                "expires_at = excluded.expires_at WHERE uploadmeter_kv.expires_at <= ?",
                (key, value, now + ttl, now),
            )
        )
        return cursor.rowcount == 1

    def delete(self, key: str) -> bool:
        now = time.time()
        cursor = self._run(
            lambda db: db.execute(
                "DELETE FROM uploadmeter_kv WHERE key = ? RETURNING expires_at > ?", (key, now)
            )
        )
        row = cursor.fetchone()
        return bool(row and row[0])

    def delete_if(self, key: str, value: str) -> bool:
        cursor = self._run(
            lambda db: db.execute(
                "DELETE FROM uploadmeter_kv WHERE key = ? AND value = ? AND expires_at > ?",
                (key, value, time.time()),
            )
        )
        return cursor.rowcount == 1

    def expire_if(self, key: str, value: str, ttl: float) -> bool:
        now = time.time()
        cursor = self._run(
            lambda db: db.execute(
                "UPDATE uploadmeter_kv SET expires_at = ? "
                "WHERE key = ? AND value = ? AND expires_at > ?",
                (now + ttl, key, value, now),
            )
        )
        return cursor.rowcount == 1

    def incr(self, key: str, ttl: float) -> int:
        now = time.time()
        row = self._run(
            lambda db: db.execute(
                "INSERT INTO uploadmeter_kv (key, value, expires_at) VALUES (?, '1', ?) "
                "ON CONFLICT (key) DO UPDATE SET "
                "value = CASE WHEN uploadmeter_kv.expires_at <= ? THEN '1' "
                "ELSE CAST(CAST(uploadmeter_kv.value AS INTEGER) + 1 AS TEXT) END, "
                "expires_at = CASE WHEN uploadmeter_kv.expires_at <= ? "
                "THEN excluded.expires_at ELSE uploadmeter_kv.expires_at END "
                "RETURNING value",
                (key, now + ttl, now, now),
            ).fetchone()
        )
        return int(row[0])

    def _purge(self, now: float) -> None:
        # Expired rows are invisible to get(); delete them at most once a minute per
        # process so the file does not grow without bound.
        if now < self._next_purge:
            return
        self._next_purge = now + 60
        try:
            self._run(
                lambda db: db.execute("DELETE FROM uploadmeter_kv WHERE expires_at <= ?", (now,))
            )
        except StoreError as exc:
            log.warning("uploadmeter: could not purge expired records: %s", exc)


def _make_private(path: str) -> str:
    """Create the database file 0600 (in a 0700 directory when that is missing) or check
    that the existing ones are this account's alone; refuse anything another account
    could have written or could swap.  Return the resolved path, to connect through.

    SQLite creates ``-wal`` and ``-shm`` with the database file's own mode, whatever the
    umask, so a private database keeps them private.
    """
    given = os.path.dirname(os.path.abspath(path))
    os.makedirs(given, mode=0o700, exist_ok=True)
    if sys.platform == "win32":  # no POSIX owners or modes to check
        return os.path.abspath(path)
    if os.path.islink(given):
        # Whoever owns the link can repoint it; a link planted in a shared /tmp passes
        # every check on its target and is swapped afterwards.
        raise UnsafeStorePath(
            f"SQLite store {path}: refusing directory {given}: it is a symbolic link "
            f"(to {os.readlink(given)}). Name the real directory, or remove the link."
        )
    directory = os.path.realpath(given)
    path = os.path.join(directory, os.path.basename(path))
    # Root may own the directory (/srv/app made by an installer); nobody else.
    ours = {os.geteuid(), 0}
    _refuse_shared(path, directory, "directory", os.lstat(directory), ours)
    # Nobody else may rename a directory above it and put another in its place: each is
    # ours or root's, and writable by others only when sticky (/tmp).
    parent = os.path.dirname(directory)
    while True:
        _refuse_swappable(path, parent, os.lstat(parent), ours)
        if parent == os.path.dirname(parent):
            break
        parent = os.path.dirname(parent)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        pass  # another worker made it first, or it was there: checked below
    else:
        os.fchmod(fd, 0o600)  # whatever the umask
        os.close(fd)
    for name in (path, path + "-wal", path + "-shm"):
        try:
            info = os.lstat(name)
        except FileNotFoundError:
            continue
        _refuse_shared(path, name, "file", info, {os.geteuid()})
        if info.st_mode & 0o077:  # ours, but others may read it (an older version's file)
            os.chmod(name, 0o600, follow_symlinks=False)
    return path


def _refuse_swappable(path: str, name: str, info: os.stat_result, owners: set[int]) -> None:
    if stat.S_ISLNK(info.st_mode):  # changed since realpath(): refuse rather than guess
        raise UnsafeStorePath(f"SQLite store {path}: {name} became a symbolic link; retry.")
    if info.st_uid not in owners:
        raise UnsafeStorePath(
            f"SQLite store {path}: refusing directory {name} above it: owned by uid "
            f"{info.st_uid}, who could rename the store's directory and put another in its "
            "place. Choose a path under directories of this account or root."
        )
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not info.st_mode & stat.S_ISVTX:
        raise UnsafeStorePath(
            f"SQLite store {path}: refusing directory {name} above it: writable by group or "
            f"others without the sticky bit (mode {stat.S_IMODE(info.st_mode):o}), so they "
            "could rename the store's directory. Choose another path."
        )


def _refuse_shared(path: str, name: str, kind: str, info: os.stat_result, owners: set[int]) -> None:
    if kind == "file" and not stat.S_ISREG(info.st_mode):
        raise UnsafeStorePath(f"SQLite store {path}: refusing {name}: not a regular file.")
    if kind == "directory" and not stat.S_ISDIR(info.st_mode):
        raise UnsafeStorePath(f"SQLite store {path}: refusing {name}: not a directory.")
    if info.st_uid not in owners:
        raise UnsafeStorePath(
            f"SQLite store {path}: refusing {kind} {name}: owned by uid {info.st_uid}, "
            f"not by this process's uid {os.geteuid()}; another account could have planted "
            "records in it. Remove it, or choose another path."
        )
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise UnsafeStorePath(
            f"SQLite store {path}: refusing {kind} {name}: writable by group or others "
            f"(mode {stat.S_IMODE(info.st_mode):o}); another account could have planted "
            "records in it. Make it private (chmod go-w) or choose another path."
        )
