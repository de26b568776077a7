"""The library's errors, and how each ends a job: one line and an exit status.

``Refused`` (exit status 2): a bad argument, input or artefact; the message
says what to do. Every refusal of the library derives from it (``CacheError``,
``CheckpointError``, ``EncoderError``, ``RunRefused`` ...); storage errors and
the OS's missing-file and permission errors are refusals too. ``RunFailed`` (exit status 1): the job ran, but its
result is not acceptable. Anything else is an internal error (exit status 1,
traceback with ``--debug``).
"""

from __future__ import annotations

import errno
import logging
import os
import sys
import threading
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager

EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130
# A write that failed while the job ran (the output was checked before): the job failed, exit status 1.
RUN_WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG)
WRITE_ERRNOS = (*RUN_WRITE_ERRNOS, errno.EACCES, errno.EPERM)
DEBUG_ENV = "DAS_DEBUG"


class Refused(Exception):
    """Work refused before it starts; the message says what to do (exit status 2)."""


class ConfigError(Refused, ValueError):
    """A setting out of range or inconsistent with another."""


class ClusterError(Refused):
    """The Ray cluster cannot be used: it does not answer, or lacks the resources asked for."""


class CheckpointError(Refused):
    """A checkpoint that cannot be found, fetched, read or recognised."""


class EncoderError(Refused):
    """A problem with the encoder's configuration (device, precision, inputs)."""


class TokenizerError(EncoderError):
    """The RoBERTa tokenizer a checkpoint needs is missing or is not the real one."""


class RunFailed(Exception):
    """The job ran but its result is not acceptable, e.g. too many bad files (exit status 1)."""


class WriteFailed(OSError):
    """A write that failed while a job ran (disk full, read-only file system, permission), with its errno,
    cause and path. It keeps them across Ray: Ray Data appends its retry advice to an exception's ``args``,
    and pickles an ``OSError`` from them, so that a plain one arrives with that advice as its file name."""

    def __reduce__(self):
        return type(self), (self.errno, self.strerror, self.filename)


def one_line(text: object) -> str:
    return " ".join(str(text).split())


def unwrap(exc: BaseException) -> BaseException:
    """Ray re-raises a worker's exception wrapped (its text: a remote traceback); ``cause`` is the original."""
    for _ in range(3):
        cause = getattr(exc, "cause", None)
        if not isinstance(cause, BaseException) or cause is exc:
            break
        exc = cause
    return exc


def refusal_types() -> tuple[type[BaseException], ...]:
    from das_core.audio.decode import AudioDecodeError
    from das_core.io import storage

    return (Refused, storage.StorageError, AudioDecodeError, FileNotFoundError, PermissionError, IsADirectoryError,
            NotADirectoryError)


def describe_failure(exc: BaseException) -> tuple[int, str]:
    """The exit status and the one-line message (without ``prog: error:``) for an exception out of a job.

    2 for refusals (``refusal_types``, including every ``storage.StorageError``
    and raw botocore credential / connection errors), 1 for ``RunFailed``
    and for anything unexpected (an internal error).
    """
    from das_core.io import storage

    exc = unwrap(exc)
    if isinstance(exc, refusal_types()):
        return EXIT_USAGE, one_line(exc)
    if isinstance(exc, RunFailed):
        return EXIT_FAILED, one_line(exc)
    if isinstance(exc, WriteFailed) or (isinstance(exc, OSError) and exc.errno in RUN_WRITE_ERRNOS):
        where = exc.filename or "a file"
        return EXIT_FAILED, (f"cannot write {where} ({exc.strerror or exc}); free space or choose a location "
                             "you can write to, then rerun")
    typed = storage.as_storage_error(exc, "an S3 object", "cannot use")
    if typed is not None:
        return EXIT_USAGE, one_line(typed)
    text = one_line(exc)
    text = text if len(text) <= 400 else text[:400] + " ..."
    return EXIT_FAILED, (f"internal error ({type(exc).__name__}: {text}); rerun with --debug (or {DEBUG_ENV}=1) "
                         "for the traceback and report it")


def debug_requested(flag: bool = False) -> bool:
    """``--debug`` given, or ``DAS_DEBUG`` set to a true value: failures print their traceback too."""
    return bool(flag) or os.environ.get(DEBUG_ENV, "").lower() in ("1", "true", "yes", "on")


def setup_logging(verbose: bool = False) -> None:
    """A job's log lines on stderr (debug with ``verbose``); botocore's INFO lines are noise to a user."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    if not verbose:
        logging.getLogger("botocore").setLevel(logging.WARNING)


def run_reporting(prog: str, body: Callable[[], int], *, debug: bool = False,
                  interrupted_hint: str | None = None) -> int:
    """``body()``, with every failure turned into one line ``prog: error: ...`` on stderr and an exit status
    (``describe_failure``; 130 when interrupted). ``debug`` adds the traceback."""
    try:
        return body()
    except KeyboardInterrupt:
        print(f"{prog}: error: interrupted (KeyboardInterrupt); "
              f"{interrupted_hint or 'rerun the command to start again'}", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - every failure ends as one line, never a traceback
        status, message = describe_failure(exc)
        if debug:
            traceback.print_exc(file=sys.stderr)
        print(f"{prog}: error: {one_line(message)}", file=sys.stderr, flush=True)
        return status


@contextmanager
def exit_after(seconds: float, message: str) -> Iterator[None]:
    """Ends the process with ``message`` on stderr and exit status 2 if the block still runs after ``seconds``:
    the bound of a wait that cannot be cancelled from another thread (``ray.init`` retrying an address)."""
    def give_up() -> None:
        print(message, file=sys.stderr, flush=True)
        os._exit(EXIT_USAGE)

    watchdog = threading.Timer(seconds, give_up)
    watchdog.daemon = True
    watchdog.start()
    try:
        yield
    finally:
        watchdog.cancel()
