"""How a job reports and ends: its log lines, one line and an exit status for every failure, bounded waits.

Exit status 2 for a refusal (``das_core.errors.Refused``: the message says what to do), 1 for a run
that failed (``RunFailed``, a write that failed) and for an internal error (its traceback with
``--debug`` or ``DAS_DEBUG=1``), 130 when interrupted. The words are ``das_core.failure``'s, so that a
run manifest's ``reason`` reads as the line printed.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from das_core.errors import interrupted_by
from das_core.failure import DEBUG_ENV, FAILED, INTERNAL, REFUSED, explain, one_line

EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130
EXIT_STATUS = {REFUSED: EXIT_USAGE, FAILED: EXIT_FAILED, INTERNAL: EXIT_FAILED}


def describe_failure(exc: BaseException) -> tuple[int, str]:
    """The exit status and the one-line message (without ``prog: error:``) for an exception out of a job:
    2 for refusals (every ``Refused``, including ``StorageError`` and raw botocore credential / connection
    errors), 1 for ``RunFailed``, a failed write and anything unexpected (an internal error)."""
    kind, text = explain(exc)
    return EXIT_STATUS[kind], text


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
    (``describe_failure``; 130 when interrupted, with ``interrupted_hint`` as the advice). ``debug`` adds
    the traceback."""
    interrupted = (f"{prog}: error: interrupted (KeyboardInterrupt); "
                   f"{interrupted_hint or 'rerun the command to start again'}")
    try:
        return body()
    except KeyboardInterrupt:
        if debug:
            traceback.print_exc(file=sys.stderr)
        print(interrupted, file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - every failure ends as one line, never a traceback
        if debug:
            traceback.print_exc(file=sys.stderr)
        if interrupted_by(exc) is not None:        # a Ctrl-C that a library wrapped
            print(interrupted, file=sys.stderr, flush=True)
            return EXIT_INTERRUPTED
        status, message = describe_failure(exc)
        print(f"{prog}: error: {one_line(message)}", file=sys.stderr, flush=True)
        return status


@contextmanager
def exit_after(seconds: float, message: str) -> Iterator[None]:
    """Ends the process with ``message`` on stderr and exit status 2 if the block still runs after ``seconds``:
    the bound of a wait that cannot be cancelled from another thread (``ray.init`` retrying an address)."""
    def give_up() -> None:
        """The message, then the process ends at once (``os._exit``: the waiting thread cannot be joined)."""
        print(message, file=sys.stderr, flush=True)
        os._exit(EXIT_USAGE)

    watchdog = threading.Timer(seconds, give_up)
    watchdog.daemon = True
    watchdog.start()
    try:
        yield
    finally:
        watchdog.cancel()
