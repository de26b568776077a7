"""What a person watching a run sees, without Ray: the progress line, the stall watchdog, the steady rate.

The job feeds these from the driver's counts; ``jobs.pipeline`` ticks them from a thread, so that a line
appears from the first second and a stall is noticed while the driver waits for the next chunk.
"""

from __future__ import annotations

import _thread
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from das_core.errors import Refused, RunFailed

log = logging.getLogger("das")

STALL_WARN_ENV, STALL_FAIL_ENV = "DAS_STALL_WARN_S", "DAS_STALL_FAIL_S"
STALL_WARN_S, STALL_FAIL_S = 120.0, 600.0
# The "after start-up" rate needs this much work after the first chunk, or it is left out: one or two chunks
# right after start-up made a rate of 972 clips/s out of 64 windows.
STEADY_MIN_CHUNKS, STEADY_MIN_S = 5, 10.0


def stall_limits(environ: dict[str, str] | None = None) -> tuple[float, float]:
    """(warn, fail) seconds without a finished chunk: ``$DAS_STALL_WARN_S`` (120) and ``$DAS_STALL_FAIL_S`` (600)."""
    env = os.environ if environ is None else environ
    limits = []
    for name, default in ((STALL_WARN_ENV, STALL_WARN_S), (STALL_FAIL_ENV, STALL_FAIL_S)):
        text = env.get(name) or str(default)
        try:
            value = float(text)
        except ValueError:
            value = -1.0
        if not value > 0:
            raise Refused(f"{name}={text!r} is not a positive number of seconds")
        limits.append(value)
    return limits[0], limits[1]


class StallWatch:
    """No chunk finished for ``warn_s``: warn (again every ``warn_s``); for ``fail_s``: fail. Times are monotonic."""

    def __init__(self, warn_s: float, fail_s: float, now: float):
        self.warn_s, self.fail_s = warn_s, fail_s
        self.last_beat = self.last_warn = now

    def beat(self, now: float) -> None:
        """A chunk finished."""
        self.last_beat = self.last_warn = now

    def check(self, now: float) -> str | None:
        """``"fail"``, ``"warn"`` (at most once per ``warn_s``) or None."""
        if now - self.last_beat >= self.fail_s:
            return "fail"
        if now - self.last_warn >= self.warn_s:
            self.last_warn = now
            return "warn"
        return None

    def quiet_s(self, now: float) -> float:
        """Seconds since the last chunk finished."""
        return now - self.last_beat


def steady_rate(first_s: float, first_windows: int, chunks: int, wall_s: float, windows: int) -> float | None:
    """Windows per second after the first chunk (start-up: planning, actors loading the model), or None when
    fewer than ``STEADY_MIN_CHUNKS`` chunks or ``STEADY_MIN_S`` seconds came after it: too little to measure."""
    after_s = wall_s - first_s
    if chunks - 1 < STEADY_MIN_CHUNKS or after_s < STEADY_MIN_S:
        return None
    return (windows - first_windows) / after_s


def duration(seconds: float) -> str:
    """``42 s``, ``3 min 05 s``, ``2 h 07 min``."""
    s = int(round(max(seconds, 0.0)))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


@dataclass
class ProgressSnapshot:
    """What the driver knows at one moment of a label run."""

    elapsed_s: float
    files: int                  # files done in this invocation
    files_total: int            # files this invocation labels
    windows: int                # windows done in this invocation
    units_committed: int        # committed units, those of earlier invocations included
    units_total: int
    chunks: int = 0
    first_s: float | None = None        # when the first chunk came (seconds since start)
    first_files: int = 0                # files done by then
    starting: str = "starting"          # what start-up is doing, until the first chunk


def progress_line(s: ProgressSnapshot) -> str:
    """One line: files and windows done, units committed, rate and ETA (a start-up line before the first chunk)."""
    if not s.chunks:
        return (f"{s.starting}: 0/{s.files_total} files, {s.units_committed}/{s.units_total} units committed "
                f"({duration(s.elapsed_s)})")
    rate = s.windows / max(s.elapsed_s, 1e-9)
    eta = ""
    if s.files_total > s.files and s.first_s is not None and s.files > s.first_files:
        per_file = (s.elapsed_s - s.first_s) / (s.files - s.first_files)
        eta = f", ETA {duration(per_file * (s.files_total - s.files))}"
    elif s.files_total <= s.files:
        eta = ", finishing"
    return (f"{s.files}/{s.files_total} files, {s.windows} windows so far, {s.units_committed}/{s.units_total} "
            f"units committed, {rate:.1f} windows/s{eta} ({duration(s.elapsed_s)})")


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
    ``failure`` is set and the driver interrupted (the run then fails, exit 1). Both engines use it.
    """

    TICK_S = 1.0

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
        """Stop the thread; a run the watchdog interrupted ends as ``RunFailed`` with what was pending."""
        self.stopped.set()
        self.thread.join()
        if exc[0] is None:
            self._show(self.line(), force=True)
        if self.tty:
            sys.stderr.write("\n")
        if exc[0] is KeyboardInterrupt and self.failure:
            raise RunFailed(self.failure) from None

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

    def _loop(self) -> None:
        while not self.stopped.wait(self.TICK_S):
            verdict = self.watch.check(time.monotonic()) if self.committed is not None else None
            if verdict is not None:
                self._stalled(verdict)
                if verdict == "fail":
                    return
            self._show(self.line())

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
        if not self.stopped.is_set():
            _thread.interrupt_main()
