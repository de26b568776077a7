"""What a person watching a run sees, without Ray: the progress line, the stall clock, the steady rate.

Pure pieces: the command's monitor (``jobs.monitor.RunMonitor``) feeds them from the driver's counts on a
thread, so that a line appears from the first second and a stall is noticed while the driver waits.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from das_core.errors import Refused

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
