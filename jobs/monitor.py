"""The watch over a running label job: das's progress line from the first second, and the stall watchdog.

``RunMonitor`` runs a thread beside the command's loop (``jobs.label.label_units``), on both engines; the
line's words and the stall clock are the library's (``das_core.runtime.progress``).
"""

from __future__ import annotations

import _thread
import logging
import sys
import threading
import time
from collections.abc import Callable
from typing import Protocol

from das_core.errors import RunFailed, interrupted_by
from das_core.runtime.progress import ProgressSnapshot, StallWatch, progress_line, stall_limits

log = logging.getLogger("das")


class WatchedRun(Protocol):
    """What ``RunMonitor`` reads of the run it watches (a label run's ledger, ``das_core.label.ledger.LabelRun``)."""

    t0: float                   # when the work started (monotonic seconds)

    @property
    def progress_every_s(self) -> float:
        """How often a log gets the progress line (seconds)."""

    @property
    def files_done(self) -> int:
        """Files counted in this invocation."""

    @property
    def windows_done(self) -> int:
        """Windows encoded in this invocation."""

    @property
    def files_to_do(self) -> int:
        """Files this invocation labels."""

    @property
    def units_committed_before(self) -> int:
        """Units committed by earlier invocations (--resume)."""

    @property
    def units_total(self) -> int:
        """Every unit of the run."""


class RunMonitor:
    """A thread beside the driver's loop: das's progress line from the first second, and the stall watchdog.

    On a terminal the line rewrites itself every second; in a log it is written every ``progress_every_s``.
    Once the work started (``started``), no chunk for ``$DAS_STALL_WARN_S`` logs what is pending (``pending``)
    against what the nodes offer (``nodes()``, Ray's view; None in this process); for ``$DAS_STALL_FAIL_S``,
    ``failure`` is set and the driver interrupted; the caller turns that interrupt into ``RunFailed``
    (``stall_behind``), so the run fails, exit 1. Both engines use it.
    """

    TICK_S = 1.0
    REPEAT_S = 5.0          # after a stall, the interrupt is repeated this often until the run ends

    def __init__(self, run: WatchedRun, starting: str, pending: str, nodes: Callable[[], str] | None = None):
        self.run, self.starting, self.pending, self.nodes = run, starting, pending, nodes
        self.committed: Callable[[], int] | None = None      # units committed in this invocation, once started
        self.every_s = run.progress_every_s
        self.tty = sys.stderr.isatty()
        warn_s, fail_s = stall_limits()
        self.watch = StallWatch(warn_s, fail_s, time.monotonic())
        self.failure: str | None = None
        self.chunks, self.first_s, self.first_files = 0, None, 0
        self.last_line = 0.0
        self.stopped = threading.Event()
        self.interrupting = threading.Lock()    # no interrupt once __exit__ has begun
        self.thread = threading.Thread(target=self._loop, name="das-progress", daemon=True)

    def __enter__(self) -> RunMonitor:
        self.watch.beat(time.monotonic())
        self.thread.start()
        return self

    def started(self, committed: Callable[[], int], starting: str) -> None:
        """The work starts (a line says so, ``starting`` until the first chunk); ``committed()`` counts the units
        committed since. The stall clock starts here (starting Ray is bounded by itself)."""
        self.committed, self.starting = committed, starting
        self.watch.beat(time.monotonic())
        self._show(self.line(), force=True)

    def __exit__(self, *exc) -> None:
        """Stop the thread; the last line on a clean end."""
        self.stop()
        self.thread.join()
        if exc[0] is None:
            self._show(self.line(), force=True)
        if self.tty:
            sys.stderr.write("\n")

    def stall_behind(self, exc: BaseException) -> RunFailed | None:
        """``RunFailed`` with what was pending, if ``exc`` is the watchdog's interrupt: a ``KeyboardInterrupt``
        (bare, or wrapped by a library it landed in) after the stall limit passed. The caller catches around
        the whole ``with`` block, since the interrupt can land anywhere in it, exits included."""
        if self.failure is None or interrupted_by(exc) is None:
            return None
        return RunFailed(self.failure)

    def beat(self) -> None:
        """The driver received a chunk."""
        now = time.monotonic()
        self.watch.beat(now)
        self.chunks += 1
        if self.first_s is None:
            self.first_s, self.first_files = now - self.run.t0, self.run.files_done

    def snapshot(self) -> ProgressSnapshot:
        """What the run has done so far."""
        run = self.run
        return ProgressSnapshot(
            elapsed_s=time.monotonic() - run.t0, files=run.files_done, files_total=run.files_to_do,
            windows=run.windows_done,
            units_committed=run.units_committed_before + (self.committed() if self.committed else 0),
            units_total=run.units_total, chunks=self.chunks, first_s=self.first_s, first_files=self.first_files,
            starting=self.starting)

    def line(self) -> str:
        """The progress line as printed."""
        return f"das label: {progress_line(self.snapshot())}"

    def _show(self, line: str, force: bool = False) -> None:
        now = time.monotonic()
        if self.tty:
            sys.stderr.write(f"\r{line}\x1b[K")
            sys.stderr.flush()
        elif force or now - self.last_line >= self.every_s:
            self.last_line = now
            log.info("%s", line.removeprefix("das label: "))

    def stop(self) -> None:
        """From now on the watchdog interrupts nothing (the driver's loop has ended: what follows is clean-up)."""
        with self.interrupting:
            self.stopped.set()

    def check(self) -> None:
        """``RunFailed`` once the watchdog has stopped the run: the driver's loop calls it after each chunk and at
        its end, so that a stopped run fails even where a library swallowed the interrupt."""
        if self.failure is not None:
            raise RunFailed(self.failure)

    def _loop(self) -> None:
        while not self.stopped.wait(self.TICK_S):
            verdict = self.watch.check(time.monotonic()) if self.committed is not None else None
            if verdict is not None:
                self._stalled(verdict)
                if verdict == "fail":
                    break
            self._show(self.line())
        while not self.stopped.wait(self.REPEAT_S):       # an interrupt swallowed while waiting: again
            self._interrupt()

    def _interrupt(self) -> None:
        with self.interrupting:
            if not self.stopped.is_set():
                _thread.interrupt_main()

    def _stalled(self, verdict: str) -> None:
        quiet = self.watch.quiet_s(time.monotonic())
        try:
            nodes = self.nodes() if self.nodes else "this process only"
        except Exception as exc:  # noqa: BLE001 - the words for a stall must not fail in their turn
            nodes = f"unknown ({type(exc).__name__}: {exc})"
        s = self.snapshot()
        what = (f"no chunk finished for {quiet:.0f} s with {s.files_total - s.files} of {s.files_total} file(s) "
                f"to do; pending: {self.pending}; nodes offer (free/total): {nodes}")
        if verdict == "warn":
            log.warning("%s; das stops the run after %g s without a chunk (DAS_STALL_FAIL_S)", what, self.watch.fail_s)
            return
        self.failure = (f"{what} (stalled past DAS_STALL_FAIL_S={self.watch.fail_s:g}); committed units are kept: "
                        "ask for resources the nodes have (--actors, --cpus-per-actor, --num-gpus) or raise "
                        "DAS_STALL_FAIL_S, then rerun with --resume")
        self._interrupt()
