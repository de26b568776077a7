"""The lease on an output (``das_core.output.lease``): locally and on S3 (moto's real HTTP server)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

from das_core.errors import LeaseHeld, Refused
from das_core.output.lease import LOCK_NAME, Holder, Lease

pytestmark = pytest.mark.integration      # S3 cases start moto's server; local ones start a subprocess


@pytest.fixture(params=["local", "s3"])
def out(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "out")
    bucket = request.getfixturevalue("bucket")
    return f"s3://{bucket}/runs/out"


def _lock(out: str) -> dict:
    from das_core.io import storage

    return json.loads(storage.read_bytes(storage.join(out, LOCK_NAME)))


def _write_lock(out: str, **fields) -> None:
    from das_core.io import storage

    now = time.time()
    holder = {"run_id": "old-run", "command": "das label", "host": socket.gethostname(), "pid": os.getpid(),
              "started": "2026-01-01T00:00:00+00:00", "heartbeat": "2026-01-01T00:00:00+00:00",
              "heartbeat_unix": now, **fields}
    storage.write_bytes_atomic(storage.join(out, LOCK_NAME), json.dumps(holder).encode())


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_second_taker_is_refused_naming_the_holder_and_the_lock_is_released(out):
    with Lease(out, "das label", heartbeat_s=0.2) as first:
        held = _lock(out)
        assert (held["run_id"], held["command"], held["pid"]) == (first.run_id, "das label", os.getpid())
        start = time.monotonic()
        with pytest.raises(LeaseHeld) as refused:
            Lease(out, "das rescore").acquire()
        assert time.monotonic() - start < 5
        message = str(refused.value)
        assert isinstance(refused.value, Refused)
        for part in (first.run_id, socket.gethostname(), f"pid {os.getpid()}", "since", "last heartbeat",
                     "another --out"):
            assert part in message, message
        time.sleep(0.7)
        assert _lock(out)["heartbeat_unix"] > held["heartbeat_unix"]          # renewed by the heartbeat
        assert first.lost is None
    from das_core.io import storage

    assert not storage.exists(storage.join(out, LOCK_NAME))
    with Lease(out, "das label"):            # free again
        pass


def test_stale_lock_is_taken_over_with_a_message(out, caplog):
    _write_lock(out, heartbeat_unix=time.time() - 3600, host="elsewhere", pid=12345)
    with pytest.raises(LeaseHeld, match="run old-run"):
        Lease(out, "das label", stale_s=7200).acquire()            # an hour is not stale by this bound
    with caplog.at_level("WARNING", logger="das"), Lease(out, "das label", stale_s=60) as lease:
        assert _lock(out)["run_id"] == lease.run_id
    assert "took over the lock" in caplog.text and "old-run" in caplog.text and "no heartbeat for" in caplog.text


def test_dead_pid_on_this_host_is_taken_over_at_once(out, caplog):
    _write_lock(out, pid=_dead_pid())                               # a fresh heartbeat, but its process is gone
    with caplog.at_level("WARNING", logger="das"), Lease(out, "das label", stale_s=3600) as lease:
        assert _lock(out)["run_id"] == lease.run_id
    assert "no longer exists" in caplog.text


def test_live_pid_with_a_fresh_heartbeat_is_not_taken_over(out):
    _write_lock(out)                                                # this very process: alive
    with pytest.raises(LeaseHeld):
        Lease(out, "das label", stale_s=3600).acquire()


def test_a_holder_whose_lease_was_taken_over_notices(out):
    first = Lease(out, "das label", heartbeat_s=3600).acquire()
    _write_lock(out, run_id="usurper", pid=_dead_pid())
    first.renew()
    assert first.lost and "usurper" in first.lost
    first.release()
    assert _lock(out)["run_id"] == "usurper"                       # not removed: it is not first's


def test_only_one_of_many_concurrent_takers_wins(out):
    wins, refusals = [], []

    def take(i: int) -> None:
        try:
            wins.append(Lease(out, f"taker {i}", heartbeat_s=3600).acquire())
        except LeaseHeld:
            refusals.append(i)

    threads = [threading.Thread(target=take, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(wins) == 1 and len(refusals) == 5
    wins[0].release()


def test_unreadable_lock_is_judged_by_its_age(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / LOCK_NAME).write_text("{ not json")
    with pytest.raises(LeaseHeld, match="run unknown"):
        Lease(str(out), "das label", stale_s=3600).acquire()
    old = time.time() - 120
    os.utime(out / LOCK_NAME, (old, old))
    with Lease(str(out), "das label", stale_s=60):
        pass


def test_lease_creates_the_folder_and_removes_it_when_nothing_else_was_written(tmp_path):
    out = tmp_path / "new" / "out"
    with Lease(str(out), "das label"):
        assert (out / LOCK_NAME).is_file()
    assert not out.exists()
    with Lease(str(out), "das label"):
        (out / "_manifest.json").write_text("{}")
    assert sorted(p.name for p in out.iterdir()) == ["_manifest.json"]


def test_holder_describes_itself():
    h = Holder("r", "das label", "h", 7, "2026-01-01T00:00:00+00:00", "2026-01-01T00:00:05+00:00", 100.0)
    assert h.describe(now=130.0) == ("run r: das label, host h, pid 7, since 2026-01-01T00:00:00+00:00, last "
                                     "heartbeat 2026-01-01T00:00:05+00:00 (30 s ago)")
    assert h.stale_reason(60, now=130.0) is None and "no heartbeat for 70 s" in h.stale_reason(60, now=170.0)
