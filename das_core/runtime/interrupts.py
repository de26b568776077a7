"""How a job meets Ctrl-C and SIGTERM: both end it as an interrupt, never in the middle of an import.

``sigterm_as_interrupt`` makes SIGTERM (what ``kill``, Kubernetes and Ray's job stop send) raise
``KeyboardInterrupt`` as Ctrl-C does, so the run records that it was interrupted and releases its lock.

``interrupts_held`` holds either signal back while a block imports and builds the model stack (torch,
laion-clap, transformers: about a second of imports, more to load weights). An interrupt raised inside an
import can be swallowed by a library's broad ``except`` or wrapped into another error, and one raised inside
``exec``-generated code (dataclasses' methods) makes CPython end the process by SIGINT after das has handled
it. Held back, the interrupt is raised as soon as the block ends.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM raises ``KeyboardInterrupt`` in the main thread (as Ctrl-C does), so that the run records that
    it was interrupted and releases its lock; outside the main thread, nothing changes."""
    if not _in_main_thread():
        yield
        return

    def interrupt(signum, frame):
        """The SIGTERM handler: raise ``KeyboardInterrupt`` naming the signal."""
        raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def interrupts_held() -> Iterator[None]:
    """Ctrl-C and SIGTERM arriving inside the block are held back and raised as ``KeyboardInterrupt`` when it
    ends (at once if the block ends by another exception, which then stands behind the interrupt); outside
    the main thread, nothing changes."""
    if not _in_main_thread():
        yield
        return
    held: list[int] = []

    def hold(signum, frame):
        """Remember the signal for the end of the block."""
        held.append(signum)

    previous = {signum: signal.signal(signum, hold) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if held:
            name = signal.Signals(held[0]).name
            raise KeyboardInterrupt("" if held[0] == signal.SIGINT else f"signal {name}")
