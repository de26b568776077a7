"""One way to reach bytes: local paths and ``s3://`` URIs.

S3 endpoint and credentials come from the standard AWS environment and
config files (``AWS_ACCESS_KEY_ID``, ``AWS_PROFILE``, ``~/.aws/config``, ...).
``AWS_ENDPOINT_URL_S3`` (preferred) or ``AWS_ENDPOINT_URL`` select a
non-AWS store such as MinIO or Ceph; ``set_s3_endpoint`` sets the same
variable for this process and any Ray worker that inherits the environment.
"""

from __future__ import annotations

import os
import posixpath
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO

import fsspec

S3_SCHEMES = ("s3://", "s3a://")


def is_s3(uri: str) -> bool:
    return uri.startswith(S3_SCHEMES)


def s3_endpoint() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def set_s3_endpoint(url: str) -> None:
    """Point every S3 access of this process (and of workers that inherit its env) at ``url``."""
    os.environ["AWS_ENDPOINT_URL_S3"] = url


def _s3_filesystem():
    import s3fs

    kwargs = {"skip_instance_cache": True}
    endpoint = s3_endpoint()
    if endpoint:
        kwargs["endpoint_url"] = endpoint
    return s3fs.S3FileSystem(**kwargs)


def filesystem(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem for ``uri`` and the path inside it."""
    if is_s3(uri):
        return _s3_filesystem(), uri.split("://", 1)[1]
    return fsspec.filesystem("file"), os.path.abspath(os.path.expanduser(uri))


def to_uri(fs: fsspec.AbstractFileSystem, path: str, like: str) -> str:
    """Turn a path returned by ``fs`` back into a URI of the same kind as ``like``."""
    if is_s3(like):
        return "s3://" + path.lstrip("/")
    return path


def join(base: str, *parts: str) -> str:
    if is_s3(base):
        scheme, rest = base.split("://", 1)
        return f"{scheme}://" + posixpath.join(rest.rstrip("/"), *parts)
    return os.path.join(base, *parts)


def exists(uri: str) -> bool:
    fs, path = filesystem(uri)
    return fs.exists(path)


def read_bytes(uri: str) -> bytes:
    fs, path = filesystem(uri)
    with fs.open(path, "rb") as f:
        return f.read()


@contextmanager
def open_input(uri: str, block_size: int = 8 * 2**20) -> Iterator[IO[bytes]]:
    """A seekable binary reader; S3 objects are fetched in ``block_size`` ranges, never whole."""
    fs, path = filesystem(uri)
    if is_s3(uri):
        f = fs.open(path, "rb", block_size=block_size, cache_type="readahead")
    else:
        f = open(path, "rb")
    try:
        yield f
    finally:
        f.close()


def write_bytes_atomic(uri: str, data: bytes) -> None:
    """Write ``data`` so that readers see the old object or the whole new one, never a part.

    Local files are written beside the target and renamed into place; an S3
    PUT only becomes visible when it completes.
    """
    fs, path = filesystem(uri)
    if is_s3(uri):
        with fs.open(path, "wb") as f:
            f.write(data)
        return
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def list_files(uri: str, extensions: tuple[str, ...] | None = None) -> list[str]:
    """All objects under a folder or prefix, recursively, sorted, as URIs.

    Hidden names (a path part starting with ``.`` or ``_``) are skipped, as are
    names whose extension is not in ``extensions`` (case-insensitive) when given.
    """
    fs, path = filesystem(uri)
    root = path.rstrip("/")
    found = []
    for entry in fs.find(root):
        rel = entry[len(root):].lstrip("/")
        if any(part.startswith((".", "_")) for part in rel.split("/")):
            continue
        if extensions and not rel.lower().endswith(tuple(e.lower() for e in extensions)):
            continue
        found.append(to_uri(fs, entry, uri))
    return sorted(found)


def remove(uri: str, recursive: bool = False) -> None:
    fs, path = filesystem(uri)
    if fs.exists(path):
        fs.rm(path, recursive=recursive)
