"""The five store operations behave the same on memory, SQLite and a real redis-server."""

from __future__ import annotations

import os
import sqlite3
import stat
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.servers import wait_until
from uploadmeter import (
    MemoryStore,
    ProgressStore,
    RedisStore,
    SQLiteStore,
    StoreError,
    UnsafeStorePath,
    UploadMeterMiddleware,
    open_store,
)
from uploadmeter.stores import default_sqlite_path


@pytest.fixture(params=["memory", "sqlite", "redis"])
def store(request: Any, tmp_path: Any) -> Iterator[ProgressStore]:
    if request.param == "memory":
        s: ProgressStore = MemoryStore()
    elif request.param == "sqlite":
        s = SQLiteStore(str(tmp_path / "kv.sqlite3"))
    else:
        s = RedisStore(request.getfixturevalue("redis_url"))
    yield s
    s.close()


def test_set_get_delete(store: ProgressStore) -> None:
    assert store.get("k") is None
    store.set("k", "välue", ttl=60)
    assert store.get("k") == "välue"
    store.set("k", "second", ttl=60)
    assert store.get("k") == "second"
    assert store.delete("k") is True
    assert store.delete("k") is False
    assert store.get("k") is None


def test_add_only_when_absent(store: ProgressStore) -> None:
    assert store.add("lock", "a", ttl=60) is True
    assert store.add("lock", "b", ttl=60) is False
    assert store.get("lock") == "a"


def test_delete_if_and_expire_if_touch_only_the_expected_value(store: ProgressStore) -> None:
    # What a lock's release and refresh rely on: never act on a successor's value.
    store.set("lock", "mine", ttl=60)
    assert store.delete_if("lock", "theirs") is False
    assert store.expire_if("lock", "theirs", ttl=0.2) is False
    assert store.get("lock") == "mine"
    assert store.expire_if("lock", "mine", ttl=0.2) is True
    wait_until(lambda: store.get("lock") is None, timeout=5)  # the new ttl applied
    assert store.expire_if("lock", "mine", ttl=60) is False  # expired: not revived
    assert store.delete_if("lock", "mine") is False
    store.set("lock", "mine", ttl=60)
    assert store.delete_if("lock", "mine") is True
    assert store.get("lock") is None
    assert store.delete_if("absent", "x") is False and store.expire_if("absent", "x", 1) is False


def test_values_expire(store: ProgressStore) -> None:
    store.set("short", "v", ttl=0.2)
    assert store.add("short-lock", "v", ttl=0.2) is True
    wait_until(lambda: store.get("short") is None, timeout=5)
    assert store.delete("short") is False
    # An expired key can be added again.
    wait_until(lambda: store.add("short-lock", "w", ttl=60), timeout=5)
    assert store.get("short-lock") == "w"


def test_incr_counts_in_a_fixed_window(store: ProgressStore) -> None:
    assert [store.incr("hits", ttl=60) for _ in range(3)] == [1, 2, 3]
    assert store.incr("brief", ttl=0.2) == 1
    wait_until(lambda: store.get("brief") is None, timeout=5)
    assert store.incr("brief", ttl=60) == 1


def test_open_store_by_url(tmp_path: Any, redis_url: str) -> None:
    assert isinstance(open_store("memory://"), MemoryStore)
    sqlite_store = open_store(f"sqlite://{tmp_path}/x.db")
    assert isinstance(sqlite_store, SQLiteStore) and sqlite_store.path == f"{tmp_path}/x.db"
    assert isinstance(open_store(redis_url), RedisStore)
    assert isinstance(open_store(None), SQLiteStore)  # the embedded default
    existing = MemoryStore()
    assert open_store(existing) is existing
    with pytest.raises(ValueError, match="Unknown store"):
        open_store("postgres://nope")


def test_sqlite_is_shared_across_processes(tmp_path: Any) -> None:
    path = str(tmp_path / "shared.sqlite3")
    store = SQLiteStore(path)
    store.set("from-parent", "1", ttl=60)
    code = (
        "from uploadmeter import SQLiteStore;"
        f"s = SQLiteStore({path!r});"
        "assert s.get('from-parent') == '1';"
        "s.set('from-child', '2', ttl=60)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    assert store.get("from-child") == "2"


def test_sqlite_waits_out_a_lock_instead_of_failing(tmp_path: Any) -> None:
    path = str(tmp_path / "locked.sqlite3")
    store = SQLiteStore(path, busy_timeout=5)
    blocker = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    blocker.execute("BEGIN EXCLUSIVE")
    writer_started = threading.Event()
    result: list[str | None] = []

    def write() -> None:
        writer_started.set()
        store.set("k", "written", ttl=60)
        result.append(store.get("k"))

    thread = threading.Thread(target=write)
    thread.start()
    writer_started.wait(5)
    thread.join(0.3)
    assert thread.is_alive(), "the write should be waiting for the lock"
    blocker.execute("COMMIT")
    thread.join(10)
    assert result == ["written"]
    blocker.close()


def test_sqlite_gives_up_with_a_store_error_after_its_timeout(tmp_path: Any) -> None:
    path = str(tmp_path / "stuck.sqlite3")
    store = SQLiteStore(path, busy_timeout=0.3)
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(StoreError, match="locked"):
            store.set("k", "v", ttl=60)
    finally:
        blocker.execute("COMMIT")
        blocker.close()


def test_redis_down_is_a_store_error_not_a_hang() -> None:
    from tests.support.servers import free_port

    store = RedisStore(f"redis://127.0.0.1:{free_port()}/0", socket_timeout=0.5)
    with pytest.raises(StoreError):
        store.get("k")


# -- the SQLite file is private: issue 10 item 10 ----------------------------------------------

NOBODY = 65534  # another local account (Debian's "nobody")
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="planting another uid's file needs root")


def _plant(path: Any, mode: int, uid: int | None = None, directory: bool = False) -> None:
    if directory:
        path.mkdir()
    else:
        path.write_bytes(b"")
    os.chmod(path, mode)
    if uid is not None:
        os.chown(path, uid, uid)


@pytest.mark.parametrize(
    ("planted", "mode", "uid", "problem"),
    [
        pytest.param(
            "file", 0o666, NOBODY, f"owned by uid {NOBODY}", marks=as_root, id="file-666-nobody"
        ),
        pytest.param(
            "file", 0o600, NOBODY, f"owned by uid {NOBODY}", marks=as_root, id="file-600-nobody"
        ),
        pytest.param("file", 0o666, None, "writable by group or others", id="file-666-ours"),
        pytest.param("file", 0o620, None, "writable by group or others", id="file-620-ours"),
        pytest.param(
            "wal", 0o644, NOBODY, f"owned by uid {NOBODY}", marks=as_root, id="wal-644-nobody"
        ),
        pytest.param("shm", 0o666, None, "writable by group or others", id="shm-666-ours"),
        pytest.param(
            "directory",
            0o777,
            NOBODY,
            f"owned by uid {NOBODY}",
            marks=as_root,
            id="directory-777-nobody",
        ),
        pytest.param(
            "directory",
            0o700,
            NOBODY,
            f"owned by uid {NOBODY}",
            marks=as_root,
            id="directory-700-nobody",
        ),
        pytest.param(
            "directory", 0o777, None, "writable by group or others", id="directory-777-ours"
        ),
        pytest.param(
            "directory", 0o1777, None, "writable by group or others", id="directory-1777-ours"
        ),  # like /tmp
    ],
)
def test_sqlite_refuses_what_another_account_could_have_written(
    tmp_path: Any, planted: str, mode: int, uid: int | None, problem: str
) -> None:
    directory = tmp_path / "store"
    path = directory / "um.sqlite3"
    if planted == "directory":
        _plant(directory, mode, uid, directory=True)
    else:
        directory.mkdir(mode=0o700)
        suffix = {"file": "", "wal": "-wal", "shm": "-shm"}[planted]
        _plant(directory / f"um.sqlite3{suffix}", mode, uid)
    with pytest.raises(UnsafeStorePath) as refused:
        SQLiteStore(str(path))
    message = str(refused.value)
    assert str(path) in message and problem in message, message
    assert isinstance(refused.value, PermissionError)


def test_sqlite_makes_its_own_readable_file_private(tmp_path: Any) -> None:
    # A file of ours that others may only read (as the old default left it): tightened.
    path = tmp_path / "um.sqlite3"
    old = SQLiteStore(str(path))
    old.set("k", "v", ttl=60)
    old.close()
    os.chmod(path, 0o644)
    assert SQLiteStore(str(path)).get("k") == "v"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def _modes(directory: Any) -> dict[str, int]:
    return {p.name: stat.S_IMODE(p.stat().st_mode) for p in [directory, *directory.iterdir()]}


def test_the_default_store_is_private_and_shared_by_the_users_processes(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(tempfile, "tempdir", None)  # gettempdir() reads TMPDIR again
    planted = tmp_path / "uploadmeter.sqlite3"  # where the old default was: ignored now
    _plant(planted, 0o666)
    old_umask = os.umask(0)  # the most permissive umask must not leak into the modes
    try:
        store = open_store(None)
        store.set("from-parent", "1", ttl=60)  # opens the WAL: -wal and -shm exist now
        code = (
            "import os; os.umask(0);"
            "from uploadmeter import open_store;"
            "s = open_store(None);"
            "assert s.get('from-parent') == '1', s.path;"
            "s.set('from-child', '2', ttl=60);"
            "print(s.path)"
        )
        child = subprocess.run(
            [sys.executable, "-c", code], check=True, capture_output=True, text=True
        )
    finally:
        os.umask(old_umask)
    directory = tmp_path / f"uploadmeter-{os.geteuid()}"
    assert store.path == child.stdout.strip() == str(directory / "uploadmeter.sqlite3")
    assert store.get("from-child") == "2"
    assert _modes(directory) == {
        directory.name: 0o700,
        "uploadmeter.sqlite3": 0o600,
        "uploadmeter.sqlite3-wal": 0o600,
        "uploadmeter.sqlite3-shm": 0o600,
    }
    assert planted.read_bytes() == b""
    store.close()


def test_the_default_store_is_the_same_file_with_and_without_a_runtime_dir(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A login shell has $XDG_RUNTIME_DIR, a service or cron job does not, and pam_systemd
    # removes it at the last logout: the default must not depend on it.
    (tmp_path / "tmp").mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    monkeypatch.setattr(tempfile, "tempdir", None)
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    code = "from uploadmeter import open_store; print(open_store(None).path)"
    paths = set()
    for xdg in (str(runtime), None):
        env = {k: v for k, v in os.environ.items() if k != "XDG_RUNTIME_DIR"}
        if xdg is not None:
            env["XDG_RUNTIME_DIR"] = xdg
        child = subprocess.run(
            [sys.executable, "-c", code], check=True, capture_output=True, text=True, env=env
        )
        paths.add(child.stdout.strip())
    expected = str(tmp_path / "tmp" / f"uploadmeter-{os.geteuid()}" / "uploadmeter.sqlite3")
    assert paths == {expected}
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    assert default_sqlite_path() == expected
    assert list(runtime.iterdir()) == []


@as_root
def test_the_default_store_refuses_a_directory_symlinked_by_another_account(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Another account makes $TMPDIR/uploadmeter-<uid> a link to a directory of the app's
    # own (it passes every owner and mode check), to repoint it later at its own.
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    ours = tmp_path / "ours"
    ours.mkdir(mode=0o700)
    link = tmp_path / f"uploadmeter-{os.geteuid()}"
    link.symlink_to(ours)
    os.lchown(link, NOBODY, NOBODY)
    with pytest.raises(UnsafeStorePath, match=f"{link}.*symbolic link"):
        UploadMeterMiddleware(lambda environ, start_response: [], secret_key="k")
    assert list(ours.iterdir()) == []


def test_every_connection_opens_the_file_that_was_checked(tmp_path: Any) -> None:
    # The path is resolved and checked once; a connection opened later (a new thread, a
    # forked worker) goes to that file, whatever a name on the way points at by then.
    ours = tmp_path / "ours"
    evil = tmp_path / "evil"
    evil.mkdir(mode=0o777)
    os.chmod(evil, 0o777)
    via = tmp_path / "via"
    via.symlink_to(tmp_path, target_is_directory=True)
    ours.mkdir(mode=0o700)
    store = SQLiteStore(str(via / "ours" / "um.sqlite3"))
    store.set("mine", "1", ttl=60)
    db = sqlite3.connect(evil / "um.sqlite3")
    db.execute(
        "CREATE TABLE uploadmeter_kv (key TEXT PRIMARY KEY, value TEXT NOT NULL, "
        "expires_at REAL NOT NULL) WITHOUT ROWID"
    )
    db.execute("INSERT INTO uploadmeter_kv VALUES ('planted', 'x', 9e12)")
    db.commit()
    db.close()
    (evil / "ours").symlink_to(evil)  # the swap: via/ours now leads to the planted file
    via.unlink()
    via.symlink_to(evil, target_is_directory=True)
    seen: dict[str, Any] = {}

    def read() -> None:
        seen.update(mine=store.get("mine"), planted=store.get("planted"))

    thread = threading.Thread(target=read)
    thread.start()
    thread.join()
    assert seen == {"mine": "1", "planted": None}
    store.close()


@as_root
def test_the_middleware_refuses_a_default_dir_planted_by_another_account(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The attack of issue 10: another account creates the predictable path first.
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    planted = tmp_path / f"uploadmeter-{os.geteuid()}"
    _plant(planted, 0o777, NOBODY, directory=True)
    with pytest.raises(UnsafeStorePath, match=f"{planted}.*owned by uid {NOBODY}"):
        UploadMeterMiddleware(lambda environ, start_response: [], secret_key="k")
    assert list(planted.iterdir()) == []
