"""S3 as das reaches it: ``s3://`` URIs, the endpoint, one client per process, and S3 failures named.

The endpoint and credentials come from the standard AWS environment and config files
(``AWS_ACCESS_KEY_ID``, ``AWS_PROFILE``, ``~/.aws/config``, ...). ``AWS_ENDPOINT_URL_S3`` (preferred)
or ``AWS_ENDPOINT_URL`` select a non-AWS store such as MinIO or Ceph; ``set_s3_endpoint`` sets the same
variable for this process and any Ray worker that inherits the environment.

Each process keeps one S3 client per endpoint (a new one after a fork or an endpoint change), with
bounded timeouts and retries on transient errors. S3 failures that no retry can fix are raised as
``StorageError`` subclasses (``as_storage_error``, ``named_errors``) whose message names the URI, the
cause and what to do; ``check_s3_access`` probes the buckets of a job's options before any work.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import fsspec

from das_core.errors import (
    BucketNotFoundError,
    S3AccessDeniedError,
    S3CredentialsError,
    S3UnreachableError,
    StorageError,
)

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


def is_s3(uri: str) -> bool:
    """Whether ``uri`` names an S3 object or prefix (``s3://`` or ``s3a://``)."""
    return uri.startswith(S3_SCHEMES)


def s3_endpoint() -> str | None:
    """The endpoint S3 clients use (``AWS_ENDPOINT_URL_S3``, else ``AWS_ENDPOINT_URL``); None for AWS S3."""
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def set_s3_endpoint(url: str) -> None:
    """Point every S3 access of this process (and of workers that inherit its env) at ``url``."""
    os.environ["AWS_ENDPOINT_URL_S3"] = url


def bucket_of(uri: str) -> str:
    """The bucket name of the S3 URI ``uri``."""
    return uri.split("://", 1)[1].split("/", 1)[0]


def _where() -> str:
    """The S3 endpoint as messages name it."""
    return s3_endpoint() or "AWS S3"


def botocore_config(attempts: int = S3_ATTEMPTS) -> dict:
    """Keyword arguments of ``botocore.config.Config`` for every S3 client das makes."""
    return {"connect_timeout": S3_CONNECT_TIMEOUT_S, "read_timeout": S3_READ_TIMEOUT_S,
            "retries": {"mode": "standard", "max_attempts": attempts}}


_CLIENTS: dict[tuple[int, str | None], fsspec.AbstractFileSystem] = {}
_CLIENTS_LOCK = threading.Lock()


def _after_fork_in_child() -> None:
    """A fresh lock in a forked child; its parent's clients are never reused (they are keyed by process id)."""
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


def client_error_code(exc: BaseException) -> str | None:
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
    code = client_error_code(exc)
    if code == "NoSuchBucket":
        return BucketNotFoundError(uri, what, f"bucket {bucket_of(uri)!r} does not exist at {_where()}",
                                   BUCKET_HINT)
    if code in _DENIED_CODES:
        return S3AccessDeniedError(uri, what, f"access denied ({code})",
                                   "check the credentials and the bucket policy for this bucket and prefix")
    return None


@contextmanager
def named_errors(uri: str, action: str) -> Iterator[None]:
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
            code = client_error_code(exc)
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
