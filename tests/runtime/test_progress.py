"""das_core.runtime.progress: the progress line, the stall watchdog's clock and the "after start-up" rate rule."""

from __future__ import annotations

import pytest

from das_core.errors import Refused
from das_core.runtime.progress import ProgressSnapshot, StallWatch, duration, progress_line, stall_limits, steady_rate


def test_stall_watch_warns_once_per_period_then_fails():
    w = StallWatch(warn_s=10, fail_s=30, now=0.0)
    assert w.check(9.9) is None
    assert w.check(10.0) == "warn"
    assert w.check(15.0) is None                  # not again until another warn_s has passed
    assert w.check(20.0) == "warn"
    w.beat(25.0)                                  # a chunk finished: the clock starts again
    assert w.check(34.0) is None and w.quiet_s(34.0) == pytest.approx(9.0)
    assert w.check(55.0) == "fail"


def test_stall_limits_from_the_environment():
    assert stall_limits({}) == (120.0, 600.0)
    assert stall_limits({"DAS_STALL_WARN_S": "2", "DAS_STALL_FAIL_S": "7.5"}) == (2.0, 7.5)
    for bad in ("0", "-3", "soon"):
        with pytest.raises(Refused, match="DAS_STALL_FAIL_S"):
            stall_limits({"DAS_STALL_FAIL_S": bad})


def test_steady_rate_needs_five_chunks_and_ten_seconds_after_the_first():
    # the case of issue 20: 64 windows, the first chunk late in a 47 s run -> no rate at all
    assert steady_rate(first_s=46.9, first_windows=32, chunks=2, wall_s=47.0, windows=64) is None
    assert steady_rate(first_s=10.0, first_windows=32, chunks=5, wall_s=40.0, windows=192) is None   # 4 after
    assert steady_rate(first_s=40.0, first_windows=32, chunks=9, wall_s=49.0, windows=288) is None   # 9 s after
    assert steady_rate(first_s=10.0, first_windows=32, chunks=6, wall_s=30.0, windows=192) == pytest.approx(8.0)


def test_duration():
    assert [duration(s) for s in (0, 42.4, 185, 7620)] == ["0 s", "42 s", "3 min 05 s", "2 h 07 min"]


def test_progress_line_before_and_after_the_first_chunk():
    start = ProgressSnapshot(elapsed_s=3.2, files=0, files_total=6, windows=0, units_committed=1, units_total=2,
                             starting="starting Ray")
    assert progress_line(start) == "starting Ray: 0/6 files, 1/2 units committed (3 s)"
    mid = ProgressSnapshot(elapsed_s=30.0, files=4, files_total=10, windows=40, units_committed=1, units_total=2,
                           chunks=3, first_s=20.0, first_files=2)
    # 2 files in the 10 s after the first chunk: 6 files left take 30 s
    assert progress_line(mid) == ("4/10 files, 40 windows so far, 1/2 units committed, 1.3 windows/s, ETA 30 s "
                                  "(30 s)")
    done = ProgressSnapshot(elapsed_s=31.0, files=10, files_total=10, windows=90, units_committed=2, units_total=2,
                            chunks=9, first_s=20.0, first_files=2)
    assert progress_line(done).startswith("10/10 files, 90 windows so far, 2/2 units committed")
    assert progress_line(done).endswith("finishing (31 s)")
