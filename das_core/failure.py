"""What ended a job, in one line: the words a user reads on stderr and in a run manifest's ``reason``.

``explain`` sorts an exception out of a job into ``refused`` (``Refused``, and the OS's missing-file and
permission errors), ``failed`` (``RunFailed``, a write that failed while the job ran) or ``internal``
(anything else: a bug to report), with its one-line text. ``jobs.reporting`` turns the kind into an
exit status and prints the line; ``das_core.output.record`` writes the same line into the manifest.
"""

from __future__ import annotations

from das_core.errors import RUN_WRITE_ERRNOS, WRITE_ERRNOS, Refused, RunFailed, WriteFailed, causes, unwrap
from das_core.io.s3 import as_storage_error

REFUSED, FAILED, INTERNAL = "refused", "failed", "internal"
DEBUG_ENV = "DAS_DEBUG"          # set to a true value, a failure prints its traceback (named in the internal text)
# The built-in errors that are refusals too: a file or folder the user named is missing or forbidden.
OS_REFUSALS = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)
INTERNAL_TEXT_CHARS = 400        # an internal error's own text is cut after this many characters


def one_line(text: object) -> str:
    """``text`` as one line: every run of white space (newlines included) becomes one space."""
    return " ".join(str(text).split())


def cannot_write(exc: OSError, where: str, advice: str) -> str:
    """The one message of a write that failed: ``cannot write PATH (cause); advice``, with ``where`` for the
    path when ``exc`` names no file."""
    return f"cannot write {exc.filename or where} ({exc.strerror or exc}); {advice}"


def write_error_behind(exc: BaseException) -> OSError | None:
    """The disk-full, read-only or permission error behind ``exc`` (a worker's write, wrapped by Ray and
    re-raised), or None when there is none."""
    return next((cause for cause in causes(exc) if isinstance(cause, OSError) and cause.errno in WRITE_ERRNOS),
                None)


def explain(exc: BaseException) -> tuple[str, str]:
    """How ``exc`` ended a job: ``(kind, text)``, kind ``REFUSED``, ``FAILED`` or ``INTERNAL``, text one line
    without ``prog: error:``. A worker's exception is judged as the worker raised it (``unwrap``); a raw
    botocore credential or connection error is a refusal, with the words of its ``StorageError``."""
    exc = unwrap(exc)
    if isinstance(exc, (Refused, *OS_REFUSALS)):
        return REFUSED, one_line(exc)
    if isinstance(exc, RunFailed):
        return FAILED, one_line(exc)
    if isinstance(exc, WriteFailed) or (isinstance(exc, OSError) and exc.errno in RUN_WRITE_ERRNOS):
        return FAILED, cannot_write(exc, "a file", "free space or choose a location you can write to, then rerun")
    typed = as_storage_error(exc, "an S3 object", "cannot use")
    if typed is not None:
        return REFUSED, one_line(typed)
    text = one_line(exc)
    text = text if len(text) <= INTERNAL_TEXT_CHARS else text[:INTERNAL_TEXT_CHARS] + " ..."
    return INTERNAL, (f"internal error ({type(exc).__name__}: {text}); rerun with --debug (or {DEBUG_ENV}=1) "
                      "for the traceback and report it")
