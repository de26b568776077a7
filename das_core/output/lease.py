"""One run per output at a time: a lease on ``OUT/_lock.json``, in a local folder or under an S3 prefix.

The lock is a small JSON object: the holding run's id, command, host, pid,
start time and a heartbeat time that a daemon thread renews every
``HEARTBEAT_S`` seconds. Taking it is atomic: locally the complete file is
hard-linked into place (``link`` fails when the name exists; ``O_CREAT|O_EXCL``
where links are not supported), on S3 a conditional PUT (``If-None-Match: *``,
supported by S3 and by moto 5.2.5). A second writer is refused at once
(``LeaseHeld``, exit status 2) with the holder named.

A lease whose holder died is taken over: at once when the holder ran on this
host and its pid no longer exists, otherwise after ``DAS_LOCK_STALE_S``
(default 60 s) without a heartbeat. Take-over is a compare-and-swap: on S3 a
PUT with ``If-Match`` on the stale object's ETag; locally the stale file is
renamed aside and checked to be the one judged stale before the new lock is
created. The lease is released at the end of the run, on failure and on
Ctrl-C / SIGTERM (``das_core.runtime.interrupts.sigterm_as_interrupt``); a process killed outright leaves
it to be taken over.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
import tempfile
import threading
import time
import uuid
from dataclasses import asdict, dataclass

from das_core.errors import LeaseHeld, Refused
from das_core.io import storage
from das_core.io.s3 import client_error_code, is_s3, named_errors, s3_filesystem
from das_core.output.record import utc_compact, utc_from_unix

log = logging.getLogger("das")

LOCK_NAME = "_lock.json"          # one of das's own files in OUT
STALE_ENV = "DAS_LOCK_STALE_S"
DEFAULT_STALE_S = 60.0
HEARTBEAT_S = 10.0


_iso = utc_from_unix


def new_run_id() -> str:
    """A run id: UTC start time and a random suffix, e.g. ``20261206T081900Z-3fa2c1``."""
    return utc_compact() + "-" + uuid.uuid4().hex[:6]


def stale_after_s() -> float:
    """Seconds without a heartbeat after which a lock is taken over (``DAS_LOCK_STALE_S``, default 60)."""
    text = os.environ.get(STALE_ENV)
    try:
        value = float(text) if text else DEFAULT_STALE_S
    except ValueError:
        raise Refused(f"{STALE_ENV}={text!r} is not a number of seconds; set it to e.g. 60") from None
    return max(value, 0.5)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True                       # another user's live process
    return True


@dataclass(frozen=True)
class Holder:
    """What ``_lock.json`` says about the run that holds it."""

    run_id: str
    command: str
    host: str
    pid: int
    started: str
    heartbeat: str
    heartbeat_unix: float

    @classmethod
    def parse(cls, data: bytes, fallback_unix: float) -> Holder:
        """The holder in ``data``; an unreadable lock is an unknown holder whose heartbeat is the file's time."""
        try:
            d = json.loads(data)
            return cls(str(d["run_id"]), str(d["command"]), str(d["host"]), int(d["pid"]), str(d["started"]),
                       str(d["heartbeat"]), float(d["heartbeat_unix"]))
        except (ValueError, KeyError, TypeError):
            return cls("unknown", "unknown", "unknown", 0, "unknown", _iso(fallback_unix), fallback_unix)

    def to_bytes(self) -> bytes:
        """The lock file's contents."""
        return (json.dumps(asdict(self), indent=2) + "\n").encode()

    def describe(self, now: float | None = None) -> str:
        """The holder in words (run, command, host, pid, start, last heartbeat and its age)."""
        age = (time.time() if now is None else now) - self.heartbeat_unix
        return (f"run {self.run_id}: {self.command}, host {self.host}, pid {self.pid}, since {self.started}, "
                f"last heartbeat {self.heartbeat} ({age:.0f} s ago)")

    def stale_reason(self, stale_s: float, now: float | None = None) -> str | None:
        """Why this holder is dead (its lease may be taken over), or None while it may be alive."""
        if self.host == socket.gethostname() and self.pid > 0 and not _pid_alive(self.pid):
            return f"its process {self.pid} on this host no longer exists"
        age = (time.time() if now is None else now) - self.heartbeat_unix
        if age > stale_s:
            return f"no heartbeat for {age:.0f} s (more than {stale_s:g} s, {STALE_ENV})"
        return None


class _LocalLockFile:
    """The lock as a local file; a version is the file's (inode, mtime_ns)."""

    def __init__(self, path: str):
        self.path = path

    def create(self, data: bytes) -> bool:
        """Put ``data`` at the lock's name unless something is there; False when it is."""
        fd, tmp = tempfile.mkstemp(prefix=storage.TEMP_PREFIX, dir=os.path.dirname(self.path))
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.chmod(tmp, storage.default_file_mode())
            os.link(tmp, self.path)       # atomic, and the lock is complete as soon as it is visible
            return True
        except FileExistsError:
            return False
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
                raise
            return self._create_exclusive(data)      # a filesystem without hard links
        finally:
            os.unlink(tmp)

    def _create_exclusive(self, data: bytes) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, storage.default_file_mode())
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return True

    def read(self) -> tuple[bytes, object, float] | None:
        """(contents, version, modification time), or None when there is no lock."""
        try:
            with open(self.path, "rb") as f:
                st = os.fstat(f.fileno())
                return f.read(), (st.st_ino, st.st_mtime_ns), st.st_mtime
        except FileNotFoundError:
            return None

    def replace(self, data: bytes, version: object) -> bool:
        """Swap in ``data`` if the lock is still at ``version``; False when it changed."""
        aside = os.path.join(os.path.dirname(self.path), f"{storage.TEMP_PREFIX}lock-{uuid.uuid4().hex}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return False
        st = os.stat(aside)
        if (st.st_ino, st.st_mtime_ns) != version:
            # another process replaced it first: put theirs back (fails only if yet another lock appeared)
            try:
                os.link(aside, self.path)
            except FileExistsError:
                pass
            os.unlink(aside)
            return False
        os.unlink(aside)
        return self.create(data)

    def delete(self) -> None:
        """Remove the lock file (gone already: nothing to do)."""
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


class _S3LockFile:
    """The lock as an S3 object; a version is its ETag, and every change is a conditional request."""

    def __init__(self, uri: str):
        self.uri = uri
        self.bucket, _, self.key = uri.split("://", 1)[1].partition("/")

    def _call(self, method: str, **kw):
        fs = s3_filesystem()
        with named_errors(self.uri, "cannot lock"):
            return fs.call_s3(method, Bucket=self.bucket, Key=self.key, **kw)

    def create(self, data: bytes) -> bool:
        """Put ``data`` at the lock's key unless an object is there (a conditional PUT); False when one is."""
        try:
            self._call("put_object", Body=data, IfNoneMatch="*")
        except (FileExistsError, OSError) as exc:
            if isinstance(exc, FileExistsError) or client_error_code(exc) in _CAS_CODES:
                return False
            raise
        return True

    def read(self) -> tuple[bytes, object, float] | None:
        """The lock's contents, version (ETag) and time, or None when there is none."""
        try:
            got = self._call("get_object")
        except FileNotFoundError:
            return None
        body = got["Body"]
        return _read_body(body), got["ETag"], got["LastModified"].timestamp()

    def replace(self, data: bytes, version: object) -> bool:
        """Replace the lock with ``data`` if it is still at ``version``; False when it changed or went."""
        try:
            self._call("put_object", Body=data, IfMatch=str(version))
        except (FileNotFoundError, FileExistsError):
            return False
        except OSError as exc:
            if client_error_code(exc) in _CAS_CODES:
                return False
            raise
        return True

    def delete(self) -> None:
        """Remove the lock object (gone already: nothing to do)."""
        try:
            self._call("delete_object")
        except FileNotFoundError:
            pass


# 412: the condition did not hold; 409: a concurrent conditional write to the same key won.
_CAS_CODES = ("PreconditionFailed", "412", "ConditionalRequestConflict", "409", "NoSuchKey")


def _read_body(body) -> bytes:
    """The bytes of a get_object body made by s3fs's aiobotocore client."""
    from fsspec.asyn import sync

    async def read() -> bytes:
        """The whole body, read on s3fs's event loop."""
        async with body as stream:
            return await stream.read()

    return sync(s3_filesystem().loop, read)


class Lease:
    """The lock on one output, held by this process from ``acquire`` (or ``with``) to ``release``."""

    def __init__(self, out: str, command: str, run_id: str | None = None, *, stale_s: float | None = None,
                 heartbeat_s: float | None = None):
        self.out = out
        self.uri = storage.join(out, LOCK_NAME)
        self.command = command
        self.run_id = run_id or new_run_id()
        self.stale_s = stale_after_s() if stale_s is None else stale_s
        self.heartbeat_s = heartbeat_s if heartbeat_s is not None else min(HEARTBEAT_S, self.stale_s / 4)
        self.file = _S3LockFile(self.uri) if is_s3(out) else _LocalLockFile(self.uri)
        self.started = time.time()
        self.version: object = None
        self.lost: str | None = None                # why the lease was lost while held (taken over)
        self.made_folder = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._mutex = threading.Lock()

    def holder(self) -> Holder:
        """This run as the lock names it, with a heartbeat of now."""
        now = time.time()
        return Holder(self.run_id, self.command, socket.gethostname(), os.getpid(), _iso(self.started), _iso(now),
                      now)

    def acquire(self) -> Lease:
        """Take the lock, taking over a dead holder's; ``LeaseHeld`` when a live run holds it."""
        if not is_s3(self.out):
            path = os.path.abspath(os.path.expanduser(self.out))
            self.made_folder = not os.path.isdir(path)
            os.makedirs(path, exist_ok=True)
        for _ in range(5):
            if self.file.create(self.holder().to_bytes()):
                return self._held()
            found = self.file.read()
            if found is None:
                continue                              # released meanwhile: try again
            data, version, mtime = found
            other = Holder.parse(data, mtime)
            reason = other.stale_reason(self.stale_s)
            if reason is None:
                self._undo_folder()
                raise LeaseHeld(f"output {self.out} is in use by another run ({other.describe()}); wait for it "
                                f"to finish or write to another --out (a lock whose run died is taken over after "
                                f"{self.stale_s:g} s without a heartbeat)")
            if self.file.replace(self.holder().to_bytes(), version):
                log.warning("took over the lock on %s from %s: %s", self.out, other.describe(), reason)
                return self._held()
        self._undo_folder()
        raise LeaseHeld(f"output {self.out} is in use (its lock changed hands while this run tried to take it); "
                        "wait for the other run to finish or write to another --out")

    def _held(self) -> Lease:
        found = self.file.read()
        self.version = found[1] if found else None
        self._thread = threading.Thread(target=self._beat, name="das-lease-heartbeat", daemon=True)
        self._thread.start()
        return self

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                self.renew()
            except Exception as exc:  # noqa: BLE001 - a missed beat is retried; staleness takes minutes
                log.warning("could not renew the lock on %s (%s); retrying in %g s", self.out, exc, self.heartbeat_s)
            if self.lost:
                log.error("lost the lock on %s: %s", self.out, self.lost)
                return

    def renew(self) -> None:
        """Write a new heartbeat, unless another run took the lock over (then ``lost`` says so)."""
        with self._mutex:
            if self._stop.is_set() or self.lost:
                return
            found = self.file.read()
            mine = found is not None and Holder.parse(found[0], found[2]).run_id == self.run_id
            if not mine or not self.file.replace(self.holder().to_bytes(), found[1]):
                now = self.file.read()
                other = Holder.parse(now[0], now[2]).describe() if now else "nobody"
                self.lost = f"it is now held by {other}"
                return
            latest = self.file.read()
            self.version = latest[1] if latest else None

    def release(self) -> None:
        """Stop the heartbeat and remove the lock if it is still this run's."""
        with self._mutex:
            self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        if self._thread is None:
            return
        self._thread = None
        found = self.file.read()
        if found is not None and Holder.parse(found[0], found[2]).run_id == self.run_id:
            self.file.delete()
        self._undo_folder()

    def _undo_folder(self) -> None:
        """Remove OUT again when the lease created it and nothing else was written there."""
        if self.made_folder:
            try:
                os.rmdir(os.path.abspath(os.path.expanduser(self.out)))
            except OSError:
                pass                              # not empty: the run wrote there

    def __enter__(self) -> Lease:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
