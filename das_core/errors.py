"""The library's errors: one tree under ``DasError``, and nothing else (no reporting, no logging).

* ``Refused`` (a job ends with exit status 2): a bad argument, input or artefact, found before or
  while the work runs; the message says what to do. Every refusal of the library derives from it.
* ``RunFailed`` (exit status 1): the job ran, but its result is not acceptable.
* ``WriteFailed`` (exit status 1): a write that failed while the job ran (disk full, read-only).

Where it helps callers an error also derives from the built-in it resembles: a ``ConfigError`` is a
``ValueError``, a ``StorageError`` an ``OSError``, a missing bucket a ``FileNotFoundError``. How each
ends a job (the exit status, the one line printed) is ``jobs.reporting``'s; the one-line text that
says what ended a run is ``das_core.failure``'s.

This module also knows how a worker's exception reaches the driver (Ray's ``.cause``), so that every
reader of an error walks that chain the same way: ``unwrap``, ``causes``.
"""

from __future__ import annotations

import errno
from collections.abc import Iterator

# A write that failed while the job ran (the output was checked before): the job failed, exit status 1.
RUN_WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG)
# The errnos of a write that cannot succeed however often it is retried (``WriteFailed``).
WRITE_ERRNOS = (*RUN_WRITE_ERRNOS, errno.EACCES, errno.EPERM)


class DasError(Exception):
    """The base of every error das raises on purpose; anything else out of a job is an internal error."""


# ----------------------------------------------------------------------------- refusals (exit status 2)
class Refused(DasError):
    """Work refused before it starts, or an input that cannot be used; the message says what to do
    (exit status 2)."""


class ConfigError(Refused, ValueError):
    """A setting out of range or inconsistent with another."""


class ClusterError(Refused):
    """The Ray cluster cannot be used: it does not answer, or lacks the resources asked for."""


class EngineRefused(Refused):
    """``--local`` / ``--ray`` asked for something the engine cannot do."""


class RunRefused(Refused):
    """A label run that cannot start as asked; the message says what to do."""


class DeviceChangeRefused(RunRefused):
    """``--resume`` asked to encode on another device type (cpu / cuda) than the run it continues: the
    embeddings of the two differ in their last bits, so one run's rows would mix both."""


class InputError(Refused):
    """The input cannot be listed (missing, empty, or a path list without a path column)."""


class StorageError(Refused, OSError):
    """S3 cannot be used for ``uri``: the message (``what (cause); hint``) says why and what to do."""

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


class AudioDecodeError(Refused):
    """A file that cannot be turned into audio: ``name`` (the file), ``kind`` (one of the error kinds of
    ``das_core.audio.decode``: ``not_audio``, ``truncated`` ...) and ``cause`` (the decoder's words).

    Decoding turns it into the file's ``status=error`` row; out of a job (a noise recording, a
    ``--like`` query) it is a refusal."""

    def __init__(self, name: str, kind: str, cause: str):
        self.name = name
        self.kind = kind
        self.cause = cause
        super().__init__(f"{name}: {kind}: {cause}")


class CheckpointError(Refused):
    """A checkpoint that cannot be found, fetched, read or recognised."""


class EncoderError(Refused):
    """A problem with the encoder's configuration (device, precision, inputs)."""


class TokenizerError(EncoderError):
    """The RoBERTa tokenizer a checkpoint needs is missing or is not the real one."""


class CacheError(Refused):
    """A file that is not a usable DAS drift cache (foreign, damaged or inconsistent)."""


class CacheMismatchError(CacheError):
    """A valid cache that was built for another checkpoint."""


class ManifestError(Refused, ValueError):
    """A ``_manifest.json`` is missing, unreadable or not das's."""


class IndexRefused(Refused):
    """``das index`` cannot index this output (no committed unit, no embeddings of its own, not das's)."""


class EmbeddingsMismatch(Refused):
    """Stored embeddings made with another checkpoint than the one they are to be used with."""


class LeaseHeld(Refused):
    """Another run holds the output's lock (exit status 2); the message names it and says what to do."""


class ReportRefused(Refused):
    """The report would replace a file in OUT/report/ that das did not write."""


class BrowseRefused(Refused):
    """``das browse`` cannot serve: its port is taken, its host cannot be bound, or OUT is not a das output."""


class SourceRefused(Refused, PermissionError):
    """``das browse`` refuses to serve audio from a path outside the inputs that the run's manifest names
    (a ``..``, a symlink out of the input, another bucket or prefix, a path not on the path list)."""


class LayoutError(Refused):
    """A dataset root whose files do not follow the published layout."""


class EvaluationError(Refused, ValueError):
    """Stores or splits that cannot give a result (missing clips, an empty split, ...)."""


# ----------------------------------------------------------------------------- failures (exit status 1)
class RunFailed(DasError):
    """The job ran but its result is not acceptable, e.g. too many bad files (exit status 1)."""


class WriteFailed(DasError, OSError):
    """A write that failed while a job ran (disk full, read-only file system, permission), with its errno,
    cause and path (exit status 1, like ``RunFailed``, but not one: its line is built from those three).

    It keeps them across Ray: Ray Data appends its retry advice to an exception's ``args``, and pickles an
    ``OSError`` from them, so that a plain one arrives with that advice as its file name."""

    def __reduce__(self):
        return type(self), (self.errno, self.strerror, self.filename)


# ----------------------------------------------------------------------------- what lies behind an error
def _ray_cause(exc: BaseException) -> BaseException | None:
    """The worker's own exception inside Ray's wrapper (``RayTaskError.cause``), or None for any other."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, BaseException) and cause is not exc else None


def unwrap(exc: BaseException) -> BaseException:
    """The exception a worker raised, out of the wrappers Ray re-raises it in (whose text is a remote
    traceback); ``exc`` itself when it is no wrapper."""
    for _ in range(3):
        cause = _ray_cause(exc)
        if cause is None:
            break
        exc = cause
    return exc


def causes(exc: BaseException, steps: int = 8) -> Iterator[BaseException]:
    """``exc`` and the exceptions behind it, nearest first: through Ray's wrappers (``unwrap``), then
    ``__cause__`` or ``__context__`` (not a context that ``raise ... from None`` put aside); at most ``steps``
    steps."""
    current: BaseException | None = exc
    for _ in range(steps):
        if current is None:
            return
        cause = _ray_cause(current)
        if cause is not None:
            current = cause
            continue
        yield current
        if current.__cause__ is not None or current.__suppress_context__:
            current = current.__cause__
        else:
            current = current.__context__


def interrupted_by(exc: BaseException) -> KeyboardInterrupt | None:
    """The Ctrl-C behind ``exc``, if one is: an interrupt that lands inside a library's import can arrive
    wrapped (Python turns an exception raised in ``__set_name__`` into a ``RuntimeError``)."""
    return next((e for e in causes(exc) if isinstance(e, KeyboardInterrupt)), None)
