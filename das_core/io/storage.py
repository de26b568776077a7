"""One way to reach bytes: local paths and ``s3://`` URIs.

A location's one spelling (``absolute``, ``join``), reading it (``read_bytes``, ``open_input``,
``exists``, ``list_files``), writing it so that readers never see a part (``write_bytes_atomic``) and
removing das's own files (``remove``, ``remove_temporaries``, ``remove_empty_folder``). S3 goes through
this process's shared client (``das_core.io.s3``), and its failures arrive named (``StorageError``).
"""

from __future__ import annotations

import errno
import os
import posixpath
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import IO

import fsspec

from das_core.errors import WRITE_ERRNOS, Refused, WriteFailed
from das_core.io.s3 import invalidate, is_s3, named_errors, s3_filesystem


def absolute(uri: str) -> str:
    """The one spelling of a location, made once where a command or reader takes it.

    A local path is made absolute (``~`` expanded, ``.``/``..`` and trailing slashes gone), so that
    ``archive/``, ``./archive`` and ``/home/me/archive`` are one location, and a run made from one working
    folder is found from any other. An ``s3://`` URI keeps its spelling less trailing slashes.
    """
    if not uri.strip():
        raise Refused("an empty path was given (a folder, file or s3:// URI is expected); give the location")
    if is_s3(uri):
        scheme, rest = uri.split("://", 1)
        return f"{scheme}://{rest.rstrip('/')}" if rest.strip("/") else uri
    return os.path.abspath(os.path.expanduser(uri))


def absolute_if_local(name: str) -> str:
    """``absolute(name)`` when ``name`` is a local file or folder that exists, else ``name`` unchanged: for
    options that also take other names (a published checkpoint name, a Hugging Face hub id)."""
    if not is_s3(name) and os.path.exists(os.path.expanduser(name)):
        return absolute(name)
    return name


def default_file_mode() -> int:
    """``0o666`` less this process's umask: the mode ``open()`` would give a new file."""
    try:
        with open("/proc/self/status") as f:       # reading it does not change the umask, unlike os.umask
            for line in f:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def filesystem(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem for ``uri`` and the path inside it (S3: this process's shared client)."""
    if is_s3(uri):
        return s3_filesystem(), uri.split("://", 1)[1]
    return fsspec.filesystem("file"), os.path.abspath(os.path.expanduser(uri))


def to_uri(fs: fsspec.AbstractFileSystem, path: str, like: str) -> str:
    """Turn a path returned by ``fs`` back into a URI of the same kind as ``like``."""
    if is_s3(like):
        return like.split("://", 1)[0] + "://" + path.lstrip("/")
    return path


def join(base: str, *parts: str) -> str:
    """``parts`` below ``base``, with ``/`` for S3 URIs and the OS's separator for local paths."""
    if is_s3(base):
        scheme, rest = base.split("://", 1)
        return f"{scheme}://" + posixpath.join(rest.rstrip("/"), *parts)
    return os.path.join(base, *parts)


def exists(uri: str) -> bool:
    """Whether a file, object or folder is at ``uri`` (S3 failures named: ``StorageError``)."""
    fs, path = filesystem(uri)
    with named_errors(uri, "cannot look up"):
        return fs.exists(path)


def read_bytes(uri: str) -> bytes:
    """The whole content of the file or object ``uri`` (``FileNotFoundError`` when there is none)."""
    fs, path = filesystem(uri)
    with named_errors(uri, "cannot read"), fs.open(path, "rb") as f:
        return f.read()


@contextmanager
def open_input(uri: str, block_size: int = 8 * 2**20) -> Iterator[IO[bytes]]:
    """A seekable binary reader; S3 objects are fetched in ``block_size`` ranges, never whole."""
    fs, path = filesystem(uri)
    if is_s3(uri):
        with named_errors(uri, "cannot open"):
            f = fs.open(path, "rb", block_size=block_size, cache_type="readahead")
    else:
        f = open(path, "rb")
    try:
        yield f
    finally:
        f.close()


# Local writes go to a hidden temporary file beside the target (listings skip hidden names), then a rename.
TEMP_PREFIX = ".tmp-"


def remove_temporaries(uri: str) -> int:
    """Delete the temporary files that writers killed mid-write left directly in the local folder ``uri``
    (S3 writes leave none); how many. Call it only when no writer is running there."""
    if is_s3(uri):
        return 0
    try:
        entries = list(os.scandir(os.path.abspath(os.path.expanduser(uri))))
    except (FileNotFoundError, NotADirectoryError):
        return 0
    stale = [e.path for e in entries if e.name.startswith(TEMP_PREFIX) and e.is_file(follow_symlinks=False)]
    for path in stale:
        os.unlink(path)
    return len(stale)


# Test-only: a write whose path contains this text fails with ENOSPC, as on a full disk
# (tests/test_faults.py). Never set it in production.
TEST_FAIL_WRITE_ENV = "DAS_TEST_FAIL_WRITE"


def _fail_for_tests(path: str) -> None:
    fail_on = os.environ.get(TEST_FAIL_WRITE_ENV)
    if fail_on and fail_on in path:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)


def _new_temporary(directory: str) -> tuple[int, str]:
    """(descriptor, path) of a new hidden file in ``directory`` (made if missing), open for writing, with the
    mode a plain ``open()`` gives: created as 0o666 and the kernel takes the umask off (no umask lookup, no
    chmod per write)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    while True:
        tmp = os.path.join(directory, f"{TEMP_PREFIX}{os.urandom(8).hex()}")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue                            # another writer drew the same name: draw again
        except FileNotFoundError:
            os.makedirs(directory, exist_ok=True)   # the folder's first part


def write_bytes_atomic(uri: str, data: bytes, content_type: str | None = None) -> None:
    """Write ``data`` so that readers see the old object or the whole new one, never a part (``write_atomic``)."""
    write_atomic(uri, lambda f: f.write(data), content_type)


def write_atomic(uri: str, fill: Callable[[IO[bytes]], object], content_type: str | None = None) -> None:
    """Write what ``fill`` writes into the binary file it is given, so that readers see the old object or the
    whole new one, never a part: a large file is streamed, never held in memory whole.

    Local files are written beside the target and renamed into place, with
    the mode a plain ``open()`` gives (0o666 less the umask: colleagues on a
    shared disk can read the results); an S3 PUT only becomes visible when it
    completes, with ``content_type`` as its Content-Type when given (what a
    static website serves it as).
    """
    fs, path = filesystem(uri)
    if is_s3(uri):
        _fail_for_tests(path)
        extra = {"ContentType": content_type} if content_type else {}
        with named_errors(uri, "cannot write"), fs.open(path, "wb", **extra) as f:
            fill(f)
        invalidate(uri)
        return
    fd, tmp = _new_temporary(os.path.dirname(path) or ".")
    try:
        with os.fdopen(fd, "wb") as f:
            fill(f)
            _fail_for_tests(path)
        os.replace(tmp, path)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)                      # a failed write leaves nothing behind, not even hidden
        if isinstance(exc, OSError) and exc.errno in WRITE_ERRNOS:
            # ENOSPC from write() names no file: name the part that could not be written
            raise WriteFailed(exc.errno, exc.strerror or str(exc), exc.filename or path) from exc
        if isinstance(exc, OSError) and exc.filename is None:
            raise OSError(exc.errno, exc.strerror or str(exc), path) from exc
        raise


def list_files(uri: str, extensions: tuple[str, ...] | None = None) -> list[str]:
    """All objects under a folder or prefix, recursively, sorted, as URIs.

    Hidden names (a path part starting with ``.`` or ``_``) are skipped, as are
    names whose extension is not in ``extensions`` (case-insensitive) when given.
    """
    fs, path = filesystem(uri)
    root = path.rstrip("/")
    found = []
    with named_errors(uri, "cannot list"):
        entries = fs.find(root)
    for entry in entries:
        rel = entry[len(root):].lstrip("/")
        if any(part.startswith((".", "_")) for part in rel.split("/")):
            continue
        if extensions and not rel.lower().endswith(tuple(e.lower() for e in extensions)):
            continue
        found.append(to_uri(fs, entry, uri))
    return sorted(found)


def remove(uri: str) -> None:
    """Delete one file or object, if it exists. There is deliberately no recursive form: das deletes only
    files it names as its own, one by one, and never a folder with whatever else it holds."""
    fs, path = filesystem(uri)
    with named_errors(uri, "cannot remove"):
        if fs.isfile(path):
            fs.rm_file(path)
    invalidate(uri)


def remove_empty_folder(uri: str) -> bool:
    """Remove the local folder ``uri`` if it is empty (S3 has no folders to remove); whether it was removed."""
    if is_s3(uri):
        return False
    try:
        os.rmdir(absolute(uri))
    except OSError:                 # missing, not empty, or not a folder: left as it is
        return False
    return True
