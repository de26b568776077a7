"""One way to reach bytes: local paths and ``s3://`` URIs.

S3 endpoint and credentials come from the standard AWS environment and
config files (``AWS_ACCESS_KEY_ID``, ``AWS_PROFILE``, ``~/.aws/config``, ...).
``AWS_ENDPOINT_URL_S3`` (preferred) or ``AWS_ENDPOINT_URL`` select a
non-AWS store such as MinIO or Ceph; ``set_s3_endpoint`` sets the same
variable for this process and any Ray worker that inherits the environment.

Each process keeps one S3 client per endpoint (a new one after a fork or an
endpoint change), with bounded timeouts and retries on transient errors.
S3 failures that no retry can fix are raised as ``StorageError`` subclasses
whose message names the URI, the cause and what to do.
"""

from __future__ import annotations

import errno
import os
import posixpath
import tempfile
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from typing import IO

import fsspec

from das_core.errors import WRITE_ERRNOS, Refused, WriteFailed

S3_SCHEMES = ("s3://", "s3a://")

# Bounded waits: an unreachable endpoint fails in about S3_RETRIES x S3_ATTEMPTS x S3_CONNECT_TIMEOUT_S.
S3_CONNECT_TIMEOUT_S = 5
S3_READ_TIMEOUT_S = 30
S3_ATTEMPTS = 3          # botocore "standard" retries: 5xx, throttling, connection resets
S3_RETRIES = 2           # s3fs's own loop around them (truncated bodies, SlowDown in odd XML)
# The pre-flight probe runs before any work: fail fast rather than patiently.
PROBE_ATTEMPTS = 2

BUCKET_HINT = "check the bucket name, the region and the endpoint (--s3-endpoint / AWS_ENDPOINT_URL_S3)"
CREDENTIALS_HINT = ("set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE, or write "
                    "~/.aws/credentials")


class StorageError(OSError):
    """S3 cannot be used for ``uri``: the message says why and what to do."""

    def __init__(self, uri: str, what: str, cause: str, hint: str):
        self.uri, self.cause, self.hint = uri, cause, hint
        super().__init__(f"{what} ({cause}); {hint}")


class S3CredentialsError(StorageError):
    """No usable AWS credentials were found."""


class S3UnreachableError(StorageError):
    """The endpoint did not answer (refused, timed out, DNS, TLS)."""


class BucketNotFoundError(StorageError, FileNotFoundError):
    """The bucket of ``uri`` does not exist."""


class S3AccessDeniedError(StorageError, PermissionError):
    """The credentials are not allowed to do this (AccessDenied, bad key, expired token)."""


def is_s3(uri: str) -> bool:
    return uri.startswith(S3_SCHEMES)


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


def _components(uri: str) -> tuple[str, ...]:
    """A location as comparable path components: S3 ``("s3", bucket, key parts...)`` (``s3a`` is ``s3``);
    local: the real path (symlinks resolved), split."""
    if is_s3(uri):
        return ("s3", *[p for p in uri.split("://", 1)[1].split("/") if p])
    return ("file", *[p for p in os.path.realpath(absolute(uri)).split(os.sep) if p])


def overlap(inner: str, outer: str) -> str | None:
    """How location ``inner`` meets location ``outer``: ``"the same location as"``, ``"inside"``, ``"contains"``,
    or None when neither holds the other. Compared by path components (``out2`` is not inside ``out``),
    local paths with symlinks resolved, S3 prefixes within one bucket."""
    a, b = _components(inner), _components(outer)
    if a == b:
        return "the same location as"
    if a[:len(b)] == b:
        return "inside"
    if b[:len(a)] == a:
        return "contains"
    return None


def refuse_overlap(out: str, out_option: str, source: str, source_option: str) -> None:
    """Refuse, before any work, an output location that is, holds or lies inside a location das reads
    (``Refused``): das would read its own output back, and mix its files with the ones it reads."""
    how = overlap(out, source)
    if how is None:
        return
    raise Refused(f"{out_option} {out} is {how} {source_option} {source} (das would mix its output with the "
                  f"files it reads); choose an {out_option} that neither lies inside {source} nor contains it")


def s3_endpoint() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def set_s3_endpoint(url: str) -> None:
    """Point every S3 access of this process (and of workers that inherit its env) at ``url``."""
    os.environ["AWS_ENDPOINT_URL_S3"] = url


def bucket_of(uri: str) -> str:
    return uri.split("://", 1)[1].split("/", 1)[0]


def _where() -> str:
    return s3_endpoint() or "AWS S3"


def botocore_config(attempts: int = S3_ATTEMPTS) -> dict:
    """Keyword arguments of ``botocore.config.Config`` for every S3 client das makes."""
    return {"connect_timeout": S3_CONNECT_TIMEOUT_S, "read_timeout": S3_READ_TIMEOUT_S,
            "retries": {"mode": "standard", "max_attempts": attempts}}


_CLIENTS: dict[tuple[int, str | None], fsspec.AbstractFileSystem] = {}
_CLIENTS_LOCK = threading.Lock()


def _after_fork_in_child() -> None:
    global _CLIENTS_LOCK
    _CLIENTS_LOCK = threading.Lock()      # another thread may have held it at the fork


os.register_at_fork(after_in_child=_after_fork_in_child)


def s3_filesystem() -> fsspec.AbstractFileSystem:
    """This process's S3 filesystem for the current endpoint, made once and reused.

    Keyed by process id (a forked child or a Ray worker must not use its
    parent's connections and event loop) and endpoint (tests and
    ``--s3-endpoint`` change it). Listings are not cached: Ray workers write
    objects the driver lists, and no process could invalidate another's cache.
    """
    key = (os.getpid(), s3_endpoint())
    with _CLIENTS_LOCK:
        fs = _CLIENTS.get(key)
        if fs is None:
            import s3fs

            fs = s3fs.S3FileSystem(skip_instance_cache=True, use_listings_cache=False, endpoint_url=key[1],
                                   config_kwargs=botocore_config())
            fs.retries = S3_RETRIES
            _CLIENTS[key] = fs
        return fs


def clear_s3_cache() -> None:
    """Forget this process's S3 clients (e.g. after credentials change); the next call makes new ones."""
    with _CLIENTS_LOCK:
        for (pid, _), fs in list(_CLIENTS.items()):
            if pid == os.getpid():
                fs.invalidate_cache()
        _CLIENTS.clear()


def invalidate(uri: str) -> None:
    """Drop whatever this process's S3 client remembers about ``uri`` and its parents."""
    if not is_s3(uri):
        return
    with _CLIENTS_LOCK:
        fs = _CLIENTS.get((os.getpid(), s3_endpoint()))
    if fs is not None:
        fs.invalidate_cache(uri.split("://", 1)[1])


_DENIED_CODES = {"AccessDenied", "403", "Forbidden", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken",
                 "InvalidToken", "AllAccessDisabled", "AccountProblem"}


def _client_error_code(exc: BaseException) -> str | None:
    """The S3 error code of ``exc`` or of the botocore error s3fs translated into it."""
    seen = 0
    while exc is not None and seen < 5:
        response = getattr(exc, "response", None)
        if isinstance(response, dict) and "Error" in response:
            return str(response["Error"].get("Code") or "")
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return None


def as_storage_error(exc: BaseException, uri: str, action: str = "cannot access") -> StorageError | None:
    """The typed ``StorageError`` for an S3 failure, or None when ``exc`` is not one (e.g. a missing key)."""
    if isinstance(exc, StorageError):
        return exc
    try:
        from botocore import exceptions as bx
    except ImportError:
        return None
    what = f"{action} {uri}"
    if isinstance(exc, (bx.NoCredentialsError, bx.PartialCredentialsError, bx.CredentialRetrievalError,
                        bx.ProfileNotFound, bx.TokenRetrievalError)):
        return S3CredentialsError(uri, what, f"no usable AWS credentials: {exc}", CREDENTIALS_HINT)
    # a bare timeout is S3's only when it came from an S3 operation (``uri`` is an s3:// URI)
    timeouts = (TimeoutError, fsspec.exceptions.FSTimeoutError) if is_s3(uri) else ()
    if isinstance(exc, (bx.ConnectionError, bx.HTTPClientError, *timeouts)):
        return S3UnreachableError(uri, what, f"S3 endpoint {_where()} did not answer: {exc}",
                                  "check the endpoint (--s3-endpoint / AWS_ENDPOINT_URL_S3) and the network")
    code = _client_error_code(exc)
    if code == "NoSuchBucket":
        return BucketNotFoundError(uri, what, f"bucket {bucket_of(uri)!r} does not exist at {_where()}",
                                   BUCKET_HINT)
    if code in _DENIED_CODES:
        return S3AccessDeniedError(uri, what, f"access denied ({code})",
                                   "check the credentials and the bucket policy for this bucket and prefix")
    return None


@contextmanager
def _named_errors(uri: str, action: str) -> Iterator[None]:
    """Re-raise S3 failures of ``uri`` as typed ``StorageError``s; anything else passes unchanged."""
    if not is_s3(uri):
        yield
        return
    try:
        yield
    except Exception as exc:
        typed = as_storage_error(exc, uri, action)
        if typed is None or typed is exc:
            raise
        raise typed from exc


def check_s3_access(uris: Iterable[str]) -> None:
    """Refuse, quickly, S3 URIs whose bucket cannot be used: no credentials, no answer, no bucket.

    One HEAD per bucket with a short retry budget, before any work starts.
    A 403 on the bucket is not refused: a role may read a prefix without
    the right to see the bucket; the first real access names the problem.
    """
    buckets: dict[str, str] = {}
    for uri in uris:
        if is_s3(uri):
            buckets.setdefault(bucket_of(uri), uri)
    if not buckets:
        return
    import botocore.config
    import botocore.session

    client = botocore.session.get_session().create_client(
        "s3", endpoint_url=s3_endpoint(), config=botocore.config.Config(**botocore_config(PROBE_ATTEMPTS)))
    for bucket, uri in buckets.items():
        try:
            client.head_bucket(Bucket=bucket)
        except Exception as exc:
            code = _client_error_code(exc)
            if code in ("404", "NoSuchBucket", "NotFound"):
                raise BucketNotFoundError(uri, f"cannot use {uri}", f"bucket {bucket!r} does not exist at "
                                          f"{_where()}", BUCKET_HINT) from exc
            if code in ("403", "AccessDenied", "Forbidden", "301", "PermanentRedirect"):
                continue
            typed = as_storage_error(exc, uri, "cannot use")
            if typed is None and code is None:
                raise
            raise typed or StorageError(uri, f"cannot use {uri}", f"S3 at {_where()} answered {code}: {exc}",
                                        "check the endpoint, the region and the credentials") from exc


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
    if is_s3(base):
        scheme, rest = base.split("://", 1)
        return f"{scheme}://" + posixpath.join(rest.rstrip("/"), *parts)
    return os.path.join(base, *parts)


def exists(uri: str) -> bool:
    fs, path = filesystem(uri)
    with _named_errors(uri, "cannot look up"):
        return fs.exists(path)


def read_bytes(uri: str) -> bytes:
    fs, path = filesystem(uri)
    with _named_errors(uri, "cannot read"), fs.open(path, "rb") as f:
        return f.read()


@contextmanager
def open_input(uri: str, block_size: int = 8 * 2**20) -> Iterator[IO[bytes]]:
    """A seekable binary reader; S3 objects are fetched in ``block_size`` ranges, never whole."""
    fs, path = filesystem(uri)
    if is_s3(uri):
        with _named_errors(uri, "cannot open"):
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


def write_bytes_atomic(uri: str, data: bytes) -> None:
    """Write ``data`` so that readers see the old object or the whole new one, never a part.

    Local files are written beside the target and renamed into place, with
    the mode a plain ``open()`` gives (0o666 less the umask: colleagues on a
    shared disk can read the results); an S3 PUT only becomes visible when it
    completes.
    """
    fs, path = filesystem(uri)
    if is_s3(uri):
        _fail_for_tests(path)
        with _named_errors(uri, "cannot write"), fs.open(path, "wb") as f:
            f.write(data)
        invalidate(uri)
        return
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=directory)
    try:
        os.fchmod(fd, default_file_mode())      # mkstemp makes 0o600
        with os.fdopen(fd, "wb") as f:
            f.write(data)
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
    with _named_errors(uri, "cannot list"):
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
    with _named_errors(uri, "cannot remove"):
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


def _cause(exc: OSError) -> str:
    """An OS error's cause as a message part: ``read-only file system``, ``no space left on device``."""
    text = exc.strerror or type(exc).__name__
    return text[:1].lower() + text[1:]


def _try_write_in(folder: str) -> None:
    """Create and remove a hidden temporary file in ``folder``: the only true test of writing there
    (``os.access`` says yes to root on a read-only file system)."""
    fd, probe = tempfile.mkstemp(prefix=TEMP_PREFIX + "probe-", dir=folder)
    os.close(fd)
    os.unlink(probe)


def _check_can_make(folder: str, uri: str, option: str) -> None:
    """Refuse ``uri`` unless a file can be written in ``folder``: try it, creating the nearest missing folder
    on the way (and removing what the try made)."""
    parent, missing = folder, None
    while not os.path.lexists(parent) and os.path.dirname(parent) != parent:   # the folders to create
        parent, missing = os.path.dirname(parent), parent
    if not os.path.isdir(parent):
        raise Refused(f"{option} {uri}: {parent} is a file, not a folder; choose another location")
    try:
        if missing:
            os.mkdir(missing)
    except FileExistsError:
        missing = None                           # made meanwhile by someone else: only test writing in it
    except OSError as exc:
        raise Refused(f"{option} {uri}: cannot create {missing} ({_cause(exc)}); "
                      "choose a location you can write to") from None
    where = missing or parent
    try:
        _try_write_in(where)
    except OSError as exc:
        it = "it" if where == os.path.abspath(os.path.expanduser(uri)) else where
        raise Refused(f"{option} {uri}: cannot write in {it} ({_cause(exc)}); "
                      "choose a location you can write to") from None
    finally:
        if missing:
            with suppress(OSError):              # something else wrote there meanwhile: leave it
                os.rmdir(missing)


def check_output_file(uri: str, option: str = "--out") -> None:
    """Refuse, before any work, an output file that cannot be written: a folder, or a place without write access."""
    if is_s3(uri):
        if uri.endswith("/"):
            raise Refused(f"{option} {uri} names a folder (a file such as {uri}cache.npz is expected); "
                             "give a file name")
        return                     # the bucket was probed by run_main; S3 has no folders to collide with
    path = os.path.abspath(os.path.expanduser(uri))
    if os.path.isdir(path):
        raise Refused(f"{option} {uri} is a folder (a file is expected); give a file name, "
                         f"e.g. {os.path.join(uri, 'cache.npz')}")
    _check_can_make(os.path.dirname(path), uri, option)


def check_output_folder(uri: str, option: str = "--out") -> None:
    """Refuse, before any work, an output folder that is a file or cannot be created or written."""
    if is_s3(uri):
        return                     # the bucket was probed by run_main
    path = os.path.abspath(os.path.expanduser(uri))
    if os.path.exists(path) and not os.path.isdir(path):
        raise Refused(f"{option} {uri} is a file (a folder is expected); choose another {option}")
    _check_can_make(path, uri, option)
