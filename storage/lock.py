"""One build per output: an exclusive lock held in the dataset root while a build writes it.

Local outputs: `fcntl.flock` on `<out>/.unihope-build.lock`. The kernel releases a flock when its
process dies (SIGKILL included), so a lock left by a killed build is stale by construction; the
file's JSON body only names the holder for the refusal message. fsspec URLs (object stores have
no flock): a lock object with the holder's pid, host, start time and a heartbeat the holder
refreshes; it is stale when its process is gone (same host) or its heartbeat is older than
`REMOTE_STALE_AFTER_S` (another host).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone

from unihope.storage.io import Location, locate

LOCK_NAME = ".unihope-build.lock"
WAIT_POLL_S = 0.5  # how often a waiting build tries the lock again
REMOTE_HEARTBEAT_S = 30.0  # a remote lock's holder rewrites it this often
REMOTE_STALE_AFTER_S = 120.0  # a remote lock whose heartbeat is older is abandoned (4 missed beats)


class OutputBusyError(RuntimeError):
    """Another build holds the output's lock."""

    def __init__(self, message: str, holder: "LockHolder | None"):
        super().__init__(message)
        self.holder = holder


@dataclass(frozen=True, slots=True)
class LockHolder:
    """Who holds a build lock (what the lock file says)."""

    pid: int
    host: str
    started_utc: str
    token: str  # unique per acquisition: tells a remote holder its own lock from a successor's
    heartbeat_utc: str = ""

    def to_json(self) -> dict:
        return {"pid": self.pid, "host": self.host, "started_utc": self.started_utc, "token": self.token,
                "heartbeat_utc": self.heartbeat_utc}

    @classmethod
    def from_bytes(cls, payload: bytes) -> "LockHolder | None":
        """The holder a lock file names, or None for an empty or unreadable file."""
        try:
            data = json.loads(payload.decode())
            return cls(int(data["pid"]), str(data["host"]), str(data["started_utc"]), str(data["token"]),
                       str(data.get("heartbeat_utc", "")))
        except (ValueError, KeyError, TypeError, UnicodeDecodeError):
            return None

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host}, started {self.started_utc}"


def _utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _new_holder() -> LockHolder:
    now = _utc_now()
    return LockHolder(pid=os.getpid(), host=socket.gethostname(), started_utc=now, token=uuid.uuid4().hex,
                      heartbeat_utc=now)


def _busy_message(out: str, lock_path: str, holder: LockHolder | None) -> str:
    who = holder.describe() if holder is not None else "another process"
    return (f"output {out} is being written by another build ({who}; lock {lock_path}); wait for it to finish, "
            "pass --wait-lock to wait, or choose another --out")


@contextlib.contextmanager
def build_lock(out: str, storage_options: dict | None = None, wait: bool = False) -> Iterator[LockHolder]:
    """Hold the output's build lock for the duration of the `with` block.

    Args:
        out: dataset path or fsspec URL.
        storage_options: fsspec options for URLs.
        wait: wait for the holder to finish instead of refusing at once.

    Yields:
        This build's holder record.

    Raises:
        OutputBusyError: when another live build holds the lock and `wait` is False.
    """
    loc = locate(out, storage_options)
    with (_local_lock(loc, wait) if loc.is_local else _remote_lock(loc, wait)) as holder:
        yield holder


def output_busy(out: str, storage_options: dict | None = None) -> OutputBusyError | None:
    """The refusal a build of `out` would meet now, or None when no live build holds its lock.

    A query, not a hold (the answer can change a moment later; the build's own `build_lock` decides):
    the CLI asks it so that a refused build starts no API server.
    """
    loc = locate(out, storage_options)
    lock_path = loc.path(LOCK_NAME)
    if loc.is_local:
        if not os.path.exists(lock_path):
            return None
        fd = os.open(lock_path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # any hold at all conflicts with the builder's LOCK_EX
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        except BlockingIOError:
            holder = LockHolder.from_bytes(os.pread(fd, 4096, 0))
            return OutputBusyError(_busy_message(loc.url, lock_path, holder), holder)
        finally:
            os.close(fd)
    holder = _read_remote_holder(loc, lock_path)
    if holder is None or is_stale(holder):
        return None
    return OutputBusyError(_busy_message(loc.url, loc.fs.unstrip_protocol(lock_path), holder), holder)


@contextlib.contextmanager
def _local_lock(loc: Location, wait: bool) -> Iterator[LockHolder]:
    os.makedirs(loc.root, exist_ok=True)
    lock_path = loc.path(LOCK_NAME)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        # 1. Take the flock (or name the holder and refuse, or wait).
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not wait:
                    holder = LockHolder.from_bytes(os.pread(fd, 4096, 0))
                    raise OutputBusyError(_busy_message(loc.url, lock_path, holder), holder) from None
                time.sleep(WAIT_POLL_S)
        # 2. Say who holds it (a dead holder's text is simply overwritten: its flock died with it).
        holder = _new_holder()
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder.to_json()).encode(), 0)
        try:
            yield holder
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def is_stale(holder: LockHolder, now_s: float | None = None) -> bool:
    """Whether a remote lock's holder is gone: a dead pid on this host, or an old heartbeat elsewhere."""
    if holder.host == socket.gethostname():
        return not _pid_alive(holder.pid)
    try:
        beat_s = datetime.strptime(holder.heartbeat_utc or holder.started_utc, "%Y-%m-%dT%H:%M:%SZ").replace(
            tzinfo=timezone.utc).timestamp()
    except ValueError:
        return True
    return (now_s if now_s is not None else time.time()) - beat_s > REMOTE_STALE_AFTER_S


def _read_remote_holder(loc: Location, lock_path: str) -> LockHolder | None:
    """The holder a remote lock object names, or None when there is none (or it is unreadable)."""
    try:
        return LockHolder.from_bytes(loc.fs.cat_file(lock_path))
    except FileNotFoundError:
        return None


@contextlib.contextmanager
def _remote_lock(loc: Location, wait: bool) -> Iterator[LockHolder]:
    # Best effort: object stores have no atomic create-if-absent through fsspec, so two builds that
    # start within the same instant could both write; the read-back of the token narrows that window.
    lock_path = loc.path(LOCK_NAME)

    def read_holder() -> LockHolder | None:
        return _read_remote_holder(loc, lock_path)

    # 1. Wait for (or refuse) a live holder; take over a stale one.
    while True:
        current = read_holder()
        if current is None or is_stale(current):
            holder = _new_holder()
            loc.fs.pipe_file(lock_path, json.dumps(holder.to_json()).encode())
            if (confirmed := read_holder()) is not None and confirmed.token == holder.token:
                break
            current = confirmed
        if not wait:
            raise OutputBusyError(_busy_message(loc.url, loc.fs.unstrip_protocol(lock_path), current), current)
        time.sleep(WAIT_POLL_S)

    # 2. Heartbeat while the build runs; remove the lock (if still ours) at the end.
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(REMOTE_HEARTBEAT_S):
            if (now := read_holder()) is None or now.token != holder.token:
                return  # taken over: a successor owns it now
            fresh = LockHolder(holder.pid, holder.host, holder.started_utc, holder.token, _utc_now())
            loc.fs.pipe_file(lock_path, json.dumps(fresh.to_json()).encode())

    thread = threading.Thread(target=beat, name="unihope-lock-heartbeat", daemon=True)
    thread.start()
    try:
        yield holder
    finally:
        stop.set()
        thread.join(timeout=5)
        if (now := read_holder()) is not None and now.token == holder.token:
            loc.fs.rm_file(lock_path)
